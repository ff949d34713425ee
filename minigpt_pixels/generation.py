"""Sampling from ImageGPTForCausalImageModeling with the KV cache.

Each step feeds one new token and reads one row of logits, so a token costs one position, not the
whole sequence. The sampling rules are small pure functions (temperature, top-k, top-p, drawing a
token) applied in transformers' order: temperature, then top-k, then top-p.

Remember: the processor does not add the start-of-sequence token. An unconditional image starts
from [SOS] alone; a completion from [SOS] + the kept rows' tokens.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm  # plain: tqdm.auto warns in Jupyter without ipywidgets

from .cache import KVCache
from .inputs import ModelInputError
from .layers import softmax

F32 = np.float32
NEG_INF = F32(-np.inf)


# ---- the sampling rules, one pure function each -------------------------------------------------
def top_k_filter(logits, k):
    """Keep the k largest logits per row (ties with the k-th are kept, as in transformers); -inf elsewhere."""
    k = min(int(k), logits.shape[-1])
    kth = np.partition(logits, -k, axis=-1)[..., -k:].min(axis=-1, keepdims=True)  # [B, 1]
    return np.where(logits < kth, NEG_INF, logits)  # [B, V]


def top_p_filter(logits, p):
    """Nucleus: keep the most likely tokens whose probabilities sum to at least p (at least one)."""
    order = np.argsort(-logits, axis=-1, kind="stable")  # [B, V] most likely first
    probs = softmax(np.take_along_axis(logits, order, axis=-1))  # [B, V] sorted
    before = np.cumsum(probs, axis=-1) - probs  # probability mass ahead of each token
    keep_sorted = before < F32(p)  # the first token always has 0 ahead of it
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, NEG_INF)  # [B, V]


def sample_from_logits(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Draw one token per row from softmax(filtered logits / temperature). logits [B, V] -> [B] int64."""
    x = logits.astype(F32, copy=False) / F32(temperature)
    if top_k is not None:
        x = top_k_filter(x, top_k)
    if top_p is not None and top_p < 1.0:
        x = top_p_filter(x, top_p)
    cdf = np.cumsum(softmax(x), axis=-1)  # [B, V]; flat over filtered tokens, so they are never drawn
    u = rng.random(x.shape[0], dtype=F32) * cdf[:, -1]  # [B] uniform in [0, total mass)
    picks = np.sum(cdf <= u[:, None], axis=-1)  # [B]: the first token whose cdf passes u
    return np.minimum(picks, x.shape[-1] - 1).astype(np.int64)


def check_sampling_args(do_sample, temperature, top_k, top_p):
    if do_sample:
        if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1, got {top_k}")
        if top_p is not None and not (0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def as_generator(seed):
    """An explicit np.random.Generator: pass one, or an int seed (None draws fresh entropy)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ---- the loop ------------------------------------------------------------------------------------
def generate(model, input_ids, max_length=None, max_new_tokens=None, do_sample=False, temperature=1.0,
             top_k=None, top_p=None, seed=None, progress=False, stats=None):
    """Extend each row of input_ids [B, T] to max_length tokens (or by max_new_tokens); return [B, T + new].

    Greedy by default (argmax, as transformers' do_sample=False). The longest sequence is
    n_positions + 1: SOS plus one token per position, since the last token is never fed back.
    `stats`, if a dict, receives the number of new tokens and the seconds taken.
    """
    cfg = model.config
    ids = np.asarray(input_ids)
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 2 or ids.size == 0:
        raise ModelInputError(f"input_ids must be a non-empty integer array of shape (batch, sequence), got "
                              f"{ids.dtype} array of shape {ids.shape}")
    B, T = ids.shape
    if max_length is not None and max_new_tokens is not None:
        raise ValueError("pass max_length or max_new_tokens, not both")
    if max_new_tokens is not None:
        max_length = T + int(max_new_tokens)
    elif max_length is None:
        max_length = cfg.n_positions + 1  # a whole image after the SOS token
    if max_length > cfg.n_positions + 1:
        raise ValueError(f"max_length {max_length} exceeds n_positions + 1 = {cfg.n_positions + 1} (the SOS token "
                         f"plus one token per position)")
    if max_length <= T:
        raise ValueError(f"nothing to generate: max_length {max_length} <= prompt length {T}")
    check_sampling_args(do_sample, temperature, top_k, top_p)
    rng = as_generator(seed)

    out = np.empty((B, max_length), np.int64)
    out[:, :T] = ids
    cache = KVCache(cfg, B, max_length=min(max_length - 1, cfg.n_positions))
    start = time.perf_counter()
    logits = model(ids, past_key_values=cache, use_cache=True).logits[:, -1]  # the prompt at once: [B, V]
    steps = range(T, max_length)
    for t in tqdm(steps, desc="sampling", unit="tok", disable=not progress, leave=False):
        if do_sample:
            out[:, t] = sample_from_logits(logits, rng, temperature, top_k, top_p)
        else:
            out[:, t] = np.argmax(logits, axis=-1)
        if t + 1 < max_length:  # the last token is never fed back
            logits = model(out[:, t:t + 1], past_key_values=cache, use_cache=True).logits[:, -1]  # [B, V]
    if stats is not None:
        stats.update(new_tokens=B * (max_length - T), seconds=time.perf_counter() - start)
    return out


# ---- images --------------------------------------------------------------------------------------
def image_shape(processor, config):
    """(height, width) of the images this processor makes, checked against the model's positions."""
    h, w = int(processor.size["height"]), int(processor.size["width"])
    if h * w > config.n_positions:
        raise ValueError(f"the processor makes {h}x{w} = {h * w} tokens per image, more than the model's "
                         f"n_positions {config.n_positions}")
    return h, w


def sample_images(model, processor, num_samples, seed=None, progress=False, stats=None, **sampling):
    """Unconditional samples: each sequence starts from SOS alone. Returns (num_samples, H, W, 3) uint8."""
    h, w = image_shape(processor, model.config)
    prompt = np.full((num_samples, 1), model.config.sos_token_id, np.int64)
    ids = generate(model, prompt, max_length=1 + h * w, do_sample=sampling.pop("do_sample", True), seed=seed,
                   progress=progress, stats=stats, **sampling)
    return processor.decode(ids[:, 1:])


def complete_images(model, processor, prompt_ids, prompt_rows, num_completions, seed=None, progress=False,
                    stats=None, **sampling):
    """Image completion as in the iGPT paper: keep the top `prompt_rows` rows of each image (after SOS),
    sample the rest. prompt_ids is the processor's input_ids [N, H*W]; returns
    (N, num_completions, H, W, 3) uint8."""
    h, w = image_shape(processor, model.config)
    prompt_ids = np.asarray(prompt_ids)
    if not 1 <= prompt_rows < h:
        raise ValueError(f"prompt_rows must be between 1 and {h - 1} for {h}-row images, got {prompt_rows}")
    n = prompt_ids.shape[0]
    kept = prompt_ids[:, :prompt_rows * w]  # [N, rows * W]
    sos = np.full((n, 1), model.config.sos_token_id, np.int64)
    prompt = np.repeat(np.concatenate([sos, kept], axis=1), num_completions, axis=0)  # [N * k, 1 + rows * W]
    ids = generate(model, prompt, max_length=1 + h * w, do_sample=sampling.pop("do_sample", True), seed=seed,
                   progress=progress, stats=stats, **sampling)
    return processor.decode(ids[:, 1:]).reshape(n, num_completions, h, w, 3)
