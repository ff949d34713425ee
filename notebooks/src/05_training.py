# %% [markdown]
# # 5. Training from scratch, in NumPy
#
# > **Generative Pretraining from Pixels.** Mark Chen, Alec Radford, Rewon Child, Jeff Wu, Heewoo Jun,
# > David Luan, Ilya Sutskever. ICML 2020.
# > [PMLR](https://proceedings.mlr.press/v119/chen20s.html) ·
# > [PDF](https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf) ·
# > [code](https://github.com/openai/image-gpt)
#
# The paper pre-trains by maximum likelihood, one pixel after another: with the image read in raster
# order as $x_1 \dots x_n$, the model is trained to minimise
# $L_{AR} = \mathbb{E}_{x}\left[-\log p(x)\right]$ with $p(x) = \prod_{t=1}^{n} p(x_t \mid x_1, \dots, x_{t-1})$
# (section 2.1). The loss this notebook prints, nats per token, is that $-\log p(x)$ divided by $n$.
# Then it asks the paper's question of section 4.2, "Better generative models learn better
# representations": as the held-out loss falls, does the linear probe (notebook 4) rise?
#
# Every layer in `minigpt_pixels.layers` has a `*_forward` / `*_backward` pair; `backprop.py` runs the
# forward keeping each layer's cache, then the same list of layers in reverse. This notebook checks
# those gradients two ways, trains two tiny iGPTs on the digits for a few hundred steps with AdamW,
# watches the loss, gradient norm, learning rate, samples and probe accuracy, and ends with the shipped
# default model for scale (a different, 16 times larger model trained 4000 steps by
# `python -m minigpt_pixels.train`).

# %%
import json
import os
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

from minigpt_pixels import DEFAULT_MODEL, datasets, optim, train
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.generation import sample_images
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.probe import compare_probes
from minigpt_pixels.sample import image_grid

THREADS = os.cpu_count() or 1  # the machine's threads these timings ran beside
TIMED_ON = f"timed on {THREADS} thread{'s' * (THREADS > 1)}"  # the notebook tests skip lines that say this

# %% [markdown]
# ## 1. Gradients against transformers
#
# `model.value_and_grad(ids, labels)` returns the loss and the gradient of every weight, keyed by the
# same names as the weights. The golden fixture holds the gradients torch's autograd computed for the
# same model and inputs:

# %%
GOLDEN = "../tests/golden/models/causal_small"
model = ImageGPTForCausalImageModeling.from_pretrained(GOLDEN)
golden = np.load(f"{GOLDEN}/outputs.npz")
loss, grads = model.value_and_grad(golden["input_ids"], golden["labels"])
print(f"loss {float(loss):.6f}, transformers {float(golden['loss']):.6f}")
worst = 0.0
for name, g in grads.items():
    diff = float(np.max(np.abs(g - golden[f"grad.{name}"])))
    worst = max(worst, diff)
    if ".h.1." not in name:
        print(f"{name:40s} {str(g.shape):10s} max |ours - torch| = {diff:.1e}")
print(f"worst over all {len(grads)} tensors: {worst:.1e}")
assert worst < 1e-4

# %% [markdown]
# ## 2. Gradients against finite differences
#
# Independent of any library: nudge one weight by $\pm h$, re-run the forward pass, and compare
# $(L(w + h) - L(w - h)) / 2h$ with the analytic gradient, for the largest entry of a few tensors. In
# float32 the loss itself is only good to about 1e-7, so $h$ cannot be tiny, and agreement to about a
# part in a thousand is what to expect (less where the gradient is small and the rounding dominates):

# %%
params = {k: np.array(v) for k, v in model.params.items()}  # writable copies (loaded weights are read-only)
model.params = params

def loss_at():
    return float(model(golden["input_ids"], labels=golden["labels"]).loss)

h = 1e-2
for name in ["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight",
             "transformer.ln_f.weight", "lm_head.weight"]:
    i = np.unravel_index(np.argmax(np.abs(grads[name])), grads[name].shape)  # the largest entry: most signal
    w = params[name]
    old = w[i]
    w[i] = old + h
    up = loss_at()
    w[i] = old - h
    down = loss_at()
    w[i] = old
    numeric = (up - down) / (2 * h)
    where = str(tuple(int(j) for j in i))
    print(f"{name:36s}{where:10s} analytic {grads[name][i]: .6f}  numeric {numeric: .6f}  "
          f"relative error {abs(numeric - grads[name][i]) / abs(grads[name][i]):.1e}")

