"""`python -m minigpt_pixels.grade`: a class of submissions written the way students write them (right,
wrong, lazy, cheating, hanging, crashing) grades in one command to the right verdicts, and no
submission can fool it. Graded in the sandbox where bwrap runs, else with --no-sandbox."""

import csv
import pathlib
import sys

import numpy as np
import pytest

from minigpt_pixels.exercises import EXERCISES, calls, gradebook, make_cases
from minigpt_pixels.exercises import grade
from minigpt_pixels.exercises.notebook import extract
from minigpt_pixels.exercises.runner import Limits

from .grade_submissions import (LN, NB1, NB3, NB5, QG, TIMEOUT, add_cell, answered, bwrap_or_none, cell_of, released,
                                sandbox_flags)
from .grade_submissions import write as _write

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import build_notebooks  # noqa: E402


def memorised_quick_gelu():
    """A student who pasted the outputs the notebook's own check showed them."""
    table = {round(float(args[0].sum()), 2): EXERCISES["quick_gelu"].reference(*args).tolist()
             for args in make_cases(EXERCISES["quick_gelu"])}
    return f"return np.array({table!r}[round(float(x.sum()), 2)], dtype=np.float32)"


def the_class():
    """{student: (notebook stem, notebook, {exercise: expected status, or (status, text in the message)})}."""
    c = {}
    c["ada_right"] = (NB1, answered(NB1, layer_norm=LN, quick_gelu=QG), {"layer_norm": "passed", "quick_gelu": "passed"})
    c["ben_loops_and_helpers"] = (NB1, add_cell(answered(NB1, layer_norm=(
        "out = np.empty_like(x)\n"
        "    for idx in np.ndindex(x.shape[:-1]):\n"
        "        out[idx] = x[idx] / rms(x[idx], eps) * weight\n"
        "    return out"), quick_gelu="return x * sigmoid(1.702 * x)"),
        "def rms(row, eps):\n    return np.sqrt(np.mean(row * row) + eps)\n\n"
        "def sigmoid(z):\n    return 1 / (1 + np.exp(-z))\n\nprint(rms(np.ones(3), 0.0))", at=3),
        {"layer_norm": "passed", "quick_gelu": "passed"})
    c["cleo_lazy"] = (NB1, released(NB1), {"layer_norm": "not done", "quick_gelu": "not done"})
    c["dan_wrong"] = (NB1, answered(NB1, layer_norm=(
        "mu = x.mean(-1, keepdims=True)\n    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight"),
        quick_gelu="return x.astype(np.float64) / (1 + np.exp(-1.702 * x))"),
        {"layer_norm": ("failed", "subtracted the mean"), "quick_gelu": ("failed", "only the dtype is wrong")})
    nb = answered(NB1, layer_norm="return x", quick_gelu="return x")
    cell_of(nb, "setup")["source"] = ("import numpy as np\nfrom minigpt_pixels.exercises import CheckResult\n"
                                      "def check(name, fn):\n    return CheckResult(name, 'passed', 'passed all cases')\n"
                                      "def describe(name):\n    return ''")
    c["eve_redefines_check"] = (NB1, nb, {"layer_norm": "failed", "quick_gelu": "failed"})
    c["fay_prints_check_marks"] = (NB1, answered(NB1, layer_norm="print('\u2705 layer_norm: passed all 3 cases')\n    return x",
                                                quick_gelu="print('\u2705 quick_gelu: passed all 2 cases')\n    return x"),
                                   {"layer_norm": "failed", "quick_gelu": "failed"})
    c["gus_patches_numpy"] = (NB1, add_cell(answered(NB1, layer_norm="return x", quick_gelu="return x"),
                                            "np.allclose = lambda *a, **k: True\nnp.isclose = lambda a, b, **k: np.ones(np.shape(a), bool)\n"
                                            "np.testing.assert_allclose = lambda *a, **k: None", at=2),
                              {"layer_norm": "failed", "quick_gelu": "failed"})
    nb = answered(NB1, quick_gelu="return __import__('minigpt' + '_pixels.layers').layers.quick_gelu(x)")
    cell_of(nb, "layer_norm")["source"] = ("from minigpt_pixels.layers import layer_norm as reference\n\n"
                                           "def layer_norm(x, weight, eps=1e-5):\n    return reference(x, weight, eps)")
    c["hal_imports_the_reference"] = (NB1, nb, {"layer_norm": ("failed", "uses the package's own code"),
                                                "quick_gelu": ("failed", "uses the package's own code")})
    c["ivy_endless_loop"] = (NB1, answered(NB1, layer_norm="while True:\n        pass", quick_gelu=QG),
                             {"layer_norm": ("failed", "longer than"), "quick_gelu": "passed"})
    c["jon_stubborn_loop"] = (NB1, answered(NB1, layer_norm=QG.replace("return", "y =") + "\n    return y",
                                            quick_gelu="while True:\n        try:\n            while True:\n                pass\n"
                                                       "        except BaseException:\n            pass"),
                              {"layer_norm": "failed", "quick_gelu": ("failed", "longer than")})
    c["kim_memory_bomb"] = (NB1, answered(NB1, layer_norm="big = np.zeros((1 << 22, 1 << 20))\n    return big",
                                          quick_gelu=QG), {"layer_norm": ("failed", "MemoryError"), "quick_gelu": "passed"})
    c["lou_syntax_error"] = (NB1, answered(NB1, layer_norm="return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * weight)",
                                           quick_gelu=QG), {"layer_norm": ("failed", "SyntaxError"), "quick_gelu": "passed"})
    nb = answered(NB1, quick_gelu=QG)
    nb["cells"] = [cell for cell in nb["cells"] if cell["metadata"].get("nbgrader", {}).get("grade_id") != "layer_norm"]
    c["max_deleted_the_cell"] = (NB1, nb, {"layer_norm": ("failed", "no function named layer_norm"), "quick_gelu": "passed"})
    c["ned_exits"] = (NB1, answered(NB1, layer_norm="import os\n    os._exit(0)", quick_gelu=QG),
                      {"layer_norm": ("failed", "ended the process"), "quick_gelu": "passed"})
    c["ola_segfault"] = (NB1, answered(NB1, layer_norm="import ctypes\n    return ctypes.string_at(0)", quick_gelu=QG),
                         {"layer_norm": ("failed", "crashed"), "quick_gelu": "passed"})
    c["pia_memorised"] = (NB1, answered(NB1, layer_norm=LN, quick_gelu=memorised_quick_gelu()),
                          {"layer_norm": "passed", "quick_gelu": "failed"})
    c["quin_samples"] = (NB3, answered(NB3, top_k_filter=(
        "kth = np.sort(logits, axis=-1)[:, -k][:, None]\n    return np.where(logits < kth, -np.inf, logits).astype(np.float32)"),
        top_k_sample=("ids = []\n    for row in logits:\n        top = np.argsort(row)[::-1][:k]\n"
                      "        p = np.exp(row[top] - row[top].max())\n        ids.append(top[rng.choice(k, p=p / p.sum())])\n"
                      "    return np.array(ids)")), {"top_k_filter": "passed", "top_k_sample": "passed"})
    c["ray_ignores_k"] = (NB3, answered(NB3, top_k_sample=(
        "p = np.exp(logits - logits.max(-1, keepdims=True))\n    p /= p.sum(-1, keepdims=True)\n"
        "    return np.array([rng.choice(len(r), p=r) for r in p])")),
        {"top_k_filter": "not done", "top_k_sample": ("failed", "filter the logits")})
    c["sam_backward"] = (NB5, answered(NB5, layer_norm_backward=(
        "n, weight, rms = cache\n    g = dout * weight\n    dx = (g - n * np.mean(g * n, axis=-1, keepdims=True)) / rms\n"
        "    return dx, np.sum(dout * n, axis=tuple(range(dout.ndim - 1)))")), {"layer_norm_backward": "passed"})
    return c


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The class in nbgrader's layout, graded in one command with a seed the students did not have."""
    root = tmp_path_factory.mktemp("class")
    submitted = root / "submitted"
    expected = {}
    for student, (stem, nb, verdicts) in the_class().items():
        path = submitted / student / stem / f"{stem}.ipynb"
        _write(path, nb)
        expected.update({(student, name): v for name, v in verdicts.items()})
    out, feedback = root / "grades.csv", root / "feedback"
    code = grade.main([str(submitted), "--out", str(out), "--feedback", str(feedback), "--seed", "99",
                       "--timeout", TIMEOUT, "--no-progress"] + sandbox_flags())
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return code, rows, expected, feedback


