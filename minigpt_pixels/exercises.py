"""Classroom exercises and their grader.

A student writes one function of the package from scratch; `check(name, fn)` runs it on small seeded
inputs, compares it with the package's own function, and says what went wrong:

    from minigpt_pixels.exercises import check
    check("layer_norm", my_layer_norm)   # -> CheckResult: status "passed", "failed" or "not done"

Every exercise replaces one function of the package and takes the same arguments:

    layer_norm(x, weight, eps=1e-5)                  layers.layer_norm
    quick_gelu(x)                                    layers.quick_gelu
    causal_attention(q, k, v, scale)                 layers.attention with the causal mask, no padding mask
    kv_cache_step(q, k, v, past_k, past_v, scale)    KVCache.update, then layers.attention
    top_k_filter(logits, k)                          generation.top_k_filter
    top_k_sample(logits, k, rng)                     generation.sample_from_logits(logits, rng, top_k=k)
    kmeans_step(pixels, centres)                     one Lloyd iteration of palette.fit_palette
    layer_norm_backward(dout, cache)                 layers.layer_norm_backward

How a check works: each exercise has a few cases (inputs drawn from a seeded generator, each case
aimed at one detail such as "eps matters" or "the queries sit after the cache"). For each case the
grader checks the output's type, then its shape, then its dtype, then NaN/inf, then its values
against the reference within a named tolerance. On the first failing case it reports the shapes, the
first differing values, and the likely mistake: it runs every classic mistake (`Exercise.mistakes`,
written out below as small functions) on the same inputs and names the one the student's output
matches. Sampling is checked by its statistics instead (which tokens are ever drawn, and how often).

The grader never raises to the student: a function that raises, returns None, a list, the wrong
shape or dtype, NaN, changes its inputs in place, or runs past `timeout` seconds gives a failed result
with a message; `raise NotImplementedError` (the skeletons' body) gives "not done yet".
"""

from __future__ import annotations

import html
import inspect
import os
import signal
import sysconfig
import threading
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import layers

F32 = np.float32
SEED = 1234  # every case draws its inputs from default_rng(SEED + case number)
TIMEOUT_S = 10.0  # per call; the inputs are tiny, so a correct function takes milliseconds
MISTAKE_TOL = dict(rtol=1e-3, atol=1e-4)  # how close an output must be to a known mistake to name it
SHOWN_DIFFS = 3  # differing values listed in a failure message


# ---- results ---------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The outcome of `check`: `status` is "passed", "failed" or "not done"; `message` says why.

    `case` names the failing case, `mistake` the classic mistake the output matched (if any), `worst`
    the largest absolute difference from the reference over the cases compared. `bool(result)` is
    `result.passed`, so `assert check(...)` works in a solutions notebook.
    """
    name: str
    status: str
    message: str
    case: str | None = None
    mistake: str | None = None
    worst: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    _ICONS = {"passed": "\u2705", "failed": "\u274c", "not done": "\u23f3"}  # check mark, cross, hourglass

    def __str__(self) -> str:
        return f"{self._ICONS.get(self.status, '')} {self.name}: {self.message}"

    __repr__ = __str__  # what a notebook shows for a bare `check(...)` outside HTML front ends

    def _repr_html_(self) -> str:
        colour = {"passed": "#e6f4ea", "failed": "#fde8e8", "not done": "#fff4d6"}.get(self.status, "#eee")
        head, _, rest = self.message.partition("\n")
        body = f"<pre style='margin:4px 0 0 0;white-space:pre-wrap'>{html.escape(rest)}</pre>" if rest else ""
        return (f"<div style='background:{colour};padding:6px 10px;border-radius:4px;color:#222'>"
                f"{self._ICONS.get(self.status, '')} <b>{html.escape(self.name)}</b>: {html.escape(head)}{body}</div>")


@dataclass(frozen=True)
class Case:
    """One set of inputs: `make(rng)` returns the positional arguments; `about` says what it tests."""
    about: str
    make: Callable


@dataclass(frozen=True)
class Mistake:
    """A classic wrong version of the exercise, with the hint shown when a student's output matches it.
    `expect` is the part of the message a test looks for (the hint itself, unless given)."""
    name: str
    fn: Callable
    hint: str
    expect: str | None = None


@dataclass(frozen=True)
class Exercise:
    name: str
    signature: str  # how the grader calls the student's function
    returns: str  # what it must return
    reference: Callable  # the package's function, with the exercise's signature
    cases: tuple
    mistakes: tuple = ()
    outputs: tuple = ("output",)  # names of the returned arrays: one name, or several for a tuple
    rtol: float = 1e-5
    atol: float = 1e-6
    advice: str = ""  # shown when a wrong output matches no known mistake
    error_hints: tuple = ()  # (text in an exception message, the name of the mistake it suggests) pairs
    neg_inf_ok: bool = False  # -inf is a legitimate value in the output (filtered logits)
    compare: Callable | None = None  # a custom comparison (sampling), instead of element by element
    unpack: Callable | None = None  # adapts a return value to the outputs (e.g. attention's (out, weights))


class _Fail(Exception):
    """Raised inside the grader to stop at the first problem; never escapes `check`."""

    def __init__(self, message, mistake=None, remind=True):
        super().__init__(message)
        self.message, self.mistake, self.remind = message, mistake, remind


class _Timeout(BaseException):  # BaseException: a student's `except Exception` cannot swallow it
    pass


# ---- the references, drawn from the package -------------------------------------------------------
def _attention_reference(q, k, v, scale):
    return layers.attention(q, k, v, scale, causal=True)[0]  # [B, H, T, D]


def _kv_cache_step_reference(q, k, v, past_k, past_v, scale):
    """Append the new keys and values to a KVCache holding the past ones, then attend: the new queries
    sit at positions P..P+T-1, so layers.attention's causal mask lets row t see keys 0..P+t."""
    from .config import ImageGPTConfig
    from .model import KVCache

    B, H, P, D = past_k.shape
    T = k.shape[2]
    config = ImageGPTConfig(vocab_size=2, n_positions=P + T, n_embd=H * D, n_layer=1, n_head=H)
    cache = KVCache(config, B)
    cache.update(0, past_k, past_v)  # the P cached positions
    k_all, v_all = cache.update(0, k, v)  # [B, H, P + T, D]
    out, _ = layers.attention(q, k_all, v_all, scale, causal=True)  # [B, H, T, D]
    return out, k_all.copy(), v_all.copy()


