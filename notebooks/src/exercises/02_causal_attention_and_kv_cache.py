# %% [markdown]
# # Exercise 2: causal attention and the KV cache
#
# The heart of the transformer, then the trick that makes sampling fast. You will check them
# against `minigpt_pixels.layers.attention` and the model's `KVCache`.
# Background: notebooks `02_transformer_piece_by_piece.ipynb` and `03_sampling.ipynb`.
#
# Shapes: `B` batch, `H` heads, `T` new positions (queries), `S` keys, `D` head size.
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
# ## 1. Causal self-attention
#
# For each head: scores $= \text{scale} \cdot q k^\top$ (`[B, H, T, S]`); position `t` may
# only look at keys `0..t`, so every score above the diagonal is set to `-inf` (or a very
# negative number) **before** the softmax; the softmax runs over the keys (the last axis);
# the output is the weights times `v`.
#
# $$\text{out} = \operatorname{softmax}\big(\text{scale}\cdot q k^\top + \text{mask}\big)\, v$$
#
# Use the `scale` you are given: it is $1/\sqrt{D}$, but iGPT configs can also divide it by
# the layer number. And make the softmax safe: `exp` of a score above ~88 overflows float32,
# so subtract each row's maximum first (it cancels out).
#
# <details><summary>Hint</summary>
#
# `np.tri(T, S, k=S - T, dtype=bool)` is True where key `j <= t + (S - T)`: on and below the diagonal
# here, where `S == T` (so `k=0` works too, but only while `S == T`: the KV-cache step below has more
# keys than queries). Then `np.where(allowed, scores, -np.inf)`, **before** the softmax (zeroing weights
# after it leaves rows that no longer sum to 1). `np.triu` is the upper triangle, the future: the part
# to hide, not to keep. `np.swapaxes(k, -1, -2)` transposes the last two axes; `k.T` on a 4-D array
# would reverse all four.
# </details>

# %%
def causal_attention(q, k, v, scale):
    """Causal scaled dot-product attention; replaces layers.attention(q, k, v, scale).

    q, k, v: float32 [B, H, T, D]
    scale:   float, multiplies q @ k^T
    returns  float32 [B, H, T, D] (returning (output, weights) as layers.attention does is fine too)
    """
    ### BEGIN SOLUTION
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ np.swapaxes(k, -1, -2)) * scale  # [B, H, T, S]
    scores = np.where(np.tri(T, S, k=S - T, dtype=bool), scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = weights / weights.sum(axis=-1, keepdims=True)  # [B, H, T, S]
    return weights @ v  # [B, H, T, D]
    ### END SOLUTION


# %%
causal_attention_result = check("causal_attention", causal_attention)
### BEGIN HIDDEN TESTS
assert causal_attention_result.passed, causal_attention_result.message  # what nbgrader's autograde scores
### END HIDDEN TESTS
display(causal_attention_result)

# %% [markdown]
# A trick to see the weights: with `v` the identity matrix, the output *is* the weight matrix. Each row sums to 1 and nothing lies above the diagonal:

# %%
if causal_attention_result.passed:
    rng = np.random.default_rng(0)
    T = 8
    q, k = rng.normal(size=(2, 1, 1, T, 4)).astype(np.float32)
    eye = np.eye(T, dtype=np.float32)[None, None]  # v = I, so out = weights
    weights = causal_attention(q, k, eye, 0.5)
    weights = weights[0] if isinstance(weights, tuple) else weights
    plt.imshow(weights[0, 0], cmap="viridis")
    plt.xlabel("key position"); plt.ylabel("query position"); plt.colorbar()
else:
    print("finish causal_attention above first")
plt.show()


# %% [markdown]
# ### Your attention in the real model
#
# Every block of the default model (a small iGPT trained on 8 x 8 digits) with your attention in
# place of the package's (`unittest.mock.patch` swaps the function while the `with` block runs). The
# held-out loss runs each image in one pass (`S == T`); sampling uses the KV cache, where each new
# pixel is one query against all the keys so far (`S > T`): if your mask only works for square score
# matrices, the loss agrees and the samples do not.

# %%
from unittest import mock

from minigpt_pixels import DEFAULT_MODEL, layers
from minigpt_pixels.generation import sample_images
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.probe import with_sos
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.sample import image_grid
from minigpt_pixels.datasets import load_digits_data, split

model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL).to("numpy")  # layers.py, line by line
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)
held_out = split(1797, 0.1, seed=0)[1]  # the images the model never saw in training
inputs = with_sos(processor(load_digits_data().images)["input_ids"][held_out], model.config)  # [180, 64]


