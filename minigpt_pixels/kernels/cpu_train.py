"""The "cpu" device's training pass: layers.py's `f_forward` / `f_backward` pairs that backprop.py runs,
with Numba kernels for the hot spots. Read layers.py first; each function here has the name, arguments
and result of the layers.py function it mirrors (tests/test_train_kernels.py checks each against it),
and backprop.py reads them from this module or from layers.py by the same names (see
backprop.training_path for which).

    layer_norm_forward / _backward    one kernel each; the forward keeps the rms of each row, the backward
                                      rebuilds x / rms from it and adds the residual's gradient in the pass
    attention (in the block)          causal attention in one kernel per (batch row, head), on simd.py's
                                      8-lane vectors: q, k, v read from the fused qkv rows, only each row's
                                      softmax max and sum kept (the backward computes the scores again
                                      rather than keep [B, H, T, T] weights); the backward writes dq, dk, dv
                                      straight into the qkv gradient; each row's softmax on whole 8-lane
                                      vectors (vexp and friends, below: rows of 64-100 keys are too short
                                      for LLVM's vectoriser)
    mlp (in the block)                BLAS matmuls; the fc bias + quick_gelu in one kernel, and its backward
                                      with the fc bias gradient in one more
    transformer_block_forward / _backward   the block wired with them: bias + dropout + residual + ln_2 in one
                                      pass, and each bias gradient summed in the pass that makes it
    lm_loss_forward / _backward       the softmax cross-entropy: the forward keeps each row's log-sum-exp,
                                      the backward writes (softmax - onehot) / n in one pass
    embedding_backward                one sequential scatter-add (np.add.at is a slow generic loop)
    StepBuffers                       the blocks' activations and temporaries, kept from one step to the
                                      next (fresh memory costs a page fault per 4 KB: a fifth of a step)

Why: at classroom widths (C = 32-128) a NumPy training step is some 1,600 calls over activations that
fit in L2, each costing more in dispatch and memory traffic than in arithmetic.

Numbers: float32 throughout; exp is cpu._exp (2e-7 relative error) and sums are reassociated for
vectorisation (cpu.REDUCE), so results agree with layers.py to about 1e-6 relative, not bit for bit.
Deterministic: every reduction has a fixed order, and the only threads (attention's (batch, head)
pairs under prange) each own whole heads, so 1 and 2 threads give the same bits.

Outside the fast path (encoder states, activations other than quick_gelu, a mask with rows that see no
kept key, float64 inputs) a block runs layers.transformer_block_forward, and its backward follows the
cache it made, so every option gives the reference's gradients.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils

from .. import layers
from . import cpu, simd
from .compile_cache import intrinsic, njit
from .threads import StepClock

F32 = np.float32
JIT, REDUCE = cpu.JIT, cpu.REDUCE
_exp = cpu._exp

# the layers.py pairs with nothing to fuse: BLAS matmuls, done as the reference does them
embedding_forward = layers.embedding_forward
dropout_forward, dropout_backward = layers.dropout_forward, layers.dropout_backward
lm_head_forward, lm_head_backward = layers.lm_head_forward, layers.lm_head_backward
classification_head_forward = layers.classification_head_forward
classification_head_backward = layers.classification_head_backward
classification_loss_forward = layers.classification_loss_forward
classification_loss_backward = layers.classification_loss_backward


# ---- the step's buffers ----------------------------------------------------------------------------
# Why: a step at classroom widths makes some 100 MB of activations and temporaries. Fresh from the system
# every step (glibc maps large blocks and unmaps them when freed), each 4 KB page costs a fault and a
# zeroing on first touch: 10,500 faults a step at 4 x 96, a fifth of the step. The blocks' forwards take
# their activations from a pool and their backwards give them back, so the next step finds them mapped.
# Only arrays that never leave this module go back (not a block's input or output, not a gradient); a
# block's cache is spent by its backward (a second backward through it raises, as torch's does).
POOL_MAX_BYTES = 1 << 30  # what a pool keeps at most; more is left to the garbage collector


class StepBuffers:
    """Float32 arrays by shape, reused from one step to the next. One per Python thread (step_buffers())."""

    def __init__(self, max_bytes=POOL_MAX_BYTES):
        self.free, self.held, self.max_bytes = {}, 0, max_bytes  # shape -> arrays; their bytes

    def take(self, *shape):
        """An uninitialised float32 array of `shape`: a pooled one when there is one."""
        stack = self.free.get(shape)
        if stack:
            a = stack.pop()
            self.held -= a.nbytes
            return a
        return np.empty(shape, F32)

    def give(self, arrays):
        """Back to the pool: arrays nobody else holds (the caller's promise)."""
        for a in arrays:
            if self.held + a.nbytes <= self.max_bytes:
                self.free.setdefault(a.shape, []).append(a)
                self.held += a.nbytes


_LOCAL = threading.local()


def step_buffers():
    """This thread's StepBuffers (a pool shared by threads would hand one array to two steps)."""
    pool = getattr(_LOCAL, "pool", None)
    if pool is None:
        pool = _LOCAL.pool = StepBuffers()
    return pool


# ---- embedding -------------------------------------------------------------------------------------
def embedding_backward(dout, cache):
    """Mirrors layers.embedding_backward. -> dwte [V+1, C], dwpe [n_positions, C]."""
    input_ids, position_ids, token_type_ids, wte_shape, wpe_shape = cache
    B, T, C = dout.shape
    flat = np.ascontiguousarray(dout, dtype=F32).reshape(B * T, C)  # [B*T, C]
    dwte, dwpe = np.zeros(wte_shape, F32), np.zeros(wpe_shape, F32)
    scatter_add_kernel(dwte, np.asarray(input_ids).reshape(-1).astype(np.int64), flat)
    if token_type_ids is not None:
        scatter_add_kernel(dwte, np.asarray(token_type_ids).reshape(-1).astype(np.int64), flat)
    positions = np.broadcast_to(position_ids, (B, T)).reshape(-1).astype(np.int64)
    scatter_add_kernel(dwpe, positions, flat)
    return dwte, dwpe


# ---- layer norm ------------------------------------------------------------------------------------
class LayerNormCache(NamedTuple):
    x: np.ndarray  # [N, C] the input (x / rms is rebuilt from it in the backward)
    weight: np.ndarray  # [C]
    rms: np.ndarray  # [N]
    shape: tuple  # the input's shape


def layer_norm_forward(x, weight, eps=1e-5):
    """Mirrors layers.layer_norm_forward: x [..., C] -> (out [..., C], cache)."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x, dtype=F32).reshape(-1, C)  # [N, C]
    out, rms = np.empty_like(x2), np.empty(x2.shape[0], F32)
    layer_norm_forward_kernel(x2, weight, F32(eps), out, rms)
    return out.reshape(x.shape), LayerNormCache(x2, weight, rms, x.shape)


def layer_norm_backward(dout, cache):
    """Mirrors layers.layer_norm_backward. -> dx [..., C], dweight [C]."""
    x, weight, rms, shape = cache
    dx = np.zeros_like(x)  # the residual's gradient to add: none here
    dweight = np.empty(x.shape[1], F32)
    layer_norm_backward_kernel(np.ascontiguousarray(dout, dtype=F32).reshape(x.shape), x, rms, weight, dx, dweight)
    return dx.reshape(shape), dweight


# ---- the block -------------------------------------------------------------------------------------
class BlockCache(NamedTuple):
    """What transformer_block_backward needs, by name. N = B * T rows."""
    prefix: str
    w: layers.BlockWeights
    x: np.ndarray  # [N, C] the block's input
    rms_1: np.ndarray  # [N]
    h_1: np.ndarray  # [N, C] ln_1(x): c_attn's input
    qkv: np.ndarray  # [N, 3C] with the bias
    keep: np.ndarray  # [B, T] 1 where a key is not padded
    stats: np.ndarray  # [B, H, T, 2] each attention row's max scaled score and sum of exps
    attn_drop: np.ndarray  # [B, H, T, T] the weights' dropout mask, or [0, 0, 0, 0] without dropout
    merged: np.ndarray  # [N, C] attention output, heads merged: c_proj's input
    attn_resid_drop: np.ndarray  # [N, C] or [0, 0]
    x_1: np.ndarray  # [N, C] x + attention branch
    rms_2: np.ndarray  # [N]
    h_2: np.ndarray  # [N, C] ln_2(x_1): c_fc's input
    fc: np.ndarray  # [N, F] c_fc output with its bias: quick_gelu's input
    gelu_e: np.ndarray  # [N, F] 1 + exp(-1.702 fc): quick_gelu's denominator
    act: np.ndarray  # [N, F] quick_gelu(fc): the MLP's c_proj input
    mlp_resid_drop: np.ndarray  # [N, C] or [0, 0]
    lent: list  # the pool's arrays among these, given back (and the list emptied) by the backward


def fast_path_keep(x, mask, config, encoder_hidden_states):
    """The padding keep-mask [B, T] (uint8) when this module's block takes these inputs, else None (then
    the block is layers.transformer_block_forward): float32 x, quick_gelu, no encoder states, and no mask
    or a padding mask where every query row sees a kept key (cpu.padding_keep)."""
    if x.dtype != F32 or config.activation_function != "quick_gelu" or encoder_hidden_states is not None:
        return None
    B, T, _ = x.shape
    return cpu.padding_keep(mask, B, T, 0)


_NO_DROP = {n: np.zeros((0,) * n, F32) for n in (2, 3, 4)}  # "no dropout": size 0, nothing to write into


def _drop_mask(shape, p, rng):
    """The dropout mask layers.dropout_forward would draw for an array of `shape` (the same draws from
    rng, in the same order), or an empty one when nothing is dropped."""
    if rng is None or p == 0:  # dropout_forward draws nothing then either
        return _NO_DROP[len(shape)]
    _, mask = layers.dropout_forward(np.broadcast_to(F32(1), shape), p, rng)
    return np.zeros((0,) * len(shape), F32) if mask is None else mask


def transformer_block_forward(x, p, prefix, config, layer_idx, mask=None, encoder_hidden_states=None,
                              encoder_mask=None, rng=None, *, cache=None):
    """Mirrors layers.transformer_block_forward (the dropouts drawn from rng in the reference's order, so
    the same masks). -> out [B, T, C], cache."""
    keep = fast_path_keep(x, mask, config, encoder_hidden_states) if cache is None else None
    if keep is None:
        return layers.transformer_block_forward(x, p, prefix, config, layer_idx, mask, encoder_hidden_states,
                                                encoder_mask, rng, cache=cache)
    w = layers.block_weights(p, prefix, config, layer_idx)
    eps, H = F32(config.layer_norm_epsilon), config.n_head
    pa, pr = (config.attn_pdrop, config.resid_pdrop) if rng is not None else (0.0, 0.0)
    B, T, C = x.shape
    N, F, pool = B * T, w.w_fc.shape[1], step_buffers()
    x = np.ascontiguousarray(x).reshape(N, C)
    # x_1 = x + attn(ln_1(x))
    h_1, rms_1 = pool.take(N, C), np.empty(N, F32)
    layer_norm_forward_kernel(x, w.ln_1, eps, h_1, rms_1)
    qkv = np.matmul(h_1, w.w_attn, out=pool.take(N, 3 * C))  # [N, C] @ [C, 3C] -> [N, 3C]
    qkv += w.b_attn
    attn_drop = _drop_mask((B, H, T, T), pa, rng)  # drawn where attention_forward draws it
    merged, stats = pool.take(N, C), np.empty((B, H, T, 2), F32)
    causal_attention_kernel(qkv, T, H, w.scale, keep, attn_drop, merged, stats, numba.get_num_threads())
    a = np.matmul(merged, w.w_attn_proj, out=pool.take(N, C))  # [N, C]
    attn_resid_drop = _drop_mask((B, T, C), pr, rng).reshape(-1, C)
    x_1, h_2, rms_2 = pool.take(N, C), pool.take(N, C), np.empty(N, F32)
    residual_layer_norm_kernel(x, a, w.b_attn_proj, attn_resid_drop, w.ln_2, eps, x_1, h_2, rms_2)
    pool.give([a])
    # out = x_1 + mlp(ln_2(x_1))
    fc = np.matmul(h_2, w.w_fc, out=pool.take(N, F))  # [N, C] @ [C, F] -> [N, F]
    act, gelu_e = pool.take(N, F), pool.take(N, F)
    bias_quick_gelu_forward_kernel(fc, w.b_fc.reshape(1, -1), act, gelu_e)  # fc += b_fc in place; act = quick_gelu(fc)
    m = act @ w.w_mlp_proj  # [N, F] @ [F, C] -> [N, C]: the block's output, the caller's to keep
    mlp_resid_drop = _drop_mask((B, T, C), pr, rng).reshape(-1, C)
    bias_dropout_residual_kernel(m, w.b_mlp_proj, mlp_resid_drop, x_1)  # m = x_1 + dropout(m + b), in place
    return m.reshape(B, T, C), BlockCache(prefix, w, x, rms_1, h_1, qkv, keep, stats, attn_drop, merged,
                                          attn_resid_drop, x_1, rms_2, h_2, fc, gelu_e, act, mlp_resid_drop,
                                          [h_1, qkv, merged, x_1, h_2, fc, gelu_e, act])


def transformer_block_backward(dout, cache):
    """Mirrors layers.transformer_block_backward: the forward read in reverse.
    -> dx [B, T, C], the weights' gradients keyed by HF name, denc (None: no cross-attention here)."""
    if isinstance(cache, layers.BlockCache):  # the forward took the reference's path
        return layers.transformer_block_backward(dout, cache)
    c, w, pool = cache, cache.w, step_buffers()
    if not c.lent:
        raise RuntimeError(f"the cache of block {c.prefix!r} was spent by a backward pass already (its buffers "
                           "are reused): run the forward again")
    B, H, T, _ = c.stats.shape
    N, C = c.x.shape
    F = c.fc.shape[1]
    d = np.ascontiguousarray(dout, dtype=F32).reshape(N, C)
    g = {}
    # out = x_1 + dropout(act @ w_mlp_proj + b)
    dm, g["mlp.c_proj.bias"] = pool.take(N, C), np.empty(C, F32)
    dropout_bias_backward_kernel(d, c.mlp_resid_drop, dm, g["mlp.c_proj.bias"])
    g["mlp.c_proj.weight"] = c.act.T @ dm  # [F, N] @ [N, C] -> [F, C]
    dfc = np.matmul(dm, w.w_mlp_proj.T, out=c.act)  # [N, C] @ [C, F] -> [N, F] (act is spent)
    g["mlp.c_fc.bias"] = np.empty(F, F32)
    # in place: d act -> d fc; and c_fc's bias gradient
    quick_gelu_backward_kernel(dfc, c.fc, c.gelu_e, g["mlp.c_fc.bias"])
    g["mlp.c_fc.weight"] = c.h_2.T @ dfc  # [C, N] @ [N, F] -> [C, F]
    dh = np.matmul(dfc, w.w_fc.T, out=c.h_2)  # [N, F] @ [F, C] -> [N, C] (h_2 is spent)
    dx, g["ln_2.weight"] = d.copy(), np.empty(C, F32)  # the skip's gradient, plus ln_2's below (the caller's)
    layer_norm_backward_kernel(dh, c.x_1, c.rms_2, w.ln_2, dx, g["ln_2.weight"])
    # x_1 = x + dropout(merged @ w_attn_proj + b)
    da, g["attn.c_proj.bias"] = dm, np.empty(C, F32)  # dm is spent
    dropout_bias_backward_kernel(dx, c.attn_resid_drop, da, g["attn.c_proj.bias"])
    g["attn.c_proj.weight"] = c.merged.T @ da  # [C, N] @ [N, C] -> [C, C]
    dmerged = np.matmul(da, w.w_attn_proj.T, out=c.x_1)  # [N, C] (x_1 is spent)
    dqkv = pool.take(N, 3 * C)
    causal_attention_backward_kernel(dmerged, c.qkv, T, H, c.stats, c.keep, c.attn_drop, w.scale, dqkv,
                                     numba.get_num_threads())
    g["attn.c_attn.bias"] = np.empty(3 * C, F32)
    column_sum_kernel(dqkv, g["attn.c_attn.bias"])
    g["attn.c_attn.weight"] = c.h_1.T @ dqkv  # [C, N] @ [N, 3C] -> [C, 3C]
    dh = np.matmul(dqkv, w.w_attn.T, out=c.merged)  # [N, 3C] @ [3C, C] -> [N, C] (merged is spent)
    g["ln_1.weight"] = np.empty(C, F32)  # x_1's gradient flows on through the skip into dx
    layer_norm_backward_kernel(dh, c.x, c.rms_1, w.ln_1, dx, g["ln_1.weight"])
    pool.give(c.lent + [dm, dqkv])
    c.lent.clear()
    return dx.reshape(B, T, C), {c.prefix + k: v for k, v in g.items()}, None


