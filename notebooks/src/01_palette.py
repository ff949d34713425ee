# %% [markdown]
# # 1. Palettes: how iGPT turns a photo into tokens
#
# > **The paper.** Mark Chen, Alec Radford, Rewon Child, Jeff Wu, Heewoo Jun, David Luan, Ilya Sutskever,
# > *Generative Pretraining from Pixels*, ICML 2020
# > ([PDF](https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf),
# > [code](https://github.com/openai/image-gpt)). Its abstract states the idea and the headline results:
# > "We train a sequence Transformer to auto-regressively predict pixels, without incorporating knowledge
# > of the 2D input structure. [...] On CIFAR-10, we achieve 96.3% accuracy with a linear probe,
# > outperforming a supervised Wide ResNet, and 99.0% accuracy with full fine-tuning" (Abstract).
# > These notebooks follow the paper step by step on a model small enough to train on a laptop: the
# > palette here, the transformer in 2, sampling in 3, linear probes in 4, training in 5, likelihood in 7.
#
# ImageGPT never sees red, green and blue values. Each pixel becomes **one token**: the number of the
# nearest colour in a palette of 512 colours, found by k-means clustering of real pixels. Why not RGB?
# Predicting 256 levels for each of 3 channels would triple the sequence (32 x 32 x 3 = 3072 tokens),
# and a softmax over all 256^3 = 16.7 million colours is far too big. 512 colours (9 bits) keep one
# token per pixel, at the price of losing some colour. The paper (Section 3, *Context Reduction*):
# "we create our own 9-bit color palette by clustering (R, G, B) pixel values using k-means with
# k = 512".
#
# This notebook: k-means on real photos, the quantized image beside the original, the error against
# the number of colours, and what iGPT actually sees at 32 x 32 with its 512-colour palette.
# Everything comes from `minigpt_pixels.palette` and `minigpt_pixels.processor`.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from sklearn.datasets import load_sample_images
from threadpoolctl import threadpool_info

from minigpt_pixels.palette import dequantize, fit_palette, inertia, load_palette, quantize
from minigpt_pixels.processor import ImageGPTImageProcessor, pixels_from_images, resize

plt.rcParams["image.interpolation"] = "nearest"  # draw every pixel as a square, not smoothed
plt.show()
THREADS = max([pool["num_threads"] for pool in threadpool_info()] or [1])  # BLAS threads the timings ran on


def timed(seconds):
    """A timing, said with the thread count it ran on (the notebook tests skip lines that say this)."""
    return f"{seconds:.2f} s (timed on {THREADS} thread{'s' * (THREADS > 1)})"

# %% [markdown]
# ## Real photos, as the model's pixels
#
# scikit-learn ships two photos (so this runs offline). We shrink them so k-means takes a second, not a
# minute. The palette lives in the model's pixel space: each channel rescaled to [0, 1], then normalised
# with mean 0.5 and std 0.5 to **[-1, 1]**, exactly as the image processor does.

# %%
photos = [resize(p, 107, 160) for p in load_sample_images().images]  # 2 x [107, 160, 3] uint8
pixels = pixels_from_images(photos)  # [N, 3] float32 in [-1, 1]
print(pixels.shape, pixels.dtype, pixels.min(), pixels.max())

fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
for ax, p in zip(axes, photos):
    ax.imshow(p); ax.axis("off")
plt.show()

# %% [markdown]
# ## k-means palettes of different sizes
#
# `fit_palette(pixels, k)` runs k-means: seed `k` centres with k-means++, then alternate *assign every
# pixel to its nearest centre* and *move every centre to the mean of its pixels* until the centres stop
# moving. (You can write that step yourself in `exercises/04_kmeans_step.ipynb`.)

# %%
palettes = {}
for k in [2, 4, 8, 16, 64]:
    start = time.perf_counter()
    palettes[k] = fit_palette(pixels, k, seed=0)  # [k, 3] in [-1, 1]
    print(f"{k:3d} colours in {timed(time.perf_counter() - start)}")

# %% [markdown]
# Quantizing is the processor's job: each pixel becomes the id of its nearest palette colour
# (`input_ids`), and `decode` maps ids back to RGB. Here at the photos' own size (no resizing):

# %%
fig, axes = plt.subplots(2, 1 + len(palettes), figsize=(13, 3.5))
for row, photo in enumerate(photos):
    axes[row, 0].imshow(photo); axes[row, 0].set_title("original")
    for ax, (k, clusters) in zip(axes[row, 1:], palettes.items()):
        processor = ImageGPTImageProcessor(clusters=clusters, size={"height": 107, "width": 160}, do_resize=False)
        ids = processor(photo)["input_ids"]  # [1, 107 * 160] palette ids
        ax.imshow(processor.decode(ids)[0]); ax.set_title(f"{k} colours")
for ax in axes.flat:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Error against the number of colours
#
# k-means minimises the *inertia*: the summed squared distance from each pixel to its colour. Per pixel
# and per channel, in 0..255 units, that is a mean squared error, and the usual picture-quality number
# is PSNR = 10 log10(255^2 / MSE), in decibels (higher is better). The curve runs to iGPT's 512
# colours. A caveat: each palette here is fitted to the very pixels it is scored on, so these are
# in-sample errors, the best case; a palette fitted to other photos would do worse on these.

