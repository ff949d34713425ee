# %% [markdown]
# # Exercise 1: ImageGPT's layer norm and quick_gelu
#
# Two of the smallest pieces of ImageGPT, each with a quirk that trips people up. You will write
# them from scratch and check them against `minigpt_pixels.layers.layer_norm` and
# `minigpt_pixels.layers.quick_gelu` (which agree with Hugging Face transformers).
# Background: notebook `02_transformer_piece_by_piece.ipynb`.
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
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from minigpt_pixels import layers
from minigpt_pixels.exercises import check, describe


# %% [markdown]
# ## 1. Layer norm without the mean
#
# ImageGPT's layer norm is **not** `torch.nn.LayerNorm`. It does not subtract the mean and has
# no bias; it divides each position's features by their root mean square and multiplies by a
# learned gain:
#
# $$y = \frac{x}{\sqrt{\operatorname{mean}(x^2) + \epsilon}} \cdot w$$
#
# The mean is over the last axis (the `C` features of one position), so `x` of shape
# `[B, T, C]` gives one number per `(b, t)`. (Today this is called RMSNorm.)
#
# <details><summary>Hint</summary>
#
# `np.mean(x ** 2, axis=-1, keepdims=True)` has shape `[..., 1]`, which broadcasts against
# `[..., C]`. `eps` goes inside the square root.
# </details>

# %%
def layer_norm(x, weight, eps=1e-5):
    """ImageGPT's layer norm; replaces minigpt_pixels.layers.layer_norm.

    x:      float32 [..., C]  normalise each row over its last axis
    weight: float32 [C]       the learned gain (there is no bias)
    eps:    float             added to the mean square, inside the square root
    returns float32 [..., C]
    """
    ### BEGIN SOLUTION
    ms = np.mean(np.square(x), axis=-1, keepdims=True)  # [..., 1]
    return x / np.sqrt(ms + eps) * weight  # [..., C]
    ### END SOLUTION


# %%
layer_norm_result = check("layer_norm", layer_norm)
### BEGIN HIDDEN TESTS
assert layer_norm_result.passed, layer_norm_result.message  # what nbgrader's autograde scores
### END HIDDEN TESTS
display(layer_norm_result)

# %% [markdown]
# Once it passes: unlike torch's LayerNorm, the rows keep their mean; it is their root mean square that becomes 1 (here the gain is 1).

# %%
if layer_norm_result.passed:
    x = np.random.default_rng(0).normal(2.0, 1.0, size=(3, 8)).astype(np.float32)
    y = layer_norm(x, np.ones(8, np.float32))
    print("row means:", y.mean(-1).round(3), " root mean squares:", np.sqrt((y ** 2).mean(-1)).round(3))
else:
    print("finish layer_norm above first")

# %% [markdown]
# ### Your layer norm in the real model
#
# The default model (a small iGPT trained on 8 x 8 digits) has a layer norm before each attention and
# each MLP, and one at the end (`ln_f`). Below, all of them are swapped for yours
# (`unittest.mock.patch` replaces the package's function while the `with` block runs). If yours is
# right, the held-out loss is the package's to the printed digits, and the model still draws digits.

# %%
import contextlib
from unittest import mock

from minigpt_pixels import DEFAULT_MODEL
from minigpt_pixels.generation import sample_images
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.probe import with_sos
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.sample import image_grid
from minigpt_pixels.datasets import load_digits_data, split

model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL).to("numpy")  # layers.py, line by line
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)
held_out = split(1797, 0.1, seed=0)[1]  # the images the model never saw in training
ids = processor(load_digits_data().images)["input_ids"][held_out]  # [180, 64]
inputs = with_sos(ids, model.config)  # SOS + pixels[:-1]


def yours_everywhere(patches):
    """A `with` block in which each (object, name, your function) replaces the package's."""
    stack = contextlib.ExitStack()
    for owner, name, fn in patches:
        stack.enter_context(mock.patch.object(owner, name, fn))
    return stack