# ---- the LM loss -----------------------------------------------------------------------------------
class LossCache(NamedTuple):
    logits: np.ndarray  # [N, V]
    labels: np.ndarray  # [N] the target of each row (-100: none), already shifted
    lse: np.ndarray  # [N] log-sum-exp of each row
    count: int  # rows with a target
    shape: tuple  # (B, T, V)


def lm_loss_forward(logits, labels, shift=True):
    """Mirrors layers.lm_loss_forward: mean -log softmax(logits)[label] over labels != -100; with the
    shift, logits at t predict labels at t + 1. -> loss float32 (NaN when every label is ignored), cache."""
    B, T, V = logits.shape
    labels = np.asarray(labels).astype(np.int64)
    if shift:  # labels moved one place left: row t's target is labels[t + 1], the last row has none
        labels = np.concatenate([labels[:, 1:], np.full((B, 1), -100, np.int64)], axis=1)
    logits2, labels = np.ascontiguousarray(logits, dtype=F32).reshape(B * T, V), labels.reshape(-1)
    lse, picked = np.empty(B * T, F32), np.empty(B * T, F32)
    count = log_softmax_picked_kernel(logits2, labels, lse, picked)
    loss = F32(-np.mean(picked[:count])) if count else F32(np.nan)  # as layers.cross_entropy: a float32 mean
    return loss, LossCache(logits2, labels, lse, count, (B, T, V))


