# %% [markdown]
# # 3. Sampling: new images, completions, and the KV cache
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
# draws all 64 pixels. The first call also compiles the Numba kernels (a few seconds, once per process).

# %%
start = time.perf_counter()
samples = sample_images(model, processor, 32, seed=0)  # [32, 8, 8, 3] uint8
print(f"{len(samples)} images in {time.perf_counter() - start:.2f} s (compilation included)")
show([list(samples[i:i + 8]) for i in range(0, 32, 8)], "32 samples from the default model")

# %% [markdown]
# ## Completions
#
# As in the iGPT paper: keep the top half of an image the model never saw in training, and let it draw
# the rest, several times. Each row: the original, the prompt (the hidden part tinted blue), then five
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
generate(model, prompt, max_new_tokens=2)  # warm-up: compile both code paths before timing
model(np.repeat(prompt, 16, axis=1))

start = time.perf_counter()
cached = generate(model, prompt, max_new_tokens=64)  # [8, 65], greedy
t_cache = time.perf_counter() - start

start = time.perf_counter()
seq = prompt
for _ in range(64):  # no cache: the whole sequence, every step
    logits = model(seq).logits[:, -1]  # [8, V]
    seq = np.concatenate([seq, logits.argmax(-1)[:, None]], axis=1)
t_plain = time.perf_counter() - start

assert np.array_equal(seq, cached)
print(f"with the KV cache: {t_cache * 1000:6.1f} ms   without: {t_plain * 1000:6.1f} ms   "
      f"speed-up {t_plain / t_cache:.1f}x (positions processed: 64 vs 2080 per sequence)")

# %% [markdown]
# The speed-up is below the 32x in positions because each step also pays a fixed cost (Python, the
# small matmuls); it grows with the sequence length, quadratically for the attention part. For
# iGPT's 1024-token images it is the difference between minutes and hours.
#
# ## Temperature and top-k, side by side
#
# The logits are divided by a **temperature** before the softmax: below 1 sharpens the distribution
# (cleaner, more alike), above 1 flattens it (more varied, noisier). **Top-k** keeps only the k most
# likely colours at each step; k = 1 is greedy, so every image of that row is the same. Same seed in
# every row.

# %%
rows, labels = [], []
for t in [0.5, 0.8, 1.0, 1.5]:
    rows.append(list(sample_images(model, processor, 8, seed=1, temperature=t)))
    labels.append(f"temperature {t}")
for k in [1, 2, 4, 16]:
    rows.append(list(sample_images(model, processor, 8, seed=1, top_k=k)))
    labels.append(f"top-k {k}")
show(rows, scale=2.4)
for i, label in enumerate(labels):
    plt.text(-2, 4.5 + 9 * i, label, ha="right", va="center")
plt.show()

# %% [markdown]
# **Summary.** Generation is the model run one position at a time, made cheap by the KV cache; the
# sampling rules (temperature, then top-k, then top-p, in transformers' order) are small pure functions
# in `generation.py`. Write top-k yourself in `exercises/03_top_k_sampling.ipynb` and the cache step in
# `exercises/02_causal_attention_and_kv_cache.ipynb`. Next: `04_linear_probe.ipynb`.
