# %% [markdown]
# # 5. Training from scratch, in NumPy
#
# Every layer in `minigpt_pixels.layers` has a `*_forward` / `*_backward` pair; `backprop.py` runs the
# forward keeping each layer's cache, then the same list of layers in reverse. This notebook checks
# those gradients two ways, then trains a tiny iGPT on the digits for a few hundred steps with AdamW and
# watches the loss fall and the samples improve. (The default model was trained the same way, longer,
# with `python -m minigpt_pixels.train`.)

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

from minigpt_pixels import checkpoints, datasets, optim, train
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.generation import sample_images
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.sample import image_grid

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
# ## 4. A tiny model, trained
#
# Two blocks of width 32 (about 30k weights), AdamW with a warm-up and a cosine decay, gradient
# clipping at 1, batches of 32 images. `train.train_step` is forward, backward, clip, update. We keep
# the loss of every step and take 8 samples (same seed) at a few points.

# %%
config = ImageGPTConfig(vocab_size=17, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
tiny = ImageGPTForCausalImageModeling(config, seed=0)
print(f"{tiny.num_parameters:,} parameters")
optimizer = optim.AdamW(tiny.params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)

STEPS, LR, WARMUP = 300, 3e-3, 20
x_train, y_train = inputs[train_idx], targets[train_idx]
losses, held_out_loss, snapshots = [], {}, {}
start = time.perf_counter()
with train.set_threads(1):  # matrices this small run fastest on one BLAS thread
    for step in range(STEPS + 1):
        if step in (0, 25, 100, STEPS):
            snapshots[step] = sample_images(tiny, processor, 8, seed=0)
            held_out_loss[step] = train.evaluate(tiny, inputs[held_out], targets[held_out])["nats"]
        if step == STEPS:
            break
        batch = np.random.default_rng([0, step]).choice(len(x_train), 32, replace=False)  # 32 images
        lr = optim.lr_schedule(step, LR, STEPS, WARMUP)
        loss, norm = train.train_step(tiny, optimizer, x_train[batch], y_train[batch], lr, 1.0, None)
        losses.append(loss)
print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s (timed on 1 thread: set_threads(1) above)")
for step, nats in held_out_loss.items():
    print(f"step {step:4d}: held-out {nats:.3f} nats per token")

# %%
plt.figure(figsize=(6, 3.2))
plt.plot(losses, lw=0.8, label="training batch")
plt.plot(list(held_out_loss), list(held_out_loss.values()), "o-", label="held-out")
plt.axhline(np.log(16), color="gray", ls=":", label="uniform guess, ln 16")
plt.xlabel("step"); plt.ylabel("nats per token"); plt.legend(); plt.grid(alpha=0.3)
plt.title("the loss curve")
plt.show()

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
# background, and by a few hundred the first strokes appear. The default model shipped in the package
# is the same recipe, bigger and trained for longer (its command is in `minigpt_pixels/train.py`), on
# the same held-out split:

# %%
from minigpt_pixels import DEFAULT_MODEL

default = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
c = default.config
nats = train.evaluate(default, inputs[held_out], targets[held_out])["nats"]
print(f"default model: {c.n_layer} blocks of width {c.n_embd}, {default.num_parameters:,} parameters, "
      f"held-out {nats:.3f} nats per token")
print(f"this notebook's: {config.n_layer} blocks of width {config.n_embd}, {tiny.num_parameters:,} parameters, "
      f"held-out {held_out_loss[STEPS]:.3f} nats per token after {STEPS} steps")

# %% [markdown]
# ## 5. Longer: the shipped model, resumed
#
# Three hundred steps of a 30k-weight model end in blobs with the first strokes. Where does the same
# loop go if it keeps running? The shipped default model is that run carried on: 4000 steps of batch 32
# on a model 15 times bigger. Resume it with the same `train.train_step` (a fresh AdamW at a small
# learning rate, as its own run ended at the bottom of its cosine) and watch its held-out loss: it has
# flattened out far below where the tiny model stopped.

# %%
resumed = ImageGPTForCausalImageModeling(c, checkpoints.writable(default.params))  # writable copies of the weights
opt = optim.AdamW(resumed.params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
MORE, START = 40, 4000  # steps resumed, and the step the default model's run ended at
resumed_loss, resumed_held_out = [], {START: nats}
start = time.perf_counter()
with train.set_threads(1):
    for step in range(START, START + MORE):
        batch = np.random.default_rng([1, step]).choice(len(x_train), 32, replace=False)
        dropout = np.random.default_rng([2, step])  # its config's dropout (0.1), as in its training run
        loss, _ = train.train_step(resumed, opt, x_train[batch], y_train[batch], 1e-4, 1.0, dropout)
        resumed_loss.append(loss)
        if (step + 1 - START) % 20 == 0:
            resumed_held_out[step + 1] = train.evaluate(resumed, inputs[held_out], targets[held_out])["nats"]
print(f"{MORE} more steps in {time.perf_counter() - start:.1f} s (timed on 1 thread)")
for step, value in resumed_held_out.items():
    print(f"default model, step {step}: held-out {value:.3f} nats per token")

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True, gridspec_kw={"width_ratios": [3, 1]})
left.plot(range(1, STEPS + 1), losses, lw=0.6, alpha=0.6, label="training batch")
left.plot(list(held_out_loss), list(held_out_loss.values()), "o-", label="held-out")
left.set_title(f"this notebook's tiny model, steps 0-{STEPS}", fontsize=10)
right.plot(range(START + 1, START + MORE + 1), resumed_loss, lw=0.6, alpha=0.6, label="training batch")
right.plot(list(resumed_held_out), list(resumed_held_out.values()), "o-", label="held-out")
right.set_title(f"default model, resumed at {START}", fontsize=10)
for ax in (left, right):
    ax.axhline(np.log(16), color="gray", ls=":", label="uniform guess, ln 16")
    ax.set_xlabel("step"); ax.grid(alpha=0.3)
left.set_ylabel("nats per token"); left.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# And the samples, drawn with the same seed as the tiny model's rows: at the end of a longer run the
# same code draws digits.

# %%
rows = [list(images) for images in snapshots.values()] + [list(sample_images(resumed, processor, 8, seed=0))]
names = [f"step {s}" for s in snapshots] + [f"default, step {START + MORE}"]
plt.figure(figsize=(7, 4.6))
plt.imshow(image_grid(rows)); plt.xticks([])
plt.yticks([5 + 9 * i for i in range(len(rows))], names)
plt.title("samples over training (same seed); last row: the default model, resumed")
plt.show()

# %% [markdown]
# Bigger, with a check that does not rely on squinting: a logistic regression fitted to the real digits'
# pixels reads each sample, and its title is the digit it sees with the probability it gives.

# %%
from sklearn.linear_model import LogisticRegression

reader = LogisticRegression(max_iter=2000).fit(np.stack(data.images).reshape(len(data.images), -1) / 255.0, data.labels)
more = sample_images(resumed, processor, 16, seed=1)  # [16, 8, 8, 3] uint8
grey = more[..., 0].reshape(16, -1) / 255.0  # [16, 64]
probs = reader.predict_proba(grey)  # [16, 10]
fig, axes = plt.subplots(2, 8, figsize=(10, 3.6))
for ax, image, p in zip(axes.flat, more, probs):
    ax.imshow(image); ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(f"{p.argmax()} ({p.max():.2f})", fontsize=9)
plt.suptitle("16 samples of the default model, resumed, as a digit classifier reads them")
plt.tight_layout()
plt.show()
print(f"{int((probs.max(1) > 0.5).sum())} of 16 read as one digit with probability > 0.5; "
      f"digits seen: {sorted(set(probs.argmax(1).tolist()))}")

# %% [markdown]
# To train one yourself (a progress bar, checkpoints, and the held-out loss as it goes):
#
#     python -m minigpt_pixels.train --data digits --out runs/digits --steps 3000
#
# **Summary.** Gradients agree with torch and with finite differences; AdamW on them lowers the loss
# from ln 16 = 2.77 nats per token towards the default model's, and a longer run of the same loop
# draws digits. Write a backward pass yourself in
# `exercises/05_layer_norm_backward.ipynb`.
