"""The student's side of `python -m minigpt_pixels.grade`: run as a script in a separate process.

    python -I sandbox.py JOB_DIR          # cwd: an empty temporary directory

It imports only the standard library and NumPy (never minigpt_pixels: with -I the package's folder
is not on sys.path, and importing it is refused), limits its own memory, file sizes and CPU time,
runs the student's code (JOB_DIR/job.json: the answer cells, statement by statement), calls each
exercise's function on the inputs the grader drew (JOB_DIR/args.npz), and writes back what each call
gave, as plain arrays and JSON (no pickles). It computes no verdict: the grader judges what comes
back. Progress is written case by case, so when the process dies the grader knows where.
"""

import json
import linecache
import os
import resource
import signal
import sys
import traceback

BLOCKED = "minigpt_pixels"
BLOCKED_MESSAGE = ("minigpt_pixels cannot be imported while grading: the exercises are written without the "
                   "package's own functions")
MAX_ITEMS = 8  # a returned tuple or list longer than this is described, not sent


class _Timeout(BaseException):  # BaseException: a student's `except Exception` cannot swallow it
    pass


class _Blocker:
    """A meta-path finder that refuses the package (the grader's process has it; this one must not)."""

    def __init__(self):
        self.attempts = []

    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            self.attempts.append(name)
            raise ImportError(BLOCKED_MESSAGE)
        return None


def _limit(memory_mb, cpu_s):
    def set_limit(kind, value):
        try:
            soft, hard = resource.getrlimit(kind)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (value, hard))
        except (ValueError, OSError):  # a limit the platform does not allow lowering: go without it
            pass
    set_limit(resource.RLIMIT_CORE, 0)
    set_limit(resource.RLIMIT_FSIZE, 64 << 20)  # printing or writing files cannot fill the disk
    set_limit(resource.RLIMIT_CPU, int(cpu_s) + 1)
    if memory_mb:
        set_limit(resource.RLIMIT_AS, _address_space() + (int(memory_mb) << 20))


