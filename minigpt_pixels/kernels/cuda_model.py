"""`model.to("cuda")`: the weights on the GPU and ImageGPT's forward pass as a flat list of kernel launches.

    embedding
    for each block:  layer_norm -> linear (c_attn) -> [append k, v to the KV cache] -> attention
                     -> linear (c_proj) + residual -> layer_norm -> linear + activation (c_fc)
                     -> linear (c_proj) + residual
    layer_norm (ln_f)                                    [-> linear (lm_head), in lm_logits]

Activations stay on the device between layers: the host sends ids and positions, and gets back the
hidden states after ln_f (and the logits). The "cuda" backend (backends.py) calls this only for plain
inputs (ids, positions, an optional KVCache); masks, cross-attention, token types, embeddings, hidden
states or attention weights run the "cpu" backend's functions on the host.

The KV cache. cache.KVCache holds host arrays; on the GPU a mirror of it lives on the cache object
(`cache._cuda_kv`: device keys and values [B, H, max_length, D] per layer) and attention reads that.
The host arrays are kept in sync: each call writes its new keys and values into one staging buffer
as well, copies it back in one transfer, and appends it through `KVCache.update`, so `lengths` and
`get_seq_length()` stay right and a cache can move between backends (or be `select`ed) freely. A
mirror that no longer matches its cache (another length, or `select` replaced the arrays) is
uploaded again from the host arrays. It holds device memory for as long as the cache object lives.

The weights are copied once, at `to("cuda")`: after changing `model.params`, call it again.
"""

from __future__ import annotations

import numpy as np

from .. import layers
from ..cache import KVCache
from ..inputs import ModelInputError, check_cache_room
from . import cuda as K

F32 = np.float32


class _Layer:
    """One block's weights on the device (layers.BlockWeights' fields, each uploaded), and its attention scale."""

    def __init__(self, w: layers.BlockWeights):
        self.ln_1, self.ln_2 = K.to_device(w.ln_1), K.to_device(w.ln_2)
        self.w_attn, self.b_attn = K.to_device(w.w_attn), K.to_device(w.b_attn)  # [C, 3C], [3C]
        self.w_attn_proj, self.b_attn_proj = K.to_device(w.w_attn_proj), K.to_device(w.b_attn_proj)  # [C, C], [C]
        self.w_fc, self.b_fc = K.to_device(w.w_fc), K.to_device(w.b_fc)  # [C, F], [F]
        self.w_mlp_proj, self.b_mlp_proj = K.to_device(w.w_mlp_proj), K.to_device(w.b_mlp_proj)  # [F, C], [C]
        self.scale = w.scale


class _Workspace:
    """The activations of one (B, T), allocated once and reused by every call of that shape (every
    decode step), with the head-split views the attention kernels read and write."""

    def __init__(self, config, B, T):
        C, H, D, N = config.n_embd, config.n_head, config.head_dim, B * T
        self.B, self.T = B, T
        self.ids = K.device_empty((2, N), np.int32)  # input ids and positions, one upload
        self.x = K.device_empty((N, C))  # the residual stream, updated in place
        self.xn = K.device_empty((N, C))  # layer-normed x
        self.qkv = K.device_empty((N, 3 * C))
        self.attn = K.device_empty((N, C))  # attention output, heads merged
        self.mid = K.device_empty((N, config.inner_dim))
        self.h = K.device_empty((N, C))  # after ln_f
        self.logits = None  # [N, V], on the first lm_logits call
        self.stage = None  # [n_layer, 2, B, H, T, D], on the first call with a cache
        self.stage_views = None  # per layer, its [B, H, T, D] key and value slots in the stage
        self.input_ids, self.positions = self.ids[0], self.ids[1]
        qkv = self.qkv.reshape(B, T, 3, H, D)
        # [B, T, H, D] slices of the fused qkv rows, seen as [B, H, T, D]: no split_heads copy
        self.q, self.k, self.v = (K.permute(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3))
        self.out = K.permute(self.attn.reshape(B, T, H, D), (0, 2, 1, 3))  # merge_heads by writing through it

    def staging(self, config):
        if self.stage is None:
            self.stage = K.device_empty((config.n_layer, 2, self.B, config.n_head, self.T, config.head_dim))
            self.stage_views = [(self.stage[i, 0], self.stage[i, 1]) for i in range(config.n_layer)]
        return self.stage


class _DeviceKV:
    """The device mirror of a cache.KVCache (see the module docstring)."""

    def __init__(self, cache: KVCache):
        self.host_keys = cache.keys  # KVCache.select replaces this list: then the mirror is stale
        self.shape = cache.keys[0].shape
        self.length = cache.get_seq_length()
        if self.length:  # filled elsewhere (another backend, or before select): start from the host arrays
            self.keys = [K.to_device(k) for k in cache.keys]
            self.values = [K.to_device(v) for v in cache.values]
        else:
            self.keys = [K.device_empty(k.shape) for k in cache.keys]
            self.values = [K.device_empty(v.shape) for v in cache.values]

    def matches(self, cache: KVCache):
        return (cache.keys is self.host_keys and cache.keys[0].shape == self.shape
                and cache.get_seq_length() == self.length)


