# %% [markdown]
# # 4. The linear probe: what do the layers know?
#
# > **Generative Pretraining from Pixels.** Mark Chen, Alec Radford, Rewon Child, Jeff Wu, Heewoo Jun,
# > David Luan, Ilya Sutskever. ICML 2020.
# > [PMLR](https://proceedings.mlr.press/v119/chen20s.html) ·
# > [PDF](https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf) ·
# > [code](https://github.com/openai/image-gpt)
#
# A generative model is trained only to predict the next pixel, yet to do that well it must learn what
# digits look like. The paper measures this with a **linear probe**: freeze the model, take one layer's
# features, and fit a logistic regression from them to the labels. Its features are defined exactly
# (section 2.4): with $h^l$ the input of block $l$ and $n^l = \mathrm{layer\_norm}(h^l)$ the normalised
# input its attention reads,
#
# $$f^l = \langle n^l_i \rangle_i ,$$
#
# the mean over positions $i$ of $n^l$ (OpenAI's code collects these tensors as `ln_1`). The paper's
# surprise (Figure 2, section 4.1) was that accuracy peaks in the **middle** of the network: "the best
# representations for these generative models lie in the middle of the network", because the last
# layers specialise in predicting the next pixel.
#
# `extract_features(..., features="paper")` computes $f^l$: block $l$'s own `ln_1` applied to
# `hidden_states[l]`, then the mean over positions; for the last layer, which has no block after it, the
# state after `ln_f` (the paper's last-layer features). `features="mean"` is what transformers' docs
# suggest: `hidden_states[l].mean(axis=1)`, the *raw* residual stream, whose scale grows with depth and
# whose last entry alone is normalised. The two can give different curves, so this notebook shows both.
#
# A probe result means little on its own, so we do it as a paper would, with curves scored on the same
# images: the **trained** model; an **untrained** model of the same shape (the very weights training
# started from); **raw pixels**, unpooled (a logistic regression on the image) and pooled (the fraction of
# pixels in each colour: what averaging over positions leaves of the image itself); each as the mean and
# spread over 5-fold cross-validation.

# %%
import os
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

from minigpt_pixels import DEFAULT_MODEL
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.probe import (MIDDLE_PEAK_MODEL, SHIFTED_DIGITS_MODEL, compare_probes, extract_features,
                                  middle_peak_probe_data, plot_layer_margins, plot_probe_curves,
                                  shifted_digits)
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.datasets import load_digits_data
THREADS = os.cpu_count() or 1  # the machine's threads these timings ran beside
TIMED_ON = f"timed on {THREADS} thread{'s' * (THREADS > 1)}"  # the notebook tests skip lines that say this

model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)  # device "auto": "numpy" for a model this small
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)  # its 16-grey palette, 8 x 8 images
cfg = model.config
print(f"{cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, {model.num_parameters:,} parameters; "
      f"{len(processor.clusters)} colours, {processor.size['height']} x {processor.size['width']} pixels, SOS = {cfg.sos_token_id}")

data = load_digits_data()  # scikit-learn's 1797 digits, 8 x 8, as uint8 grey images, with labels
ids = processor(data.images)["input_ids"]  # [1797, 64] palette ids, no SOS
labels = data.labels

# %% [markdown]
# ## Features from every layer, both recipes
#
# Layer 0 is the embeddings, layer `i` the output of block `i` (the input of block `i + 1`), and the
# last entry is taken after the final layer norm. `add_sos=True` feeds the sequence the way the model
# was trained: SOS, then the pixels (the last pixel is only ever a target, so it is dropped). Every layer
# comes out of the same forward pass. The paper's recipe puts every layer on the same scale:

# %%
layer_ids = list(range(cfg.n_layer + 1))
start = time.perf_counter()
both = extract_features(model, ids, layer_ids, add_sos=True, features=("mean", "paper"))  # one forward pass
mean_features, paper_features = both["mean"], both["paper"]  # [n_layer + 1, 1797, n_embd] each
print(mean_features.shape)
print(f"both recipes in {time.perf_counter() - start:.1f} s ({TIMED_ON})")
for k in layer_ids:
    print(f"layer {k}: feature norm, mean recipe {np.linalg.norm(mean_features[k], axis=1).mean():6.2f}   "
          f"paper recipe {np.linalg.norm(paper_features[k], axis=1).mean():6.2f}")

