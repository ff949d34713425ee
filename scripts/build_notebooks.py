"""Build the notebooks under notebooks/ from their jupytext sources in notebooks/src/ (without outputs).

    python scripts/build_notebooks.py          # rewrite every notebook's cells (outputs are dropped)
    python scripts/build_notebooks.py --check  # write nothing; exit 1 if a notebook is out of date
    python scripts/run_notebooks.py            # rebuild, then execute them all in place (outputs kept)

Each notebook's source is a jupytext percent-format script (`# %%` code cells, `# %% [markdown]` text
cells), so linters and reviewers see plain Python; the .ipynb files are what people open.
notebooks/src/NN_*.py gives notebooks/NN_*.ipynb. An exercise notebook's source,
notebooks/src/exercises/*.py, is the teacher's version: the solutions sit between nbgrader's
`### BEGIN SOLUTION` / `### END SOLUTION` markers, and the student's notebook,
notebooks/exercises/*.ipynb, is built from it with each solution replaced by a stub.
Cell ids are fixed (notebook stem + number), so rebuilding gives the same bytes.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

import jupytext
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SRC = NOTEBOOKS / "src"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError"


def read_source(path):
    """-> [(cell type, source)] of the jupytext percent-format script at `path`."""
    nb = jupytext.read(path, fmt="py:percent")
    return [(c["cell_type"], c["source"]) for c in nb.cells]


def notebook(stem, cells):
    nb = nbformat.v4.new_notebook()
    nb["cells"] = []
    for i, (kind, source) in enumerate(cells):
        c = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        c["id"] = f"{stem[:40]}-{i:02d}"
        nb["cells"].append(c)
    nb["metadata"] = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    return nb


def clear_solution(source):
    """A cell with its solutions replaced by the stub (indented like the markers), as nbgrader does."""
    pattern = re.compile(rf"^([ \t]*){re.escape(BEGIN)}\n.*?^[ \t]*{re.escape(END)}[ \t]*$", re.M | re.S)
    return pattern.sub(lambda m: "\n".join(m.group(1) + line for line in CODE_STUB.splitlines()), source)


def strip_markers(source):
    return "\n".join(line for line in source.split("\n") if line.strip() not in (BEGIN, END))


def all_notebooks():
    """{path relative to the repository root: notebook (no outputs)} for every notebook we ship."""
    out = {}
    for src in sorted(SRC.glob("[0-9]*.py")):
        out[f"notebooks/{src.stem}.ipynb"] = notebook(src.stem, read_source(src))
    for src in sorted((SRC / "exercises").glob("*.py")):
        cells = read_source(src)
        out[f"notebooks/exercises/{src.stem}.ipynb"] = notebook(
            src.stem, [(kind, clear_solution(s) if kind == "code" else s) for kind, s in cells])
        out[f"notebooks/exercises/solutions/{src.stem}.ipynb"] = notebook(
            "sol-" + src.stem, [(kind, strip_markers(s) if kind == "code" else s) for kind, s in cells])
    return out


def sources(nb):
    """What the builder owns in a notebook: each cell's type, id and source (not outputs or counts)."""
    return [(c["cell_type"], c.get("id"), c["source"]) for c in nb["cells"]]


def write(path, nb):
    path = ROOT / path
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.validate(nb)
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a notebook's cells differ from its source's")
    args = ap.parse_args(argv)
    stale = []
    for path, nb in all_notebooks().items():
        if args.check:
            on_disk = ROOT / path
            if not on_disk.exists() or sources(nbformat.read(on_disk, as_version=4)) != sources(nb):
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
