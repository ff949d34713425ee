"""Sampling from ImageGPTForCausalImageModeling with the KV cache, read as nanoGPT's generate.

generate() builds its options once (GenerationConfig, transformers' names, every field checked as the
object is made), checks the prompt, then runs one loop: greedy or sampled decoding, or beam search. Each
step feeds one new token per row and reads one row of logits, so a token costs one position, not the
whole sequence. The sampling rules are logits processors: small pure functions, each switched on by one
field of GenerationConfig and applied as a list in the fields' order, which is transformers' order
(temperature, then top-k, then top-p). A new rule is one function and one field.

Remember: the processor does not add the start-of-sequence token. An unconditional image starts
from [SOS] alone; a completion from [SOS] + the kept rows' tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable, NamedTuple

import numpy as np
from tqdm import tqdm  # plain: tqdm.auto warns in Jupyter without ipywidgets

from . import inputs, limits
from .cache import KVCache
from .inputs import ModelInputError, is_int, is_number
from .layers import log_softmax, softmax
from .outputs import OutputMapping
from .processor import check_palette_fits

F32 = np.float32
NEG_INF = F32(-np.inf)


# ---- the sampling rules: logits processors, scores [N, V] -> scores [N, V] float32 ------------------
def apply_temperature(scores, temperature):
    """scores / temperature, as transformers' TemperatureLogitsWarper. A temperature so small that the
    division overflows float32 (about 1e-37 for logits near 30) is sampled as its limit, greedy: the row's
    largest scores (ties kept) become 0 and the rest -inf, instead of infinities that would draw token 0."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        x = scores / F32(temperature)  # [N, V]
    overflowed = ~np.isfinite(x).all(axis=-1, keepdims=True)  # [N, 1]; the model's logits are finite
    if not overflowed.any():
        return x
    greedy = np.where(scores == scores.max(axis=-1, keepdims=True), F32(0), NEG_INF)  # [N, V]
    return np.where(overflowed, greedy, x)


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


def draw(x, rng):
    """One token per row from softmax(x), x [B, V] -> [B] int64, by inverting the cdf at a uniform draw."""
    cdf = np.cumsum(softmax(x), axis=-1)  # [B, V]; flat over filtered tokens, so they are never drawn
    u = rng.random(x.shape[0], dtype=F32) * cdf[:, -1]  # [B] uniform in [0, total mass)
    picks = np.sum(cdf <= u[:, None], axis=-1)  # [B]: the first token whose cdf passes u
    return np.minimum(picks, x.shape[-1] - 1).astype(np.int64)


# ---- the options: what each may be, then GenerationConfig ------------------------------------------
class Check(NamedTuple):
    """What an option's value may be: `ok(value)`, said as `rule` (words a command line can reuse for its
    flag) plus `note` (what only a Python caller can pass); `cast` turns NumPy scalars into Python ones."""
    ok: Callable
    rule: str
    note: str = ""
    optional: bool = False  # None is accepted too
    cast: Callable = lambda v: v


FLAG = Check(lambda v: isinstance(v, (bool, np.bool_)), "True or False", cast=bool)
COUNT = Check(lambda v: is_int(v) and v >= 1, "an integer >= 1", cast=int)
OPTIONAL_COUNT = COUNT._replace(note="or None", optional=True)
NUMBER = Check(is_number, "a finite number", cast=float)
POSITIVE = Check(lambda v: is_number(v) and v > 0, "> 0 and finite", note="when sampling", cast=float)
FRACTION = Check(lambda v: is_number(v) and 0 < v <= 1, "in (0, 1]", note="or None", optional=True, cast=float)
TOKEN = Check(is_int, "an integer", note="or None", optional=True, cast=int)
SEED = Check(lambda v: isinstance(v, np.random.Generator) or (is_int(v) and v >= 0), "a non-negative integer",
             note="or an np.random.Generator, or None", optional=True)


