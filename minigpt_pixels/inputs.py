"""What a caller hands the model, checked and resolved in one place: model.py, backprop.py and
generation.py call these, so one bad input gets one message whichever door it came in by.

Each check returns the value as the model uses it (an integer or float32 array) or raises
ModelInputError with a one-line message naming the argument, its shape or the offending value.
`options` and `check_inputs` turn a forward call's arguments into ForwardInputs, what model.forward
reads; `check_prompt` is the one check of a prompt (ids and mask) that `model()` and `generate` share.
The KV cache's own check (a KVCache of the right batch and depth) sits beside the class, in cache.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import layers
from .cache import KVCache, check_cache, check_cache_room  # noqa: F401 (check_cache_room: kernels/ import it here)
from .errors import ModelInputError


def is_number(x):
    """A finite real number: Python or NumPy int/float, never a bool (True is not a temperature)."""
    return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))
            and bool(np.isfinite(x)))


def is_int(x):
    """A Python or NumPy integer, never a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _as_array(name, x):
    """np.asarray, with a ragged nested list named as such instead of NumPy's inhomogeneous-shape error."""
    try:
        return np.asarray(x)
    except ValueError as e:
        raise ModelInputError(f"{name} is ragged: every row must have the same length ({e})") from None


def _as_int_array(name, x):
    arr = _as_array(name, x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ModelInputError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


def check_input_ids(config, input_ids, inputs_embeds):
    """Exactly one of input_ids [B, T] (token ids) and inputs_embeds [B, T, C]. -> (B, T)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ModelInputError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is None:
        emb = check_floats("inputs_embeds", inputs_embeds, (None, None, config.n_embd))
        if emb.shape[0] == 0 or emb.shape[1] == 0:
            raise ModelInputError(f"inputs_embeds is empty (shape {emb.shape}): it needs at least one sequence of "
                                  f"one position")
        if emb.shape[1] > config.n_positions:
            raise ModelInputError(f"inputs_embeds has {emb.shape[1]} positions, more than n_positions "
                                  f"{config.n_positions}")
        return emb.shape[0], emb.shape[1]
    arr = _as_int_array("input_ids", input_ids)
    if arr.ndim != 2:
        hint = " (add a batch axis: ids[None])" if arr.ndim == 1 else ""
        raise ModelInputError(f"input_ids must have shape (batch, sequence), got shape {arr.shape}{hint}")
    B, T = arr.shape
    if T > config.n_positions:
        raise ModelInputError(f"input_ids has {T} positions, more than n_positions {config.n_positions}")
    if B == 0 or T == 0:
        raise ModelInputError(f"input_ids is empty (shape {arr.shape})")
    if arr.min() < 0 or arr.max() >= config.vocab_size:
        bad = arr[(arr < 0) | (arr >= config.vocab_size)].flat[0]
        raise ModelInputError(f"input_ids holds token id {int(bad)}, outside [0, vocab_size={config.vocab_size})")
    return B, T


def check_ids(name, ids, upper, shape):
    """position_ids or token_type_ids: integers in [0, upper) of shape (B, T) or (1, T)."""
    arr = _as_int_array(name, ids)
    if arr.ndim != 2:
        raise ModelInputError(f"{name} must have shape (batch, sequence), got shape {arr.shape}")
    if arr.shape[1] != shape[1] or arr.shape[0] not in (1, shape[0]):  # a batch of 1 broadcasts
        raise ModelInputError(f"{name} has shape {arr.shape}, expected {shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        bad = arr[(arr < 0) | (arr >= upper)].flat[0]
        raise ModelInputError(f"{name} holds {int(bad)}, outside [0, {upper})")
    return arr


def check_floats(name, x, shape):
    """A float array of `shape` (None: any length on that axis), as float32."""
    arr = _as_array(name, x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ModelInputError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ModelInputError(f"{name} has shape {arr.shape}, expected {want}")
    return arr.astype(np.float32, copy=False)


def check_mask(name, mask, shape):
    """A 0/1 keep-mask (attention_mask, encoder_attention_mask) of exactly `shape`, holding only 0 and 1."""
    arr = _as_array(name, mask)
    if tuple(arr.shape) != tuple(shape):
        raise ModelInputError(f"{name} has shape {arr.shape}, expected {tuple(shape)} (batch, past + new positions)")
    if arr.dtype.kind not in "biuf" or not ((arr == 0) | (arr == 1)).all():
        raise ModelInputError(f"{name} must hold only 0 (padding) and 1 (a token)")
    return arr


def check_prompt(config, input_ids, attention_mask=None, past=0):
    """The one check of a prompt, shared by model() and generate: input_ids [B, T] (integers in
    [0, vocab_size), T <= n_positions) and its 0/1 attention_mask [B, past + T] (past: positions already
    in a KV cache). -> (ids, mask or None)."""
    B, T = check_input_ids(config, input_ids, None)
    mask = None if attention_mask is None else check_mask("attention_mask", attention_mask, (B, past + T))
    return np.asarray(input_ids), mask


def check_positions(config, past, T):
    """Cached plus new positions must fit the position table."""
    if past + T > config.n_positions:
        raise ModelInputError(f"sequence length {past + T} (cached {past} + new {T}) exceeds n_positions "
                              f"{config.n_positions}")


def check_encoder_states(config, encoder_hidden_states, B):
    """Cross-attention's encoder states [B, S, C], for a config that has cross-attention. -> float32."""
    if not config.add_cross_attention:
        raise ModelInputError("encoder_hidden_states given, but the config has add_cross_attention=False")
    return check_floats("encoder_hidden_states", encoder_hidden_states, (B, None, config.n_embd))


def check_lm_labels(labels, shape, vocab_size, shift=True):
    """The LM's labels, shaped like input_ids. The targets the loss reads must be palette ids in
    [0, vocab_size - 1) or -100 (ignored); with the shift (transformers') that is labels[:, 1:], so
    labels=input_ids works with SOS at position 0, which is never read."""
    arr = _as_int_array("labels", labels)
    if arr.shape != tuple(shape):
        raise ModelInputError(f"labels has shape {arr.shape}, expected {tuple(shape)} like input_ids")
    targets = arr[:, 1:] if shift else arr
    bad = np.argwhere((targets != -100) & ((targets < 0) | (targets >= vocab_size - 1)))
    if bad.size:
        b, t = int(bad[0, 0]), int(bad[0, 1]) + (1 if shift else 0)
        raise ModelInputError(f"labels holds {int(arr[b, t])} at [{b}, {t}]: the targets the loss reads "
                              f"({'labels[:, 1:]' if shift else 'labels'}) must be palette ids in "
                              f"[0, {vocab_size - 1}) or -100 (ignored); the SOS token is never a target")
    return arr


def check_classification_labels(config, labels, B):
    """The classifier's labels, one per sequence, shaped for the problem type transformers picks
    (regression: (B,) or (B, num_labels) floats; single-label: (B,) class ids; multi-label: (B, num_labels)
    0/1 floats). -> (labels, the problem type)."""
    labels = np.asarray(labels)
    if labels.shape[:1] != (B,):
        raise ModelInputError(f"labels shape {labels.shape} does not match batch {B}")
    kind = layers.classification_problem_type(config, labels)
    L = config.num_labels
    fits = {"regression": [(B,), (B, 1)] if L == 1 else [(B, L)],
            "single_label_classification": [(B,)],
            "multi_label_classification": [(B, L)]}[kind]
    if labels.shape not in fits:
        raise ModelInputError(f"labels of shape {labels.shape} do not fit {kind} with num_labels={L}: expected "
                              f"{' or '.join(map(str, fits))}")
    if kind == "single_label_classification":
        bad = labels[(labels != -100) & ((labels < 0) | (labels >= config.num_labels))]
        if bad.size:
            raise ModelInputError(f"labels must be in [0, num_labels={config.num_labels}) or -100, got {int(bad[0])}")
    return labels, kind


# transformers forward arguments this package does not implement: each refused by name
def check_forward_kwargs(where, kwargs):
    """Whatever a forward got beyond its own arguments: refused, naming the first."""
    if kwargs:
        name = next(iter(kwargs))
        raise ModelInputError(f"{where}: {name} is not supported (transformers has it; this package does not)")


# ---- one forward call's inputs, resolved ----------------------------------------------------------
class Options(NamedTuple):
    """A forward's switches, each left None by the caller filled in from the config (transformers' rule)."""
    cache: KVCache | None
    use_cache: bool
    output_attentions: bool
    output_hidden_states: bool
    return_dict: bool


def options(config, where, cache, kwargs, use_cache, output_attentions, output_hidden_states, return_dict):
    """transformers' defaults for a forward: each option left None follows the config; the cache may come as
    cache= or, the older name, past_key_values= (kept in kwargs). Anything else in kwargs is refused by name."""
    if "past_key_values" in kwargs:
        if cache is not None:
            raise ModelInputError("pass cache or past_key_values, not both (the same thing: 5.24's name and "
                                  "the older one)")
        cache = kwargs.pop("past_key_values")
    check_forward_kwargs(where, kwargs)
    pick = (lambda value, default: default if value is None else value)
    return Options(cache, pick(use_cache, config.use_cache), pick(output_attentions, config.output_attentions),
                   pick(output_hidden_states, config.output_hidden_states), pick(return_dict, config.return_dict))


@dataclass
class ForwardInputs:
    """One call's inputs, checked (check_inputs): ids [B, T] or embeddings [B, T, C], positions [B or 1, T],
    the additive masks layers.additive_mask makes, the KV cache."""
    input_ids: np.ndarray | None
    inputs_embeds: np.ndarray | None
    position_ids: np.ndarray
    token_type_ids: np.ndarray | None = None
    attention_mask: np.ndarray | None = None  # the caller's 0/1 mask [B, P + T]; `mask` is what attention adds
    mask: np.ndarray | None = None  # [B, 1, 1, P + T]
    cache: KVCache | None = None
    encoder_hidden_states: np.ndarray | None = None  # [B, S, C]
    encoder_mask: np.ndarray | None = None  # [B, 1, 1, S]
    output_attentions: bool = False
    output_hidden_states: bool = False

    @property
    def rows(self):
        """B * T: the positions this call runs through every weight."""
        B, T = (self.input_ids if self.input_ids is not None else self.inputs_embeds).shape[:2]
        return B * T

    @property
    def plain(self):
        """Ids, positions and a KV cache alone: what a whole-forward fusion (the GPU's) takes."""
        return (self.input_ids is not None and self.attention_mask is None and self.token_type_ids is None
                and self.encoder_hidden_states is None and not self.output_attentions
                and not self.output_hidden_states)


def check_inputs(config, *, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, cache=None, use_cache=False, output_attentions=False, output_hidden_states=False,
                 encoder_hidden_states=None, encoder_attention_mask=None):
    """The arguments of a forward call, checked, as ForwardInputs. With use_cache and no cache, a new
    KVCache holding just this call's positions."""
    B, T = check_input_ids(config, input_ids, inputs_embeds)
    cache = KVCache(config, B, grow=True) if cache is None and use_cache else cache
    past = 0 if cache is None else check_cache(config, cache, B).get_seq_length()
    check_positions(config, past, T)
    if position_ids is None:
        position_ids = np.arange(past, past + T)[None, :]  # [1, T]: the positions after the cached ones
    else:
        position_ids = check_ids("position_ids", position_ids, config.n_positions, (B, T))
    inputs = ForwardInputs(
        None if input_ids is None else np.asarray(input_ids),
        None if inputs_embeds is None else check_floats("inputs_embeds", inputs_embeds, (B, T, config.n_embd)),
        position_ids, cache=cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states)
    if token_type_ids is not None:
        inputs.token_type_ids = check_ids("token_type_ids", token_type_ids, config.vocab_size, (B, T))
    if attention_mask is not None:
        inputs.attention_mask = check_mask("attention_mask", attention_mask, (B, past + T))
        inputs.mask = layers.additive_mask(inputs.attention_mask)  # [B, 1, 1, P + T]
    if encoder_hidden_states is not None:
        enc = inputs.encoder_hidden_states = check_encoder_states(config, encoder_hidden_states, B)
        if encoder_attention_mask is not None:
            inputs.encoder_mask = layers.additive_mask(check_mask(
                "encoder_attention_mask", encoder_attention_mask, enc.shape[:2]))  # [B, 1, 1, S]
    if cache is not None:
        cache.reserve(past + T)  # room for this call's keys and values before any block writes them
    return inputs