# %% [markdown]
# ## 3. Data: the digits as palette tokens
#
# The trainer's own helpers: scikit-learn's digits, a fixed held-out split, a 16-colour palette fitted
# by k-means to the training images, and the token ids. The model reads `SOS + pixels[:-1]` and predicts
# every pixel (OpenAI's form of the shift).

# %%
data = datasets.load_digits_data()
train_idx, held_out = datasets.split(len(data.images), 0.1, seed=0)
processor = datasets.fit_processor([data.images[i] for i in train_idx], data.size, 16, seed=0)
ids = datasets.encode(processor, data.images)  # [1797, 64]
sos = np.full((len(ids), 1), 16)  # SOS = vocab_size - 1 = 16 colours
inputs, targets = np.concatenate([sos, ids[:, :-1]], axis=1), ids
print(inputs.shape, "e.g.", inputs[0, :10], "->", targets[0, :9])

# %% [markdown]
# ## 4. Two tiny models, trained, and probed as they learn
#
# Two blocks of width 32 (about 30k weights) and, for a second size, two blocks of width 16, each
# trained the same way: AdamW with a warm-up and a cosine decay, gradient clipping at 1, batches of 32
# images. `train.train_step` is forward, backward, clip, update, and returns the gradient norm before
# clipping, which we keep with the loss and the learning rate of every step. At a few snapshots we
# measure the held-out loss, draw 8 samples (same seed), and run the paper's linear probe (the
# `ln_1`-normed, mean-pooled features of every layer, 5 folds over all 1797 digits; their labels are
# never used in training): the paper's Figure 3 asks whether the probe improves as the loss falls.

# %%
STEPS, LR, WARMUP = 300, 3e-3, 20
SNAPSHOTS = (0, 25, 100, STEPS)
x_train, y_train = inputs[train_idx], targets[train_idx]


