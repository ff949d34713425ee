"""The checks on what a caller hands the model, in one place: model.py, backprop.py and generation.py
call these, so one bad input gets one message whichever door it came in by.

Each check returns the value as the model uses it (an integer or float32 array) or raises
ModelInputError with a one-line message naming the argument, its shape or the offending value.
The KV cache's own check (it must be a KVCache of the right batch and depth) sits beside the class,
in cache.py, which imports this module.
"""

from __future__ import annotations

import numpy as np

from . import layers


def is_number(x):
    """A finite real number: Python or NumPy int/float, never a bool (True is not a temperature)."""
    return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))
            and bool(np.isfinite(x)))


def is_int(x):
    """A Python or NumPy integer, never a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


class ModelInputError(ValueError):
    """An input (ids, mask, cache, embeddings, labels) the model cannot take; the message names it."""


def _as_int_array(name, x):
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ModelInputError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


def check_input_ids(config, input_ids, inputs_embeds):
    """Exactly one of input_ids [B, T] (token ids) and inputs_embeds [B, T, C]. -> (B, T)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ModelInputError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is None:
        emb = check_floats("inputs_embeds", inputs_embeds, (None, None, config.n_embd))
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
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ModelInputError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ModelInputError(f"{name} has shape {arr.shape}, expected {want}")
    return arr.astype(np.float32, copy=False)


def check_mask(name, mask, shape):
    """A 0/1 keep-mask (attention_mask, encoder_attention_mask) of exactly `shape`."""
    arr = np.asarray(mask)
    if tuple(arr.shape) != tuple(shape):
        raise ModelInputError(f"{name} has shape {arr.shape}, expected {tuple(shape)} (batch, past + new positions)")
    return arr


def check_positions(config, past, T):
    """Cached plus new positions must fit the position table."""
    if past + T > config.n_positions:
        raise ModelInputError(f"sequence length {past + T} (cached {past} + new {T}) exceeds n_positions "
                              f"{config.n_positions}")


def check_cache_room(start, T, max_length):
    """T new positions after `start` cached ones must fit a KV cache of max_length."""
    if start + T > max_length:
        raise ModelInputError(f"KV cache is full: {start} cached + {T} new positions > max_length {max_length}")


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