class OptionError(ValueError):
    """An option generate() cannot use. `name`, `rule` and `value` let a command line say it for its flag."""

    def __init__(self, name, check, value):
        self.name, self.rule, self.value = name, check.rule, value
        note = f" ({check.note})" if check.note else ""
        super().__init__(f"{name} must be {check.rule}{note}, got {value!r}")


def checked(name, value, check):
    """value as the option holds it (Python scalars), or OptionError naming it."""
    if value is None and check.optional:
        return None
    if not check.ok(value):
        raise OptionError(name, check, value)
    return check.cast(value)


def option(default, check):
    """A GenerationConfig field: its default and what it may be."""
    return field(default=default, metadata={"check": check})


def rule(processor, default, check, off=(None,)):
    """A sampling rule's field: option() plus the processor it switches on when sampling, processor(scores,
    value) -> scores, unless the value is one of `off` (those that change nothing)."""
    return field(default=default, metadata={"check": check, "processor": processor, "off": off})


@dataclass(frozen=True)
class GenerationConfig:
    """generate()'s options, with transformers' GenerationConfig names and meanings; each field is checked
    when the object is made (OptionError names it). The sampling rules are read only when do_sample is
    True, as transformers ignores them otherwise, and are applied in the order they are declared here."""
    max_length: int | None = option(None, OPTIONAL_COUNT)  # prompt + new tokens; default n_positions + 1
    max_new_tokens: int | None = option(None, OPTIONAL_COUNT)  # or this many after the prompt (not both)
    do_sample: bool = option(False, FLAG)  # False: the most likely token (greedy) or beam search
    temperature: float = rule(apply_temperature, 1.0, POSITIVE, off=(1.0,))  # < 1 sharper, > 1 flatter
    top_k: int | None = rule(top_k_filter, None, OPTIONAL_COUNT)  # transformers' default is 50; ours none
    top_p: float | None = rule(top_p_filter, None, FRACTION, off=(None, 1.0))  # nucleus sampling
    num_beams: int = option(1, COUNT)  # > 1: beam search (every beam runs to max_length: no EOS token)
    num_return_sequences: int = option(1, COUNT)  # sequences per prompt (at most num_beams unless sampling)
    length_penalty: float = option(1.0, NUMBER)  # beam scores are divided by new tokens ** length_penalty
    output_scores: bool = option(False, FLAG)  # return_dict_in_generate's scores: processed logits per step
    output_logits: bool = option(False, FLAG)  # ... and the raw logits per step
    return_dict_in_generate: bool = option(False, FLAG)  # a GenerateOutput instead of the sequences alone
    pad_token_id: int | None = option(None, TOKEN)  # accepted for transformers' callers; nothing is padded
    use_cache: bool = option(True, FLAG)  # either way the same tokens; the KV cache is always used (faster)

    def __post_init__(self):
        for f in fields(self):
            if "processor" not in f.metadata or self.do_sample:  # the rules only matter when sampling
                object.__setattr__(self, f.name, checked(f.name, getattr(self, f.name), f.metadata["check"]))
        if self.max_length is not None and self.max_new_tokens is not None:
            raise ValueError("pass max_length or max_new_tokens, not both")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("num_beams > 1 with do_sample=True (beam sampling) is not supported")
        if self.num_return_sequences > self.num_beams and not self.do_sample:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be at most num_beams "
                             f"({self.num_beams}) without sampling: greedy and beam search give at most num_beams "
                             f"different sequences")

    @classmethod
    def build(cls, generation_config=None, **kwargs):
        """generate()'s options: generation_config (or the defaults) with kwargs replacing its fields, as
        transformers' generate takes them. Any other transformers option is refused by name unless it is at
        a value that changes nothing (NO_OP_OPTIONS)."""
        if generation_config is not None and not isinstance(generation_config, cls):
            raise ValueError(f"generation_config must be a {cls.__name__} or None, got {generation_config!r}")
        names = {f.name for f in fields(cls)}
        for name, value in kwargs.items():
            if name not in names and name not in NO_OP_OPTIONS:
                raise ValueError(f"generate() got an argument it does not know or support: {name}")
            if name not in names and not _same_option(value, NO_OP_OPTIONS[name]):
                raise ValueError(f"generate(): {name}={value!r} is not supported (only {NO_OP_OPTIONS[name]!r})")
        return replace(generation_config or cls(), **{k: v for k, v in kwargs.items() if k in names})

    def resolved(self, config, prompt_length):
        """These options with max_length fixed for this model and prompt (max_new_tokens then None)."""
        if self.max_new_tokens is not None:
            length = prompt_length + self.max_new_tokens
        else:  # default: a whole image after the SOS token
            length = config.n_positions + 1 if self.max_length is None else self.max_length
        if length > config.n_positions + 1:
            raise ValueError(f"max_length {length} exceeds n_positions + 1 = {config.n_positions + 1} (the SOS "
                             f"token plus one token per position)")
        if length <= prompt_length:
            raise ValueError(f"nothing to generate: max_length {length} <= prompt length {prompt_length}")
        return replace(self, max_length=length, max_new_tokens=None)


