"""kernels/cpu_train.py, the "cpu" device's training pass, against layers.py's pairs it mirrors.

Each mirror is compared with the reference function of its name on the same float32 inputs: shape,
dtype, then values within TOL relative (rel = max|ours - ref| / max|ref|, per tensor); AdamW's kernel
bit for bit. The whole model's gradients on this path against transformers are in test_backward.py
(golden and live, parametrised over the path). Shapes stay small: the kernels compile once per process.
"""

import contextlib

import numba
import numpy as np
import pytest

from minigpt_pixels import backprop, layers, optim
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.kernels import cpu_train, simd
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification

from .compiled_code import FLOAT64_OP, assembly

F32 = np.float32
TOL = 1e-5  # ours vs layers.py in float32 (cpu._exp is 2e-7 relative; sums reassociated)


def rel(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def check(name, ours, ref, tol=TOL):
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    assert ours.dtype == ref.dtype == F32, f"{name}: dtype {ours.dtype}, reference {ref.dtype}"
    r = rel(ours, ref)
    assert r <= tol, f"{name}: rel {r:.3g} > {tol:g}"
    return r


def config(**kw):
    base = dict(vocab_size=17, n_positions=12, n_embd=24, n_layer=2, n_head=3, resid_pdrop=0.1, attn_pdrop=0.2,
                embd_pdrop=0.1)
    return ImageGPTConfig(**{**base, **kw})


def batch(rng, cfg, B=3):
    T, V = cfg.n_positions, cfg.vocab_size
    ids = rng.integers(0, V - 1, (B, T))
    ids[:, 0] = V - 1
    labels = ids.copy()
    labels[:, 0] = -100
    labels[1, 4] = -100
    return ids, labels


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---- the pairs, one by one -----------------------------------------------------------------------
def test_layer_norm_pair_matches_reference(rng):
    x = rng.normal(size=(2, 5, 24)).astype(F32)
    w = (1 + 0.3 * rng.normal(size=24)).astype(F32)
    dy = rng.normal(size=x.shape).astype(F32)
    out, cache = cpu_train.layer_norm_forward(x, w, 1e-5)
    ref, ref_cache = layers.layer_norm_forward(x, w, 1e-5)
    check("out", out, ref)
    for name, ours, theirs in zip(("dx", "dweight"), cpu_train.layer_norm_backward(dy, cache),
                                  layers.layer_norm_backward(dy, ref_cache)):
        check(name, ours, theirs)


@pytest.mark.parametrize("shift", [True, False])
def test_lm_loss_pair_matches_reference(rng, shift):
    logits = (3 * rng.normal(size=(3, 7, 16))).astype(F32)
    labels = rng.integers(0, 16, (3, 7))
    labels[0, 2] = labels[2, 6] = -100
    loss, cache = cpu_train.lm_loss_forward(logits, labels, shift)
    ref, ref_cache = layers.lm_loss_forward(logits, labels, shift)
    assert isinstance(loss, np.float32)
    assert abs(loss - ref) <= TOL * abs(ref)
    check("dlogits", cpu_train.lm_loss_backward(0.7, cache), layers.lm_loss_backward(0.7, ref_cache))


def test_lm_loss_all_ignored_is_nan_with_zero_gradient():
    loss, cache = cpu_train.lm_loss_forward(np.ones((1, 3, 4), F32), np.full((1, 3), -100))
    assert np.isnan(loss)
    d = cpu_train.lm_loss_backward(1.0, cache)
    assert d.shape == (1, 3, 4) and not d.any()


def test_embedding_backward_adds_repeated_tokens(rng):
    ids = np.array([[3, 3, 1, 3], [0, 1, 1, 2]])
    positions = np.arange(4)[None, :]
    wte, wpe = rng.normal(size=(5, 6)).astype(F32), rng.normal(size=(4, 6)).astype(F32)
    dout = rng.normal(size=(2, 4, 6)).astype(F32)
    _, cache = layers.embedding_forward(ids, wte, wpe, positions)
    for name, ours, ref in zip(("dwte", "dwpe"), cpu_train.embedding_backward(dout, cache),
                               layers.embedding_backward(dout, cache)):
        check(name, ours, ref, tol=1e-6)


def block_inputs(rng, cfg, B=3):
    model = ImageGPTForCausalImageModeling(cfg, seed=1)
    p = {k: (v + 0.2 * rng.normal(size=v.shape)).astype(F32) for k, v in model.params.items()}  # off the init
    x = rng.normal(size=(B, cfg.n_positions, cfg.n_embd)).astype(F32)
    return p, x, rng.normal(size=x.shape).astype(F32)


def compare_block(cfg, p, x, dout, **kw):
    """Both blocks' forward and backward, dropout drawn from equal generators; -> the worst rel."""
    ours, c = cpu_train.transformer_block_forward(x, p, "transformer.h.1.", cfg, 1, rng=np.random.default_rng(3),
                                                  **kw)
    ref, rc = layers.transformer_block_forward(x, p, "transformer.h.1.", cfg, 1, rng=np.random.default_rng(3),
                                               **kw)
    worst = check("out", ours, ref)
    dx, g, denc = cpu_train.transformer_block_backward(dout, c)
    rdx, rg, rdenc = layers.transformer_block_backward(dout, rc)
    worst = max(worst, check("dx", dx, rdx))
    assert list(g) == list(rg) or set(g) == set(rg)
    for k in rg:
        worst = max(worst, check(k, g[k], rg[k]))
    assert (denc is None) == (rdenc is None)
    return c, worst


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("mask", ["none", "padding"])
def test_transformer_block_pair_matches_reference(rng, dropout, mask):
    cfg = config() if dropout else config(resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0)
    p, x, dout = block_inputs(rng, cfg)
    keep = np.ones((3, cfg.n_positions), np.int64)
    keep[1, -4:] = 0  # right padding: every row still sees key 0
    m = layers.additive_mask(keep) if mask == "padding" else None
    c, _ = compare_block(cfg, p, x, dout, mask=m)
    assert isinstance(c, cpu_train.BlockCache), "the fast path ran"


@pytest.mark.parametrize("case", ["gelu", "left_padding", "cross"])
def test_transformer_block_falls_back_to_the_reference(rng, case):
    """What the kernels do not take runs layers.py's block, and its backward follows that cache."""
    cfg = config(activation_function="gelu") if case == "gelu" else \
        config(add_cross_attention=True) if case == "cross" else config()
    p, x, dout = block_inputs(rng, cfg)
    kw = {}
    if case == "left_padding":  # row 1 sees no kept key at first: transformers' degenerate rows
        keep = np.ones((3, cfg.n_positions), np.int64)
        keep[1, :3] = 0
        kw["mask"] = layers.additive_mask(keep)
    if case == "cross":
        kw["encoder_hidden_states"] = rng.normal(size=(3, 5, cfg.n_embd)).astype(F32)
    c, worst = compare_block(cfg, p, x, dout, **kw)
    assert isinstance(c, layers.BlockCache) and worst == 0.0


def test_float64_inputs_take_the_reference(rng):
    cfg = config(resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0)
    p, x, _ = block_inputs(rng, cfg)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    out, c = cpu_train.transformer_block_forward(x.astype(np.float64), p64, "transformer.h.0.", cfg, 0)
    assert out.dtype == np.float64 and isinstance(c, layers.BlockCache)


# ---- the whole model ---------------------------------------------------------------------------------
def grads_both(model, *args, **kw):
    fn = backprop.classification_value_and_grad if isinstance(model, ImageGPTForImageClassification) \
        else backprop.causal_lm_value_and_grad
    kw_drop = {k: v for k, v in kw.items() if k != "seed"}
    runs = []
    for path in ("numpy", "kernels"):
        if "seed" in kw:
            kw_drop["dropout_rng"] = np.random.default_rng(kw["seed"])
        runs.append(fn(model, *args, path=path, **kw_drop))
    return runs


@pytest.mark.parametrize("kind", ["causal", "causal_dropout_mask", "causal_unshifted", "classify"])
def test_value_and_grad_kernels_match_numpy(rng, kind):
    cfg = config(num_labels=3) if kind == "classify" else config()
    cls = ImageGPTForImageClassification if kind == "classify" else ImageGPTForCausalImageModeling
    model = cls(cfg, seed=0)
    ids, labels = batch(rng, cfg)
    kw = {}
    if kind == "classify":
        labels = np.array([0, 2, 1])
    if kind == "causal_dropout_mask":
        kw = dict(seed=7, attention_mask=np.concatenate([np.ones((3, 9)), np.zeros((3, 3))], axis=1))
    if kind == "causal_unshifted":
        kw = dict(shift=False)
    (loss, grads), (kloss, kgrads) = grads_both(model, ids, labels, **kw)
    assert isinstance(kloss, np.float32) and abs(kloss - loss) <= TOL * abs(loss)
    assert list(kgrads) == list(grads) == list(model.params)
    for k in grads:
        check(k, kgrads[k], grads[k])


def test_steps_reuse_the_pools_buffers_and_give_the_same_bits(rng):
    """The blocks' activations come back to the pool after the backward and the next step takes them, as
    they are (not zeroed): the second step uses the first's arrays and still gives the same bits."""
    cfg = config()
    model = ImageGPTForCausalImageModeling(cfg, seed=0)
    ids, labels = batch(rng, cfg)
    pool = cpu_train.step_buffers()
    loss_1, grads_1 = backprop.causal_lm_value_and_grad(model, ids, labels, path="kernels")
    pooled = {id(a) for stack in pool.free.values() for a in stack}
    assert pooled, "the backward gave the blocks' buffers back"
    loss_2, grads_2 = backprop.causal_lm_value_and_grad(model, ids, labels, path="kernels")
    assert {id(a) for stack in pool.free.values() for a in stack} == pooled, "the second step took the same ones"
    assert loss_1 == loss_2
    for k in grads_1:
        np.testing.assert_array_equal(grads_1[k], grads_2[k], err_msg=k)
        assert all(grads_1[k] is not a for stack in pool.free.values() for a in stack), f"{k} is the caller's"


def test_a_blocks_cache_is_spent_by_its_backward(rng):
    """Its buffers go back to the pool, so a second backward through the same cache raises, naming the block."""
    cfg = config(resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0)
    p, x, dout = block_inputs(rng, cfg)
    _, c = cpu_train.transformer_block_forward(x, p, "transformer.h.1.", cfg, 1)
    cpu_train.transformer_block_backward(dout, c)
    with pytest.raises(RuntimeError, match="transformer.h.1.*spent"):
        cpu_train.transformer_block_backward(dout, c)


def test_vector_softmax_operations_match_the_scalar_ones():
    """vexp is cpu._exp lane by lane (the same bits, clamped ends included); vhead, vhsum and vhmax as
    their docstrings say."""
    x = np.concatenate([np.linspace(-100, 100, 797, dtype=F32), [0, -0.0, 88.3, -87.3, 1e-8, np.inf, -np.inf]])
    x = np.concatenate([x, np.zeros(-len(x) % 8, F32)]).astype(F32).reshape(-1, 8)
    out = np.empty((len(x), 11), F32)
    vector_ops(x, out)
    scalar = np.array([cpu_train._exp(v) for v in x.ravel()], F32).reshape(x.shape)
    np.testing.assert_array_equal(out[:, :8], scalar)
    with np.errstate(invalid="ignore"):  # the row holding inf and -inf sums to NaN, on both sides
        pairs = x[:, ::2] + x[:, 1::2]  # [rows, 4] in float32
        np.testing.assert_array_equal(out[:, 9], (pairs[:, 0] + pairs[:, 1]) + (pairs[:, 2] + pairs[:, 3]))
        np.testing.assert_array_equal(out[:, 8], (x[:, 0] + x[:, 1]) + x[:, 2])  # lanes 3..7 are 0
    np.testing.assert_array_equal(out[:, 10], x.max(axis=1))


@numba.njit
def vector_ops(x, out):
    for i in range(x.shape[0]):
        v = simd.vload(x, i, 0)
        simd.vstore(out, i, 0, cpu_train.vexp(v))
        out[i, 8] = cpu_train.vhsum(cpu_train.vhead(v, 3, F32(0)))
        out[i, 9] = cpu_train.vhsum(v)
        out[i, 10] = cpu_train.vhmax(v)


def test_vtranspose8_turns_8_by_8_blocks_into_columns():
    """Each 8 x 8 block lands transposed at the place asked, and nothing outside it is written."""
    src = np.arange(16 * 24, dtype=F32).reshape(16, 24)
    dst = np.full((32, 24), -1, F32)
    transpose_blocks(src, dst)
    np.testing.assert_array_equal(dst[8:32, 0:16], src.T)
    assert (dst[:8] == -1).all() and (dst[8:, 16:] == -1).all()


@numba.njit
def transpose_blocks(src, dst):
    for i in range(0, src.shape[0], 8):
        for j in range(0, src.shape[1], 8):
            cpu_train.vtranspose8(src, i, j, dst, 8 + j, i)


def test_kernels_give_the_same_bits_on_1_and_2_threads(rng, monkeypatch):
    """Each (batch row, head) is one thread's whole and every sum has a fixed order: a resumed run is
    byte-identical whatever the thread count."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here (NUMBA_NUM_THREADS=1): 1 and 2 threads cannot be compared")
    monkeypatch.setattr(cpu_train, "step_threads", lambda key: contextlib.nullcontext())  # the count set below
    cfg = config(n_positions=20)
    model = ImageGPTForCausalImageModeling(cfg, seed=0)
    ids, labels = batch(rng, cfg, B=4)
    saved = numba.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            runs.append(backprop.causal_lm_value_and_grad(model, ids, labels, path="kernels",
                                                          dropout_rng=np.random.default_rng(2)))
    finally:
        numba.set_num_threads(saved)
    (l1, g1), (l2, g2) = runs
    assert l1 == l2
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)


def test_step_threads_applies_the_clocks_choice_and_restores(monkeypatch):
    """The step runs on the thread count TRAIN_CLOCK chooses (1 here, as on a busy machine), the time is
    recorded for that count, and Numba's own setting comes back after."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here (NUMBA_NUM_THREADS=1): 1 and 2 threads cannot be compared")
    seen, recorded = [], []
    monkeypatch.setattr(cpu_train.TRAIN_CLOCK, "choose", lambda key, most: 1)
    monkeypatch.setattr(cpu_train.TRAIN_CLOCK, "record", lambda key, threads, s: recorded.append((key, threads)))
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        with cpu_train.step_threads("k"):
            seen.append(numba.get_num_threads())
        assert seen == [1] and recorded == [("k", 1)] and numba.get_num_threads() == 2
    finally:
        numba.set_num_threads(saved)


def test_training_path_follows_the_device():
    small = ImageGPTForCausalImageModeling(config(), seed=0)
    assert backprop.training_path(small) == "numpy"  # auto: too small to repay Numba's start-up
    assert backprop.training_path(small.to("cpu")) == "kernels"
    assert backprop.training_path(small.to("numpy")) == "numpy"
    default = ImageGPTForCausalImageModeling(config(n_embd=96, n_layer=4, n_head=4, n_positions=64), seed=0)
    assert backprop.training_path(default) == "kernels"  # the default model's config, on auto
    wide = ImageGPTForCausalImageModeling(config(n_embd=512, n_layer=1, n_head=8, n_positions=16), seed=0)
    assert backprop.training_path(wide) == "numpy"  # beyond TRAIN_KERNELS_MAX_EMBD
    with pytest.raises(ValueError, match="training path"):
        backprop.causal_lm_value_and_grad(small, *batch(np.random.default_rng(0), small.config), path="gpu")


# ---- AdamW -------------------------------------------------------------------------------------------
def test_fused_adamw_is_bitwise_the_numpy_update(rng):
    params = {"a.weight": rng.normal(size=(7, 5)).astype(F32), "ln_1.weight": rng.normal(size=5).astype(F32),
              "b.bias": rng.normal(size=3).astype(F32)}
    copies = {k: v.copy() for k, v in params.items()}
    plain = optim.AdamW(params, lr=3e-3, weight_decay=0.1, fused=False)
    fused = optim.AdamW(copies, lr=3e-3, weight_decay=0.1, fused=True)
    for step in range(3):
        grads = {k: rng.normal(size=v.shape).astype(F32) for k, v in params.items()}
        plain.step(params, grads, lr=3e-3 / (step + 1))
        fused.step(copies, grads, lr=3e-3 / (step + 1))
        for k in params:
            np.testing.assert_array_equal(copies[k], params[k], err_msg=k)
            np.testing.assert_array_equal(fused.m[k], plain.m[k])
            np.testing.assert_array_equal(fused.v[k], plain.v[k])


def test_adamw_fuses_by_size():
    assert not optim.AdamW({"w": np.zeros(10, F32)}).fused
    assert optim.AdamW({"w": np.zeros(optim.FUSED_MIN_PARAMS, F32)}).fused


def test_training_kernels_do_no_float64_arithmetic(rng):
    """Float32 discipline: the assembly of every training kernel holds no double-precision instruction.
    (Runs the fast path first, so that each kernel has compiled for the types training gives it.)"""
    cfg = config()
    model = ImageGPTForCausalImageModeling(cfg, seed=0)
    ids, labels = batch(rng, cfg)
    backprop.causal_lm_value_and_grad(model, ids, labels, path="kernels", dropout_rng=np.random.default_rng(0))
    _, cache = cpu_train.layer_norm_forward(rng.normal(size=(2, 24)).astype(F32), np.ones(24, F32))
    cpu_train.layer_norm_backward(np.ones((2, 24), F32), cache)
    optim.AdamW({"w": np.ones(3, F32)}, fused=True).step({"w": np.ones(3, F32)}, {"w": np.ones(3, F32)})
    kernels = [k for k in vars(cpu_train).values() if hasattr(k, "inspect_asm") and k.__module__ == cpu_train.__name__]
    assert len(kernels) >= 14
    for kernel in kernels:
        if kernel.__name__.startswith("_"):  # helpers: compiled into the kernels that call them
            continue
        assert kernel.signatures, f"{kernel.__name__} never ran"
        for sig, asm in assembly(kernel).items():
            found = FLOAT64_OP.findall(asm)
            assert not found, f"{kernel.__name__}{sig}: float64 instructions {found[:5]}"
            assert "float64" not in str(sig), f"{kernel.__name__}: float64 argument in {sig}"
