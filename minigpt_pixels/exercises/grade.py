"""Grade a class: a folder of submitted exercise notebooks -> a gradebook, per-student totals and feedback.

    minigpt-pixels-grade submitted/ --out grades.csv --feedback feedback/
    python -m minigpt_pixels.grade alice/01_layer_norm_and_quick_gelu.ipynb --out grades.csv --seed 7

A SUBMISSION is a notebook or a folder. In a folder, each immediate sub-folder is one student, and every
notebook under it is theirs (nbgrader's submitted/<student>/<assignment>/<notebook>.ipynb works as it
is); a notebook given directly is named by its parent folder.

Each student's notebook runs in its own bubblewrap sandbox (runner.py): only the answer cells and their
helpers run there (notebook.py), with no copy of the package, the course, the other submissions or the
grader, and send back plain arrays. The verdict is computed here, by `exercises.judge`, against the
reference computed here, on cases drawn from a fresh random seed (printed, and written into the
gradebook; `--seed` reproduces a run). Without bwrap the command refuses, unless `--no-sandbox` (trusted
code only). It exits 0 once grading completed, whatever the students scored; 2 for bad arguments, 1 when
the results could not be written. What the sandbox covers and what it does not: docs/teaching.md.
"""

import argparse
import dataclasses
import math
import os
import pathlib
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

from . import EXERCISES, NOTEBOOKS, judge, make_cases
from .calls import BLOCKED_MESSAGE, TIMEOUT_S, Raised, Stopped
from .engine import USES_PACKAGE, CheckResult, extra_calls
from .gradebook import (Output, Row, feedback_folder, gradebook_csv, is_gradebook_header, is_totals_header,
                        readable, summary_table, totals_csv, write_feedback)
from .notebook import extract, notebook_exercises, notebook_name, read_notebook
from .runner import (MEMORY_MB, NPROC, Limits, SandboxError, find_bwrap, job_specs, process_limit_holds,
                     remove_left_cgroups, run_student)

