"""Every notebook runs top to bottom in a fresh kernel, in a temporary copy of notebooks/ (so nothing
it writes lands in the repository), within 600 s; the exercise notebooks students get report "not done
yet" without raising, and the teacher's versions (built from notebooks/src/exercises/, solutions in)
pass every check. Also: the files on disk are what scripts/build_notebooks.py makes from their jupytext
sources in notebooks/src/, no solution reaches what students get, the walkthroughs are stored with
their pictures and with the outputs a fresh run gives (timing lines excepted), and every notebook carries
ipykernel's own kernelspec so that it opens unmodified in JupyterLab."""

import json
import pathlib
import re
import shutil
import sys

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

import nbformat  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import build_notebooks  # noqa: E402
import run_notebooks  # noqa: E402

TIMEOUT_S = 600  # per notebook
PATHS = [p.relative_to(ROOT) for p in run_notebooks.notebook_paths()]
TEACHER = build_notebooks.teacher_notebooks()  # {assignment name: the teacher's notebook, solutions in}
WALKTHROUGHS = [p for p in PATHS if p.parent.name == "notebooks"]
DURATIONS = {}
EXPECTED = {  # a line each walkthrough must print: its point, made
    "01_palette.ipynb": "PSNR",
    "02_transformer_piece_by_piece.ipynb": "after ln_f = hidden_states",
    "03_sampling.ipynb": "speed-up",
    "04_linear_probe.ipynb": "raw pixels",
    "05_training.ipynb": "held-out",
    "06_cuda_kernels.ipynb": "max |kernel - layers.linear|",
    "07_likelihood.ipynb": "bits per token",
    "08_fine_tuning.ipynb": "fine-tuned - last-layer probe",
}


SOLO = {"04_linear_probe.ipynb"}  # spreads its probe fits over every core itself, so it runs on its own
LONGEST = ("08_fine_tuning.ipynb", "05_training.ipynb")  # started first, so the two workers end together
WORKERS = 2  # every kernel gets run_notebooks.THREADS = 1 thread: two of them at once on a 2-core machine


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of notebooks/ beside a copy of the golden fixtures they read (../tests/golden)."""
    root = tmp_path_factory.mktemp("nb")
    shutil.copytree(ROOT / "notebooks", root / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "tests" / "golden" / "models", root / "tests" / "golden" / "models")
    yield root
    if DURATIONS:
        print("\nnotebook execution times: " + ", ".join(f"{k} {v:.0f} s" for k, v in DURATIONS.items())
              + f"; {sum(DURATIONS.values()):.0f} s in all")


def probe_numbers_printed(nb):
    """The held-out accuracies notebook 4 prints, layer by layer."""
    return [float(m) for m in re.findall(r"layer \d \(.*?\): held-out accuracy ([0-9.]+)", outputs_text(nb))]


def check_probe_numbers(nb, where):
    """Notebook 4 and the README (docs/images/probe.json) show the same probe curve."""
    stored = json.loads((ROOT / "docs" / "images" / "probe.json").read_text())
    expected = [float(v) for v in stored["layers"].values()]
    assert probe_numbers_printed(nb) == pytest.approx(expected, abs=1 / stored["n_test"] + 1e-9), \
        f"{where}: run python scripts/make_readme_images.py and python scripts/run_notebooks.py"


def test_notebook_4_and_the_readme_show_the_same_probe_curve():
    check_probe_numbers(nbformat.read(ROOT / "notebooks" / "04_linear_probe.ipynb", as_version=4), "stored notebook")


def outputs_text(nb):
    parts = []
    for c in nb.cells:
        for out in c.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain", "")
            parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)


def test_the_notebooks_are_all_there():
    names = [p.name for p in WALKTHROUGHS]
    assert [n[:2] for n in names] == ["01", "02", "03", "04", "05", "06", "07", "08"], names
    assert sorted(p.stem for p in (ROOT / "notebooks" / "src").glob("[0-9]*.py")) == [p.stem for p in WALKTHROUGHS]
    skeletons = sorted(p.stem for p in PATHS if p.parent.name == "exercises")
    assert len(skeletons) >= 5 and skeletons == sorted(TEACHER)


def test_no_solution_reaches_what_students_get():
    """Each answer cell students get holds nbgrader's stub after the docstring, where the teacher's holds
    the solution; no notebook is in the installed package, and there is no solutions folder."""
    for path in PATHS:
        if path.parent.name != "exercises":
            continue
        student = nbformat.read(ROOT / path, as_version=4)
        teacher = TEACHER[path.stem]
        for mine, theirs in zip(student.cells, teacher.cells):
            assert "SOLUTION" not in mine.source and "HIDDEN TESTS" not in mine.source, path
            if mine.metadata.get("nbgrader", {}).get("solution"):
                code = [line.strip() for line in mine.source.split('"""')[-1].strip().splitlines()]
                assert code == ["# YOUR CODE HERE", "raise NotImplementedError()"], (path, code)
                assert "### BEGIN SOLUTION" in theirs.source and "return" in theirs.source.split("BEGIN SOLUTION")[1]
    assert not list((ROOT / "minigpt_pixels").rglob("*.ipynb"))
    assert not (ROOT / "notebooks" / "exercises" / "solutions").exists()