def lm_loss_backward(dloss, cache):
    """Mirrors layers.lm_loss_backward. -> dlogits [B, T, V]: (softmax - onehot) * dloss / n on rows with
    a target, 0 elsewhere."""
    dlogits = np.empty_like(cache.logits)
    scale = F32(dloss / cache.count) if cache.count else F32(0)
    cross_entropy_backward_kernel(cache.logits, cache.labels, cache.lse, scale, dlogits)
    return dlogits.reshape(cache.shape)


# ---- threads ---------------------------------------------------------------------------------------
# The only threads of this path are attention's (batch row, head) pairs under prange; BLAS keeps the
# caller's setting. Whether a second thread pays depends on the machine's load, which nothing can read:
# on a busy 2-core machine each of a step's 2 x n_layer parallel sections waits at its end for a thread
# that is not running. So, as for decode steps, the steps themselves are timed (threads.StepClock): 1 thread
# or numba.get_num_threads(), whichever is faster for steps of this shape, tried again now and then.
TRAIN_CLOCK = StepClock()  # one per process, apart from the decode steps' clock


@contextlib.contextmanager
def step_threads(key):
    """Numba's thread count around one training step of shape `key`: TRAIN_CLOCK's choice between 1 and
    numba.get_num_threads(), restored after; the step's time is recorded. The bits do not depend on it."""
    most = numba.get_num_threads()
    if most == 1:
        yield
        return
    threads = TRAIN_CLOCK.choose(key, most)
    numba.set_num_threads(threads)
    start = time.perf_counter()
    try:
        yield
    finally:
        numba.set_num_threads(most)
    TRAIN_CLOCK.record(key, threads, time.perf_counter() - start)


# ==== the kernels ====================================================================================
# Each mirrors the reference's operations in the reference's order wherever it can (the same float32
# rounding), and says where it cannot.

@njit(**JIT)
def scatter_add_kernel(table, ids, rows):
    """table[ids[i]] += rows[i] for each i in order: np.add.at's result. table [V, C], ids [N], rows [N, C]."""
    C = rows.shape[1]
    for i in range(ids.shape[0]):
        t = table[ids[i]]
        r = rows[i]
        for c in range(C):
            t[c] += r[c]


@njit(**JIT)
def layer_norm_forward_kernel(x, w, eps, out, rms):
    """out = x / rms * w with rms = sqrt(mean(x^2) + eps) per row, as layers.layer_norm_forward; keeps rms.
    x, out [N, C]; w [C]; rms [N]. Reads x twice from L1, writes out once."""
    N, C = x.shape
    for i in range(N):
        r = np.sqrt(cpu._dot(x[i], x[i], C) / F32(C) + eps)
        rms[i] = r
        for c in range(C):
            out[i, c] = x[i, c] / r * w[c]


