# %% [markdown]
# # 2. The transformer, piece by piece
#
# > **The paper.** Chen, Radford, Child, Wu, Jun, Luan, Sutskever, *Generative Pretraining from Pixels*,
# > ICML 2020 ([PDF](https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf)).
# > Section 2.2: "The transformer decoder takes an input sequence x1, ..., xn of discrete tokens and
# > produces a d-dimensional embedding for each position." The sequence is the palette ids of notebook
# > 1, in raster order.
#
# ImageGPT is GPT-2 with a few quirks. This notebook runs a small model one component at a time with
# the pure NumPy functions of `minigpt_pixels.layers`, prints every shape, and checks each
# intermediate result against what Hugging Face transformers computed for the same weights and inputs
# (the golden fixture `tests/golden/models/causal_small`, written by `scripts/make_goldens.py`).
# At the end, the attention of the trained default model is drawn on the image grid.
#
# Shape legend: `B` batch, `T` positions, `C` width (`n_embd`), `H` heads, `D = C / H`, `V` palette size.

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from minigpt_pixels import DEFAULT_MODEL, layers
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification

GOLDEN = "../tests/golden/models"  # relative to notebooks/
model = ImageGPTForCausalImageModeling.from_pretrained(f"{GOLDEN}/causal_small")
golden = np.load(f"{GOLDEN}/causal_small/outputs.npz")  # transformers' outputs for these weights
cfg, p = model.config, model.params
print(f"vocab_size {cfg.vocab_size} (16 colours + SOS), n_positions {cfg.n_positions}, n_embd {cfg.n_embd}, "
      f"n_layer {cfg.n_layer}, n_head {cfg.n_head}, activation {cfg.activation_function}")

TOL = 1e-4  # float32 sums in a different order differ by ~1e-6; 1e-4 leaves room, and catches any real bug

def compare(name, ours, theirs):
    diff = float(np.max(np.abs(ours - theirs)))
    print(f"{name:34s} shape {str(ours.shape):14s} max |ours - transformers| = {diff:.1e}")
    assert ours.shape == theirs.shape and diff < TOL, name


# %% [markdown]
# The weights are a flat dict keyed by transformers' own parameter names. Conv1D weights are stored
# `[in, out]`, so every linear layer is `x @ w + b`. One block's worth:

# %%
for name, w in p.items():
    if name.startswith("transformer.h.0.") or ".h." not in name:
        print(f"{name:36s} {str(w.shape):12s} {w.dtype}")

# %% [markdown]
# ## Embedding
#
# The input is a sequence of token ids: palette ids, after a start-of-sequence token `SOS = vocab_size - 1`
# (here 16, as this tiny model has 16 "colours"). Each id picks a row of `wte`, each position a row of `wpe`;
# they add up.

# %%
ids = golden["input_ids"]  # [B, T]
B, T = ids.shape
print("ids", ids.shape, "first row:", ids[0])

x = layers.embedding(ids, p["transformer.wte.weight"], p["transformer.wpe.weight"], np.arange(T)[None])  # [B, T, C]
compare("embedding = hidden_states[0]", x, golden["hidden_states.0"])

# %% [markdown]
# ## Layer norm, without the mean
#
# Quirk number one: ImageGPT's layer norm divides by the root mean square and multiplies by a weight.
# It does **not** subtract the mean and has **no bias** (what is now called RMSNorm). So the rows keep
# their mean, and it is their root mean square that becomes 1 (times the weight, here all ones):

# %%
w_ln1 = p["transformer.h.0.ln_1.weight"]  # [C]
h = layers.layer_norm(x, w_ln1, cfg.layer_norm_epsilon)  # [B, T, C]
print("row means       ", h.mean(-1)[0, :5].round(3))
print("root mean square", np.sqrt((h ** 2).mean(-1))[0, :5].round(3), "(a little under 1: eps)")
centred = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)  # torch's LayerNorm
print(f"a mean-centring layer norm would differ by up to {np.abs(centred - h).max():.3f}")