# %% [markdown]
# ## One logistic regression per layer
#
# `linear_probe` standardises the features and fits scikit-learn's `LogisticRegression` on the images of
# a training fold, then scores the held-out fold. `compare_probes` does that for every layer of the
# trained model, of `untrained_like(model)` and for the raw pixels, on the same 5 stratified folds
# (every image is tested once; the model saw most of them during pre-training, but never their labels).
# `features=("mean", "paper")` scores both recipes from one forward pass of each model. First
# transformers' recipe, the raw residual stream mean-pooled:

# %%
names = ["embeddings"] + [f"block {i}" for i in range(cfg.n_layer - 1)] + [f"block {cfg.n_layer - 1} + ln_f"]
raw = np.stack(data.images).reshape(len(data.images), -1) / 255.0  # [1797, 64] grey levels
start = time.perf_counter()
by_recipe = compare_probes(model, ids, labels, raw_pixels=raw, n_folds=5, seed=0, features=("mean", "paper"),
                           pooled_pixels=True, n_jobs=-1)  # n_jobs=-1: the fits on every core, the same numbers
curves, paper_curves = by_recipe["mean"], by_recipe["paper"]
trained, untrained, pixels = curves["trained"], curves["untrained"], curves["raw pixels"]
for k in layer_ids:
    print(f"layer {k} ({names[k]:>16s}): held-out accuracy {trained.mean[k]:.3f} ± {trained.std[k]:.3f}   "
          f"untrained {untrained.mean[k]:.3f} ± {untrained.std[k]:.3f}")
print(f"raw pixels: {pixels.mean[0]:.3f} ± {pixels.std[0]:.3f}; pooled (colour fractions): "
      f"{curves['raw pixels, pooled'].mean[0]:.3f} ± {curves['raw pixels, pooled'].std[0]:.3f}")
print(f"({time.perf_counter() - start:.0f} s, {TIMED_ON})")

# %% [markdown]
# Then the paper's recipe, on the same folds:

# %%
p_trained, p_untrained = paper_curves["trained"], paper_curves["untrained"]
print("layer  paper recipe     untrained (paper)   mean recipe")
for k in layer_ids:
    print(f"{k:5d}  {p_trained.mean[k]:.3f} ± {p_trained.std[k]:.3f}    {p_untrained.mean[k]:.3f} ± "
          f"{p_untrained.std[k]:.3f}       {trained.mean[k]:.3f} ± {trained.std[k]:.3f}")
