"""The CUDA kernels against their layers.py references, and a whole model on the "cuda" backend against
the NumPy one. Runs under numba's CUDA simulator (tests/conftest.py turns it on), so shapes are tiny
and odd (multiples of no tile), tiles small, and each kernel also runs once with its real GPU tiles.
tests/test_kernels_ptx.py checks what the simulator cannot: the code compiled for a real GPU."""

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from numba import cuda

from minigpt_pixels import layers
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.kernels import cuda as K
from minigpt_pixels.kernels import cuda_device
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTModel, KVCache

from .conftest import report

TOL = 1e-4  # float32 kernels against the float32 NumPy reference
SMALL_MATMUL = K.MatmulTiles(bm=8, bn=8, bk=4, tm=2, tn=2)  # 16 threads
SMALL_SKINNY = K.SkinnyTiles(cols=8, splits=4, rows=4)  # 32 threads
SMALL_ATTENTION = K.AttentionTiles(bq=8, bkv=4)
SMALL_DECODE = K.DecodeTiles(threads=16, chunk=8)
CFG = dict(vocab_size=17, n_positions=24, n_embd=32, n_layer=2, n_head=4)

pytestmark = pytest.mark.skipif(not cuda.is_available(), reason="no CUDA GPU and the simulator is off")


@pytest.fixture(scope="module", autouse=True)
def quick_thread_switches():
    """The simulator runs every CUDA thread as a Python thread, and a block waits on its slowest one at
    every syncthreads; Python's default 5 ms GIL switch interval makes that crawl."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(5e-4)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def small_tiles(monkeypatch):
    """Small blocks for the whole-model tests: tens of simulated threads, not hundreds."""
    monkeypatch.setattr(K, "MATMUL_TILES", K.MatmulTiles(8, 32, 8, 2, 4))
    monkeypatch.setattr(K, "MATMUL_TILES_SMALL", K.MatmulTiles(8, 32, 8, 2, 4))
    monkeypatch.setattr(K, "SKINNY_TILES", K.SkinnyTiles(32, 1, 2))
    monkeypatch.setattr(K, "SKINNY_MAX_ROWS", 4)  # decode steps (2 rows) skinny, prompts tiled
    monkeypatch.setattr(K, "ATTENTION_TILES", K.AttentionTiles(16, 8))
    monkeypatch.setattr(K, "ATTENTION_TILES_SMALL", K.AttentionTiles(16, 8))
    monkeypatch.setattr(K, "DECODE_TILES", K.DecodeTiles(16, 8))
    monkeypatch.setattr(K, "ROW_THREADS", 4)
    monkeypatch.setattr(K, "ELEMENTWISE_THREADS", 32)
    monkeypatch.setattr(K, "ELEMENTWISE_MAX_BLOCKS", 2)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def parity(name, ours, theirs, tol=TOL):
    return report(f"cuda vs numpy: {name}", ours, theirs, tol)  # (the reference here is layers.py)


def check(name, ours, theirs, tol=TOL):
    assert isinstance(ours, np.ndarray), f"{name}: host inputs should give a host array, got {type(ours)}"
    assert ours.dtype == np.float32, f"{name}: dtype {ours.dtype}"
    return parity(name, ours, theirs, tol)


# ---- matmul and linear ---------------------------------------------------------------------------
def test_matmul_tiled_odd_shapes(rng):
    a, b = randn(rng, 37, 11), randn(rng, 11, 19)  # 5 x 3 blocks of 8 x 8, 3 k-tiles (the last partial)
    check("matmul", K.matmul(a, b, tiles=SMALL_MATMUL), a @ b)


def test_matmul_leading_dims(rng):
    a, b = randn(rng, 3, 13, 6), randn(rng, 6, 5)  # [B, T, K] @ [K, N], 39 rows: tiled
    check("matmul [B, T, K]", K.matmul(a, b, tiles=SMALL_MATMUL), a @ b)


@pytest.mark.parametrize("activation", [None, "quick_gelu", "relu", "tanh", "gelu_new", "gelu"])
def test_linear_fused_epilogue(rng, activation):
    x, w, b, r = randn(rng, 35, 7), randn(rng, 7, 9), randn(rng, 9), randn(rng, 35, 9)
    expected = r + layers.activation(layers.linear(x, w, b), activation) if activation else r + layers.linear(x, w, b)
    check(f"linear + {activation} + residual", K.linear(x, w, b, activation, r, tiles=SMALL_MATMUL), expected)


def test_skinny_matmul(rng):
    x, w, b, r = randn(rng, 11, 13), randn(rng, 13, 21), randn(rng, 21), randn(rng, 11, 21)
    # 11 rows: 3 row blocks of 4 (the last partial), 4 k-splits summed in shared memory
    ours = K.linear(x, w, b, "quick_gelu", r, skinny=SMALL_SKINNY)
    check("skinny linear", ours, r + layers.quick_gelu(layers.linear(x, w, b)))


def test_matmul_default_tiles(rng):
    a, b, bias = randn(rng, 35, 10), randn(rng, 10, 7), randn(rng, 7)  # one 128 x 128 block, 256 threads
    check("matmul, GPU tiles", K.linear(a, b, bias, tiles=K.MATMUL_TILES), a @ b + bias)
    check("skinny matmul, GPU tiles", K.linear(a[:3], b, bias), a[:3] @ b + bias)


# ---- attention -----------------------------------------------------------------------------------
SCALES = {
    "default 1/sqrt(D)": None,
    "scale_attn_weights=False": layers.attention_scale(8, scale_attn_weights=False),
    "inverse layer idx": layers.attention_scale(8, True, layer_idx=2, scale_attn_by_inverse_layer_idx=True),
}


@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
def test_causal_attention(rng, scale):
    q, k, v = (randn(rng, 2, 3, 13, 8) for _ in range(3))  # T = 13: 2 query blocks of 8, 4 key tiles of 4
    ref_scale = layers.attention_scale(8) if scale is None else scale
    ours = K.causal_attention(q, k, v, scale, tiles=SMALL_ATTENTION)
    check("causal attention", ours, layers.attention(q, k, v, ref_scale)[0])


def test_causal_attention_after_cache(rng):
    q, k, v = randn(rng, 1, 2, 11, 7), randn(rng, 1, 2, 17, 7), randn(rng, 1, 2, 17, 7)  # 6 cached + 11 new
    ours = K.causal_attention(q, k, v, tiles=SMALL_ATTENTION)
    check("causal attention, S > T", ours, layers.attention(q, k, v, layers.attention_scale(7))[0])


def test_causal_attention_default_tiles(rng):
    q, k, v = randn(rng, 1, 2, 9, 5), randn(rng, 1, 2, 12, 5), randn(rng, 1, 2, 12, 5)
    ours = K.causal_attention(q, k, v, tiles=K.ATTENTION_TILES)
    check("causal attention, GPU tiles", ours, layers.attention(q, k, v, layers.attention_scale(5))[0])


@pytest.mark.parametrize("tiles", [SMALL_DECODE, K.DECODE_TILES], ids=["small tiles", "GPU tiles"])
def test_decode_attention(rng, tiles):
    q, kc, vc = randn(rng, 2, 2, 1, 8), randn(rng, 2, 2, 24, 8), randn(rng, 2, 2, 24, 8)
    length = 19  # 3 chunks of 8 with small tiles (the last partial); the rest of the cache is ignored
    ours = K.decode_attention(q, kc, vc, length, scale=0.2, tiles=tiles)
    check("decode attention", ours, layers.attention(q, kc[:, :, :length], vc[:, :, :length], np.float32(0.2))[0])


# ---- row-wise and element-wise kernels -----------------------------------------------------------
def test_layer_norm(rng):
    x, w = randn(rng, 2, 3, 37), randn(rng, 37)
    check("layer_norm", K.layer_norm(x, w, 1e-5, threads=16), layers.layer_norm(x, w, 1e-5))


def test_softmax(rng):
    x = randn(rng, 3, 41) * 5
    check("softmax", K.softmax(x, threads=16), layers.softmax(x))


def test_row_kernels_default_threads(rng):
    x, w = randn(rng, 2, 37), randn(rng, 37)
    check("layer_norm, GPU threads", K.layer_norm(x, w), layers.layer_norm(x, w))
    check("softmax, GPU threads", K.softmax(x), layers.softmax(x))


def test_quick_gelu_and_add(rng):
    x, y = randn(rng, 5, 23) * 4, randn(rng, 5, 23)
    check("quick_gelu", K.quick_gelu(x, threads=32), layers.quick_gelu(x))
    check("add", K.add(x, y, threads=32), x + y)


def test_embedding(rng):
    wte, wpe = randn(rng, 17, 9), randn(rng, 24, 9)
    ids, pos = rng.integers(0, 17, (2, 5)), np.arange(3, 8)[None]
    check("embedding", K.embedding(ids, wte, wpe, pos, threads=32), layers.embedding(ids, wte, wpe, pos))


def test_device_arrays_stay_on_device(rng):
    a, b = randn(rng, 9, 6), randn(rng, 6, 5)
    out = K.matmul(cuda.to_device(a), cuda.to_device(b), tiles=SMALL_MATMUL)
    assert not isinstance(out, np.ndarray)  # chained calls make no round trip
    check("quick_gelu(matmul) on the device", K.quick_gelu(out, threads=32).copy_to_host(),
          layers.quick_gelu(a @ b))


# ---- the whole model on the "cuda" backend -------------------------------------------------------
def numpy_and_cuda(cls, cfg, seed):
    """The same weights on both backends; pushed well beyond the 0.02-std initialisation so activations
    and logits are of order one and a wrong kernel cannot hide under tiny numbers."""
    rng = np.random.default_rng(seed)
    ref = cls(cfg, seed=seed).to("numpy")
    ref.params = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in ref.params.items()}
    return ref, cls(cfg, params=dict(ref.params)).to("cuda")


def test_model_logits_and_kv_cache_match_numpy(small_tiles):
    cfg = ImageGPTConfig(**CFG)
    ref, gpu = numpy_and_cuda(ImageGPTForCausalImageModeling, cfg, seed=0)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 7))

    parity("logits, no cache", gpu(ids[:, :5]).logits, ref(ids[:, :5]).logits, TOL)

    ours, theirs = KVCache(cfg, 2), KVCache(cfg, 2)
    parity("logits, prompt into the cache", gpu(ids[:, :3], past_key_values=ours, use_cache=True).logits,
           ref(ids[:, :3], past_key_values=theirs, use_cache=True).logits, TOL)
    for t in (3, 4):  # decode steps: one token each, against the cache
        parity(f"logits, decode step {t}", gpu(ids[:, t:t + 1], past_key_values=ours, use_cache=True).logits,
               ref(ids[:, t:t + 1], past_key_values=theirs, use_cache=True).logits, TOL)
    assert ours.get_seq_length() == theirs.get_seq_length() == 5
    for i in range(cfg.n_layer):  # the host arrays are kept in sync
        parity(f"host keys, layer {i}", ours.keys[i][:, :, :5], theirs.keys[i][:, :, :5], TOL)
        parity(f"host values, layer {i}", ours.values[i][:, :, :5], theirs.values[i][:, :, :5], TOL)

    # so a cache moves between backends: the reference continues ours, we continue the reference's
    step = ids[:, 5:6]
    from_ours = ref(step, past_key_values=ours, use_cache=True).logits
    from_theirs = gpu(step, past_key_values=theirs, use_cache=True).logits  # uploads the numpy-filled cache
    parity("numpy continuing a cuda cache vs cuda continuing a numpy cache", from_ours, from_theirs, TOL)

    # KVCache.select (keep some rows) replaces the host arrays: the device mirror notices and re-uploads
    ours.select([1])
    theirs.select([1])
    step = ids[1:, 6:7]
    parity("after KVCache.select", gpu(step, past_key_values=theirs, use_cache=True).logits,
           ref(step, past_key_values=ours, use_cache=True).logits, TOL)


def test_model_config_scalings_and_activation(small_tiles):
    cfg = ImageGPTConfig(**{**CFG, "n_layer": 2, "scale_attn_by_inverse_layer_idx": True,
                            "activation_function": "gelu_new", "scale_attn_weights": False})
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 5))
    ref, gpu = numpy_and_cuda(ImageGPTModel, cfg, seed=3)
    warnings_before = numba.config.CUDA_LOW_OCCUPANCY_WARNINGS
    ours, theirs = gpu(ids).last_hidden_state, ref(ids).last_hidden_state
    parity("ImageGPTModel last_hidden_state (after ln_f)", ours, theirs, TOL)
    assert numba.config.CUDA_LOW_OCCUPANCY_WARNINGS == warnings_before  # silenced only while the runner runs


def test_generate_on_cuda_matches_numpy(small_tiles):
    cfg = ImageGPTConfig(**CFG)
    prompt = np.full((1, 2), cfg.sos_token_id)
    ref, gpu = numpy_and_cuda(ImageGPTForCausalImageModeling, cfg, seed=4)
    ours, theirs = gpu.generate(prompt, max_new_tokens=3), ref.generate(prompt, max_new_tokens=3)
    np.testing.assert_array_equal(ours, theirs)


def test_to_cuda_and_back():
    model = ImageGPTForCausalImageModeling(ImageGPTConfig(**CFG), seed=0).to("cuda")
    assert model.device == "cuda" and model._cuda is not None
    model.to("cpu")
    assert model.device == "cpu" and model._cuda is None


# ---- bad input -----------------------------------------------------------------------------------
def test_float64_and_strided_inputs_are_converted(rng):
    a = rng.standard_normal((34, 14))  # float64, and a strided view below
    b = rng.standard_normal((7, 5))
    out = K.matmul(a[:, ::2], b, tiles=SMALL_MATMUL)
    check("matmul of a float64 strided view", out, a[:, ::2].astype(np.float32) @ b.astype(np.float32))


@pytest.mark.parametrize("call, message", [
    (lambda: K.matmul(np.ones((3, 4), np.float32), np.ones((5, 2), np.float32)), r"x \(3, 4\) @ w \(5, 2\)"),
    (lambda: K.linear(np.ones((3, 4)), np.ones((4, 2)), np.ones(3)), r"bias has shape \(3,\), expected \(2,\)"),
    (lambda: K.linear(np.ones((3, 4)), np.ones((4, 2)), residual=np.ones((2, 2))), "residual has shape"),
    (lambda: K.linear(np.ones((3, 4)), np.ones((4, 2)), activation="swish"), "unknown activation 'swish'"),
    (lambda: K.matmul(np.ones((3, 4), bool), np.ones((4, 2))), "must be a float array, got dtype bool"),
    (lambda: K.matmul(cuda.to_device(np.ones((3, 4))), np.ones((4, 2))), "device array has dtype float64"),
    (lambda: K.causal_attention(np.ones((1, 2, 3, 4)), np.ones((1, 2, 3, 4)), np.ones((1, 2, 3, 5))),
     r"k \(1, 2, 3, 4\) and v \(1, 2, 3, 5\)"),
    (lambda: K.causal_attention(np.ones((2, 3, 4)), np.ones((2, 3, 4)), np.ones((2, 3, 4))), r"must be \[B, H, T, D\]"),
    (lambda: K.causal_attention(np.ones((1, 1, 5, 4)), np.ones((1, 1, 3, 4)), np.ones((1, 1, 3, 4))),
     "3 keys for 5 queries"),
    (lambda: K.causal_attention(*(np.ones((1, 1, 2, 129)),) * 3), "head_dim 129 is beyond .* limit of 128"),
    (lambda: K.decode_attention(*(np.ones((1, 1, 2, 4)),) * 3), "one query per sequence"),
    (lambda: K.decode_attention(np.ones((1, 1, 1, 4)), np.ones((1, 1, 6, 4)), np.ones((1, 1, 6, 4)), length=7),
     r"length 7 must be in \[1, 6\]"),
    (lambda: K.layer_norm(np.ones((2, 5)), np.ones(4)), r"x \(2, 5\) and weight \(4,\)"),
    (lambda: K.softmax(np.ones((2, 5)), axis=0), "last axis only"),
    (lambda: K.add(np.ones((2, 5)), np.ones((5,))), "no broadcasting"),
    (lambda: K.embedding(np.array([[3, 9]]), np.ones((9, 4)), np.ones((5, 4)), np.arange(2)[None]),
     r"input_ids must be in \[0, 9\), got values in \[3, 9\]"),
    (lambda: K.embedding(np.array([[3, 1]]), np.ones((9, 4)), np.ones((5, 4)), np.arange(3)[None]),
     r"position_ids has shape \(1, 3\), which does not broadcast to \(1, 2\)"),
])
def test_bad_inputs_get_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_head_dim_beyond_the_kernels_is_refused_at_to_cuda():
    cfg = ImageGPTConfig(vocab_size=5, n_positions=4, n_embd=130, n_layer=1, n_head=1)
    model = ImageGPTForCausalImageModeling(cfg, seed=0)
    with pytest.raises(ValueError, match="head_dim 130 .* limit of 128; use model.to\\('cpu'\\)"):
        model.to("cuda")


def test_out_of_device_memory_names_the_size(monkeypatch):
    with pytest.raises(K.DeviceMemoryError, match="could not allocate 400000000000000 bytes"):
        K.device_empty((10**7, 10**7))  # the simulator allocates on the host: numpy's MemoryError

    from numba.cuda.cudadrv.driver import CudaAPIError

    def driver_out_of_memory(*args, **kwargs):  # what the real driver raises
        raise CudaAPIError(2, "CUDA_ERROR_OUT_OF_MEMORY")
    monkeypatch.setattr(cuda, "device_array", driver_out_of_memory)
    with pytest.raises(K.DeviceMemoryError, match=r"could not allocate 1200 bytes .* shape \(10, 30\)"):
        K.matmul(np.ones((10, 4), np.float32), np.ones((4, 30), np.float32))


def test_no_cuda_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(cuda_device, "_cuda_available", lambda: False)
    with pytest.raises(K.CudaUnavailableError, match="CUDA is not available.*model.to\\('cpu'\\)"):
        K.matmul(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(K.CudaUnavailableError):
        ImageGPTForCausalImageModeling(ImageGPTConfig(**CFG), seed=0).to("cuda")


def test_import_without_cuda_or_simulator():
    """On this kind of machine (no GPU, simulator off) the package and the kernels module import, and
    asking for CUDA is a clear error, not a crash."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = textwrap.dedent("""
        from numba import cuda
        if cuda.is_available():
            print("HAS-GPU")
            raise SystemExit(0)
        import minigpt_pixels
        from minigpt_pixels.kernels import cuda as K
        from minigpt_pixels.config import ImageGPTConfig
        from minigpt_pixels.model import ImageGPTForCausalImageModeling
        m = ImageGPTForCausalImageModeling(ImageGPTConfig(vocab_size=5, n_positions=4, n_embd=8, n_layer=1, n_head=2))
        try:
            m.to("cuda")
        except K.CudaUnavailableError as e:
            print("CLEAR-ERROR", e)
    """)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    if "HAS-GPU" in run.stdout:
        pytest.skip("this machine has a GPU: nothing to refuse")
    assert "CLEAR-ERROR CUDA is not available" in run.stdout, run.stdout + run.stderr