def test_the_files_on_disk_are_what_the_builder_makes():
    assert build_notebooks.main(["--check"]) == 0, "run python scripts/run_notebooks.py"


@pytest.mark.parametrize("path", PATHS, ids=["/".join(p.parts[1:]) for p in PATHS])
def test_notebooks_carry_ipykernel_s_kernelspec(path):
    """What ipykernel installs (`python -m ipykernel install`), so JupyterLab opens the file unmodified."""
    from ipykernel.kernelspec import get_kernel_dict

    ours = get_kernel_dict()
    spec = nbformat.read(ROOT / path, as_version=4).metadata.get("kernelspec")
    assert spec == {"display_name": ours["display_name"], "language": ours["language"], "name": "python3"}, \
        f"{path}: run python scripts/build_notebooks.py"


def test_exercise_notebooks_are_stored_without_outputs():
    """Students get them clean, as nbgrader releases them."""
    for path in PATHS:
        if path.parent.name == "exercises":
            nb = nbformat.read(ROOT / path, as_version=4)
            assert not any(c.get("outputs") for c in nb.cells), path


def _with_output(text):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(x)")
    cell["id"] = "c0"
    cell["outputs"] = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    nb.cells.append(cell)
    return nb


def test_the_stale_output_check_sees_a_changed_number_and_ignores_timings():
    stored = _with_output("held-out loss 1.2345\n32 images in 0.51 s (timed on 1 thread)\n")
    assert run_notebooks.stale_outputs(stored, _with_output(
        "held-out loss 1.2345\n32 images in 4.70 s (timed on 2 threads)\n")) == []
    stale = run_notebooks.stale_outputs(stored, _with_output(
        "held-out loss 1.2346\n32 images in 0.51 s (timed on 1 thread)\n"))
    assert len(stale) == 1 and "1.2345" in stale[0] and "1.2346" in stale[0], stale
    # a timing not marked as one is compared like any other number
    assert run_notebooks.stale_outputs(_with_output("in 0.51 s\n"), _with_output("in 0.52 s\n"))
    # a lost output or figure counts
    fresh = _with_output("held-out loss 1.2345\n")
    fresh.cells[0]["outputs"].append(nbformat.v4.new_output("display_data", data={"image/png": "", "text/plain": "x"}))
    assert run_notebooks.stale_outputs(stored, fresh)


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=[p.name for p in WALKTHROUGHS])
def test_walkthroughs_are_stored_with_their_pictures(path):
    """Outputs are kept in git so the pictures show when browsing; run_notebooks.py regenerates them."""
    nb = nbformat.read(ROOT / path, as_version=4)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert images and not errors, f"{path}: run python scripts/run_notebooks.py"