def _top_k_filter_reference(logits, k):
    from .generation import top_k_filter
    return top_k_filter(logits, k)


def _top_k_sample_reference(logits, k, rng):
    from .generation import sample_from_logits
    return sample_from_logits(logits, rng, top_k=k)


def _kmeans_step_reference(pixels, centres):
    """One Lloyd iteration as palette.fit_palette runs it: give each pixel to its nearest centre
    (squared Euclidean distance; palette.quantize), move each centre to the mean of its pixels, and move a
    centre no pixel chose to the pixel farthest from its nearest centre."""
    from .palette import quantize

    K = len(centres)
    ids = quantize(pixels, centres)  # [N] nearest centre, lowest id on a tie
    counts = np.bincount(ids, minlength=K)  # [K]
    sums = np.zeros_like(centres, dtype=np.float64)
    np.add.at(sums, ids, pixels)  # [K, 3]
    new = centres.copy()
    filled = counts > 0
    new[filled] = sums[filled] / counts[filled, None]
    empty = np.flatnonzero(~filled)
    if len(empty):
        dist = np.sum((pixels - centres[ids]) ** 2, axis=1)  # [N] squared distance to the own centre
        new[empty] = pixels[np.argsort(dist)[::-1][:len(empty)]]  # the farthest pixels
    return new.astype(F32)


# ---- the classic mistakes -------------------------------------------------------------------------
def _ms(x):
    return np.mean(np.square(x), axis=-1, keepdims=True)  # [..., 1]


def _softmax(x, axis=-1):
    with np.errstate(all="ignore"):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)


def _scores(q, k, scale):
    return (q @ np.swapaxes(k, -1, -2)) * scale  # [B, H, T, S]


def _masked(scores, offset, fill=layers.MASK_MIN):
    T, S = scores.shape[-2:]
    return np.where(np.tri(T, S, k=offset, dtype=bool), scores, fill)


def _naive_softmax(x):
    with np.errstate(all="ignore"):
        e = np.exp(x)  # no max subtracted: overflows to inf for scores above ~88
        return e / np.sum(e, axis=-1, keepdims=True)


def _attend(q, k, v, scale, offset=None, softmax=_softmax, axis=-1, zero_fill=False, fill=layers.MASK_MIN):
    """Attention with the knobs students get wrong: offset None means no causal mask."""
    s = _scores(q, k, scale)
    T, S = s.shape[-2:]
    if offset is not None:
        if zero_fill:
            s = s * np.tri(T, S, k=offset, dtype=F32)  # masked scores set to 0, not -inf
        else:
            s = _masked(s, offset, fill)
    w = softmax(s, axis=axis) if softmax is _softmax else softmax(s)
    return (w @ v).astype(F32)


def _kv(fn):
    """A kv_cache_step mistake from an attention over (q, all keys, all values)."""
    def step(q, k, v, past_k, past_v, scale):
        k_all, v_all = np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)
        return fn(q, k_all, v_all, scale), k_all, v_all
    return step


def _topk_keep(logits, k, fill=-np.inf):
    kth = np.sort(logits, axis=-1)[..., -k][..., None]  # the k-th largest
    return np.where(logits >= kth, logits, F32(fill)).astype(F32)


def _sample_rows(probs, rng):
    u = rng.random(probs.shape[0])[:, None]  # [B, 1]
    return np.minimum(np.sum(np.cumsum(probs, axis=-1) <= u, axis=-1), probs.shape[-1] - 1)


def _sample_no_renorm(logits, k, rng):
    probs = _softmax(logits)  # over all V tokens ...
    probs = np.where(logits >= np.sort(logits, axis=-1)[:, -k][:, None], probs, 0)  # ... then the rest zeroed
    u = rng.random(logits.shape[0])[:, None]
    return np.sum(np.cumsum(probs, axis=-1) <= u, axis=-1)  # runs off the end: id V when u > kept mass


def _kmeans(pixels, centres, dist="l2", empty="farthest", mean=np.mean):
    K = len(centres)
    diff = pixels[:, None, :] - centres[None]  # [N, K, 3]
    d = np.abs(diff).sum(-1) if dist == "l1" else np.square(diff).sum(-1)  # [N, K]
    ids = np.argmax(d, axis=1) if dist == "farthest" else np.argmin(d, axis=1)
    new = centres.copy()
    for j in range(K):
        mine = pixels[ids == j]
        if len(mine):
            new[j] = mean(mine, axis=0)
        elif empty == "nan":
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new[j] = np.mean(mine, axis=0)  # mean of nothing: NaN
        elif empty == "zero":
            new[j] = 0
        elif empty == "farthest":
            own = np.square(pixels - centres[np.argmin(np.square(pixels[:, None] - centres[None]).sum(-1), 1)]).sum(-1)
            new[j] = pixels[np.argmax(own)]
        # empty == "stay": the centre keeps its place
    return new.astype(F32)


def _ln_backward(dout, cache, projection=True, centred=False, use_weight=True, dw="sum", divide=True):
    n, weight, rms = cache  # n = x / rms, as layers.layer_norm_forward keeps it
    C = n.shape[-1]
    if dw == "sum":
        dweight = np.sum((dout * n).reshape(-1, C), axis=0)
    elif dw == "times weight":
        dweight = np.sum((dout * n * weight).reshape(-1, C), axis=0)
    else:  # not summed over the positions
        dweight = dout * n
    g = dout * weight if use_weight else dout
    dx = g
    if centred:
        dx = dx - np.mean(g, axis=-1, keepdims=True)
    if projection:
        dx = dx - n * np.mean(g * n, axis=-1, keepdims=True)
    return (dx / rms if divide else dx).astype(F32), dweight.astype(F32)


# ---- the cases -----------------------------------------------------------------------------------
def _ln_case(shape, scale, shift, eps=None):
    def make(rng):
        x = (rng.normal(size=shape) * scale + shift).astype(F32)
        w = rng.normal(1.0, 0.3, size=shape[-1]).astype(F32)
        return (x, w) if eps is None else (x, w, eps)
    return make


