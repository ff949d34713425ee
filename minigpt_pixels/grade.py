"""Grade a class: a folder of submitted exercise notebooks -> a gradebook (CSV) and feedback.

    python -m minigpt_pixels.grade submitted/ --out grades.csv --feedback feedback/
    python -m minigpt_pixels.grade alice/01_layer_norm_and_quick_gelu.ipynb --out grades.csv --seed 7

A SUBMISSION is a notebook or a folder. In a folder, each immediate sub-folder is one student, and
every notebook under it is theirs (nbgrader's submitted/<student>/<assignment>/<notebook>.ipynb works
as it is); a notebook given directly is named by its parent folder.

Grading that a submission cannot fool: for each notebook, only the student's answer cells (and the
helper functions they define in other cells) run, in a separate Python process started in an empty
temporary directory, with a time limit per exercise and a memory limit (exercises/sandbox.py). That
process cannot import minigpt_pixels and never sees the grader's reference; it only calls the
student's functions on the inputs drawn here and sends back plain arrays. The verdict is computed
here, by `exercises.judge`, against the reference computed here. So a redefined `check`, a patched
NumPy or a printed check mark changes nothing, an endless loop, a memory bomb, a crash or a syntax
error fails its exercise with a message and the others are still graded, and an answer that imports
or calls the package's own function fails and is reported as such. `--seed` draws other inputs than
the ones in the students' notebooks, so a memorised output does not pass.

It prints a progress bar and a summary, and exits 0 once grading completed, whatever the students
scored (2 for bad arguments). What the isolation does not cover: docs/teaching.md.
"""

from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from .exercises import EXERCISES, NOTEBOOKS, SEED, judge, make_cases
from .exercises import engine
from .exercises.sandbox import BLOCKED, BLOCKED_MESSAGE

SANDBOX = pathlib.Path(__file__).resolve().parent / "exercises" / "sandbox.py"
TIMEOUT_S = 10.0  # per exercise (all its cases)
MEMORY_MB = 1024  # address space the student's process may add to what Python and NumPy already use
COLUMNS = ("student", "notebook", "exercise", "status", "points", "max_points", "message")
PREAMBLE = "import numpy as np\n"  # what the notebooks' read-only set-up cell gives the answers
SKIPPED_IMPORTS = ("matplotlib", "IPython", "sklearn", "ipywidgets")  # outside answer cells: slow and not needed
GRACE_S = 2.0  # on top of the child's own per-call alarm, before the grader kills it
START_S = 30.0  # starting Python and NumPy, on a busy machine
JOBS = max(1, min(4, (os.cpu_count() or 2) // 2))  # student processes at once


@dataclasses.dataclass
class Row:
    student: str
    notebook: str
    exercise: str
    status: str
    points: float
    max_points: float
    message: str  # the full message; the CSV gets its summary lines

    def csv_row(self):
        return [self.student, self.notebook, self.exercise, self.status, f"{self.points:g}", f"{self.max_points:g}",
                summary(self.message)]


def summary(message):
    """The lines of a message that are not indented detail (value listings, code lines), joined."""
    return " ".join(line.strip() for line in message.splitlines() if line and not line.startswith(" "))


# ---- finding the submissions ------------------------------------------------------------------------
def collect(paths):
    """[(student, notebook path)] from notebooks and folders, in a stable order. Raises ValueError."""
    found = []
    for p in map(pathlib.Path, paths):
        if p.is_file():
            if p.suffix != ".ipynb":
                raise ValueError(f"{p}: not a notebook (.ipynb)")
            found.append((p.resolve().parent.name, p))
        elif p.is_dir():
            for nb in sorted(p.glob("*.ipynb")):  # notebooks directly in the folder: the folder is the student
                found.append((p.resolve().name, nb))
            for student in sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")):
                for nb in sorted(student.rglob("*.ipynb")):
                    if not any(part.startswith(".") for part in nb.relative_to(student).parts):
                        found.append((student.name, nb))
        else:
            raise ValueError(f"{p}: no such notebook or folder")
    return found


# ---- what runs in the student's process -----------------------------------------------------------
@dataclasses.dataclass
class Program:
    cells: list  # [{"index": cell number (1-based), "source": code}]
    exercises: list  # the exercise names this notebook holds
    uses_package: dict  # exercise name -> how its answer uses minigpt_pixels
    defined: set  # top-level function names in the code that runs


def read_notebook(path):
    """A notebook's JSON as {"cells": [...]}, read as data (nbformat's validation is not needed to find
    code cells, and takes seconds to import). Raises ValueError for anything that is not a notebook."""
    nb = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    if isinstance(nb, dict) and "worksheets" in nb:  # nbformat 3: code cells keep their source in "input"
        cells = [{**c, "source": c.get("input", "")} for w in nb["worksheets"] for c in w.get("cells", [])]
        nb = {"cells": cells}
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or \
            not all(isinstance(c, dict) for c in nb["cells"]):
        raise ValueError("not a Jupyter notebook (no list of cells)")
    return nb


def notebook_exercises(nb, stem):
    names = [n for n in NOTEBOOKS.get(stem, ())]
    for cell in nb.get("cells", []):
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id in EXERCISES and grade_id not in names:
            names.append(grade_id)
    for cell in nb.get("cells", []):
        for fn in _top_level_defs(_source(cell)):
            if fn in EXERCISES and fn not in names:
                names.append(fn)
    return names


def _nbgrader(cell):
    meta = cell.get("metadata")
    meta = meta.get("nbgrader") if isinstance(meta, dict) else None
    return meta if isinstance(meta, dict) else {}


def _source(cell):
    src = cell.get("source", "")
    return "".join(map(str, src)) if isinstance(src, list) else str(src)


def _parse(source):
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _top_level_defs(source):
    tree = _parse(source) if "def " in source else None
    return [s.name for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))] if tree else []