@njit(**REDUCE)
def layer_norm_backward_kernel(dy, x, rms, w, dx, dw):
    """dx += (g - n mean(g n)) / rms with n = x / rms, g = dy w (layers.layer_norm_backward), added to what
    dx holds (the residual's gradient); dw = sum over rows of dy n, row by row in order.
    dy, x, dx [N, C]; rms [N]; w, dw [C]."""
    N, C = x.shape
    for c in range(C):
        dw[c] = F32(0)
    n = np.empty(C, F32)
    g = np.empty(C, F32)
    for i in range(N):
        r = rms[i]
        for c in range(C):
            n[c] = x[i, c] / r  # the forward's x / rms, the same bits
            g[c] = dy[i, c] * w[c]
            dw[c] += dy[i, c] * n[c]
        mean_gn = cpu._dot(g, n, C) / F32(C)
        for c in range(C):
            dx[i, c] += (g[c] - n[c] * mean_gn) / r


@njit(**JIT)
def residual_layer_norm_kernel(x, a, b, drop, w, eps, x_out, ln_out, rms):
    """x_out = x + dropout(a + b); ln_out = layer_norm(x_out, w), keeping rms: the attention branch joining
    the residual and ln_2, in one pass. drop [N, C] (the mask) or [0, 0] (no dropout)."""
    N, C = x.shape
    dropped = drop.shape[0] > 0
    for i in range(N):
        for c in range(C):
            y = a[i, c] + b[c]
            if dropped:
                y *= drop[i, c]
            x_out[i, c] = x[i, c] + y
        r = np.sqrt(cpu._dot(x_out[i], x_out[i], C) / F32(C) + eps)
        rms[i] = r
        for c in range(C):
            ln_out[i, c] = x_out[i, c] / r * w[c]


@njit(**JIT)
def bias_dropout_residual_kernel(m, b, drop, x):
    """In place: m = x + dropout(m + b), the MLP branch joining the residual. m, x [N, C]; drop as above."""
    N, C = m.shape
    dropped = drop.shape[0] > 0
    for i in range(N):
        for c in range(C):
            y = m[i, c] + b[c]
            if dropped:
                y *= drop[i, c]
            m[i, c] = x[i, c] + y


@njit(**JIT)
def bias_quick_gelu_forward_kernel(f, b, out, e):
    """f += b in place (kept: the backward's input); e = 1 + exp(-1.702 f) (kept too, as
    activations.quick_gelu_forward keeps it: the backward then needs no exp); out = f / e. f, out, e [N, F];
    b [1, F]. Whole 8-lane vectors (vexp: cpu._exp's bits), the last F % 8 columns one by one: 1.2-1.3 ns
    a value against the scalar loop's 1.3-1.7 (F = 128 and 384), the exp's 30-odd operations a vector
    bounding both."""
    N, F = f.shape
    whole = F - F % simd.LANES
    one, k = simd.vsplat(F32(1.0)), simd.vsplat(F32(-1.702))
    for i in range(N):
        for j in range(0, whole, simd.LANES):
            y = vadd(simd.vload(f, i, j), simd.vload(b, 0, j))
            den = vadd(one, vexp(vmul(k, y)))
            simd.vstore(f, i, j, y)
            simd.vstore(e, i, j, den)
            simd.vstore(out, i, j, vdiv(y, den))
        for j in range(whole, F):
            y = f[i, j] + b[0, j]
            f[i, j] = y
            den = F32(1.0) + _exp(F32(-1.702) * y)
            e[i, j] = den
            out[i, j] = y / den


@njit(**JIT)
def quick_gelu_backward_kernel(d, f, e, db):
    """In place: d = d * s (1 + 1.702 f (1 - s)), s = 1 / e (activations.quick_gelu_backward's operations,
    in its order); db = column sums of the result, row by row. d, f, e [N, F]; db [F]."""
    N, F = d.shape
    for j in range(F):
        db[j] = F32(0)
    for i in range(N):
        for j in range(F):
            s = F32(1.0) / e[i, j]
            t = ((F32(1.0) - s) * f[i, j] * F32(1.702) + F32(1.0)) * s * d[i, j]
            d[i, j] = t
            db[j] += t


@njit(**JIT)
def dropout_bias_backward_kernel(d, drop, out, db):
    """out = d * drop (or d without dropout); db = column sums of out, row by row: a branch's gradient at
    its linear layer's output, and the bias gradient. d, out [N, C]; db [C]."""
    N, C = d.shape
    dropped = drop.shape[0] > 0
    for c in range(C):
        db[c] = F32(0)
    for i in range(N):
        for c in range(C):
            y = d[i, c] * drop[i, c] if dropped else d[i, c]
            out[i, c] = y
            db[c] += y


@njit(**JIT)
def column_sum_kernel(d, out):
    """out = d.sum(axis=0), row by row in order. d [N, K]; out [K]."""
    N, K = d.shape
    for k in range(K):
        out[k] = F32(0)
    for i in range(N):
        for k in range(K):
            out[k] += d[i, k]


# ---- attention -------------------------------------------------------------------------------------
# One (batch row, head) at a time, on copies of its q, k and v rows in small scratch (L1-sized at T = 100),
# padded to whole 8-lane vectors with zeros (so any head_dim works, and the zeros add nothing). Query rows
# go in blocks of ROWS (4): each key's (or key block's) vector is loaded once for the 4 rows. Every
# product uses simd.py's <8 x float> operations: the scores of 8 keys at once (a vfma per head dimension
# and row), and w v, dq, dk, dv as 8 head dimensions at once (a vfma per key and row). The weights are
# never kept: the forward keeps each row's max and sum of exps (stats [B, H, T, 2]), and the backward
# computes the scores again and rebuilds the same weights from them, bit for bit.
# The helpers below, and each pair's function, are inlined into the loop over a share's pairs
# (inline="always"): as separate functions each call passed a dozen array structs and counted references to
# them (inlined, a 16 x 32 training step took 0.85 of the time; the cost is a longer first compile, about
# 45 s for the pair of attention kernels, once: the cache keeps them). Each thread's share of pairs
# allocates and zeroes its scratch once, not each pair; rows move between qkv and the scratch as whole
# vectors, and k (v too in the backward) is turned into columns 8 x 8 at a time (vtranspose8).
ROWS = 4  # query rows per block: 4 accumulators per product (a vfma's latency is 4 cycles)


@njit(inline="always", **JIT)
def _head_rows(src, b, T, col, rows):
    """rows[j, :Dp] = src[b*T + j, col:col + Dp] for j < T, as far as src's rows reach (the rest of rows
    stays as it was: the padding rows zero; padding columns, where written, hold the next head's values,
    which only lanes never stored meet). Whole 8-lane vectors where the row has them: as scalar loops, these
    copies and k's transpose took half the forward's time at D = 24 (q and v's copies a third)."""
    D = min(rows.shape[1], src.shape[1] - col)
    whole = D - D % simd.LANES
    for j in range(T):
        r = b * T + j
        for d in range(0, whole, simd.LANES):
            simd.vstore(rows, j, d, simd.vload(src, r, col + d))
        for d in range(whole, D):
            rows[j, d] = src[r, col + d]


@njit(inline="always", **JIT)
def _put_row(src, r, D, dst, row, col):
    """dst[row, col:col + D] = src[r, :D]: whole 8-lane vectors, then the rest one by one (never past D: the
    next columns are another pair's, perhaps another thread's)."""
    whole = D - D % simd.LANES
    for d in range(0, whole, simd.LANES):
        simd.vstore(dst, row, col + d, simd.vload(src, r, d))
    for d in range(whole, D):
        dst[row, col + d] = src[r, d]


