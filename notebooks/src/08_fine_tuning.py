# %% [markdown]
# # 8. Fine-tuning against the linear probe
#
# > **Generative Pretraining from Pixels.** Mark Chen, Alec Radford, Rewon Child, Jeff Wu, Heewoo Jun,
# > David Luan, Ilya Sutskever. ICML 2020.
# > [PMLR](https://proceedings.mlr.press/v119/chen20s.html) ·
# > [PDF](https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf) ·
# > [code](https://github.com/openai/image-gpt)
#
# The paper judges its features two ways. The **linear probe** (notebook 4) freezes the model and fits a
# logistic regression on pooled features; **fine-tuning** trains every weight, with a fresh linear head, on
# the labels. Its abstract gives both for its largest model on CIFAR-10:
#
# > "On CIFAR-10, we achieve 96.3% accuracy with a linear probe, outperforming a supervised Wide ResNet,
# > and 99.0% accuracy with full fine-tuning" (abstract)
#
# and the fine-tuning head is the same pooling as the probe's, at the top of the network:
#
# > "When fine-tuning, we average pool $n^L$ across the sequence dimension to extract a d-dimensional
# > vector of features per example" (section 2.3)
#
# where $n^L$ is the last layer norm's output. transformers' `ImageGPTForImageClassification` does exactly
# that: it mean-pools `hidden_states[-1]` (after `ln_f`) over every position, then a linear layer without
# bias. Here the default model is fine-tuned that way (its head started from the probe's solution, for
# speed: see below) on scikit-learn's digits, on the **same five folds**
# as the linear probe and raw pixels, so the three are compared image for image, each with its spread.

# %%
import os
import time
import warnings
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

from minigpt_pixels import DEFAULT_MODEL, checkpoints, datasets, optim, train
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from minigpt_pixels.probe import compare_probes, extract_features
from minigpt_pixels.processor import ImageGPTImageProcessor

THREADS = os.cpu_count() or 1  # the machine's threads these timings ran beside
TIMED_ON = f"timed on {THREADS} thread{'s' * (THREADS > 1)}"  # the notebook tests skip lines that say this

model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)
data = datasets.load_digits_data()  # 1797 digits, 8 x 8
ids = processor(data.images)["input_ids"]  # [1797, 64] palette ids; the classifier reads them without SOS
labels = data.labels
N_FOLDS, SEED = 5, 0
# the folds cross_validated_probe makes from the same labels and seed: every image is tested once
folds = list(StratifiedKFold(N_FOLDS, shuffle=True, random_state=SEED).split(np.zeros(len(labels)), labels))
print(f"{model.config.n_layer} blocks of width {model.config.n_embd}; {len(labels)} images, {N_FOLDS} folds of "
      f"{len(folds[0][1])} test images")

# %% [markdown]
# ## The fine-tuned classifier
#
# `python -m minigpt_pixels.train --finetune-from DIR` builds the classifier from the causal model's body
# (every weight but the LM head) and a fresh random head `score.weight`, then trains all the weights; the
# default model's README reports that run (1000 steps). A fresh head needs hundreds of steps before the
# body's gradients mean anything, more than this notebook's minute or two allows. So here each fold's
# head **starts from the linear probe's own solution** on that fold's training images (a logistic
# regression on the pooled `ln_f` features, without intercept because transformers' head has no bias),
# and then every weight is fine-tuned for `STEPS` batches of 32 with the package's `train.train_step`
# (forward, backward, clip, AdamW) under a warm-up + cosine learning rate. Starting from the probe and
# then fine-tuning is a known recipe (linear probing, then fine-tuning); step 0 *is* a linear probe, so
# the notebook shows what fine-tuning adds on top of it.

# %%
STEPS, BATCH, LR, WARMUP = 40, 32, 3e-4, 5
pooled = extract_features(model, ids, -1)  # [1797, C]: what the classifier's head reads (ln_f, pooled, no SOS)


