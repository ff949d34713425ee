# %% [markdown]
# # 7. Likelihood: nats, bits, and surprise
#
# > **The paper.** Chen, Radford, Child, Wu, Jun, Luan, Sutskever, *Generative Pretraining from Pixels*,
# > ICML 2020 ([PDF](https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf)).
# > Section 2.1 models an image as $p(x) = \prod_{t} p(x_t \mid x_{<t})$ in raster order (notebook 2
# > shows the causal mask implementing it) and trains by minimising the negative log-likelihood,
# > $L_{AR} = \mathbb{E}_{x \sim X}[-\log p(x)]$.
#
# A generative model assigns every image a probability: the product, over the pixels, of the
# probability it gave each pixel's actual colour given the pixels before it. Its negative log, averaged
# per token, is the loss the model is trained on. This notebook computes it for the default model on
# digits it never saw, explains why it is not the usual *bits per dimension*, and draws where in an
# image the model was surprised.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

from minigpt_pixels import DEFAULT_MODEL
from minigpt_pixels.layers import log_softmax
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.probe import with_sos
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.datasets import load_digits_data, split

model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)  # device "auto": "numpy" for a model this small
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)  # its 16-grey palette, 8 x 8 images
cfg = model.config
print(f"{cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, {model.num_parameters:,} parameters; "
      f"{len(processor.clusters)} colours, {processor.size['height']} x {processor.size['width']} pixels, SOS = {cfg.sos_token_id}")

data = load_digits_data()  # scikit-learn's 1797 digits, 8 x 8, as uint8 grey images, with labels
train_idx, held_out = split(len(data.images), 0.1, seed=0)  # the split the model was trained with
ids = processor(data.images)["input_ids"]  # [1797, 64] palette ids, no SOS

# %% [markdown]
# ## Nats and bits per token
#
# The model reads `SOS + pixels[:-1]` and its logits at position `t` are a distribution over the 16
# colours of pixel `t`. The log-probability of the true colour, negated, is the pixel's *surprise* in
# nats (natural log); divided by ln 2 it is in bits.

# %%
x = with_sos(ids[held_out], cfg)  # [180, 64]: SOS + pixels[:-1]
targets = ids[held_out]  # [180, 64]: every pixel
logits = model(x).logits  # [180, 64, 16]
logp = log_softmax(logits)  # log-probabilities over the 16 colours
nats = -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [180, 64] surprise per pixel

per_token = nats.mean()
print(f"held-out: {per_token:.4f} nats per token = {per_token / np.log(2):.4f} bits per token")
frequencies = np.bincount(ids[train_idx].ravel(), minlength=16) / ids[train_idx].size
print(f"uniform over 16 colours: {np.log(16):.4f} nats = 4 bits per token")
print(f"colour frequencies alone (no context): {-(frequencies * np.log(frequencies + 1e-12)).sum():.4f} nats per token")

# %% [markdown]
# The model needs far fewer bits than either baseline: most pixels of a digit are predictable from the
# ones above and to the left.
#
# ## Why this is not "bits per dimension"
#
# Likelihood models of images (PixelCNN, Image Transformer, ...) usually report **bits per dimension**:
# $-\log_2 p(x)$ divided by the number of sub-pixels, $H \times W \times 3$, for 8-bit RGB. iGPT's
# number is not comparable:
#
# * **The tokens are not the pixels.** iGPT first quantizes each pixel to one of 512 palette colours
#   (here 16 greys). The likelihood is of the *quantized* image; the information k-means threw away is
#   never paid for, so the number is lower than any model of the real pixels could reach.
# * **One token per pixel, not three.** A token carries a whole colour. Dividing by 3 to get "per
#   dimension" does not make it a per-sub-pixel number: there is no distribution over sub-pixels.
# * **Nats per token over a palette.** A loss per palette token compares only with models using the
#   same palette: a coarser palette makes every token cheaper to predict.
#
# ## Surprise heatmaps
#
# Where is the model surprised? Each pixel's surprise in bits, drawn on the image. A few pixels cost
# several bits while most cost a small fraction of one, so a linear colour scale would leave almost
# everything black; the scale below is logarithmic (from 0.01 bits, below which all is black), and one
# scale is shared by the six images, so their colours compare. The colour bar sits beside both rows,
# so every surprise map lines up under its image:

