# %% [markdown]
# # Exercise 3: top-k sampling
#
# How a model's scores become a picture: keep only the `k` most likely colours, then draw one.
# You will check your versions against `minigpt_pixels.generation.top_k_filter` and
# `sample_from_logits`. Background: notebook `03_sampling.ipynb`.
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
# ## 1. The top-k filter
#
# Given logits `[B, V]` (one row of scores per sequence), keep the `k` largest of each row and
# set the others to `-inf`, so that softmax gives them probability 0. As in transformers, a
# logit **equal** to the k-th largest is kept too (ties are not broken).
#
# <details><summary>Hint</summary>
#
# The k-th largest of each row: `np.sort(logits, axis=-1)[:, -k]` (or `np.partition`). Then
# `np.where(logits < kth[:, None], -np.inf, logits)`.
# </details>

# %%
def top_k_filter(logits, k):
    """Keep the k largest logits of each row, -inf elsewhere; replaces generation.top_k_filter.

    logits: float32 [B, V]
    k:      int, 1 <= k <= V
    returns float32 [B, V]
    """
    ### BEGIN SOLUTION
    kth = np.sort(logits, axis=-1)[:, -k][:, None]  # [B, 1] the k-th largest
    return np.where(logits < kth, np.float32(-np.inf), logits)
    ### END SOLUTION


# %%
top_k_filter_result = check("top_k_filter", top_k_filter)
### BEGIN HIDDEN TESTS
assert top_k_filter_result.passed, top_k_filter_result.message  # what nbgrader's autograde scores
### END HIDDEN TESTS
display(top_k_filter_result)


# %% [markdown]
# ## 2. Drawing a token
#
# Now draw one token per row from the filtered distribution: softmax over the kept logits
# (which renormalises them to sum to 1), then a random draw with the generator `rng` you are
# given (`rng.random`, `rng.choice`, ...). The grader draws 9000 tokens and checks that only
# top-k tokens come out, each about as often as its probability says.
#
# <details><summary>Hint</summary>
#
# One way: `p = softmax(filtered)` per row, `cdf = np.cumsum(p, axis=-1)`, `u = rng.random(B)`,
# and the token is the first index where `cdf > u`. Another: a loop over rows with
# `rng.choice(V, p=row_p)`. Zeroing the other probabilities without dividing by the
# kept total is the classic mistake.
# </details>

# %%
def top_k_sample(logits, k, rng):
    """One token per row from softmax over the row's k largest logits; replaces
    generation.sample_from_logits(logits, rng, top_k=k).

    logits: float32 [B, V]
    k:      int
    rng:    np.random.Generator, the only source of randomness
    returns int array [B]
    """
    ### BEGIN SOLUTION
    kth = np.sort(logits, axis=-1)[:, -k][:, None]
    kept = np.where(logits < kth, -np.inf, logits)  # [B, V]
    p = np.exp(kept - kept.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)  # renormalised over the kept tokens
    u = rng.random(len(logits))[:, None]  # [B, 1]
    return np.minimum((np.cumsum(p, axis=-1) <= u).sum(axis=-1), logits.shape[-1] - 1)
    ### END SOLUTION


# %%
top_k_sample_result = check("top_k_sample", top_k_sample)
### BEGIN HIDDEN TESTS
assert top_k_sample_result.passed, top_k_sample_result.message  # what nbgrader's autograde scores
### END HIDDEN TESTS
display(top_k_sample_result)

# %% [markdown]
# Once it passes: your draws against the probabilities, for one row of logits and a few `k`:

# %%
from minigpt_pixels.generation import softmax, top_k_filter as reference_filter

if top_k_sample_result.passed:
    row = np.array([2.0, 1.5, 1.2, 0.8, 0.5, 0.0, -0.5, -1.0], np.float32)
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.6), sharey=True)
    for ax, k in zip(axes, [1, 3, 8]):
        draws = top_k_sample(np.repeat(row[None], 4000, axis=0), k, np.random.default_rng(0))
        ax.bar(np.arange(8) - 0.2, softmax(reference_filter(row[None], k))[0], 0.4, label="probability")
        ax.bar(np.arange(8) + 0.2, np.bincount(draws, minlength=8) / 4000, 0.4, label="your draws")
        ax.set_title(f"k = {k}")
    axes[0].legend()
else:
    print("finish top_k_sample above first")
plt.show()

# %% [markdown]
# ### Your sampler in the real model
#
# The default model (a small iGPT trained on 8 x 8 digits) draws 16 digits one pixel at a time with
# your `top_k_sample` choosing every pixel (`unittest.mock.patch` swaps it in for the package's
# sampler while the `with` block runs). The draws are random, so they will not be the package's
# digits pixel for pixel; they should look like digits, and with `k = 1` (greedy) they are exact.

# %%
from unittest import mock

from minigpt_pixels import DEFAULT_MODEL, generation
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.sample import image_grid

if top_k_sample_result.passed:
    model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
    processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)

    def sample_with_yours(n, k):
        """generate's sampling step is process_logits (its list of processors: temperature, top-k, top-p) then
        draw; yours does both, so the processors are skipped (temperature 1 changes nothing)."""
        with mock.patch.object(generation, "process_logits", lambda logits, processors: logits), \
                mock.patch.object(generation, "draw", lambda x, rng: top_k_sample(x, k, rng)):
            return generation.sample_images(model, processor, n, seed=0)  # [n, 8, 8, 3]

    mine, greedy = sample_with_yours(16, 4), sample_with_yours(4, 1)
    print("greedy (k = 1) with your sampler = the package's:",
          bool(np.array_equal(greedy, generation.sample_images(model, processor, 4, seed=0, top_k=1))))
    plt.figure(figsize=(8, 1)); plt.imshow(image_grid([list(mine)])); plt.axis("off")
    plt.title("16 digits drawn with your top_k_sample, k = 4")
else:
    print("finish top_k_sample above first")
plt.show()

# %% [markdown]
# ## Summary
#
# Every exercise of this notebook, checked again:

# %%
for name, fn in [("top_k_filter", top_k_filter), ("top_k_sample", top_k_sample)]:
    print(check(name, fn))
