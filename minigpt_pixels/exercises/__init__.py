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
    kmeans_step(pixels, centres)                     palette.lloyd_step, one iteration of fit_palette
    layer_norm_backward(dout, cache)                 layers.layer_norm_backward
    bits_per_token(logits, targets)                  train.evaluate's "bits", image by image

Each exercise is one module here (its reference from the package, its cases, its classic mistakes
with their hints); `engine` holds what they share: drawing the cases and judging what the student's
function returned; `calls` calls the student's function (the one place that does) and carries its
outcomes between processes. `check` calls the function in the notebook's own process, for feedback
while working; the class grader (`grade`, run as `minigpt-pixels-grade` or `python -m
minigpt_pixels.grade`) runs each student's notebook in a bubblewrap sandbox of its own (`notebook`:
what runs; `runner` and `sandbox`: the sandbox's two sides; `gradebook`: what it writes) and judges the
arrays that come back here.

The grader never raises to the student: a function that raises, returns None, a list, the wrong
shape or dtype, NaN, changes its inputs in place, or runs past `timeout` seconds gives a failed result
with a message; `raise NotImplementedError` (the skeletons' body) gives "not done yet".
"""

from . import (bits_per_token, causal_attention, kmeans_step, kv_cache_step, layer_norm, layer_norm_backward,
               quick_gelu, top_k_filter, top_k_sample)
from .engine import SEED, TIMEOUT_S, CheckResult, Exercise, check_in, describe_in, judge, make_cases

EXERCISES = {m.EXERCISE.name: m.EXERCISE for m in (
    layer_norm, quick_gelu, causal_attention, kv_cache_step, top_k_filter, top_k_sample, kmeans_step,
    layer_norm_backward, bits_per_token)}

NOTEBOOKS = {  # exercise notebook (file stem) -> the exercises it holds, in order
    "01_layer_norm_and_quick_gelu": ("layer_norm", "quick_gelu"),
    "02_causal_attention_and_kv_cache": ("causal_attention", "kv_cache_step"),
    "03_top_k_sampling": ("top_k_filter", "top_k_sample"),
    "04_kmeans_step": ("kmeans_step",),
    "05_layer_norm_backward": ("layer_norm_backward",),
    "06_bits_per_token": ("bits_per_token",),
}

__all__ = ["EXERCISES", "NOTEBOOKS", "SEED", "TIMEOUT_S", "CheckResult", "Exercise", "check", "describe", "judge",
           "make_cases"]


def check(name: str, fn, timeout: float = TIMEOUT_S, seed: int = SEED) -> CheckResult:
    """Grade `fn` as exercise `name`, calling it here. Never raises at the student (bar KeyboardInterrupt)."""
    return check_in(EXERCISES, name, fn, timeout, seed)


def describe(name: str) -> str:
    """The exercise's signature, what it returns, and the cases it is checked on."""
    return describe_in(EXERCISES, name)
