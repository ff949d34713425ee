"""Sampling from ImageGPTForCausalImageModeling with the KV cache.

Each step feeds one new token and reads one row of logits, so a token costs one position, not the
whole sequence. The sampling rules are small pure functions (temperature, top-k, top-p, drawing a
token) applied in transformers' order: temperature, then top-k, then top-p.

Remember: the processor does not add the start-of-sequence token. An unconditional image starts
from [SOS] alone; a completion from [SOS] + the kept rows' tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import numpy as np
from tqdm import tqdm  # plain: tqdm.auto warns in Jupyter without ipywidgets

from . import limits
from .cache import KVCache
from .inputs import ModelInputError
from .layers import softmax
from .processor import check_palette_fits

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


def process_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """transformers' sampling warpers in its order: logits / temperature, then top-k, then top-p.
    logits [B, V] -> scores [B, V] float32 (-inf where filtered): what output_scores returns."""
    x = logits.astype(F32, copy=False) / F32(temperature)
    if top_k is not None:
        x = top_k_filter(x, top_k)
    if top_p is not None and top_p < 1.0:
        x = top_p_filter(x, top_p)
    return x


def sample_from_logits(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Draw one token per row from softmax(filtered logits / temperature). logits [B, V] -> [B] int64."""
    return draw(process_logits(logits, temperature, top_k, top_p), rng)


def draw(x, rng):
    """One token per row from softmax(x), x [B, V] -> [B] int64, by inverting the cdf at a uniform draw."""
    cdf = np.cumsum(softmax(x), axis=-1)  # [B, V]; flat over filtered tokens, so they are never drawn
    u = rng.random(x.shape[0], dtype=F32) * cdf[:, -1]  # [B] uniform in [0, total mass)
    picks = np.sum(cdf <= u[:, None], axis=-1)  # [B]: the first token whose cdf passes u
    return np.minimum(picks, x.shape[-1] - 1).astype(np.int64)


