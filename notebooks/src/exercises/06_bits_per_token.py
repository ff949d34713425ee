# %% [markdown]
# # Exercise 6: how surprised is the model? Bits per token of a held-out image
#
# A generative model gives every image a probability. iGPT's is the product of one factor per pixel,
# the probability of that pixel's colour given the pixels before it in raster order (the paper's
# Section 2.1, *Generative Pretraining from Pixels*, Chen et al., ICML 2020,
# https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf):
#
# $$p(x) = \prod_{t=1}^{n} p(x_t \mid x_1, \dots, x_{t-1})$$
#
# Its negative log, averaged over the pixels, is the loss the model was trained to lower. You will
# write it in **bits per token**, check it against the package, then run it on the default model and
# digits it never saw. Background: notebook `07_likelihood.ipynb`.
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

from minigpt_pixels.exercises import check, describe


# %% [markdown]
# ## 1. Bits per token
#
# You get the model's `logits` `[B, T, V]` and the `targets` `[B, T]` it should have predicted,
# **already aligned**: the model read `SOS + pixels[:-1]`, so `logits[b, t]` scores the `V` colours
# of pixel `t`, whose true colour is `targets[b, t]`. For each image return the mean, over its `T`
# positions, of the surprise
#
# $$-\log_2 p(x_t \mid x_{<t}) = -\frac{\operatorname{log\_softmax}(\text{logits}_t)[x_t]}{\ln 2}$$
#
# A perfect model pays 0 bits; guessing uniformly among `V` colours pays $\log_2 V$ bits.
#
# <details><summary>Hint</summary>
#
# Log-softmax over the last axis, safely: `z = logits - logits.max(-1, keepdims=True)`, then
# `z - np.log(np.exp(z).sum(-1, keepdims=True))`. Pick each position's entry at its target with
# `np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]`. Mean over axis 1, divide by
# `np.log(2)`, and return float32.
# </details>

# %%
def bits_per_token(logits, targets):
    """Each image's mean surprise in bits; train.evaluate's "bits", image by image.

    logits:  float32 [B, T, V]  the model's scores for pixel t (already aligned with targets)
    targets: int     [B, T]     the true palette ids
    returns float32 [B]
    """
    ### BEGIN SOLUTION
    z = logits - logits.max(axis=-1, keepdims=True)  # [B, T, V]
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # log-softmax over the colours
    picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, T]
    return (-picked.mean(axis=-1) / np.log(2)).astype(np.float32)  # [B]
    ### END SOLUTION


# %%
bits_per_token_result = check("bits_per_token", bits_per_token)
### BEGIN HIDDEN TESTS
assert bits_per_token_result.passed, bits_per_token_result.message  # what nbgrader's autograde scores
### END HIDDEN TESTS
display(bits_per_token_result)

# %% [markdown]
# ## 2. Your function on the real model
#
# Once it passes, your function measures the default model (a small iGPT trained on scikit-learn's
# 8 x 8 digits, 16 greys) on the held-out digits it never saw in training. Its mean must be what
# the package's own evaluation reports (`train.evaluate`, the number training prints), and the chart
# shows which digits surprise the model most.

# %%
from minigpt_pixels import DEFAULT_MODEL
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.probe import with_sos
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.datasets import load_digits_data, split
from minigpt_pixels.train import evaluate

if bits_per_token_result.passed:
    model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
    processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)
    data = load_digits_data()
    _, held_out = split(len(data.images), 0.1, seed=0)  # the split the model was trained with
    ids = processor(data.images)["input_ids"][held_out]  # [N, 64] palette ids
    inputs = with_sos(ids, model.config)  # [N, 64]: SOS + pixels[:-1]
    yours = bits_per_token(model(inputs).logits, ids)  # [N]
    package = evaluate(model, inputs, ids)["bits"]
    print(f"{len(ids)} held-out digits: yours {yours.mean():.4f} bits per token, train.evaluate {package:.4f}; "
          f"uniform over {len(processor.clusters)} colours: {np.log2(len(processor.clusters)):.0f} bits")
    assert abs(yours.mean() - package) < 1e-3
    means = [yours[data.labels[held_out] == d].mean() for d in range(10)]
    plt.figure(figsize=(5, 2.6))
    plt.bar(range(10), means)
    plt.xticks(range(10)); plt.xlabel("digit"); plt.ylabel("mean bits per token")
    plt.title("held-out surprise, digit by digit (your function)")
else:
    print("finish bits_per_token above first")
plt.show()

# %% [markdown]
# ## Questions and things to try
#
# 1. Why is the mean of `bits_per_token` over images equal to `train.evaluate`'s number here, and
#    when would it not be (think of images of different lengths)?
# 2. What does an image of pure noise cost? Try `rng.integers(0, 16, (5, 64))` as `ids`.
# 3. Multiply the logits by 2 (a sharper model) before calling your function: which images get
#    cheaper, and which dearer?
# 4. The paper reports the same quantity as a loss in nats per token; convert your result.
#
# <details><summary>Answers (for the teacher)</summary>
#
# 1. Every image has the same 64 positions, so the mean of the per-image means is the mean over all
#    tokens; with images of different lengths the per-image means would have to be weighted by length.
# 2. About the uniform cost or more (4 bits for 16 colours): noise has no structure to predict, and a
#    model sure of smooth strokes pays extra for its confidence.
# 3. Sharper logits make the predictable images (blank margins, plain strokes) cheaper and the
#    surprising pixels dearer, since a confident wrong guess costs more bits.
# 4. nats = bits x ln 2 (about 0.693 nats per bit).
# </details>
#
# ## Summary
#
# Every exercise of this notebook, checked again:

# %%
for name, fn in [("bits_per_token", bits_per_token)]:
    print(check(name, fn))