# %% [markdown]
# ## Attention
#
# One matmul makes queries, keys and values for every head at once (`c_attn`, `[C, 3C]`). Each is split
# into `H` heads of size `D`. Then, for each head, the scaled dot-product attention of *Attention Is
# All You Need* (Vaswani et al., 2017, Section 3.2.1):
#
# $$\operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\left(\frac{Q K^\top}{\sqrt{D}} + M\right) V$$
#
# where the mask $M$ is $-\infty$ above the diagonal (a pixel only sees the pixels before it), so each
# row of weights sums to 1 over the past, and the weights average the values.
#
# **Why divide by $\sqrt{D}$?** If the entries of q and k are independent with mean 0 and variance 1,
# their dot product is a sum of D such products: its variance is D. Without the scale, the scores of
# a wide head are large, the softmax saturates onto one key, and its gradients vanish. Measured:

# %%
rng = np.random.default_rng(0)
print(" D    std of q.k   std of q.k/sqrt(D)   mean largest softmax weight over 64 keys: raw | scaled")
for D in [4, 64, 512]:
    qd, kd = rng.normal(size=(2, 2000, 64, D))  # 2000 queries, each against 64 keys
    dots = np.einsum("nd,nkd->nk", qd[:, 0], kd)  # [2000, 64]
    top = [layers.softmax(d).max(-1).mean() for d in (dots, dots / np.sqrt(D))]
    print(f"{D:4d}  {dots.std():10.2f}   {(dots / np.sqrt(D)).std():14.2f}   {top[0]:32.2f} | {top[1]:.2f}")

# %% [markdown]
# The raw scores' spread grows as sqrt(D) and the softmax turns nearly one-hot; scaled, the spread stays
# near 1 at every width. Now the fixture's first layer:

# %%
qkv = layers.linear(h, p["transformer.h.0.attn.c_attn.weight"], p["transformer.h.0.attn.c_attn.bias"])  # [B, T, 3C]
C = cfg.n_embd
q, k, v = (layers.split_heads(qkv[..., i * C:(i + 1) * C], cfg.n_head) for i in range(3))  # [B, H, T, D]
print("qkv", qkv.shape, "-> q, k, v", q.shape)

scale = layers.attention_scale(cfg.head_dim)  # 1 / sqrt(D)
out, weights = layers.attention(q, k, v, scale, causal=True)  # [B, H, T, D], [B, H, T, T]
compare("attention weights, layer 0", weights, golden["attentions.0"])

fig, axes = plt.subplots(1, cfg.n_head, figsize=(12, 3.4), constrained_layout=True)
for head, ax in enumerate(axes):
    shown = ax.imshow(weights[0, head], cmap="viridis", vmin=0, vmax=1); ax.set_title(f"head {head}")
    ax.set_xlabel("key position")
axes[0].set_ylabel("query position")
fig.colorbar(shown, ax=axes.tolist(), shrink=0.8, label="attention weight (one scale)")
fig.suptitle("causal attention weights of the fixture (random weights): lower-triangular, nearly uniform")
plt.show()

# %% [markdown]
# **The mask is the paper's factorisation.** Section 2.1 models the density of an image $x$ one
# element at a time: "we can pick a permutation $\pi$ of the set [1, n] and model the density p(x)
# auto-regressively", $p(x) = \prod_{i=1}^{n} p(x_{\pi_i} \mid x_{\pi_1}, \ldots, x_{\pi_{i-1}})$, and for
# images "we pick the identity permutation $\pi_i = i$ for $1 \le i \le n$, also known as raster order":
#
# $$p(x) = \prod_{t=1}^{n} p(x_t \mid x_1, \ldots, x_{t-1})$$
#
# Each factor may depend only on the pixels before it, and the causal mask is what guarantees it. A
# live check: change the last token of a sequence, and no earlier position's output moves.

# %%
changed = ids.copy()
changed[:, -1] = (changed[:, -1] + 1) % (cfg.vocab_size - 1)  # a different colour at the last position
before, after = model(ids).logits, model(changed).logits  # [B, T, V]
print(f"positions 0..{T - 2}: max change {np.abs(after[:, :-1] - before[:, :-1]).max():.1e};  "
      f"position {T - 1}: max change {np.abs(after[:, -1] - before[:, -1]).max():.2f}")

# %% [markdown]
# The heads are merged back to `[B, T, C]`, projected (`c_proj`), and **added** to the residual stream.

# %%
a = layers.linear(layers.merge_heads(out), p["transformer.h.0.attn.c_proj.weight"], p["transformer.h.0.attn.c_proj.bias"])
x1 = x + a  # [B, T, C] the residual stream after attention
print("attention output", a.shape)