def _qkv(B, H, T, S, D, mag=1.0):
    def make(rng):
        q = (rng.normal(size=(B, H, T, D)) * mag).astype(F32)
        k = (rng.normal(size=(B, H, S, D)) * mag).astype(F32)
        v = rng.normal(size=(B, H, S, D)).astype(F32)
        return q, k, v
    return make


def _attention_case(T, D, mag=1.0, layer_idx=0):
    def make(rng):
        q, k, v = _qkv(2, 2, T, T, D, mag)(rng)
        return q, k, v, layers.attention_scale(D, True, layer_idx, layer_idx > 0)
    return make


def _kv_case(P, T, D=4):
    def make(rng):
        q, k, v = _qkv(2, 2, T, T, D)(rng)
        past_k, past_v = (rng.normal(size=(2, 2, P, D)).astype(F32) for _ in range(2))
        return q, k, v, past_k, past_v, layers.attention_scale(D)
    return make


def _logits_case(B, V, k, ties=False):
    def make(rng):
        logits = (rng.normal(size=(B, V)) * 2).astype(F32)
        if ties:  # the 3rd and 4th largest of each row are equal: both are kept
            order = np.argsort(-logits, axis=-1)
            rows = np.arange(B)
            logits[rows, order[:, 3]] = logits[rows, order[:, 2]]
        return logits, k
    return make


_SAMPLE_ROWS = np.array([  # logits of three kinds of rows; the draws are counted per kind
    [2.0, 1.7, 1.5, 1.4, 0.2, -0.5, 0.0, -1.0, 0.9, -2.0],  # the 4th most likely is close to the 3rd
    [0.1, -0.3, 0.5, 0.0, 0.4, -0.2, 0.3, 0.2, -0.1, 0.35],  # nearly flat
    [-1.0, 0.0, 3.0, -2.0, 1.0, 0.5, -0.5, 2.0, 1.5, -3.0],  # the most likely is not first
], F32)
_DRAWS_PER_ROW = 3000


def _sample_case(k):
    def make(rng):
        return np.repeat(_SAMPLE_ROWS, _DRAWS_PER_ROW, axis=0), k, rng  # [3 * 3000, 10]
    return make


def _kmeans_case(empty):
    def make(rng):
        pixels = rng.uniform(-1, 1, size=(120, 3)).astype(F32)  # [N, 3] in the model's [-1, 1] space
        centres = rng.uniform(-0.8, 0.8, size=(6, 3)).astype(F32)  # [K, 3]
        if empty:  # one centre far outside the pixels: no pixel chooses it
            centres[4] = np.array([3.0, -3.0, 3.0], F32)
        return pixels, centres
    return make


def _ln_backward_case(shape):
    def make(rng):
        x = (rng.normal(size=shape) + 0.5).astype(F32)
        w = rng.normal(1.0, 0.3, size=shape[-1]).astype(F32)
        _, cache = layers.layer_norm_forward(x, w)
        return rng.normal(size=shape).astype(F32), cache
    return make


def _take_attention_output(result):
    """layers.attention returns (out, weights): accept that, or the output alone."""
    if isinstance(result, tuple) and len(result) == 2:
        return result[0]
    return result