def selected(session):
    """The notebooks this run's selected tests execute: walkthroughs and exercises by path, teachers' by name."""
    here = [item for item in session.items if item.module.__name__ == __name__ and hasattr(item, "callspec")]
    return ([item.callspec.params["path"] for item in here if item.originalname == "test_notebook_runs_top_to_bottom"],
            [item.callspec.params["name"] for item in here
             if item.originalname == "test_the_teacher_s_notebook_passes_every_check"])


@pytest.fixture(scope="module")
def executed(workdir, request):
    """Each selected notebook run once in a fresh kernel: SOLO ones alone, then the rest WORKERS at a time in
    worker processes (each kernel single-threaded, so two share a 2-core machine without slowing each
    other). -> {path or teacher name: (executed notebook, seconds) or the NotebookError it raised}."""
    import concurrent.futures
    import multiprocessing

    paths, names = selected(request.session)
    jobs = {p: workdir / p for p in paths}
    for name in names:  # the teacher's version beside the students' (solutions in), removed once it ran
        jobs[name] = workdir / "notebooks" / "exercises" / f"{name}.teacher.ipynb"
        nbformat.write(TEACHER[name], jobs[name])
    results = {}
    with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        rest = sorted((k for k in jobs if getattr(k, "name", None) not in SOLO),
                      key=lambda k: getattr(k, "name", None) not in LONGEST)  # a stable sort: LONGEST first
        for batch in ([k for k in jobs if getattr(k, "name", None) in SOLO], rest):
            futures = {k: pool.submit(run_notebooks.execute, jobs[k], TIMEOUT_S) for k in batch}
            for k, future in futures.items():
                try:
                    results[k] = future.result()
                except run_notebooks.NotebookError as e:
                    results[k] = e
    for name in names:
        jobs[name].unlink()
    return results


def ran(executed, key):
    """The executed notebook and its seconds, or the error its run raised, raised here."""
    result = executed[key]
    if isinstance(result, Exception):
        raise result
    return result


@pytest.mark.parametrize("path", PATHS, ids=["/".join(p.parts[1:]) for p in PATHS])
def test_notebook_runs_top_to_bottom(path, workdir, executed):
    nb, seconds = ran(executed, path)  # a NotebookError names the cell that failed
    DURATIONS["/".join(path.parts[1:])] = seconds
    assert seconds < TIMEOUT_S
    text = outputs_text(nb)
    assert "Traceback" not in text
    results = run_notebooks.check_results(nb)
    if path.parent.name == "exercises":  # as students get them: every check says "not done yet"
        assert results and all(r.startswith("\u23f3") and "not done yet" in r for r in results), results
    else:
        assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        assert EXPECTED.get(path.name, "") in text
        stale = run_notebooks.stale_outputs(nbformat.read(ROOT / path, as_version=4), nb)
        assert not stale, (f"{path}: the stored outputs are not what a fresh run prints (run python "
                           f"scripts/run_notebooks.py {path}; mark timing lines 'timed on N threads'):\n"
                           + "\n".join(stale))
        if path.name == "04_linear_probe.ipynb":
            check_probe_numbers(nb, "executed notebook")
    assert not list(workdir.glob("notebooks/**/*.png")), "a notebook wrote files into its folder"


@pytest.mark.parametrize("name", sorted(TEACHER))
def test_the_teacher_s_notebook_passes_every_check(name, executed):
    """The solutions in notebooks/src/exercises/ pass, hidden tests (nbgrader's autograde asserts) included."""
    nb, seconds = ran(executed, name)
    results = run_notebooks.check_results(nb)
    assert results and all(r.startswith("\u2705") for r in results), results
    assert "Traceback" not in outputs_text(nb)
