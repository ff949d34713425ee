"""Build the notebooks under notebooks/ from their jupytext sources in notebooks/src/ (without outputs).

    python scripts/build_notebooks.py                 # rewrite every notebook's cells (outputs are dropped)
    python scripts/build_notebooks.py --check         # write nothing; exit 1 if a notebook is out of date
    python scripts/build_notebooks.py --nbgrader DIR  # only the teacher's notebooks: DIR/source/<assignment>/
    python scripts/run_notebooks.py                   # rebuild, then execute them all in place (outputs kept)

Each notebook's source is a jupytext percent-format script (`# %%` code cells, `# %% [markdown]` text
cells), so linters and reviewers see plain Python; the .ipynb files are what people open.
notebooks/src/NN_*.py gives notebooks/NN_*.ipynb.

An exercise notebook's source, notebooks/src/exercises/NAME.py, is the teacher's version, written
once: each answer sits between nbgrader's `### BEGIN SOLUTION` / `### END SOLUTION` markers, and each
check cell asserts the result between `### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS`. The teacher's
notebook gets nbgrader's cell metadata (the answer cells, the read-only set-up cell, the graded check
cells with the exercise's points); the student's, notebooks/exercises/NAME.ipynb, is what nbgrader's
`generate_assignment` makes of it (solutions replaced by nbgrader's stub, hidden tests removed; a test
runs nbgrader to confirm it), so a teacher on nbgrader can release and autograde the teacher's
notebooks unchanged (assignment NAME), and everyone else can hand out notebooks/exercises/.
Cell ids are fixed (notebook stem + number), so rebuilding gives the same bytes.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
import sys

import jupytext
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SRC = NOTEBOOKS / "src"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}  # ipykernel's own
# (ipykernel.kernelspec.get_kernel_dict()): with any other display name JupyterLab rewrites it on opening, so the
# notebook opens as modified ("save changes?") and a teacher's clone shows a git diff
SOLUTION = ("BEGIN SOLUTION", "END SOLUTION")  # nbgrader's delimiters (found anywhere in a line)
HIDDEN_TESTS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"  # nbgrader's ClearSolutions.code_stub for Python
CHECK_CALL = re.compile(r'^\w+ = check\("(\w+)", \w+\)', re.M)
# A check cell ends with display(result), not a bare `result`: nbgrader reads a graded cell's value
# (an execute_result) as partial credit.


def read_source(path):
    """-> [(cell type, source)] of the jupytext percent-format script at `path`."""
    nb = jupytext.read(path, fmt="py:percent")
    return [(c["cell_type"], c["source"]) for c in nb.cells]


def notebook(stem, cells, metadata=None):
    """cells: [(type, source)]; metadata: {cell index: cell metadata}."""
    nb = nbformat.v4.new_notebook()
    nb["cells"] = []
    for i, (kind, source) in enumerate(cells):
        c = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        c["id"] = f"{stem[:40]}-{i:02d}"
        c["metadata"] = (metadata or {}).get(i, {})
        nb["cells"].append(c)
    nb["metadata"] = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    return nb


def _remove_region(source, delimiters, stub=None):
    """nbgrader's ClearSolutions / ClearHiddenTests on one cell: the lines from the begin delimiter to the
    end one go, replaced by `stub` indented like the begin line."""
    begin, end = delimiters
    out, inside = [], False
    for line in source.split("\n"):
        if begin in line:
            inside = True
            if stub is not None:
                indent = re.match(r"\s*", line).group(0)
                out += [indent + s for s in stub.split("\n")]
        elif end in line:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def student_source(source):
    return _remove_region(_remove_region(source, SOLUTION, CODE_STUB), HIDDEN_TESTS)


def nbgrader_metadata(cells):
    """{cell index: metadata} marking the answer cells, the read-only set-up cell and the graded checks."""
    sys.path.insert(0, str(ROOT))
    from minigpt_pixels.exercises import EXERCISES

    def meta(grade_id, grade=False, solution=False, locked=False, points=None):
        m = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution,
             "task": False}
        if points is not None:
            m["points"] = points
        return {"nbgrader": m}

    out = {}
    for i, (kind, source) in enumerate(cells):
        if kind != "code":
            continue
        if SOLUTION[0] in source:
            tree = ast.parse(source)
            names = [s.name for s in tree.body if isinstance(s, ast.FunctionDef) and s.name in EXERCISES]
            if len(names) != 1:
                raise ValueError(f"answer cell {i} must define exactly one exercise function, got {names}")
            out[i] = meta(names[0], solution=True)
        elif CHECK_CALL.search(source) and HIDDEN_TESTS[0] in source:
            name = CHECK_CALL.search(source).group(1)
            out[i] = meta(f"check_{name}", grade=True, locked=True, points=EXERCISES[name].points)
        elif "from minigpt_pixels.exercises import" in source:
            out[i] = meta("setup", locked=True)
    return out


def exercise_notebooks(src):
    """-> (teacher's notebook, student's notebook) from an exercise source."""
    cells = read_source(src)
    metadata = nbgrader_metadata(cells)
    teacher = notebook(src.stem, cells, metadata)
    released = {}  # as nbgrader's release marks them (less the checksums), so Jupyter keeps them in place
    for i, m in metadata.items():
        locked = m["nbgrader"]["locked"]
        released[i] = {**({"editable": False} if locked else {}), "deletable": False,
                       "nbgrader": {"cell_type": cells[i][0], **m["nbgrader"]}}
    student = notebook(src.stem, [(kind, student_source(s) if kind == "code" else s) for kind, s in cells], released)
    return teacher, student


def all_notebooks():
    """{path relative to the repository root: notebook (no outputs)} for every notebook we ship."""
    out = {}
    for src in sorted(SRC.glob("[0-9]*.py")):
        out[f"notebooks/{src.stem}.ipynb"] = notebook(src.stem, read_source(src))
    for src in sorted((SRC / "exercises").glob("*.py")):
        out[f"notebooks/exercises/{src.stem}.ipynb"] = exercise_notebooks(src)[1]
    return out


def teacher_notebooks():
    """{assignment name: the teacher's notebook (solutions and hidden tests in, nbgrader metadata)}."""
    return {src.stem: exercise_notebooks(src)[0] for src in sorted((SRC / "exercises").glob("*.py"))}


def sources(nb):
    """What the builder owns in a notebook: each cell's type, id, source and nbgrader metadata (not outputs
    or counts)."""
    return [(c["cell_type"], c.get("id"), c["source"], c.get("metadata", {}).get("nbgrader")) for c in nb["cells"]]


def write(path, nb):
    path = ROOT / path
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.validate(nb)
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_course(course):
    """The teacher's notebooks as nbgrader's source/<assignment>/<assignment>.ipynb; an existing notebook
    that differs is left as it is (it may hold the teacher's own edits)."""
    kept = 0
    for name, nb in teacher_notebooks().items():
        path = pathlib.Path(course).resolve() / "source" / name / f"{name}.ipynb"
        if path.exists() and sources(nbformat.read(path, as_version=4)) != sources(nb):
            print(f"kept {path}: it differs from notebooks/src/exercises/{name}.py (delete it to rewrite it)",
                  file=sys.stderr)
            kept += 1
            continue
        write(path, nb)
        print(f"wrote {path}")
    return 1 if kept else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a notebook's cells differ from its source's")
    ap.add_argument("--nbgrader", metavar="DIR", type=pathlib.Path,
                    help="write only the teacher's notebooks, as an nbgrader course: DIR/source/<assignment>/")
    args = ap.parse_args(argv)
    if args.nbgrader is not None:
        return write_course(args.nbgrader)
    stale = []
    for path, nb in all_notebooks().items():
        if args.check:
            on_disk = ROOT / path
            old = nbformat.read(on_disk, as_version=4) if on_disk.exists() else None
            if old is None or sources(old) != sources(nb) or old.metadata.get("kernelspec") != KERNELSPEC:
                stale.append(path)
        else:
            write(path, nb)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python scripts/build_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
