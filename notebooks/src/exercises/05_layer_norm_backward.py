# %% [markdown]
# # Exercise 5: a backward pass (layer norm)
#
# Training needs the gradient of the loss with respect to every input and weight. In
# `minigpt_pixels.layers` every component is a pair: `f_forward(...) -> (out, cache)` keeps what the
# backward needs, `f_backward(dout, cache)` turns the gradient of the output into gradients of the
# inputs. You will write ImageGPT's layer-norm backward. Background: notebook `05_training.ipynb`.
#
# **How this works.** Each exercise is a function with `# YOUR CODE HERE`. Replace the
# `raise NotImplementedError` with your code, run that cell, then run the `check` cell under it.
# `check(name, function)` runs your function on a few small seeded inputs, compares it with the package's
# own function, and tells you what is wrong: the shape, the first differing values, and the likely
# mistake. Until you start it says *not done yet*, so the notebook always runs top to bottom.
#
# Rules of the game: NumPy only, keep everything `float32`, and never change the input arrays in place.
# `describe(name)` lists what an exercise is checked on. Your teacher grades the functions
# themselves, on inputs you have not seen: write everything a function needs inside its cell
# (or in a cell of your own that only defines helper functions), without the package's own functions.

# %%
import numpy as np
from IPython.display import display

from minigpt_pixels.exercises import check, describe


# %% [markdown]
# ## The layer-norm backward
#
# The forward is $y = n \cdot w$ with $n = x / r$ and $r = \sqrt{\operatorname{mean}(x^2) + \epsilon}$
# (per row, over the last axis of size $C$). `layers.layer_norm_forward(x, weight)` returns
# `(y, cache)` with `cache = (n, weight, rms)`: the normalised input `n`, the weight, and `rms`
# of shape `[..., 1]`.
#
# Given `dout` $= \partial L / \partial y$:
#
# * `dweight`: every position used the same weight, so sum $\text{dout} \cdot n$ over all
#   positions: shape `[C]`.
# * `dx`: with $g = \text{dout} \cdot w$, the direct path gives $g / r$, **but** $r$ depends on
#   every $x$ of the row too. Working it out:
#   $$dx = \frac{g - n \cdot \operatorname{mean}(g \cdot n)}{r}$$
#   (Compared with torch's LayerNorm, there is no $-\operatorname{mean}(g)$ term: nothing was centred.)

# %%
def layer_norm_backward(dout, cache):
    """Gradients of ImageGPT's layer norm; replaces layers.layer_norm_backward.

    dout:  float32 [..., C]  the gradient of the loss w.r.t. the output
    cache: (n [..., C], weight [C], rms [..., 1]) from layers.layer_norm_forward; n = x / rms
    returns (dx [..., C], dweight [C]), float32
    """
    ### BEGIN SOLUTION
    n, weight, rms = cache
    g = dout * weight  # [..., C]
    dx = (g - n * np.mean(g * n, axis=-1, keepdims=True)) / rms
    dweight = np.sum((dout * n).reshape(-1, n.shape[-1]), axis=0)  # [C]
    return dx, dweight
    ### END SOLUTION


# %%
layer_norm_backward_result = check("layer_norm_backward", layer_norm_backward)
### BEGIN HIDDEN TESTS
assert layer_norm_backward_result.passed, layer_norm_backward_result.message  # what nbgrader's autograde scores
### END HIDDEN TESTS
display(layer_norm_backward_result)

# %% [markdown]
# Once it passes, check it the way gradients are always checked: against finite differences, $\partial L/\partial x_i \approx (L(x + h e_i) - L(x - h e_i)) / 2h$, in float64 so the subtraction keeps its digits:

# %%
from minigpt_pixels import layers

if layer_norm_backward_result.passed:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6)).astype(np.float32)
    w = rng.normal(1, 0.2, size=6).astype(np.float32)
    dout = rng.normal(size=(2, 6)).astype(np.float32)
    y, cache = layers.layer_norm_forward(x, w)
    dx, dw = layer_norm_backward(dout, cache)

    def loss(x64):  # L = sum(dout * layer_norm(x)), so dL/dy = dout
        return float(np.sum(dout * layers.layer_norm(x64, w.astype(np.float64))))

    h, numeric = 1e-6, np.zeros(x.shape)
    for i in np.ndindex(x.shape):
        e = np.zeros(x.shape); e[i] = h
        numeric[i] = (loss(x + e) - loss(x - e)) / (2 * h)
    print("max |your dx - finite differences| =", np.abs(dx - numeric).max())
else:
    print("finish layer_norm_backward above first")

# %% [markdown]
# ### Your backward in the real model
#
# Training the default model (a small iGPT on 8 x 8 digits) needs the gradient of its loss with
# respect to every weight; the chain runs back through every layer norm (`ln_1`, `ln_2` in each block,
# `ln_f` at the end). Below, your backward replaces the package's in all of them (`unittest.mock.patch`
# swaps it in while the `with` block runs), for a batch of 16 digits: every gradient should be the
# package's.

# %%
from unittest import mock

from minigpt_pixels import DEFAULT_MODEL, backprop
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.probe import with_sos
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.datasets import load_digits_data

if layer_norm_backward_result.passed:
    model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
    processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)
    ids = processor(load_digits_data().images[:16])["input_ids"]  # [16, 64]
    inputs = with_sos(ids, model.config)  # SOS + pixels[:-1]
    loss, theirs = backprop.causal_lm_value_and_grad(model, inputs, ids, shift=False)
    with mock.patch.object(layers, "layer_norm_backward", layer_norm_backward):
        _, yours = backprop.causal_lm_value_and_grad(model, inputs, ids, shift=False)
    worst = max(np.abs(yours[k] - theirs[k]).max() for k in theirs)
    print(f"loss {float(loss):.4f}; {len(theirs)} gradient tensors, max |yours - the package's| = {worst:.1e}")
else:
    print("finish layer_norm_backward above first")

# %% [markdown]
# ## Summary
#
# Every exercise of this notebook, checked again:

# %%
for name, fn in [("layer_norm_backward", layer_norm_backward)]:
    print(check(name, fn))
