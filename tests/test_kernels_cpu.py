"""The Numba CPU kernels (kernels/cpu.py) against the NumPy reference (layers.py).

Shapes are deliberately odd: widths that are not multiples of 8 (the vector width), sequence lengths
that are not multiples of the query block (patched down to 16 so that several blocks run), caches of
every length from 1 to 70. Every comparison checks shape, then dtype (float32), then values.
"""

import numba
import numpy as np
import pytest
from numba import njit

from minigpt_pixels import layers
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.kernels import cpu, cpu_loops
from minigpt_pixels.kernels import threads as thread_policy
from minigpt_pixels.model import (ImageGPTForCausalImageModeling, KVCache, ModelInputError, init_weights,
                                  transformer_shapes)

from .compiled_code import FLOAT64_OP, assembly
from .conftest import report

F32 = np.float32
TOL = 1e-5  # kernel vs reference on O(1) float32 values
BLOCK = 16  # QUERY_BLOCK for these tests: T = 37 gives blocks of 16, 16 and 5 rows


def check(name, ours, ref, tol=TOL):
    assert ours.dtype == np.float32, f"{name}: dtype {ours.dtype}, expected float32"
    return report(name, ours, ref, tol)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(cpu, "QUERY_BLOCK", BLOCK)


def allowed_keys(T, S):
    """Reference causal pattern: row t sees keys up to S - T + t."""
    return np.tri(T, S, k=S - T, dtype=bool)


# ---- scalar and elementwise kernels ------------------------------------------------------------------
@njit
def _exp_array(x, out):
    for i in range(x.size):
        out[i] = cpu_loops._exp(x[i])


def test_exp_against_numpy():
    x = np.concatenate([np.linspace(-87, 88, 20001, dtype=F32), F32([0, -0.0, 1e-30, -1e-30])])
    out = np.empty_like(x)
    _exp_array(x, out)
    ref = np.exp(x.astype(np.float64))
    rel = float(np.max(np.abs(out / ref - 1)))
    print(f"[parity] _exp: max relative error {rel:.3g}")
    assert out.dtype == np.float32 and rel < 3e-7
    # outside the clamp: tiny and huge instead of 0 and inf (documented; callers select exact zeros)
    _exp_array(F32([-1000, -np.inf, 1000]), out[:3])
    assert 0 <= out[0] < 1e-37 and 0 <= out[1] < 1e-37 and 1e38 < out[2] < np.inf


def test_layer_norm_kernel(rng):
    x = rng.normal(size=(37, 45)).astype(F32) * 3
    w = rng.normal(size=45).astype(F32)
    out = np.empty_like(x)
    cpu_loops.layer_norm_kernel(x, w, F32(1e-5), out)
    check("layer_norm", out, layers.layer_norm(x, w, 1e-5))
    check("layer_norm wrapper [B, T, C]", cpu.layer_norm(x.reshape(1, 37, 45), w, 1e-5),
          layers.layer_norm(x, w, 1e-5).reshape(1, 37, 45))


def test_residual_layer_norm_kernel(rng):
    x, y = (rng.normal(size=(37, 45)).astype(F32) for _ in range(2))
    b, w = (rng.normal(size=45).astype(F32) for _ in range(2))
    x_out, ln_out = np.empty_like(x), np.empty_like(x)
    cpu_loops.residual_layer_norm_kernel(x, y, b, w, F32(1e-5), x_out, ln_out)
    ref = x + (y + b)
    check("residual", x_out, ref, 0.0)  # same order of additions: bit-identical
    check("residual layer_norm", ln_out, layers.layer_norm(ref, w, 1e-5))


def test_bias_quick_gelu_kernel(rng):
    h = (rng.normal(size=(37, 45)) * 6).astype(F32)  # both tails of the sigmoid
    h[0, :4] = [-60, -30, 30, 60]  # exp(-1.702 y) near the ends of float32
    b = rng.normal(size=45).astype(F32)
    with np.errstate(over="ignore"):  # exp(-1.702 * -60) overflows to inf: y / inf = -0, as intended
        ref = layers.quick_gelu(h + b)
    cpu_loops.bias_quick_gelu_kernel(h, b)
    check("bias + quick_gelu", h, ref)


def test_causal_softmax_kernel(rng):
    Q, K, scale = 13, 40, F32(0.35)
    pos0 = K - Q  # the block's first row sees keys 0..27
    raw = (rng.normal(size=(Q, K)) * 4).astype(F32)
    keep = np.ones(K, np.uint8)
    keep[[3, 20, 39]] = 0
    additive = np.where(keep, F32(0), layers.MASK_MIN)
    with np.errstate(over="ignore"):
        ref = layers.softmax(np.where(allowed_keys(Q, K), raw * scale, layers.MASK_MIN) + additive)
    s = raw.copy()
    cpu_loops.causal_softmax_kernel(s, scale, pos0, keep)
    check("causal softmax", s, ref)
    strided = np.zeros((Q, K + 7), F32)[:, :K]  # rows of a wider array, as when writing into the weights
    strided[...] = raw
    cpu_loops.causal_softmax_kernel(strided, scale, pos0, keep)
    check("causal softmax (strided rows)", strided, ref)


