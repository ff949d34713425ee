"""ImageGPT's components, one pure NumPy function each.

Shape legend, used in every comment below:
    B  batch size                 T  new positions in this call (query length)
    P  positions already cached   S  key length = P + T (or the encoder's length for cross-attention)
    C  n_embd (hidden width)      H  n_head      D  head_dim = C // H      F  inner (MLP) width
    V  vocab_size - 1 = the palette size (the LM head never predicts SOS)     L  num_labels

Weights are float32 and stored as transformers stores them: Conv1D weights are [in, out], so a
linear layer is `x @ w + b`. Everything stays float32: constants are float32 so NumPy never
promotes a hot path to float64.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
MASK_MIN = np.finfo(np.float32).min  # what transformers adds at masked positions before softmax


# ---- embedding -----------------------------------------------------------------------------------
def embedding(input_ids, wte, wpe, position_ids, token_type_ids=None):
    """Token + position embedding. token_type_ids, when given, are looked up in wte too (as transformers does)."""
    x = wte[input_ids] + wpe[position_ids]  # [B, T] -> [B, T, C]
    if token_type_ids is not None:
        x = x + wte[token_type_ids]  # [B, T, C]
    return x


# ---- normalisation and activation ----------------------------------------------------------------
def layer_norm(x, weight, eps=1e-5):
    """ImageGPT's layer norm: divide by the root mean square. No mean subtraction, no bias."""
    ms = np.mean(np.square(x), axis=-1, keepdims=True)  # [..., C] -> [..., 1]
    return x / np.sqrt(ms + F32(eps)) * weight  # [..., C]


def quick_gelu(x):
    """x * sigmoid(1.702 x): OpenAI's "gelu2", not the exact erf GELU."""
    return x / (F32(1.0) + np.exp(F32(-1.702) * x))  # [...]


def activation(x, name):
    """The config's activation_function by name."""
    if name == "quick_gelu":
        return quick_gelu(x)
    if name == "relu":
        return np.maximum(x, F32(0))
    if name == "tanh":
        return np.tanh(x)
    if name == "gelu_new":  # the tanh approximation of GELU
        c = F32(np.sqrt(2.0 / np.pi))
        return F32(0.5) * x * (F32(1.0) + np.tanh(c * (x + F32(0.044715) * x * x * x)))
    if name == "gelu":  # exact GELU; erf through a float32-accurate rational approximation
        return F32(0.5) * x * (F32(1.0) + _erf(x * F32(1 / np.sqrt(2.0))))
    raise ValueError(f"unknown activation_function {name!r}")


def _erf(x):
    # Abramowitz-Stegun 7.1.26 is only 1.5e-7 accurate in absolute terms: enough for float32.
    s = np.sign(x)
    a = np.abs(x)
    t = F32(1.0) / (F32(1.0) + F32(0.3275911) * a)
    poly = t * (F32(0.254829592) + t * (F32(-0.284496736) + t * (F32(1.421413741)
                                                                  + t * (F32(-1.453152027) + t * F32(1.061405429)))))
    return s * (F32(1.0) - poly * np.exp(-a * a))


# ---- linear layers and the MLP -------------------------------------------------------------------
def linear(x, w, b=None):
    """Conv1D as transformers stores it: w is [in, out]."""
    y = x @ w  # [..., in] -> [..., out]
    return y if b is None else y + b


def mlp(x, w_fc, b_fc, w_proj, b_proj, act="quick_gelu"):
    h = activation(linear(x, w_fc, b_fc), act)  # [B, T, C] -> [B, T, F]
    return linear(h, w_proj, b_proj)  # [B, T, F] -> [B, T, C]


# ---- attention -----------------------------------------------------------------------------------
def split_heads(x, n_head):
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)  # [B, T, C] -> [B, H, T, D]


def merge_heads(x):
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # [B, H, T, D] -> [B, T, C]


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))  # subtract the max so exp never overflows
    return e / np.sum(e, axis=axis, keepdims=True)


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
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # [B, H, T, D] @ [B, H, D, S] -> [B, H, T, S]
    if causal:
        allowed = np.tri(T, S, k=S - T, dtype=bool)  # [T, S]: row t sees keys up to S - T + t
        scores = np.where(allowed, scores, MASK_MIN)
    if mask is not None:
        with np.errstate(over="ignore"):  # MASK_MIN + MASK_MIN is -inf: still weight 0, as in torch
            scores = scores + mask  # [B, H, T, S]
    weights = softmax(scores)  # [B, H, T, S]
    return weights @ v, weights  # [B, H, T, S] @ [B, H, S, D] -> [B, H, T, D]


def additive_mask(attention_mask):
    """A 0/1 keep-mask [B, S] -> the additive mask [B, 1, 1, S] (0 keep, MASK_MIN drop)."""
    keep = np.asarray(attention_mask).astype(bool)
    return np.where(keep, F32(0), MASK_MIN)[:, None, None, :].astype(F32)


def self_attention(x, w_attn, b_attn, w_proj, b_proj, n_head, scale, mask=None, cache=None, layer_idx=0):
    """Causal multi-head self-attention. With a KV cache, new keys and values are appended to it and
    the queries attend to everything cached so far. Returns the output [B, T, C] and the weights."""
    C = x.shape[-1]
    qkv = linear(x, w_attn, b_attn)  # [B, T, C] -> [B, T, 3C]
    q, k, v = (split_heads(qkv[..., i * C:(i + 1) * C], n_head) for i in range(3))  # 3 x [B, H, T, D]
    if cache is not None:
        k, v = cache.update(layer_idx, k, v)  # [B, H, S, D]: the cache's past plus these T positions
    out, weights = attention(q, k, v, scale, causal=True, mask=mask)  # [B, H, T, D]
    return linear(merge_heads(out), w_proj, b_proj), weights  # [B, T, C]


