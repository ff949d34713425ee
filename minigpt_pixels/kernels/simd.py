"""Eight-lane float32 vectors for Numba, and the small-batch matmul built from them.

Why this exists: a decode step multiplies a few rows (one per sequence in the batch) by every weight
matrix. BLAS's GEMM first copies ("packs") each weight matrix into its own tile layout, which for a
few rows costs about as much as the multiplication, and multi-threaded OpenBLAS keeps its own threads
spinning between calls, which stalls Numba's threads running the attention beside it. `small_matmul`
reads the weights once, in place, on Numba's threads, so the whole decode step shares one thread pool.

Numba has no vector type, and LLVM's loop vectoriser cannot keep a tile of accumulators in registers
(its SLP vectoriser, which could, is off in Numba). So `f32x8` is a Numba type that *is* LLVM's
<8 x float>, with a few operations: vzero, vsplat (a scalar in every lane), vload / vstore (eight
consecutive floats of a 2-D array's row) and vfma (a * b + c, rounded once, as BLAS's kernels compute
it); vprefetch is a hint to the cache. On x86 with AVX2 each is one instruction; elsewhere LLVM
lowers them to what the CPU has. None checks bounds: the kernels' callers check shapes first.

Float32 only, as in kernels/cpu_loops.py; results agree with `a @ w` to float32 rounding. K is cut into
`parts` blocks; the additions run in the plain order, k = 0, 1, 2, ..., within each block, and the
blocks' partial sums are then added in block order. So a result depends on `parts`, never on how many
threads run the blocks, nor on timing.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.datamodel import models, register_default

from .compile_cache import intrinsic, njit  # numba's, cached on disk / with a Python twin for NUMBA_DISABLE_JIT

F32 = np.float32
LANES = 8
_VEC = ir.VectorType(ir.FloatType(), LANES)


class Float32x8(types.Type):
    """Eight float32 lanes held in one register (a ymm register with AVX2)."""
    def __init__(self):
        super().__init__(name="float32x8")


f32x8 = Float32x8()


@register_default(Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _row_pointer(context, builder, arrty, arr, i, j):
    """Address of arr[i, j] as a <8 x float>*; the caller guarantees j + 8 <= arr.shape[1]."""
    a = context.make_array(arrty)(context, builder, arr)
    ptr = cgutils.get_item_pointer(context, builder, arrty, a, [i, j], wraparound=False)
    return builder.bitcast(ptr, _VEC.as_pointer())


def _check_row_array(arr):
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == types.float32 and arr.layout == "C"):
        raise numba.TypingError(f"expected a C-contiguous 2-D float32 array, got {arr}")


@intrinsic(python=lambda: np.zeros(LANES, F32))
def vzero(typingctx):
    """[0, 0, 0, 0, 0, 0, 0, 0]"""
    def codegen(context, builder, signature, args):
        return ir.Constant(_VEC, [0.0] * LANES)
    return f32x8(), codegen


@intrinsic(python=lambda x: np.full(LANES, x, F32))
def vsplat(typingctx, x):
    """[x, x, x, x, x, x, x, x] for a float32 x."""
    if x != types.float32:
        raise numba.TypingError(f"vsplat takes a float32, got {x}")

    def codegen(context, builder, signature, args):
        one = builder.insert_element(ir.Constant(_VEC, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        return builder.shuffle_vector(one, ir.Constant(_VEC, ir.Undefined), zeros)
    return f32x8(x), codegen


@intrinsic(python=lambda arr, i, j: arr[i, j:j + LANES].copy())
def vload(typingctx, arr, i, j):
    """arr[i, j:j + 8] for a C-contiguous 2-D float32 array (no bounds check: j + 8 <= arr.shape[1])."""
    _check_row_array(arr)

    def codegen(context, builder, signature, args):
        return builder.load(_row_pointer(context, builder, signature.args[0], *args), align=4)
    return f32x8(arr, i, j), codegen


@intrinsic(python=lambda arr, i, j, v: np.copyto(arr[i, j:j + LANES], v))
def vstore(typingctx, arr, i, j, v):
    """arr[i, j:j + 8] = v (no bounds check: j + 8 <= arr.shape[1])."""
    _check_row_array(arr)

    def codegen(context, builder, signature, args):
        builder.store(args[3], _row_pointer(context, builder, signature.args[0], args[0], args[1], args[2]), align=4)
        return context.get_dummy_value()
    return types.void(arr, i, j, f32x8), codegen


@intrinsic(python=lambda a, b, c: (a.astype(np.float64) * b + c).astype(F32))
def vfma(typingctx, a, b, c):
    """a * b + c in each lane, rounded once (llvm.fma: one vfmadd instruction with FMA3)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v8f32")
        return builder.call(fn, args)
    return f32x8(f32x8, f32x8, f32x8), codegen


