"""The "cpu" device: layers.transformer_block's maths, faster. Read layers.py first; this file only
changes how the same numbers are computed. backends.CpuBackend holds transformer_block, self_attention,
mlp and layer_norm from here, each mirroring the layers.py function of its name (same arguments, same
result); decode_layers is its fused decode step (every block of a batch's step in one compiled call).

    matmuls           NumPy `@` (BLAS) on views of the fused qkv buffer: heads are never copied
    causal attention  query blocks of QUERY_BLOCK rows attend only to the keys up to the block's end, so
                      the upper triangle is (almost) never computed, and each [rows, keys] score block
                      (at most 128 x 1024 floats = 512 KiB) stays in L2 between its two BLAS matmuls
    decode steps      (T <= SMALL_T new positions, usually 1) one Numba loop per query row over the KV
                      cache: scores, softmax and the weighted sum of values in one pass over the cache;
                      for a batch (2 to SMALL_ROWS rows) the matmuls are simd.small_matmul and the
                      (row, head) pairs are shared out, both on Numba's threads (threads.decode_threads),
                      and the model runs all its blocks in one compiled call (decode_layers)
    elementwise       Numba kernels: layer norm (fused with the residual add before ln_2), bias +
                      quick_gelu in place on the fc output, the masked softmax of each score block
    threads           in full forwards, the rows of each matmul, the heads and the gelu rows are shared
                      among numba.get_num_threads() Python threads that call BLAS single-threaded (BLAS
                      is held to one thread for the whole pass): see threads.py and blas_threads_for

The file reads top down: the backend's functions (mirrors of layers.py's, in its order), the backend's
fused decode step, then the Python drivers they call (matmul, the attention paths). The compiled loops
they call by name (`*_kernel`, @njit) are in cpu_loops.py, in the same order; the thread policy (which
section runs on how many threads) is in threads.py.

Measured on iGPT-S (T = 1024, 1 thread): about 0.5 of transformers' time; see benchmarks/bench_forward.py.

Float32 only, as cpu_loops.py says; results agree with layers.py to about 1e-6 on O(1) values.

The kernels compile lazily on first use: about 2 s for a forward's, about 17 s more the first time a
batch is decoded on several threads (parallel kernels compile slowly). The compiled code is cached on
disk (compile_cache.njit), so only a process's first run pays that.

Fast path: causal self-attention with no mask or a padding mask (0 / MASK_MIN per key, as
layers.additive_mask makes it). Anything else (a general additive mask, query rows that see no
unmasked key, cross-attention, activations other than quick_gelu) runs the layers.py functions for that
part, so every option gives the reference's result.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from .. import layers
from . import simd
from .cpu_loops import (attention_rows_kernel, attention_rows_parallel, bias_quick_gelu_kernel,
                        causal_softmax_kernel, decode_layers_kernel, layer_norm_kernel, residual_layer_norm_kernel)
from .cpu_loops import JIT, REDUCE, _dot, _exp, _max  # noqa: F401 (cpu_train.py reads them as cpu.JIT, cpu._exp, ...)
from .threads import (ROW_SPLIT_MIN, SMALL_ROWS, StepClock, decode_threads, fused_step_threads, in_parallel, split,
                      workers_for)
from .threads import blas_threads_for  # noqa: F401 (CpuBackend.threads reads it as cpu.blas_threads_for)

F32 = np.float32
MASK_MIN = layers.MASK_MIN
QUERY_BLOCK = 128  # query rows per attention block: 128 x 1024 scores fit in L2 (64 and 256: 3% slower)
SMALL_T = 8  # at most this many new positions: per-row Numba attention instead of blocks
DECODE_PARTS = 4  # blocks of K rows every decode-step matmul on Numba's kernels is split into, whatever the
# thread count (simd.matmul_parallel): so a step gives the same bits on 1 thread as on 2 or 16, and
# StepClock may pick the count by timing alone


# ---- the backend's functions: layers.py's, in its order ------------------------------------------
def layer_norm(x, weight, eps=1e-5):
    """Mirrors layers.layer_norm, through the kernel; x [..., C]."""
    out = np.empty(x.shape, F32)
    C = x.shape[-1]
    layer_norm_kernel(x.reshape(-1, C), weight, F32(eps), out.reshape(-1, C))
    return out


def mlp(x, w_fc, b_fc, w_proj, b_proj, act="quick_gelu"):
    """Mirrors layers.mlp: x [..., C] -> [..., C], with the fc bias and quick_gelu in one kernel, in place."""
    C = x.shape[-1]
    f = matmul(x.reshape(-1, C), w_fc)  # [N, C] -> [N, F]
    if act == "quick_gelu":
        bias_quick_gelu(f, b_fc)
    else:
        f = layers.activation(f + b_fc, act)
    m = matmul(f, w_proj)  # [N, F] -> [N, C]
    m += b_proj
    return m.reshape(*x.shape[:-1], w_proj.shape[1])


def self_attention(x, w_attn, b_attn, w_proj, b_proj, n_head, scale, mask=None, cache=None, layer_idx=0,
                   need_weights=True):
    """Mirrors layers.self_attention: same arguments, same result; the weights [B, H, T, S] only when
    need_weights, else None. x [B, T, C] -> [B, T, C]."""
    a, weights = self_attention_unbiased(x, w_attn, b_attn, w_proj, n_head, scale, mask, cache, layer_idx,
                                         need_weights)  # [B*T, C]
    a += b_proj
    return a.reshape(x.shape), weights


def transformer_block(x, p, prefix, config, layer_idx, mask=None, cache=None, encoder_hidden_states=None,
                      encoder_mask=None, need_weights=True):
    """Mirrors layers.transformer_block: same arguments, same result. The attention weights are computed
    only when need_weights; otherwise the tuple holds None in their place (same length).

    The block's wiring for this backend, written once: the fused residual + ln_2 kernel and the fused
    decode step below change how the sums are grouped into passes, not their order."""
    eps, H = F32(config.layer_norm_epsilon), config.n_head
    w = layers.block_weights(p, prefix, config, layer_idx)
    x = np.ascontiguousarray(x, dtype=F32)
    B, T, C = x.shape
    N = B * T
    if cache is not None and encoder_hidden_states is None and not need_weights:
        out = decode_layers(x, [w], [layer_idx], config, mask, cache)
        if out is not None:
            return out, (None,)

    # x1 = x + attn(ln_1(x)); h = ln_2(x1), the bias, residual and norm in one kernel
    a, w_self = self_attention_unbiased(layer_norm(x, w.ln_1, eps), w.w_attn, w.b_attn, w.w_attn_proj, H, w.scale,
                                        mask=mask, cache=cache, layer_idx=layer_idx,
                                        need_weights=need_weights)  # [B*T, C], no bias yet
    weights = (w_self,)
    x1, h = np.empty((B, T, C), F32), np.empty((B, T, C), F32)
    residual_layer_norm_kernel(x.reshape(N, C), a, w.b_attn_proj, w.ln_2, eps, x1.reshape(N, C), h.reshape(N, C))

    # [x1 = x1 + cross(ln_cross_attn(x1))]: rare, so the reference functions
    if encoder_hidden_states is not None:
        c, w_cross = layers.cross_attention(layer_norm(x1, w.ln_cross, eps), encoder_hidden_states, *w.cross, H,
                                            w.scale, mask=encoder_mask)
        x1 = (x1 + c).astype(F32, copy=False)  # [B, T, C]
        h = layer_norm(x1, w.ln_2, eps)
        weights += (w_cross if need_weights else None,)

    # x1 + mlp(h)
    m = mlp(h, w.w_fc, w.b_fc, w.w_mlp_proj, w.b_mlp_proj, config.activation_function)  # [B, T, C]
    m += x1  # x1 + (m + b): the reference's order of additions
    return m, weights


# ---- the backend's fused decode step (CpuBackend.fused_forward): every block of a step in one call ----
DECODE_BLOCK_FIELDS = ("ln_1", "w_attn", "b_attn", "w_attn_proj", "b_attn_proj", "ln_2", "w_fc", "b_fc",
                       "w_mlp_proj", "b_mlp_proj")  # BlockWeights' fields, in cpu_loops.decode_block_kernel's order


def decode_layers(x, blocks, layer_ids, config, mask, cache):
    """transformer_block through `blocks` (layers.BlockWeights, each with its attention scale; cache layers
    `layer_ids`) in turn, for a decode step, in one call of decode_layers_kernel; or None where that does not
    apply: it takes one new position per row (a single sequence too), a model big enough for threads
    (fused_step_threads), quick_gelu, a mask the fast path takes, C-contiguous float32 weights (what
    simd's vload reads; the model's always are) and layers cached to the same length.
    x [B, 1, C] -> [B, 1, C]; appends one position to each layer's cache.

    The step runs on one thread or on all of Numba's, as STEP_CLOCK finds faster; the bits are the same."""
    B, T, C = x.shape
    per_name = [tuple(getattr(w, field) for w in blocks) for field in DECODE_BLOCK_FIELDS]
    most = fused_step_threads(B * C * max(3 * C, per_name[6][0].shape[1]))  # for the largest matmul
    if T != 1 or B > SMALL_ROWS or most == 1 or config.activation_function != "quick_gelu":
        return None
    keys, values = tuple(cache.keys[i] for i in layer_ids), tuple(cache.values[i] for i in layer_ids)
    if not all(_uniform_c_float32(arrays) for arrays in (*per_name, keys, values)):
        return None
    past = cache.get_seq_length(layer_ids[0])
    keep = padding_keep(mask, B, past + 1, past)
    if keep is None or any(cache.get_seq_length(i) != past for i in layer_ids):
        return None
    for i in layer_ids:
        cache.claim(i, 1)
    key = (B, C, len(layer_ids), most)
    threads = STEP_CLOCK.choose(key, most)
    start, saved = time.perf_counter(), numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        out = decode_layers_kernel(np.ascontiguousarray(x.reshape(B, C), dtype=F32), *per_name, keys, values, past,
                                   keep, F32(config.layer_norm_epsilon), np.array([w.scale for w in blocks], F32),
                                   DECODE_PARTS)
    finally:
        numba.set_num_threads(saved)
    STEP_CLOCK.record(key, threads, time.perf_counter() - start)
    return out.reshape(B, 1, C)