def _address_space():
    """Bytes of address space in use now (NumPy's own mapping included), so the limit adds to it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 512 << 20


def _alarm(signum, frame):
    raise _Timeout()


def _time_limit(seconds):
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _no_time_limit():
    signal.setitimer(signal.ITIMER_REAL, 0)


def _where(e):
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith("<cell ")]
    if not frames:
        return ""
    f = frames[-1]
    line = f" `{f.line.strip()}`" if f.line else ""
    return f"\n  raised at line {f.lineno} of {f.filename[1:-1]}{line}"


def _decode_arg(spec, arrays, np):
    kind = spec["kind"]
    if kind == "array":
        return arrays[spec["key"]].copy()
    if kind == "tuple":
        return tuple(_decode_arg(s, arrays, np) for s in spec["items"])
    if kind == "rng":
        g = np.random.Generator(getattr(np.random, spec["bit_generator"])())
        g.bit_generator.state = spec["state"]
        return g
    return spec["value"]


def _encode(value, arrays, key, np, depth=0):
    """A returned value as JSON, its arrays put in `arrays` under keys starting with `key`."""
    if isinstance(value, (np.ndarray, np.generic)):
        a = np.asarray(value)
        if a.dtype.kind in "biufc":
            arrays[key] = np.ascontiguousarray(a)
            return {"kind": "array", "key": key, "generic": isinstance(value, np.generic)}
        return {"kind": "badarray", "dtype": str(a.dtype)[:40], "shape": list(a.shape)[:8]}
    if isinstance(value, (tuple, list)) and depth == 0:
        kind = "tuple" if isinstance(value, tuple) else "list"
        if len(value) > MAX_ITEMS:
            return {"kind": kind, "len": len(value), "items": None}
        return {"kind": kind, "len": len(value),
                "items": [_encode(v, arrays, f"{key}_{i}", np, depth + 1) for i, v in enumerate(value)]}
    if isinstance(value, (tuple, list)):
        return {"kind": type(value).__name__ if type(value) in (tuple, list) else "list", "len": len(value),
                "items": None}
    return {"kind": "object", "type": type(value).__name__[:60], "has_numpy": hasattr(type(value), "numpy"),
            "is_scalar": isinstance(value, (bool, int, float, complex))}


def _safe_encode(value, arrays, key, np):
    try:
        return _encode(value, arrays, key, np)
    except BaseException:  # noqa: B036 - an object that fails when looked at
        for k in [k for k in arrays if k.startswith(key)]:
            del arrays[k]
        return {"kind": "object", "type": "object", "has_numpy": False, "is_scalar": False}


def _write(path, record, arrays, np):
    if arrays:
        np.savez(path + ".npz", **arrays)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path + ".json")  # the json appears last: its presence means the case is done


def _run_cells(job, namespace):
    """Each cell's statements one at a time, each with the time limit: an error or an endless loop
    in one statement is recorded and the others still run."""
    import ast

    errors = []
    for cell in job["cells"]:
        name = f"<cell {cell['index']}>"
        source = cell["source"]
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        try:
            tree = compile(source, name, "exec", ast.PyCF_ONLY_AST)
        except SyntaxError as e:
            errors.append(f"cell {cell['index']}: SyntaxError: {e.msg} (line {e.lineno})")
            continue
        for stmt in tree.body:
            code = compile(ast.Module(body=[stmt], type_ignores=[]), name, "exec")
            try:
                _time_limit(job["timeout"])
                exec(code, namespace)
            except _Timeout:
                errors.append(f"cell {cell['index']}, line {stmt.lineno}: ran longer than {job['timeout']:g} s")
            except BaseException as e:  # noqa: B036 - the student's code may raise anything, SystemExit too
                errors.append(f"cell {cell['index']}, line {stmt.lineno}: {type(e).__name__}: {_text(e)}"[:500])
            finally:
                _no_time_limit()
    return errors


def main(job_dir):
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    import numpy as np  # before the limits: its own libraries count towards the address space

    _limit(job["memory_mb"], job["cpu_s"])
    arrays = dict(np.load(os.path.join(job_dir, "args.npz"), allow_pickle=False))
    out = os.path.join(job_dir, "out")
    blocker = _Blocker()
    sys.meta_path.insert(0, blocker)
    for name in [m for m in sys.modules if m == BLOCKED or m.startswith(BLOCKED + ".")]:
        del sys.modules[name]

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(job["preamble"], namespace)
    errors = _run_cells(job, namespace)
    _write(os.path.join(out, "loaded"), {"errors": errors[:20]}, {}, np)

    import inspect
    import warnings

    for e, ex in enumerate(job["exercises"]):
        if e < job["start"]:
            continue
        fn = namespace.get(ex["function"])
        for c, spec in enumerate(ex["cases"]):
            record, result_arrays = {}, {}
            args = tuple(_decode_arg(s, arrays, np) for s in spec)
            pristine = [a.copy() for a in args if isinstance(a, np.ndarray)]
            if not callable(fn):
                record = {"status": "missing", "type": type(fn).__name__ if fn is not None else None}
            else:
                try:
                    inspect.signature(fn).bind(*args)
                    bad_signature = None
                except TypeError as err:
                    bad_signature = str(err)
                except ValueError:
                    bad_signature = None
                if bad_signature is not None:
                    record = {"status": "signature", "message": bad_signature[:500]}
                else:
                    record = _call(fn, args, ex, spec, arrays, result_arrays, job, np, warnings)
                    now = [a for a in args if isinstance(a, np.ndarray)]
                    record["mutated"] = not all(
                        a.shape == b.shape and np.array_equal(a, b, equal_nan=True) for a, b in zip(now, pristine))
            _write(os.path.join(out, f"ex{e}_case{c}"), record, result_arrays, np)
            if record["status"] != "returned":
                break  # the grader judges up to the first failing case
    _write(os.path.join(out, "done"), {}, {}, np)  # without it, the grader knows the process was cut short


def _call(fn, args, ex, spec, arrays, result_arrays, job, np, warnings):
    def once(call_args):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _time_limit(job["timeout"])
                return fn(*call_args)
            finally:
                _no_time_limit()

    try:
        value = once(args)
        record = {"status": "returned", "value": _safe_encode(value, result_arrays, "value", np)}
        if ex["twice"] and spec is ex["cases"][0]:
            again = once(tuple(_decode_arg(s, arrays, np) for s in spec))
            record["again"] = _safe_encode(again, result_arrays, "again", np)
        return record
    except NotImplementedError:
        return {"status": "not done"}
    except _Timeout:
        return {"status": "timeout"}
    except BaseException as e:  # noqa: B036 - SystemExit and KeyboardInterrupt from the student too
        return {"status": "raised", "type": type(e).__name__[:60], "message": _text(e)[:1000], "where": _where(e)[:500]}


def _text(e):
    try:
        return str(e)
    except BaseException:  # noqa: B036 - an exception whose __str__ fails
        return "(its message could not be shown)"


if __name__ == "__main__":
    main(sys.argv[1])