# ---- attention ---------------------------------------------------------------------------------------
def reference_attention(q, k, v, scale, keep):
    mask = None if keep is None else layers.additive_mask(keep)
    return layers.attention(q, k, v, scale, causal=True, mask=mask)


@pytest.mark.parametrize("T", [1, 3])
def test_attention_rows_kernel_every_cache_length(rng, T):
    B, H, D, scale = 2, 3, 12, F32(0.29)
    for S in range(T, 71):
        q = rng.normal(size=(B, H, T, D)).astype(F32)
        k = rng.normal(size=(B, H, S + 5, D)).astype(F32)  # a longer buffer, as the KV cache's
        v = rng.normal(size=(B, H, S + 5, D)).astype(F32)
        keep = np.ones((B, S), np.uint8)
        if S > 2:
            keep[1, S // 2] = 0  # one padded key in the second sequence
        out, weights = np.empty((B, T, H, D), F32), np.empty((B, H, T, S), F32)
        cpu_loops.attention_rows_kernel(q, k, v, S, scale, keep, out, weights, True)
        ref_out, ref_w = reference_attention(q, k[:, :, :S], v[:, :, :S], scale, keep)
        assert out.dtype == weights.dtype == np.float32
        np.testing.assert_allclose(weights, ref_w, rtol=0, atol=TOL, err_msg=f"weights, S={S}")
        np.testing.assert_allclose(out, ref_out.transpose(0, 2, 1, 3), rtol=0, atol=TOL, err_msg=f"out, S={S}")
    check(f"attention rows T={T} (S=70)", out.transpose(0, 2, 1, 3), ref_out)


@pytest.mark.parametrize("past", [0, 5])
@pytest.mark.parametrize("need_weights", [True, False])
def test_blocked_causal_attention(rng, past, need_weights):
    B, H, T, D, scale = 2, 3, 37, 12, F32(0.29)
    S = past + T
    q = rng.normal(size=(B, H, T, D)).astype(F32)
    k, v = (rng.normal(size=(B, H, S, D)).astype(F32) for _ in range(2))
    keep = np.ones((B, S), np.uint8)
    keep[1, -6:] = 0  # right padding
    keep[0, 2] = 0
    out = np.empty((B, T, H, D), F32)
    weights = np.zeros((B, H, T, S), F32) if need_weights else None
    cpu.blocked_causal_attention(q, k, v, scale, past, keep, out, weights)
    ref_out, ref_w = reference_attention(q, k, v, scale, keep)
    check(f"blocked attention past={past} out", out.transpose(0, 2, 1, 3), ref_out)
    if need_weights:
        check(f"blocked attention past={past} weights", weights, ref_w)


def test_padding_keep_decides_the_fast_path():
    B, S = 2, 6
    keep = np.ones((B, S), np.int64)
    keep[1, -2:] = 0
    assert np.array_equal(cpu.padding_keep(layers.additive_mask(keep), B, S, 0), keep)
    assert cpu.padding_keep(None, B, S, 0).all()
    left = keep.copy()
    left[0, :2] = 0  # left padding: query 0 sees no kept key -> reference path
    assert cpu.padding_keep(layers.additive_mask(left), B, S, 0) is None
    assert cpu.padding_keep(layers.additive_mask(left), B, S, 2) is not None  # row 0 at position 2 sees key 2
    general = np.zeros((B, 1, 1, S), F32) - 1.5  # not a 0 / MASK_MIN mask
    assert cpu.padding_keep(general, B, S, 0) is None
    assert cpu.padding_keep(np.zeros((B, 1, S, S), F32), B, S, 0) is None  # per-query masks: reference path


# ---- the block -----------------------------------------------------------------------------------------
def block_setup(seed=0, **kw):
    cfg = ImageGPTConfig(**{**dict(vocab_size=17, n_positions=48, n_embd=36, n_layer=3, n_head=3), **kw})
    params = init_weights(transformer_shapes(cfg), cfg, seed)
    rng = np.random.default_rng(seed + 1)
    for name in params:  # well away from the default init: non-uniform attention, norms that matter
        params[name] = (params[name] + rng.normal(0, 0.1, params[name].shape)).astype(F32)
    return cfg, params


def make_mask(kind, rng, B, T, S):
    if kind is None:
        return None
    keep = np.ones((B, S), np.int64)
    if kind == "padding":
        keep[1, -5:] = 0
    elif kind == "left_padding":  # rows with no visible key: transformers' degenerate weights
        keep[1, :4] = 0
    elif kind == "general":
        return rng.normal(size=(B, 1, T, S)).astype(F32)
    return layers.additive_mask(keep)


BLOCK_CASES = {
    "plain": dict(),
    "padding": dict(mask="padding"),
    "left_padding": dict(mask="left_padding"),
    "general_mask": dict(mask="general"),
    "cross_attention": dict(cfg=dict(add_cross_attention=True), cross=True),
    "gelu_new_inverse_layer_scale": dict(cfg=dict(activation_function="gelu_new",
                                                  scale_attn_by_inverse_layer_idx=True)),
    "no_scale": dict(cfg=dict(scale_attn_weights=False), mask="padding"),
}


@pytest.fixture(params=[1, 3], ids=["1thread", "3threads"])
def threads(request, monkeypatch):
    """Run the parallel sections (heads, batch rows, gelu rows; decode steps' matmuls and attention) on
    this many threads, however small."""
    monkeypatch.setattr(cpu, "workers_for", lambda work: request.param)
    monkeypatch.setattr(cpu, "decode_threads", lambda rows, work: request.param)
    monkeypatch.setattr(cpu, "fused_step_threads", lambda work: request.param)
    return request.param


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("case", BLOCK_CASES)
def test_transformer_block_against_reference(case, need_weights, threads):
    spec = BLOCK_CASES[case]
    cfg, p = block_setup(**spec.get("cfg", {}))
    rng = np.random.default_rng(3)
    B, T, C = 2, 37, cfg.n_embd
    x = rng.normal(size=(B, T, C)).astype(F32)
    mask = make_mask(spec.get("mask"), rng, B, T, T)
    kw = dict(mask=mask)
    if spec.get("cross"):
        enc_keep = np.ones((B, 7), np.int64)
        enc_keep[0, -2:] = 0
        kw.update(encoder_hidden_states=rng.normal(size=(B, 7, C)).astype(F32),
                  encoder_mask=layers.additive_mask(enc_keep))
    ours, w_ours = cpu.transformer_block(x, p, "h.2.", cfg, 2, need_weights=need_weights, **kw)
    ref, w_ref = layers.transformer_block(x, p, "h.2.", cfg, 2, **kw)
    check(f"block {case}", ours, ref)
    assert len(w_ours) == len(w_ref)
    for i, (a, b) in enumerate(zip(w_ours, w_ref)):
        if need_weights:
            check(f"block {case} weights[{i}]", a, b)
        else:
            assert a is None


@pytest.mark.parametrize("mask_kind", [None, "padding"])
def test_kv_cache_decode_equals_full_forward(mask_kind, threads):
    """Prompt chunks of every kind (rows kernel, blocks from 0, blocks after a past), then single tokens."""
    cfg, p = block_setup()
    rng = np.random.default_rng(5)
    B, T = 2, 45
    x = rng.normal(size=(B, T, cfg.n_embd)).astype(F32)
    full_mask = make_mask(mask_kind, rng, B, T, T)
    full, _ = cpu.transformer_block(x, p, "h.1.", cfg, 1, mask=full_mask, need_weights=False)
    ref, (w_ref,) = layers.transformer_block(x, p, "h.1.", cfg, 1, mask=full_mask)
    check("block full forward", full, ref)

    cache = KVCache(cfg, B, max_length=T + 2)
    chunks = [(0, 5), (5, 25), (25, 36)] + [(t, t + 1) for t in range(36, T)]  # 5 <= SMALL_T < 20, 11
    outs, weights = [], []
    for start, stop in chunks:
        mask = None if full_mask is None else full_mask[..., :stop]  # [B, 1, 1, past + new]
        o, (w,) = cpu.transformer_block(x[:, start:stop], p, "h.1.", cfg, 1, mask=mask, cache=cache)
        outs.append(o)
        weights.append(w)
    check(f"decode with KV cache ({mask_kind}) vs full forward", np.concatenate(outs, axis=1), ref)
    for (start, stop), w in zip(chunks, weights):
        check(f"decode weights rows {start}:{stop}", w, w_ref[:, :, start:stop, :stop])


@pytest.mark.parametrize("B", [2, 5])
@pytest.mark.parametrize("mask_kind", [None, "padding"])
def test_decode_block_kernel_equals_python_path(B, mask_kind, threads, monkeypatch):
    """Decode steps through decode_block_kernel (when the step runs on threads) give the Python path's
    bits, outputs and cache alike, and the reference's values."""
    cfg, p = block_setup()
    rng = np.random.default_rng(8)
    T = 10
    x = rng.normal(size=(B, T, cfg.n_embd)).astype(F32)
    full_mask = make_mask(mask_kind, rng, B, T, T)
    ref, _ = layers.transformer_block(x, p, "h.2.", cfg, 2, mask=full_mask)
    calls = []
    real_kernel, real_decode_layers = cpu_loops.decode_layers_kernel, cpu.decode_layers
    monkeypatch.setattr(cpu, "decode_layers_kernel", lambda *a: calls.append(a[0].shape) or real_kernel(*a))

    def decode(fused):
        monkeypatch.setattr(cpu, "decode_layers", real_decode_layers if fused else lambda *a: None)
        cache = KVCache(cfg, B, max_length=T)
        outs = []
        for start, stop in [(0, 6)] + [(t, t + 1) for t in range(6, T)]:
            mask = None if full_mask is None else full_mask[..., :stop]
            o, (w,) = cpu.transformer_block(x[:, start:stop], p, "h.2.", cfg, 2, mask=mask, cache=cache,
                                            need_weights=False)
            assert w is None
            outs.append(o)
        return np.concatenate(outs, axis=1), cache

    fused, fused_cache = decode(True)
    assert calls == ([(B, cfg.n_embd)] * 4 if threads > 1 else [])  # the 4 one-position steps
    plain, plain_cache = decode(False)
    check(f"decode_block_kernel B={B} {mask_kind} vs reference", fused, ref)
    np.testing.assert_array_equal(fused, plain)
    assert fused_cache.lengths == plain_cache.lengths
    for a, b in zip(fused_cache.keys + fused_cache.values, plain_cache.keys + plain_cache.values):
        np.testing.assert_array_equal(a, b)


def test_decode_block_declines_what_it_does_not_take(monkeypatch):
    """decode_layers returns None, and leaves the cache as it was, for every case its kernel does not
    take; transformer_block then runs the Python path."""
    monkeypatch.setattr(cpu, "fused_step_threads", lambda work: 2)
    rng = np.random.default_rng(9)

    def attempt(B=2, T=1, mask=None, cfg_kw=None, weights=None):
        cfg, p = block_setup(**(cfg_kw or {}))
        p.update(weights or {})
        cache = KVCache(cfg, B)
        cache.claim(0, 4)  # 4 positions already cached
        x = rng.normal(size=(B, T, cfg.n_embd)).astype(F32)
        out = cpu.decode_layers(x, [layers.block_weights(p, "h.0.", cfg, 0)], [0], cfg, mask, cache)
        return out, cache.lengths[0]

    out, length = attempt()
    assert out.shape == (2, 1, 36) and length == 5  # taken: one position appended
    general = np.zeros((2, 1, 1, 5), F32)
    general[0, ..., 1] = -3.0  # an additive mask that is neither 0 nor MASK_MIN
    _, p = block_setup()
    for case in (dict(T=2), dict(B=cpu.SMALL_ROWS + 1), dict(mask=general),
                 dict(cfg_kw=dict(activation_function="gelu_new")),
                 dict(weights={"h.0.mlp.c_fc.weight": np.asfortranarray(p["h.0.mlp.c_fc.weight"])}),
                 dict(weights={"h.0.attn.c_attn.bias": p["h.0.attn.c_attn.bias"].astype(np.float64)})):
        out, length = attempt(**case)
        assert out is None and length == 4, case
    monkeypatch.setattr(cpu, "fused_step_threads", lambda work: 1)  # a model too small: the Python path
    out, length = attempt()
    assert out is None and length == 4


def test_decode_layers_needs_layers_numba_types_alike(monkeypatch):
    """Several layers go through one kernel call only when each weight's arrays type alike in Numba
    (a read-only one among writable ones would not index as one tuple), and only at one cache length."""
    monkeypatch.setattr(cpu, "fused_step_threads", lambda work: 2)
    cfg, p = block_setup()
    x = np.random.default_rng(10).normal(size=(2, 1, cfg.n_embd)).astype(F32)

    def attempt(params, lengths=(3, 3)):
        cache = KVCache(cfg, 2)
        for i, n in enumerate(lengths):
            cache.claim(i, n)
        blocks = [layers.block_weights(params, f"h.{i}.", cfg, i) for i in (0, 1)]
        out = cpu.decode_layers(x, blocks, [0, 1], cfg, None, cache)
        return out, cache.lengths[:2]

    out, lengths = attempt(p)
    assert out.shape == x.shape and lengths == [4, 4]
    read_only = dict(p)
    read_only["h.1.mlp.c_fc.weight"] = p["h.1.mlp.c_fc.weight"].copy()
    read_only["h.1.mlp.c_fc.weight"].flags.writeable = False
    assert attempt(read_only) == (None, [3, 3])
    assert attempt(p, lengths=(3, 2)) == (None, [3, 2])


@pytest.mark.parametrize("B", [2, cpu.SMALL_ROWS + 1])
def test_decode_attention_shares_heads_only_for_small_batches(monkeypatch, B):
    """A decode step's attention runs on Numba's threads for at most SMALL_ROWS rows; a bigger batch's
    matmuls run on BLAS's threads (blas_threads_for), and Numba's threads idling beside them halved a
    batch-32 iGPT-S run's speed, so its attention stays on one thread. The same numbers either way."""
    monkeypatch.setattr(cpu, "decode_threads", lambda rows, work: 2)
    calls = []
    for name in ("attention_rows_kernel", "attention_rows_parallel"):
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    cfg, p = block_setup()
    rng = np.random.default_rng(11)
    x = rng.normal(size=(B, 1, cfg.n_embd)).astype(F32)
    ref_cache, cache = KVCache(cfg, B), KVCache(cfg, B)
    past = rng.normal(size=(B, 3, cfg.n_embd)).astype(F32)
    for c in (ref_cache, cache):
        layers.transformer_block(past, p, "h.0.", cfg, 0, cache=c)
    ours, _ = cpu.self_attention(cpu.layer_norm(x, p["h.0.ln_1.weight"]), *[p[f"h.0.attn.{n}"] for n in (
        "c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias")], cfg.n_head, F32(0.25), cache=cache)
    ref, _ = layers.self_attention(layers.layer_norm(x, p["h.0.ln_1.weight"]), *[p[f"h.0.attn.{n}"] for n in (
        "c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias")], cfg.n_head, 0.25, cache=ref_cache)
    check(f"decode attention, batch {B}", ours, ref)
    assert calls == ["attention_rows_parallel" if B <= cpu.SMALL_ROWS else "attention_rows_kernel"]


def test_kv_cache_claim_checks_room():
    cfg, _ = block_setup()
    cache = KVCache(cfg, 2, max_length=5)
    assert cache.claim(1, 3) == 0 and cache.claim(1, 2) == 3
    assert cache.lengths == [0, 5, 0]
    with pytest.raises(ModelInputError, match="KV cache is full: 5 cached \\+ 1 new positions > max_length 5"):
        cache.claim(1, 1)
    assert cache.lengths == [0, 5, 0]


def test_parallel_sections_restore_blas_threads(threads):
    controller = thread_policy.blas_controller()
    before = [lib["num_threads"] for lib in controller.info()]
    cfg, p = block_setup()
    x = np.random.default_rng(0).normal(size=(2, 37, cfg.n_embd)).astype(F32)
    cpu.transformer_block(x, p, "h.0.", cfg, 0)
    assert [lib["num_threads"] for lib in controller.info()] == before


def test_blas_threads_policy():
    """BLAS runs on one thread where the "cpu" device shares the matmuls out itself: decode steps (Numba's
    threads, simd.small_matmul) and passes of ROW_SPLIT_MIN rows or more (in_parallel's threads, rows of
    each matmul, heads, gelu rows), so that BLAS's own threads never spin beside them; in between, BLAS
    keeps its own count. The count is given back afterwards. Numba's threads: one for a one-row step,
    all of them for a batch."""
    controller = thread_policy.blas_controller()
    blas = [lib for lib in controller.info() if lib["user_api"] == "blas"]
    assert blas, "NumPy's BLAS not found by threadpoolctl"
    before = [lib["num_threads"] for lib in blas]
    for rows in (1, 8, cpu.SMALL_ROWS, cpu.ROW_SPLIT_MIN, 1024):
        with thread_policy.blas_threads_for(rows):
            assert all(lib["num_threads"] == 1 for lib in controller.info() if lib["user_api"] == "blas")
    for rows in (cpu.SMALL_ROWS + 1, cpu.ROW_SPLIT_MIN - 1):
        with thread_policy.blas_threads_for(rows):
            assert [lib["num_threads"] for lib in controller.info() if lib["user_api"] == "blas"] == before
    assert [lib["num_threads"] for lib in controller.info() if lib["user_api"] == "blas"] == before
    big = thread_policy.DECODE_PARALLEL_MIN_WORK
    assert thread_policy.decode_threads(1, 100 * big) == 1  # a single sequence: one thread however big
    batch = thread_policy.DECODE_ROWS + 1
    assert thread_policy.decode_threads(batch, big - 1) == 1  # too small to repay a parallel launch
    assert thread_policy.decode_threads(batch, big) == numba.get_num_threads()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_matmul_shares_the_rows_of_a_big_pass_among_threads(monkeypatch, rng, workers):
    """More than SMALL_ROWS rows: `workers` threads each multiply their own rows by the whole of w (BLAS on
    one thread each); every row comes out as BLAS alone computes it, whatever the split."""
    calls = []
    real = cpu.in_parallel
    monkeypatch.setattr(cpu, "workers_for", lambda work: workers)
    monkeypatch.setattr(cpu, "in_parallel", lambda fn, items, n: calls.append((list(items), n)) or real(fn, items, n))
    N = cpu.ROW_SPLIT_MIN + 3
    a = rng.normal(size=(N, 24)).astype(F32)
    w = rng.normal(size=(24, 40)).astype(F32)
    out = cpu.matmul(a, w)
    assert out.dtype == F32 and out.shape == (N, 40)
    np.testing.assert_allclose(out, a @ w, rtol=1e-6, atol=1e-6)
    if workers == 1:
        assert calls == []
    else:
        pieces, n = calls[0]
        assert n == workers and len(pieces) == workers and pieces[0][0] == 0 and pieces[-1][1] == N
    calls.clear()
    np.testing.assert_allclose(cpu.matmul(a[:cpu.ROW_SPLIT_MIN - 1], w), a[:cpu.ROW_SPLIT_MIN - 1] @ w, rtol=1e-6,
                               atol=1e-6)
    assert calls == []  # fewer rows: BLAS alone, on its own threads


def test_in_parallel_runs_every_share_and_reraises_a_workers_error():
    """The caller takes the first share, the process's pool the rest; a worker's exception reaches the
    caller after every share has finished."""
    import threading

    seen = []
    thread_policy.in_parallel(lambda share: seen.append((threading.current_thread().name, list(share))),
                              list(range(7)), 3)
    assert sorted(x for _, share in seen for x in share) == list(range(7)) and len(seen) == 3
    names = sorted(name for name, _ in seen)
    assert names.count(threading.current_thread().name) == 1  # the caller took one share
    assert sum(name.startswith("minigpt-pixels-cpu") for name in names) == 2  # the pool the other two
    done = []

    def fail_second(share):
        if share[0] == 1:
            raise RuntimeError("worker failed")
        done.append(share[0])

    with pytest.raises(RuntimeError, match="worker failed"):
        thread_policy.in_parallel(fail_second, [0, 1, 2], 3)
    assert sorted(done) == [0, 2]


def test_matmul_takes_the_small_matmul_for_decode_steps(monkeypatch, rng):
    """2 .. SMALL_ROWS rows with work enough for threads go to simd.small_matmul; one row, small work and
    bigger inputs to BLAS; the same numbers either way."""
    calls = []
    real = cpu.simd.small_matmul
    monkeypatch.setattr(cpu.simd, "small_matmul",
                        lambda a, w, threads: calls.append((a.shape[0], threads)) or real(a, w, threads))
    monkeypatch.setattr(cpu.numba, "get_num_threads", lambda: 2)  # as on a 2-core machine, whatever this one has
    monkeypatch.setattr(thread_policy, "DECODE_PARALLEL_MIN_WORK", 36 * 44 * 2)
    w = rng.normal(size=(36, 44)).astype(F32)
    for rows in (1, 2, 9, cpu.SMALL_ROWS, cpu.SMALL_ROWS + 1, 100):
        a = rng.normal(size=(rows, 36)).astype(F32)
        out = cpu.matmul(a, w)
        assert out.shape == (rows, 44) and out.dtype == np.float32
        np.testing.assert_allclose(out, a @ w, rtol=1e-5, atol=1e-5)
    assert calls == [(2, cpu.DECODE_PARTS), (9, cpu.DECODE_PARTS), (cpu.SMALL_ROWS, cpu.DECODE_PARTS)]
    calls.clear()
    monkeypatch.setattr(thread_policy, "DECODE_PARALLEL_MIN_WORK", 36 * 44 * 3)
    cpu.matmul(rng.normal(size=(2, 36)).astype(F32), w)  # 2 rows, less work than the threshold
    assert calls == []


@pytest.mark.parametrize("T", [1, 3])
def test_attention_rows_parallel_equals_serial(rng, T):
    B, H, D, S, scale = 3, 5, 12, 40, F32(0.29)
    q = rng.normal(size=(B, H, T, D)).astype(F32)
    k, v = (rng.normal(size=(B, H, S + 4, D)).astype(F32) for _ in range(2))
    keep = np.ones((B, S), np.uint8)
    keep[2, 7] = 0
    results = []
    for kernel in (cpu_loops.attention_rows_kernel, cpu_loops.attention_rows_parallel):
        out, weights = np.empty((B, T, H, D), F32), np.empty((B, H, T, S), F32)
        kernel(q, k, v, S, scale, keep, out, weights, True)
        results.append((out, weights))
    np.testing.assert_array_equal(results[1][0], results[0][0])  # same loops per (b, h): same numbers
    np.testing.assert_array_equal(results[1][1], results[0][1])
    ref_out, _ = reference_attention(q, k[:, :, :S], v[:, :, :S], scale, keep)
    check("parallel attention rows", results[1][0].transpose(0, 2, 1, 3), ref_out)


# ---- float32 discipline --------------------------------------------------------------------------------
@njit
def _uses_float64(x):
    return x * 0.5  # 0.5 is a float64 literal: promotes


def test_compiled_kernels_do_no_float64_arithmetic(rng):
    """The assembly of every compiled kernel holds no double-precision instruction."""
    assert FLOAT64_OP.search(_asm(_uses_float64, F32(1)))  # the pattern does catch float64 arithmetic
    cfg, p = block_setup()
    x = rng.normal(size=(2, 37, cfg.n_embd)).astype(F32)
    cpu.transformer_block(x, p, "h.0.", cfg, 0, mask=make_mask("padding", rng, 2, 37, 37))  # compile all
    cache = KVCache(cfg, 2)
    cpu.transformer_block(x[:, :3], p, "h.0.", cfg, 0, cache=cache)
    q, k, v = (np.ascontiguousarray(a) for a in (x[:, None, :3], x[:, None], x[:, None]))
    cpu_loops.attention_rows_parallel(q, k, v, 3, F32(0.5), np.ones((2, 37), np.uint8), np.empty((2, 3, 1, 36), F32),
                                      np.empty((2, 1, 3, 3), F32), True)
    keys = np.zeros((2, 3, 8, 12), F32)
    w = layers.block_weights(p, "h.0.", cfg, 0)
    layer = (*(getattr(w, field) for field in cpu.DECODE_BLOCK_FIELDS), keys, np.zeros_like(keys))
    cpu_loops.decode_layers_kernel(x[:, 0], *((a, a) for a in layer), 3, np.ones((2, 8), np.uint8), F32(1e-5),
                                   np.ones(2, F32), 2)
    cpu_loops.decode_block_kernel(x[:, 0], *layer, 3, np.ones((2, 8), np.uint8), F32(1e-5), F32(1), 2)  # itself too
    kernels = [getattr(cpu_loops, name) for name in (
        "layer_norm_kernel", "residual_layer_norm_kernel", "bias_quick_gelu_kernel", "causal_softmax_kernel",
        "attention_rows_kernel", "attention_rows_parallel", "decode_block_kernel", "decode_layers_kernel")]
    public = {name for name, d in vars(cpu_loops).items() if hasattr(d, "inspect_asm") and not name.startswith("_")}
    assert public == {k.__name__ for k in kernels}, "a kernel of cpu_loops.py missing from this check"
    for kernel in kernels:
        assert kernel.signatures, kernel.__name__
        for sig, asm in assembly(kernel).items():
            found = FLOAT64_OP.findall(asm)
            assert not found, f"{kernel.__name__}{sig}: float64 instructions {found[:5]}"
            assert "float64" not in str(sig), f"{kernel.__name__}: float64 argument in {sig}"


def _asm(dispatcher, *args):
    dispatcher(*args)
    return "\n".join(dispatcher.inspect_asm().values())


# ---- the model on "cpu" against "numpy" ----------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    cfg = ImageGPTConfig(vocab_size=17, n_positions=40, n_embd=32, n_layer=2, n_head=4)
    model = ImageGPTForCausalImageModeling(cfg, seed=0)
    ref = ImageGPTForCausalImageModeling(cfg, params=model.params).to("numpy")
    return model.to("cpu"), ref


def test_model_cpu_matches_numpy(models, rng):
    model, ref = models
    assert model.device == "cpu" and ref.device == "numpy"
    ids = rng.integers(0, 16, size=(3, 37))
    ids[:, 0] = 16  # SOS
    mask = np.ones_like(ids)
    mask[2, -6:] = 0
    for kw in (dict(), dict(attention_mask=mask)):
        ours = model(ids, output_hidden_states=True, output_attentions=True, **kw)
        theirs = ref(ids, output_hidden_states=True, output_attentions=True, **kw)
        tag = "masked" if kw else "plain"
        check(f"model {tag} logits", ours.logits, theirs.logits)
        for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states, strict=True)):
            check(f"model {tag} hidden_states[{i}]", a, b)
        for i, (a, b) in enumerate(zip(ours.attentions, theirs.attentions, strict=True)):
            check(f"model {tag} attentions[{i}]", a, b)
        fast = model(ids, **kw)  # no weights asked: the path that skips them
        check(f"model {tag} logits without weights", fast.logits, theirs.logits)