def your_attention_forward(q, k, v, scale, causal=True, mask=None, dropout_p=0.0, rng=None):
    """layers.attention_forward's signature around your function (no dropout, no padding mask here)."""
    out = causal_attention(q, k, v, scale)
    out = out[0] if isinstance(out, tuple) else out
    return out, layers.AttentionCache(q, k, v, scale, None, None, None)


def loss_and_samples():
    return float(model(inputs, labels=inputs).loss), sample_images(model, processor, 8, seed=0)


ours, ours_samples = loss_and_samples()  # the package's attention
if causal_attention_result.passed:
    with mock.patch.object(layers, "attention_forward", your_attention_forward):
        mine, my_samples = loss_and_samples()
    print(f"held-out loss: the package's attention {ours:.5f} nats per token, yours {mine:.5f}")
    print("sampling with the KV cache gives the package's 8 samples:", bool(np.array_equal(my_samples, ours_samples)))
    plt.figure(figsize=(6, 1)); plt.imshow(image_grid([list(my_samples)])); plt.axis("off")
    plt.title("8 samples from the default model, with your attention")
else:
    print("finish causal_attention above first")
plt.show()


# %% [markdown]
# ## 2. One step with a KV cache
#
# When sampling, the model has already processed `P` positions and gets `T` new ones (usually
# one). Recomputing keys and values for the old positions would be wasted work, so the model
# keeps them: the **KV cache**. A step appends the new keys and values to the cache, then the
# new queries attend to everything cached so far.
#
# The catch is the mask. The new queries are positions `P .. P+T-1`, not `0 .. T-1`: query
# `t` may see keys `0 .. P+t`. With `S = P + T` keys that is `np.tri(T, S, k=S - T)`.
# (Your `causal_attention` above already handles `S > T` if you wrote it that way.)
#
# Return the output and the grown cache: `(out [B, H, T, D], keys [B, H, P+T, D], values [B, H, P+T, D])`.

# %%
def kv_cache_step(q, k, v, past_k, past_v, scale):
    """Append the new keys and values to the cache, then attend; replaces KVCache.update + layers.attention.

    q, k, v:        float32 [B, H, T, D]  the T new positions (they are positions P .. P+T-1)
    past_k, past_v: float32 [B, H, P, D]  the cache so far (P may be 0)
    scale:          float
    returns (out [B, H, T, D], keys [B, H, P+T, D], values [B, H, P+T, D]), float32
    """
    ### BEGIN SOLUTION
    keys = np.concatenate([past_k, k], axis=2)  # [B, H, S, D], S = P + T
    values = np.concatenate([past_v, v], axis=2)
    T, S = q.shape[2], keys.shape[2]
    scores = (q @ np.swapaxes(keys, -1, -2)) * scale  # [B, H, T, S]
    scores = np.where(np.tri(T, S, k=S - T, dtype=bool), scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = weights / weights.sum(axis=-1, keepdims=True)
    return weights @ values, keys, values
    ### END SOLUTION


# %%
kv_cache_step_result = check("kv_cache_step", kv_cache_step)
### BEGIN HIDDEN TESTS
assert kv_cache_step_result.passed, kv_cache_step_result.message  # what nbgrader's autograde scores
### END HIDDEN TESTS
display(kv_cache_step_result)

# %% [markdown]
# The point of the cache: a prompt of 4 positions, then one position at a time, gives exactly what attention over all 6 positions at once gives:

# %%
if kv_cache_step_result.passed:
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(3, 1, 2, 6, 4)).astype(np.float32)  # 6 positions
    full, _ = layers.attention(q, k, v, 0.5)  # all at once, the package's reference
    empty = np.zeros((1, 2, 0, 4), np.float32)
    out, keys, values = kv_cache_step(q[:, :, :4], k[:, :, :4], v[:, :, :4], empty, empty, 0.5)
    steps = [out]
    for t in (4, 5):
        out, keys, values = kv_cache_step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], keys, values, 0.5)
        steps.append(out)
    print("max difference:", np.abs(np.concatenate(steps, axis=2) - full).max())
else:
    print("finish kv_cache_step above first")

# %% [markdown]
# ## Summary
#
# Every exercise of this notebook, checked again:

# %%
for name, fn in [("causal_attention", causal_attention), ("kv_cache_step", kv_cache_step)]:
    print(check(name, fn))