def held_out_loss_and_samples(patches):
    with yours_everywhere(patches):
        loss = float(model(inputs, labels=inputs).loss)  # nats per token
        samples = sample_images(model, processor, 8, seed=0)  # [8, 8, 8, 3]
    return loss, samples


ours, ours_samples = held_out_loss_and_samples([])  # the package's own functions
if layer_norm_result.passed:
    ln_patches = [(layers, "layer_norm_forward", lambda x, w, eps=1e-5: (layer_norm(x, w, eps), None)),  # the blocks
                  (model.backend, "layer_norm", layer_norm)]  # ln_f
    mine, my_samples = held_out_loss_and_samples(ln_patches)
    print(f"held-out loss: the package's layer norm {ours:.5f} nats per token, yours {mine:.5f}")
    print("the same 8 samples as the package's:", bool(np.array_equal(my_samples, ours_samples)))
    plt.figure(figsize=(6, 1)); plt.imshow(image_grid([list(my_samples)])); plt.axis("off")
    plt.title("8 samples from the default model, with your layer norm")
else:
    print("finish layer_norm above first")
plt.show()


# %% [markdown]
# ## 2. quick_gelu
#
# The MLP's activation is OpenAI's "gelu2", which transformers calls `quick_gelu`:
#
# $$\text{quick\_gelu}(x) = x \cdot \sigma(1.702\,x) = \frac{x}{1 + e^{-1.702 x}}$$
#
# It approximates GELU, but it is **not** the exact GELU $x\,\Phi(x)$ (with `erf`), nor
# GPT-2's tanh approximation. The differences are small (at most about 0.02) yet they change
# every output of a trained model.

# %%
def quick_gelu(x):
    """x * sigmoid(1.702 * x); replaces minigpt_pixels.layers.quick_gelu.

    x:      float32 array of any shape
    returns float32, the same shape
    """
    ### BEGIN SOLUTION
    return x / (1 + np.exp(-1.702 * x))
    ### END SOLUTION


# %%
quick_gelu_result = check("quick_gelu", quick_gelu)
### BEGIN HIDDEN TESTS
assert quick_gelu_result.passed, quick_gelu_result.message  # what nbgrader's autograde scores
### END HIDDEN TESTS
display(quick_gelu_result)

# %% [markdown]
# Once it passes, compare it with the exact GELU and ReLU:

# %%
if quick_gelu_result.passed:
    x = np.linspace(-4, 4, 201, dtype=np.float32)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    a.plot(x, quick_gelu(x), label="your quick_gelu")
    a.plot(x, layers.activation(x, "gelu"), "--", label="exact GELU")
    a.plot(x, np.maximum(x, 0), ":", label="ReLU")
    a.legend()
    b.plot(x, quick_gelu(x) - layers.activation(x, "gelu"))
    b.set_title("quick_gelu - exact GELU")
    plt.tight_layout()
else:
    print("finish quick_gelu above first")
plt.show()

# %% [markdown]
# ### Your quick_gelu in the real model
#
# The same test: every MLP of the default model with your activation.

# %%
if quick_gelu_result.passed:
    gelu_patches = [(layers, "quick_gelu_forward", lambda x: (quick_gelu(x), x))]
    mine, my_samples = held_out_loss_and_samples(gelu_patches)
    print(f"held-out loss: the package's quick_gelu {ours:.5f} nats per token, yours {mine:.5f}")
    print("the same 8 samples as the package's:", bool(np.array_equal(my_samples, ours_samples)))
    exact = [(layers, "quick_gelu_forward", lambda x: (layers.activation(x, "gelu"), x))]
    print(f"and with the exact GELU instead (the classic mistake): {held_out_loss_and_samples(exact)[0]:.5f}")
else:
    print("finish quick_gelu above first")

# %% [markdown]
# ## Summary
#
# Every exercise of this notebook, checked again:

# %%
for name, fn in [("layer_norm", layer_norm), ("quick_gelu", quick_gelu)]:
    print(check(name, fn))
