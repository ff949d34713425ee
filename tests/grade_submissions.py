"""Submission notebooks for the grader's tests, built from the released student notebooks the way students
fill them in, and the switch between the sandbox and its absence.

Where bwrap is installed the grading tests run in the sandbox; where it is not, the sandbox tests skip
with the reason shown, unless MINIGPT_PIXELS_REQUIRE_BWRAP=1 (set by .ci/run) turns that into a failure.
"""

import json
import os
import pathlib

import pytest

from minigpt_pixels.exercises import runner

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUB = "# YOUR CODE HERE\n    raise NotImplementedError()"
NB1, NB3, NB5 = "01_layer_norm_and_quick_gelu", "03_top_k_sampling", "05_layer_norm_backward"
TIMEOUT = "2"  # seconds per call in these tests; a correct answer takes milliseconds
LN = "return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * weight"
QG = "return x / (1 + np.exp(-1.702 * x))"

_BWRAP = {}


def bwrap_or_none():
    """The checked bwrap executable, or None with the reason it cannot be used here."""
    if "path" not in _BWRAP:
        try:
            _BWRAP["path"], _BWRAP["why"] = runner.find_bwrap(), ""
        except runner.SandboxError as e:
            _BWRAP["path"], _BWRAP["why"] = None, str(e)
    return _BWRAP["path"]


def need_bwrap():
    """Skip (or fail, under MINIGPT_PIXELS_REQUIRE_BWRAP=1) a test that needs the real sandbox."""
    if bwrap_or_none() is None:
        message = f"the grading sandbox cannot run here: {_BWRAP['why']}"
        if os.environ.get("MINIGPT_PIXELS_REQUIRE_BWRAP") == "1":
            pytest.fail(message + " (MINIGPT_PIXELS_REQUIRE_BWRAP=1)")
        pytest.skip(message)
    return _BWRAP["path"]


def sandbox_flags():
    """[] where the sandbox runs, else ["--no-sandbox"] (with MINIGPT_PIXELS_REQUIRE_BWRAP=1: a failure)."""
    if bwrap_or_none() is None and os.environ.get("MINIGPT_PIXELS_REQUIRE_BWRAP") == "1":
        pytest.fail(f"the grading sandbox cannot run here: {_BWRAP['why']} (MINIGPT_PIXELS_REQUIRE_BWRAP=1)")
    return [] if bwrap_or_none() else ["--no-sandbox"]


def released(stem):
    return json.loads((ROOT / "notebooks" / "exercises" / f"{stem}.ipynb").read_text())


def cell_of(nb, grade_id):
    return next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id)


def answered(stem, **bodies):
    """The released notebook with each named exercise's stub replaced by a body (indented 4)."""
    nb = released(stem)
    for name, body in bodies.items():
        c = cell_of(nb, name)
        c["source"] = "".join(c["source"]).replace(STUB, body)
    return nb


def add_cell(nb, source, at=None):
    cell = {"cell_type": "code", "execution_count": None, "id": f"student-{len(nb['cells'])}", "metadata": {},
            "outputs": [], "source": source}
    nb["cells"].insert(len(nb["cells"]) if at is None else at, cell)
    return nb


def write(path, nb):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb))
    return path