def _is_answer(cell, exercises):
    return bool(_nbgrader(cell).get("solution")) or any(fn in exercises for fn in _top_level_defs(_source(cell)))


def _import_root(stmt):
    if isinstance(stmt, ast.Import):
        return [a.name.split(".")[0] for a in stmt.names]
    if isinstance(stmt, ast.ImportFrom):
        return [(stmt.module or "").split(".")[0]] if not stmt.level else [""]
    return []


def _is_grader_api(stmt):
    """`from minigpt_pixels.exercises import check, describe`: the notebooks' own set-up, not an answer."""
    return (isinstance(stmt, ast.ImportFrom) and stmt.module == f"{BLOCKED}.exercises"
            and all(a.name in ("check", "describe") for a in stmt.names))


def _bound_names(stmt):
    if isinstance(stmt, ast.Import):
        return [a.asname or a.name.split(".")[0] for a in stmt.names]
    return [a.asname or a.name for a in stmt.names]


def extract(nb, exercises):
    """The code to run for `exercises`: answer cells whole, other cells' function and class definitions
    and imports (not the slow plotting ones), with blanked lines so that line numbers stay the cell's."""
    cells, package_names, defs = [], {}, {}
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = _source(cell)
        tree = _parse(source)
        answer = _is_answer(cell, exercises)
        if tree is None:  # a syntax error: an answer cell still runs, so the student hears of it
            if answer:
                cells.append({"index": i + 1, "source": source})
            continue
        lines = source.split("\n")
        keep = [False] * len(lines)
        for stmt in tree.body:
            roots = _import_root(stmt)
            if _is_grader_api(stmt):
                continue
            if BLOCKED in roots:
                for name in _bound_names(stmt):
                    package_names[name] = (f"`{ast.get_source_segment(source, stmt)}` (cell {i + 1}, line "
                                           f"{stmt.lineno})")
                if not answer:
                    continue
            is_def = isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if is_def:
                defs[stmt.name] = (stmt, source, i + 1)
            if not (answer or is_def or (roots and not set(roots) & set(SKIPPED_IMPORTS))):
                continue
            first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
            for n in range(first - 1, stmt.end_lineno):
                keep[n] = True
        kept = "\n".join(line if k else "" for line, k in zip(lines, keep))
        if kept.strip():
            cells.append({"index": i + 1, "source": kept})
    uses = {}
    for name in exercises:
        how = _package_use(name, defs, package_names)
        if how:
            uses[name] = how
    return Program(cells, list(exercises), uses, set(defs))