# %%
from matplotlib.colors import LogNorm

bits = nats / np.log(2)  # [180, 64]
order = np.argsort(bits.sum(axis=1))  # least to most surprising image
picks = list(order[:3]) + list(order[-3:])
images = processor.decode(targets[picks])  # [6, 8, 8, 3]

fig, axes = plt.subplots(2, 6, figsize=(13, 4.6), constrained_layout=True)
for col, (i, image) in enumerate(zip(picks, images)):
    axes[0, col].imshow(image)
    axes[0, col].set_title(f"{bits[i].sum():.0f} bits" + (" (easy)" if col < 3 else " (hard)"))
    im = axes[1, col].imshow(bits[i].reshape(8, 8), cmap="inferno", norm=LogNorm(vmin=0.01, vmax=bits.max(), clip=True))
for ax in axes.flat:
    ax.set_xticks([]); ax.set_yticks([])
fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="surprise, bits (log scale,\nshared by all six)")
axes[1, 0].set_ylabel("surprise")
plt.show()

# %% [markdown]
# Where exactly? Group every held-out pixel by its true grey: the blank background (the darkest grey),
# the full stroke (the brightest) and the greys in between, which in these digits are the edges of the
# strokes:

# %%
greys = processor.decode(targets)[..., 0].reshape(len(targets), -1)  # [180, 64] each pixel's true grey, 0..255
kinds = {"background": greys == greys.min(), "stroke": greys == greys.max()}
kinds["edge greys"] = ~kinds["background"] & ~kinds["stroke"]
share = {name: bits[m].sum() / bits.sum() for name, m in kinds.items()}
for name, m in kinds.items():
    print(f"{name:10s}: {m.mean():5.1%} of the pixels, {bits[m].mean():.2f} bits each on average, "
          f"{share[name]:5.1%} of all the bits")
top, bottom = bits[:, :32].mean(), bits[:, 32:].mean()
display(Markdown(
    f"The intermediate greys, {kinds['edge greys'].mean():.0%} of the pixels, cost {share['edge greys']:.0%} of the "
    f"bits: the model knows where a stroke is but not exactly how grey its edge comes out. On average the top "
    f"half of the image costs {top:.2f} bits per pixel and the bottom half {bottom:.2f}."))

# %%
plt.figure(figsize=(3.5, 3))
plt.imshow(bits.mean(axis=0).reshape(8, 8), cmap="inferno")
plt.colorbar(label="mean bits (linear scale)"); plt.xlabel("column"); plt.ylabel("row")
plt.title("average surprise per position")
print(f"the first pixel costs {bits[:, 0].mean():.2f} bits on average, the whole image {bits.sum(1).mean():.1f} bits")
plt.show()

# %% [markdown]
# **Summary.** Likelihood = the sum of per-token log-losses, the quantity training minimises
# (`train.evaluate` reports it on the held-out split). Report it in nats (or bits) per palette token and
# say which palette; do not call it bits per dimension. Compute it yourself in
# `exercises/06_bits_per_token.ipynb`.
#
# ## Questions and things to try
#
# 1. The first pixel costs almost nothing here (printed above): why, and would that hold for photos?
# 2. Which costs more bits in total, an easy image or a hard one, and by how much? Find the most
#    surprising held-out image and say why it is hard.
# 3. Run the model at temperature 2 (divide the logits by 2 before `log_softmax`): does the held-out
#    loss go up or down, and why?
# 4. What would the uniform baseline be with iGPT's 512 colours, in bits per token?
# 5. Why can't this number be compared with a PixelCNN's bits per dimension?
#
# <details><summary>Answers (for the teacher)</summary>
#
# 1. The top-left corner of these digits is always blank, so the model is sure of it with nothing but
#    SOS; in photos the first pixel could be any colour, and would cost about as much as the colours' entropy.
# 2. Hard images cost several times more (read the titles above); they have unusual shapes, stray
#    strokes or greys the model does not expect.
# 3. Up: the trained model's probabilities are calibrated at temperature 1; flattening them moves
#    probability away from the right colours.
# 4. log2(512) = 9 bits.
# 5. It is a likelihood of quantized tokens (the palette's loss is never paid), one per pixel, not of
#    8-bit sub-pixels.
# </details>