def _is_number(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_sampling_args(do_sample, temperature, top_k, top_p):
    """Refuse, naming it, a sampling argument that cannot be used (NumPy scalars count as numbers)."""
    if do_sample:
        if not (_is_number(temperature) and np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0 (a finite number) when sampling, got {temperature!r}")
        if top_k is not None and not (_is_int(top_k) and top_k >= 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (a number) or None, got {top_p!r}")


def as_generator(seed):
    """An explicit np.random.Generator: pass one, or an int seed (None draws fresh entropy)."""
    if seed is not None and not isinstance(seed, np.random.Generator) and not _is_int(seed):
        raise ValueError(f"seed must be an integer, an np.random.Generator or None, got {seed!r}")
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def log_softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


# transformers' generate() options that change nothing at these values; any other value is refused
NO_OP_OPTIONS = {"min_length": 0, "min_new_tokens": None, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                 "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "remove_invalid_values": False,
                 "output_attentions": False, "output_hidden_states": False, "early_stopping": False,
                 "num_beam_groups": 1, "diversity_penalty": 0.0, "bad_words_ids": None, "suppress_tokens": None,
                 "begin_suppress_tokens": None, "renormalize_logits": False,
                 "bos_token_id": None, "eos_token_id": None, "synced_gpus": False, "streamer": None,
                 "logits_processor": None, "stopping_criteria": None, "generation_config": None}


@dataclass
class GenerateOutput:
    """transformers' GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput fields, as NumPy arrays:
    sequences [B * num_return_sequences, L]; scores and logits one [B', vocab_size - 1] array per new token
    (B' = B * num_beams for beam search); sequences_scores [B * num_return_sequences] for beam search."""
    sequences: np.ndarray
    scores: tuple | None = None
    logits: tuple | None = None
    sequences_scores: np.ndarray | None = None

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self):
        return tuple(getattr(self, k) for k in self.keys())


def _same_option(value, default):
    if default is None or isinstance(default, bool):
        return value is default or (isinstance(value, np.bool_) and bool(value) is default)
    return _is_number(value) and value == default


def _check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_prompt(input_ids, attention_mask):
    ids = np.asarray(input_ids)
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 2 or ids.size == 0:
        raise ModelInputError(f"input_ids must be a non-empty integer array of shape (batch, sequence), got "
                              f"{ids.dtype} array of shape {ids.shape}")
    if attention_mask is None:
        return ids, None
    mask = np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ModelInputError(f"attention_mask has shape {mask.shape}, expected {ids.shape} like input_ids")
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise ModelInputError("attention_mask must hold only 0 (padding) and 1 (a token)")
    mask = mask.astype(np.int64)
    if not mask[:, -1].all():
        raise ModelInputError("attention_mask: a prompt padded on the right cannot be continued; pad on the left")
    return ids, None if mask.all() else mask  # all ones: the same as no mask


# ---- the loop ------------------------------------------------------------------------------------
def generate(model, input_ids=None, attention_mask=None, max_length=None, max_new_tokens=None, do_sample=False,
             temperature=1.0, top_k=None, top_p=None, num_beams=1, num_return_sequences=1, length_penalty=1.0,
             output_scores=False, output_logits=False, return_dict_in_generate=False, pad_token_id=None, seed=None,
             progress=False, stats=None, **options):
    """Extend each row of input_ids [B, T] to max_length tokens (or by max_new_tokens); return [B, T + new],
    or a GenerateOutput with return_dict_in_generate=True, as transformers' generate.

    Greedy by default (argmax, as transformers' do_sample=False); do_sample=True draws with temperature,
    top_k and top_p (no top-k unless asked: transformers' default top_k is 50); num_beams > 1 is
    transformers' beam search. The longest sequence is n_positions + 1 (the default): SOS plus one token
    per position, since the last token is never fed back. attention_mask [B, T] (1 = token, 0 =
    padding) lets prompts of different lengths share a batch, padded on the left; positions then count
    from each row's first token, as transformers counts them. `stats`, if a dict, receives the number
    of new tokens and the seconds taken. progress=True shows a progress bar of the tokens; a tqdm bar
    (progress_bar's) is advanced instead and left open, so one bar can span several calls. Every other
    transformers option is refused by name unless it is at a value that changes nothing.
    """
    _check_flag("use_cache", options.pop("use_cache", True))  # either way: the tokens are the same, the cache is faster
    for name, value in options.items():
        if name not in NO_OP_OPTIONS:
            raise ValueError(f"generate() got an argument it does not know or support: {name}")
        if not _same_option(value, NO_OP_OPTIONS[name]):
            raise ValueError(f"generate(): {name}={value!r} is not supported (only {NO_OP_OPTIONS[name]!r})")
    if input_ids is None:
        raise ModelInputError("generate() needs input_ids: ImageGPT's prompts start with the SOS token "
                              "(np.full((batch, 1), config.vocab_size - 1))")
    cfg = model.config
    ids, mask = _check_prompt(input_ids, attention_mask)
    B, T = ids.shape
    do_sample = _check_flag("do_sample", do_sample)
    output_scores = _check_flag("output_scores", output_scores)
    output_logits = _check_flag("output_logits", output_logits)
    return_dict_in_generate = _check_flag("return_dict_in_generate", return_dict_in_generate)
    if max_length is not None and max_new_tokens is not None:
        raise ValueError("pass max_length or max_new_tokens, not both")
    for name, value in (("max_length", max_length), ("max_new_tokens", max_new_tokens)):
        if value is not None and not (_is_int(value) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if max_new_tokens is not None:
        max_length = T + int(max_new_tokens)
    elif max_length is None:
        max_length = cfg.n_positions + 1  # a whole image after the SOS token
    max_length = int(max_length)
    if max_length > cfg.n_positions + 1:
        raise ValueError(f"max_length {max_length} exceeds n_positions + 1 = {cfg.n_positions + 1} (the SOS token "
                         f"plus one token per position)")
    if max_length <= T:
        raise ValueError(f"nothing to generate: max_length {max_length} <= prompt length {T}")
    if not (_is_int(num_beams) and num_beams >= 1):
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if not (_is_int(num_return_sequences) and num_return_sequences >= 1):
        raise ValueError(f"num_return_sequences must be an integer >= 1, got {num_return_sequences!r}")
    if num_beams > 1 and do_sample:
        raise ValueError("num_beams > 1 with do_sample=True (beam sampling) is not supported")
    if num_return_sequences > num_beams and not do_sample:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be at most num_beams ({num_beams}) "
                         f"without sampling: greedy and beam search give at most num_beams different sequences")
    if not (_is_number(length_penalty) and np.isfinite(length_penalty)):
        raise ValueError(f"length_penalty must be a number, got {length_penalty!r}")
    if pad_token_id is not None and not _is_int(pad_token_id):
        raise ValueError(f"pad_token_id must be an integer or None, got {pad_token_id!r}")
    check_sampling_args(do_sample, temperature, top_k, top_p)
    rng = as_generator(seed)

    start = time.perf_counter()
    rows = num_beams if num_beams > 1 else num_return_sequences  # copies of each prompt, as transformers expands
    limits.check_bytes(limits.kv_cache_bytes(cfg, B * rows, max_length), f"generating {B * rows:,} sequences: "
                       f"the KV cache")  # before any of it is allocated
    ids = np.repeat(ids, rows, axis=0)
    mask = None if mask is None else np.repeat(mask, rows, axis=0)
    # the bar before the prompt's forward, which may be slow (a long prompt, kernels compiling): it shows at once
    bar = progress if isinstance(progress, tqdm) else progress_bar(len(ids) * (max_length - T), disable=not progress)
    try:
        step = _Stepper(model, ids, mask, max_length)
        steps = _ticking(range(T, max_length), bar, len(ids))  # new positions
        if num_beams > 1:
            out = _beam_search(step, B, num_beams, num_return_sequences, float(length_penalty), steps, T, max_length,
                               output_scores, output_logits)
        else:
            out = _greedy_or_sample(step, steps, T, max_length, do_sample, rng, temperature, top_k, top_p,
                                    output_scores, output_logits)
    finally:
        if bar is not progress:
            bar.close()
    if stats is not None:
        stats.update(new_tokens=out.sequences.shape[0] * (max_length - T), seconds=time.perf_counter() - start)
    return out if return_dict_in_generate else out.sequences


def progress_bar(total_tokens, disable=False):
    """The sampling progress bar, counting tokens (one per sequence and step); shown as soon as it is made."""
    return tqdm(total=total_tokens, desc="sampling", unit="tok", disable=disable, leave=False)


def _ticking(positions, bar, tokens_per_step):
    """Yield each position, moving `bar` on by a step's tokens once the step is done."""
    for t in positions:
        yield t
        bar.update(tokens_per_step)


class _Stepper:
    """The model's side of decoding: the prompt at once, then one token per row and step, with the KV
    cache, the attention mask grown by one column and each row's next position (left padding)."""

    def __init__(self, model, ids, mask, max_length):
        self.model, self.mask, self.prompt = model, mask, ids
        self.cache = KVCache(model.config, ids.shape[0], max_length=min(max_length - 1, model.config.n_positions))
        if mask is None:
            self.positions = None
            self.logits = self._logits(ids, None)
        else:  # transformers: positions count real tokens; padding sits at position 0
            positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0)  # [N, T]
            self.positions = positions[:, -1:]
            self.logits = self._logits(ids, positions)

    def _logits(self, ids, positions):
        out = self.model(ids, past_key_values=self.cache, use_cache=True, attention_mask=self.mask,
                         position_ids=positions)
        return out.logits[:, -1].astype(F32, copy=False)  # [N, V]

    def feed(self, tokens):
        """Feed tokens [N]; self.logits becomes the next step's [N, V]."""
        if self.mask is not None:
            self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), np.int64)], axis=1)  # [N, past + 1]
            self.positions = self.positions + 1
        self.logits = self._logits(tokens[:, None], self.positions)

    def reorder(self, index):
        """Keep rows `index` (beam search's surviving beams), in that order."""
        self.cache.select(index)
        self.logits = self.logits[index]
        if self.mask is not None:
            self.mask, self.positions = self.mask[index], self.positions[index]


