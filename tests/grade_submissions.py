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


def honest_class():
    """30 students of notebook 01 as a class writes it: right answers in varied styles (loops, helpers,
    constants and lambdas in cells of their own, docstrings that name the package), typical mistakes and
    unfinished work. {student: notebook}."""
    right_ln = [
        LN,
        "ms = np.mean(np.square(x), axis=-1, keepdims=True)\n    return x / np.sqrt(ms + eps) * weight",
        "rms = np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps)\n    return weight * (x / rms)",
        "return x * (1.0 / np.sqrt(np.einsum('...c,...c->...', x, x)[..., None] / x.shape[-1] + eps)) * weight",
        "out = np.empty_like(x)\n    for idx in np.ndindex(x.shape[:-1]):\n"
        "        out[idx] = x[idx] / np.sqrt(np.sum(x[idx] ** 2) / x.shape[-1] + eps) * weight\n    return out",
        '"""Replaces minigpt_pixels.layers.layer_norm."""\n    return (x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)'
        " * weight).astype(np.float32)",
    ]
    right_qg = [
        QG, "return x * (1 / (1 + np.exp(-1.702 * x)))", "return x * 0.5 * (1 + np.tanh(0.851 * x))",
        "return x * sigmoid(GELU_K * x)", "return (x * np.reciprocal(1 + np.exp(-1.702 * x))).astype(x.dtype)",
    ]
    wrong_ln = [
        "mu = x.mean(-1, keepdims=True)\n    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight",
        "return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True)) * weight",
        "return x / (np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True)) + eps) * weight",
        "return x / np.sqrt(np.sum(x ** 2, axis=-1, keepdims=True) + eps) * weight",
        "return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) + weight",
        "return (x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * weight).astype(np.float64)",
    ]
    wrong_qg = [
        "return np.maximum(x, 0)", "return 1 / (1 + np.exp(-1.702 * x))",
        "return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))",
        "return x / (1 + np.exp(-x))",
    ]
    helpers = "GELU_K = 1.702\nsigmoid = lambda z: 1 / (1 + np.exp(-z))\nprint(sigmoid(0.0))"
    students = {}
    for i in range(30):
        kind = i % 5  # 0-2: right (varied), 3: a typical mistake, 4: unfinished or half done
        bodies = {}
        if kind <= 2:
            bodies = {"layer_norm": right_ln[i % len(right_ln)], "quick_gelu": right_qg[(i + i // 5) % len(right_qg)]}
        elif kind == 3:
            bodies = {"layer_norm": wrong_ln[i % len(wrong_ln)] if i % 2 else right_ln[i % len(right_ln)],
                      "quick_gelu": wrong_qg[i % len(wrong_qg)]}
        elif i % 3:
            bodies = {"layer_norm": right_ln[i % len(right_ln)]}
        nb = answered(NB1, **bodies)
        if "sigmoid(GELU_K" in bodies.get("quick_gelu", ""):
            add_cell(nb, helpers, at=2)
        students[f"student{i:02d}"] = nb
    return students
