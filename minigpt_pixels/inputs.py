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


def check_lm_labels(labels, shape, vocab_size):
    """The LM's labels: like input_ids, palette ids in [0, vocab_size - 1) or -100 (ignored)."""
    arr = _as_int_array("labels", labels)
    if arr.shape != tuple(shape):
        raise ModelInputError(f"labels has shape {arr.shape}, expected {tuple(shape)} like input_ids")
    bad = arr[(arr != -100) & ((arr < 0) | (arr >= vocab_size - 1))]
    if bad.size:
        raise ModelInputError(f"labels holds {int(bad[0])}: labels must be palette ids in [0, {vocab_size - 1}) "
                              f"or -100 (ignored); the SOS token is never a target")
    return arr


def check_classification_labels(config, labels, B):
    """The classifier's labels, one per sequence. -> (labels, transformers' problem type for them)."""
    labels = np.asarray(labels)
    if labels.shape[:1] != (B,):
        raise ModelInputError(f"labels shape {labels.shape} does not match batch {B}")
    kind = layers.classification_problem_type(config, labels)
    if kind == "single_label_classification":
        bad = labels[(labels != -100) & ((labels < 0) | (labels >= config.num_labels))]
        if bad.size:
            raise ModelInputError(f"labels must be in [0, num_labels={config.num_labels}) or -100, got {int(bad[0])}")
    return labels, kind
