import os

# The Numba CUDA simulator must be switched on before numba is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def report(name, ours, theirs, tol):
    """Compare shape, then dtype, then values; print and return the worst absolute difference."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != {theirs.shape}"
    worst = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)))) if ours.size else 0.0
    print(f"[parity] {name}: max abs diff {worst:.3g} (tol {tol:g})")
    assert worst <= tol, f"{name}: max abs diff {worst:.3g} > {tol:g}"
    return worst