def _greedy_or_sample(step, steps, T, max_length, do_sample, rng, temperature, top_k, top_p, output_scores,
                      output_logits):
    """Greedy (argmax) or sampled decoding of every row to max_length. -> GenerateOutput."""
    N = step.logits.shape[0]
    out = np.empty((N, max_length), np.int64)
    out[:, :T] = step.prompt
    scores, logits_seen = [], []
    for t in steps:
        logits = step.logits  # [N, V]
        if do_sample:
            processed = process_logits(logits, temperature, top_k, top_p)
            out[:, t] = draw(processed, rng)
        else:
            processed = logits
            out[:, t] = np.argmax(logits, axis=-1)
        if output_scores:
            scores.append(processed)
        if output_logits:
            logits_seen.append(logits)
        if t + 1 < max_length:  # the last token is never fed back
            step.feed(out[:, t])
    return GenerateOutput(out, tuple(scores) if output_scores else None, tuple(logits_seen) if output_logits else None)


def _beam_search(step, B, K, num_return, length_penalty, steps, T, max_length, output_scores, output_logits):
    """transformers' beam search without an end-of-sequence token: every beam runs to max_length, so at each
    step the K best continuations (by summed log-probability) of each prompt's K beams survive."""
    V = step.logits.shape[-1]
    seqs = np.zeros((B, K, max_length), np.int64)
    seqs[:, :, :T] = step.prompt.reshape(B, K, T)
    running = np.zeros((B, K), F32)
    running[:, 1:] = -1e9  # at first all K beams are the same prompt: continue only one of them
    scores, logits_seen = [], []
    for t in steps:
        logp = log_softmax(step.logits)  # [B*K, V]
        if output_scores:
            scores.append(logp)
        if output_logits:
            logits_seen.append(step.logits)
        total = (logp.reshape(B, K, V) + running[:, :, None]).reshape(B, K * V)  # [B, K*V]
        best = np.argsort(-total, axis=1, kind="stable")[:, :K]  # [B, K], best first
        beam, token = best // V, best % V  # [B, K] each
        running = np.take_along_axis(total, best, axis=1)
        seqs = np.take_along_axis(seqs, beam[:, :, None], axis=1)  # the surviving beams' histories
        seqs[:, :, t] = token
        if t + 1 < max_length:
            step.reorder((np.arange(B)[:, None] * K + beam).reshape(-1))
            step.feed(token.reshape(-1))
    sequence_scores = running / F32((max_length - T) ** length_penalty)  # [B, K], best first
    return GenerateOutput(seqs[:, :num_return].reshape(B * num_return, max_length),
                          tuple(scores) if output_scores else None, tuple(logits_seen) if output_logits else None,
                          sequence_scores[:, :num_return].reshape(-1))


# ---- images --------------------------------------------------------------------------------------
def image_shape(processor, config):
    """(height, width) of the images this processor makes, checked against the model's positions."""
    check_palette_fits(processor, config)
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
