"""Execute the notebooks with nbclient and keep their outputs: `python scripts/run_notebooks.py`.

    python scripts/run_notebooks.py                 # rebuild every notebook, run it, write it back with outputs
    python scripts/run_notebooks.py notebooks/03_sampling.ipynb    # rebuild and run just that one
    python scripts/run_notebooks.py --no-write      # run them all as they are, write nothing (what the tests do)
    python scripts/run_notebooks.py --no-build path/to/notebook.ipynb   # run one as it is

By default the notebooks are first rebuilt from their sources in notebooks/src/ (scripts/build_notebooks.py),
then each runs in a fresh kernel in its own folder (so relative paths such as ../tests/golden work) and is
written back with its outputs, pictures included: what people see when browsing the repository is what the code makes
today. Each notebook gets `--timeout` seconds in all; a cell that raises or runs past that fails the
run with the notebook and cell named. The check results the exercise notebooks show are listed
after each; the exercise notebooks themselves are stored without outputs (what students get, as
nbgrader releases them).

Stored outputs are what a fresh run prints: tests/test_notebooks.py runs every notebook and fails when
its outputs differ from the stored ones (`stale_outputs`). Only timing lines may differ, and a notebook
marks each one by saying how many threads it was timed on, e.g. `print(f"... in {s:.2f} s (timed on
{n} thread{'s' * (n > 1)})")`: every output line matching TIMING is left out of the comparison, and so is
stderr (progress bars and warnings carry rates and addresses). Figures are compared by where they are,
not by their pixels. (To mark students' notebooks, use `python -m minigpt_pixels.grade` instead: running a
student's notebook here runs all of its code in this kernel and believes what it prints.)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
TIMEOUT_S = 600  # per notebook
THREADS = 1  # BLAS/OpenMP threads per kernel: the notebooks' matrices are small, and one thread is the
# fastest there and keeps the timings they print steady on shared machines (measured 8x faster training
# steps on 2 busy cores than the libraries' default of one thread per core)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
RESULT_MARKS = ("\u2705", "\u274c", "\u23f3")  # how exercises.CheckResult starts: passed, failed, not done
TIMING = re.compile(r"\btimed on \d+ threads?\b")  # how a notebook marks a line whose numbers are timings
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object reprs (<... at 0x7f...>) differ from run to run
TEXT_TYPES = ("text/plain", "text/markdown", "text/html", "text/latex", "application/json")


class NotebookError(Exception):
    """A notebook that raised or ran out of time; the message names it and the cell."""


def notebook_paths(root=NOTEBOOK_DIR):
    """Every notebook we ship, in reading order: the walkthroughs, then the exercises (students' versions)."""
    return sorted(root.glob("[0-9]*.ipynb")) + sorted((root / "exercises").glob("*.ipynb"))


def execute(path, timeout=TIMEOUT_S, kernel_name="python3", threads=THREADS):
    """Run the notebook at `path` top to bottom in its own folder. -> (executed notebook, seconds).
    Raises NotebookError naming the cell that failed or ran past the notebook's `timeout`. The kernel
    gets `threads` BLAS/OpenMP threads (None: the libraries' defaults)."""
    path = pathlib.Path(path)
    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + timeout
    client = NotebookClient(
        nb, kernel_name=kernel_name, timeout=timeout, record_timing=False,
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),  # what is left of the notebook's budget
        resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        with _thread_env(threads):  # the kernel process inherits these
            client.execute()
    except CellTimeoutError as e:
        raise NotebookError(f"{_name(path)}: ran past its {timeout} s budget\n{_plain(e)}") from None
    except CellExecutionError as e:
        raise NotebookError(f"{_name(path)}: a cell raised\n{_plain(e)}") from None
    except DeadKernelError as e:
        raise NotebookError(f"{_name(path)}: the kernel died ({e})") from None
    return nb, time.perf_counter() - start


class _thread_env:
    def __init__(self, threads):
        self.threads, self.saved = threads, {}

    def __enter__(self):
        if self.threads is not None:
            self.saved = {k: os.environ.get(k) for k in THREAD_VARS}
            os.environ.update({k: str(self.threads) for k in THREAD_VARS})

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _plain(error):
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # no terminal colour codes in the report


def check_results(nb):
    """The exercise check results a notebook printed or displayed, as text lines."""
    found = []
    for c in nb.cells:
        for out in c.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            found += [line for line in text.splitlines() if line.startswith(RESULT_MARKS)]
    return found


def comparable_outputs(nb):
    """-> [(cell id, [output, ...])] of a notebook's code cells, each output reduced to what a fresh run
    must reproduce: stdout and rich text with the TIMING lines dropped and object addresses blanked,
    a figure as the word "<image>" (its place, not its pixels), an error as its name and value."""
    cells = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        shown = []
        for out in c.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                if out.get("name") == "stdout":  # one stream however its flushes split it into outputs
                    text = _joined(out.get("text", ""))
                    if shown and shown[-1][0] == "stdout-raw":
                        text = shown.pop()[1] + text
                    shown.append(("stdout-raw", text))
            elif kind in ("display_data", "execute_result"):
                data = out.get("data", {})
                if any(m.startswith("image/") for m in data):
                    shown.append(("image", "<image>"))
                shown += [(m, _untimed(_joined(data[m]))) for m in TEXT_TYPES if m in data]
            elif kind == "error":
                shown.append(("error", f"{out.get('ename')}: {out.get('evalue')}"))
        cells.append((c.get("id"), [("stdout", _untimed(v)) if k == "stdout-raw" else (k, v) for k, v in shown]))
    return cells


def stale_outputs(stored, fresh, limit=5):
    """The differences between a stored notebook's outputs and a fresh run's, timing lines excepted, as
    readable lines (at most `limit`); [] when the stored outputs are what the code prints today."""
    old, new = comparable_outputs(stored), comparable_outputs(fresh)
    if [i for i, _ in old] != [i for i, _ in new]:
        return ["the code cells differ (rebuild the notebook: python scripts/build_notebooks.py)"]
    found = []
    for (cell, a), (_, b) in zip(old, new):
        if a == b:
            continue
        for k in range(max(len(a), len(b))):
            x, y = (a[k] if k < len(a) else ("", "<nothing>")), (b[k] if k < len(b) else ("", "<nothing>"))
            if x == y:
                continue
            xl, yl = x[1].splitlines() or [""], y[1].splitlines() or [""]
            j = next((j for j in range(max(len(xl), len(yl))) if xl[j:j + 1] != yl[j:j + 1]), 0)
            found.append(f"cell {cell}, output {k}: stored {x[0]} {xl[j] if j < len(xl) else '<nothing>'!r}, "
                         f"fresh run {y[0]} {yl[j] if j < len(yl) else '<nothing>'!r}")
            break
    if len(found) > limit:
        found = found[:limit] + [f"... and {len(found) - limit} more cells"]
    return found


def _joined(text):
    return "".join(text) if isinstance(text, list) else str(text)


def _untimed(text):
    return "\n".join(ADDRESS.sub(" at 0x...", line) for line in _joined(text).splitlines() if not TIMING.search(line))


def _name(path):
    try:
        return str(pathlib.Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write(path, nb):
    tmp = pathlib.Path(f"{path}.tmp-{os.getpid()}")
    tmp.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("paths", nargs="*", type=pathlib.Path,
                    help="notebooks to run (default: every notebook under notebooks/)")
    ap.add_argument("--no-write", action="store_true", help="execute only; leave the files as they are")
    ap.add_argument("--no-build", action="store_true",
                    help="run the files as they are, without rebuilding them from notebooks/src/")
    ap.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds allowed per notebook")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="BLAS/OpenMP threads per kernel (0: the libraries' defaults)")
    args = ap.parse_args(argv)

    built = {}
    if not args.no_build and not args.no_write:  # fresh cells from the builder for the notebooks it makes
        sys.path.insert(0, str(ROOT / "scripts"))
        import build_notebooks

        built = {(ROOT / k).resolve(): (k, nb) for k, nb in build_notebooks.all_notebooks().items()}
        for k, nb in built.values():
            if not (ROOT / k).exists():
                build_notebooks.write(k, nb)
    paths = args.paths or notebook_paths()
    missing = [p for p in paths if not p.exists()]
    if missing:
        ap.exit(2, f"{ap.prog}: error: no such notebook: {missing[0]}\n")
    failures, total = [], 0.0
    for path in paths:
        if path.resolve() in built:
            build_notebooks.write(*built[path.resolve()])  # only the ones about to run lose their old outputs
        try:
            nb, seconds = execute(path, args.timeout, args.kernel, args.threads or None)
        except NotebookError as e:
            print(f"FAILED {e}", file=sys.stderr)
            failures.append(_name(path))
            continue
        total += seconds
        print(f"{seconds:6.1f} s  {_name(path)}", flush=True)
        for line in dict.fromkeys(check_results(nb)):  # each check once (a notebook's summary repeats them)
            print(f"          {line}")
        if not args.no_write and path.parent.name != "exercises":  # students get theirs without outputs
            write(path, nb)
    print(f"{total:6.1f} s  in all, {len(paths) - len(failures)} of {len(paths)} notebooks ran")
    if failures:
        print("failed: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