def test_one_command_grades_the_class_to_the_right_verdicts(graded):
    code, rows, expected, _ = graded
    assert code == 0
    got = {(r["student"], r["exercise"]): r for r in rows}
    for key, want in expected.items():
        status, text = want if isinstance(want, tuple) else (want, "")
        row = got[key]
        assert row["status"] == status and text in row["message"], (key, row["status"], row["message"])
    assert set(got) >= set(expected)


def test_the_gradebook_has_the_columns_and_points(graded):
    _, rows, _, _ = graded
    assert list(rows[0]) == list(gradebook.COLUMNS)
    assert {r["seed"] for r in rows} == {"99"}
    for r in rows:
        assert float(r["max_points"]) == EXERCISES[r["exercise"]].points
        assert float(r["points"]) == (float(r["max_points"]) if r["status"] == "passed" else 0)


def test_students_missing_a_notebook_get_not_done_rows(graded):
    _, rows, _, _ = graded
    ada = {r["exercise"]: r for r in rows if r["student"] == "ada_right"}
    assert ada["top_k_sample"]["status"] == "not done" and "no submission" in ada["top_k_sample"]["message"]


def test_feedback_files_hold_the_full_messages(graded):
    _, _, _, feedback = graded
    dan = (feedback / "dan_wrong.txt").read_text()
    assert "Likely mistake: you subtracted the mean" in dan and "first differing values" in dan
    assert "0 of 3 points" in dan
    assert sorted(p.stem for p in feedback.iterdir()) == sorted(the_class())