def cross_attention(x, enc, w_q, b_q, w_kv, b_kv, w_proj, b_proj, n_head, scale, mask=None):
    """Attention from x [B, T, C] to encoder states enc [B, S, C]; no causal mask."""
    C = x.shape[-1]
    q = split_heads(linear(x, w_q, b_q), n_head)  # [B, T, C] -> [B, H, T, D]
    kv = linear(enc, w_kv, b_kv)  # [B, S, C] -> [B, S, 2C]
    k, v = split_heads(kv[..., :C], n_head), split_heads(kv[..., C:], n_head)  # 2 x [B, H, S, D]
    out, weights = attention(q, k, v, scale, causal=False, mask=mask)  # [B, H, T, D]
    return linear(merge_heads(out), w_proj, b_proj), weights  # [B, T, C]


# ---- the block -----------------------------------------------------------------------------------
def transformer_block(x, p, prefix, config, layer_idx, mask=None, cache=None, encoder_hidden_states=None,
                      encoder_mask=None, need_weights=True):
    """Pre-norm block: x + attn(ln_1(x)), [x + cross(ln_cross_attn(x))], x + mlp(ln_2(x)).

    `p` is the flat weight dict keyed by HF names; `prefix` is e.g. "transformer.h.3.".
    Returns the new x [B, T, C] and a tuple of attention weights (self, and cross if used). This
    reference always computes the weights; faster versions may skip them when need_weights is False.
    """
    eps, H = config.layer_norm_epsilon, config.n_head
    scale = attention_scale(config.head_dim, config.scale_attn_weights, layer_idx,
                            config.scale_attn_by_inverse_layer_idx)
    a, w_self = self_attention(layer_norm(x, p[prefix + "ln_1.weight"], eps),
                               p[prefix + "attn.c_attn.weight"], p[prefix + "attn.c_attn.bias"],
                               p[prefix + "attn.c_proj.weight"], p[prefix + "attn.c_proj.bias"],
                               H, scale, mask=mask, cache=cache, layer_idx=layer_idx)
    x = x + a  # [B, T, C]
    weights = (w_self,)
    if encoder_hidden_states is not None:
        c, w_cross = cross_attention(layer_norm(x, p[prefix + "ln_cross_attn.weight"], eps), encoder_hidden_states,
                                     p[prefix + "crossattention.q_attn.weight"],
                                     p[prefix + "crossattention.q_attn.bias"],
                                     p[prefix + "crossattention.c_attn.weight"],
                                     p[prefix + "crossattention.c_attn.bias"],
                                     p[prefix + "crossattention.c_proj.weight"],
                                     p[prefix + "crossattention.c_proj.bias"],
                                     H, scale, mask=encoder_mask)
        x = x + c  # [B, T, C]
        weights += (w_cross,)
    m = mlp(layer_norm(x, p[prefix + "ln_2.weight"], eps),
            p[prefix + "mlp.c_fc.weight"], p[prefix + "mlp.c_fc.bias"],
            p[prefix + "mlp.c_proj.weight"], p[prefix + "mlp.c_proj.bias"], config.activation_function)
    return x + m, weights  # [B, T, C]


# ---- heads and losses ----------------------------------------------------------------------------
def lm_head(h, w):
    """Next-token logits over the palette. w is [V, C] (nn.Linear, no bias): there is no SOS row."""
    return h @ w.T  # [B, T, C] -> [B, T, V]


def classification_head(h, w):
    """Mean-pool over every position (transformers ignores attention_mask here), then a linear layer
    without bias. w is [L, C]."""
    return np.mean(h, axis=1) @ w.T  # [B, T, C] -> [B, C] -> [B, L]


def log_softmax(x, axis=-1):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def cross_entropy(logits, labels, ignore_index=-100):
    """Mean cross-entropy over labels != ignore_index. logits [N, K], labels [N]. NaN if all are ignored,
    as in torch."""
    keep = labels != ignore_index  # [N]
    logp = log_softmax(logits[keep])  # [n, K]
    picked = logp[np.arange(logp.shape[0]), labels[keep]]  # [n]
    return F32(-np.mean(picked)) if picked.size else F32(np.nan)


def lm_loss(logits, labels):
    """Shifted LM loss: logits at position t predict labels at t + 1; -100 is ignored."""
    V = logits.shape[-1]
    return cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))  # [B*(T-1), V]


def classification_problem_type(config, labels):
    """transformers' rule: regression if num_labels == 1, single-label if labels are integers, else multi-label."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if np.issubdtype(np.asarray(labels).dtype, np.integer):
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(logits, labels, problem_type):
    if problem_type == "regression":
        # transformers squeezes both sides when num_labels == 1
        diff = np.squeeze(logits) - np.squeeze(labels).astype(F32) if logits.shape[-1] == 1 \
            else logits - labels.astype(F32)
        return F32(np.mean(np.square(diff)))
    if problem_type == "single_label_classification":
        return cross_entropy(logits, labels.reshape(-1))
    y = labels.astype(F32)  # multi-label: binary cross-entropy with logits, averaged over every entry
    return F32(np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))))