# ---- sampling: judged by what is drawn and how often ---------------------------------------------
def _compare_samples(ids, args):
    """Every draw within the row's top k (ties with the k-th kept), and each token drawn about as often
    as softmax over the kept logits says (within 5 standard deviations)."""
    from .generation import softmax, top_k_filter

    logits, k, _ = args
    V = logits.shape[-1]
    if ids.shape != (logits.shape[0],):
        raise _Fail(f"expected one id per row, shape {(logits.shape[0],)}, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= V:
        bad = int(ids[(ids < 0) | (ids >= V)][0])
        raise _Fail(f"drew token id {bad}, outside [0, {V})", "no_renormalise" if bad == V else None)
    n = _DRAWS_PER_ROW
    for r, row in enumerate(_SAMPLE_ROWS):
        drawn = ids[r * n:(r + 1) * n]
        counts = np.bincount(drawn, minlength=V)  # [V]
        rank = np.argsort(np.argsort(-row, kind="stable"), kind="stable")  # 0 = the most likely
        kept = row >= np.sort(row)[-k]
        outside = np.flatnonzero((counts > 0) & ~kept)
        if len(outside):
            ranks = sorted({int(rank[t]) + 1 for t in outside})
            mistake = "keeps_k_plus_1" if ranks == [k + 1] else "ignores_k"
            raise _Fail(f"row kind {r}: drew token(s) {outside.tolist()}, the {_ordinals(ranks)} most likely, "
                        f"with k = {k}: only the {k} most likely may be drawn", mistake)
        if k > 1 and np.count_nonzero(counts) == 1:
            raise _Fail(f"row kind {r}: only token {int(np.argmax(counts))} was drawn, {n} times out of {n}", "greedy")
        expected = softmax(top_k_filter(row[None], k))[0]  # [V]
        freq = counts / n
        sigma = np.sqrt(expected * (1 - expected) / n)
        off = np.abs(freq - expected) > 5 * sigma + 0.005
        if off.any():
            t = int(np.argmax(np.abs(freq - expected) - 5 * sigma))
            table = ", ".join(f"{j}: {expected[j]:.3f} vs {freq[j]:.3f}" for j in np.argsort(-expected)[:k])
            raise _Fail(f"row kind {r}: token {t} drawn with frequency {freq[t]:.3f}, expected {expected[t]:.3f} "
                        f"(probability vs your frequency, most likely first: {table})", "wrong_frequencies")
    return 0.0


def _ordinals(ranks):
    suffix = {1: "st", 2: "nd", 3: "rd"}
    return ", ".join(f"{r}{suffix.get(r if r < 20 else r % 10, 'th')}" for r in ranks)


# ---- the registry ---------------------------------------------------------------------------------
_LN_FORMULA = "x / sqrt(mean(x**2, axis=-1) + eps) * weight"

EXERCISES = {e.name: e for e in [
    Exercise(
        name="layer_norm",
        signature="layer_norm(x, weight, eps=1e-5)",
        returns="float32 array shaped like x",
        reference=layers.layer_norm,
        cases=(Case("random rows with a non-zero mean", _ln_case((2, 3, 8), 2.0, 0.5)),
               Case("tiny values, where eps matters", _ln_case((4, 8), 1e-3, 0.0)),
               Case("eps passed as the third argument (0.01)", _ln_case((3, 8), 0.1, 0.05, eps=0.01))),
        mistakes=(
            Mistake("mean_centred",
                    lambda x, w, eps=1e-5: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w,
                    "you subtracted the mean (that is torch's LayerNorm). ImageGPT's layer norm never centres: "
                    f"{_LN_FORMULA}"),
            Mistake("weight_added", lambda x, w, eps=1e-5: x / np.sqrt(_ms(x) + eps) + w,
                    "you added the weight like a bias. ImageGPT's layer norm has a gain and no bias: multiply by weight"),
            Mistake("no_weight", lambda x, w, eps=1e-5: x / np.sqrt(_ms(x) + eps),
                    "you forgot to multiply by weight (the learned gain)"),
            Mistake("no_eps", lambda x, w, eps=1e-5: x / np.sqrt(_ms(x)) * w,
                    "you left out eps: add it inside the square root, sqrt(mean(x**2) + eps)"),
            Mistake("eps_outside_sqrt", lambda x, w, eps=1e-5: x / (np.sqrt(_ms(x)) + eps) * w,
                    "eps is added outside the square root; it goes inside: sqrt(mean(x**2) + eps)"),
            Mistake("eps_hard_coded", lambda x, w, eps=1e-5: x / np.sqrt(_ms(x) + 1e-5) * w,
                    "you ignored the eps argument (1e-5 hard-coded?): use the eps you are given"),
            Mistake("sum_not_mean", lambda x, w, eps=1e-5: x / np.sqrt(np.sum(x * x, -1, keepdims=True) + eps) * w,
                    "you summed the squares; take their mean over the last axis"),
            Mistake("wrong_axis", lambda x, w, eps=1e-5: x / np.sqrt(np.mean(x * x, 0, keepdims=True) + eps) * w,
                    "you averaged over the wrong axis: normalise each position over its C features, axis=-1 "
                    "(with keepdims=True so it broadcasts)"),
            Mistake("std_not_rms", lambda x, w, eps=1e-5: x / (_ms(x) + eps) * w,
                    "you divided by the mean square; divide by its square root"),
        ),
        advice=f"ImageGPT's layer norm is {_LN_FORMULA}: no mean subtraction, no bias.",
    ),
    Exercise(
        name="quick_gelu",
        signature="quick_gelu(x)",
        returns="float32 array shaped like x",
        reference=layers.quick_gelu,
        cases=(Case("values from -6 to 6", lambda rng: (np.linspace(-6, 6, 61, dtype=F32).reshape(1, 61),)),
               Case("random values", lambda rng: ((rng.normal(size=(3, 4, 5)) * 3).astype(F32),))),
        mistakes=(
            Mistake("exact_gelu", lambda x: layers.activation(x, "gelu"),
                    "that is the exact GELU, x * Phi(x) with erf. ImageGPT uses quick_gelu: x * sigmoid(1.702 * x)"),
            Mistake("tanh_gelu", lambda x: layers.activation(x, "gelu_new"),
                    "that is the tanh approximation of GELU (GPT-2's gelu_new). ImageGPT uses quick_gelu: "
                    "x * sigmoid(1.702 * x)"),
            Mistake("silu", lambda x: x / (1 + np.exp(-x)),
                    "that is SiLU, x * sigmoid(x): the 1.702 inside the sigmoid is missing"),
            Mistake("sigmoid_only", lambda x: 1 / (1 + np.exp(-1.702 * x)),
                    "you returned sigmoid(1.702 * x); multiply it by x"),
            Mistake("relu", lambda x: np.maximum(x, 0), "that is ReLU; ImageGPT uses x * sigmoid(1.702 * x)"),
        ),
        advice="quick_gelu(x) = x * sigmoid(1.702 * x) = x / (1 + exp(-1.702 * x)).",
    ),
    Exercise(
        name="causal_attention",
        signature="causal_attention(q, k, v, scale)",
        returns="the output [B, H, T, D], float32 (or (output, weights) as layers.attention returns)",
        reference=_attention_reference,
        unpack=_take_attention_output,
        cases=(Case("B=2, H=2, T=5, D=4, scale 1/sqrt(D)", _attention_case(5, 4)),
               Case("a scale of 1/sqrt(D)/3 (scale_attn_by_inverse_layer_idx, layer 2)", _attention_case(5, 4, layer_idx=2)),
               Case("large scores (exp overflows unless the row max is subtracted)", _attention_case(5, 4, mag=12.0))),
        mistakes=(
            Mistake("no_mask", lambda q, k, v, s: _attend(q, k, v, s, offset=None),
                    "no causal mask: position t sees the future. Mask the scores above the diagonal (key > query) "
                    "with -inf before the softmax"),
            Mistake("mask_excludes_diagonal", lambda q, k, v, s: _attend(q, k, v, s, offset=-1),
                    "the mask is off by one: each position must also see itself (keep key == query: np.tri(T, S), "
                    "i.e. k=0, not k=-1)"),
            Mistake("mask_excludes_diagonal_nan", lambda q, k, v, s: _attend(q, k, v, s, offset=-1, fill=-np.inf),
                    "the mask is off by one: each position must also see itself. Position 0 then sees no key at "
                    "all, and a softmax over nothing but -inf is 0/0 = NaN (keep key == query: np.tri(T, S), k=0)"),
            Mistake("mask_includes_next", lambda q, k, v, s: _attend(q, k, v, s, offset=1),
                    "the mask is off by one: position t sees t + 1. Keep keys 0..t only"),
            Mistake("no_scale", lambda q, k, v, s: _attend(q, k, v, 1.0, offset=0),
                    "the scale is missing: multiply q @ k^T by scale before the softmax"),
            Mistake("scale_hard_coded", lambda q, k, v, s: _attend(q, k, v, 1 / np.sqrt(q.shape[-1]), offset=0),
                    "you used 1/sqrt(D) instead of the scale argument (iGPT can also divide by layer_idx + 1): "
                    "multiply by scale"),
            Mistake("scale_after_softmax", lambda q, k, v, s: (_softmax(_masked(_scores(q, k, 1.0), 0)) * s) @ v,
                    "the scale is applied after the softmax; scale the scores before it"),
            Mistake("softmax_wrong_axis", lambda q, k, v, s: _attend(q, k, v, s, offset=0, axis=-2),
                    "the softmax runs over the wrong axis: each query's weights over the keys (the last axis, "
                    "axis=-1) must sum to 1"),
            Mistake("masked_with_zero", lambda q, k, v, s: _attend(q, k, v, s, offset=0, zero_fill=True),
                    "masked scores were set to 0, which still gets exp(0) = 1 of weight: set them to -inf "
                    "(or a very negative number) before the softmax"),
            Mistake("no_max_subtraction", lambda q, k, v, s: _attend(q, k, v, s, offset=0, softmax=_naive_softmax),
                    "softmax overflowed: exp of a large score is inf and inf / inf is NaN. Subtract each row's "
                    "max before exp (it cancels in the ratio)"),
            Mistake("returned_weights", lambda q, k, v, s: _softmax(_masked(_scores(q, k, s), 0)),
                    "you returned the attention weights [B, H, T, S]; the output is weights @ v [B, H, T, D]"),
            Mistake("q_v_swapped", lambda q, k, v, s: _attend(v, k, q, s, offset=0),
                    "q and v look swapped: scores come from q @ k^T, the output is weights @ v"),
        ),
        advice="out = softmax(scale * q @ k^T with keys after the query set to -inf, over the last axis) @ v.",
    ),
    Exercise(
        name="kv_cache_step",
        signature="kv_cache_step(q, k, v, past_k, past_v, scale)",
        returns="(out [B, H, T, D], keys [B, H, P+T, D], values [B, H, P+T, D]), float32",
        reference=_kv_cache_step_reference,
        outputs=("out", "keys", "values"),
        cases=(Case("one new token after 4 cached ones (P=4, T=1)", _kv_case(4, 1)),
               Case("three new tokens after 4 cached ones (P=4, T=3)", _kv_case(4, 3)),
               Case("an empty cache: the prompt itself (P=0, T=3)", _kv_case(0, 3))),
        mistakes=(
            Mistake("not_appended",
                    lambda q, k, v, pk, pv, s: (_attend(q, k, v, s, offset=0), pk, pv),
                    "the cache was not extended: return the past keys and values with the new ones appended "
                    "along the positions axis (axis=2), and attend over all of them"),
            Mistake("cache_ignored",
                    lambda q, k, v, pk, pv, s: (_attend(q, k, v, s, offset=0), *(np.concatenate(p, 2) for p in ((pk, k), (pv, v)))),
                    "the new queries attended only to the new keys: they must attend to the cached ones too"),
            Mistake("prepended",
                    lambda q, k, v, pk, pv, s: _kv(lambda q_, ka, va, s_: _attend(q_, ka, va, s_, offset=ka.shape[2] - q_.shape[2]))(
                        q, pk, pv, k, v, s),
                    "the new keys went in front of the cached ones: append them after (np.concatenate([past_k, k], axis=2))"),
            Mistake("wrong_position", _kv(lambda q, k, v, s: _attend(q, k, v, s, offset=0)),
                    "the causal mask treats the new queries as positions 0..T-1; they are positions P..P+T-1, so "
                    "row t may see keys 0..P+t (np.tri(T, S, k=S - T))"),
            Mistake("no_mask", _kv(lambda q, k, v, s: _attend(q, k, v, s, offset=None)),
                    "no causal mask: fine for one new token, but with several new tokens each must not see the ones "
                    "after it (np.tri(T, S, k=S - T))"),
            Mistake("wrong_axis",
                    lambda q, k, v, pk, pv, s: (_attend(q, k, v, s, offset=0), np.concatenate([pk, k], 3), np.concatenate([pv, v], 3)),
                    "the keys were appended along the wrong axis: positions are axis 2 of [B, H, S, D]"),
        ),
        error_hints=(("concatenation axis", "wrong_axis"),),
        advice="keys = concat([past_k, k], axis=2), values likewise; then causal attention where query t "
               "(at position P + t) sees keys 0..P+t.",
    ),
    Exercise(
        name="top_k_filter",
        signature="top_k_filter(logits, k)",
        returns="float32 logits [B, V]: the k largest of each row kept, -inf elsewhere",
        reference=_top_k_filter_reference,
        neg_inf_ok=True,
        cases=(Case("k=3 of 12", _logits_case(4, 12, 3)),
               Case("k=1 (greedy)", _logits_case(3, 12, 1)),
               Case("k=V keeps everything", _logits_case(2, 7, 7)),
               Case("ties with the k-th largest are kept (as in transformers)", _logits_case(3, 12, 3, ties=True))),
        mistakes=(
            Mistake("keeps_k_plus_1", lambda lg, k: _topk_keep(lg, min(k + 1, lg.shape[-1])),
                    "you kept k + 1 logits (an off-by-one: the k-th largest is np.sort(row)[-k], or "
                    "np.partition(row, -k)[-k])"),
            Mistake("keeps_k_minus_1", lambda lg, k: _topk_keep(lg, max(k - 1, 1)) if k > 1 else np.full_like(lg, -np.inf),
                    "you kept k - 1 logits (an off-by-one): keep the k largest, the k-th included"),
            Mistake("keeps_smallest", lambda lg, k: np.where(lg <= np.sort(lg, -1)[:, k - 1:k], lg, -np.inf).astype(F32),
                    "you kept the k smallest logits: keep the k largest"),
            Mistake("zero_fill", lambda lg, k: _topk_keep(lg, k, fill=0.0),
                    "the removed logits were set to 0, which softmax still gives weight: set them to -inf"),
            Mistake("returns_probs", lambda lg, k: _softmax(_topk_keep(lg, k)).astype(F32),
                    "you returned probabilities; return the filtered logits (sampling takes the softmax later)"),
            Mistake("returns_values", lambda lg, k: np.sort(lg, -1)[:, ::-1][:, :k],
                    "you returned only the k kept values [B, k]; return all V logits with -inf where removed"),
            Mistake("ties_broken", lambda lg, k: _exact_k(lg, k),
                    "you kept exactly k indices; transformers keeps every logit equal to the k-th largest too: "
                    "compare each logit with the k-th largest value (logits < kth -> -inf)"),
        ),
        advice="kth = the k-th largest of each row; return np.where(logits < kth, -inf, logits).",
    ),
    Exercise(
        name="top_k_sample",
        signature="top_k_sample(logits, k, rng)",
        returns="int token ids [B]: one draw per row, from softmax over the row's k largest logits",
        reference=_top_k_sample_reference,
        compare=_compare_samples,
        cases=(Case(f"k=3, {_DRAWS_PER_ROW} rows of each of 3 kinds", _sample_case(3)),
               Case("k=1: always the most likely", _sample_case(1)),
               Case("k=V: plain sampling", _sample_case(10))),
        mistakes=(
            Mistake("keeps_k_plus_1",
                    lambda lg, k, rng: _sample_rows(_softmax(_topk_keep(lg, min(k + 1, lg.shape[-1]))), rng),
                    "a token just outside the top k was drawn: you kept k + 1 (an off-by-one)", expect="k + 1"),
            Mistake("ignores_k", lambda lg, k, rng: _sample_rows(_softmax(lg), rng),
                    "tokens far outside the top k were drawn: filter the logits (keep the k largest) before sampling",
                    expect="filter the logits"),
            Mistake("no_renormalise", _sample_no_renorm,
                    "the kept probabilities were not renormalised: after zeroing the others, divide by their sum "
                    "(or apply softmax to the filtered logits), or the draw can run past the last kept token",
                    expect="not renormalised"),
            Mistake("no_renormalise_choice",
                    lambda lg, k, rng: np.array([rng.choice(len(r), p=np.where(r >= np.sort(r)[-k], _softmax(r), 0))
                                                 for r in lg]),
                    "the kept probabilities were not renormalised", expect="not renormalised"),
            Mistake("greedy", lambda lg, k, rng: np.argmax(lg, axis=-1),
                    "only the most likely token is ever drawn: that is greedy decoding; draw at random in "
                    "proportion to the kept probabilities (rng.random or rng.choice)", expect="greedy"),
            Mistake("wrong_frequencies",
                    lambda lg, k, rng: _sample_rows(_softmax(_topk_keep(lg, k) / 2), rng),
                    "tokens are drawn in the wrong proportions: draw each kept token with probability "
                    "softmax(filtered logits), at temperature 1", expect="wrong proportions"),
        ),
        error_hints=(("do not sum to 1", "no_renormalise_choice"),),
        advice="keep the k largest logits, softmax over them, then draw one token per row with rng.",
    ),
    Exercise(
        name="kmeans_step",
        signature="kmeans_step(pixels, centres)",
        returns="the new centres, float32 [K, 3]",
        reference=_kmeans_step_reference,
        rtol=1e-5, atol=1e-5,
        cases=(Case("120 pixels, 6 centres", _kmeans_case(empty=False)),
               Case("a centre that no pixel chooses (empty cluster)", _kmeans_case(empty=True))),
        mistakes=(
            Mistake("l1_distance", lambda p, c: _kmeans(p, c, dist="l1"),
                    "pixels went to the nearest centre by |dx| + |dy| + |dz| (L1); k-means uses the squared "
                    "Euclidean distance, sum((pixel - centre)**2)"),
            Mistake("farthest", lambda p, c: _kmeans(p, c, dist="farthest"),
                    "pixels went to their farthest centre: use argmin of the distances, not argmax"),
            Mistake("empty_nan", lambda p, c: _kmeans(p, c, empty="nan"),
                    "an empty cluster: no pixel chose one centre, and the mean of no pixels is 0/0 = NaN. Move "
                    "that centre to the pixel farthest from its nearest centre"),
            Mistake("empty_zero", lambda p, c: _kmeans(p, c, empty="zero"),
                    "an empty cluster's centre was set to 0; move it to the pixel farthest from its nearest centre"),
            Mistake("empty_stays", lambda p, c: _kmeans(p, c, empty="stay"),
                    "an empty cluster's centre stayed where it was (wasting a colour); fit_palette moves it to the "
                    "pixel farthest from its nearest centre"),
            Mistake("median", lambda p, c: _kmeans(p, c, mean=np.median),
                    "each centre moved to the median of its pixels; k-means moves it to their mean"),
            Mistake("no_update", lambda p, c: c.copy(), "the centres did not move: set each to the mean of its pixels"),
        ),
        advice="1. assign: ids = argmin over centres of sum((pixel - centre)**2); 2. update: each centre = mean "
               "of its pixels; 3. a centre with no pixels moves to the pixel farthest from its nearest centre.",
    ),
    Exercise(
        name="layer_norm_backward",
        signature="layer_norm_backward(dout, cache)",
        returns="(dx shaped like x, dweight [C]), float32; cache = (n, weight, rms) from layers.layer_norm_forward, "
                "n = x / rms",
        reference=layers.layer_norm_backward,
        outputs=("dx", "dweight"),
        rtol=1e-4, atol=1e-5,
        cases=(Case("x [2, 3, 8]", _ln_backward_case((2, 3, 8))),
               Case("x [5, 16]", _ln_backward_case((5, 16)))),
        mistakes=(
            Mistake("missing_projection", lambda d, c: _ln_backward(d, c, projection=False),
                    "dx is missing a term: rms depends on x too. dx = (g - n * mean(g * n)) / rms with "
                    "g = dout * weight and n = x / rms"),
            Mistake("centred_backward", lambda d, c: _ln_backward(d, c, centred=True),
                    "dx has a mean-subtraction term from the centred LayerNorm; ImageGPT's layer norm does not "
                    "centre, so drop the - mean(g)"),
            Mistake("no_weight", lambda d, c: _ln_backward(d, c, use_weight=False),
                    "dx forgot the weight: the gradient reaching the normalised x is g = dout * weight"),
            Mistake("dweight_not_summed", lambda d, c: _ln_backward(d, c, dw="not summed"),
                    "dweight must be summed over every position: np.sum(dout * n, axis=all but the last)"),
            Mistake("dweight_times_weight", lambda d, c: _ln_backward(d, c, dw="times weight"),
                    "dweight has an extra factor of weight: y = n * weight, so dy/dweight = n and "
                    "dweight = sum(dout * n)"),
            Mistake("no_rms_division", lambda d, c: _ln_backward(d, c, divide=False),
                    "dx is missing the final division by rms: n = x / rms, so every path back to x goes "
                    "through 1 / rms"),
        ),
        advice="with cache = (n, weight, rms) and g = dout * weight: dx = (g - n * mean(g * n, axis=-1)) / rms and "
               "dweight = sum(dout * n) over every position.",
    ),
]}


def _exact_k(logits, k):
    idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]  # exactly k indices, ties broken by position
    out = np.full_like(logits, -np.inf)
    np.put_along_axis(out, idx, np.take_along_axis(logits, idx, -1), -1)
    return out