def test_a_notebook_given_directly_is_named_by_its_folder(tmp_path, capsys):
    path = _write(tmp_path / "zoe" / f"{NB1}.ipynb", answered(NB1, layer_norm=LN))
    out = tmp_path / "grades.csv"
    assert grade.main([str(path), "--out", str(out), "--timeout", TIMEOUT, "--no-progress"] + sandbox_flags()) == 0
    rows = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    assert [(r["student"], r["exercise"], r["status"]) for r in rows] == [
        ("zoe", "layer_norm", "passed"), ("zoe", "quick_gelu", "not done")]
    printed = capsys.readouterr().out
    assert "layer_norm" in printed and "zoe" in printed and "1 of 3" not in printed and "2 of 3" in printed


def test_memorising_passes_only_with_the_notebooks_seed_which_is_never_the_default(tmp_path, capsys):
    """The memorised answer passes with the notebook's own inputs (seed 1234); the command's default is a
    fresh seed, printed and written into the gradebook, so it fails there."""
    nb = answered(NB1, layer_norm=LN, quick_gelu=memorised_quick_gelu())
    path = _write(tmp_path / "pia" / f"{NB1}.ipynb", nb)
    limits = Limits(float(TIMEOUT), sandbox=bwrap_or_none() is not None)
    sandbox_flags()
    assert [r.status for r in grade.grade_notebook("pia", path, 1234, limits)] == ["passed", "passed"]
    out = tmp_path / "grades.csv"
    assert grade.main([str(path), "--out", str(out), "--timeout", TIMEOUT, "--no-progress"] + sandbox_flags()) == 0
    rows = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    seed = capsys.readouterr().out.split("seed ", 1)[1].split()[0]
    assert {r["seed"] for r in rows} == {seed} and seed != "1234"
    assert [r["status"] for r in rows] == ["passed", "failed"]


def test_it_never_overwrites_a_file_it_did_not_write(tmp_path):
    precious = tmp_path / "marks.csv"
    precious.write_text("name,mark\nada,20\n")
    nb = _write(tmp_path / "ada" / f"{NB1}.ipynb", released(NB1))
    with pytest.raises(SystemExit) as e:
        grade.main([str(nb), "--out", str(precious), "--no-sandbox"])
    assert e.value.code == 2 and precious.read_text() == "name,mark\nada,20\n"


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        grade.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.csv")])
    assert "no such notebook or folder" in capsys.readouterr().err


