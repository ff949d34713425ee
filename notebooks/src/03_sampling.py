# %% [markdown]
# # 3. Sampling: new images, completions, and the KV cache
#
# > **The paper.** Chen, Radford, Child, Wu, Jun, Luan, Sutskever, *Generative Pretraining from Pixels*,
# > ICML 2020 ([PDF](https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf)). A model
# > of $p(x) = \prod_t p(x_t \mid x_{<t})$ (Section 2.1; notebook 2) is also a generator: draw $x_1$ from
# > the first factor, then $x_2$ given it, and so on in raster order. The paper shows such samples and
# > completions of half-images from its ImageNet models; here the same loop runs on a model of digits.
#
# The default model shipped in the package is a small iGPT trained on scikit-learn's 8 x 8 handwritten
# digits with a 16-grey palette (`python -m minigpt_pixels.train`; see `05_training.ipynb`). Generation
# is one token at a time: feed the sequence so far, read the logits of the last position, draw a
# colour, append it, repeat. This notebook uses `minigpt_pixels.generation`.

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_info

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

from minigpt_pixels import DEFAULT_MODEL
from minigpt_pixels.generation import complete_images, generate, sample_images
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.sample import image_grid
from minigpt_pixels.datasets import load_digits_data, split

model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)  # device "auto": "numpy" for a model this small
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)  # its 16-grey palette, 8 x 8 images
cfg = model.config
print(f"{cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, {model.num_parameters:,} parameters; "
      f"{len(processor.clusters)} colours, {processor.size['height']} x {processor.size['width']} pixels, SOS = {cfg.sos_token_id}")

data = load_digits_data()  # scikit-learn's 1797 digits, 8 x 8, as uint8 grey images, with labels
train_idx, held_out = split(len(data.images), 0.1, seed=0)  # the split the model was trained with
ids = processor(data.images)["input_ids"]  # [1797, 64] palette ids, no SOS
print(f"backend: {model.device} (" + ("NumPy and BLAS: nothing is compiled)" if model.device == "numpy"
                                    else "Numba kernels: compiled, or loaded from the cache, on first use)"))
THREADS = max([pool["num_threads"] for pool in threadpool_info()] or [1])  # BLAS threads the timings ran on
TIMED_ON = f"timed on {THREADS} thread{'s' * (THREADS > 1)}"  # the notebook tests skip lines that say this


def show(rows, title=None, scale=2.0):
    """A grid of uint8 images: rows is a list of lists of [H, W, 3] arrays."""
    grid = image_grid(rows)
    plt.figure(figsize=(scale * grid.shape[1] / 9, scale * grid.shape[0] / 9))
    plt.imshow(grid); plt.axis("off")
    if title:
        plt.title(title)


# %% [markdown]
# ## Unconditional samples
#
# An unconditional image starts from the start-of-sequence token alone (`SOS = vocab_size - 1`) and
# draws all 64 pixels, each from the model's distribution at temperature 1.

# %%
start = time.perf_counter()
samples = sample_images(model, processor, 32, seed=0)  # [32, 8, 8, 3] uint8
print(f"{len(samples)} images in {time.perf_counter() - start:.2f} s ({TIMED_ON})")
show([list(samples[i:i + 8]) for i in range(0, 32, 8)], "32 samples from the default model")

# %% [markdown]
# ## Completions
#
# As in the paper's completions: keep the top half of an image the model never saw in training, and let
# it draw the rest, several times. Each row: the original, the prompt (the hidden part tinted blue), then five
# completions.

# %%
picks = held_out[:6]
completions = complete_images(model, processor, ids[picks], prompt_rows=4, num_completions=5, seed=0)  # [6, 5, 8, 8, 3]
originals = processor.decode(ids[picks])  # [6, 8, 8, 3]
prompts = originals.copy()
prompts[:, 4:] = (170, 200, 255)  # the rows the model fills in
show([[o, p, *c] for o, p, c in zip(originals, prompts, completions)], "original | prompt | 5 completions")

# %% [markdown]
# ## The KV cache, measured
#
# Without a cache, each new token means running the model over the whole sequence again: a 64-token
# image processes 1 + 2 + ... + 64 = 2080 positions. With the cache, keys and values of past positions
# are kept, and each step processes just the new position: 64 in all. `generate` uses the cache; below,
# the same greedy generation written without one, timed on the spot. Greedy decoding is deterministic,
# so both must give the same tokens.

# %%
prompt = np.full((8, 1), cfg.sos_token_id)  # 8 sequences, SOS only