@njit(inline="always", **JIT)
def _transpose_rows(rows, T, cols):
    """cols[:, j] = rows[j] for j < T (and on to the next multiple of 8), in 8 x 8 blocks (vtranspose8).
    rows [Tp, Dp], cols [Dp, Tp]."""
    for j in range(0, T, simd.LANES):
        for d in range(0, rows.shape[1], simd.LANES):
            vtranspose8(rows, j, d, cols, d, j)


@njit(inline="always", **JIT)
def _scores4(qc, i0, kt, n, D, s):
    """s[r, :n] (and up to the next multiple of 8) = q_{i0+r} . k_j for the block's 4 rows, 8 keys per
    vector, the sum over d in order. qc [Tp, Dp] rows; kt [Dp, Tp] columns; s [4, Tp]."""
    for jb in range(0, n, simd.LANES):
        a0, a1, a2, a3 = simd.vzero(), simd.vzero(), simd.vzero(), simd.vzero()
        for d in range(D):
            k = simd.vload(kt, d, jb)
            a0 = simd.vfma(simd.vsplat(qc[i0, d]), k, a0)
            a1 = simd.vfma(simd.vsplat(qc[i0 + 1, d]), k, a1)
            a2 = simd.vfma(simd.vsplat(qc[i0 + 2, d]), k, a2)
            a3 = simd.vfma(simd.vsplat(qc[i0 + 3, d]), k, a3)
        simd.vstore(s, 0, jb, a0)
        simd.vstore(s, 1, jb, a1)
        simd.vstore(s, 2, jb, a2)
        simd.vstore(s, 3, jb, a3)


@njit(inline="always", **JIT)
def _weighted4(s, n, rows, Dp, out):
    """out[r, :Dp] = sum_{j < n} s[r, j] rows[j, :Dp] for the block's 4 rows, j in order; s [4, Tp],
    rows [Tp, Dp], out [4, Dp]."""
    for dd in range(0, Dp, simd.LANES):
        a0, a1, a2, a3 = simd.vzero(), simd.vzero(), simd.vzero(), simd.vzero()
        for j in range(n):
            v = simd.vload(rows, j, dd)
            a0 = simd.vfma(simd.vsplat(s[0, j]), v, a0)
            a1 = simd.vfma(simd.vsplat(s[1, j]), v, a1)
            a2 = simd.vfma(simd.vsplat(s[2, j]), v, a2)
            a3 = simd.vfma(simd.vsplat(s[3, j]), v, a3)
        simd.vstore(out, 0, dd, a0)
        simd.vstore(out, 1, dd, a1)
        simd.vstore(out, 2, dd, a2)
        simd.vstore(out, 3, dd, a3)


@njit(inline="always", **JIT)
def _accumulate4(s, n, vecs, i0, Dp, acc):
    """acc[j, :Dp] += sum_r s[r, j] vecs[i0 + r, :Dp] for j < n, the rows r = 0..3 in order (dk and dv:
    each key gathers from the block's 4 rows); vecs [Tp, Dp], acc [Tp, Dp]."""
    for dd in range(0, Dp, simd.LANES):
        v0, v1 = simd.vload(vecs, i0, dd), simd.vload(vecs, i0 + 1, dd)
        v2, v3 = simd.vload(vecs, i0 + 2, dd), simd.vload(vecs, i0 + 3, dd)
        for j in range(n):
            a = simd.vload(acc, j, dd)
            a = simd.vfma(simd.vsplat(s[0, j]), v0, a)
            a = simd.vfma(simd.vsplat(s[1, j]), v1, a)
            a = simd.vfma(simd.vsplat(s[2, j]), v2, a)
            a = simd.vfma(simd.vsplat(s[3, j]), v3, a)
            simd.vstore(acc, j, dd, a)


# ---- eight-lane operations for the softmax rows ------------------------------------------------------
# Why: a query row's softmax is over n <= T keys (T = 64-100 here), too short for LLVM's loop vectoriser,
# which takes 32 values a turn and leaves the rest (up to 31) to a scalar loop: the softmax took 60% of the
# attention at 16 x 32. These extend simd.py's <8 x float> with what a softmax needs, so a row is
# ceil(n / 8) vector steps. Each is one or a few instructions; vexp is cpu._exp's operations, lane by lane,
# in its order (the same bits). Horizontal sums and maxima run in one fixed order.
_I32 = ir.IntType(32)
_IVEC = ir.VectorType(_I32, simd.LANES)
V8 = simd.f32x8


def _vec(context, builder, x):
    """A float32 scalar in every lane (LLVM IR)."""
    one = builder.insert_element(ir.Constant(simd._VEC, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(simd._VEC, ir.Undefined), ir.Constant(_IVEC, [0] * simd.LANES))


def _fconst(value):
    return ir.Constant(simd._VEC, [float(F32(value))] * simd.LANES)


@intrinsic(python=lambda a, b: (a * b).astype(F32))
def vmul(typingctx, a, b):
    """a * b in each lane."""
    return V8(V8, V8), lambda context, builder, sig, args: builder.fmul(*args)


@intrinsic(python=lambda a, b: (a - b).astype(F32))
def vsub(typingctx, a, b):
    """a - b in each lane."""
    return V8(V8, V8), lambda context, builder, sig, args: builder.fsub(*args)


@intrinsic(python=lambda a, b: (a + b).astype(F32))
def vadd(typingctx, a, b):
    """a + b in each lane."""
    return V8(V8, V8), lambda context, builder, sig, args: builder.fadd(*args)


@intrinsic(python=lambda a, b: (a / b).astype(F32))
def vdiv(typingctx, a, b):
    """a / b in each lane."""
    return V8(V8, V8), lambda context, builder, sig, args: builder.fdiv(*args)


@intrinsic(python=lambda a, b: np.where(a < b, b, a).astype(F32))
def vmax(typingctx, a, b):
    """max(a, b) in each lane (as Python's max: a unless a < b)."""
    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered("<", *args), args[1], args[0])
    return V8(V8, V8), codegen


@intrinsic(python=lambda v, count, fill: np.where(np.arange(simd.LANES) < count, v, F32(fill)).astype(F32))
def vhead(typingctx, v, count, fill):
    """v in lanes l < count, fill (a float32) in the rest."""
    def codegen(context, builder, sig, args):
        n = builder.trunc(args[1], _I32) if args[1].type.width > 32 else args[1]
        n = builder.insert_element(ir.Constant(_IVEC, ir.Undefined), n, ir.Constant(_I32, 0))
        n = builder.shuffle_vector(n, ir.Constant(_IVEC, ir.Undefined), ir.Constant(_IVEC, [0] * simd.LANES))
        below = builder.icmp_signed("<", ir.Constant(_IVEC, list(range(simd.LANES))), n)
        return builder.select(below, args[0], _vec(context, builder, args[2]))
    return V8(V8, types.intp, types.float32), codegen


def _lanes_python(v, op):
    a = [F32(x) for x in v]
    return op(op(op(a[0], a[1]), op(a[2], a[3])), op(op(a[4], a[5]), op(a[6], a[7])))