def classifier_from(causal, fit, n_labels=10):
    """The causal model's body + a linear head fitted to the pooled ln_f features of the images `fit`."""
    cfg = replace(causal.config, num_labels=n_labels, id2label={i: str(i) for i in range(n_labels)},
                  label2id=None, problem_type="single_label_classification", extra={})
    params = {k: v for k, v in checkpoints.writable(causal.params).items() if k != "lm_head.weight"}
    head = LogisticRegression(fit_intercept=False, max_iter=3000).fit(pooled[fit], labels[fit])
    params["score.weight"] = head.coef_.astype(np.float32)  # [classes, C]
    return ImageGPTForImageClassification(cfg, params)


def accuracy(clf, images, batch=32):
    """Held-out accuracy: the classifier's forward pass (no dropout), the argmax of its logits, `batch` images
    at a time (a small batch keeps the activations in cache: 360 images at once ran 4x slower)."""
    logits = np.concatenate([clf(ids[images[i:i + batch]]).logits for i in range(0, len(images), batch)])  # [n, 10]
    return float(np.mean(logits.argmax(axis=-1) == labels[images]))


def fine_tune(fit, seed=0):
    """-> (the fine-tuned classifier, the same classifier before any weight moved, per-step losses)."""
    clf = classifier_from(model, fit)
    before = ImageGPTForImageClassification(clf.config, {k: v.copy() for k, v in clf.params.items()})
    opt = optim.AdamW(clf.params, lr=LR, betas=(0.9, 0.95), weight_decay=0.1,
                      decay=optim.decay_names(clf.params, False))
    losses = []
    for step in range(STEPS):
        batch = np.random.default_rng([seed, step]).choice(fit, BATCH, replace=False)  # image indices
        lr = optim.lr_schedule(step, LR, STEPS, WARMUP)
        dropout = np.random.default_rng([seed + 1, step])  # the config's dropout (0.1), as in train.py
        loss, _ = train.train_step(clf, opt, ids[batch], labels[batch], lr, 1.0, dropout)
        losses.append(loss)
    return clf, before, losses


start = time.perf_counter()
head_only, fine_tuned, curves_by_fold = np.empty(N_FOLDS), np.empty(N_FOLDS), []
with train.set_threads(1):  # matrices this small run fastest on one BLAS thread
    for f, (fit, test) in enumerate(folds):
        clf, before, losses = fine_tune(fit, seed=f)
        fine_tuned[f], head_only[f] = accuracy(clf, test), accuracy(before, test)  # before: the probe's head alone
        curves_by_fold.append(losses)
        print(f"fold {f}: head from the probe {head_only[f]:.3f} -> fine-tuned {STEPS} steps {fine_tuned[f]:.3f}")
finetune_seconds = time.perf_counter() - start
print(f"fine-tuned: {fine_tuned.mean():.3f} ± {fine_tuned.std(ddof=1):.3f} over {N_FOLDS} folds")
print(f"({finetune_seconds:.0f} s, {TIMED_ON}, one BLAS thread used)")

# %% [markdown]
# ## The linear probe and raw pixels, on the same folds
#
# `compare_probes` with the paper's features (`features="paper"`: each layer's hidden state put through
# block $l$'s own `ln_1`, then mean-pooled; after `ln_f` for the last layer), every layer, and raw pixels.
# The probe's last layer sees exactly the pooled vector the fine-tuned head sees, before any weight moved.

# %%
with train.set_threads(1):
    curves = compare_probes(model, ids, labels, raw_pixels=np.stack(data.images).reshape(len(labels), -1) / 255.0,
                            untrained=False, features="paper", n_folds=N_FOLDS, seed=SEED)
probe, pixels = curves["trained"], curves["raw pixels"]
best, last = probe.best_layer, probe.layers[-1]
rows = {"fine-tuned (all weights)": fine_tuned,
        "its head before fine-tuning": head_only,
        f"linear probe, best layer ({best})": probe.scores[probe.layers.index(best)],
        f"linear probe, last layer ({last})": probe.scores[-1],
        "raw pixels (logistic regression)": pixels.scores[0]}
print(f"{'':36s}" + "".join(f"fold {f}  " for f in range(N_FOLDS)) + "  mean ± std")
for name, s in rows.items():
    print(f"{name:36s}" + "".join(f"{v:.3f}   " for v in s) + f"  {s.mean():.3f} ± {s.std(ddof=1):.3f}")