def _package_use(name, defs, package_names):
    """How the function `name`, or a helper it calls, reaches minigpt_pixels; None if it does not."""
    seen, todo = set(), [name]
    while todo:
        fn = todo.pop()
        if fn in seen or fn not in defs:
            continue
        seen.add(fn)
        node, source, cell = defs[fn]
        local = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)} if hasattr(node, "args") else set()
        local |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Import, ast.ImportFrom)) and BLOCKED in _import_root(sub):
                return f"`{ast.get_source_segment(source, sub)}` (cell {cell}, line {sub.lineno})"
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.startswith(BLOCKED):
                return f"the module name {sub.value!r} (cell {cell}, line {sub.lineno})"  # importlib, __import__
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                if sub.id in package_names and sub.id not in defs and sub.id not in local:
                    return package_names[sub.id]
                todo.append(sub.id)
    return None


# ---- running it ------------------------------------------------------------------------------------
def encode_cases(exercises, cases):
    """The cases' arguments as JSON specs and one dict of arrays (for args.npz)."""
    arrays, specs = {}, []
    for e, name in enumerate(exercises):
        ex_specs = []
        for c, args in enumerate(cases[name]):
            ex_specs.append([_encode_arg(a, arrays, f"e{e}c{c}a{j}") for j, a in enumerate(args)])
        specs.append({"name": name, "function": name, "cases": ex_specs, "twice": EXERCISES[name].calls_twice})
    return specs, arrays


def _encode_arg(a, arrays, key):
    if isinstance(a, np.ndarray):
        arrays[key] = a
        return {"kind": "array", "key": key}
    if isinstance(a, tuple):
        return {"kind": "tuple", "items": [_encode_arg(x, arrays, f"{key}_{i}") for i, x in enumerate(a)]}
    if isinstance(a, np.random.Generator):
        return {"kind": "rng", "bit_generator": type(a.bit_generator).__name__, "state": a.bit_generator.state}
    if isinstance(a, (np.integer, np.floating)):
        a = a.item()
    return {"kind": "value", "value": a}


def run_student(program, specs, arrays, timeout=TIMEOUT_S, memory_mb=MEMORY_MB):
    """Run `program` in a separate process and call each exercise's function on its cases.
    -> ({exercise: [outcome, ...]}, [notes on the student's code that failed to run])."""
    outcomes = {s["name"]: [] for s in specs}
    notes = []
    with tempfile.TemporaryDirectory(prefix="minigpt-grade-") as tmp:
        job, work, out = (pathlib.Path(tmp) / d for d in ("job", "work", "job/out"))
        for d in (job, work, out):
            d.mkdir(parents=True, exist_ok=True)
        np.savez(job / "args.npz", **arrays)
        start = 0
        while start < len(specs):
            for f in out.iterdir():
                f.unlink()
            job_spec = {"cells": program.cells, "preamble": PREAMBLE, "exercises": specs, "start": start,
                        "timeout": timeout, "memory_mb": memory_mb,
                        "cpu_s": timeout * (2 * sum(len(s["cases"]) for s in specs) + 4) + START_S}
            (job / "job.json").write_text(json.dumps(job_spec))
            how = _run_child(job, work, out, specs, start, timeout)
            loaded = _read_json(out / "loaded.json")
            if loaded is None:  # it died before the student's functions could be called
                reason = _death(how, timeout, "while your notebook's code was being run, before any function "
                                              "could be called")
                for s in specs[start:]:
                    outcomes[s["name"]].append(engine.Stopped(reason))
                break
            if not notes:
                notes = [str(x) for x in loaded.get("errors", [])][:20]
            if how["rc"] == 0 and not (out / "done.json").exists():
                how["rc"] = "exit"  # it ended early, with status 0 (os._exit(0), or a thread's exit)
            stopped_at = None
            for e in range(start, len(specs)):
                spec = specs[e]
                for c in range(len(spec["cases"])):
                    record = _read_json(out / f"ex{e}_case{c}.json")
                    if record is None:
                        if how["rc"] != 0 and stopped_at is None:
                            stopped_at = e
                            outcomes[spec["name"]].append(_death_outcome(how, timeout))
                        break
                    outcome = _outcome(record, out / f"ex{e}_case{c}.npz", spec, timeout)
                    outcomes[spec["name"]].append(outcome)
                    if not isinstance(outcome, engine.Returned):
                        break
                if stopped_at is not None:
                    break
            if stopped_at is None:
                break
            start = stopped_at + 1  # a fresh process for the exercises after the one that stopped it
    return outcomes, notes