def test_the_static_check_names_the_import_and_ignores_docstrings():
    nb = answered(NB1, layer_norm=LN, quick_gelu=QG)
    program = extract(nb, ["layer_norm", "quick_gelu"])
    assert program.uses_package == {}  # the docstrings say "replaces minigpt_pixels.layers...": not a use
    add_cell(nb, "import importlib\ndef helper(x):\n    return importlib.import_module('minigpt_pixels.layers').quick_gelu(x)")
    nb["cells"][-1]["source"] += "\n"
    cell_of(nb, "quick_gelu")["source"] = "def quick_gelu(x):\n    return helper(x)"
    program = extract(nb, ["layer_norm", "quick_gelu"])
    assert list(program.uses_package) == ["quick_gelu"]
    assert "'minigpt_pixels.layers'" in program.uses_package["quick_gelu"]


def test_only_the_answers_and_helper_definitions_run():
    nb = add_cell(answered(NB1, layer_norm=LN), "import matplotlib.pyplot as plt\nplt.plot([1, 2])\ndef f():\n    return 1")
    code = "\n".join(c["source"] for c in extract(nb, ["layer_norm", "quick_gelu"]).cells)
    assert "def layer_norm" in code and "def f()" in code
    assert "plt" not in code and "check(" not in code and "minigpt_pixels.exercises" not in code


def test_what_the_student_process_returns_is_data_not_objects():
    """Results come back as arrays and JSON; an object returned stands for itself by its type name."""
    spec = {"kind": "tuple", "len": 2, "items": [{"kind": "array", "key": "a", "generic": False},
                                                 {"kind": "object", "type": "Tensor", "has_numpy": True}]}
    value = calls.decode(spec, {"a": np.zeros(3, np.float32)})
    assert isinstance(value[0], np.ndarray) and value[1].type_name == "Tensor" and value[1].has_numpy


def test_a_local_variable_named_like_a_package_import_is_not_a_use():
    nb = add_cell(answered(NB1, quick_gelu="layers = 1.702\n    return x / (1 + np.exp(-layers * x))"),
                  "from minigpt_pixels import layers\nprint(layers.quick_gelu)")
    assert extract(nb, ["layer_norm", "quick_gelu"]).uses_package == {}


def test_a_broken_notebook_is_a_row_and_the_class_goes_on(tmp_path):
    _write(tmp_path / "class" / "ann" / f"{NB1}.ipynb", answered(NB1, layer_norm=LN, quick_gelu=QG))
    broken = tmp_path / "class" / "bob" / f"{NB1}.ipynb"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"cells": [')  # cut off mid-upload
    weird = answered(NB1, layer_norm=LN)
    weird["cells"][0]["metadata"] = ["not", "a", "dict"]
    weird["cells"][1]["source"] = ["import numpy as np\n", 3]
    _write(tmp_path / "class" / "cy" / f"{NB1}.ipynb", weird)
    sandbox_flags()
    limits = Limits(float(TIMEOUT), sandbox=bwrap_or_none() is not None)
    rows, _ = grade.grade(grade.collect([tmp_path / "class"])[0], 5, limits, progress=False)
    got = {(r.student, r.exercise): (r.status, r.message) for r in rows}
    assert got[("ann", "layer_norm")][0] == got[("ann", "quick_gelu")][0] == "passed"
    assert got[("bob", "layer_norm")][0] == "failed" and "could not be read" in got[("bob", "layer_norm")][1]
    assert got[("cy", "layer_norm")][0] == "passed" and got[("cy", "quick_gelu")][0] == "not done"


def test_every_exercise_as_the_teacher_solved_it_gets_full_points(tmp_path):
    """Each exercise notebook built with its solutions (bits_per_token's included) graded as one student's: the
    cases, their arguments and the verdicts all cross the sandbox for every exercise, not only notebook 01's."""
    for stem, nb in build_notebooks.teacher_notebooks().items():
        _write(tmp_path / "sub" / "teacher" / f"{stem}.ipynb", nb)
    code = grade.main([str(tmp_path / "sub"), "--out", str(tmp_path / "g.csv"), "--timeout", "5", "--seed", "11",
                       "--no-progress"] + sandbox_flags())
    with open(tmp_path / "g.csv", newline="", encoding="utf-8") as f:
        rows = {r["exercise"]: r for r in csv.DictReader(f)}
    assert code == 0 and sorted(rows) == sorted(EXERCISES)
    for name, r in rows.items():
        assert (r["status"], r["points"]) == ("passed", str(EXERCISES[name].points)), (name, r["message"])
