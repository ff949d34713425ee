"""The KV cache: each layer's keys and values of the positions seen so far, so that a decode step
computes attention for its new position only."""

from __future__ import annotations

import numpy as np

from . import limits
from .errors import ModelInputError


class KVCache:
    """Float32 keys and values, one [B, H, capacity, D] buffer pair per layer, as transformers'
    DynamicCache is used: `len(cache)` layers, `cache[layer]` its (keys, values) so far [B, H, S, D],
    `get_seq_length()`, `reorder_cache(beam_idx)`.

    KVCache(config, B, max_length) holds max_length positions (n_positions by default) from the start,
    so appending writes in place and never reallocates: what generate makes. With grow=True (the cache
    a forward makes when use_cache is on) the buffers hold what has been computed and grow, doubling,
    as decoding appends, up to max_length. The batch size may wait for the first forward that uses the
    cache (`KVCache(config)`, as transformers' DynamicCache(config=...)). Cross-attention's keys and values
    are not kept: they are recomputed from encoder_hidden_states on every call.

    Public attributes: `keys[layer]` and `values[layer]` are the whole C-contiguous buffers (the
    decode kernels in kernels/ read them directly), `lengths[layer]` how many positions are filled.
    """

    def __init__(self, config, batch_size: int | None = None, max_length: int | None = None,
                 grow: bool = False):
        self.max_length = int(max_length or config.n_positions)  # the most positions it may ever hold
        if not 0 < self.max_length <= config.n_positions:
            raise ModelInputError(f"KVCache max_length {self.max_length} must be in [1, n_positions="
                                  f"{config.n_positions}]")
        self.n_head, self.head_dim, self.grow = config.n_head, config.head_dim, grow
        self.batch_size = batch_size
        self.lengths = [0] * config.n_layer
        self.keys = [None] * config.n_layer  # allocated with the batch size (see reserve)
        self.values = [None] * config.n_layer
        if batch_size is not None:
            self.reserve(0)

    # ---- transformers' Cache API --------------------------------------------------------------
    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, layer_idx):
        """(keys, values) of one layer, the filled positions only: views [B, H, S, D]."""
        S = self.lengths[layer_idx]
        if self.keys[layer_idx] is None:
            raise IndexError(f"KVCache layer {layer_idx} holds nothing yet")
        return self.keys[layer_idx][:, :, :S], self.values[layer_idx][:, :, :S]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def reorder_cache(self, beam_idx):
        """transformers' name for select: keep rows beam_idx, in that order (beam search)."""
        self.select(beam_idx)

    # ---- room -----------------------------------------------------------------------------------
    def reserve(self, n_positions):
        """Make every layer's buffers hold at least n_positions before a forward writes into them (the
        whole max_length at once, or with grow=True doubling from what they hold): kernels that hold a
        buffer must not see it replaced under them, so claim() never reallocates."""
        check_cache_room(0, n_positions, self.max_length)
        if self.batch_size is None:
            raise ModelInputError("KVCache: the batch size is not known yet (pass batch_size, or use the cache "
                                  "in a forward first)")
        for i, buf in enumerate(self.keys):
            have = 0 if buf is None else buf.shape[2]
            if buf is not None and have >= n_positions:
                continue
            size = min(max(n_positions, 2 * have), self.max_length) if self.grow else self.max_length
            shape = (self.batch_size, self.n_head, size, self.head_dim)
            limits.check_bytes(2 * len(self.keys) * int(np.prod(shape)) * 4,
                               f"a KV cache for {self.batch_size:,} sequences")  # before allocating it
            new_k, new_v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            if buf is not None:
                S = self.lengths[i]
                new_k[:, :, :S], new_v[:, :, :S] = buf[:, :, :S], self.values[i][:, :, :S]
            self.keys[i], self.values[i] = new_k, new_v

    def claim(self, layer_idx, T):
        """Count T more positions of one layer as filled and return the first: for a kernel that writes
        them into keys[layer_idx] and values[layer_idx] itself (update() for everyone else). The room
        must be there already (reserve)."""
        start = self.lengths[layer_idx]
        check_cache_room(start, T, self.max_length)
        room = 0 if self.keys[layer_idx] is None else self.keys[layer_idx].shape[2]
        if start + T > room:
            raise ModelInputError(f"KV cache layer {layer_idx} has room for {room} positions, not {start + T}: "
                                  f"reserve() first")
        self.lengths[layer_idx] = start + T
        return start

    def update(self, layer_idx, k, v):
        """Append k, v [B, H, T, D] for one layer; return views of all cached keys and values [B, H, S, D]."""
        T = k.shape[2]
        if self.batch_size is None:
            self.batch_size = k.shape[0]
        self.reserve(self.lengths[layer_idx] + T)  # safe here: this method writes the buffers itself
        start = self.claim(layer_idx, T)
        self.keys[layer_idx][:, :, start:start + T] = k
        self.values[layer_idx][:, :, start:start + T] = v
        return self.keys[layer_idx][:, :, :start + T], self.values[layer_idx][:, :, :start + T]

    def select(self, index):
        """Keep only the sequences in `index`, in that order (e.g. to drop finished rows from a batch)."""
        self.keys = [None if k is None else k[index] for k in self.keys]
        self.values = [None if v is None else v[index] for v in self.values]
        self.batch_size = len(np.arange(self.batch_size)[index])


def check_cache_room(start, T, max_length):
    """T new positions after `start` cached ones must fit a KV cache of max_length."""
    if start + T > max_length:
        raise ModelInputError(f"KV cache is full: {start} cached + {T} new positions > max_length {max_length}")


def check_cache(config, cache, B):
    """cache (past_key_values) must be a KVCache of this batch size (a new one takes the batch's) and the
    model's depth (inputs.py holds the other checks; this one needs the class)."""
    if not isinstance(cache, KVCache):
        raise ModelInputError(f"cache (past_key_values) must be a minigpt_pixels KVCache, got {type(cache).__name__}")
    if cache.batch_size is None:
        cache.batch_size = B  # an empty KVCache(config): its first forward decides
    if cache.batch_size != B:
        raise ModelInputError(f"past_key_values holds batch {cache.batch_size}, but the input has batch {B}")
    if len(cache) != config.n_layer or (cache.n_head, cache.head_dim) != (config.n_head, config.head_dim):
        raise ModelInputError(f"cache has {len(cache)} layers of {cache.n_head} heads of {cache.head_dim}, the "
                              f"model {config.n_layer} of {config.n_head} of {config.head_dim}")
    return cache