STEP_CLOCK = StepClock()  # one per process: what it learns about this machine's load serves every model


def _uniform_c_float32(arrays):
    """Whether these arrays are all C-contiguous float32 (what simd's vload reads) and typed alike by
    Numba, so that a tuple of them is uniform and indexable by a loop variable: the same ndim, all
    writable or all read-only, all aligned or not."""
    kind = (arrays[0].ndim, arrays[0].flags.writeable, arrays[0].flags.aligned)
    return all(a.dtype == F32 and a.flags.c_contiguous and (a.ndim, a.flags.writeable, a.flags.aligned) == kind
               for a in arrays)


# ---- what the functions above call: the matmul, mlp's activation, the attention paths ---------------
def matmul(a, w):
    """a @ w for a [N, K] and w [K, Out] float32: no bias, so not layers.linear's contract (hence another
    name). In a decode step worth threads, simd.small_matmul shares the rows of w out among Numba's
    threads (see simd.py for why not BLAS); in a bigger pass, the rows of a (at least ROW_SPLIT_MIN) are
    shared among in_parallel's threads, each calling BLAS on one thread (see blas_threads_for); in between,
    BLAS alone."""
    (N, K), Out = a.shape, w.shape[1]
    if N <= SMALL_ROWS:
        if w.flags.c_contiguous and w.dtype == F32 and decode_threads(N, N * K * Out) > 1:
            return simd.small_matmul(a, w, DECODE_PARTS)  # on Numba's threads, DECODE_PARTS blocks of K
        return a @ w
    workers = workers_for(N * K * Out) if N >= ROW_SPLIT_MIN else 1
    if workers == 1:
        return a @ w
    out = np.empty((N, Out), np.result_type(a, w))

    def rows(pieces):
        for r0, r1 in pieces:
            np.matmul(a[r0:r1], w, out=out[r0:r1])  # [rows, K] @ [K, Out]

    in_parallel(rows, split(N, workers), workers)
    return out