# ---- the grader -----------------------------------------------------------------------------------
def check(name: str, fn: Callable, timeout: float = TIMEOUT_S) -> CheckResult:
    """Grade `fn` as exercise `name`; see the module docstring. Never raises (bar KeyboardInterrupt)."""
    try:
        return _check(name, fn, timeout)
    except KeyboardInterrupt:  # the student pressed stop: let it stop
        raise
    except _Timeout:  # the alarm rang just after the function returned
        return CheckResult(str(name), "failed", f"your function took longer than {timeout:g} s")
    except BaseException as e:  # a bug of ours must still not land on a student as a traceback
        return CheckResult(str(name), "failed", f"the grader itself failed ({type(e).__name__}: {e}); "
                                                f"please tell your teacher")


def _check(name, fn, timeout):
    if name not in EXERCISES:
        known = ", ".join(EXERCISES)
        return CheckResult(str(name), "failed", f"there is no exercise named {name!r}; the exercises are: {known}")
    ex = EXERCISES[name]
    if not callable(fn):
        return CheckResult(name, "failed", f"expected a function, got {type(fn).__name__}: pass the function "
                                           f"itself, check({name!r}, {ex.name}), without calling it")
    worst = 0.0
    for i, case in enumerate(ex.cases):
        args = case.make(np.random.default_rng(SEED + i))
        expected = ex.reference(*_copy(args)) if ex.compare is None else None
        given = _copy(args)
        try:
            got = _call(fn, given, ex, timeout)
            if not _same(given, args):
                raise _Fail("your function changed its input arrays in place; compute into new arrays (e.g. "
                            "x = x - m, not x -= m) so the caller's data stays as it was", remind=False)
            if ex.compare is not None:
                ids = _as_arrays(got, ex, integer=True)[0]
                worst = max(worst, ex.compare(ids, args))
                if i == 0:  # the same seed must give the same draws: randomness only through rng
                    again = _call(fn, case.make(np.random.default_rng(SEED + i)), ex, timeout)
                    if not np.array_equal(_as_arrays(again, ex, integer=True)[0], ids):
                        raise _Fail("two runs with generators of the same seed drew different tokens: take every "
                                    "random number from the rng argument (not np.random or random)", remind=False)
            else:
                worst = max(worst, _compare(got, expected, ex, case, args))
        except _NotDone:
            return CheckResult(name, "not done", "not done yet: replace `raise NotImplementedError` with your code, "
                                                 "run that cell, then run this check again")
        except _Fail as f:
            hint = _hint(ex, f.mistake)
            msg = f"failed on case {i + 1} of {len(ex.cases)} ({case.about}).\n{f.message}"
            if hint:
                msg += f"\nLikely mistake: {hint}"
            elif ex.advice and f.remind:
                msg += f"\nReminder: {ex.advice}"
            return CheckResult(name, "failed", msg, case=case.about, mistake=f.mistake)
    tol = "" if ex.compare is not None else f"; worst abs diff {worst:.2g}, tolerance rtol {ex.rtol:g} atol {ex.atol:g}"
    return CheckResult(name, "passed", f"passed all {len(ex.cases)} cases{tol}", worst=worst)


