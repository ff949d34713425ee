# %% [markdown]
# # 4. The linear probe: what do the layers know?
#
# A generative model is trained only to predict the next pixel, yet to do that well it must learn what
# digits look like. The iGPT paper measures this with a **linear probe**: freeze the model, take the
# hidden states of one layer, average them over the sequence, and fit a logistic regression from those
# features to the labels. The better a *linear* classifier does, the more directly the layer encodes the
# class. Doing it for every layer gives an accuracy-by-layer curve, and the paper's surprise was that it
# peaks **in the middle** of the network: the last layers specialise in predicting the next pixel.
#
# Here: the default model on scikit-learn's digits, with `minigpt_pixels.probe`. The probe is fitted on
# the images the model was trained on and tested on the 180 images it never saw.

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

from minigpt_pixels import DEFAULT_MODEL
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.probe import extract_features, linear_probe
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.train import load_digits_data, split

model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)  # device "cpu": NumPy + Numba kernels
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)  # its 16-grey palette, 8 x 8 images
cfg = model.config
print(f"{cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, {model.num_parameters:,} parameters; "
      f"{len(processor.clusters)} colours, {processor.size['height']} x {processor.size['width']} pixels, SOS = {cfg.sos_token_id}")

data = load_digits_data()  # scikit-learn's 1797 digits, 8 x 8, as uint8 grey images, with labels
train_idx, held_out = split(len(data.images), 0.1, seed=0)  # the split the model was trained with
ids = processor(data.images)["input_ids"]  # [1797, 64] palette ids, no SOS

# %% [markdown]
# ## Features from every layer
#
# `extract_features(model, ids, layer)` runs the frozen transformer and returns
# `hidden_states[layer].mean(axis=1)`: one vector of width `n_embd` per image. Layer 0 is the
# embeddings, layer `i` the output of block `i`, and the last entry is taken after the final layer norm.
# `add_sos=True` feeds the sequence the way the model was trained: SOS, then the pixels (the last pixel
# is only ever a target, so it is dropped). Every layer comes out of the same forward pass:

# %%
layer_ids = list(range(cfg.n_layer + 1))
start = time.perf_counter()
features = extract_features(model, ids, layer_ids, add_sos=True)  # [n_layer + 1, 1797, n_embd]
print(features.shape, f"in {time.perf_counter() - start:.1f} s")
labels = data.labels

# %% [markdown]
# ## One logistic regression per layer
#
# `linear_probe` standardises the features and fits scikit-learn's `LogisticRegression` on the
# training images, then scores the held-out ones. As a baseline, the same probe on the raw pixels.

# %%
raw = np.stack(data.images).reshape(len(data.images), -1) / 255.0  # [1797, 64] grey levels
baseline = linear_probe(raw[train_idx], labels[train_idx], raw[held_out], labels[held_out])

names = ["embeddings"] + [f"block {i}" for i in range(cfg.n_layer - 1)] + [f"block {cfg.n_layer - 1} + ln_f"]
accuracy = []
for layer in layer_ids:
    result = linear_probe(features[layer][train_idx], labels[train_idx], features[layer][held_out], labels[held_out])
    accuracy.append(result.accuracy)
    print(f"layer {layer} ({names[layer]:>16s}): held-out accuracy {result.accuracy:.3f} "
          f"({round((1 - result.accuracy) * result.n_test)} of {result.n_test} wrong), training {result.train_accuracy:.3f}")
print(f"raw pixels              : held-out accuracy {baseline.accuracy:.3f}")
best = int(np.argmax(accuracy))
print(f"best layer: {best} of {cfg.n_layer}")

# %%
plt.figure(figsize=(6, 3.5))
plt.plot(layer_ids, accuracy, "o-", label="linear probe on mean-pooled features")
plt.axhline(baseline.accuracy, color="gray", ls="--", label="linear probe on raw pixels")
for x, a in zip(layer_ids, accuracy):
    plt.annotate(f"{a:.3f}", (x, a), textcoords="offset points", xytext=(0, -9), ha="center", va="top", fontsize=8)
plt.xticks(layer_ids, names, rotation=20)
plt.ylabel("held-out accuracy"); plt.ylim(min(accuracy + [baseline.accuracy]) - 0.08, 1.0)
plt.title("digits: accuracy by layer of the default model"); plt.legend(loc="lower right"); plt.grid(alpha=0.3)
plt.show()


# %% [markdown]
# With 180 test images each one is worth 0.56 points of accuracy (the standard error near 95% is about
# 1.6 points), so a steadier estimate helps: the same probe on five random stratified splits of all
# 1797 digits (80% to fit, 20% to test; `linear_probe`'s `seed` picks the split). Here the model has
# seen most test images during pre-training, but never their labels.

# %%
def repeated(x):
    scores = [linear_probe(x, labels, seed=seed).accuracy for seed in range(5)]
    return np.mean(scores), np.std(scores)

for layer in layer_ids:
    mean, std = repeated(features[layer])
    print(f"layer {layer} ({names[layer]:>16s}): {mean:.3f} +- {std:.3f}")
mean, std = repeated(raw)
print(f"raw pixels              : {mean:.3f} +- {std:.3f}")

# %% [markdown]
# What a linear classifier sees: the best layer's features of the held-out digits, projected onto their
# two main directions (PCA), one colour per digit. Classes that form separate clouds are easy for a
# linear probe; overlapping ones are where it errs.

# %%
from sklearn.decomposition import PCA

points = PCA(n_components=2).fit(features[best][train_idx]).transform(features[best][held_out])  # [180, 2]
plt.figure(figsize=(5, 4))
scatter = plt.scatter(points[:, 0], points[:, 1], c=labels[held_out], cmap="tab10", s=14)
plt.legend(*scatter.legend_elements(), title="digit", fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
plt.title(f"layer {best} features of the held-out digits, PCA")
plt.xticks([]); plt.yticks([])
plt.show()

# %% [markdown]
# Reading the curve. The pooled embeddings are little more than a histogram of the greys in the image
# (averaging over positions throws away *where* each grey is), so they read the digit poorly. One block
# of attention is enough to mix position into the features, and the probe jumps. Whether the later
# layers add to that or give some of it back is the paper's question: in iGPT the best features sit in
# the middle, and the last layers, busy predicting the next pixel, are worse. A model this small, on
# 8 x 8 digits that raw pixels already classify well, shows a small version of the effect at best; the
# paper's gains over pixel baselines need ImageNet-sized models and data. Compare the held-out curve
# with the repeated splits before reading a peak into it: differences within a standard deviation or
# two are noise.
#
# **Summary.** `extract_features` + `linear_probe` are two lines per layer; `probe_by_layer` does the
# loop. The same numbers are in the README, made by `scripts/make_readme_images.py`.
