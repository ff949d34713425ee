"""kernels/simd.py: the eight-lane vector operations, and small_matmul against `a @ w`.

Shapes are chosen to hit every branch of the kernel: odd row counts (the single-row tail after row
pairs), K not a multiple of 4 (the one-row-of-w tail), N not a multiple of 8 (the scalar columns), N
wider than a column tile, and K cut into 1 to 3 blocks (parts) or more.
"""

import numba
import numpy as np
import pytest
from numba import njit

from minigpt_pixels.kernels import simd
from minigpt_pixels.kernels.simd import vfma, vload, vsplat, vstore, vzero

from .compiled_code import FLOAT64_OP, assembly

F32 = np.float32


@njit
def _vector_ops(a, out, x):
    """out[0] = a[0, 1:9] * x + a[1, 0:8]; out[1] = 0; out[2] = x (the five operations, once each)."""
    vstore(out, 0, 0, vfma(vload(a, 0, 1), vsplat(x), vload(a, 1, 0)))
    vstore(out, 1, 0, vzero())
    vstore(out, 2, 0, vsplat(x))


def test_vector_operations(rng):
    a = rng.normal(size=(2, 11)).astype(F32)
    out = np.full((3, 8), np.nan, F32)
    x = F32(1.5)
    _vector_ops(a, out, x)
    expected = (a[0, 1:9].astype(np.float64) * 1.5 + a[1, :8]).astype(F32)  # fma: one rounding
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[1], np.zeros(8, F32))
    np.testing.assert_array_equal(out[2], np.full(8, x))


def test_vector_operations_refuse_other_arrays():
    """vload/vstore take only C-contiguous 2-D float32 arrays: anything else fails at compile time."""
    out = np.zeros((3, 8), F32)
    for bad in (np.zeros((2, 11)), np.zeros((2, 11), F32)[:, ::2], np.zeros(16, F32)):
        with pytest.raises(Exception, match="C-contiguous 2-D float32"):
            _vector_ops(bad, out, F32(1))
    with pytest.raises(Exception, match="vsplat takes a float32"):
        _vector_ops(np.zeros((2, 11), F32), out, 1.5)  # a Python float is float64


SHAPES = [  # M, K, N
    (1, 5, 3),  # narrower than one vector: only scalar columns
    (2, 36, 36),  # the unit tests' n_embd: 32 vector columns and 4 scalar ones
    (3, 37, 108),  # odd rows, K % 4 == 1
    (8, 512, 1536),  # an iGPT-S qkv projection at batch 8, three column tiles
    (9, 130, 1037),  # everything odd, two tiles and a partial one
    (16, 2048, 512),  # the MLP's output projection at SMALL_ROWS
]


@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_small_matmul_matches_numpy(rng, shape, parts):
    M, K, N = shape
    a = rng.normal(size=(M, K)).astype(F32)
    w = rng.normal(size=(K, N)).astype(F32)
    out = simd.small_matmul(a, w, parts)
    assert out.shape == (M, N) and out.dtype == np.float32
    ref = a.astype(np.float64) @ w.astype(np.float64)
    # float32 sums of K terms of size ~1: error grows like sqrt(K) * eps * |terms|
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * K)


def test_small_matmul_parts_split_k_deterministically(rng):
    """The sum over K is cut into blocks whose partial sums are added in block order: the same number of
    parts gives the same bits every time and on any number of threads, another number of parts agrees to
    rounding. Blocks left without rows (K < 4 x parts) contribute zeros."""
    a = rng.normal(size=(5, 300)).astype(F32)
    w = rng.normal(size=(300, 777)).astype(F32)
    one = simd.small_matmul(a, w, 1)
    saved = numba.get_num_threads()
    for parts in (2, 3, 7):
        out = simd.small_matmul(a, w, parts)
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            numba.set_num_threads(threads)
            try:
                np.testing.assert_array_equal(simd.small_matmul(a, w, parts), out)
            finally:
                numba.set_num_threads(saved)
        np.testing.assert_allclose(out, one, rtol=0, atol=2e-6 * 300)
    a, w = a[:, :3], w[:3, :9]
    np.testing.assert_allclose(simd.small_matmul(a, w, 7), a.astype(np.float64) @ w, rtol=1e-6, atol=1e-6)


def test_small_matmul_reads_memory_mapped_weights(tmp_path, rng):
    """Weights arrive as read-only memory maps (weights.py): the kernel takes them as they are."""
    w = rng.normal(size=(64, 40)).astype(F32)
    np.save(tmp_path / "w.npy", w)
    mapped = np.load(tmp_path / "w.npy", mmap_mode="r")
    a = rng.normal(size=(4, 64)).astype(F32)
    np.testing.assert_array_equal(simd.small_matmul(a, mapped, 2), simd.small_matmul(a, w, 2))
    np.testing.assert_allclose(simd.small_matmul(a, mapped, 2), a @ w, rtol=1e-5, atol=1e-5)


def test_small_matmul_non_contiguous_rows(rng):
    """The rows may be any float32 view (a batch slice, a transposed view): they are copied first."""
    a = rng.normal(size=(40, 6)).astype(F32).T  # [6, 40], not C-contiguous
    w = rng.normal(size=(40, 24)).astype(F32)
    np.testing.assert_allclose(simd.small_matmul(a, w, 2), a @ w, rtol=1e-5, atol=1e-5)


def test_small_matmul_does_no_float64_arithmetic(rng):
    a, w = rng.normal(size=(3, 9)).astype(F32), rng.normal(size=(9, 20)).astype(F32)
    simd.small_matmul(a, w, 1), simd.small_matmul(a, w, 2)  # (the first calls matmul_columns_kernel itself)
    for kernel in (simd.matmul_columns_kernel, simd.matmul_parallel):
        assert kernel.signatures, kernel.__name__
        for sig, asm in assembly(kernel).items():
            found = FLOAT64_OP.findall(asm)
            assert not found, f"{kernel.__name__}{sig}: float64 instructions {found[:5]}"


def test_small_matmul_refuses_shapes_that_do_not_multiply(rng):
    """The kernels do not check bounds, so the wrapper checks shapes: a clear error, never a bad read."""
    a = rng.normal(size=(4, 8)).astype(F32)
    for w in (np.zeros((9, 16), F32), np.zeros(8, F32), np.zeros((8, 16, 1), F32)):
        with pytest.raises(ValueError, match=r"small_matmul: shapes .* do not multiply"):
            simd.small_matmul(a, w, 2)
    with pytest.raises(ValueError, match="parts must be >= 1"):
        simd.small_matmul(a, np.zeros((8, 16), F32), 0)


def test_small_matmul_takes_any_float_weights(rng):
    """Float64 or strided weights are copied to C-contiguous float32 first: the result is still float32."""
    a = rng.normal(size=(3, 20)).astype(F32)
    w = rng.normal(size=(40, 20)).T  # [20, 40] float64, Fortran-ordered
    out = simd.small_matmul(a, w, 2)
    assert out.dtype == np.float32 and out.shape == (3, 40)
    np.testing.assert_allclose(out, a @ w.astype(F32), rtol=1e-5, atol=1e-5)