def test_model_cpu_decode_with_cache_matches_numpy_forward(models, rng):
    model, ref = models
    ids = rng.integers(0, 16, size=(2, 30))
    full = ref(ids).logits
    cache = KVCache(model.config, 2)
    steps = [model(ids[:, :4], past_key_values=cache, use_cache=True).logits]
    steps += [model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits for t in range(4, 30)]
    check("model decode logits", np.concatenate(steps, axis=1), full)


def test_model_decode_step_runs_every_block_in_one_call(models, rng, monkeypatch):
    """A batch's decode step whose sections run on threads goes through decode_layers_kernel once, with
    every layer; asking for hidden states runs the blocks one by one instead. Same logits, to the bit,
    and the numpy forward's."""
    model, ref = models
    monkeypatch.setattr(cpu, "fused_step_threads", lambda work: 2)
    layer_counts = []
    real = cpu_loops.decode_layers_kernel
    monkeypatch.setattr(cpu, "decode_layers_kernel",
                        lambda x, ln_1, *a: layer_counts.append(len(ln_1)) or real(x, ln_1, *a))
    ids = rng.integers(0, 16, size=(3, 12))
    ids[:, 0] = 16
    whole, one_by_one = KVCache(model.config, 3), KVCache(model.config, 3)
    model(ids[:, :4], past_key_values=whole, use_cache=True)
    model(ids[:, :4], past_key_values=one_by_one, use_cache=True)
    assert layer_counts == []  # a 4-position prompt is no decode step
    steps, steps_blocks = [], []
    for t in range(4, 12):
        steps.append(model(ids[:, t:t + 1], past_key_values=whole, use_cache=True).logits)
        assert layer_counts == [model.config.n_layer]
        out = model(ids[:, t:t + 1], past_key_values=one_by_one, use_cache=True, output_hidden_states=True)
        assert layer_counts == [model.config.n_layer] + [1] * model.config.n_layer
        steps_blocks.append(out.logits)
        layer_counts.clear()
    np.testing.assert_array_equal(np.concatenate(steps, axis=1), np.concatenate(steps_blocks, axis=1))
    check("model decode steps in one call", np.concatenate(steps, axis=1), ref(ids).logits[:, 4:])