def without_cache(n):
    seq = prompt
    for _ in range(n):  # no cache: the whole sequence, every step
        logits = model(seq).logits[:, -1]  # [8, V]
        seq = np.concatenate([seq, logits.argmax(-1)[:, None]], axis=1)
    return seq


def best_of(fn, repeats=3):
    """The fastest of a few runs: the least disturbed by whatever else the machine is doing."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); out = fn(); times.append(time.perf_counter() - start)
    return out, min(times)


assert np.array_equal(without_cache(64), generate(model, prompt, max_new_tokens=64))  # greedy: the same tokens
print("with and without the cache: the same 64 tokens for all 8 sequences")
for n in [16, 32, 64]:
    _, t_cache = best_of(lambda: generate(model, prompt, max_new_tokens=n))
    _, t_plain = best_of(lambda: without_cache(n))
    print(f"{n:2d} tokens: with the KV cache {t_cache * 1000:6.1f} ms, without {t_plain * 1000:6.1f} ms, "
          f"speed-up {t_plain / t_cache:4.1f}x ({TIMED_ON}); positions processed {n} vs {n * (n + 1) // 2}")

# %% [markdown]
# Without the cache, `n` tokens process `n (n + 1) / 2` positions instead of `n`: a ratio of
# `(n + 1) / 2`, which grows **linearly** with the length (each uncached step also redoes its attention
# over the whole prefix, but a cached step attends to the whole prefix too, so that part does not widen
# the ratio). The measured speed-up stays below the ratio of positions because every step also pays a
# fixed cost (Python, many small matmuls). For iGPT's 1024-token images the ratio is 512.
#
# ## Temperature and top-k, side by side
#
# The logits are divided by a **temperature** before the softmax: below 1 sharpens the distribution
# (cleaner, more alike), above 1 flattens it (more varied, noisier). **Top-k** keeps only the k most
# likely colours at each step; k = 1 is greedy, so every image of that row is the same. The palette
# has only 16 colours, so k = 16 keeps them all: it is plain sampling at temperature 1 (checked below),
# and the rows stop at k = 8. Same seed in every row.

# %%
rows, labels = [], []
for t in [0.5, 0.8, 1.0, 1.5]:
    rows.append(list(sample_images(model, processor, 8, seed=1, temperature=t)))
    labels.append(f"temperature {t}")
for k in [1, 2, 4, 8]:
    rows.append(list(sample_images(model, processor, 8, seed=1, top_k=k)))
    labels.append(f"top-k {k}")
show(rows, scale=2.4)
for i, label in enumerate(labels):
    plt.text(-2, 4.5 + 9 * i, label, ha="right", va="center")
plt.show()
same = np.array_equal(sample_images(model, processor, 8, seed=1, top_k=len(processor.clusters)), rows[2])
print(f"top-k {len(processor.clusters)} (every colour) gives the temperature 1.0 row exactly: {same}")

# %% [markdown]
# **Summary.** Generation is the model run one position at a time, made cheap by the KV cache; the
# sampling rules (temperature, then top-k, then top-p, in transformers' order) are small pure functions
# in `generation.py`. Write top-k yourself in `exercises/03_top_k_sampling.ipynb` and the cache step in
# `exercises/02_causal_attention_and_kv_cache.ipynb`. Next: `04_linear_probe.ipynb`.
#
# ## Questions and things to try
#
# 1. Change `prompt_rows` in the completions cell to 2 and to 6: when do the completions agree with the
#    original digit, and why?
# 2. Try temperature 0.1 and 3.0: what do the samples look like, and why?
# 3. For top-k, which k is the same as greedy decoding, and which the same as plain sampling here?
# 4. Without the cache, how many positions does a 1024-token iGPT image process? With it?
# 5. Why does the cache check compare greedy decoding rather than sampled images?
#
# <details><summary>Answers (for the teacher)</summary>
#
# 1. With more rows given, the digit's identity is settled and the completions converge on it; with 2
#    rows several digits fit, so the completions disagree.
# 2. 0.1 is nearly greedy (clean, nearly identical images); 3.0 flattens the distribution (noise).
# 3. k = 1 is greedy; k = 16, the whole palette, is plain sampling.
# 4. 1024 x 1025 / 2 = 524,800 without, 1024 with: 512 times fewer.
# 5. Greedy is deterministic, so equal tokens show the cache changes nothing; a sampled token could flip
#    on a rounding difference near a draw's boundary without any bug.
# </details>