JOBS = max(1, min(4, (os.cpu_count() or 2) // 2))  # notebooks graded at once
MAX_SEED = 2 ** 63 - 1000  # case i draws from default_rng(seed + i)
SKIPPED_FOLDERS = (".ipynb_checkpoints", ".git")  # Jupyter's and git's own: never a student


@dataclasses.dataclass(frozen=True)
class Submission:
    student: str  # as written in the gradebook (bytes that are not UTF-8 as \xNN)
    path: pathlib.Path


# ---- finding the submissions --------------------------------------------------------------------------------
def collect(paths):
    """([Submission], [warnings]) from notebooks and folders, in a stable order, each notebook once.
    Symbolic links inside a student's folder are not followed. Raises ValueError for a bad argument."""
    found, warnings, seen = [], [], set()

    def add(student, nb):
        key = os.path.realpath(nb) if not nb.is_symlink() else (os.path.realpath(nb.parent), nb.name)
        if key not in seen:  # a folder given twice, or a notebook given on its own and in its folder
            seen.add(key)
            found.append(Submission(readable(student), nb))

    for p in map(pathlib.Path, paths):
        if p.is_file() or (p.suffix == ".ipynb" and p.exists()):
            if p.suffix != ".ipynb":
                raise ValueError(f"{readable(str(p))}: not a notebook (.ipynb)")
            add(p.resolve().parent.name, p)
        elif p.is_dir():
            for nb in sorted(p.glob("*.ipynb")):  # notebooks directly in the folder: the folder is the student
                add(p.resolve().name, nb)
            for d in sorted(p.iterdir()):
                if d.is_symlink() and d.is_dir():
                    warnings.append(f"skipped {readable(str(d))}: a symbolic link to a folder is not followed")
                if not d.is_dir() or d.is_symlink():
                    continue
                if d.name.startswith("."):
                    if d.name not in SKIPPED_FOLDERS:
                        warnings.append(f"skipped the hidden folder {readable(str(d))}: give it by name to grade it")
                    continue
                for nb in _notebooks_under(d):
                    add(d.name, nb)
        else:
            raise ValueError(f"{readable(str(p))}: no such notebook or folder")
    return found, warnings


def _notebooks_under(folder):
    out = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .ipynb_checkpoints: Jupyter's autosaves
        out += [pathlib.Path(root) / f for f in sorted(files) if f.endswith(".ipynb") and not f.startswith(".")]
    return out


# ---- one notebook --------------------------------------------------------------------------------------------
def grade_notebook(student, path, seed=None, limits=Limits(), cases=None, bwrap=None):
    """-> [Row] for every exercise of the notebook at `path` (its real points even when it cannot be read).
    `seed` None: a fresh random one; `bwrap` None with a sandbox: found (and checked) here."""
    cases = cases or _cases(secrets.randbelow(1 << 32) if seed is None else seed)
    bwrap = bwrap or (find_bwrap() if limits.sandbox else None)
    stem = path.stem
    try:
        nb = read_notebook(path)
        name = notebook_name(stem, notebook_exercises(nb, (), EXERCISES), NOTEBOOKS)
        names = notebook_exercises(nb, NOTEBOOKS.get(name, ()), EXERCISES)
    except (OSError, ValueError, RecursionError, MemoryError) as e:  # a truncated file, a FIFO, a bomb: a row
        return _failed(student, notebook_name(stem, (), NOTEBOOKS), f"the notebook could not be read "
                                                                   f"({type(e).__name__}: {str(e)[:300]})")
    if not names:
        return [Row(student, name, "", "failed", 0, 0, "this notebook holds none of the exercises")]
    try:
        return _grade_program(student, name, extract(nb, names), names, cases, limits, bwrap)
    except (RecursionError, MemoryError) as e:  # student data too deep or too big for the grader: their rows
        return _failed(student, name, f"the grader could not handle this notebook ({type(e).__name__})", names)


def _grade_program(student, notebook, program, names, cases, limits, bwrap):
    to_run = [n for n in names if n not in program.uses_package]
    outcomes, notes = {}, []
    if to_run:
        specs, arrays = job_specs([(n, EXERCISES[n].signature) for n in to_run], cases["args"], cases["extra"])
        outcomes, notes = run_student(program, specs, arrays, limits, bwrap)
    rows = []
    for n in names:
        ex = EXERCISES[n]
        if n in program.uses_package:
            result = CheckResult(n, "failed", _uses_package_message(n, program.uses_package[n]), mistake=USES_PACKAGE)
        else:
            result = judge(ex, cases["args"][n], [_explain(o, n, program) for o in outcomes[n]])
        message = result.message
        if result.status == "failed" and notes:
            message += "\nWhile running your notebook's code: " + "; ".join(notes[:3])
        rows.append(Row(student, notebook, n, result.status, ex.points if result.passed else 0, ex.points, message))
    return rows


def _explain(outcome, name, program):
    """What the grader knows better than the sandbox: a refused import is the package used; a NameError for a
    name that a cell which does not run assigns says so."""
    if isinstance(outcome, Raised):
        if BLOCKED_MESSAGE in outcome.message:
            return Stopped(_uses_package_message(name, "an import of minigpt_pixels"), USES_PACKAGE, any_case=True)
        if outcome.type == "NameError":
            missing = outcome.message.split("'")[1] if outcome.message.count("'") >= 2 else ""
            if missing in program.assigned_elsewhere:
                return Raised(outcome.type, f"{outcome.message} (cell {program.assigned_elsewhere[missing]} assigns "
                                            f"it, but the grader runs only answer cells and, from other cells, "
                                            f"definitions, imports and simple assignments: define it in the "
                                            f"answer cell)", outcome.where)
    return outcome


def _uses_package_message(name, how):
    return (f"your answer uses the package's own code: {how}. The exercise is to write {name} yourself, "
            f"without minigpt_pixels, so an answer built on it gets no points")


def _failed(student, notebook, message, names=None):
    names = names or NOTEBOOKS.get(notebook, ("",))
    return [Row(student, notebook, n, "failed", 0, EXERCISES[n].points if n in EXERCISES else 0, message)
            for n in names]


def _cases(seed):
    args = {n: make_cases(ex, seed) for n, ex in EXERCISES.items()}  # the same inputs for everyone
    extra = {n: [extra_calls(EXERCISES[n], i, a) for i, a in enumerate(args[n])] for n in EXERCISES}
    return {"args": args, "extra": extra}


# ---- the class -----------------------------------------------------------------------------------------------
def grade(submissions, seed, limits=Limits(), jobs=1, progress=True, bwrap=None):
    """[Submission] -> ([Row], [warnings]): one row per student and exercise. A student's several copies of
    one notebook give the best attempt at each exercise; a notebook a student did not hand in that others
    did gives "not done" rows."""
    cases = _cases(seed)
    bwrap = bwrap or (find_bwrap() if limits.sandbox else None)
    graded = {}
    with ThreadPoolExecutor(max(1, jobs)) as pool, \
            tqdm(total=len(submissions), desc="grading", unit="notebook", disable=not progress, file=sys.stderr) as bar:
        futures = {pool.submit(grade_notebook, s.student, s.path, seed, limits, cases, bwrap): s for s in submissions}
        for future in as_completed(futures):
            s = futures[future]
            try:
                graded[s] = future.result()
            except Exception as e:  # a bug of ours on one notebook must not stop the class
                graded[s] = _failed(s.student, notebook_name(s.path.stem, (), NOTEBOOKS),
                                    f"the grader itself failed on this notebook ({type(e).__name__}: {e})")
            bar.update()
    rows, warnings = _best_attempts(submissions, graded)
    students = sorted({s.student for s in submissions})
    handed_in = {(r.student, r.notebook) for r in rows}
    for stem in sorted({r.notebook for r in rows if r.exercise and r.notebook in NOTEBOOKS}):
        rows += [Row(student, stem, n, "not done", 0, EXERCISES[n].points, "no submission of this notebook")
                 for student in students if (student, stem) not in handed_in for n in NOTEBOOKS[stem]]
    rows.sort(key=lambda r: (r.student, r.notebook, list(EXERCISES).index(r.exercise) if r.exercise in EXERCISES
                             else len(EXERCISES)))
    return rows, warnings


def _best_attempts(submissions, graded):
    """One row per (student, notebook, exercise): the most points among a student's copies of the notebook."""
    best, copies, warnings = {}, {}, []
    for s in submissions:
        for r in graded[s]:
            key = (r.student, r.notebook, r.exercise)
            copies.setdefault(key, []).append(s.path.name)
            if key not in best or r.points > best[key].points:
                best[key] = r
    for (student, notebook, exercise), files in copies.items():
        if len(files) > 1:
            best[(student, notebook, exercise)].message += f"\n(the best of {len(files)} copies: {', '.join(files)})"
    for student, notebook in sorted({(k[0], k[1]) for k, f in copies.items() if len(f) > 1}):
        files = sorted({f for k, fs in copies.items() if k[:2] == (student, notebook) for f in fs})
        warnings.append(f"{student} handed in {len(files)} copies of {notebook} ({', '.join(files)}): the best "
                        f"attempt at each exercise counts")
    return list(best.values()), warnings


# ---- the command line ------------------------------------------------------------------------------------------
def _number(kind, lo, hi, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (isinstance(value, int) or math.isfinite(value)) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


def parser():
    ap = argparse.ArgumentParser(prog="minigpt-pixels-grade", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                    help="a notebook, or a folder with one sub-folder per student")
    ap.add_argument("--out", required=True, help="the gradebook to write (CSV, one row per student and exercise)")
    ap.add_argument("--totals", metavar="FILE", help="per-student totals (CSV) [default: OUT with _totals]")
    ap.add_argument("--feedback", metavar="DIR", help="write one feedback file per student here")
    ap.add_argument("--seed", type=_number(int, 0, MAX_SEED, "a non-negative integer"), default=None,
                    help="draw the cases from this seed [default: a fresh random seed, printed and written in the "
                         "gradebook]")
    ap.add_argument("--timeout", type=_number(float, 1e-3, 3600, "a number of seconds in (0, 3600]"),
                    default=TIMEOUT_S, help="seconds allowed per call of a student's function")
    ap.add_argument("--memory", type=_number(int, 16, 1 << 20, "a number of MiB from 16"), default=MEMORY_MB,
                    help="MiB of memory a student's process may add")
    ap.add_argument("--jobs", type=_number(int, 1, 64, "an integer from 1 to 64"), default=JOBS,
                    help="notebooks graded at once, each in its own sandbox")
    ap.add_argument("--no-sandbox", action="store_true",
                    help="run students' code without bubblewrap's sandbox: for trusted code only")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def sandbox_warnings(bwrap):
    """Cgroups left by a grader killed outright are removed; -> what the sandbox cannot enforce here."""
    if not bwrap:
        return []
    remove_left_cgroups()
    if process_limit_holds():
        return []
    return [f"grading as root with no writable pids cgroup: the sandbox's process limit ({NPROC}, an rlimit the "
            f"kernel does not apply to root) is not enforced, so a fork bomb runs until its deadline (the other "
            f"limits hold); grade as an ordinary user, or as root where /sys/fs/cgroup has a pids controller"]


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)

    def fail(message, code=2):
        print(f"{ap.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(code)

    if sys.platform == "win32":
        fail("grading needs Linux (the sandbox is bubblewrap, the limits are rlimits)")
    out = pathlib.Path(args.out)
    totals_path = pathlib.Path(args.totals or out.with_name(f"{out.stem}_totals{out.suffix or '.csv'}"))
    try:
        if os.path.realpath(totals_path) == os.path.realpath(out):
            raise ValueError(f"--totals {totals_path} is the gradebook itself; give another file")
        submissions, warnings = collect(args.submissions)
        if not submissions:
            raise ValueError("no notebooks found in " + ", ".join(map(readable, args.submissions)))
        gradebook = Output(out, is_gradebook_header, "--out")
        totals = Output(totals_path, is_totals_header, "--totals")
        feedback = feedback_folder(args.feedback) if args.feedback else None
        bwrap = None if args.no_sandbox else find_bwrap()
    except (ValueError, SandboxError) as e:
        fail(str(e))
    seed = secrets.randbelow(1 << 32) if args.seed is None else args.seed
    print(f"seed {seed}" + (" (a fresh one: grade again with --seed %d to reproduce)" % seed
                            if args.seed is None else ""), flush=True)
    warnings += sandbox_warnings(bwrap)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    start = time.perf_counter()
    limits = Limits(args.timeout, args.memory, sandbox=not args.no_sandbox)
    rows, more = grade(submissions, seed, limits, args.jobs, progress=not args.no_progress, bwrap=bwrap)
    try:
        gradebook.write(gradebook_csv(rows, seed))
        totals.write(totals_csv(rows, seed))
        more += write_feedback(feedback, rows) if feedback else []
    except OSError as e:
        fail(f"the results could not be written ({e.strerror or e}: {readable(str(e.filename or out))})", 1)
    for w in more:
        print(f"warning: {w}", file=sys.stderr)
    print(summary_table(rows, list(EXERCISES)))
    students = len({s.student for s in submissions})
    print(f"\ngraded {len(submissions)} notebooks of {students} students in {time.perf_counter() - start:.1f} s "
          f"with seed {seed} -> {out}, {totals_path}" + (f", feedback in {feedback}/" if feedback else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