def test_generate_through_one_call_steps_equals_numpy(models, monkeypatch):
    """Greedy generate on "cpu" with its batch steps in one decode_layers_kernel call each gives the
    pure-NumPy reference's tokens."""
    model, ref = models
    monkeypatch.setattr(cpu, "fused_step_threads", lambda work: 2)
    steps = []
    real = cpu_loops.decode_layers_kernel
    monkeypatch.setattr(cpu, "decode_layers_kernel", lambda *a: steps.append(1) or real(*a))
    prompt = np.full((3, 1), 16)
    ours = model.generate(prompt, max_new_tokens=25)
    assert len(steps) == 25  # SOS alone (one position), then 24 tokens fed back (the last never is)
    np.testing.assert_array_equal(ours, ref.generate(prompt, max_new_tokens=25))



class FixedClock:
    """A StepClock that always picks `threads`, and records what it was told."""
    def __init__(self, threads):
        self.threads, self.recorded = threads, []

    def choose(self, key, most):
        return min(self.threads, most)

    def record(self, key, threads, seconds):
        self.recorded.append((key, threads))


@pytest.mark.parametrize("B", [1, 3])
def test_fused_steps_give_the_same_bits_on_any_thread_count(models, monkeypatch, B):
    """A single sequence's decode steps go through decode_layers_kernel too, and a fused step's logits are
    the same bits on one thread as on several (DECODE_PARTS blocks of K whatever the count): so StepClock
    may choose by timing alone. Both agree with the numpy reference."""
    model, ref = models
    monkeypatch.setattr(cpu, "fused_step_threads", lambda work: 2)
    ids = np.random.default_rng(11).integers(0, 16, size=(B, 9))
    ids[:, 0] = 16

    def steps(threads):
        clock = FixedClock(threads)
        monkeypatch.setattr(cpu, "STEP_CLOCK", clock)
        cache = KVCache(model.config, B)
        logits = [model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits for t in range(9)]
        assert [n for _, n in clock.recorded] == [threads] * 9  # every step fused, on `threads` threads
        return np.concatenate(logits, axis=1)

    one, several = steps(1), steps(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(one, several)
    check(f"fused decode steps, batch {B}", one, ref(ids).logits)


def test_step_clock_keeps_the_faster_setting_and_retries_the_other_ever_less_often():
    clock = thread_policy.StepClock(explore=2, longest=8)
    key, picks = "k", []

    def step(seconds_for):
        n = clock.choose(key, 4)
        picks.append(n)
        clock.record(key, n, seconds_for[n])

    step({4: 9.0, 1: 0.1})  # the first step warms up (Numba's thread pool starts): not counted against 4
    for _ in range(2):
        step({4: 1.0, 1: 0.1})  # each tried once: 4 threads, then 1
    assert picks == [4, 4, 1]
    del picks[0]
    for _ in range(16):
        step({4: 1.0, 1: 0.1})  # a loaded machine: one thread wins; 4 retried after 2, 4, 8 steps
    assert picks[2:] == [1, 1, 4] + [1] * 4 + [4] + [1] * 8
    picks.clear()
    for _ in range(6):
        step({4: 0.05, 1: 0.1})  # the load is gone: the retry wins, 4 threads are kept, 1 retried after 2
    assert picks == [4, 4, 4, 1, 4, 4]

def test_benchmark_script_runs(capsys):
    """benchmarks/bench_forward.py end to end on a tiny setting (needs torch and transformers)."""
    pytest.importorskip("transformers")
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_forward.py"
    spec = importlib.util.spec_from_file_location("bench_forward", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.forward_flops(1, 1024, 512, 2048, 24, 513) == pytest.approx(181.0e9, rel=1e-3)
    assert bench.main(["--layers", "1", "--tokens", "12", "--repeats", "1", "--threads", "1",
                       "--decode-steps", "2", "--peak-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "ratio ours / transformers" in out and "ms/step" in out


def test_in_parallel_works_in_a_forked_child():
    """A forked child (multiprocessing's default on Linux) has none of its parent's pool threads: it
    starts its own pool instead of waiting forever on the parent's."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import multiprocessing, numpy as np
        from minigpt_pixels.kernels import threads

        def work():
            out = []
            threads.in_parallel(lambda share: out.extend(share), list(range(6)), 3)
            return sorted(out)

        def child(queue):
            queue.put(work())

        if __name__ == "__main__":
            assert work() == list(range(6))  # the parent's pool exists now
            ctx = multiprocessing.get_context("fork")
            queue = ctx.Queue()
            p = ctx.Process(target=child, args=(queue,), daemon=True)
            p.start()
            print(queue.get(timeout=60))
            p.join(60)
            print(p.exitcode)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[0,", "1,", "2,", "3,", "4,", "5]", "0"], done.stdout