# %% [markdown]
# ## The MLP and quick_gelu
#
# Quirk number two: the MLP's activation is `quick_gelu(x) = x * sigmoid(1.702 x)` (OpenAI's "gelu2"),
# not the exact GELU. Close, but not the same numbers:

# %%
xs = np.linspace(-4, 4, 201, dtype=np.float32)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
for name, style in [("relu", ":"), ("gelu", "-"), ("quick_gelu", "--")]:  # dashed on top: GELU shows through
    left.plot(xs, layers.activation(xs, name), style, lw=2, label=name)
left.legend(); left.set_title("activations (quick_gelu dashed over GELU)")
left.set_xlabel("x"); left.set_ylabel("activation(x)")
gap = layers.quick_gelu(xs) - layers.activation(xs, "gelu")
right.plot(xs, gap)
right.set_title("quick_gelu - exact GELU: the curves above differ by this")
right.set_xlabel("x"); right.set_ylabel("difference")
plt.tight_layout()
plt.show()
print(f"largest |quick_gelu - GELU| on [-4, 4]: {np.abs(gap).max():.3f}, at x = {xs[np.argmax(np.abs(gap))]:.2f}")

# %%
m = layers.mlp(layers.layer_norm(x1, p["transformer.h.0.ln_2.weight"]),
               p["transformer.h.0.mlp.c_fc.weight"], p["transformer.h.0.mlp.c_fc.bias"],      # [C, 4C]
               p["transformer.h.0.mlp.c_proj.weight"], p["transformer.h.0.mlp.c_proj.bias"])  # [4C, C]
x2 = x1 + m
compare("block 0 by hand = hidden_states[1]", x2, golden["hidden_states.1"])

block0, _ = layers.transformer_block(x, p, "transformer.h.0.", cfg, 0)  # the same, as one function
compare("layers.transformer_block(block 0)", block0, golden["hidden_states.1"])

# %% [markdown]
# ## The rest of the stack, and the final layer norm
#
# Quirk number three: `hidden_states` has `n_layer + 1` entries (the embeddings, then one per block),
# and **the last one is taken after the final layer norm `ln_f`**. The output of the last block before
# `ln_f` is not in it.

# %%
hidden = x
for i in range(cfg.n_layer):
    hidden, _ = layers.transformer_block(hidden, p, f"transformer.h.{i}.", cfg, i)
final = layers.layer_norm(hidden, p["transformer.ln_f.weight"], cfg.layer_norm_epsilon)
compare(f"after ln_f = hidden_states[{cfg.n_layer}]", final, golden[f"hidden_states.{cfg.n_layer}"])

# %% [markdown]
# ## The heads
#
# **Language-modelling head.** Quirk number four: `lm_head` has `vocab_size - 1` outputs and no bias.
# The model predicts palette colours only, never SOS, so the logits have 16 columns for a vocabulary of 17.
# The loss shifts inside: the logits at position `t` predict the token at `t + 1`; label -100 is ignored.

# %%
print("lm_head.weight", p["lm_head.weight"].shape, "= [V, C]: no row for SOS")
logits = layers.lm_head(final, p["lm_head.weight"])  # [B, T, C] @ [V, C]^T -> [B, T, V]
compare("logits", logits, golden["logits"])
loss = layers.lm_loss(logits, golden["labels"])
compare("loss (nats per token)", np.asarray(loss), golden["loss"])

out = model(ids, labels=golden["labels"])  # the whole model in one call gives the same
compare("model(ids).logits", out.logits, golden["logits"])

# %% [markdown]
# **Classification head.** Quirk number five: `ImageGPTForImageClassification` averages the final
# hidden state over **every** position (it ignores `attention_mask` when pooling), then applies a
# linear layer without bias. Checked on the `classify_3` fixture:

# %%
classifier = ImageGPTForImageClassification.from_pretrained(f"{GOLDEN}/classify_3")
golden_cls = np.load(f"{GOLDEN}/classify_3/outputs.npz")
state = classifier(golden_cls["input_ids"], output_hidden_states=True).hidden_states[-1]  # [B, T, C]
pooled = state.mean(axis=1)  # [B, C]
cls_logits = pooled @ classifier.params["score.weight"].T  # [B, num_labels]
compare("classification logits", cls_logits, golden_cls["logits"])

