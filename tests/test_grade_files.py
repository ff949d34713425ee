"""The grader's inputs and outputs (issue 22): every argument checked before grading, notebooks read as hostile
data, names that collide or look like formulas, copies and renamed notebooks, the gradebook and totals
written atomically and never over a file the grader did not write, and honest work that looks suspicious
getting its full marks."""

import csv
import errno
import os
import shutil

import pytest

from minigpt_pixels.exercises import grade, gradebook, runner
from minigpt_pixels.exercises.notebook import extract, read_notebook

from .grade_submissions import LN, NB1, QG, ROOT, add_cell, answered, released, sandbox_flags, write


def run(args, capsys=None):
    code = grade.main([str(a) for a in args] + ["--timeout", "2", "--no-progress"] + sandbox_flags())
    return code, (capsys.readouterr() if capsys else None)


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- arguments, all checked before grading -------------------------------------------------------------
@pytest.mark.parametrize("extra,expected", [
    (["--timeout", "nan"], "--timeout"), (["--timeout", "inf"], "--timeout"), (["--timeout", "0"], "--timeout"),
    (["--memory", "0"], "--memory"), (["--seed", "-1"], "--seed"), (["--seed", "1.5"], "--seed"),
    (["--jobs", "0"], "--jobs")])
def test_bad_numbers_are_refused(tmp_path, capsys, extra, expected):
    nb = write(tmp_path / "ada" / f"{NB1}.ipynb", released(NB1))
    with pytest.raises(SystemExit) as e:
        grade.main([str(nb), "--out", str(tmp_path / "g.csv"), "--no-sandbox"] + extra)
    assert e.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()


