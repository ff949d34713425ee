"""Numba CUDA kernels for ImageGPT, each mirroring the layers.py function it replaces, in layers.py's
order: per op, the kernel (or its cached factory), its launcher, then its checked wrapper.

    embedding             layers.embedding without token types: two table rows added per position
    layer_norm            layers.layer_norm, one block per row
    linear, matmul        layers.linear (x @ w + b), tiled through shared memory, register-blocked,
                          with bias, activation and residual add fused into the epilogue; a skinny
                          kernel for the few rows of a decode step
    causal_attention      layers.attention(q, k, v, scale, causal=True)[0], flash-style: scores, mask,
                          online softmax and the weighted sum in one kernel, no [T, S] matrix
    decode_attention      the same for one new query against the KV cache (sampling)
    append_kv             self_attention's KV cache update: the new keys and values into the device cache
    quick_gelu, add, softmax
                          NOT launched by the model (cuda_model.py fuses the first two into linear's
                          epilogue; sampling's softmax runs on the host): the block at the end says why
                          they are kept

Device plumbing (errors, tile sizes, allocation, transfers, conversions) is in cuda_device.py; the names
callers use are re-exported here. Shapes use the legend of layers.py (B, T, P, S, C, H, D, F, V). Conventions:
- Host arrays in, host arrays out. Device arrays in (numba device arrays, or anything with the CUDA
  array interface, e.g. torch CUDA tensors), a device array out: the model chains calls without
  round trips. Host inputs are converted to contiguous float32; device inputs must already be float32.
- Every kernel is float32 end to end: constants are np.float32 globals and scalars are passed as
  np.float32, so nothing promotes to float64 (tests/test_kernels_ptx.py checks the PTX for `.f64`).
- Kernels are compiled lazily (no eager signature), so importing this module never needs a GPU, and
  cached on disk (cache=True: Numba's cache, in NUMBA_CACHE_DIR, beside this file or per user, see
  compile_cache.py), so a later process loads them instead of compiling. Their code comes from this
  file alone, so Numba's own check of this file's contents is enough to catch an edit.
  Tile and block sizes are compile-time constants baked in by small cached factories
  (`*_kernel(...)`); the defaults (cuda_device.py) are for a real GPU, and every wrapper takes
  overrides so the simulator tests can run small tiles.
- `launch_*` functions are the unchecked launchers the model runner (cuda_model.py) calls: device
  arrays in, the output written into `out`. The public wrappers check and convert, then call them.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float32

from .. import layers
from .cuda_device import (ATTENTION_TILES, ATTENTION_TILES_SMALL, DECODE_TILES, ELEMENTWISE_MAX_BLOCKS,
                          ELEMENTWISE_THREADS, MATMUL_TILES, MATMUL_TILES_SMALL, ROW_THREADS, SKINNY_MAX_ROWS,
                          SKINNY_TILES, AttentionTiles, DecodeTiles, MatmulTiles, SkinnyTiles, as_flat, as_rows,
                          check_out, check_threads, device_float32, finish, is_device_array, n_blocks,
                          require_cuda, sm_count, to_device)
from .cuda_device import (CudaUnavailableError, DeviceMemoryError, device_empty, permute,  # noqa: F401
                          small_grids_expected)  # re-exported: cuda_model.py, sample.py and the tests use cuda.X


F32 = np.float32
ZERO, HALF, ONE = F32(0.0), F32(0.5), F32(1.0)
NEG_INF = F32(-np.inf)
QUICK_GELU_K = F32(-1.702)  # quick_gelu(x) = x / (1 + exp(-1.702 x))
GELU_NEW_C, GELU_NEW_K = F32(np.sqrt(2.0 / np.pi)), F32(0.044715)
INV_SQRT2 = F32(1.0 / np.sqrt(2.0))

# config.activation_function -> the code the fused epilogue switches on (0: no activation)
ACTIVATIONS = {None: 0, "quick_gelu": 1, "relu": 2, "tanh": 3, "gelu_new": 4, "gelu": 5}

MAX_HEAD_DIM = 128  # the attention kernels keep a query row and its accumulator in registers


# ---- what the kernels share: device functions and the element-wise launch grid ---------------------
@cuda.jit(device=True)
def _activate(x, act):
    """The activation named by ACTIVATIONS code `act`, as layers.activation computes it."""
    if act == 1:  # quick_gelu: OpenAI's "gelu2"
        return x / (ONE + math.exp(QUICK_GELU_K * x))
    if act == 2:
        return max(x, ZERO)
    if act == 3:
        return math.tanh(x)
    if act == 4:  # gelu_new: the tanh approximation
        return HALF * x * (ONE + math.tanh(GELU_NEW_C * (x + GELU_NEW_K * x * x * x)))
    if act == 5:  # exact GELU (erf); layers.py uses a float32-accurate rational erf, equal within 2e-7
        return HALF * x * (ONE + math.erf(x * INV_SQRT2))
    return x


@cuda.jit(device=True)
def _block_sum(red, value):
    """Sum `value` over the block through shared `red` [blockDim.x] (a power of two); every thread gets it."""
    tid = cuda.threadIdx.x
    red[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            red[tid] += red[tid + stride]
        cuda.syncthreads()
        stride //= 2
    total = red[0]
    cuda.syncthreads()  # everyone has read red[0] before the caller reuses red
    return total


@cuda.jit(device=True)
def _block_max(red, value):
    """Like _block_sum, for the maximum."""
    tid = cuda.threadIdx.x
    red[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            red[tid] = max(red[tid], red[tid + stride])
        cuda.syncthreads()
        stride //= 2
    total = red[0]
    cuda.syncthreads()
    return total


def _elementwise_grid(n, threads):
    """(blocks, threads) for a grid-stride loop over n elements: `threads` a block (ELEMENTWISE_THREADS by
    default), at most ELEMENTWISE_MAX_BLOCKS blocks."""
    return min(n_blocks(n, threads), ELEMENTWISE_MAX_BLOCKS), threads  # grid-stride loops cover the rest


# ---- embedding (layers.embedding) -------------------------------------------------------------------
@cuda.jit(cache=True)
def embedding_kernel(ids, positions, wte, wpe, out):
    """out[r] = wte[ids[r]] + wpe[positions[r]] for rows r = b * T + t of out [rows, C]. Launch: 1-D
    grid-stride over rows * C (_elementwise_grid); no shared memory; two table rows read per output row
    written."""
    C = out.shape[1]
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        r, c = i // C, i % C
        out[r, c] = wte[ids[r], c] + wpe[positions[r], c]


def launch_embedding(ids, positions, wte, wpe, out, threads=None):
    """Device arrays ids, positions [rows] int, wte [vocab, C], wpe [n_positions, C], out [rows, C]."""
    embedding_kernel[_elementwise_grid(out.size, threads or ELEMENTWISE_THREADS)](ids, positions, wte, wpe, out)
    return out


def _check_index_array(name, ids, upper, shape=None):
    arr = np.asarray(ids)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if shape is not None:
        try:
            arr = np.broadcast_to(arr, shape)
        except ValueError:
            raise ValueError(f"{name} has shape {arr.shape}, which does not broadcast to {shape}") from None
    if arr.size and (arr.min() < 0 or arr.max() >= upper):  # the kernel would read outside the table
        raise ValueError(f"{name} must be in [0, {upper}), got values in [{arr.min()}, {arr.max()}]")
    return arr


def embedding(input_ids, wte, wpe, position_ids, threads=None):
    """layers.embedding without token_type_ids: wte[input_ids] + wpe[position_ids], ids [B, T] -> [B, T, C]."""
    require_cuda()
    on_device = any(is_device_array(t) for t in (wte, wpe))
    wte, wpe = device_float32(wte, "wte"), device_float32(wpe, "wpe")
    if wte.ndim != 2 or wpe.ndim != 2 or wte.shape[1] != wpe.shape[1]:
        raise ValueError(f"embedding: wte {tuple(wte.shape)} and wpe {tuple(wpe.shape)} must be [*, C] tables")
    ids = _check_index_array("input_ids", input_ids, wte.shape[0])
    positions = _check_index_array("position_ids", position_ids, wpe.shape[0], ids.shape)
    out = device_empty(ids.shape + (wte.shape[1],))
    if ids.size:
        launch_embedding(to_device(ids.reshape(-1), np.int32), to_device(positions.reshape(-1), np.int32),
                         wte, wpe, out.reshape(ids.size, wte.shape[1]), threads)
    return finish(out, on_device)


# ---- layer_norm (layers.layer_norm) -----------------------------------------------------------------
@functools.cache
def layer_norm_kernel(nthreads: int):
    """out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight: ImageGPT's norm, no mean, no bias.

    Launch: grid (rows,), block of nthreads (a power of two). Shared memory: nthreads floats.
    Traffic: x read twice (the second read mostly from L1/L2), out written once.
    """
    @cuda.jit(cache=True)
    def kernel(x, weight, out, eps):
        r, tid = cuda.blockIdx.x, cuda.threadIdx.x
        C = x.shape[1]
        red = cuda.shared.array(nthreads, float32)
        ss = ZERO
        for c in range(tid, C, nthreads):
            ss += x[r, c] * x[r, c]
        denom = math.sqrt(_block_sum(red, ss) / float32(C) + eps)
        for c in range(tid, C, nthreads):
            out[r, c] = x[r, c] / denom * weight[c]

    return kernel


def launch_layer_norm(x, weight, out, eps, threads=None):
    """Device arrays x, out [rows, C], weight [C]; no checks."""
    threads = threads or ROW_THREADS
    layer_norm_kernel(threads)[x.shape[0], threads](x, weight, out, F32(eps))
    return out


def layer_norm(x, weight, eps=1e-5, out=None, threads=None):
    """layers.layer_norm: x [..., C] / sqrt(mean(x^2) + eps) * weight [C]."""
    require_cuda()
    on_device = any(is_device_array(t) for t in (x, weight))
    x, weight = device_float32(x, "x"), device_float32(weight, "weight")
    if x.ndim < 1 or weight.ndim != 1 or x.shape[x.ndim - 1] != weight.shape[0]:
        raise ValueError(f"layer_norm: x {tuple(x.shape)} and weight {tuple(weight.shape)} must be [..., C] and [C]")
    out = check_out(out, tuple(x.shape))
    x2 = as_rows(x, "x")
    if x2.size:
        launch_layer_norm(x2, weight, out.reshape(x2.shape), eps, check_threads(threads or ROW_THREADS))
    return finish(out, on_device)


# ---- linear (layers.linear: the matmuls of attention, the mlp and the LM head) ----------------------
@functools.cache
def matmul_kernel(tiles: MatmulTiles):
    """out[M, N] = residual + act(a[M, K] @ b[K, N] + bias), for M larger than a few rows.

    Launch: grid (ceil(N / bn), ceil(M / bm)), block of (bm / tm) * (bn / tn) threads (256 by default).
    Shared memory: a [bk, bm + 4] and b [bk, bn] tile, 8.3 KB at the defaults.
    Registers: the [tm, tn] accumulator and tm + tn fragments; each k costs tm + tn shared loads for
    tm * tn FMAs (16 for 64). (The epilogue, too big to unroll with its activation branches, reads the
    accumulator back once through 256 bytes of local memory.)
    Traffic: each block reads bm x K of a and K x bn of b once, so a is read N / bn times and b
    M / bm times, and writes its [bm, bn] tile once (reading residual there if given).
    Thread (ty, tx) owns rows ty + i * (bm / tm) and columns tx + j * (bn / tn): strided rather than
    contiguous ownership, so a warp's shared loads hit distinct banks (or broadcast) and its global
    stores are coalesced.
    """
    bm, bn, bk, tm, tn = tiles
    if bm % tm or bn % tn:
        raise ValueError(f"{tiles}: bm must be a multiple of tm and bn of tn")
    threads_m, threads_n = bm // tm, bn // tn
    nthreads = threads_m * threads_n
    a_width = bm + 4  # a's tile is stored transposed; padding its rows spreads the transposing stores over banks

    @cuda.jit(cache=True)
    def kernel(a, b, bias, residual, out, act):
        M, K = a.shape
        N = b.shape[1]
        a_tile = cuda.shared.array((bk, a_width), float32)  # a_tile[k, m] = a[row0 + m, k0 + k]
        b_tile = cuda.shared.array((bk, bn), float32)
        acc = cuda.local.array((tm, tn), float32)  # registers: every index is constant once unrolled
        a_frag = cuda.local.array(tm, float32)
        b_frag = cuda.local.array(tn, float32)
        tid = cuda.threadIdx.x
        ty, tx = tid // threads_n, tid % threads_n
        row0, col0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = ZERO

        for k0 in range(0, K, bk):  # ceil(K / bk) tiles; the last one zero-padded
            for idx in range(tid, bm * bk, nthreads):  # consecutive threads read consecutive k of a row
                m, kk = idx // bk, idx % bk
                r, c = row0 + m, k0 + kk
                a_tile[kk, m] = a[r, c] if r < M and c < K else ZERO
            for idx in range(tid, bk * bn, nthreads):  # consecutive threads read consecutive columns
                kk, n = idx // bn, idx % bn
                r, c = k0 + kk, col0 + n
                b_tile[kk, n] = b[r, c] if r < K and c < N else ZERO
            cuda.syncthreads()  # the tiles are complete
            for kk in range(bk):
                for i in range(tm):
                    a_frag[i] = a_tile[kk, ty + i * threads_m]
                for j in range(tn):
                    b_frag[j] = b_tile[kk, tx + j * threads_n]
                for i in range(tm):
                    for j in range(tn):
                        acc[i, j] += a_frag[i] * b_frag[j]
            cuda.syncthreads()  # everyone is done reading before the next tile overwrites

        for i in range(tm):  # the epilogue: bias, activation, residual, one store per output
            r = row0 + ty + i * threads_m
            for j in range(tn):
                c = col0 + tx + j * threads_n
                if r < M and c < N:
                    y = acc[i, j]
                    if bias is not None:
                        y += bias[c]
                    y = _activate(y, act)
                    if residual is not None:
                        y = residual[r, c] + y
                    out[r, c] = y

    return kernel


@functools.cache
def skinny_matmul_kernel(tiles: SkinnyTiles):
    """The same product and epilogue for few rows (decode steps, M = batch): memory-bound on b.

    Launch: grid (ceil(N / cols), ceil(M / rows)), block of cols * splits threads (256 by default).
    Shared memory: the partial sums [splits, rows, cols], 8 KB at the defaults.
    Traffic: b is read exactly once, each warp streaming whole 128-byte rows of it; a's element
    for a warp is one broadcast load (every lane of a warp shares its k).
    """
    cols, splits, rows = tiles

    @cuda.jit(cache=True)
    def kernel(a, b, bias, residual, out, act):
        M, K = a.shape
        N = b.shape[1]
        partial = cuda.shared.array((splits, rows, cols), float32)
        acc = cuda.local.array(rows, float32)
        tid = cuda.threadIdx.x
        col, split = tid % cols, tid // cols
        c = cuda.blockIdx.x * cols + col
        row0 = cuda.blockIdx.y * rows
        n_rows = min(rows, M - row0)
        for i in range(rows):
            acc[i] = ZERO
        if c < N:
            for k in range(split, K, splits):
                w = b[k, c]
                for i in range(rows):
                    if i < n_rows:
                        acc[i] += a[row0 + i, k] * w
        for i in range(rows):
            partial[split, i, col] = acc[i]
        cuda.syncthreads()
        if split == 0 and c < N:
            for i in range(n_rows):
                y = ZERO
                for s in range(splits):
                    y += partial[s, i, col]
                if bias is not None:
                    y += bias[c]
                y = _activate(y, act)
                if residual is not None:
                    y = residual[row0 + i, c] + y
                out[row0 + i, c] = y

    return kernel


def launch_linear(x, w, b, out, act=0, residual=None, tiles=None, skinny=None):
    """out [M, N] = residual + act(x [M, K] @ w [K, N] + b); device arrays, no checks. Picks the skinny
    kernel for at most SKINNY_MAX_ROWS rows, else the tiled one (smaller tiles when the big ones would
    not give every SM a block). out may be residual itself (each element is read, then written, by
    the same thread)."""
    M, N = x.shape[0], w.shape[1]
    skinny = skinny or SKINNY_TILES
    if tiles is None:
        tiles = MATMUL_TILES
        if n_blocks(M, tiles.bm) * n_blocks(N, tiles.bn) < sm_count():
            tiles = MATMUL_TILES_SMALL
    if M <= max(SKINNY_MAX_ROWS, skinny.rows):
        kernel = skinny_matmul_kernel(skinny)
        kernel[(n_blocks(N, skinny.cols), n_blocks(M, skinny.rows)), skinny.threads](x, w, b, residual, out, act)
    else:
        kernel = matmul_kernel(tiles)
        kernel[(n_blocks(N, tiles.bn), n_blocks(M, tiles.bm)), tiles.threads](x, w, b, residual, out, act)
    return out


def linear(x, w, b=None, activation=None, residual=None, out=None, tiles=None, skinny=None):
    """layers.linear: x [..., K] @ w [K, N] + b [N] -> [..., N], with two optional fused steps after it:
    `activation` (a config.activation_function name, e.g. "quick_gelu") and `+ residual` [..., N].

    Up to SKINNY_MAX_ROWS rows run the skinny kernel, more the tiled one; `skinny` (SkinnyTiles) and
    `tiles` (MatmulTiles) override their block sizes, for tests."""
    require_cuda()
    on_device = any(is_device_array(t) for t in (x, w, b, residual))
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; the CUDA epilogue knows "
                         f"{', '.join(str(k) for k in ACTIVATIONS if k)}")
    x, w = device_float32(x, "x"), device_float32(w, "w")
    if x.ndim < 1 or w.ndim != 2 or x.shape[x.ndim - 1] != w.shape[0]:
        raise ValueError(f"linear: x {tuple(x.shape)} @ w {tuple(w.shape)}: x must be [..., K] and w [K, N]")
    lead, N = tuple(x.shape[:-1]), w.shape[1]
    if b is not None:
        b = device_float32(b, "b")
        if tuple(b.shape) != (N,):
            raise ValueError(f"linear: bias has shape {tuple(b.shape)}, expected ({N},)")
    x2 = as_rows(x, "x")
    if residual is not None:
        residual = device_float32(residual, "residual")
        if tuple(residual.shape) != lead + (N,):
            raise ValueError(f"linear: residual has shape {tuple(residual.shape)}, expected {lead + (N,)}")
        residual = as_rows(residual, "residual")
    out = check_out(out, lead + (N,))
    if x2.shape[0] and N:
        launch_linear(x2, w, b, as_rows(out, "out"), ACTIVATIONS[activation], residual, tiles, skinny)
    return finish(out, on_device)


def matmul(a, b, out=None, tiles=None, skinny=None):
    """a [..., K] @ b [K, N] -> [..., N] in float32 (linear without bias)."""
    return linear(a, b, out=out, tiles=tiles, skinny=skinny)


# ---- attention (layers.attention): the prompt's causal attention, then a decode step's ---------------
def _check_head_dim(D):
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim {D} is beyond the CUDA attention kernels' limit of {MAX_HEAD_DIM} (they keep "
                         f"a query row in registers); use the 'cpu' backend for this model")


def _attention_inputs(q, k, v):
    q, k, v = (device_float32(t, n) for t, n in ((q, "q"), (k, "k"), (v, "v")))
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention: q, k, v must be [B, H, T, D], got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if tuple(k.shape) != tuple(v.shape) or tuple(k.shape[:2]) != tuple(q.shape[:2]) or k.shape[3] != q.shape[3]:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must be [B, H, S, D] matching "
                         f"q {tuple(q.shape)}")
    _check_head_dim(q.shape[3])
    return q, k, v


@functools.cache
def causal_attention_kernel(head_dim: int, tiles: AttentionTiles):
    """out = softmax(scale * q @ k^T + causal mask) @ v, one pass, never forming the [T, S] scores.

    q, out [B, H, T, D]; k, v [B, H, S, D], S >= T: query t sits at absolute position S - T + t and
    sees keys 0 .. S - T + t. Any strides (the model passes views into its fused qkv buffer).
    Launch: grid (ceil(T / bq), B * H), block of bq threads, one query row each.
    Shared memory: a [bkv, D] tile of keys and one of values: 2 * bkv * D * 4 bytes (16 KB for
    bkv = 32, D = 64; 32 KB at D = 128).
    Registers: the scaled query row and the output accumulator, D floats each (at D = 128 that is
    more than a thread's 255 registers hold, and ptxas will spill some).
    Traffic: q read and out written once; each block reads the keys and values up to its last
    query's position once (about S^2 / (2 bq) rows per (b, h) in all): the causal upper triangle is
    never loaded. Softmax is online (flash-style): a running max m and sum l per row; when a
    score beats m, what was accumulated is rescaled by exp(m_old - m_new).
    """
    bq, bkv = tiles

    @cuda.jit(cache=True)
    def kernel(q, k, v, out, scale):
        H, T, S = q.shape[1], q.shape[2], k.shape[2]
        b, h = cuda.blockIdx.y // H, cuda.blockIdx.y % H
        t0 = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * bq  # the last queries (the most keys) are scheduled first
        tid = cuda.threadIdx.x
        t = t0 + tid
        active = t < T
        k_tile = cuda.shared.array((bkv, head_dim), float32)
        v_tile = cuda.shared.array((bkv, head_dim), float32)
        q_row = cuda.local.array(head_dim, float32)
        acc = cuda.local.array(head_dim, float32)
        for d in range(head_dim):
            q_row[d] = q[b, h, t, d] * scale if active else ZERO
            acc[d] = ZERO
        m, l = NEG_INF, ZERO  # running max and running sum of exp(score - m)
        last = S - T + t  # the last key this query may see
        n_keys = min(S, S - T + t0 + bq)  # keys any query of this block may see

        for s0 in range(0, n_keys, bkv):  # ceil(n_keys / bkv) tiles
            for idx in range(tid, bkv * head_dim, bq):  # consecutive threads load consecutive d
                j, d = idx // head_dim, idx % head_dim
                if s0 + j < n_keys:
                    k_tile[j, d] = k[b, h, s0 + j, d]
                    v_tile[j, d] = v[b, h, s0 + j, d]
            cuda.syncthreads()
            if active:
                for j in range(min(bkv, last + 1 - s0)):  # the allowed keys of this tile (none past `last`)
                    x = ZERO
                    for d in range(head_dim):
                        x += q_row[d] * k_tile[j, d]  # every thread reads the same k: a broadcast
                    if x > m:  # a new maximum: rescale the sum and the accumulator
                        alpha = math.exp(m - x)
                        l *= alpha
                        for d in range(head_dim):
                            acc[d] *= alpha
                        m = x
                    p = math.exp(x - m)
                    l += p
                    for d in range(head_dim):
                        acc[d] += p * v_tile[j, d]
            cuda.syncthreads()  # done with the tile before it is overwritten

        if active:
            for d in range(head_dim):
                out[b, h, t, d] = acc[d] / l

    return kernel


def launch_causal_attention(q, k, v, out, scale, tiles=None):
    """Device arrays q, out [B, H, T, D] and k, v [B, H, S, D], any strides; no checks."""
    B, H, T, D = q.shape
    if tiles is None:
        tiles = ATTENTION_TILES
        if n_blocks(T, tiles.bq) * B * H < sm_count():
            tiles = ATTENTION_TILES_SMALL
    kernel = causal_attention_kernel(D, tiles)
    kernel[(n_blocks(T, tiles.bq), B * H), tiles.bq](q, k, v, out, F32(scale))
    return out


def causal_attention(q, k, v, scale=None, out=None, tiles=None):
    """layers.attention(q, k, v, scale, causal=True)[0] without the weights: q [B, H, T, D], k and v
    [B, H, S, D] with S >= T (the first S - T positions already cached) -> [B, H, T, D].

    scale defaults to 1 / sqrt(D); pass layers.attention_scale(...) for the config's other scalings."""
    require_cuda()
    on_device = any(is_device_array(t) for t in (q, k, v))
    q, k, v = _attention_inputs(q, k, v)
    B, H, T, D = q.shape
    if k.shape[2] < T:
        raise ValueError(f"causal_attention: {k.shape[2]} keys for {T} queries; keys must include every query's "
                         f"position (S >= T)")
    scale = layers.attention_scale(D) if scale is None else F32(scale)
    out = check_out(out, (B, H, T, D))
    if out.size:
        launch_causal_attention(q, k, v, out, scale, tiles)
    return finish(out, on_device)


@functools.cache
def decode_attention_kernel(head_dim: int, tiles: DecodeTiles):
    """One query per (b, h) against the first `length` cached keys and values: the sampling step.

    q, out [B, H, 1, D]; k, v [B, H, S_max, D] (the cache). Launch: grid (B * H,), block of
    `threads` (a power of two). Shared memory: the scaled query [D], a chunk of scores [chunk], a
    reduction buffer [threads], the weighted-sum partials [max(1, threads / D), D] and the
    accumulator [D]: under 3 KB at the defaults. Traffic: every cached key and value of (b, h) is
    read once (length * D * 8 bytes); keys one row per thread, values one coalesced row per
    group of D threads. Softmax is online across chunks, so any length fits in fixed shared memory.
    """
    nthreads, chunk = tiles
    if nthreads & (nthreads - 1):
        raise ValueError(f"{tiles}: threads must be a power of two")
    nslice = max(1, nthreads // head_dim)  # key slices for the weighted sum, D threads each

    @cuda.jit(cache=True)
    def kernel(q, k, v, out, scale, length):
        H = q.shape[1]
        b, h = cuda.blockIdx.x // H, cuda.blockIdx.x % H
        tid = cuda.threadIdx.x
        q_s = cuda.shared.array(head_dim, float32)
        scores = cuda.shared.array(chunk, float32)
        red = cuda.shared.array(nthreads, float32)
        partial = cuda.shared.array((nslice, head_dim), float32)
        acc = cuda.shared.array(head_dim, float32)
        for d in range(tid, head_dim, nthreads):
            q_s[d] = q[b, h, 0, d] * scale
            acc[d] = ZERO
        cuda.syncthreads()
        m, l = NEG_INF, ZERO  # every thread keeps the same running max and sum

        for c0 in range(0, length, chunk):  # ceil(length / chunk) chunks
            n = min(chunk, length - c0)
            local_max = NEG_INF
            for j in range(tid, n, nthreads):  # scores: one key per thread
                x = ZERO
                for d in range(head_dim):
                    x += q_s[d] * k[b, h, c0 + j, d]
                scores[j] = x
                local_max = max(local_max, x)
            m_new = max(m, _block_max(red, local_max))  # (_block_* synchronise: scores are complete)
            alpha = math.exp(m - m_new)
            local_sum = ZERO
            for j in range(tid, n, nthreads):
                p = math.exp(scores[j] - m_new)
                scores[j] = p
                local_sum += p
            l = l * alpha + _block_sum(red, local_sum)
            for idx in range(tid, nslice * head_dim, nthreads):  # weighted sum: (slice, d) per thread
                s, d = idx // head_dim, idx % head_dim
                y = ZERO
                for j in range(s, n, nslice):
                    y += scores[j] * v[b, h, c0 + j, d]
                partial[s, d] = y
            cuda.syncthreads()
            for d in range(tid, head_dim, nthreads):
                y = ZERO
                for s in range(nslice):
                    y += partial[s, d]
                acc[d] = acc[d] * alpha + y
            m = m_new
            cuda.syncthreads()  # scores and partial are free for the next chunk

        for d in range(tid, head_dim, nthreads):
            out[b, h, 0, d] = acc[d] / l

    return kernel


def launch_decode_attention(q, k_cache, v_cache, length, out, scale, tiles=None):
    """Device arrays q, out [B, H, 1, D], caches [B, H, S_max, D]; attends to the first `length` keys."""
    tiles = tiles or DECODE_TILES
    B, H, _, D = q.shape
    kernel = decode_attention_kernel(D, tiles)
    kernel[B * H, tiles.threads](q, k_cache, v_cache, out, F32(scale), int(length))
    return out


def decode_attention(q, k_cache, v_cache, length=None, scale=None, out=None, tiles=None):
    """One new query per sequence against the KV cache: q [B, H, 1, D], k_cache and v_cache
    [B, H, S_max, D] whose first `length` positions (default all; the new token's included) are
    valid -> [B, H, 1, D]. Equals layers.attention(q, k[:, :, :length], v[:, :, :length], scale)[0]."""
    require_cuda()
    on_device = any(is_device_array(t) for t in (q, k_cache, v_cache))
    q, k_cache, v_cache = _attention_inputs(q, k_cache, v_cache)
    B, H, T, D = q.shape
    if T != 1:
        raise ValueError(f"decode_attention takes one query per sequence (q [B, H, 1, D]), got {tuple(q.shape)}; "
                         f"use causal_attention for several")
    length = k_cache.shape[2] if length is None else int(length)
    if not 1 <= length <= k_cache.shape[2]:
        raise ValueError(f"decode_attention: length {length} must be in [1, {k_cache.shape[2]}] (the cache size)")
    scale = layers.attention_scale(D) if scale is None else F32(scale)
    out = check_out(out, (B, H, 1, D))
    if out.size:
        launch_decode_attention(q, k_cache, v_cache, length, out, scale, tiles)
    return finish(out, on_device)


# ---- self_attention's KV cache update (layers.self_attention's cache.update) -------------------------
@cuda.jit(cache=True)
def append_kv_kernel(k_new, v_new, k_cache, v_cache, k_stage, v_stage, start):
    """k_cache[:, :, start + t] = k_stage[:, :, t] = k_new[:, :, t] (and the same for v), all [B, H, *, D]
    with any strides. Launch: 1-D grid-stride over B * H * T * D; no shared memory. Traffic: one read,
    two writes per element. The stage is what gets copied back to the host cache."""
    B, H, T, D = k_new.shape
    for i in range(cuda.grid(1), B * H * T * D, cuda.gridsize(1)):
        d = i % D
        t = (i // D) % T
        h = (i // (D * T)) % H
        b = i // (D * T * H)
        kv, vv = k_new[b, h, t, d], v_new[b, h, t, d]
        k_cache[b, h, start + t, d] = kv
        v_cache[b, h, start + t, d] = vv
        k_stage[b, h, t, d] = kv
        v_stage[b, h, t, d] = vv


def launch_append_kv(k_new, v_new, k_cache, v_cache, k_stage, v_stage, start, threads=None):
    threads = threads or ELEMENTWISE_THREADS
    append_kv_kernel[_elementwise_grid(k_new.size, threads)](k_new, v_new, k_cache, v_cache, k_stage, v_stage,
                                                             int(start))


# ==== NOT LAUNCHED BY THE MODEL =========================================================================
# cuda_model.py never launches the three kernels below (grep it for `launch_`): the model fuses quick_gelu
# and the residual add into linear's epilogue (ACTIVATIONS, `residual=`), and sampling's softmax runs on
# the host (generation.py). They are kept because each is the plain, one-job form of a step the fused
# kernels hide: tests/test_kernels_cuda.py checks each against layers.py (so the epilogue's activation code,
# _activate, is also checked on its own), and tests/test_kernels_ptx.py compiles them for sm_90 with the
# rest. Nothing outside the tests imports them; a new model path should use the fused forms above.
@cuda.jit(cache=True)
def quick_gelu_kernel(x, out):
    """out = x / (1 + exp(-1.702 x)) over flat arrays. Launch: 1-D grid-stride, ELEMENTWISE_THREADS a
    block, at most ELEMENTWISE_MAX_BLOCKS blocks. Shared memory: none. Traffic: one coalesced read and
    write per element. (The model fuses this into linear's epilogue instead.)"""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = _activate(x[i], 1)


def quick_gelu(x, out=None, threads=None):
    """layers.quick_gelu: x * sigmoid(1.702 x), computed as x / (1 + exp(-1.702 x))."""
    require_cuda()
    on_device = is_device_array(x)
    x = device_float32(x, "x")
    out = check_out(out, tuple(x.shape))
    if x.size:
        grid = _elementwise_grid(x.size, threads or ELEMENTWISE_THREADS)
        quick_gelu_kernel[grid](as_flat(x, "x"), as_flat(out, "out"))
    return finish(out, on_device)


@cuda.jit(cache=True)
def add_kernel(x, y, out):
    """out = x + y over flat arrays of one size. Launch as quick_gelu_kernel; no shared memory; two reads
    and a write per element. (The model fuses the residual add into linear's epilogue instead.)"""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = x[i] + y[i]


def add(x, y, out=None, threads=None):
    """x + y for two arrays of the same shape (the residual connection)."""
    require_cuda()
    on_device = any(is_device_array(t) for t in (x, y))
    x, y = device_float32(x, "x"), device_float32(y, "y")
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(f"add: shapes {tuple(x.shape)} and {tuple(y.shape)} differ (no broadcasting on the device)")
    out = check_out(out, tuple(x.shape))
    if x.size:
        grid = _elementwise_grid(x.size, threads or ELEMENTWISE_THREADS)
        add_kernel[grid](as_flat(x, "x"), as_flat(y, "y"), as_flat(out, "out"))
    return finish(out, on_device)


@functools.cache
def softmax_kernel(nthreads: int):
    """out[r] = exp(x[r] - max) / sum: softmax over the last axis (the vocabulary, when sampling).

    Launch: grid (rows,), block of nthreads (a power of two). Shared memory: nthreads floats.
    Traffic: x read three times (max, sum, write; the later reads from cache), out written once.
    """
    @cuda.jit(cache=True)
    def kernel(x, out):
        r, tid = cuda.blockIdx.x, cuda.threadIdx.x
        V = x.shape[1]
        red = cuda.shared.array(nthreads, float32)
        mx = NEG_INF
        for c in range(tid, V, nthreads):
            mx = max(mx, x[r, c])
        mx = _block_max(red, mx)
        s = ZERO
        for c in range(tid, V, nthreads):
            s += math.exp(x[r, c] - mx)
        s = _block_sum(red, s)
        for c in range(tid, V, nthreads):
            out[r, c] = math.exp(x[r, c] - mx) / s

    return kernel


def softmax(x, axis=-1, out=None, threads=None):
    """layers.softmax over the last axis (the only one the kernel reduces)."""
    require_cuda()
    on_device = is_device_array(x)
    x = device_float32(x, "x")
    if axis not in (-1, x.ndim - 1):
        raise ValueError(f"the CUDA softmax reduces the last axis only, got axis={axis}")
    threads = check_threads(threads or ROW_THREADS)
    out = check_out(out, tuple(x.shape))
    x2 = as_rows(x, "x")
    if x2.size:
        softmax_kernel(threads)[x2.shape[0], threads](x2, out.reshape(x2.shape))
    return finish(out, on_device)
