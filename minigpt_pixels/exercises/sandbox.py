"""The student's side of the class grader: a script, run inside the sandbox (runner.py starts it).

    python -I -S sandbox.py JOB        # JOB: one message of calls.py's wire format; results on stdout

It imports only the standard library, NumPy and calls.py (its neighbour, read-only), sets hard
resource limits, runs the student's code (the answer cells, statement by statement), calls each
exercise's function on the inputs the grader drew through `calls.call`, and writes each outcome back on
its standard output as a wire message, case by case, so that when the process dies the grader knows
where. It computes no verdict: the grader judges what comes back. Everything the student's code prints
goes to /dev/null, so it cannot mix into the results.
"""

import ast
import linecache
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


class _Blocker:
    """A meta-path finder that refuses the package: a second wall behind the sandbox, which has no copy of it
    (and the reason the student is told, rather than a bare ModuleNotFoundError)."""

    def find_spec(self, name, path=None, target=None):
        if name == calls.BLOCKED or name.startswith(calls.BLOCKED + "."):
            raise ImportError(calls.BLOCKED_MESSAGE)
        return None


def _limit(job):
    """Hard limits, (value, value): the student's code cannot raise them back."""
    def hard(kind, value):
        try:
            _, ceiling = resource.getrlimit(kind)
            value = value if ceiling == resource.RLIM_INFINITY else min(value, ceiling)
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):  # a limit this platform does not have: the sandbox's walls remain
            pass
    hard(resource.RLIMIT_CORE, 0)
    hard(resource.RLIMIT_FSIZE, 16 << 20)  # one file; the sandbox's tmpfs bounds them all together
    hard(resource.RLIMIT_CPU, int(job["cpu_s"]) + 1)
    hard(resource.RLIMIT_NOFILE, 256)
    hard(resource.RLIMIT_AS, _address_space() + (int(job["memory_mb"]) << 20))
    if job["sandboxed"]:  # counted per user (root exempt: runner.py's cgroup): only in the sandbox is it the student's
        hard(resource.RLIMIT_NPROC, int(job["nproc"]))


def _address_space():
    """Bytes of address space in use now (NumPy's own mappings included), so the limit adds to it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 30


def _run_cells(job, namespace):
    """Each cell's statements one at a time, all within one time limit: an error or an endless loop in one
    statement is noted and the others still run."""
    errors, deadline = [], time.monotonic() + job["timeout"]
    for cell in job["cells"]:
        name, source = f"<cell {cell['index']}>", cell["source"]
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        try:
            tree = compile(source, name, "exec", ast.PyCF_ONLY_AST)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            errors.append(f"cell {cell['index']}: {type(e).__name__}: {getattr(e, 'msg', e)} (line "
                          f"{getattr(e, 'lineno', '?')})"[:500])
            continue
        for stmt in tree.body:
            try:
                code = compile(ast.Module(body=[stmt], type_ignores=[]), name, "exec")
                with calls.time_limit(max(deadline - time.monotonic(), 1e-3)):
                    exec(code, namespace)
            except calls.Timeout:
                errors.append(f"cell {cell['index']}, line {stmt.lineno}: ran longer than {job['timeout']:g} s")
            except BaseException as e:  # noqa: B036 - the student's code may raise anything, SystemExit too
                errors.append(f"cell {cell['index']}, line {stmt.lineno}: {type(e).__name__}: {calls.text(e)}"[:500])
    return errors


def main(job_path):
    channel = os.fdopen(os.dup(1), "wb")  # the results; fds 1 and 2 then go nowhere
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    with open(job_path, "rb") as f:
        [(job, arrays)], _ = calls.read_messages(f.read(), max_array_bytes=64 << 20)
    _limit(job)
    sys.meta_path.insert(0, _Blocker())
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(job["preamble"], namespace)
    errors = _run_cells(job, namespace)
    calls.write_message(channel, {"loaded": errors[:20]}, {})
    for e, ex in enumerate(job["exercises"]):
        if e < job["start"]:
            continue
        fn = namespace.get(ex["function"])
        for c, case in enumerate(ex["cases"]):
            if not callable(fn):
                outcome = calls.Stopped(f"there is no function named {ex['function']} in the notebook (its answer "
                                        f"cell is missing, or the function was renamed)", any_case=True)
            else:
                outcome = calls.call(fn, calls.decode(case["args"], arrays), ex["signature"], job["timeout"])
            if isinstance(outcome, calls.Returned):
                for more in case["extra"]:
                    again = calls.call(fn, calls.decode(more, arrays), ex["signature"], job["timeout"])
                    outcome.extra.append(again.value if isinstance(again, calls.Returned) else None)
            record, out_arrays = calls.outcome_record(outcome)
            calls.write_message(channel, {"exercise": e, "case": c, "outcome": record}, out_arrays)
            if not isinstance(outcome, calls.Returned):
                break  # the grader judges up to the first failing case
    calls.write_message(channel, {"done": True}, {})  # without it, the grader knows the process was cut short


if __name__ == "__main__":  # only as a script: its folder on sys.path would shadow other modules in the grader
    sys.path[:0] = [HERE, os.path.join(HERE, "site")]  # calls.py; NumPy where the sandbox mounts it
    import numpy as np  # noqa: F401 - before the limits: its own libraries count towards the address space

    import calls
    main(sys.argv[1])