@intrinsic(python=lambda v: F32(_lanes_python(v, lambda a, b: F32(a + b))))
def vhsum(typingctx, v):
    """((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)): the lanes' sum in one fixed order."""
    def codegen(context, builder, sig, args):
        lanes = [builder.extract_element(args[0], ir.Constant(_I32, i)) for i in range(simd.LANES)]
        while len(lanes) > 1:
            lanes = [builder.fadd(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
        return lanes[0]
    return types.float32(V8), codegen


@intrinsic(python=lambda v: F32(_lanes_python(v, lambda a, b: b if a < b else a)))
def vhmax(typingctx, v):
    """The largest lane (-inf when every lane is -inf)."""
    def codegen(context, builder, sig, args):
        lanes = [builder.extract_element(args[0], ir.Constant(_I32, i)) for i in range(simd.LANES)]
        while len(lanes) > 1:
            lanes = [builder.select(builder.fcmp_ordered("<", lanes[i], lanes[i + 1]), lanes[i + 1], lanes[i])
                     for i in range(0, len(lanes), 2)]
        return lanes[0]
    return types.float32(V8), codegen


@intrinsic(python=lambda x: np.array([_exp(F32(v)) for v in x], F32))
def vexp(typingctx, x):
    """cpu._exp in each lane: the same operations in the same order, so the same bits."""
    def codegen(context, builder, sig, args):
        x = args[0]
        lo, hi = _fconst(-87.3), _fconst(88.3)
        x = builder.select(builder.fcmp_ordered("<", lo, x), x, lo)  # max(x, -87.3)
        x = builder.select(builder.fcmp_ordered("<", hi, x), hi, x)  # min(that, 88.3)
        floor = cgutils.get_or_insert_function(builder.module, ir.FunctionType(simd._VEC, [simd._VEC]),
                                               "llvm.floor.v8f32")
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(simd._VEC, [simd._VEC] * 3),
                                             "llvm.fma.v8f32")
        n = builder.call(floor, [builder.call(fma, [x, _fconst(1.44269504088896341), _fconst(0.5)])])
        r = builder.call(fma, [n, _fconst(2.12194440e-4), builder.call(fma, [n, _fconst(-0.693359375), x])])
        p = _fconst(1.9875691500e-4)
        for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = builder.call(fma, [p, r, _fconst(c)])
        p = builder.fadd(builder.call(fma, [builder.fmul(p, r), r, r]), _fconst(1.0))
        bits = builder.shl(builder.add(builder.fptosi(n, _IVEC), ir.Constant(_IVEC, [127] * simd.LANES)),
                           ir.Constant(_IVEC, [23] * simd.LANES))
        return builder.fmul(p, builder.bitcast(bits, simd._VEC))
    return V8(V8), codegen


def _transpose8_python(src, i, j, dst, k, l):
    dst[k:k + simd.LANES, l:l + simd.LANES] = src[i:i + simd.LANES, j:j + simd.LANES].T


@intrinsic(python=_transpose8_python)
def vtranspose8(typingctx, src, i, j, dst, k, l):
    """dst[k:k+8, l:l+8] = src[i:i+8, j:j+8].T: eight row loads, 24 shuffles in three stages (pairs of
    rows interleaved, then pairs of pairs, then the 128-bit halves), eight row stores. Why: as a scalar
    loop LLVM vectorises the transpose with AVX-512 gathers and scatters, which took an eighth of the
    attention's time at 8-wide heads. Both C-contiguous 2-D float32; no bounds check (the block is inside both)."""
    simd._check_row_array(src)
    simd._check_row_array(dst)

    def codegen(context, builder, sig, args):
        rows = [builder.load(simd._row_pointer(context, builder, sig.args[0], args[0],
                                               builder.add(args[1], ir.Constant(args[1].type, r)), args[2]),
                             align=4) for r in range(simd.LANES)]

        def shuffle(a, b, lanes):
            return builder.shuffle_vector(a, b, ir.Constant(_IVEC, lanes))
        lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]  # 2 x 2 blocks of rows a, b
        t = [shuffle(rows[r], rows[r + 1], half) for r in range(0, 8, 2) for half in (lo, hi)]
        lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]  # 4 x 4 blocks of rows 0-3, 4-7
        u = [shuffle(t[a], t[a + 2], half) for a in (0, 1, 4, 5) for half in (lo, hi)]
        lo, hi = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]  # columns c and c + 4
        cols = [shuffle(u[c], u[c + 4], lo) for c in range(4)] + [shuffle(u[c], u[c + 4], hi) for c in range(4)]
        for c in range(simd.LANES):
            row = builder.add(args[4], ir.Constant(args[4].type, c))
            builder.store(cols[c], simd._row_pointer(context, builder, sig.args[3], args[3], row, args[5]), align=4)
        return context.get_dummy_value()
    return types.void(src, types.intp, types.intp, dst, types.intp, types.intp), codegen


@njit(inline="always", **JIT)
def _key_masks(keep_row, T, masks):
    """masks[0, j] = 0 for a kept key j < T, -inf otherwise (added to scaled scores before the max);
    masks[1, j] = 1 or 0 likewise (multiplied into the exps). masks [2, Tp]. -> whether any key j < T is
    padded (if none, the rows skip the masks: adding 0 and multiplying by 1 change no value)."""
    padded = False
    for j in range(masks.shape[1]):
        kept = j < T and keep_row[j] != 0
        masks[0, j] = F32(0) if kept else F32(-np.inf)
        masks[1, j] = F32(1) if kept else F32(0)
        padded = padded or (j < T and not kept)
    return padded


# The row functions below take a row's whole vectors (keys jb..jb+7 all < n) in one loop and its last,
# partial vector apart, where vhead clears the lanes past n: the same values as clearing every vector.
@njit(inline="always", **JIT)
def _scaled_masked(s, r, jb, vs, masks, padded):
    """s[r, jb:jb+8] * scale, plus the padding mask's 0 / -inf where keys are padded."""
    x = vmul(simd.vload(s, r, jb), vs)
    return vadd(x, simd.vload(masks, 0, jb)) if padded else x


@njit(inline="always", **JIT)
def _softmax_row_stats(s, r, n, scale, masks, padded):
    """In place on s[r, :n] (and to the next multiple of 8), the raw scores of a query row that sees keys
    j < n: e_j = exp(s_j scale - m) for kept keys, 0 for masked ones and j >= n; m the max of the kept
    scaled scores. -> (m, sum_j e_j): the weights are e_j / sum, left to the caller, which divides once
    per output instead of once per key. Two passes over whole vectors (scale, mask and max; exp and sum)."""
    vs, top = simd.vsplat(scale), simd.vsplat(F32(-np.inf))
    whole = n - n % simd.LANES
    for jb in range(0, whole, simd.LANES):  # scale and mask, and the running max
        x = _scaled_masked(s, r, jb, vs, masks, padded)
        simd.vstore(s, r, jb, x)
        top = vmax(top, x)
    if whole < n:
        x = vhead(_scaled_masked(s, r, whole, vs, masks, padded), n - whole, F32(-np.inf))
        simd.vstore(s, r, whole, x)
        top = vmax(top, x)
    m = vhmax(top)
    vm, acc = simd.vsplat(m), simd.vzero()
    for jb in range(0, whole, simd.LANES):
        e = vexp(vsub(simd.vload(s, r, jb), vm))
        if padded:
            e = vmul(e, simd.vload(masks, 1, jb))
        simd.vstore(s, r, jb, e)
        acc = vadd(acc, e)
    if whole < n:
        e = vmul(vexp(vsub(simd.vload(s, r, whole), vm)), simd.vload(masks, 1, whole))
        e = vhead(e, n - whole, F32(0))
        simd.vstore(s, r, whole, e)
        acc = vadd(acc, e)
    return m, vhsum(acc)


