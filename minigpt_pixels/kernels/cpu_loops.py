"""The "cpu" device's compiled loops: every @njit body that kernels/cpu.py (inference) calls, and the
scalar helpers kernels/cpu_train.py (training) builds on. Read cpu.py first: it says which layers.py
function each loop serves and when it runs; this file only says how the loop computes it.

In layers.py's order, after the scalar helpers they share:

    _exp, _dot, _sum, _max, _softmax_row   float32 scalar helpers, written so the loops calling them vectorise
    layer_norm_kernel                      layers.layer_norm, row by row
    residual_layer_norm_kernel             x + (y + b), then the next layer_norm, in one pass
    bias_quick_gelu_kernel                 mlp's fc bias and quick_gelu, in place
    causal_softmax_kernel                  layers.attention's masked softmax, on one block of query rows
    attention_rows_kernel / _parallel      layers.attention one query row at a time (decode steps)
    decode_block_kernel                    layers.transformer_block for one new position per row
    decode_layers_kernel                   decode_block_kernel through every layer: a decode step in one call

Float32 only: float32 inputs, constants and accumulators, so nothing is promoted to float64 (the tests
check the compiled kernels' assembly for double-precision instructions). Two liberties, both documented
where taken: a polynomial exp (`_exp`, 2e-7 relative error) because libm's cannot vectorise, and
reassociated float sums (`REDUCE`) so that reductions vectorise.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils

from . import simd
from .compile_cache import intrinsic, njit  # numba's, cached on disk / with a Python twin for NUMBA_DISABLE_JIT

F32 = np.float32

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


# ---- scalar helpers --------------------------------------------------------------------------------
@intrinsic(python=lambda bits: np.int32(bits).view(F32))
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (what `np.int32(...).view(np.float32)` would do)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic(python=lambda a, b, c: F32(np.float64(a) * np.float64(b) + np.float64(c)))
def _fma(typingctx, a, b, c):
    """a * b + c for float32s, rounded once (llvm.fma: one vfmadd with FMA3, and LLVM's vectoriser turns it
    into the vector instruction). The Python twin rounds twice, through float64."""
    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
        return builder.call(fn, args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(**JIT)
def _exp(x):
    """exp(x) for float32, branch-free so that loops calling it vectorise: libm's expf is a scalar call
    LLVM cannot vectorise (Numba would use Intel's SVML if installed; it is not a dependency). Measured
    0.7 ns instead of 2.7 ns per value.

    Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, 2^n built from
    its exponent bits. Relative error <= 2e-7 (libm: 6e-8). x is clamped to [-87.3, 88.3], so exp of
    anything below gives 1.2e-38 instead of 0 (callers that need an exact 0 select it themselves) and
    anything above gives 2.2e38 instead of inf. The multiply-adds are fused (_fma): 19 operations instead
    of 27, and the exp bounds the attention's softmax and quick_gelu.
    """
    x = min(max(x, F32(-87.3)), F32(88.3))
    n = np.floor(_fma(x, F32(1.44269504088896341), F32(0.5)))  # round(x / ln2)
    r = _fma(n, F32(2.12194440e-4), _fma(n, F32(-0.693359375), x))  # x - n ln2, ln2 = 0.693359375 - 2.12194440e-4
    p = F32(1.9875691500e-4)
    p = _fma(p, r, F32(1.3981999507e-3))
    p = _fma(p, r, F32(8.3334519073e-3))
    p = _fma(p, r, F32(4.1665795894e-2))
    p = _fma(p, r, F32(1.6666665459e-1))
    p = _fma(p, r, F32(5.0000001201e-1))
    p = _fma(p * r, r, r) + F32(1.0)
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


# ---- layer norm ------------------------------------------------------------------------------------
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


# ---- mlp -------------------------------------------------------------------------------------------
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


# ---- attention: the blocked path's softmax, the decode step's rows -----------------------------------
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
    values [B, H, >= past + 1, D] (a KVCache's buffers); keep [B, >= past + 1] as cpu.padding_keep makes it.
    The kernels and the order of operations of cpu.transformer_block's decode path, so the same bits where
    that path runs its matmuls on the kernels too: each in `parts` blocks of K (cpu.DECODE_PARTS), on however
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
    with one entry per layer (in cpu.DECODE_BLOCK_FIELDS' order, then the KV cache buffers); scales[l] is
    layer l's attention scale. One call for a whole step: each return to Python between layers cost
    about 70 us, mostly the interpreter refilling the caches the kernels had swept."""
    for l in range(len(scales)):
        x = decode_block_kernel(x, ln_1[l], w_attn[l], b_attn[l], w_proj[l], b_proj[l], ln_2[l], w_fc[l], b_fc[l],
                                w_out[l], b_out[l], keys[l], values[l], past, keep, eps, scales[l], parts)
    return x