def bias_quick_gelu(f, b):
    """In place on f [N, F]: f = quick_gelu(f + b), rows shared among threads when f is big."""
    def gelu(chunks):
        for start, stop in chunks:
            bias_quick_gelu_kernel(f[start:stop], b)

    workers = workers_for(f.size * 8)  # the exp and division cost about as much as 8 multiply-adds
    in_parallel(gelu, split(f.shape[0], workers), workers)


def self_attention_unbiased(x, w_attn, b_attn, w_proj, n_head, scale, mask=None, cache=None, layer_idx=0,
                            need_weights=True):
    """self_attention without the output projection's bias, which transformer_block adds in the kernel
    that also adds the residual and takes ln_2.

    x [B, T, C] -> (merge_heads(attention) @ w_proj as [B*T, C], the weights [B, H, T, S] or None).
    """
    B, T, C = x.shape
    H, D = n_head, C // n_head
    qkv = matmul(x.reshape(B * T, C), w_attn)  # [B*T, C] -> [B*T, 3C]
    qkv += b_attn
    qkv = qkv.reshape(B, T, 3, H, D)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # 3 x [B, H, T, D] views, no copies
    past = 0
    if cache is not None:
        past = cache.get_seq_length(layer_idx)
        k, v = cache.update(layer_idx, k, v)  # [B, H, S, D] views of the cache's buffers
    S = past + T
    keep = padding_keep(mask, B, S, past)
    if keep is None:  # a mask the fast path does not take: the reference computes this attention
        o, weights = layers.attention(q, k, v, scale, causal=True, mask=mask)  # [B, H, T, D]
        return layers.merge_heads(o).reshape(B * T, C) @ w_proj, (weights if need_weights else None)

    out = np.empty((B, T, H, D), F32)
    weights = np.zeros((B, H, T, S), F32) if need_weights else None  # zeros: blocks skip the upper triangle
    if T > SMALL_T:
        blocked_causal_attention(q, k, v, scale, past, keep, out, weights, workers_for(B * H * T * S * D))
    else:
        if cache is not None:  # the cache's buffers [B, H, max_length, D] are C-contiguous, its views not
            k, v = cache.keys[layer_idx], cache.values[layer_idx]
        q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))  # without a cache: copies of <= SMALL_T rows
        w = weights if need_weights else np.empty((B, 0, 0, 0), F32)
        parallel = decode_threads(B * T, B * H * T * S * D) > 1 and B * T <= SMALL_ROWS  # see blas_threads_for
        kernel = attention_rows_parallel if parallel else attention_rows_kernel
        kernel(q, k, v, S, scale, keep, out, w, need_weights)
    return matmul(out.reshape(B * T, C), w_proj), weights  # [B*T, C] @ [C, C] -> [B*T, C]