class _NotDone(Exception):
    pass


def _hint(ex, mistake_name):
    for m in ex.mistakes:
        if m.name == mistake_name:
            return m.hint
    return None


def _copy(x):
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, tuple):
        return tuple(_copy(a) for a in x)
    return x


def _same(a, b):
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b))
    return True


def _call(fn, args, ex, timeout):
    """fn(*args) with a time limit; anything it raises becomes a _Fail (or _NotDone) with a short report."""
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as e:
        raise _Fail(f"your function cannot be called as {ex.signature}: {e}") from None
    except ValueError:  # some builtins have no signature: just call them
        pass
    try:
        with _time_limit(timeout), np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args)
    except NotImplementedError:
        raise _NotDone() from None
    except _Timeout:
        raise _Fail(f"your function took longer than {timeout:g} s on these small inputs (an endless loop?)") from None
    except (Exception, SystemExit) as e:
        where = _where(e)
        text = f"{type(e).__name__}: {e}"
        mistake = next((m for key, m in ex.error_hints if key in str(e)), None)
        raise _Fail(f"your function raised {text}{where}", mistake) from None


_LIBRARY_DIRS = tuple({os.path.dirname(os.path.abspath(__file__))} |
                      {os.path.abspath(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")})


def _where(e):
    """'raised at line N `code`' for the innermost frame of the student's own code (not NumPy's, not
    the package's), if there is one."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not os.path.abspath(f.filename).startswith(_LIBRARY_DIRS)
              and not f.filename.endswith((".pyx", ".pxd")) and not f.filename.startswith("<frozen")]
    if not frames:
        return ""
    f = frames[-1]
    line = f" `{f.line.strip()}`" if f.line else ""
    return f"\n  raised at line {f.lineno}{line}"


class _time_limit:
    """SIGALRM after `seconds`, when we are in the main thread of a POSIX process (a notebook kernel, a
    script, pytest); elsewhere no limit (inputs are tiny, so only an endless loop runs long)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.active = (seconds and hasattr(signal, "setitimer")
                       and threading.current_thread() is threading.main_thread())

    def __enter__(self):
        if self.active:
            def on_alarm(signum, frame):
                raise _Timeout()
            self.previous = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


def _describe(x):
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape}, dtype {x.dtype}"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of length {len(x)}"
    return type(x).__name__


def _as_arrays(result, ex, integer=False):
    """The return value as a list of arrays, one per name in ex.outputs, or a _Fail saying what it is."""
    if ex.unpack is not None:
        result = ex.unpack(result)
    if result is None:
        raise _Fail("your function returned None: did you forget the `return`?")
    n = len(ex.outputs)
    if n > 1:
        if not isinstance(result, (tuple, list)) or len(result) != n:
            raise _Fail(f"expected a tuple of {n} arrays ({', '.join(ex.outputs)}), got a {_describe(result)}")
        items = list(result)
    else:
        items = [result]
    arrays = []
    for label, item in zip(ex.outputs, items):
        what = f"{label}: " if n > 1 else ""
        if isinstance(item, (list, tuple)):
            raise _Fail(f"{what}got a Python {type(item).__name__}; return a NumPy array (np.asarray(...), float32)")
        if np.isscalar(item) and not isinstance(item, np.generic):
            raise _Fail(f"{what}got a {type(item).__name__} scalar; return a NumPy array shaped {ex.returns}")
        if not isinstance(item, (np.ndarray, np.generic)):
            raise _Fail(f"{what}got a {type(item).__name__}; return a NumPy array"
                        + (" (call .numpy() on a torch tensor)" if hasattr(item, "numpy") else ""))
        item = np.asarray(item)
        if not (np.issubdtype(item.dtype, np.number) or item.dtype == bool):
            raise _Fail(f"{what}got an array of dtype {item.dtype}; return numbers")
        if integer and not np.issubdtype(item.dtype, np.integer):
            raise _Fail(f"{what}got dtype {item.dtype}; token ids must be integers (e.g. .astype(np.int64))")
        arrays.append(item)
    return arrays


def _compare(got, expected, ex, case, args):
    """Shape, dtype, NaN/inf, then values, for each returned array; -> the worst abs difference."""
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    arrays = _as_arrays(got, ex)
    worst = 0.0
    for label, g, e in zip(ex.outputs, arrays, expected):
        what = f"{label}: " if len(ex.outputs) > 1 else ""
        if g.shape != e.shape:
            raise _Fail(f"{what}expected shape {e.shape}, got shape {g.shape}", _which_mistake(ex, args, got, shape_only=True))
        close = _close(g, e, ex.rtol, ex.atol, ex.neg_inf_ok)
        if g.dtype != e.dtype:
            values = "the values are right" if close.all() else "the values differ too"
            raise _Fail(f"{what}expected dtype {e.dtype}, got {g.dtype} ({values}). Keep everything float32: a "
                        f"float64 array (np.ones, np.tri(..., dtype=float) or np.float64 constants) promotes the "
                        f"result; .astype(np.float32) at the end also works", _which_mistake(ex, args, got),
                        remind=not close.all())
        bad = ~np.isfinite(g) & ~(ex.neg_inf_ok & np.isneginf(g))
        if bad.any() and not (~np.isfinite(e) == bad).all():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise _Fail(f"{what}your output holds {int(bad.sum())} NaN/inf value(s), the first at index {list(first)} "
                        f"({g[first]}; expected {e[first]:.6g})", _which_mistake(ex, args, got))
        if not close.all():
            diff = _absdiff(g, e)
            idx = np.argwhere(~close)[:SHOWN_DIFFS]
            lines = "\n".join(f"    {[int(i) for i in j]}: {e[tuple(j)]:.6g} vs {g[tuple(j)]:.6g}" for j in idx)
            worst_at = [int(i) for i in np.unravel_index(np.nanargmax(diff), diff.shape)]
            raise _Fail(f"{what}{int((~close).sum())} of {close.size} values differ (shape {g.shape} and dtype are "
                        f"right); max abs diff {np.nanmax(diff):.3g} at {worst_at}, tolerance rtol {ex.rtol:g} atol "
                        f"{ex.atol:g}.\n  first differing values, index: expected vs yours\n{lines}",
                        _which_mistake(ex, args, got))
        worst = max(worst, float(np.nanmax(_absdiff(g, e), initial=0.0)))
    return worst


def _absdiff(g, e):
    with np.errstate(all="ignore"):
        d = np.abs(g.astype(np.float64) - e.astype(np.float64))
    return np.where(np.isneginf(g) & np.isneginf(e), 0.0, d)


def _close(g, e, rtol, atol, neg_inf_ok):
    with np.errstate(all="ignore"):
        ok = np.isclose(g.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol)
    if neg_inf_ok:  # a removed logit may be -inf or any huge negative number: softmax gives it 0 either way
        ok |= np.isneginf(e) & (g <= -1e9)
    return ok


def _which_mistake(ex, args, got, shape_only=False):
    """The classic mistake whose output on these inputs is closest to the student's (within MISTAKE_TOL), or
    with shape_only, the first whose output has the student's (wrong) shape."""
    try:
        mine = _as_arrays(got, ex)
    except _Fail:
        return None
    best, best_score = None, 1.0
    for m in ex.mistakes:
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = m.fn(*_copy(args))
            theirs = [np.asarray(t) for t in (theirs if len(ex.outputs) > 1 else [theirs])]
        except Exception:
            continue
        if len(theirs) != len(mine) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
            continue
        if shape_only:
            return m.name
        score = max(_mistake_distance(a, b) for a, b in zip(mine, theirs))
        if score <= best_score:
            best, best_score = m.name, score
    return best


def _mistake_distance(a, b):
    """max |a - b| / (atol + rtol |b|) with MISTAKE_TOL: <= 1 means a matches b. NaN matches NaN, and
    -inf or a huge negative matches either (a removed logit)."""
    with np.errstate(all="ignore"):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        d = np.abs(a64 - b64) / (MISTAKE_TOL["atol"] + MISTAKE_TOL["rtol"] * np.abs(b64))
    same = (np.isnan(a64) & np.isnan(b64)) | ((a64 <= -1e9) & (b64 <= -1e9)) | (a64 == b64)
    d = np.where(same, 0.0, d)
    d = np.where(np.isnan(d), np.inf, d)  # NaN on one side only
    return float(d.max(initial=0.0))


def describe(name: str) -> str:
    """The exercise's signature, what it returns, and the cases it is checked on."""
    if name not in EXERCISES:
        return f"there is no exercise named {name!r}; the exercises are: {', '.join(EXERCISES)}"
    ex = EXERCISES[name]
    cases = "\n".join(f"  {i + 1}. {c.about}" for i, c in enumerate(ex.cases))
    return f"{ex.signature}\n  returns {ex.returns}\nchecked on:\n{cases}"
