# %% [markdown]
# # 1. Palettes: how iGPT turns a photo into tokens
#
# ImageGPT never sees red, green and blue values. Each pixel becomes **one token**: the number of the
# nearest colour in a palette of 512 colours, found by k-means clustering of real pixels. Why not RGB?
# Predicting 256 levels for each of 3 channels would triple the sequence (32 x 32 x 3 = 3072 tokens),
# and a softmax over all 256^3 = 16.7 million colours is far too big. 512 colours (9 bits) keep one
# token per pixel, at the price of losing some colour.
#
# This notebook: k-means on real photos, the quantized image beside the original, the error against
# the number of colours, and what iGPT actually sees at 32 x 32 with its 512-colour palette.
# Everything comes from `minigpt_pixels.palette` and `minigpt_pixels.processor`.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_sample_images

from minigpt_pixels.palette import dequantize, fit_palette, inertia, load_palette, quantize
from minigpt_pixels.processor import ImageGPTImageProcessor, pixels_from_images, resize

plt.rcParams["image.interpolation"] = "nearest"  # draw every pixel as a square, not smoothed
plt.show()

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
    print(f"{k:3d} colours in {time.perf_counter() - start:.2f} s")

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
# is PSNR = 10 log10(255^2 / MSE). Each doubling of the palette buys about the same few dB:

# %%
ks = [1, 2, 4, 8, 16, 32, 64, 128]
mse = []
for k in ks:
    clusters = palettes.get(k)
    if clusters is None:
        clusters = fit_palette(pixels, k, seed=0, max_iter=50)
    # inertia is in [-1, 1] units per pixel (3 channels): to 0..255 units per channel
    mse.append(inertia(pixels, clusters) / len(pixels) / 3 * 127.5 ** 2)
psnr = 10 * np.log10(255 ** 2 / np.array(mse))
for k, e, p in zip(ks, mse, psnr):
    print(f"{k:4d} colours: MSE {e:8.1f}   PSNR {p:5.1f} dB")

plt.figure(figsize=(5, 3))
plt.semilogx(ks, psnr, "o-", base=2)
plt.xlabel("colours in the palette"); plt.ylabel("PSNR (dB)"); plt.grid(alpha=0.3)
plt.title("quantization error of the two photos")
plt.show()

# %% [markdown]
# ## What iGPT sees: 32 x 32 pixels, 512 colours
#
# The package ships a 512-colour palette fitted the same way to sample photos (`load_palette()`; a real
# checkpoint brings its own palette in `preprocessor_config.json`). The processor resizes to 32 x 32,
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

fig, axes = plt.subplots(1, 5, figsize=(15, 3))
axes[0].imshow(colours[order].reshape(16, 32, 3)); axes[0].set_title("the 512 colours")
for i, photo in enumerate(photos):
    small = resize(photo, 32, 32)
    axes[1 + 2 * i].imshow(small); axes[1 + 2 * i].set_title("32 x 32")
    axes[2 + 2 * i].imshow(processor.decode(ids[i:i + 1])[0]); axes[2 + 2 * i].set_title("32 x 32, 512 colours")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# **Summary.** A pixel goes from 24 bits of RGB to one 9-bit token. The sequence the model reads is
# the image's tokens in raster order, and (a quirk to remember) the processor does **not** add the
# start-of-sequence token: the causal model's users prepend `SOS = vocab_size - 1` themselves.
# Next: `02_transformer_piece_by_piece.ipynb`.