@intrinsic(python=lambda arr, i, j: None)
def vprefetch(typingctx, arr, i, j):
    """Ask the CPU to start loading the cache line holding arr[i, j] (llvm.prefetch: a hint, no result,
    never faults; same array rules as vload)."""
    _check_row_array(arr)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        ptr = builder.bitcast(_row_pointer(context, builder, signature.args[0], *args), i8p)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # read, keep, data
        return context.get_dummy_value()
    return types.void(arr, i, j), codegen


# ---- the small-batch matmul ---------------------------------------------------------------------
COLUMN_TILE = 2048  # columns per tile: iGPT-S's rows of w whole (runs of 8 KiB, 4-6% faster than 2 KiB
# tiles); a tile's accumulators (8 rows x 2048 x 4 B = 64 KiB) stay in L2
PREFETCH_ROWS = 8  # how far ahead in w the row pairs prefetch (4 and 12 measured slower, 16 much slower)


@njit(nogil=True, error_model="numpy")
def matmul_columns_kernel(a, w, out, c0, c1):
    """out[:, c0:c1] = a @ w[:, c0:c1]. a [M, K], w [K, N], out [M, N]: C-contiguous float32.

    Column tile by column tile, 4 rows of w at a time (k .. k + 3): each weight row segment is read
    from memory once and used for every row of a, two rows of a at a time so that each loaded vector of
    w feeds two FMAs. The accumulators live in a contiguous scratch tile, not in `out`: rows of `out`
    are N floats apart, and for N a power of two they would all compete for the same L1 cache sets.
    While a row pair computes, it prefetches a row of w PREFETCH_ROWS rows ahead (with 4 pairs, the
    whole 4-row step that far ahead): iGPT-S's 96 matmuls at batch 8 took 15.5 ms on 2 threads with it,
    21 ms without (measured when threads split the columns; see matmul_parallel).
    """
    M, K = a.shape
    acc = np.empty((M, COLUMN_TILE), F32)
    vector_end = c0 + (c1 - c0) // LANES * LANES
    for n0 in range(c0, vector_end, COLUMN_TILE):
        width = min(COLUMN_TILE, vector_end - n0)
        for m in range(M):
            for n in range(0, width, LANES):
                vstore(acc, m, n, vzero())
        k = 0
        while k + 4 <= K:  # acc[m] += a[m, k:k + 4] @ w[k:k + 4, tile]
            m = 0
            while m + 2 <= M:
                ahead = min(k + PREFETCH_ROWS + m // 2 % 4, K - 1)  # pair p fetches row k + 8 + p of w
                s0, s1, s2, s3 = vsplat(a[m, k]), vsplat(a[m, k + 1]), vsplat(a[m, k + 2]), vsplat(a[m, k + 3])
                t0, t1, t2, t3 = (vsplat(a[m + 1, k]), vsplat(a[m + 1, k + 1]), vsplat(a[m + 1, k + 2]),
                                  vsplat(a[m + 1, k + 3]))
                for n in range(0, width, LANES):
                    vprefetch(w, ahead, n0 + n)
                    w0, w1 = vload(w, k, n0 + n), vload(w, k + 1, n0 + n)
                    w2, w3 = vload(w, k + 2, n0 + n), vload(w, k + 3, n0 + n)
                    x = vfma(s0, w0, vload(acc, m, n))
                    y = vfma(t0, w0, vload(acc, m + 1, n))
                    x, y = vfma(s1, w1, x), vfma(t1, w1, y)
                    x, y = vfma(s2, w2, x), vfma(t2, w2, y)
                    x, y = vfma(s3, w3, x), vfma(t3, w3, y)
                    vstore(acc, m, n, x)
                    vstore(acc, m + 1, n, y)
                m += 2
            if m < M:  # an odd last row
                s0, s1, s2, s3 = vsplat(a[m, k]), vsplat(a[m, k + 1]), vsplat(a[m, k + 2]), vsplat(a[m, k + 3])
                for n in range(0, width, LANES):
                    x = vfma(s0, vload(w, k, n0 + n), vload(acc, m, n))
                    x = vfma(s1, vload(w, k + 1, n0 + n), x)
                    x = vfma(s2, vload(w, k + 2, n0 + n), x)
                    x = vfma(s3, vload(w, k + 3, n0 + n), x)
                    vstore(acc, m, n, x)
            k += 4
        while k < K:  # K not a multiple of 4: the last rows of w one at a time
            for m in range(M):
                s0 = vsplat(a[m, k])
                for n in range(0, width, LANES):
                    vstore(acc, m, n, vfma(s0, vload(w, k, n0 + n), vload(acc, m, n)))
            k += 1
        for m in range(M):
            for n in range(0, width, LANES):
                vstore(out, m, n0 + n, vload(acc, m, n))
    for m in range(M):  # the last (c1 - c0) % 8 columns, one float at a time, in the same order along K
        for n in range(vector_end, c1):
            total = F32(0)
            for k in range(K):
                total += a[m, k] * w[k, n]
            out[m, n] = total


@njit(parallel=True, nogil=True, error_model="numpy")
def matmul_parallel(a, w, out, parts):
    """out = a @ w with the rows of w cut into `parts` blocks, shared among Numba's threads (as many as
    numba.get_num_threads(); shapes unchecked: see small_matmul).

    Block t is a contiguous block of rows w[k0:k1] with the matching columns a[:, k0:k1]: its partial
    product a[:, k0:k1] @ w[k0:k1] covers every column; the partials are then summed in block order.
    Numba gives each thread a contiguous run of blocks, so each streams one stretch of memory: iGPT-S's
    96 matmuls at batch 8 took 7-15% less time than with each thread a range of columns (every weight
    row read in pieces, one per thread).
    """
    M, K = a.shape
    N = w.shape[1]
    bounds = np.empty(parts + 1, np.int64)  # row ranges, computed outside the prange: inside it the loop
    for t in range(parts):  # index is unsigned, and int64 arithmetic with it would go through float64
        bounds[t] = K // 4 * t // parts * 4  # multiples of 4: the kernel's step along K
    bounds[parts] = K  # the last thread also takes the K % 4 last rows
    partial = np.empty((parts, M, N), F32)
    for t in prange(parts):
        k0, k1 = bounds[t], bounds[t + 1]
        matmul_columns_kernel(np.ascontiguousarray(a[:, k0:k1]), w[k0:k1], partial[t], 0, N)
    for m in range(M):  # out = partial[0] + partial[1] + ..., a row at a time (unit strides: vectorised)
        for n in range(N):
            out[m, n] = partial[0, m, n]
        for t in range(1, parts):
            for n in range(N):
                out[m, n] += partial[t, m, n]


def small_matmul(a, w, parts=1):
    """a @ w for a few rows: a [M, K] @ w [K, N] -> [M, N] float32, K cut into `parts` blocks of rows of
    w, shared among Numba's threads (parts=1: on the calling thread). Mirrors `a @ w`. Weights that are
    not C-contiguous float32 are copied first (the model's never are: weights.py maps them as
    C-contiguous float32)."""
    a, w = np.asarray(a), np.asarray(w)
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0]:
        raise ValueError(f"small_matmul: shapes {a.shape} @ {w.shape} do not multiply; expected [M, K] @ [K, N]")
    if int(parts) < 1:
        raise ValueError(f"small_matmul: parts must be >= 1, got {parts}")
    a = np.ascontiguousarray(a, dtype=F32)
    w = np.ascontiguousarray(w, dtype=F32)  # no copy for C-contiguous float32, memory maps included
    out = np.empty((a.shape[0], w.shape[1]), F32)
    if parts > 1:
        matmul_parallel(a, w, out, int(parts))
    else:
        matmul_columns_kernel(a, w, out, 0, w.shape[1])
    return out