for name, c in [("mean", trained), ("paper", p_trained)]:
    gap = c.difference(c.best_layer, cfg.n_layer)
    print(f"{name} recipe: best layer {c.best_layer} of {cfg.n_layer}; best - last, fold by fold "
          f"{gap.mean():+.3f} ± {gap.std(ddof=1):.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 3.9), sharey=True)
plot_probe_curves(paper_curves, ax=axes[0], title="digits 8 x 8, default model: the paper's features (ln_1, pooled)")
plot_probe_curves(curves, ax=axes[1], title="the same, transformers' recipe (raw h^l pooled)")
fig.tight_layout()

# %%
pooled = curves["raw pixels, pooled"]
display(Markdown(
    f"Reading the curves (this run's numbers, printed above):\n\n"
    f"* **Layer 0 differs most between the recipes**: {trained.mean[0]:.3f} pooled raw, "
    f"{p_trained.mean[0]:.3f} layer-normed. Mean-pooling the raw embeddings leaves a linear map of the colour "
    f"fractions (the pooled raw pixels score {pooled.mean[0]:.3f}), because the position embeddings average to a "
    f"constant; layer-norming each position first is non-linear, and keeps some of where each grey is.\n"
    f"* **Untrained blocks already reach {p_untrained.mean[1:].min():.3f} to {p_untrained.mean[1:].max():.3f}** "
    f"(paper recipe): random attention and MLPs make random features of the image. The gap above that curve is "
    f"what pre-training learned.\n"
    f"* **Raw pixels ({pixels.mean[0]:.3f}) beat every layer** of this 4-block model (best "
    f"{p_trained.mean.max():.3f}): on 8 x 8 digits a stroke always lands on about the same pixel, so pixels "
    f"are already a very good linear feature, and 4 blocks leave no room for a middle."))

# %% [markdown]
# ## A harder task, a deeper model
#
# Paste each digit at a random place on a blank 10 x 10 canvas (`shifted_digits`): a stroke no longer
# lands on the same pixel, and a linear classifier on pixels drops a long way. The 8-block, 64-wide model
# shipped as `minigpt_pixels.probe.SHIFTED_DIGITS_MODEL` (407k weights, 16 greys) was trained on three
# shifted copies of the digits with exactly this command (its README has the rest):
#
#     python -m minigpt_pixels.train --data runs/shifted10 --out runs/shifted10-8x64 --n-embd 64 --n-layer 8 \
#         --n-head 4 --steps 1600 --batch-size 32 --lr 2e-3 --dropout 0.1 --seed 0 --threads 1 --save-every 400 \
#         --keep 10 --no-progress --export runs/shifted10-8x64-final
#
# The probe runs on new shifts of the digits (`seed=1`: not the training images), one per digit. The
# same command line does all of this: `python -m minigpt_pixels.probe --model <dir> --data shifted-digits`.

# %%
deep = ImageGPTForCausalImageModeling.from_pretrained(SHIFTED_DIGITS_MODEL)
deep_processor = ImageGPTImageProcessor.from_pretrained(SHIFTED_DIGITS_MODEL)
images, shifted_labels, offsets = shifted_digits(canvas=10, copies=1, seed=1, return_offsets=True)  # [1797, 10, 10]
shifted_ids = deep_processor(list(images))["input_ids"]  # [1797, 100]
d_last = deep.config.n_layer
start = time.perf_counter()
deep_curves = compare_probes(deep, shifted_ids, shifted_labels, raw_pixels=images / 255.0, n_folds=5, seed=0,
                             features=("paper", "mean"), pooled_pixels=True, n_jobs=-1)
d_paper, d_mean = deep_curves["paper"]["trained"], deep_curves["mean"]["trained"]
d_untrained, d_pixels = deep_curves["paper"]["untrained"], deep_curves["paper"]["raw pixels"]
d_pooled = deep_curves["paper"]["raw pixels, pooled"]
print(f"{d_last} blocks, width {deep.config.n_embd}")
print(f"probed in {time.perf_counter() - start:.0f} s ({TIMED_ON})")
print("layer  paper recipe     untrained (paper)   mean recipe")
for k in d_paper.layers:
    print(f"{k:5d}  {d_paper.mean[k]:.3f} ± {d_paper.std[k]:.3f}    {d_untrained.mean[k]:.3f} ± {d_untrained.std[k]:.3f}"
          f"       {d_mean.mean[k]:.3f} ± {d_mean.std[k]:.3f}")
print(f"raw pixels: {d_pixels.mean[0]:.3f} ± {d_pixels.std[0]:.3f}; pooled: {d_pooled.mean[0]:.3f} ± {d_pooled.std[0]:.3f}")
for name, c in [("paper", d_paper), ("mean", d_mean)]:
    gap = c.difference(c.best_layer, d_last)
    print(f"{name} recipe: best layer {c.best_layer} of {d_last}; best - last {gap.mean():+.3f} ± {gap.std(ddof=1):.3f}, "
          f"ahead on {int((gap > 0).sum())} of 5 folds")

# %% [markdown]
# The curves, and the margin of every layer over the last one **fold by fold** (the folds are shared, so
# a difference between two layers is much steadier than either curve; a layer that truly beats the last
# has its five dots above zero):

# %%
fig, axes = plt.subplots(1, 3, figsize=(17, 3.9), gridspec_kw={"width_ratios": [5, 5, 4]})
plot_probe_curves(deep_curves["paper"], ax=axes[0], title=f"shifted digits 10 x 10, {d_last} blocks: paper's features")
plot_probe_curves({"trained (mean recipe)": d_mean, "raw pixels": d_pixels}, ax=axes[1],
                  title="the same model, transformers' recipe")
plot_layer_margins(d_paper, ax=axes[2], title="paper's features: each layer's margin over the last")
fig.tight_layout()

# %%
gap = d_paper.difference(d_paper.best_layer, d_last)
display(Markdown(
    f"What the shifted digits show (this run's numbers):\n\n"
    f"* **Raw pixels fall to {d_pixels.mean[0]:.3f} ± {d_pixels.std[0]:.3f}** (pooled: {d_pooled.mean[0]:.3f}), and "
    f"the trained model's best layer reads the digit at **{d_paper.mean.max():.3f} ± "
    f"{d_paper.std[np.argmax(d_paper.mean)]:.3f}** (paper recipe, layer {d_paper.best_layer}). Pre-training on "
    f"shifted images made features a linear classifier reads far better than the pixels.\n"
    f"* **The untrained model of the same shape tops out at {d_untrained.mean.max():.3f}**: everything between that "
    f"curve and the trained one was learned from predicting pixels.\n"
    f"* **The paper's recipe moves the peak**: best layer {d_paper.best_layer} of {d_last} with it, "
    f"{d_mean.best_layer} of {d_last} with the raw stream; the layer-normed embeddings (layer 0) read "
    f"{d_paper.mean[0]:.3f} against {d_mean.mean[0]:.3f}.\n"
    f"* **Is it a middle peak?** Best minus last is {gap.mean():+.3f} ± {gap.std(ddof=1):.3f} fold by fold, ahead on "
    f"{int((gap > 0).sum())} of 5 folds, at layer {d_paper.best_layer} of {d_last}. The issue's test for a real "
    f"middle peak asks for a best layer at most three quarters of the way up ({3 * d_last // 4} of {d_last}) and at "
    f"least +0.02 over the last on 4 of 5 folds; " +
    ("this model passes it." if d_paper.best_layer <= 3 * d_last // 4 and gap.mean() >= 0.02 and (gap > 0).sum() >= 4
     else "this model does not: its curve leans toward the top, and it would be wrong to claim a peak. The next "
          "section's model does.")))

# %% [markdown]
# ## A middle peak at classroom scale
#
# What finally made the peak appear here was a **distribution shift**, one of the paper's own settings
# (it probes ImageNet-trained models on CIFAR and STL-10): `MIDDLE_PEAK_MODEL`, 16 blocks of width 32, was
# pre-trained on shifted copies of the digits **0-4 only**, and is probed on new shifts of the digits
# **5-9**, classes it never saw (`middle_peak_probe_data()`; its README has the commands, the time and how
# the peak grew with training). The last layers learned to predict the next pixel of a 0-4; the middle
# ones learned strokes that carry over. Here the probe's regularisation is chosen per layer on an inner
# split of each training fold (`C="tuned"`), as the paper tuned its probe:

# %%
peak_model = ImageGPTForCausalImageModeling.from_pretrained(MIDDLE_PEAK_MODEL)
peak_processor = ImageGPTImageProcessor.from_pretrained(MIDDLE_PEAK_MODEL)
peak_images, peak_labels = middle_peak_probe_data()  # [896, 10, 10] uint8, digits 5-9
start = time.perf_counter()
peak_curves = compare_probes(peak_model, peak_processor(list(peak_images))["input_ids"], peak_labels,
                             raw_pixels=peak_images / 255.0, n_folds=5, seed=0, features="paper", C="tuned",
                             pooled_pixels=True, n_jobs=-1)
m_trained, m_untrained = peak_curves["trained"], peak_curves["untrained"]
m_last = peak_model.config.n_layer
m_gap = m_trained.difference(m_trained.best_layer, m_last)  # [5 folds]
print(f"{m_last} blocks of width {peak_model.config.n_embd}, {len(peak_labels)} images of 5 unseen classes")
print(f"probed in {time.perf_counter() - start:.0f} s ({TIMED_ON})")
print(f"best layer {m_trained.best_layer} of {m_last}: {m_trained.mean.max():.3f}; last layer {m_trained.mean[-1]:.3f}; "
      f"best - last, fold by fold: {' '.join(f'{g:+.3f}' for g in m_gap)} -> {m_gap.mean():+.3f} ± {m_gap.std(ddof=1):.3f}")
print(f"untrained at layer {m_trained.best_layer}: {m_untrained.mean[m_trained.best_layer]:.3f}; raw pixels "
      f"{peak_curves['raw pixels'].mean[0]:.3f}, pooled {peak_curves['raw pixels, pooled'].mean[0]:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(14, 3.9), gridspec_kw={"width_ratios": [3, 2]})
plot_probe_curves(peak_curves, ax=axes[0], title=f"pre-trained on digits 0-4, probed on 5-9: {m_last} blocks")
plot_layer_margins(m_trained, ax=axes[1], title="each layer's margin over the last, fold by fold")
fig.tight_layout()

# %%
passes = m_trained.best_layer <= 3 * m_last / 4 and m_gap.mean() >= 0.02 and (m_gap > 0).sum() >= 4
display(Markdown(
    f"The best layer is **{m_trained.best_layer} of {m_last}**, ahead of the last by {m_gap.mean():+.3f} ± "
    f"{m_gap.std(ddof=1):.3f} with {int((m_gap > 0).sum())} of 5 folds in its favour, and "
    f"{m_trained.mean.max() - m_untrained.mean[m_trained.best_layer]:.3f} above the untrained model there: "
    f"{'it passes' if passes else 'it does not pass'} the test above. The margin is small, and it leans on the "
    f"probe's tuned regularisation (try `C=1.0` in the cell above); the paper's peaks are larger, in models "
    f"thousands of times bigger. Raw pixels ({peak_curves['raw pixels'].mean[0]:.3f}) still beat every layer on "
    f"these five classes: the features carry over to digits the model never saw, but are not better than pixels."))

# %% [markdown]
# ## What the features encode: shift or digit?
#
# The best layer's features of the shifted digits, projected onto their two main directions (PCA), coloured
# once by **where the digit was pasted** and once by **which digit** it is, beside the same projection of
# the raw pixels. How much of each main direction the shift or the digit explains is the $R^2$ of a linear
# fit of that direction on it:

# %%
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression


def r2(points, target):
    """Fraction of the variance of `points` [N, 2] a linear fit on `target` [N, k] explains."""
    return LinearRegression().fit(target, points).score(target, points)


best_features = extract_features(deep, shifted_ids, d_paper.best_layer, add_sos=True, features="paper")  # [1797, 64]
shift_index = offsets[:, 0] * 3 + offsets[:, 1]  # the 9 possible pastes on a 10 x 10 canvas
digit_onehot = np.eye(10)[shifted_labels]
shift_onehot = np.eye(9)[shift_index]
fig, axes = plt.subplots(2, 2, figsize=(11, 8))
for col, (x, title) in enumerate([(images.reshape(len(images), -1) / 255.0, "raw pixels"),
                                  (best_features, f"layer {d_paper.best_layer}, paper's features")]):
    points = PCA(n_components=2).fit_transform(x)  # [1797, 2]
    for row, (colour, cmap, what, onehot) in enumerate([(shift_index, "viridis", "paste position", shift_onehot),
                                                        (shifted_labels, "tab10", "digit", digit_onehot)]):
        ax = axes[row, col]
        sc = ax.scatter(points[:, 0], points[:, 1], c=colour, cmap=cmap, s=5)
        ax.set_title(f"{title}: coloured by {what} (R² {r2(points, onehot):.2f})", fontsize=10)
        ax.set_xlabel("principal component 1"); ax.set_ylabel("principal component 2")
        bar = fig.colorbar(sc, ax=ax)
        bar.set_label("paste position (row x 3 + column)" if row == 0 else "digit")
fig.tight_layout()
points = PCA(n_components=2).fit_transform(best_features)
r2_shift, r2_digit = r2(points, shift_onehot), r2(points, digit_onehot)
print(f"layer {d_paper.best_layer}: R² of its two main directions on the paste position {r2_shift:.2f}, "
      f"on the digit {r2_digit:.2f}")
display(Markdown(
    f"The two main directions of layer {d_paper.best_layer}'s features say more about "
    f"{'*where* the digit is than *which* digit' if r2_shift > r2_digit else '*which* digit than *where* it is'} "
    f"(R² {r2_shift:.2f} against {r2_digit:.2f}; the raw pixels' are in the titles above). "
    f"A linear probe still reads the digit at {d_paper.mean.max():.3f} because it uses all "
    f"{deep.config.n_embd} directions, not just the two largest: a picture of two PCA axes alone would "
    f"undersell what the layer knows."))

# %% [markdown]
# **Summary.** `extract_features(..., features="paper")` + `linear_probe` are two lines per layer;
# `compare_probes` does the curves on shared folds and `plot_probe_curves` draws them;
# `python -m minigpt_pixels.probe` does it all from the command line. Always probe an untrained model of
# the same shape beside the trained one, and report the spread over splits and the margin fold by fold:
# without them a small difference between layers reads as a finding.
#
# ## Questions and things to try
#
# 1. **Why does layer 0 score so differently under the two recipes?** *(Mean-pooling raw embeddings
#    averages the position embeddings to a constant, leaving colour fractions; layer-norming each
#    position first is non-linear and keeps some position information.)*
# 2. **Try this:** probe with `C="tuned"` (regularisation chosen per layer on an inner split of each
#    training fold, as the paper tuned its probe). Does the best layer move?
# 3. **Try this:** probe the untrained model's layers with `features="mean"`. Why do deeper random
#    blocks read worse? *(Each random block adds noise of growing scale to the residual stream.)*
# 4. **Why pool every position?** Try pooling only the second half of the sequence (slice the hidden
#    states yourself): later positions have seen more of the image. *(The paper pools all positions.)*
# 5. **Why would the last layers of a big model be worse features?** *(They specialise in the exact
#    colour of the next pixel, a local task; the paper's Figure 2 shows the peak in the middle.)*