def _run_child(job, work, out, specs, start, timeout):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(job / "stdout.txt", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-I", str(SANDBOX), str(job)], cwd=work, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        killed, seen = False, set()
        per_case = (2 if any(s["twice"] for s in specs) else 1) * timeout + GRACE_S  # sampling calls case 1 twice
        deadline = time.monotonic() + START_S + 3 * timeout
        try:
            while proc.poll() is None:
                done = {p.stem for p in out.glob("*.json")}
                if done != seen:  # progress: the next case gets its own time
                    seen = done
                    deadline = time.monotonic() + per_case
                if time.monotonic() > deadline:
                    killed = True
                    break
                time.sleep(0.005)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child, and anything it started
            except (ProcessLookupError, PermissionError):
                pass
            rc = proc.wait()
    return {"rc": 0 if rc == 0 and not killed else (rc if rc else -1), "killed": killed,
            "log": (job / "stdout.txt").read_bytes()[-2000:].decode("utf-8", "replace")}


def _death(how, timeout, when):
    if how["killed"] or how["rc"] == -signal.SIGXCPU:
        return f"your code ran longer than {timeout:g} s {when} (an endless loop?), and was stopped"
    if how["rc"] == -signal.SIGKILL:
        return f"the process running your code was killed {when} (out of memory?)"
    if how["rc"] == -signal.SIGSEGV:
        return f"your code crashed Python (a segmentation fault) {when}"
    if isinstance(how["rc"], int) and how["rc"] < 0:
        return f"the process running your code died of signal {-how['rc']} {when}"
    status = 0 if how["rc"] == "exit" else how["rc"]
    return f"your code ended the process running it (exit status {status}: os._exit or similar) {when}"


def _death_outcome(how, timeout):
    if how["killed"] or how["rc"] == -signal.SIGXCPU:
        return engine.TimedOut(timeout)
    return engine.Stopped(_death(how, timeout, "on this case"))


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _outcome(record, npz_path, spec, timeout):
    """A case's record from the student's process -> an outcome; anything malformed is a Stopped."""
    try:
        status = record["status"]
        if status == "returned":
            arrays = {}
            if npz_path.exists():
                with np.load(npz_path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            again = _decode(record["again"], arrays) if "again" in record else None
            return engine.Returned(_decode(record["value"], arrays), mutated=bool(record.get("mutated")), again=again)
        if status == "not done":
            return engine.NotDone()
        if status == "timeout":
            return engine.TimedOut(timeout)
        if status == "raised":
            message = str(record.get("message", ""))
            if BLOCKED_MESSAGE in message:
                return engine.Stopped(_uses_package_message(spec["name"], "an import of minigpt_pixels"),
                                      engine.USES_PACKAGE, any_case=True)
            return engine.Raised(str(record["type"]), message, str(record.get("where", "")))
        if status == "signature":
            sig = EXERCISES[spec["name"]].signature
            return engine.Stopped(f"your function cannot be called as {sig}: {record.get('message', '')}", any_case=True)
        if status == "missing":
            return engine.Stopped(f"there is no function named {spec['function']} in the notebook (its answer "
                                  f"cell is missing, or the function was renamed)", any_case=True)
    except (KeyError, TypeError, ValueError, OSError) as e:
        return engine.Stopped(f"the grader could not read what your function returned ({type(e).__name__})")
    return engine.Stopped(f"the grader could not read what your function returned (status {record.get('status')!r})")


def _decode(spec, arrays):
    kind = spec["kind"]
    if kind == "array":
        a = arrays[spec["key"]]
        return a[()] if spec.get("generic") else a
    if kind == "badarray":
        try:
            dtype = np.dtype(str(spec["dtype"]))
        except TypeError:
            dtype = np.dtype(object)
        return np.empty(0, dtype=dtype)
    if kind in ("tuple", "list"):
        items = spec["items"]
        items = [engine.Opaque("object")] * int(spec["len"]) if items is None else [_decode(s, arrays) for s in items]
        return tuple(items) if kind == "tuple" else items
    if kind == "object":
        if spec.get("type") == "NoneType":
            return None
        return engine.Opaque(str(spec.get("type")), bool(spec.get("has_numpy")), bool(spec.get("is_scalar")))
    raise ValueError(f"unknown kind {kind!r}")


def _uses_package_message(name, how):
    return (f"your answer uses the package's own code: {how}. The exercise is to write {name} yourself, "
            f"without minigpt_pixels, so an answer built on it gets no points")


# ---- one notebook, one class --------------------------------------------------------------------
def grade_notebook(student, path, seed=SEED, timeout=TIMEOUT_S, memory_mb=MEMORY_MB, cases=None):
    """-> [Row] for every exercise of the notebook at `path`."""
    stem = path.stem
    try:
        nb = read_notebook(path)
    except (OSError, ValueError) as e:  # a truncated or hand-edited file: say so, grade the rest of the class
        names = NOTEBOOKS.get(stem, ("",))
        return [Row(student, stem, n, "failed", 0, EXERCISES[n].points if n else 0,
                    f"the notebook could not be read ({type(e).__name__}: {e})") for n in names]
    names = notebook_exercises(nb, stem)
    if not names:
        return [Row(student, stem, "", "failed", 0, 0, "this notebook holds none of the exercises")]
    cases = cases or {}
    for n in names:
        if n not in cases:
            cases[n] = make_cases(EXERCISES[n], seed)
    program = extract(nb, names)
    to_run = [n for n in names if n not in program.uses_package]
    outcomes, notes = {}, []
    if to_run:
        specs, arrays = encode_cases(to_run, cases)
        outcomes, notes = run_student(program, specs, arrays, timeout, memory_mb)
    rows = []
    for n in names:
        ex = EXERCISES[n]
        if n in program.uses_package:
            result = engine.CheckResult(n, "failed", _uses_package_message(n, program.uses_package[n]),
                                        mistake=engine.USES_PACKAGE)
        else:
            result = judge(ex, cases[n], outcomes[n])
        message = result.message
        if result.status == "failed" and notes:
            message += "\nWhile running your notebook's code: " + "; ".join(notes[:3])
        rows.append(Row(student, stem, n, result.status, ex.points if result.passed else 0, ex.points, message))
    return rows


def grade(submissions, seed=SEED, timeout=TIMEOUT_S, memory_mb=MEMORY_MB, jobs=1, progress=True):
    """[(student, notebook path)] -> [Row], with a row "not done" for a notebook a student did not hand
    in that others did. `jobs` notebooks are graded at once (each in its own process)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    cases = {n: make_cases(ex, seed) for n, ex in EXERCISES.items()}  # the same inputs for everyone
    rows = []
    with ThreadPoolExecutor(max(1, jobs)) as pool, \
            tqdm(total=len(submissions), desc="grading", unit="notebook", disable=not progress, file=sys.stderr) as bar:
        futures = {pool.submit(grade_notebook, student, path, seed, timeout, memory_mb, cases): (student, path)
                   for student, path in submissions}
        for future in as_completed(futures):
            try:
                rows += future.result()
            except Exception as e:  # a bug of ours on one notebook must not stop the class
                student, path = futures[future]
                rows.append(Row(student, path.stem, "", "failed", 0, 0,
                                f"the grader itself failed on this notebook ({type(e).__name__}: {e})"))
            bar.update()
    students = sorted({s for s, _ in submissions})
    handed_in = {(r.student, r.notebook) for r in rows}
    notebooks = sorted({r.notebook for r in rows if r.exercise})
    for student in students:
        for stem in notebooks:
            if (student, stem) not in handed_in and stem in NOTEBOOKS:
                rows += [Row(student, stem, n, "not done", 0, EXERCISES[n].points, "no submission of this notebook")
                         for n in NOTEBOOKS[stem]]
    rows.sort(key=lambda r: (r.student, r.notebook))
    return rows


# ---- output -----------------------------------------------------------------------------------------
def _check_overwrite(path):
    """Only a gradebook this command wrote may be replaced: anything else a user saved stays."""
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name such as grades.csv")
    if path.exists():
        try:
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
        except (OSError, UnicodeDecodeError, csv.Error):
            header = None
        if header != list(COLUMNS):
            raise ValueError(f"{path} exists and is not a gradebook this command wrote; choose another --out")


def write_csv(path, rows):
    path = pathlib.Path(path)
    _check_overwrite(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(r.csv_row() for r in rows)
    tmp.replace(path)


def write_feedback(folder, rows):
    """One text file per student with every message in full, "Likely mistake" included."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_student = {}
    for r in rows:
        by_student.setdefault(r.student, []).append(r)
    icons = {"passed": "[passed]", "failed": "[failed]", "not done": "[not done]"}
    for student, mine in by_student.items():
        total, top = sum(r.points for r in mine), sum(r.max_points for r in mine)
        lines = [f"Feedback for {student}: {total:g} of {top:g} points", ""]
        for r in mine:
            lines.append(f"{icons.get(r.status, r.status)} {r.notebook} / {r.exercise}: {r.points:g} of "
                         f"{r.max_points:g} points")
            lines += ["    " + line for line in r.message.splitlines()] + [""]
        (folder / f"{_safe_name(student)}.txt").write_text("\n".join(lines), encoding="utf-8")


def _safe_name(name):
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "student"


def summary_table(rows):
    """Per exercise: how many passed, failed, not done, and the mean points; then each student's total."""
    out = [f"{'exercise':24s} {'passed':>7s} {'failed':>7s} {'not done':>9s} {'mean points':>12s}"]
    names = [n for n in EXERCISES if any(r.exercise == n for r in rows)]
    for n in names:
        mine = [r for r in rows if r.exercise == n]
        count = {s: sum(r.status == s for r in mine) for s in ("passed", "failed", "not done")}
        mean = sum(r.points for r in mine) / len(mine)
        out.append(f"{n:24s} {count['passed']:7d} {count['failed']:7d} {count['not done']:9d} "
                   f"{mean:7.2f} of {mine[0].max_points:g}")
    out.append("")
    students = sorted({r.student for r in rows})
    width = max([24] + [len(s) for s in students])
    out.append(f"{'student':{width}s} {'points':>12s}")
    for student in students:
        mine = [r for r in rows if r.student == student]
        out.append(f"{student:{width}s} {sum(r.points for r in mine):6g} of {sum(r.max_points for r in mine):g}")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m minigpt_pixels.grade", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                    help="a notebook, or a folder with one sub-folder per student")
    ap.add_argument("--out", required=True, help="the gradebook to write (CSV)")
    ap.add_argument("--feedback", metavar="DIR", help="write one feedback file per student here")
    ap.add_argument("--seed", type=int, default=SEED,
                    help="draw the cases from this seed (the notebooks use the default)")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds allowed per exercise")
    ap.add_argument("--memory", type=int, default=MEMORY_MB, help="MiB the student's process may allocate")
    ap.add_argument("--jobs", type=int, default=JOBS, help="notebooks graded at once, each in its own process")
    args = ap.parse_args(argv)
    if args.timeout <= 0 or args.memory <= 0 or args.jobs <= 0:
        ap.error("--timeout, --memory and --jobs must be positive")
    if sys.platform == "win32":
        ap.error("grading needs a POSIX system (the limits use the resource module)")
    try:
        submissions = collect(args.submissions)
        if not submissions:
            ap.error("no notebooks found in " + ", ".join(args.submissions))
        _check_overwrite(pathlib.Path(args.out))  # before grading, not after
    except ValueError as e:
        ap.error(str(e))
    start = time.perf_counter()
    rows = grade(submissions, args.seed, args.timeout, args.memory, args.jobs)
    write_csv(args.out, rows)
    if args.feedback:
        write_feedback(args.feedback, rows)
    students = len({s for s, _ in submissions})
    print(summary_table(rows))
    print(f"\ngraded {len(submissions)} notebooks of {students} students in {time.perf_counter() - start:.1f} s "
          f"-> {args.out}" + (f", feedback in {args.feedback}/" if args.feedback else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