def train_tiny(n_embd):
    config = ImageGPTConfig(vocab_size=17, n_positions=64, n_embd=n_embd, n_layer=2, n_head=4,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = ImageGPTForCausalImageModeling(config, seed=0)
    optimizer = optim.AdamW(model.params, lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    log = {"loss": [], "grad_norm": [], "lr": [], "held_out": {}, "probe": {}, "samples": {}}
    for step in range(STEPS + 1):
        if step in SNAPSHOTS:
            log["samples"][step] = sample_images(model, processor, 8, seed=0)
            log["held_out"][step] = train.evaluate(model, inputs[held_out], targets[held_out])["nats"]
            probe = compare_probes(model, ids, data.labels, untrained=False, features="paper")["trained"]
            log["probe"][step] = (probe.best_layer, probe.mean.max(), probe.std[np.argmax(probe.mean)])
        if step == STEPS:
            break
        batch = np.random.default_rng([0, step]).choice(len(x_train), 32, replace=False)  # 32 images
        lr = optim.lr_schedule(step, LR, STEPS, WARMUP)
        loss, norm = train.train_step(model, optimizer, x_train[batch], y_train[batch], lr, 1.0, None)
        log["loss"].append(loss); log["grad_norm"].append(norm); log["lr"].append(lr)
    return model, config, log


runs = {}
with train.set_threads(1):  # matrices this small run fastest on one BLAS thread
    for width in (32, 16):
        start = time.perf_counter()
        runs[width] = train_tiny(width)
        print(f"width {width}: {runs[width][0].num_parameters:,} parameters, {STEPS} steps and {len(SNAPSHOTS)} probes")
        print(f"  in {time.perf_counter() - start:.1f} s ({TIMED_ON}, one BLAS thread used)")
        for step in SNAPSHOTS:
            layer, acc, sd = runs[width][2]["probe"][step]
            print(f"  step {step:4d}: held-out {runs[width][2]['held_out'][step]:.3f} nats per token, "
                  f"probe {acc:.3f} ± {sd:.3f} (best layer {layer})")
tiny, config, log = runs[32]
losses, held_out_loss, snapshots = log["loss"], log["held_out"], log["samples"]

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
ax = axes[0]
ax.plot(losses, lw=0.8, label="training batch")
ax.plot(list(held_out_loss), list(held_out_loss.values()), "o-", label="held-out")
ax.axhline(np.log(16), color="gray", ls=":", label="uniform guess, ln 16")
ax.set_xlabel("step"); ax.set_ylabel("nats per token"); ax.legend(fontsize=8); ax.grid(alpha=0.3)
ax.set_title("the loss curve (width 32)", fontsize=10)
ax = axes[1]
ax.plot(log["grad_norm"], lw=0.8, color="C2")
ax.axhline(1.0, color="C3", ls="--", lw=1, label="clipped to 1 above this line")
ax.set_xlabel("step"); ax.set_ylabel("gradient norm before clipping"); ax.set_yscale("log")
ax.legend(fontsize=8); ax.grid(alpha=0.3); ax.set_title("the gradient norm", fontsize=10)
ax = axes[2]
ax.plot(log["lr"], color="C4")
ax.set_xlabel("step"); ax.set_ylabel("learning rate")
ax.set_title(f"warm-up {WARMUP} steps, then cosine to 0", fontsize=10); ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
clipped = np.mean(np.array(log["grad_norm"]) > 1.0)
print(f"the gradient norm was above the clip (1.0) on {clipped:.0%} of the steps; largest "
      f"{max(log['grad_norm']):.2f} at step {int(np.argmax(log['grad_norm']))}")

# %%
rows = [list(images) for images in snapshots.values()]
grid = image_grid(rows)
plt.figure(figsize=(7, 3.8))
plt.imshow(grid); plt.xticks([])
plt.yticks([5 + 9 * i for i in range(len(rows))], [f"step {s}" for s in snapshots])
plt.title("samples improving over training (same seed)")
plt.show()

# %% [markdown]
# At step 0 the model draws every colour at random; after a few dozen steps it has learned the
# background, and by a few hundred the first strokes appear.
#
# ## 5. Better generative models, better features?
#
# The paper's Figure 3 plots linear-probe accuracy against validation loss over the checkpoints of
# several model sizes. The same plot for our two tiny models, one point per snapshot:

# %%
fig, ax = plt.subplots(figsize=(6.2, 3.8))
for i, (width, (m, _, lg)) in enumerate(runs.items()):
    xs = [lg["held_out"][s] for s in SNAPSHOTS]
    ys = [lg["probe"][s][1] for s in SNAPSHOTS]
    es = [lg["probe"][s][2] for s in SNAPSHOTS]
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=f"C{i}",
                label=f"2 blocks x {width} ({m.num_parameters:,} weights)")
    for s, x, y in zip(SNAPSHOTS, xs, ys):
        ax.annotate(f"step {s}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
ax.invert_xaxis()  # training moves right: lower loss
ax.set_xlabel("held-out loss, nats per token (lower is better) \u2192")
ax.set_ylabel("linear probe accuracy, best layer\nmean ± std over 5 folds")
ax.set_title("better generative model, better features (cf. the paper's Figure 3)", fontsize=10)
ax.grid(alpha=0.3); ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
wide, narrow = runs[32][2], runs[16][2]
display(Markdown(
    f"Over training, the width-32 model's held-out loss falls from {wide['held_out'][0]:.3f} to "
    f"{wide['held_out'][STEPS]:.3f} nats per token while its best probe goes from {wide['probe'][0][1]:.3f} to "
    f"{wide['probe'][STEPS][1]:.3f}; the width-16 model ends at {narrow['held_out'][STEPS]:.3f} nats and "
    f"{narrow['probe'][STEPS][1]:.3f}. (Numbers from this run, printed above.) The step-0 point is an "
    f"untrained network: random features of a pooled sequence are already far above chance (0.1)."))

# %% [markdown]
# ## 6. The default model, for scale
#
# The default model shipped in the package is the same recipe on a model 16 times bigger (4 blocks of
# width 96) trained for 4000 steps of batch 32 (the command is in its README,
# `minigpt_pixels/data/default_model/README.md`), on the same held-out split:

# %%
default = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
c = default.config
nats = train.evaluate(default, inputs[held_out], targets[held_out])["nats"]
print(f"default model: {c.n_layer} blocks of width {c.n_embd}, {default.num_parameters:,} parameters, "
      f"held-out {nats:.3f} nats per token")
print(f"this notebook's: {config.n_layer} blocks of width {config.n_embd}, {tiny.num_parameters:,} parameters, "
      f"held-out {held_out_loss[STEPS]:.3f} nats per token after {STEPS} steps")

# its own 4000-step curve, logged by the trainer every 250 steps (a rerun of the same command; the file says so)
with open(os.path.join(DEFAULT_MODEL, "training_curve.json")) as f:
    curve = json.load(f)
steps = [h["step"] for h in curve["history"]]
plt.figure(figsize=(6, 3.2))
plt.plot(steps, [h["train_loss"] for h in curve["history"]], label="training batches")
plt.plot(steps, [h["val_nats"] for h in curve["history"]], label="held-out")
plt.xlabel("step"); plt.ylabel("nats per token"); plt.title("the default model's recipe, 4000 steps")
plt.legend(); plt.show()
print(f"held-out {curve['history'][0]['val_nats']:.3f} nats at step {steps[0]} -> "
      f"{curve['history'][-1]['val_nats']:.3f} at step {steps[-1]}")

rows = [list(images) for images in snapshots.values()] + [list(sample_images(default, processor, 8, seed=0))]
names = [f"step {s}" for s in snapshots] + ["default model"]
plt.figure(figsize=(7, 4.6))
plt.imshow(image_grid(rows)); plt.xticks([])
plt.yticks([5 + 9 * i for i in range(len(rows))], names)
plt.title("samples over training (same seed); last row: the default model")
plt.show()

# %% [markdown]
# Bigger, with a check that does not rely on squinting: a logistic regression fitted to the real digits'
# pixels reads each sample, and its title is the digit it sees with the probability it gives.

# %%
from sklearn.linear_model import LogisticRegression

reader = LogisticRegression(max_iter=2000).fit(np.stack(data.images).reshape(len(data.images), -1) / 255.0, data.labels)
more = sample_images(default, processor, 16, seed=1)  # [16, 8, 8, 3] uint8
grey = more[..., 0].reshape(16, -1) / 255.0  # [16, 64]
probs = reader.predict_proba(grey)  # [16, 10]
fig, axes = plt.subplots(2, 8, figsize=(10, 3.6))
for ax, image, p in zip(axes.flat, more, probs):
    ax.imshow(image); ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(f"{p.argmax()} ({p.max():.2f})", fontsize=9)
plt.suptitle("16 samples of the default model, as a digit classifier reads them")
plt.tight_layout()
plt.show()
print(f"{int((probs.max(1) > 0.5).sum())} of 16 read as one digit with probability > 0.5; "
      f"digits seen: {sorted(set(probs.argmax(1).tolist()))}")

# %% [markdown]
# To train one yourself (checkpoints, and the held-out loss as it goes; one BLAS thread is fastest for
# models this small and leaves the other cores to everyone else):
#
#     python -m minigpt_pixels.train --data digits --out runs/digits --steps 3000 --threads 1
#
# **Summary.** Gradients agree with torch and with finite differences; AdamW on them lowers the loss
# from ln 16 = 2.77 nats per token towards the default model's, and the probe on the model's own
# features rises as the loss falls. Write a backward pass yourself in
# `exercises/05_layer_norm_backward.ipynb`.
#
# ## Questions and things to try
#
# 1. **Why does the gradient norm start large and settle?** *(At step 0 every prediction is near uniform
#    and the errors are large and aligned; clipping at 1 keeps those first steps from overshooting.)*
# 2. **Try this:** set `WARMUP = 0` and `LR = 1e-2`. What happens to the loss and to the gradient norm
#    in the first 25 steps?
# 3. **Try this:** add width 64 to `runs`. Does the bigger model reach a lower loss *and* a better probe
#    at the same step, as the paper's Figure 3 would predict?
# 4. **Why is the probe far above chance at step 0?** *(Random attention and MLPs make random features
#    of the image; a linear classifier on random features is not bad. The gap above step 0 is learned.)*
# 5. **Try this:** probe with `features="mean"` instead of `"paper"` (notebook 4 says why they differ).
#    Does the ranking of the snapshots change?