@njit(inline="always", **JIT)
def _softmax_row_weights(s, r, n, scale, m, total, masks, padded):
    """In place on s[r]: the recomputed scores s_j -> the weights exp(s_j scale - m) (1 / total) for kept
    keys j < n, 0 for the rest of the row's vectors (_softmax_row_stats's exps, the same bits; one division
    a row, not one a key: the divisions had taken a tenth of the backward)."""
    vs, vm, vt = simd.vsplat(scale), simd.vsplat(m), simd.vsplat(F32(1) / total)
    whole = n - n % simd.LANES
    for jb in range(0, whole, simd.LANES):
        w = vmul(vexp(vsub(vmul(simd.vload(s, r, jb), vs), vm)), vt)
        simd.vstore(s, r, jb, vmul(w, simd.vload(masks, 1, jb)) if padded else w)
    if whole < n:
        w = vmul(vexp(vsub(vmul(simd.vload(s, r, whole), vs), vm)), vt)
        simd.vstore(s, r, whole, vhead(vmul(w, simd.vload(masks, 1, whole)), n - whole, F32(0)))


@njit(inline="always", **JIT)
def _softmax_row_backward(g, w, r, n, scale):
    """In place on g[r]: (g_j - sum_k g_k w_k) w_j scale over the row's vectors j < ceil(n / 8) * 8 (the
    softmax backward in attention_backward's order; w is 0 past n, so those lanes become 0)."""
    acc = simd.vzero()
    whole = n - n % simd.LANES
    for jb in range(0, whole, simd.LANES):
        acc = vadd(acc, vmul(simd.vload(g, r, jb), simd.vload(w, r, jb)))
    if whole < n:
        acc = vadd(acc, vmul(vhead(simd.vload(g, r, whole), n - whole, F32(0)), simd.vload(w, r, whole)))
    t, vs = simd.vsplat(vhsum(acc)), simd.vsplat(scale)
    for jb in range(0, n, simd.LANES):
        simd.vstore(g, r, jb, vmul(vmul(vsub(simd.vload(g, r, jb), t), simd.vload(w, r, jb)), vs))


@njit(inline="always", **JIT)
def _attend_head(qkv, b, h, H, T, scale, keep, drop, merged, stats, D, qc, kc, kt, vc, s, o):
    """causal_attention_kernel's work for one (batch row b, head h); qc, kc, vc [Tp, Dp], kt [Dp, Tp], s [4, Tp],
    o [4, Dp]: scratch, zeroed before the share's first pair (Tp, Dp: T and D rounded up to multiples of 8;
    the padding rows of qc, kc and vc are never written, so they stay zero, and so do kt's padding columns)."""
    C = qkv.shape[1] // 3
    Dp = qc.shape[1]
    _head_rows(qkv, b, T, h * D, qc)
    _head_rows(qkv, b, T, C + h * D, kc)
    _head_rows(qkv, b, T, 2 * C + h * D, vc)
    _transpose_rows(kc, T, kt)  # (its rows past D hold the next head's columns: the scores read d < D)
    dropped = drop.shape[0] > 0
    masks = np.empty((2, kt.shape[1]), F32)
    padded = _key_masks(keep[b], T, masks)
    for i0 in range(0, T, ROWS):
        n_max = min(i0 + ROWS, T)  # keys the block's last row may see (causal)
        _scores4(qc, i0, kt, n_max, D, s)
        for r in range(min(ROWS, T - i0)):
            i = i0 + r  # (s[r, j], not a row view: a view costs two reference-count calls)
            n = i + 1
            m, total = _softmax_row_stats(s, r, n, scale, masks, padded)  # s[r, :n] = exp(scaled score - m)
            stats[b, h, i, 0], stats[b, h, i, 1] = m, total
            for j in range(n, n_max):  # keys this row may not see: weight 0
                s[r, j] = F32(0)
            if dropped:  # the weights after dropout
                for j in range(n):
                    s[r, j] *= drop[b, h, i, j]
        _weighted4(s, n_max, vc, Dp, o)  # sum_j e_ij v_j
        for r in range(min(ROWS, T - i0)):
            i = i0 + r
            total = stats[b, h, i, 1]
            vt = simd.vsplat(total)
            for dd in range(0, Dp, simd.LANES):
                simd.vstore(o, r, dd, vdiv(simd.vload(o, r, dd), vt))
            _put_row(o, r, D, merged, b * T + i, h * D)