class CudaRunner:
    """The device copy of a model's weights and its forward pass with the kernels of kernels/cuda.py.

    params: the model's flat weight dict (HF names); prefix: where the body's weights live
    ("transformer." for the head models, "" for ImageGPTModel).
    """

    max_workspaces = 4  # (B, T) shapes whose activations stay allocated (prompt, decode step, ...)

    def __init__(self, params, config, prefix=""):
        K.require_cuda()
        if config.head_dim > K.MAX_HEAD_DIM:
            raise ValueError(f"head_dim {config.head_dim} (n_embd {config.n_embd} / n_head {config.n_head}) is beyond "
                             f"the CUDA attention kernels' limit of {K.MAX_HEAD_DIM}; use model.to('cpu')")
        self.config = config
        self.act = K.ACTIVATIONS[config.activation_function]
        self.eps = F32(config.layer_norm_epsilon)
        self.wte, self.wpe = K.to_device(params[prefix + "wte.weight"]), K.to_device(params[prefix + "wpe.weight"])
        self.layers = [_Layer(layers.block_weights(params, f"{prefix}h.{i}.", config, i))
                       for i in range(config.n_layer)]
        self.ln_f = K.to_device(params[prefix + "ln_f.weight"])
        # lm_head.weight is [V, C] (nn.Linear); stored transposed once so the head is x @ w like every layer
        head = params.get("lm_head.weight")
        self.lm_head = None if head is None else K.to_device(head.T)  # [C, V]
        self._workspaces = {}
        self._last = None  # (host h, its workspace) of the latest hidden_states: lm_logits reuses the device copy

    def _workspace(self, B, T):
        ws = self._workspaces.pop((B, T), None)
        if ws is None:
            if len(self._workspaces) >= self.max_workspaces:
                self._workspaces.pop(next(iter(self._workspaces)))  # the least recently used
            ws = _Workspace(self.config, B, T)
        self._workspaces[(B, T)] = ws  # most recently used last
        return ws

    def _device_kv(self, cache: KVCache, T):
        if len(set(cache.lengths)) != 1:
            raise ModelInputError(f"past_key_values has different lengths per layer {cache.lengths}")
        check_cache_room(cache.get_seq_length(), T, cache.max_length)
        kv = getattr(cache, "_cuda_kv", None)
        if kv is None or not kv.matches(cache):
            kv = _DeviceKV(cache)
            cache._cuda_kv = kv
        return kv

    def hidden_states(self, input_ids, position_ids, cache: KVCache | None = None):
        """ids, positions [B, T] -> the last hidden state [B, T, C] (after ln_f), as a host array. With a
        cache, attends to its past and appends this call's keys and values to it (device and host)."""
        cfg = self.config
        B, T = input_ids.shape
        ws = self._workspace(B, T)
        ws.ids.copy_to_device(np.stack([input_ids.reshape(-1), np.broadcast_to(position_ids, (B, T)).reshape(-1)])
                              .astype(np.int32))
        kv = None if cache is None else self._device_kv(cache, T)
        past = 0 if kv is None else kv.length
        S = past + T
        stage = None if kv is None else ws.staging(cfg)

        with K.small_grids_expected():
            K.launch_embedding(ws.input_ids, ws.positions, self.wte, self.wpe, ws.x)  # [B*T, C]
            for i, p in enumerate(self.layers):
                K.launch_layer_norm(ws.x, p.ln_1, ws.xn, self.eps)
                K.launch_linear(ws.xn, p.w_attn, p.b_attn, ws.qkv)  # [B*T, C] -> [B*T, 3C]
                keys, values = ws.k, ws.v  # [B, H, S, D]
                if kv is not None:
                    K.launch_append_kv(ws.k, ws.v, kv.keys[i], kv.values[i], *ws.stage_views[i], past)
                    keys, values = kv.keys[i], kv.values[i]  # [B, H, max_length, D]; the first S are valid
                if T == 1:  # a sampling step: one query against everything cached
                    K.launch_decode_attention(ws.q, keys, values, S, ws.out, p.scale)
                else:
                    K.launch_causal_attention(ws.q, keys[:, :, :S], values[:, :, :S], ws.out, p.scale)
                K.launch_linear(ws.attn, p.w_attn_proj, p.b_attn_proj, ws.x, residual=ws.x)  # x += attn @ w + b
                K.launch_layer_norm(ws.x, p.ln_2, ws.xn, self.eps)
                K.launch_linear(ws.xn, p.w_fc, p.b_fc, ws.mid, act=self.act)  # [B*T, C] -> [B*T, F]
                K.launch_linear(ws.mid, p.w_mlp_proj, p.b_mlp_proj, ws.x, residual=ws.x)  # x += mlp
            K.launch_layer_norm(ws.x, self.ln_f, ws.h, self.eps)

        if kv is not None:  # one transfer brings every layer's new keys and values to the host cache
            new = stage.copy_to_host()  # [n_layer, 2, B, H, T, D]
            for i in range(cfg.n_layer):
                cache.update(i, new[i, 0], new[i, 1])
            kv.length = cache.get_seq_length()
        h = ws.h.copy_to_host().reshape(B, T, cfg.n_embd)
        self._last = (h, ws)
        return h

    def lm_logits(self, h):
        """The LM head on the device: h [B, T, C] -> logits [B, T, V] (host)."""
        if self.lm_head is None:
            raise ValueError("this model has no LM head (lm_head.weight): lm_logits needs "
                             "ImageGPTForCausalImageModeling")
        B, T, C = h.shape
        if self._last is not None and h is self._last[0]:  # the hidden states we just computed: still on the device
            ws = self._last[1]
            x = ws.h
        else:
            ws, x = self._workspace(B, T), K.to_device(np.asarray(h).reshape(B * T, C))
        if ws.logits is None:
            ws.logits = K.device_empty((B * T, self.lm_head.shape[1]))
        with K.small_grids_expected():
            K.launch_linear(x, self.lm_head, None, ws.logits)  # [B*T, C] -> [B*T, V]
        return ws.logits.copy_to_host().reshape(B, T, -1)
