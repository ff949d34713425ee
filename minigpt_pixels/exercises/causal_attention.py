"""Exercise: causal self-attention, replacing `layers.attention(..., causal=True)`.

`attend` and `softmax` write out the knobs students get wrong; the KV-cache exercise reuses them.
"""

import numpy as np

from .. import layers
from .engine import F32, Case, Exercise, Mistake


def softmax(x, axis=-1):
    with np.errstate(all="ignore"):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)


def naive_softmax(x):
    with np.errstate(all="ignore"):
        e = np.exp(x)  # no max subtracted: overflows to inf for scores above ~88
        return e / np.sum(e, axis=-1, keepdims=True)


def scores(q, k, scale):
    return (q @ np.swapaxes(k, -1, -2)) * scale  # [B, H, T, S]


def masked(s, offset, fill=layers.MASK_MIN):
    T, S = s.shape[-2:]
    return np.where(np.tri(T, S, k=offset, dtype=bool), s, fill)


def attend(q, k, v, scale, offset=None, softmax_fn=softmax, axis=-1, zero_fill=False, fill=layers.MASK_MIN,
           after_softmax=False):
    """Attention where key j is visible to query t when j <= t + offset; offset None: no mask at all.
    after_softmax: the mask zeroes the weights after a softmax over every key (rows no longer sum to 1)."""
    s = scores(q, k, scale)
    T, S = s.shape[-2:]
    if after_softmax:
        w = softmax(s) * np.tri(T, S, k=offset, dtype=F32)  # [B, H, T, S], the future's share thrown away
        return (w @ v).astype(F32)
    if offset is not None:
        if zero_fill:
            s = s * np.tri(T, S, k=offset, dtype=F32)  # masked scores set to 0, not -inf
        else:
            s = masked(s, offset, fill)
    w = softmax_fn(s, axis=axis) if softmax_fn is softmax else softmax_fn(s)
    return (w @ v).astype(F32)


def triu_kept(q, k, v, scale):
    """np.triu as the mask of keys to keep: each query sees itself and the future, not the past."""
    s = scores(q, k, scale)
    T, S = s.shape[-2:]
    return (softmax(np.where(np.triu(np.ones((T, S), bool)), s, layers.MASK_MIN)) @ v).astype(F32)


def k_dot_T(q, k, v, scale):
    """`q @ k.T`: on a 4-D array .T reverses all four axes, so matmul cannot broadcast [B, H] against [D, S]."""
    return softmax(q @ k.T * scale) @ v


K_T_HINT = ("q @ k^T needs the keys as [B, H, D, S]. `k.T` on a 4-D array reverses all four axes ([B, H, S, D] -> "
            "[D, S, H, B]), so the matmul pairs the wrong axes (and plain q @ k pairs D with S). Swap only the "
            "last two: k.swapaxes(-1, -2) or k.transpose(0, 1, 3, 2)")
# numpy's matmul messages: the inner axes do not match ([T, D] @ [H, B] for k.T, [T, D] @ [S, D] for no
# transpose), or the inner ones match and the batch axes ([B, H] against [D, S]) cannot broadcast
K_T_ERRORS = ("mismatch in its core dimension", "remapped shapes")


def qkv(B, H, T, S, D, mag=1.0):
    def make(rng):
        q = (rng.normal(size=(B, H, T, D)) * mag).astype(F32)
        k = (rng.normal(size=(B, H, S, D)) * mag).astype(F32)
        v = rng.normal(size=(B, H, S, D)).astype(F32)
        return q, k, v
    return make


def _case(T, D, mag=1.0, layer_idx=0):
    def make(rng):
        q, k, v = qkv(2, 2, T, T, D, mag)(rng)
        return q, k, v, layers.attention_scale(D, True, layer_idx, layer_idx > 0)
    return make


def _reference(q, k, v, scale):
    return layers.attention(q, k, v, scale, causal=True)[0]  # [B, H, T, D]


def _take_output(result):
    """layers.attention returns (out, weights): accept that, or the output alone."""
    if isinstance(result, tuple) and len(result) == 2:
        return result[0]
    return result