def test_unwritable_outputs_are_refused_before_grading(tmp_path, capsys):
    nb = write(tmp_path / "ada" / f"{NB1}.ipynb", released(NB1))
    (tmp_path / "afile").write_text("x")
    for args, expected in [(["--out", tmp_path / "afile" / "g.csv"], "cannot be written"),
                           (["--out", tmp_path / "g.csv", "--feedback", tmp_path / "afile"], "is a file"),
                           (["--out", tmp_path / "g.csv", "--totals", tmp_path / "g.csv"], "the gradebook itself")]:
        with pytest.raises(SystemExit) as e:
            grade.main([str(nb)] + [str(a) for a in args] + ["--no-sandbox"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err and "seed" not in capsys.readouterr().out, err
        assert len(err.strip().splitlines()) == 1  # one line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ada", "afile"]


def test_without_bwrap_it_refuses_and_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    nb = write(tmp_path / "ada" / f"{NB1}.ipynb", released(NB1))
    monkeypatch.setattr(runner.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as e:
        grade.main([str(nb), "--out", str(tmp_path / "g.csv")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "apt-get install bubblewrap" in err and "--no-sandbox" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "g.csv").exists()


def test_a_full_disk_leaves_no_temporary_file_and_the_old_gradebook(tmp_path, capsys, monkeypatch):
    nb = write(tmp_path / "ada" / f"{NB1}.ipynb", released(NB1))
    out = tmp_path / "out" / "g.csv"
    assert run([nb, "--out", out])[0] == 0
    before = out.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(gradebook.os, "fsync", full)
    with pytest.raises(SystemExit) as e:
        run([nb, "--out", out, "--seed", "3"], capsys)
    assert e.value.code == 1 and "No space left" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["g.csv", "g_totals.csv"]


# ---- notebooks read as hostile data ---------------------------------------------------------------------
def test_a_fifo_a_device_link_a_huge_cell_and_a_deep_notebook_are_failed_rows(tmp_path):
    class_dir = tmp_path / "class"
    write(class_dir / "ann" / f"{NB1}.ipynb", answered(NB1, layer_norm=LN, quick_gelu=QG))
    (class_dir / "fifo").mkdir()
    os.mkfifo(class_dir / "fifo" / f"{NB1}.ipynb")
    (class_dir / "zero").mkdir()
    os.symlink("/dev/zero", class_dir / "zero" / f"{NB1}.ipynb")
    write(class_dir / "huge" / f"{NB1}.ipynb", add_cell(released(NB1), "x = 1\n" * 400_000))
    (class_dir / "deep").mkdir()
    (class_dir / "deep" / f"{NB1}.ipynb").write_text("[" * 200_000 + "]" * 200_000)
    out = tmp_path / "g.csv"
    assert run([class_dir, "--out", out])[0] == 0
    got = {(r["student"], r["exercise"]): r for r in rows_of(out)}
    assert got[("ann", "layer_norm")]["status"] == "passed"
    for student, why in [("fifo", "not a regular file"), ("zero", "symbolic link"), ("huge", "over the grader's limit"),
                         ("deep", "RecursionError")]:
        for exercise, top in [("layer_norm", "2"), ("quick_gelu", "1")]:
            row = got[(student, exercise)]
            assert row["status"] == "failed" and why in row["message"] and row["max_points"] == top, row


def test_read_notebook_caps_the_file_before_reading_it(tmp_path):
    big = tmp_path / "big.ipynb"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse: no disk used
    with pytest.raises(ValueError, match="over the grader's limit"):
        read_notebook(big)


# ---- names, copies, folders ----------------------------------------------------------------------------
def test_names_that_collide_or_look_like_formulas_or_are_not_utf8(tmp_path, capsys):
    class_dir = tmp_path / "class"
    nb = answered(NB1, layer_norm=LN)
    for name in ["anna smith", "anna_smith", "notes", "=HYPERLINK(1)", "+plus", "-minus", "@at"]:
        write(class_dir / name / f"{NB1}.ipynb", nb)
    raw = os.path.join(os.fsencode(class_dir), b"b\xe9a")
    os.mkdir(raw)
    shutil.copy(class_dir / "notes" / f"{NB1}.ipynb", os.fsdecode(os.path.join(raw, os.fsencode(f"{NB1}.ipynb"))))
    feedback = tmp_path / "feedback"
    feedback.mkdir()
    (feedback / "notes.txt").write_text("the teacher's notes\n")
    out = tmp_path / "g.csv"
    code, printed = run([class_dir, "--out", out, "--feedback", feedback], capsys)
    assert code == 0
    assert (feedback / "notes.txt").read_text() == "the teacher's notes\n"
    assert "notes.txt was not written by this command" in printed.err
    names = sorted(p.name for p in feedback.iterdir())
    assert "anna_smith.txt" in names and "anna_smith-2.txt" in names and "notes-2.txt" in names
    students = {r["student"] for r in rows_of(out)}
    assert {"'=HYPERLINK(1)", "'+plus", "'-minus", "'@at", "b\\xe9a", "anna smith", "anna_smith"} <= students
    totals = rows_of(out.with_name("g_totals.csv"))
    assert {r["student"] for r in totals} == students and all(r["total"] == "2" for r in totals)


def test_dot_folders_are_warned_about_and_a_folder_given_twice_counts_once(tmp_path, capsys):
    class_dir = tmp_path / "class"
    write(class_dir / "ann" / f"{NB1}.ipynb", answered(NB1, layer_norm=LN))
    write(class_dir / ".bob" / f"{NB1}.ipynb", answered(NB1, layer_norm=LN))
    write(class_dir / "ann" / ".ipynb_checkpoints" / f"{NB1}-checkpoint.ipynb", released(NB1))
    out = tmp_path / "g.csv"
    code, printed = run([class_dir, class_dir, class_dir / "ann" / f"{NB1}.ipynb", "--out", out], capsys)
    assert code == 0 and "hidden folder" in printed.err and ".bob" in printed.err
    assert [(r["student"], r["exercise"]) for r in rows_of(out)] == [("ann", "layer_norm"), ("ann", "quick_gelu")]
    assert run([class_dir / ".bob", "--out", out])[0] == 0
    assert {r["student"] for r in rows_of(out)} == {".bob"}


def test_copies_give_the_best_attempt_and_a_renamed_notebook_its_full_maximum(tmp_path, capsys):
    class_dir = tmp_path / "class"
    write(class_dir / "cat" / f"{NB1}.ipynb", answered(NB1, layer_norm=LN))
    write(class_dir / "cat" / f"{NB1}-Copy1.ipynb", answered(NB1, layer_norm="return x", quick_gelu=QG))
    write(class_dir / "dee" / "my homework.ipynb", answered(NB1, layer_norm=LN))
    out = tmp_path / "g.csv"
    code, printed = run([class_dir, "--out", out], capsys)
    assert code == 0 and "copies" in printed.err and f"{NB1}-Copy1.ipynb" in printed.err
    got = {(r["student"], r["exercise"]): r for r in rows_of(out)}
    assert len(got) == 4 and len(rows_of(out)) == 4
    assert got[("cat", "layer_norm")]["status"] == got[("cat", "quick_gelu")]["status"] == "passed"
    assert "best of 2 copies" in got[("cat", "layer_norm")]["message"]
    dee = [r for r in rows_of(out.with_name("g_totals.csv")) if r["student"] == "dee"][0]
    assert (dee["total"], dee["max_points"]) == ("2", "3")


# ---- honest work that looks suspicious ------------------------------------------------------------------
def honest_notebook():
    nb = answered(NB1, layer_norm=(
        '"""Replaces minigpt_pixels.layers.layer_norm, written from scratch."""\n'
        '    out = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * weight\n'
        '    assert out.shape == x.shape, "same shape as minigpt_pixels.layers.layer_norm"\n'
        '    return out'), quick_gelu="return x * sigmoid(GELU_K * x)")
    return add_cell(nb, "GELU_K = 1.702\nsigmoid = lambda z: 1 / (1 + np.exp(-z))\nSQRT = np.sqrt(2.0)\n"
                        "print(sigmoid(0.0))", at=2)


def test_docstrings_and_helper_constants_are_honest_work(tmp_path):
    program = extract(honest_notebook(), ["layer_norm", "quick_gelu"])
    assert program.uses_package == {}
    code = "\n".join(c["source"] for c in program.cells)
    assert "GELU_K = 1.702" in code and "sigmoid = lambda" in code and "print(sigmoid" not in code
    out = tmp_path / "g.csv"
    write(tmp_path / "eve" / f"{NB1}.ipynb", honest_notebook())
    assert run([tmp_path / "eve", "--out", out])[0] == 0
    assert [r["status"] for r in rows_of(out)] == ["passed", "passed"], rows_of(out)


def test_a_name_assigned_by_a_cell_that_does_not_run_is_explained(tmp_path):
    nb = add_cell(answered(NB1, quick_gelu="return x * sigmoid(K * x)"),
                  "K = float(open('k.txt').read())\nsigmoid = lambda z: 1 / (1 + np.exp(-z))", at=2)
    write(tmp_path / "fay" / f"{NB1}.ipynb", nb)
    out = tmp_path / "g.csv"
    assert run([tmp_path / "fay", "--out", out])[0] == 0
    row = [r for r in rows_of(out) if r["exercise"] == "quick_gelu"][0]
    assert "NameError" in row["message"] and "cell 3 assigns it" in row["message"], row


def test_strings_naming_the_package_count_only_when_run(tmp_path):
    nb = answered(NB1, layer_norm=(
        'import subprocess, sys\n    subprocess.run([sys.executable, "-c", "import minigpt_pixels"])\n    return x'))
    assert "passed to run" in extract(nb, ["layer_norm", "quick_gelu"]).uses_package["layer_norm"]


def test_the_command_and_the_module_are_the_same_grader():
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["minigpt-pixels-grade"] == "minigpt_pixels.exercises.grade:main"
    import minigpt_pixels.grade as shim
    assert shim.main is grade.main
    assert "--no-progress" in grade.parser().format_help() and "--no-sandbox" in grade.parser().format_help()


def test_the_package_students_install_holds_no_solution():
    """docs/teaching.md: a wheel of the repository carries minigpt_pixels/ only, and no module there holds a
    solution (the teacher's sources with nbgrader's markers live in notebooks/src/exercises/)."""
    import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["packages"]["find"]["include"] == ["minigpt_pixels*"]
    marker = "### BEGIN " + "SOLUTION"
    assert not [p for p in (ROOT / "minigpt_pixels").rglob("*.py") if marker in p.read_text(encoding="utf-8")]
    assert any(marker in p.read_text() for p in (ROOT / "notebooks" / "src" / "exercises").glob("*.py"))