# transformers' generate() options that change nothing at these values; any other value is refused
NO_OP_OPTIONS = {"min_length": 0, "min_new_tokens": None, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                 "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "remove_invalid_values": False,
                 "output_attentions": False, "output_hidden_states": False, "early_stopping": False,
                 "num_beam_groups": 1, "diversity_penalty": 0.0, "bad_words_ids": None, "suppress_tokens": None,
                 "begin_suppress_tokens": None, "renormalize_logits": False,
                 "bos_token_id": None, "eos_token_id": None, "synced_gpus": False, "streamer": None,
                 "logits_processor": None, "stopping_criteria": None}


def _same_option(value, default):
    if default is None or isinstance(default, bool):
        return value is default or (isinstance(value, np.bool_) and bool(value) is default)
    return is_number(value) and value == default


def logits_processors(options):
    """The sampling rules switched on, as a list of functions scores [N, V] -> scores [N, V], in the
    fields' order. Empty without sampling: greedy and beam search read the raw logits, as transformers'."""
    if not options.do_sample:
        return []
    return [_bound(f.metadata["processor"], getattr(options, f.name)) for f in fields(options)
            if "processor" in f.metadata and getattr(options, f.name) not in f.metadata["off"]]


def _bound(processor, value):
    return lambda scores: processor(scores, value)


def process_logits(logits, processors):
    """logits [N, V] -> scores [N, V] float32 (-inf where filtered), each processor in turn: what
    output_scores returns."""
    scores = logits.astype(F32, copy=False)
    for processor in processors:
        scores = processor(scores)
    return scores