EXERCISE = Exercise(
    name="causal_attention",
    signature="causal_attention(q, k, v, scale)",
    returns="the output [B, H, T, D], float32 (or (output, weights) as layers.attention returns)",
    reference=_reference,
    unpack=_take_output,
    points=3,
    cases=(Case("B=2, H=2, T=5, D=4, scale 1/sqrt(D)", _case(5, 4)),
           Case("a scale of 1/sqrt(D)/3 (scale_attn_by_inverse_layer_idx, layer 2)", _case(5, 4, layer_idx=2)),
           Case("large scores (exp overflows unless the row max is subtracted)", _case(5, 4, mag=12.0))),
    mistakes=(
        Mistake("no_mask", lambda q, k, v, s: attend(q, k, v, s, offset=None),
                "no causal mask: position t sees the future. Mask the scores above the diagonal (key > query) "
                "with -inf before the softmax"),
        Mistake("mask_excludes_diagonal", lambda q, k, v, s: attend(q, k, v, s, offset=-1),
                "the mask is off by one: each position must also see itself (keep key == query: np.tri(T, T), "
                "i.e. k=0, not k=-1)"),
        Mistake("mask_excludes_diagonal_nan", lambda q, k, v, s: attend(q, k, v, s, offset=-1, fill=-np.inf),
                "the mask is off by one: each position must also see itself. Position 0 then sees no key at "
                "all, and a softmax over nothing but -inf is 0/0 = NaN (keep key == query: np.tri(T, T), k=0)"),
        Mistake("mask_includes_next", lambda q, k, v, s: attend(q, k, v, s, offset=1),
                "the mask is off by one: position t sees t + 1. Keep keys 0..t only"),
        Mistake("no_scale", lambda q, k, v, s: attend(q, k, v, 1.0, offset=0),
                "the scale is missing: multiply q @ k^T by scale before the softmax"),
        Mistake("scale_hard_coded", lambda q, k, v, s: attend(q, k, v, 1 / np.sqrt(q.shape[-1]), offset=0),
                "you used 1/sqrt(D) instead of the scale argument (iGPT can also divide by layer_idx + 1): "
                "multiply by scale"),
        Mistake("scale_after_softmax", lambda q, k, v, s: (softmax(masked(scores(q, k, 1.0), 0)) * s) @ v,
                "the scale is applied after the softmax; scale the scores before it"),
        Mistake("softmax_wrong_axis", lambda q, k, v, s: attend(q, k, v, s, offset=0, axis=-2),
                "the softmax runs over the wrong axis: each query's weights over the keys (the last axis, "
                "axis=-1) must sum to 1"),
        Mistake("masked_with_zero", lambda q, k, v, s: attend(q, k, v, s, offset=0, zero_fill=True),
                "masked scores were set to 0, which still gets exp(0) = 1 of weight: set them to -inf "
                "(or a very negative number) before the softmax"),
        Mistake("mask_after_softmax", lambda q, k, v, s: attend(q, k, v, s, offset=0, after_softmax=True),
                "the mask was applied after the softmax: the future keys' weights were zeroed, but they had already "
                "taken their share of each row, so the rows no longer sum to 1. Mask the scores (set the future to "
                "-inf) before the softmax", expect="applied after the softmax"),
        Mistake("triu_keeps_future", triu_kept,
                "np.triu keeps the upper triangle, key >= query: the future. A query may see the lower triangle, "
                "key <= query: np.tril(np.ones((T, T), bool)) or np.tri(T, T, dtype=bool) as the keys to keep "
                "(np.triu(..., k=1) is the part to hide)", expect="np.triu keeps the upper triangle"),
        Mistake("k_dot_T", k_dot_T, K_T_HINT, expect="`k.T` on a 4-D array"),
        Mistake("no_max_subtraction", lambda q, k, v, s: attend(q, k, v, s, offset=0, softmax_fn=naive_softmax),
                "softmax overflowed: exp of a large score is inf and inf / inf is NaN. Subtract each row's "
                "max before exp (it cancels in the ratio)"),
        Mistake("returned_weights", lambda q, k, v, s: softmax(masked(scores(q, k, s), 0)),
                "you returned the attention weights [B, H, T, S]; the output is weights @ v [B, H, T, D]"),
        Mistake("q_v_swapped", lambda q, k, v, s: attend(v, k, q, s, offset=0),
                "q and v look swapped: scores come from q @ k^T, the output is weights @ v"),
    ),
    error_hints=tuple((text, "k_dot_T") for text in K_T_ERRORS),
    advice="out = softmax(scale * q @ k^T with keys after the query set to -inf, over the last axis) @ v.",
)