# %%
ks = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
mse = []
for k in ks:
    clusters = palettes.get(k)
    if clusters is None:
        clusters = fit_palette(pixels, k, seed=0, max_iter=50)  # capped: the big palettes barely move after that
    # inertia is in [-1, 1] units per pixel (3 channels): to 0..255 units per channel
    mse.append(inertia(pixels, clusters) / len(pixels) / 3 * 127.5 ** 2)
psnr = 10 * np.log10(255 ** 2 / np.array(mse))
for k, e, p in zip(ks, mse, psnr):
    print(f"{k:4d} colours: MSE {e:8.1f}   PSNR {p:5.1f} dB")

gains = np.diff(psnr)  # dB bought by each doubling
print(f"each doubling buys {gains[0]:.1f} dB at first, {gains[-1]:.1f} dB from 256 to 512 colours")

plt.figure(figsize=(5, 3))
plt.semilogx(ks, psnr, "o-", base=2)
plt.xlabel("colours in the palette (log scale)"); plt.ylabel("PSNR (dB)"); plt.grid(alpha=0.3)
plt.title("quantization error of the two photos (in-sample)")
plt.show()

# %%
display(Markdown(
    f"The gain per doubling is not constant: it is {gains[:3].mean():.1f} dB on average over the first three "
    f"doublings and {gains[-3:].mean():.1f} dB over the last three. At 512 colours the error is "
    f"{np.sqrt(mse[-1]):.1f} grey levels (root mean square, per channel, out of 255): small, but not nothing."))
# %% [markdown]
# ## What iGPT sees: 32 x 32 pixels, 512 colours
#
# The package ships a 512-colour palette fitted the same way (`load_palette()`, made by
# `scripts/make_palette.py`). It was fitted to these same two photos plus one more (matplotlib's Grace
# Hopper), so it flatters them, as above. A real checkpoint brings its own palette, fitted to ImageNet,
# in `preprocessor_config.json`. The processor resizes to 32 x 32,
# normalises, and quantizes: **1024 tokens per image**, and the transformer models that sequence,
# left to right, top to bottom.

# %%
clusters = load_palette()  # [512, 3] in [-1, 1]
colours = dequantize(np.arange(len(clusters)), clusters)  # [512, 3] uint8
order = np.argsort(colours @ np.array([0.299, 0.587, 0.114]))  # dark to light

processor = ImageGPTImageProcessor(clusters=clusters)  # size 32 x 32, as the iGPT checkpoints
ids = processor(photos)["input_ids"]  # [2, 1024], no start-of-sequence token
print(processor)
print("ids:", ids.shape, ids.dtype, "first 12 tokens of the first photo:", ids[0, :12])

fig = plt.figure(figsize=(10, 5))
plt.imshow(colours[order].reshape(16, 32, 3))
plt.xticks(np.arange(0, 32, 4)); plt.yticks(np.arange(16))
plt.xlabel("column"); plt.ylabel("row (16 rows of 32)")
plt.title("the shipped palette's 512 colours, dark to light (each square one token)")
plt.show()

fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for i, photo in enumerate(photos):
    small = resize(photo, 32, 32)
    axes[2 * i].imshow(small); axes[2 * i].set_title("32 x 32")
    axes[2 * i + 1].imshow(processor.decode(ids[i:i + 1])[0]); axes[2 * i + 1].set_title("32 x 32, 512 colours")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# **Summary.** A pixel goes from 24 bits of RGB to one 9-bit token. The sequence the model reads is
# the image's tokens in raster order, and (a quirk to remember) the processor does **not** add the
# start-of-sequence token: the causal model's users prepend `SOS = vocab_size - 1` themselves.
# Next: `02_transformer_piece_by_piece.ipynb`.
#
# ## Questions and things to try
#
# 1. Why does the paper cluster colours rather than predict R, G and B as three tokens per pixel?
# 2. Change the palette sizes in the k-means cell (try 3 or 5 colours): which colours does k-means
#    keep first, and why those?
# 3. The PSNR curve bends: why does each doubling of the palette buy less than the one before?
# 4. Fit a 16-colour palette to one photo and quantize the other with it: how much worse is the
#    PSNR than in-sample?
# 5. How many bits does one token carry with 512 colours, and how many did the pixel have?
#
# <details><summary>Answers (for the teacher)</summary>
#
# 1. Three tokens per pixel triple the sequence (3072 for 32 x 32), and attention's cost grows with its
#    square; one 9-bit token per pixel keeps 1024.
# 2. The colours that cover the most pixels (large areas: sky, shadows), because k-means minimises the
#    total squared error, which big areas dominate.
# 3. The first colours split large, very different groups; later ones split already similar colours,
#    so each removes less error (diminishing returns).
# 4. Worse, often by several dB: the palette lacks colours the other photo needs (out-of-sample error).
# 5. log2(512) = 9 bits per token, against 24 bits for an 8-bit RGB pixel.
# </details>
