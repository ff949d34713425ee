"""Exercise: one KV-cache decoding step, replacing `KVCache.update` followed by `layers.attention`."""

import numpy as np

from .. import layers
from ..cache import KVCache
from ..config import ImageGPTConfig
from .causal_attention import K_T_ERRORS, K_T_HINT, attend, k_dot_T, qkv
from .engine import F32, Case, Exercise, Mistake


def _reference(q, k, v, past_k, past_v, scale):
    """Append the new keys and values to a KVCache holding the past ones, then attend: the new queries
    sit at positions P..P+T-1, so layers.attention's causal mask lets row t see keys 0..P+t."""
    B, H, P, D = past_k.shape
    T = k.shape[2]
    config = ImageGPTConfig(vocab_size=2, n_positions=P + T, n_embd=H * D, n_layer=1, n_head=H)
    cache = KVCache(config, B)
    cache.update(0, past_k, past_v)  # the P cached positions
    k_all, v_all = cache.update(0, k, v)  # [B, H, P + T, D]
    out, _ = layers.attention(q, k_all, v_all, scale, causal=True)  # [B, H, T, D]
    return out, k_all.copy(), v_all.copy()


def _over_all(fn):
    """A mistake made on attention over (q, all keys, all values), the cache appended correctly."""
    def step(q, k, v, past_k, past_v, scale):
        k_all, v_all = np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)
        return fn(q, k_all, v_all, scale), k_all, v_all
    return step


def _case(P, T, D=4):
    def make(rng):
        q, k, v = qkv(2, 2, T, T, D)(rng)
        past_k, past_v = (rng.normal(size=(2, 2, P, D)).astype(F32) for _ in range(2))
        return q, k, v, past_k, past_v, layers.attention_scale(D)
    return make


def _prepended(q, k, v, pk, pv, s):
    k_all, v_all = np.concatenate([k, pk], axis=2), np.concatenate([v, pv], axis=2)
    return attend(q, k_all, v_all, s, offset=k_all.shape[2] - q.shape[2]), k_all, v_all


EXERCISE = Exercise(
    name="kv_cache_step",
    signature="kv_cache_step(q, k, v, past_k, past_v, scale)",
    returns="(out [B, H, T, D], keys [B, H, P+T, D], values [B, H, P+T, D]), float32",
    reference=_reference,
    outputs=("out", "keys", "values"),
    points=3,
    cases=(Case("one new token after 4 cached ones (P=4, T=1)", _case(4, 1)),
           Case("three new tokens after 4 cached ones (P=4, T=3)", _case(4, 3)),
           Case("an empty cache: the prompt itself (P=0, T=3)", _case(0, 3))),
    mistakes=(
        Mistake("not_appended", lambda q, k, v, pk, pv, s: (attend(q, k, v, s, offset=0), pk, pv),
                "the cache was not extended: return the past keys and values with the new ones appended "
                "along the positions axis (axis=2), and attend over all of them"),
        Mistake("cache_ignored",
                lambda q, k, v, pk, pv, s: (attend(q, k, v, s, offset=0), *(np.concatenate(p, 2) for p in ((pk, k), (pv, v)))),
                "the new queries attended only to the new keys: they must attend to the cached ones too"),
        Mistake("prepended", _prepended,
                "the new keys went in front of the cached ones: append them after (np.concatenate([past_k, k], axis=2))"),
        Mistake("wrong_position", _over_all(lambda q, k, v, s: attend(q, k, v, s, offset=0)),
                "the causal mask treats the new queries as positions 0..T-1; they are positions P..P+T-1, so "
                "row t may see keys 0..P+t. np.tri(T, S) (k=0) is the causal mask only when S == T, as in the "
                "previous exercise; with S = P + T keys, shift it: np.tri(T, S, k=S - T)",
                expect="np.tri(T, S) (k=0) is the causal mask only when S == T"),
        Mistake("no_mask", _over_all(lambda q, k, v, s: attend(q, k, v, s, offset=None)),
                "no causal mask: fine for one new token, but with several new tokens each must not see the ones "
                "after it (np.tri(T, S, k=S - T))"),
        Mistake("wrong_axis",
                lambda q, k, v, pk, pv, s: (attend(q, k, v, s, offset=0), np.concatenate([pk, k], 3), np.concatenate([pv, v], 3)),
                "the keys were appended along the wrong axis: positions are axis 2 of [B, H, S, D]"),
        Mistake("k_dot_T", _over_all(k_dot_T), K_T_HINT, expect="`k.T` on a 4-D array"),
    ),
    error_hints=(("concatenation axis", "wrong_axis"), *((text, "k_dot_T") for text in K_T_ERRORS)),
    advice="keys = concat([past_k, k], axis=2), values likewise; then causal attention where query t "
           "(at position P + t) sees keys 0..P+t.",
)
