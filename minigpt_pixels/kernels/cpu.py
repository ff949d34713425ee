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
                      (row, head) pairs are shared out, both on Numba's threads (see decode_threads),
                      and the model runs all its blocks in one compiled call (decode_layers)
    elementwise       Numba kernels: layer norm (fused with the residual add before ln_2), bias +
                      quick_gelu in place on the fc output, the masked softmax of each score block
    threads           in full forwards, the rows of each matmul, the heads and the gelu rows are shared
                      among numba.get_num_threads() Python threads that call BLAS single-threaded (BLAS
                      is held to one thread for the whole pass): see threads.py and blas_threads_for

The file reads top down: the backend's functions (mirrors of layers.py's, in its order), the attention
drivers and the decode-step machinery they call, then the @njit kernels; the thread policy that is not
decode-specific (in_parallel, StepClock) is in threads.py.

Measured on iGPT-S (T = 1024, 1 thread): about 0.5 of transformers' time; see benchmarks/bench_forward.py.

Float32 only: float32 inputs, constants and accumulators, so nothing is promoted to float64 (the tests
check the compiled kernels' assembly for double-precision instructions). Two liberties, both documented
where taken: a polynomial exp (`_exp`, 2e-7 relative error) because libm's cannot vectorise, and
reassociated float sums (`REDUCE`) so that reductions vectorise. Results agree with layers.py to about
1e-6 on O(1) values.

The kernels compile lazily on first use: about 2 s for a forward's, about 17 s more the first time a
batch is decoded on several threads (parallel kernels compile slowly). The compiled code is cached on
disk (compile_cache.njit), so only a process's first run pays that.

Fast path: causal self-attention with no mask or a padding mask (0 / MASK_MIN per key, as
layers.additive_mask makes it). Anything else (a general additive mask, query rows that see no
unmasked key, cross-attention, activations other than quick_gelu) runs the layers.py functions for that
part, so every option gives the reference's result.
"""

from __future__ import annotations

import contextlib
import time

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types

from .. import layers
from . import simd
from .compile_cache import intrinsic, njit  # numba's, cached on disk / with a Python twin for NUMBA_DISABLE_JIT
from .threads import (PARALLEL_MIN_WORK, StepClock, blas_controller, in_parallel, split,  # noqa: F401
                      worker_pool, workers_for)

F32 = np.float32
MASK_MIN = layers.MASK_MIN
QUERY_BLOCK = 128  # query rows per attention block: 128 x 1024 scores fit in L2 (64 and 256: 3% slower)
SMALL_T = 8  # at most this many new positions: per-row Numba attention instead of blocks

# Every kernel uses error_model="numpy": with Numba's default ("python"), each float division checks for
# a zero divisor and may raise, and that branch stops LLVM from vectorising the loop. NumPy semantics
# (inf / nan, no exception) are also what the reference does.
JIT = dict(fastmath=False, nogil=True, error_model="numpy")

# Float sums use fastmath={"reassoc"} and nothing else: it lets LLVM split the sum into vector lanes,
# so the result differs from a sequential sum only in the order of the additions (as BLAS's and NumPy's
# pairwise sums differ from it too). No other fast-math liberty (no-NaN, contraction, approximate
# functions) is taken anywhere. Without it a sum waits on each add's latency (4 cycles); with it, it runs
# several adds per cycle (measured 0.05 ns per value instead of 0.93).
REDUCE = dict(JIT, fastmath={"reassoc"})


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


def bias_quick_gelu(f, b):
    """In place on f [N, F]: f = quick_gelu(f + b), rows shared among threads when f is big."""
    def gelu(chunks):
        for start, stop in chunks:
            bias_quick_gelu_kernel(f[start:stop], b)

    workers = workers_for(f.size * 8)  # the exp and division cost about as much as 8 multiply-adds
    in_parallel(gelu, split(f.shape[0], workers), workers)


def self_attention(x, w_attn, b_attn, w_proj, b_proj, n_head, scale, mask=None, cache=None, layer_idx=0,
                   need_weights=True):
    """Mirrors layers.self_attention: same arguments, same result; the weights [B, H, T, S] only when
    need_weights, else None. x [B, T, C] -> [B, T, C]."""
    a, weights = self_attention_unbiased(x, w_attn, b_attn, w_proj, n_head, scale, mask, cache, layer_idx,
                                         need_weights)  # [B*T, C]
    a += b_proj
    return a.reshape(x.shape), weights


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


# ---- attention drivers -----------------------------------------------------------------------------
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


# ---- decode steps ----------------------------------------------------------------------------------
# A decode step feeds few rows (batch x new positions) through every weight. For those steps the
# matmuls and the attention run on Numba's threads (simd.small_matmul, attention_rows_parallel) and BLAS
# is held to one thread: multi-threaded OpenBLAS keeps its threads spinning between calls, and beside
# Numba's threads that made a batch-8 iGPT-S step 2 to 4 times slower. One threading runtime for the
# whole step is what lets the attention use every core: batch-8 steps went from 31/58/77 ms to
# 28/33/47 ms at cache lengths 64/512/1000 (2 cores).
DECODE_ROWS = 1  # at most this many rows: everything on one thread (a single sequence; see blas_threads_for)
SMALL_ROWS = 16  # at most this many rows: a decode step (BLAS on one thread; Numba's threads when worth it)
ROW_SPLIT_MIN = 256  # at least this many rows: a matmul's rows shared among in_parallel's threads (matmul)
DECODE_PARALLEL_MIN_WORK = 1 << 20  # multiply-adds below which a decode section stays on one thread
DECODE_PARTS = 4  # blocks of K rows every decode-step matmul on Numba's kernels is split into, whatever the
# thread count (simd.matmul_parallel): so a step gives the same bits on 1 thread as on 2 or 16, and
# StepClock may pick the count by timing alone


def blas_threads_for(rows):
    """Single-threaded BLAS around a pass of the "cpu" device over `rows` positions where the device shares
    the matmuls out on its own threads: decode steps (at most SMALL_ROWS rows: Numba's) and passes of at
    least ROW_SPLIT_MIN rows (in_parallel's, see matmul). Between the two, BLAS keeps its own threads: for
    17 to 255 rows its two threads beat any split of ours (a batch-17 matmul: 0.54 ms against 0.86 ms
    splitting the columns, 0.94 ms the rows). A context manager.

    Decode steps: a one-row step is a chain of matrix-vector products bound by memory bandwidth, and two
    OpenBLAS threads meet at a barrier inside each of its ~100 products: on a machine where another job
    held a core, an iGPT-S step took 190 ms with 2 BLAS threads and 48 ms with one. Full forwards:
    OpenBLAS's threads spin for a while after each multi-threaded call, taking a core from the attention
    that follows: a layer's attention on 2 workers took 25 ms after a 2-thread matmul, 12 ms on its own.
    """
    controller = blas_controller() if rows <= SMALL_ROWS or rows >= ROW_SPLIT_MIN else None
    return controller.limit(limits=1, user_api="blas") if controller is not None else contextlib.nullcontext()


def decode_threads(rows, work):
    """Numba threads for a decode-step section of about `work` multiply-adds: one for a one-row step (as
    for BLAS: a single sequence is bandwidth bound, and a second thread stalls whenever another job holds
    a core) or a small section (a parallel launch costs about 10 us), else numba.get_num_threads()."""
    if rows <= DECODE_ROWS or work < DECODE_PARALLEL_MIN_WORK:
        return 1
    return numba.get_num_threads()


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


# ---- every block of a decode step, in one call -------------------------------------------------------
# Between its ~20 kernels, a block run from Python spent 100-150 us in the interpreter (views, small
# allocations, dispatch), and more in refilling the caches the kernels had swept. So when a decode
# step's sections run on Numba's threads, a block is one compiled function (decode_block_kernel) and the
# model calls it for all its layers from one more (decode_layers_kernel). Batch-8 iGPT-S steps at cache
# length 64 / 512 / 1000, interleaved A/B: block by block from Python 25.3 / 36.4 / 50.2 ms, one call
# per block 23.5 / 35.0 / 47.9, one call per step 21.6 / 32.9 / 46.9.
@njit(**JIT)
def _matmul_parts(a, w, parts):
    """simd.small_matmul(a, w, parts), callable from compiled code."""
    out = np.empty((a.shape[0], w.shape[1]), F32)
    simd.matmul_parallel(a, w, out, parts)
    return out


@njit(**JIT)
def decode_block_kernel(x, ln_1, w_attn, b_attn, w_proj, b_proj, ln_2, w_fc, b_fc, w_out, b_out, keys, values,
                        past, keep, eps, scale, parts):
    """Mirrors layers.transformer_block for one new position per row (quick_gelu, no cross-attention, no
    weights returned): x [B, C] -> [B, C]. Writes the new keys and values at position `past` of keys,
    values [B, H, >= past + 1, D] (a KVCache's buffers); keep [B, >= past + 1] as padding_keep makes it.
    The kernels and the order of operations of transformer_block's decode path, so the same bits where
    that path runs its matmuls on the kernels too: each in `parts` blocks of K (DECODE_PARTS), on however
    many threads Numba has (numba.set_num_threads), which changes the speed only."""
    B, C = x.shape
    H, D = keys.shape[1], keys.shape[3]
    h = np.empty((B, C), F32)
    layer_norm_kernel(x, ln_1, eps, h)
    qkv = _matmul_parts(h, w_attn, parts)  # [B, 3C]: q, k, v side by side, D columns per head in each
    q = np.empty((B, H, 1, D), F32)
    for b in range(B):  # + bias; q into its own array, k and v into the cache
        for hh in range(H):
            for d in range(D):
                i = hh * D + d
                q[b, hh, 0, d] = qkv[b, i] + b_attn[i]
                keys[b, hh, past, d] = qkv[b, C + i] + b_attn[C + i]
                values[b, hh, past, d] = qkv[b, 2 * C + i] + b_attn[2 * C + i]
    o = np.empty((B, 1, H, D), F32)  # merged heads
    attention_rows_parallel(q, keys, values, past + 1, scale, keep, o, np.empty((B, 0, 0, 0), F32), False)
    merged = np.empty((B, C), F32)
    for b in range(B):  # o as [B, C] (not o.reshape: Numba's reshape compares sizes in float64)
        for hh in range(H):
            for d in range(D):
                merged[b, hh * D + d] = o[b, 0, hh, d]
    a = _matmul_parts(merged, w_proj, parts)
    x1 = np.empty((B, C), F32)
    residual_layer_norm_kernel(x, a, b_proj, ln_2, eps, x1, h)  # x1 = x + (a + b); h = ln_2(x1)
    f = _matmul_parts(h, w_fc, parts)  # [B, F]
    bias_quick_gelu_kernel(f, b_fc)
    m = _matmul_parts(f, w_out, parts)  # [B, C]
    for b in range(B):
        for c in range(C):
            m[b, c] = x1[b, c] + (m[b, c] + b_out[c])  # the reference's order of additions
    return m


@njit(**JIT)
def decode_layers_kernel(x, ln_1, w_attn, b_attn, w_proj, b_proj, ln_2, w_fc, b_fc, w_out, b_out, keys, values,
                         past, keep, eps, scales, parts):
    """decode_block_kernel through several layers in turn. Each argument from ln_1 to values is a tuple
    with one entry per layer (in DECODE_BLOCK_FIELDS' order, then the KV cache buffers); scales[l] is
    layer l's attention scale. One call for a whole step: each return to Python between layers cost
    about 70 us, mostly the interpreter refilling the caches the kernels had swept."""
    for l in range(len(scales)):
        x = decode_block_kernel(x, ln_1[l], w_attn[l], b_attn[l], w_proj[l], b_proj[l], ln_2[l], w_fc[l], b_fc[l],
                                w_out[l], b_out[l], keys[l], values[l], past, keep, eps, scales[l], parts)
    return x


DECODE_BLOCK_FIELDS = ("ln_1", "w_attn", "b_attn", "w_attn_proj", "b_attn_proj", "ln_2", "w_fc", "b_fc",
                       "w_mlp_proj", "b_mlp_proj")  # layers.BlockWeights' fields, in decode_block_kernel's order


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


def fused_step_threads(work):
    """The most Numba threads a fused decode step whose largest matmul is `work` multiply-adds may use:
    numba.get_num_threads(), or 1 (no fused step: the Python path) for a model too small to repay them."""
    return numba.get_num_threads() if work >= DECODE_PARALLEL_MIN_WORK else 1


STEP_CLOCK = StepClock()  # one per process: what it learns about this machine's load serves every model


def _uniform_c_float32(arrays):
    """Whether these arrays are all C-contiguous float32 (what simd's vload reads) and typed alike by
    Numba, so that a tuple of them is uniform and indexable by a loop variable: the same ndim, all
    writable or all read-only, all aligned or not."""
    kind = (arrays[0].ndim, arrays[0].flags.writeable, arrays[0].flags.aligned)
    return all(a.dtype == F32 and a.flags.c_contiguous and (a.ndim, a.flags.writeable, a.flags.aligned) == kind
               for a in arrays)


# ==== the @njit kernels the functions above call =====================================================
# (the decode step's own kernels sit with decode_layers, above; the thread policy is in threads.py)
# ---- scalar helpers --------------------------------------------------------------------------------


@intrinsic(python=lambda bits: np.int32(bits).view(F32))
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (what `np.int32(...).view(np.float32)` would do)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(**JIT)
def _exp(x):
    """exp(x) for float32, branch-free so that loops calling it vectorise: libm's expf is a scalar call
    LLVM cannot vectorise (Numba would use Intel's SVML if installed; it is not a dependency). Measured
    0.7 ns instead of 2.7 ns per value.

    Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, 2^n built from
    its exponent bits. Relative error <= 2e-7 (libm: 6e-8). x is clamped to [-87.3, 88.3], so exp of
    anything below gives 1.2e-38 instead of 0 (callers that need an exact 0 select it themselves) and
    anything above gives 2.2e38 instead of inf.
    """
    x = min(max(x, F32(-87.3)), F32(88.3))
    n = np.floor(x * F32(1.44269504088896341) + F32(0.5))  # round(x / ln2)
    r = x - n * F32(0.693359375) - n * F32(-2.12194440e-4)  # ln2 split in two for an exact product
    p = F32(1.9875691500e-4)
    p = p * r + F32(1.3981999507e-3)
    p = p * r + F32(8.3334519073e-3)
    p = p * r + F32(4.1665795894e-2)
    p = p * r + F32(1.6666665459e-1)
    p = p * r + F32(5.0000001201e-1)
    p = p * r * r + r + F32(1.0)
    return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))  # p * 2^n




@njit(**REDUCE)
def _dot(a, b, n):
    """sum(a[:n] * b[:n]) in float32."""
    total = F32(0)
    for d in range(n):
        total += a[d] * b[d]
    return total


@njit(**REDUCE)
def _sum(a, n):
    """sum(a[:n]) in float32."""
    total = F32(0)
    for j in range(n):
        total += a[j]
    return total


@njit(**JIT)
def _max(a, n):
    """max(a[:n]) (-inf for n = 0). LLVM vectorised no form of this float max reduction (tried with the
    reassoc, nnan and nsz flags too), so 8 interleaved partial maxima: twice as fast as one chain."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = F32(-np.inf)
    stop = n - n % 8
    for j in range(0, stop, 8):
        a0 = max(a0, a[j])
        a1 = max(a1, a[j + 1])
        a2 = max(a2, a[j + 2])
        a3 = max(a3, a[j + 3])
        a4 = max(a4, a[j + 4])
        a5 = max(a5, a[j + 5])
        a6 = max(a6, a[j + 6])
        a7 = max(a7, a[j + 7])
    m = max(max(max(a0, a1), max(a2, a3)), max(max(a4, a5), max(a6, a7)))
    for j in range(stop, n):
        m = max(m, a[j])
    return m


@njit(**JIT)
def _softmax_row(s, n, scale, keep):
    """In place on a row of scores: s[:n] = softmax over the kept keys of s[:n] * scale (others 0).

    Mirrors `softmax(where(allowed, s * scale, MASK_MIN) + mask)` for a row that sees at least one kept
    key: a masked score is MASK_MIN below the max, and its exp underflows to exactly 0. Five passes over
    s[:n] (scale, max, exp, sum, divide), branch-free (selects), all but the max vectorised.
    """
    for j in range(n):
        s[j] = s[j] * scale if keep[j] else F32(-np.inf)
    m = _max(s, n)
    for j in range(n):
        s[j] = _exp(s[j] - m) if keep[j] else F32(0)
    total = _sum(s, n)
    for j in range(n):
        s[j] = s[j] / total


# ---- elementwise kernels ---------------------------------------------------------------------------
@njit(**JIT)
def layer_norm_kernel(x, w, eps, out):
    """Mirrors layers.layer_norm: out = x / sqrt(mean(x**2) + eps) * w, row by row.

    x, out [N, C]; w [C]. One pass to sum the squares, one to scale: each row (2 KiB at C = 512) is read
    twice from L1 and written once.
    """
    N, C = x.shape
    for i in range(N):
        r = np.sqrt(_dot(x[i], x[i], C) / F32(C) + eps)  # float32: eps is passed as np.float32
        for c in range(C):
            out[i, c] = x[i, c] / r * w[c]


@njit(**JIT)
def residual_layer_norm_kernel(x, y, b, w, eps, x_out, ln_out):
    """x_out = x + (y + b); ln_out = layer_norm(x_out, w). Mirrors `x = x + linear(...)` followed by the
    next layer_norm, in one pass over the rows instead of three.

    x, y, x_out, ln_out [N, C]; b, w [C]. Reads x and y once, writes x_out and ln_out once.
    """
    N, C = x.shape
    for i in range(N):
        for c in range(C):
            x_out[i, c] = x[i, c] + (y[i, c] + b[c])  # the reference's rounding order: bias first
        r = np.sqrt(_dot(x_out[i], x_out[i], C) / F32(C) + eps)
        for c in range(C):
            ln_out[i, c] = x_out[i, c] / r * w[c]


@njit(**JIT)
def bias_quick_gelu_kernel(h, b):
    """In place: h = quick_gelu(h + b) = y / (1 + exp(-1.702 y)), as layers.mlp computes on the fc output.

    h [N, F], b [F]. One read and one write of h (8 MiB per layer at T = 1024, F = 2048).
    """
    N, F = h.shape
    for i in range(N):
        for f in range(F):
            y = h[i, f] + b[f]
            h[i, f] = y / (F32(1.0) + _exp(F32(-1.702) * y))


@njit(**JIT)
def causal_softmax_kernel(s, scale, pos0, keep):
    """In place on one score block: the rows of layers.attention's `softmax(where(causal, s * scale,
    MASK_MIN) + mask)` for queries at absolute positions pos0, pos0 + 1, ...

    s [Q, K]: raw q @ k.T for Q query rows and the K keys up to the block's end; keep [K] (1 = key not
    padded). Row i sees keys j <= pos0 + i with keep[j]; every other entry becomes 0. The caller
    guarantees every row sees at least one key (rows that see none take the reference path).
    Loops rows; per row the five passes of _softmax_row over its visible keys (in L2), then zeroes the
    rest of the row.
    """
    Q, K = s.shape
    for i in range(Q):
        n = pos0 + i + 1  # keys this row may see (causal)
        _softmax_row(s[i], n, scale, keep)
        for j in range(n, K):  # (explicit loops: Numba's slice assignment is slow to compile)
            s[i, j] = F32(0)


# ---- decode-step attention -------------------------------------------------------------------------
PREFETCH_KEYS = 4  # how many keys (value rows) ahead the decode attention asks for the cache lines of:
# 5-10% faster at batch 8 (1, 2, 6, 8, 16, 32: less), as the CPU's own prefetcher stops at each 4 KiB
# page (16 keys of iGPT-S)


@njit(**JIT)
def _prefetch_row(x, j):
    """Hint the cache lines of row min(j, last) of x [rows, D] (64-byte lines: 16 floats each)."""
    j = min(j, x.shape[0] - 1)
    for d in range(0, x.shape[1], 16):
        simd.vprefetch(x, j, d)


@njit(**JIT)
def _attend_rows(q, k, v, S, scale, keep, out, weights, need_weights, b, h, s, acc):
    """attention_rows_kernel's work for one (batch row b, head h); s [>= S] and acc [D] are scratch."""
    T, D = q.shape[2], q.shape[3]
    kb, vb = k[b, h], v[b, h]  # [>= S, D] each: row views hoisted out of the loops
    for i in range(T):
        n = S - T + i + 1
        qi = q[b, h, i]
        for j in range(n):
            _prefetch_row(kb, j + PREFETCH_KEYS)
            s[j] = _dot(qi, kb[j], D)  # q @ k.T; scaled inside the softmax
        _softmax_row(s, n, scale, keep[b])
        for d in range(D):
            acc[d] = F32(0)
        for j in range(n):  # masked keys have weight exactly 0, as in weights @ v
            _prefetch_row(vb, j + PREFETCH_KEYS)
            wj, vj = s[j], vb[j]
            for d in range(D):
                acc[d] += wj * vj[d]
        for d in range(D):
            out[b, i, h, d] = acc[d]
        if need_weights:  # (explicit loops: Numba's slice assignment is slow to compile)
            for j in range(S):
                weights[b, h, i, j] = s[j] if j < n else F32(0)


@njit(**JIT)
def attention_rows_kernel(q, k, v, S, scale, keep, out, weights, need_weights):
    """Mirrors layers.attention (causal, padding mask) one query row at a time; for decode steps.

    q [B, H, T, D]: the new positions S - T .. S - 1; k, v [B, H, >= S, D]: keys and values, of which
    the first S are used (the KV cache's whole buffer can be passed); keep [B, >= S]; out [B, T, H, D]
    (merged heads); weights [B, H, T, S] when need_weights, else unused. All C-contiguous, so that the
    loops over D see unit strides and vectorise.
    Loops b, h, row; per row: scores against the n = S - T + row + 1 visible keys, softmax, then
    out = sum_j w_j v_j. Reads each visible key and value once per row (for a decode step, the whole
    cache once: the minimum for attention) and keeps the scores in a [S] scratch row.
    """
    B, H, T, D = q.shape
    s = np.empty(S, np.float32)
    acc = np.empty(D, np.float32)
    for b in range(B):
        for h in range(H):
            _attend_rows(q, k, v, S, scale, keep, out, weights, need_weights, b, h, s, acc)


@njit(parallel=True, **JIT)
def attention_rows_parallel(q, k, v, S, scale, keep, out, weights, need_weights):
    """attention_rows_kernel with the B * H (batch row, head) pairs shared among Numba's threads."""
    B, H, T, D = q.shape
    for bh in prange(B * H):
        _attend_rows(q, k, v, S, scale, keep, out, weights, need_weights, bh // H, bh % H,
                     np.empty(S, np.float32), np.empty(D, np.float32))