gap = fine_tuned - probe.scores[-1]
print(f"fine-tuned - last-layer probe, fold by fold: {gap.mean():+.3f} ± {gap.std(ddof=1):.3f} "
      f"(ahead on {int((gap > 0).sum())} of {N_FOLDS} folds)")
gain = fine_tuned - head_only
print(f"fine-tuned - its own starting head, fold by fold: {gain.mean():+.3f} ± {gain.std(ddof=1):.3f}")

# %%
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
for i, (name, s) in enumerate(rows.items()):
    ax.scatter(np.full(N_FOLDS, i) + np.linspace(-0.15, 0.15, N_FOLDS), s, s=18, color=f"C{i}", label="one fold" if i == 0 else None)
    ax.errorbar(i, s.mean(), yerr=s.std(ddof=1), fmt="s", color="black", capsize=5, label="mean ± std" if i == 0 else None)
ax.set_xticks(range(len(rows)), [n.replace(" (", "\n(") for n in rows], fontsize=8)
ax.set_ylabel("held-out accuracy")
ax.set_title(f"digits, {N_FOLDS} shared folds", fontsize=10)
ax.grid(alpha=0.3, axis="y"); ax.legend(fontsize=8, loc="lower left")
for f, losses in enumerate(curves_by_fold):
    bx.plot(losses, lw=0.8, label=f"fold {f}")
bx.axhline(np.log(10), color="gray", ls=":", label="uniform guess, ln 10")
bx.set_xlabel("fine-tuning step"); bx.set_ylabel("training batch loss (nats per image)")
bx.set_title("the fine-tuning loss, each fold", fontsize=10)
bx.grid(alpha=0.3); bx.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %%
display(Markdown(
    f"**What the numbers say** (this run's, computed above). Starting from the probe's head "
    f"({head_only.mean():.3f} ± {head_only.std(ddof=1):.3f}; lower than the standardised probe, "
    f"{probe.mean[-1]:.3f}, because the head reads unscaled features), fine-tuning all {model.num_parameters:,} "
    f"weights for {STEPS} steps per fold reaches **{fine_tuned.mean():.3f} ± {fine_tuned.std(ddof=1):.3f}**, a gain of "
    f"{gain.mean():+.3f} ± {gain.std(ddof=1):.3f} fold by fold. The frozen model's best layer under the probe "
    f"reaches {probe.mean[probe.layers.index(best)]:.3f} (layer {best}), and a logistic regression on the raw pixels "
    f"{pixels.mean[0]:.3f} ± {pixels.std[0]:.3f}. On 8 x 8 digits a stroke always lands on about the same pixel, so "
    f"raw pixels are a very strong linear feature; 1437 training images per fold are few for a transformer, and "
    f"the paper's fine-tuning gain (96.3% to 99.0% on CIFAR-10) came from a 1.4-billion-weight model pre-trained "
    f"on ImageNet.\n"))

# %% [markdown]
# ## Questions and things to try
#
# 1. **Why is the probe's last layer the fair comparison for fine-tuning?** *(Both read the same pooled
#    vector, `ln_f`'s output averaged over positions; fine-tuning then moves every weight under it.)*
# 2. **Try this:** raise `STEPS` to 200. Does fine-tuning pass raw pixels? Does the fold-by-fold spread
#    shrink?
# 3. **Try this:** fine-tune an *untrained* model (`ImageGPTForCausalImageModeling(model.config, seed=0)` in
#    place of `model` in `fine_tune`) for the same steps. How much of the fine-tuned accuracy is
#    pre-training? *(Expect a large drop: its head starts from random features.)*
# 4. **Try this:** start from a fresh random head instead of the probe's (`np.random.default_rng(0).normal(0,
#    0.02, (10, C))`). How many steps does it need to catch up? *(Far more than 40: that is why the
#    train.py run is 1000 steps.)*
# 5. **Why does the paper report both?** *(A probe measures what the frozen features already make
#    linearly readable; fine-tuning measures how good a starting point the weights are. They can rank
#    models differently.)*