def sample_from_logits(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Draw one token per row from softmax(filtered logits / temperature). logits [B, V] -> [B] int64."""
    options = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    return draw(process_logits(logits, logits_processors(options)), rng)


def as_generator(seed):
    """An explicit np.random.Generator: pass one, or a non-negative int seed (None draws fresh entropy)."""
    seed = checked("seed", seed, SEED)
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ---- what generate returns -----------------------------------------------------------------------
@dataclass
class GenerateOutput(OutputMapping):
    """transformers' GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput fields, as NumPy arrays:
    sequences [B * num_return_sequences, L]; scores and logits one [B', vocab_size - 1] array per new token
    (B' = B * num_beams for beam search); sequences_scores [B * num_return_sequences] for beam search."""
    sequences: np.ndarray
    scores: tuple | None = None
    logits: tuple | None = None
    sequences_scores: np.ndarray | None = None


# ---- the prompt ----------------------------------------------------------------------------------
def check_prompt(config, input_ids, attention_mask):
    """generate's prompt: input_ids [B, T] and its optional 0/1 attention_mask [B, T], checked by the model's
    own rule (inputs.check_prompt), plus generation's: no right padding. -> (ids, mask or None when it is all
    ones)."""
    if input_ids is None:
        raise ModelInputError("generate() needs input_ids: ImageGPT's prompts start with the SOS token "
                              "(np.full((batch, 1), config.vocab_size - 1))")
    ids, mask = inputs.check_prompt(config, input_ids, attention_mask)  # the rule model() applies too
    if mask is None:
        return ids, None
    if not mask[:, -1].all():  # generation's own rule: the next token follows each row's last one
        raise ModelInputError("attention_mask: a prompt padded on the right cannot be continued; pad on the left")
    return ids, None if mask.all() else mask.astype(np.int64)  # all ones: the same as no mask


# ---- the loop ------------------------------------------------------------------------------------
def generate(model, input_ids=None, attention_mask=None, generation_config=None, seed=None, progress=False,
             stats=None, **kwargs):
    """Extend each row of input_ids [B, T] to max_length tokens (or by max_new_tokens); return [B, T + new],
    or a GenerateOutput with return_dict_in_generate=True, as transformers' generate.

    The options are GenerationConfig's fields, given as keyword arguments or as generation_config= (the
    keywords replace its fields). Greedy by default (argmax, as transformers' do_sample=False);
    do_sample=True draws with temperature, top_k and top_p (no top-k unless asked: transformers' default
    top_k is 50); num_beams > 1 is transformers' beam search. The longest sequence is n_positions + 1 (the
    default): SOS plus one token per position, since the last token is never fed back. attention_mask
    [B, T] (1 = token, 0 = padding) lets prompts of different lengths share a batch, padded on the left;
    positions then count from each row's first token, as transformers counts them. seed: an int or an
    np.random.Generator. `stats`, if a dict, receives the number of new tokens and the seconds taken.
    progress=True shows a progress bar of the tokens; a tqdm bar (progress_bar's) is advanced instead
    and left open, so one bar can span several calls. Every other transformers option is refused by name
    unless it is at a value that changes nothing.
    """
    options = GenerationConfig.build(generation_config, **kwargs)  # every option checked, once
    ids, mask = check_prompt(model.config, input_ids, attention_mask)
    options = options.resolved(model.config, ids.shape[1])  # max_length for this model and prompt
    rng = as_generator(seed)

    start = time.perf_counter()
    copies = options.num_beams if options.num_beams > 1 else options.num_return_sequences  # as transformers expands
    n, T = ids.shape[0] * copies, ids.shape[1]
    limits.check_bytes(limits.kv_cache_bytes(model.config, n, options.max_length),
                       f"generating {n:,} sequences: the KV cache")  # before any of it is allocated
    ids, mask = np.repeat(ids, copies, axis=0), None if mask is None else np.repeat(mask, copies, axis=0)
    # the bar before the prompt's forward, which may be slow (a long prompt, kernels compiling): it shows at once
    bar = progress if isinstance(progress, tqdm) else progress_bar(n * (options.max_length - T), disable=not progress)
    try:
        step = _Stepper(model, ids, mask, options.max_length)
        decode = _beam_search if options.num_beams > 1 else _greedy_or_sample
        out = decode(step, _ticking(range(T, options.max_length), bar, n), options, rng)
    finally:
        if bar is not progress:
            bar.close()
    if stats is not None:
        stats.update(new_tokens=n * (options.max_length - T), seconds=time.perf_counter() - start)
    return out if options.return_dict_in_generate else out.sequences


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
        out = self.model(ids, cache=self.cache, use_cache=True, attention_mask=self.mask,
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


def _greedy_or_sample(step, steps, options, rng):
    """Greedy (argmax) or sampled decoding of every row to options.max_length. -> GenerateOutput."""
    N, T = step.prompt.shape
    out = np.empty((N, options.max_length), np.int64)
    out[:, :T] = step.prompt
    processors = logits_processors(options)  # none when greedy: the raw logits
    scores, logits_seen = [], []
    for t in steps:
        logits = step.logits  # [N, V]
        processed = process_logits(logits, processors)  # [N, V]
        out[:, t] = draw(processed, rng) if options.do_sample else np.argmax(processed, axis=-1)
        _record(options, scores, processed, logits_seen, logits)
        if t + 1 < options.max_length:  # the last token is never fed back
            step.feed(out[:, t])
    return GenerateOutput(out, *_kept(options, scores, logits_seen))


def _record(options, scores, step_scores, logits, step_logits):
    """Keep this step's scores and logits [N, V] where output_scores / output_logits ask for them."""
    if options.output_scores:
        scores.append(step_scores)
    if options.output_logits:
        logits.append(step_logits)


def _kept(options, scores, logits):
    """(scores, logits) as GenerateOutput holds them: a tuple per step where asked for, else None."""
    return (tuple(scores) if options.output_scores else None, tuple(logits) if options.output_logits else None)


def _beam_search(step, steps, options, rng=None):
    """transformers' beam search without an end-of-sequence token: every beam runs to max_length, so at each
    step the K best continuations (by summed log-probability) of each prompt's K beams survive."""
    K, L = options.num_beams, options.max_length
    (N, T), V = step.prompt.shape, step.logits.shape[-1]
    B = N // K  # prompts
    seqs = np.zeros((B, K, L), np.int64)
    seqs[:, :, :T] = step.prompt.reshape(B, K, T)
    running = np.zeros((B, K), F32)
    running[:, 1:] = -1e9  # at first all K beams are the same prompt: continue only one of them
    scores, logits_seen = [], []
    for t in steps:
        logp = log_softmax(step.logits)  # [B*K, V]
        _record(options, scores, logp, logits_seen, step.logits)
        total = (logp.reshape(B, K, V) + running[:, :, None]).reshape(B, K * V)  # [B, K*V]
        best = np.argsort(-total, axis=1, kind="stable")[:, :K]  # [B, K], best first
        beam, token = best // V, best % V  # [B, K] each
        running = np.take_along_axis(total, best, axis=1)
        seqs = np.take_along_axis(seqs, beam[:, :, None], axis=1)  # the surviving beams' histories
        seqs[:, :, t] = token
        if t + 1 < L:
            step.reorder((np.arange(B)[:, None] * K + beam).reshape(-1))
            step.feed(token.reshape(-1))
    sequence_scores = running / F32((L - T) ** options.length_penalty)  # [B, K], best first
    R = options.num_return_sequences
    return GenerateOutput(seqs[:, :R].reshape(B * R, L), *_kept(options, scores, logits_seen),
                          sequence_scores[:, :R].reshape(-1))


# ---- images --------------------------------------------------------------------------------------
def image_shape(processor, config):
    """(height, width) of the images this processor makes, checked against the model's positions."""
    check_palette_fits(processor, config)
    h, w = int(processor.size["height"]), int(processor.size["width"])
    if h * w > config.n_positions:
        raise ValueError(f"the processor makes {h}x{w} = {h * w} tokens per image, more than the model's "
                         f"n_positions {config.n_positions}")
    return h, w


def _sampled(options):
    """Images are sampled unless told otherwise (generate's own default is greedy)."""
    return options if "generation_config" in options else {"do_sample": True, **options}


def sample_images(model, processor, num_samples, seed=None, progress=False, stats=None, **options):
    """Unconditional samples: each sequence starts from SOS alone. `options`: generate()'s (do_sample
    defaults to True here). Returns (num_samples, H, W, 3) uint8."""
    h, w = image_shape(processor, model.config)
    prompt = np.full((num_samples, 1), model.config.sos_token_id, np.int64)
    ids = generate(model, prompt, max_length=1 + h * w, seed=seed, progress=progress, stats=stats,
                   **_sampled(options))
    return processor.decode(ids[:, 1:])


def complete_images(model, processor, prompt_ids, prompt_rows, num_completions, seed=None, progress=False,
                    stats=None, **options):
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
    ids = generate(model, prompt, max_length=1 + h * w, seed=seed, progress=progress, stats=stats,
                   **_sampled(options))
    return processor.decode(ids[:, 1:]).reshape(n, num_completions, h, w, 3)
