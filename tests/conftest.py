import os

# The Numba CUDA simulator must be switched on before numba is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pathlib  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
_PARITY = {}  # output kind -> (worst abs diff, tolerance, where), for the summary at the end of the run


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def report(name, ours, theirs, tol):
    """Compare shape, then values; print and record the worst absolute difference, fail past `tol`."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != {theirs.shape}"
    worst = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)))) if ours.size else 0.0
    print(f"[parity] {name}: max abs diff {worst:.3g} (tol {tol:g})")
    kind = re.sub(r"\[\d+\]", "[i]", name.split(" ", 1)[-1] if "/" in name.split(" ", 1)[0] else name)
    if worst >= _PARITY.get(kind, (-1.0,))[0]:
        _PARITY[kind] = (worst, tol, name)
    assert worst <= tol, f"{name}: max abs diff {worst:.3g} > {tol:g}"
    return worst


def pytest_terminal_summary(terminalreporter):
    if not _PARITY:
        return
    terminalreporter.section("parity against transformers: worst absolute difference per output")
    for kind, (worst, tol, where) in sorted(_PARITY.items()):
        terminalreporter.write_line(f"{worst:10.3g}  (tol {tol:g})  {kind}    [worst case: {where}]")