# %% [markdown]
# ## Attention on the image grid
#
# The fixture's attention is nearly uniform: its weights are random. The trained default model (8 x 8
# digits, 16 greys) has learned where to look. Its input is `SOS + pixels[:-1]`: position `t` predicts
# pixel `t`, seeing SOS and pixels `0 .. t-1`. Below, for one query pixel (the red square), each panel
# shows how much one head of one layer attends to every earlier pixel, drawn where that pixel sits
# (blank: pixels not drawn yet). Left, the trained model; right, a freshly initialised model of the same
# shape (`untrained_like`: the weights its training started from). All panels share one colour scale
# (a square-root one, so that weights of a few percent still show), so a dark panel really is spread
# thin; each title gives the weight left on SOS.

# %%
from matplotlib.colors import PowerNorm
from sklearn.datasets import load_digits

from minigpt_pixels.probe import untrained_like, with_sos
from minigpt_pixels.processor import ImageGPTImageProcessor

digits = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
fresh = untrained_like(digits, seed=0)  # same config, train.py's initialisation (--seed 0)
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)
image = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)  # a 0, as 8-bit grey
pixels = processor(image)["input_ids"]  # [1, 64]
inputs = with_sos(pixels, digits.config)  # [1, 64]: SOS + pixels[:-1]
query = 4 * 8 + 5  # predicting pixel (row 4, column 5)
L, H = digits.config.n_layer, digits.config.n_head


def on_grid(attentions, layer, head):
    """The query's attention weights drawn on the 8 x 8 image -> ([8, 8] grid, weight on SOS)."""
    w = attentions[layer][0, head, query]  # [64] weights over SOS + pixels 0..62
    grid = np.full(64, np.nan)  # pixels not drawn yet stay blank
    grid[:query] = w[1:query + 1]  # position j > 0 holds pixel j - 1
    return grid.reshape(8, 8), w[0]