@njit(parallel=True, **JIT)
def causal_attention_kernel(qkv, T, H, scale, keep, drop, merged, stats, shares):
    """Mirrors layers.attention_forward (causal, a padding mask, dropout on the weights) for every (batch
    row, head), reading q, k, v from the fused qkv rows.

    qkv [B*T, 3C] (q, k, v side by side, D = C / H columns per head); keep [B, T] (1 = key not padded;
    every row sees a kept key); drop [B, H, T, T] dropout mask or [0, 0, 0, 0]; merged [B*T, C] gets the
    output with heads merged; stats [B, H, T, 2] each row's max scaled score and sum of exps.
    Per (b, h): T^2 D / 2 multiply-adds twice and T^2 / 2 exps; q, k, v read once into scratch. The
    B * H pairs are cut into `shares` runs of consecutive pairs (numba.get_num_threads(): one per thread),
    each run with its scratch zeroed once, each pair one run's whole, so the result depends on neither the
    thread count nor `shares` (one compiled body for every count)."""
    B = keep.shape[0]
    D = qkv.shape[1] // 3 // H
    Tp, Dp = -(-T // 8) * 8, -(-D // 8) * 8
    n = max(1, min(shares, B * H))
    for t in prange(n):  # each thread's share of the pairs, with its scratch zeroed once
        qc, kc, vc = np.zeros((Tp, Dp), F32), np.zeros((Tp, Dp), F32), np.zeros((Tp, Dp), F32)
        kt, s, o = np.zeros((Dp, Tp), F32), np.zeros((ROWS, Tp), F32), np.zeros((ROWS, Dp), F32)
        for bh in range(t * B * H // n, (t + 1) * B * H // n):
            _attend_head(qkv, bh // H, bh % H, H, T, scale, keep, drop, merged, stats, D, qc, kc, kt, vc, s, o)


@njit(inline="always", **JIT)
def _attend_head_backward(dmerged, qkv, stats, keep, drop, scale, dqkv, b, h, H, T, D, qc, kc, vc, kt, vt, doc,
                          dk, dv, s, dp, pm, o):
    """causal_attention_backward_kernel's work for one (b, h); qc, kc, vc, doc, dk, dv [Tp, Dp], kt, vt [Dp, Tp],
    s, dp, pm [4, Tp], o [4, Dp]: scratch as _attend_head's (dk and dv zeroed here)."""
    C = qkv.shape[1] // 3
    Dp = qc.shape[1]
    for j in range(dk.shape[0]):  # accumulated below, pair by pair
        for dd in range(0, Dp, simd.LANES):
            simd.vstore(dk, j, dd, simd.vzero())
            simd.vstore(dv, j, dd, simd.vzero())
    _head_rows(qkv, b, T, h * D, qc)
    _head_rows(qkv, b, T, C + h * D, kc)
    _head_rows(qkv, b, T, 2 * C + h * D, vc)
    _head_rows(dmerged, b, T, h * D, doc)
    _transpose_rows(kc, T, kt)
    _transpose_rows(vc, T, vt)
    dropped = drop.shape[0] > 0
    masks = np.empty((2, kt.shape[1]), F32)
    padded = _key_masks(keep[b], T, masks)
    for i0 in range(0, T, ROWS):
        n_max = min(i0 + ROWS, T)
        rows = min(ROWS, T - i0)
        _scores4(qc, i0, kt, n_max, D, s)  # the forward's scores, the same bits
        _scores4(doc, i0, vt, n_max, D, dp)  # d(dropped weights)_ij = dout_i . v_j
        for r in range(ROWS):
            i = i0 + r  # w_j = s[r, j], g_j = dp[r, j]
            n = i + 1 if r < rows else 0  # rows past T (padding) take no part
            m, total = (stats[b, h, i, 0], stats[b, h, i, 1]) if r < rows else (F32(0), F32(1))
            _softmax_row_weights(s, r, n, scale, m, total, masks, padded)  # the weights, from the forward's exps
            for j in range(n, n_max):
                s[r, j] = F32(0)
                dp[r, j] = F32(0)
            if dropped:  # through the dropout: its factor on the gradient (the dropped weights come below)
                for j in range(n):
                    dp[r, j] *= drop[b, h, i, j]
        if dropped:  # dv_j += (dropped w)_ij dout_i
            for r in range(ROWS):
                for j in range(n_max):
                    pm[r, j] = s[r, j] * drop[b, h, i0 + r, j] if r < rows else F32(0)
            _accumulate4(pm, n_max, doc, i0, Dp, dv)
        else:
            _accumulate4(s, n_max, doc, i0, Dp, dv)
        for r in range(rows):  # the softmax backward, in attention_backward's order: ((dw - t) w) scale
            _softmax_row_backward(dp, s, r, i0 + r + 1, scale)
        _accumulate4(dp, n_max, qc, i0, Dp, dk)  # dk_j += ds_ij q_i
        _weighted4(dp, n_max, kc, Dp, o)  # dq_i = sum_j ds_ij k_j
        for r in range(rows):
            _put_row(o, r, D, dqkv, b * T + i0 + r, h * D)
    for j in range(T):
        _put_row(dk, j, D, dqkv, b * T + j, C + h * D)
        _put_row(dv, j, D, dqkv, b * T + j, 2 * C + h * D)


@njit(parallel=True, **JIT)
def causal_attention_backward_kernel(dmerged, qkv, T, H, stats, keep, drop, scale, dqkv, shares):
    """Mirrors layers.attention_backward for causal_attention_kernel's forward: dmerged [B*T, C] (heads
    merged) -> dqkv [B*T, 3C] (dq, dk, dv side by side, as the qkv rows). Per (b, h) one pass over the
    rows, the weights rebuilt from stats; dk and dv accumulate in scratch in row order. Masked keys have
    weight 0: no gradient. The (b, h) pairs are shared among `shares` runs as in the forward."""
    B = keep.shape[0]
    D = qkv.shape[1] // 3 // H
    Tp, Dp = -(-T // 8) * 8, -(-D // 8) * 8
    n = max(1, min(shares, B * H))
    for t in prange(n):  # as the forward: scratch once per share (dk and dv are zeroed per pair)
        qc, kc, vc = np.zeros((Tp, Dp), F32), np.zeros((Tp, Dp), F32), np.zeros((Tp, Dp), F32)
        kt, vt = np.zeros((Dp, Tp), F32), np.zeros((Dp, Tp), F32)
        doc, dk, dv = np.zeros((Tp, Dp), F32), np.zeros((Tp, Dp), F32), np.zeros((Tp, Dp), F32)
        s, dp, pm, o = np.zeros((ROWS, Tp), F32), np.zeros((ROWS, Tp), F32), np.zeros((ROWS, Tp), F32), \
            np.zeros((ROWS, Dp), F32)
        for bh in range(t * B * H // n, (t + 1) * B * H // n):
            _attend_head_backward(dmerged, qkv, stats, keep, drop, scale, dqkv, bh // H, bh % H, H, T, D, qc, kc,
                                  vc, kt, vt, doc, dk, dv, s, dp, pm, o)


# ---- the loss --------------------------------------------------------------------------------------
@njit(**JIT)
def log_softmax_picked_kernel(logits, labels, lse, picked):
    """For each row with a target (labels[i] != -100): lse[i] = log sum exp(logits[i]) and the row's
    log-probability of its target, packed in row order into picked[:count]; returns count.
    (layers.log_softmax's z - max - log(sum(exp(z - max))), the exp being cpu._exp.)"""
    N, V = logits.shape
    count = 0
    for i in range(N):
        y = labels[i]
        if y == -100:
            lse[i] = F32(0)
            continue
        z = logits[i]
        m = cpu._max(z, V)
        total = F32(0)
        for k in range(V):
            total += _exp(z[k] - m)
        log_total = np.log(total)
        lse[i] = m + log_total
        picked[count] = (z[y] - m) - log_total
        count += 1
    return count


@njit(**JIT)
def cross_entropy_backward_kernel(logits, labels, lse, scale, out):
    """out[i] = (softmax(logits[i]) - onehot(labels[i])) * scale for rows with a target, 0 for the rest."""
    N, V = logits.shape
    for i in range(N):
        y = labels[i]
        if y == -100:
            for k in range(V):
                out[i, k] = F32(0)
            continue
        for k in range(V):
            out[i, k] = _exp(logits[i, k] - lse[i])
        out[i, y] -= F32(1.0)  # layers.cross_entropy_backward's order: softmax - onehot, then the scale
        for k in range(V):
            out[i, k] *= scale


# ---- AdamW -----------------------------------------------------------------------------------------
@njit(**JIT)
def adamw_kernel(p, g, m, v, decay, b1, c1, b2, c2, step_size, root_c2, eps):
    """optim.AdamW.step for one tensor in one pass, with its operations in its order (the same bits):
    p *= decay (1 - lr wd, or 1); m = b1 m + c1 g; v = b2 v + c2 g^2 (c1 = 1 - b1, c2 = 1 - b2);
    p -= step_size m / (sqrt(v) / root_c2 + eps). p, g, m, v: float32 of one size (flattened); the
    scalars float32, rounded as optim.AdamW rounds them."""
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * b1 + c1 * gi
        vi = v[i] * b2 + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (np.sqrt(vi) / root_c2 + eps)
