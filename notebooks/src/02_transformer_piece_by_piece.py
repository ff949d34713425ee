# %% [markdown]
# # 2. The transformer, piece by piece
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
# into `H` heads of size `D`. Scores `q k^T / sqrt(D)` above the diagonal are masked (a pixel only sees
# the pixels before it), a softmax turns each row into weights, and the weights average the values.

# %%
qkv = layers.linear(h, p["transformer.h.0.attn.c_attn.weight"], p["transformer.h.0.attn.c_attn.bias"])  # [B, T, 3C]
C = cfg.n_embd
q, k, v = (layers.split_heads(qkv[..., i * C:(i + 1) * C], cfg.n_head) for i in range(3))  # [B, H, T, D]
print("qkv", qkv.shape, "-> q, k, v", q.shape)

scale = layers.attention_scale(cfg.head_dim)  # 1 / sqrt(D)
out, weights = layers.attention(q, k, v, scale, causal=True)  # [B, H, T, D], [B, H, T, T]
compare("attention weights, layer 0", weights, golden["attentions.0"])

fig, axes = plt.subplots(1, cfg.n_head, figsize=(12, 3))
for head, ax in enumerate(axes):
    ax.imshow(weights[0, head], cmap="viridis"); ax.set_title(f"head {head}")
    ax.set_xlabel("key")
axes[0].set_ylabel("query")
plt.suptitle("causal attention weights of a freshly initialised model: lower-triangular, nearly uniform")
plt.tight_layout()
plt.show()

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
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3))
for name in ["quick_gelu", "gelu", "relu"]:
    left.plot(xs, layers.activation(xs, name), label=name)
left.legend(); left.set_title("activations")
right.plot(xs, layers.quick_gelu(xs) - layers.activation(xs, "gelu"))
right.set_title("quick_gelu - exact GELU")
plt.tight_layout()
plt.show()

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
logits = layers.lm_head(final, p["lm_head.weight"])  # [B, T, C] @ [C, V] -> [B, T, V]
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
# (blank: pixels not drawn yet; each panel has its own colour scale, and its title gives the weight on SOS).

# %%
from sklearn.datasets import load_digits
from minigpt_pixels.processor import ImageGPTImageProcessor

digits = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)
image = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)  # a 0, as 8-bit grey
pixels = processor(image)["input_ids"]  # [1, 64]
inputs = np.concatenate([[[digits.config.sos_token_id]], pixels[:, :-1]], axis=1)  # [1, 64]: SOS + pixels[:-1]
attentions = digits(inputs, output_attentions=True).attentions  # n_layer x [1, H, 64, 64]

query = 4 * 8 + 5  # predicting pixel (row 4, column 5)
L, H = digits.config.n_layer, digits.config.n_head
fig, axes = plt.subplots(L, H + 1, figsize=(1.8 * (H + 1), 1.8 * L))
for layer in range(L):
    axes[layer, 0].imshow(processor.decode(pixels)[0]); axes[layer, 0].set_ylabel(f"layer {layer}")
    for head in range(H):
        w = attentions[layer][0, head, query]  # [64] weights over SOS + pixels 0..62
        grid = np.full(64, np.nan)  # pixels not drawn yet stay blank
        grid[:query] = w[1:query + 1]  # position j > 0 holds pixel j - 1
        ax = axes[layer, head + 1]
        ax.imshow(grid.reshape(8, 8), cmap="magma", vmin=0)
        ax.add_patch(plt.Rectangle((query % 8 - 0.5, query // 8 - 0.5), 1, 1, fill=False, color="red", lw=2))
        ax.set_title(f"head {head}, SOS {w[0]:.2f}", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# Look for heads that pick out one neighbour (the pixel directly above is 8 positions back, the one to
# the left 1 position back) and heads that spread their weight over the strokes drawn so far. Nobody
# told the model that the sequence is an 8 x 8 grid: it learned where "above" is from the data.
#
# **Summary.** Embedding -> `n_layer` x (layer norm, attention, residual; layer norm, quick_gelu MLP,
# residual) -> `ln_f` -> a head. Every step above matched transformers to 1e-4. Next:
# `03_sampling.ipynb`, or write these pieces yourself in `exercises/`.
