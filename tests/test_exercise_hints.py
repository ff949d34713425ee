"""The attention exercises' hints for the traps students walk into, each written here the way a student
writes it (not with the exercise's own mistake functions): the hint that names the trap is given for it."""

import numpy as np
import pytest

from minigpt_pixels.exercises import check


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def k_dot_T(q, k, v, scale):
    return _softmax(q @ k.T * scale) @ v  # .T on [B, H, S, D]


def mask_after_softmax(q, k, v, scale):
    T, S = q.shape[2], k.shape[2]
    w = _softmax(q @ k.swapaxes(-1, -2) * scale)
    return (w * np.tri(T, S, dtype=np.float32)) @ v  # the future zeroed after the softmax, rows not renormalised


def triu_mask(q, k, v, scale):
    T, S = q.shape[2], k.shape[2]
    s = q @ k.swapaxes(-1, -2) * scale
    s = np.where(np.triu(np.ones((T, S), dtype=bool)), s, -1e9)  # np.triu as the keys to keep
    return _softmax(s) @ v


def kv_step_square_tri(q, k, v, past_k, past_v, scale):
    keys, values = np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)
    T, S = q.shape[2], keys.shape[2]
    s = q @ keys.swapaxes(-1, -2) * scale
    s = np.where(np.tri(T, S, dtype=bool), s, -1e9)  # exercise 1's mask, right only when S == T
    return (_softmax(s) @ values).astype(np.float32), keys, values


def kv_step_k_dot_T(q, k, v, past_k, past_v, scale):
    keys, values = np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)
    return _softmax(q @ keys.T * scale) @ values, keys, values


@pytest.mark.parametrize("name,fn,hint", [
    ("causal_attention", k_dot_T, "`k.T` on a 4-D array reverses all four axes"),
    ("causal_attention", mask_after_softmax, "the mask was applied after the softmax"),
    ("causal_attention", triu_mask, "np.triu keeps the upper triangle, key >= query: the future"),
    ("kv_cache_step", kv_step_square_tri, "np.tri(T, S) (k=0) is the causal mask only when S == T"),
    ("kv_cache_step", kv_step_k_dot_T, "`k.T` on a 4-D array reverses all four axes"),
], ids=["k.T", "mask after softmax", "np.triu", "np.tri(T, S) in the cache step", "k.T in the cache step"])
def test_each_trap_gets_its_hint(name, fn, hint):
    result = check(name, fn)
    assert result.status == "failed", result.message
    assert "Likely mistake: " in result.message, result.message
    assert hint in result.message.split("Likely mistake: ")[1], result.message


def test_the_square_mask_passes_exercise_1_and_its_hint_points_at_the_offset():
    """np.tri(T, S) is right for causal_attention (S == T), and the cache step's hint gives the shifted form."""
    def square(q, k, v, scale):
        T, S = q.shape[2], k.shape[2]
        s = np.where(np.tri(T, S, dtype=bool), q @ k.swapaxes(-1, -2) * scale, -1e9)
        return (_softmax(s) @ v).astype(np.float32)

    assert check("causal_attention", square).passed
    assert "np.tri(T, S, k=S - T)" in check("kv_cache_step", kv_step_square_tri).message