def padding_keep(mask, B, S, past):
    """The additive mask as a keep-mask [B, S] (uint8) when the fast path can take it, else None.

    The fast path takes no mask, or a [B or 1, 1, 1, S] mask holding only 0 and MASK_MIN (what
    layers.additive_mask makes) where every query row sees at least one kept key. A row that sees none
    (left padding) gets transformers' degenerate uniform weights: that is left to layers.attention.
    """
    if mask is None:
        return np.ones((B, S), np.uint8)
    m = np.asarray(mask)
    if m.ndim != 4 or m.shape[1:] != (1, 1, S) or m.shape[0] not in (1, B):
        return None
    m = m[:, 0, 0, :]  # [B or 1, S]
    keep = m == 0
    if not np.all(keep | (m == MASK_MIN)):
        return None
    # query row 0 is at absolute position `past`: it must see a kept key among 0..past
    if not np.all(np.any(keep[:, :past + 1], axis=1)):
        return None
    return np.ascontiguousarray(np.broadcast_to(keep, (B, S)), dtype=np.uint8)


def blocked_causal_attention(q, k, v, scale, past, keep, out, weights=None, workers=1):
    """Causal attention in query blocks; writes the merged heads into out [B, T, H, D].

    q [B, H, T, D]; k, v [B, H, S, D] with S = past + T; any strides with unit stride along D (views
    of the qkv buffer or of the KV cache). For each (b, h) and each block of rows r0:r1, only the keys
    0 .. past + r1 - 1 are used: about half the work of the full T x S product for T = S.
    Scores go to `weights[b, h, r0:r1]` when given, else to a scratch block reused for every block.
    The B * H heads are shared among `workers` threads (see in_parallel).
    """
    B, H, T, D = q.shape

    def attend(heads):  # one worker's share of the (b, h) pairs, with its own scratch block
        scratch = np.empty(min(T, QUERY_BLOCK) * k.shape[2], F32) if weights is None else None
        for b, h in heads:
            for r0 in range(0, T, QUERY_BLOCK):
                r1 = min(r0 + QUERY_BLOCK, T)
                K = past + r1  # keys visible to the block's last row
                s = scratch[:(r1 - r0) * K].reshape(r1 - r0, K) if weights is None else weights[b, h, r0:r1, :K]
                np.matmul(q[b, h, r0:r1], k[b, h, :K].T, out=s)  # [Q, D] @ [D, K] -> [Q, K]
                causal_softmax_kernel(s, scale, past + r0, keep[b])
                np.matmul(s, v[b, h, :K], out=out[b, r0:r1, h])  # [Q, K] @ [K, D] -> [Q, D]

    in_parallel(attend, [(b, h) for b in range(B) for h in range(H)], workers)