maps = {name: m(inputs, output_attentions=True).attentions for name, m in [("trained", digits), ("fresh", fresh)]}
vmax = max(np.nanmax(on_grid(a, layer, head)[0]) for a in maps.values() for layer in range(L) for head in range(H))
fig, axes = plt.subplots(L, 2 * H + 1, figsize=(1.6 * (2 * H + 1), 1.75 * L))
for layer in range(L):
    axes[layer, 0].imshow(processor.decode(pixels)[0]); axes[layer, 0].set_ylabel(f"layer {layer}")
    for col, (name, a) in enumerate((name, a) for name, a in maps.items() for _ in range(H)):
        head = col % H
        grid, sos = on_grid(a, layer, head)
        ax = axes[layer, col + 1]
        shown = ax.imshow(grid, cmap="magma", norm=PowerNorm(0.5, vmin=0, vmax=vmax))
        ax.add_patch(plt.Rectangle((query % 8 - 0.5, query // 8 - 0.5), 1, 1, fill=False, color="red", lw=2))
        ax.set_title((f"{name}\n" if layer == 0 else "") + f"head {head}, SOS {sos:.2f}", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([]); ax.set_yticks([])
fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight\n(one square-root scale for all)")
plt.show()

# %% [markdown]
# The freshly initialised heads spread their weight almost evenly over everything before the query
# (about 1 / 38 each): they know nothing about images. The trained heads do not. Where does each one
# look hardest? Offsets are (rows up, columns left) from the query pixel, with the largest weight on
# the grid (a negative column is to the right): the pixel directly above is 8 positions back in the
# sequence, the one to the left 1 position back.

# %%
for layer in range(L):
    row = []
    for head in range(H):
        cells = {}
        for name, a in maps.items():
            grid, _ = on_grid(a, layer, head)
            r, c = np.unravel_index(np.nanargmax(grid), grid.shape)
            cells[name] = f"({query // 8 - r},{query % 8 - c}) {np.nanmax(grid):.2f}"
        row.append(f"h{head} {cells['trained']:>13s} [fresh {cells['fresh']}]")
    print(f"layer {layer}: " + "   ".join(row))

# %%
peaks = {name: [[np.nanmax(on_grid(a, layer, head)[0]) for head in range(H)] for layer in range(L)]
         for name, a in maps.items()}
first = int(np.argmax(peaks["trained"][0]))
grid0, _ = on_grid(maps["trained"], 0, first)
r0, c0 = np.unravel_index(np.nanargmax(grid0), grid0.shape)
display(Markdown(
    f"In the first layer, head {first} puts {peaks['trained'][0][first]:.2f} of its weight on one pixel, "
    f"offset ({query // 8 - r0},{query % 8 - c0}) from the query; the trained heads' largest weights range from "
    f"{np.min(peaks['trained']):.2f} to {np.max(peaks['trained']):.2f}, the fresh model's from "
    f"{np.min(peaks['fresh']):.2f} to {np.max(peaks['fresh']):.2f}. Nobody told the model that the "
    "sequence is an 8 x 8 grid: the pixel directly above is 8 positions back, and a head that looks there "
    "learned it from the data."))

# %% [markdown]
# ## How big is the real thing?
#
# The paper trains four sizes (Section 3): "The largest model, iGPT-XL, contains L = 60 layers and uses
# an embedding size of d = 3072 for a total of 6.8B parameters", iGPT-L has L = 48 and d = 1536 (1.4B),
# "iGPT-M, a 455M parameter model with L = 36 and d = 1024" and "iGPT-S, a 76M parameter model with
# L = 24 and d = 512". (The head counts, 8, 8 and 16 for S, M and L, are those of the released
# checkpoints' configs; XL was never released.) Every block holds `12 d^2 + 11 d` parameters (`c_attn`
# 3d^2 + 3d, its `c_proj` d^2 + d, the MLP 8d^2 + 5d, two layer-norm gains 2d); the embeddings, `ln_f`
# and the LM head add `(vocab + positions + palette + 1) d`. The formula is exact on our two models, and
# with 32 x 32 images (1024 positions, 512 colours + SOS) it lands on the paper's rounded sizes:

# %%
def n_params(L, d, vocab=513, positions=1024):
    return L * (12 * d * d + 11 * d) + (vocab + positions + (vocab - 1) + 1) * d  # blocks; wte, wpe, lm_head, ln_f


for m in (model, digits):  # the fixture and the default model
    c = m.config
    assert n_params(c.n_layer, c.n_embd, c.vocab_size, c.n_positions) == m.num_parameters, c
print(f"{'':10s} {'layers':>6s} {'width':>6s} {'heads':>6s} {'formula':>10s}   the paper")
for name, L_, d, heads, paper in [("iGPT-S", 24, 512, 8, "76M"), ("iGPT-M", 36, 1024, 8, "455M"),
                                  ("iGPT-L", 48, 1536, 16, "1.4B"), ("iGPT-XL", 60, 3072, None, "6.8B")]:
    print(f"{name:10s} {L_:6d} {d:6d} {heads or '?':>6} {n_params(L_, d) / 1e6:9.1f}M   {paper}")
c = model.config
print(f"{'fixture':10s} {c.n_layer:6d} {c.n_embd:6d} {c.n_head:6d} {model.num_parameters:12,d}")

# %% [markdown]
# **Summary.** Embedding -> `n_layer` x (layer norm, attention, residual; layer norm, quick_gelu MLP,
# residual) -> `ln_f` -> a head. Every step above matched transformers to 1e-4. Next:
# `03_sampling.ipynb`, or write these pieces yourself in `exercises/`.
#
# ## Questions and things to try
#
# 1. In the variance demo, what happens to the scaled softmax if the scale is `1 / D` instead of
#    `1 / sqrt(D)`? Try it.
# 2. Change `query` in the attention-on-the-grid cell to a pixel in the top row (say `query = 3`):
#    where can the heads look, and what happens to the weight on SOS?
# 3. The factorisation check changed the last token. Change token 5 instead: which positions'
#    logits may move, and which must not?
# 4. Why does `lm_head` have 16 outputs for a vocabulary of 17?
# 5. Using `n_params`, how many parameters would iGPT-S have at 64 x 64 (4096 positions)? Which
#    term grows?
#
# <details><summary>Answers (for the teacher)</summary>
#
# 1. Scores shrink towards 0 and the weights flatten towards uniform: the heads can no longer focus.
# 2. Only SOS and pixels 0-2 exist before it; with little to attend to, heads park more weight on SOS.
# 3. Positions 5 onwards (the ones that see token 5) may change; positions 0-4 must not.
# 4. The model predicts palette colours only; SOS is never a target, so it gets no output row.
# 5. `n_params(24, 512, positions=4096)`: only the position embeddings grow, by 3072 x 512 = 1.6M.
# </details>
