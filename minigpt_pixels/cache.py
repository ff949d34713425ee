"""The KV cache: each layer's keys and values of the positions seen so far, so that a decode step
computes attention for its new position only."""

from __future__ import annotations

import numpy as np

from .config import ImageGPTConfig
from .inputs import ModelInputError, check_cache_room


class KVCache:
    """Preallocated float32 keys and values, one [B, H, max_length, D] pair per layer.

    Appending T new positions writes into the buffer (no reallocation, unlike a cache that
    concatenates) and hands attention a view of everything so far. Cross-attention keys and values
    are computed once per layer and kept here too.

    Public attributes: `keys[layer]` and `values[layer]` are the whole C-contiguous buffers (the
    decode kernels in kernels/ read them directly), `lengths[layer]` how many positions are filled.
    """

    def __init__(self, config: ImageGPTConfig, batch_size: int, max_length: int | None = None):
        self.max_length = int(max_length or config.n_positions)
        if not 0 < self.max_length <= config.n_positions:
            raise ModelInputError(f"KVCache max_length {self.max_length} must be in [1, n_positions="
                                  f"{config.n_positions}]")
        self.batch_size = batch_size
        shape = (batch_size, config.n_head, self.max_length, config.head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(config.n_layer)]
        self.values = [np.zeros(shape, np.float32) for _ in range(config.n_layer)]
        self.lengths = [0] * config.n_layer
        self.cross = [None] * config.n_layer  # per layer: (k, v) of the encoder states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def claim(self, layer_idx, T):
        """Count T more positions of one layer as filled and return the first: for a kernel that writes
        them into keys[layer_idx] and values[layer_idx] itself (update() for everyone else)."""
        start = self.lengths[layer_idx]
        check_cache_room(start, T, self.max_length)
        self.lengths[layer_idx] = start + T
        return start

    def update(self, layer_idx, k, v):
        """Append k, v [B, H, T, D] for one layer; return views of all cached keys and values [B, H, S, D]."""
        T = k.shape[2]
        start = self.claim(layer_idx, T)
        self.keys[layer_idx][:, :, start:start + T] = k
        self.values[layer_idx][:, :, start:start + T] = v
        return self.keys[layer_idx][:, :, :start + T], self.values[layer_idx][:, :, :start + T]

    def select(self, index):
        """Keep only the sequences in `index` (e.g. to drop finished rows from a batch)."""
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        self.batch_size = self.keys[0].shape[0]


def check_cache(config, cache, B):
    """past_key_values must be a KVCache of this batch size and the model's depth (inputs.py holds the
    other checks; this one needs the class)."""
    if not isinstance(cache, KVCache):
        raise ModelInputError(f"past_key_values must be a minigpt_pixels KVCache, got {type(cache).__name__}")
    if cache.batch_size != B:
        raise ModelInputError(f"past_key_values holds batch {cache.batch_size}, but the input has batch {B}")
    if len(cache.keys) != config.n_layer:
        raise ModelInputError(f"past_key_values has {len(cache.keys)} layers, the model {config.n_layer}")
    return cache
