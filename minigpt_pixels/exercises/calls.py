"""One call of a student's function, what it gave (an outcome), and the wire format between the sandbox
and the grader, in both directions.

`call` is the only place a student's function is called: `check` calls it in the notebook, and the
sandbox script (sandbox.py, inside bubblewrap) calls it for the class grader. The wire format is also
written and read only here: the grader's job for the sandbox (`write_message`), the sandbox's outcomes
for the grader (`outcome_record` -> `write_message`, then `read_messages` -> `read_outcome`). A message
is one JSON line followed by the raw bytes of its arrays (numbers only: no pickles, no zip, no objects),
and every size, shape, dtype and nesting depth is checked before anything is allocated, because the
grader reads what a student's process wrote.

Imports only the standard library and NumPy: inside the sandbox this file is a plain module read from a
read-only copy, with the package absent.
"""

import inspect
import json
import math
import os
import signal
import sysconfig
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TIMEOUT_S = 10.0  # per call of a student's function; the inputs are tiny, so a correct one takes milliseconds
MAX_ITEMS = 8  # a returned tuple or list longer than this is described, not sent
MAX_TEXT = 1000  # characters of a message or type name that cross the wire
MAX_LINE = 1 << 20  # bytes of one message's JSON line
MAX_ARRAY_BYTES = 8 << 20  # bytes of one array (the exercises' outputs are kilobytes)
MAX_DIMS = 8
MAX_DEPTH = 3  # tuples in tuples: layer_norm_backward's cache argument is one
BLOCKED = "minigpt_pixels"  # the package a student's answer must not use; the sandbox refuses to import it
BLOCKED_MESSAGE = ("minigpt_pixels cannot be imported while grading: the exercises are written without the "
                   "package's own functions")
DTYPE_KINDS = "biufc"  # booleans and numbers; never objects, strings, records or void


class WireError(ValueError):
    """A message that is not what this module writes (truncated, forged, too big)."""


# ---- outcomes of one call ---------------------------------------------------------------------------
@dataclass
class Returned:
    value: Any  # arrays, tuples or lists of them, or an Opaque standing for anything else
    mutated: bool = False  # the function changed its input arrays
    extra: list = field(default_factory=list)  # the values of a case's extra calls (same rng state, another)


@dataclass
class Raised:
    type: str
    message: str
    where: str = ""  # "\n  raised at line N `code`", the student's innermost line


@dataclass
class NotDone:
    pass


@dataclass
class TimedOut:
    seconds: float


@dataclass
class Stopped:
    """The call could not be judged: a signature that does not fit, a process that died, an answer
    built on the package itself (mistake "uses_package"), ..."""
    message: str
    mistake: str | None = None
    any_case: bool = False  # true of the answer as a whole (a missing function), not of this case


@dataclass(frozen=True)
class Opaque:
    """Stands for a returned object that is not an array, tuple or list (it stays in the student's process)."""
    type_name: str
    has_numpy: bool = False  # a tensor-like object with .numpy()
    is_scalar: bool = False  # a Python number


class Timeout(BaseException):  # BaseException: a student's `except Exception` cannot swallow it
    pass


# ---- the call ----------------------------------------------------------------------------------------
def call(fn, args, signature, timeout):
    """fn(*copies of args), with `timeout` seconds -> an outcome. Never raises (bar KeyboardInterrupt)."""
    if not callable(fn):
        return Stopped(f"expected a function, got {type(fn).__name__}", any_case=True)
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as e:
        return Stopped(f"your function cannot be called as {signature}: {text(e)}"[:MAX_TEXT], any_case=True)
    except (ValueError, RecursionError):  # some builtins have no signature: just call them
        pass
    given = copy_args(args)
    try:
        with time_limit(timeout), np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = fn(*given)
    except NotImplementedError:
        return NotDone()
    except Timeout:
        return TimedOut(timeout)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: B036 - SystemExit and anything else a student raises
        return Raised(type(e).__name__[:60], text(e)[:MAX_TEXT], where(e)[:500])
    return Returned(value, mutated=not same_args(given, args))


def copy_args(x):
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, tuple):
        return tuple(copy_args(a) for a in x)
    if isinstance(x, np.random.Generator):  # a fresh generator in the same state
        g = np.random.Generator(type(x.bit_generator)())
        g.bit_generator.state = x.bit_generator.state
        return g
    return x


def same_args(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, tuple):
        return all(same_args(x, y) for x, y in zip(a, b))
    return True


def text(e):
    try:
        return str(e)
    except BaseException:  # noqa: B036 - an exception whose __str__ fails
        return "(its message could not be shown)"


_LIBRARY_DIRS = tuple({os.path.dirname(os.path.abspath(__file__))}
                      | {os.path.abspath(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")})


def where(e):
    """'raised at line N `code`' for the innermost frame of the student's own code (not NumPy's, not the
    grader's), if there is one; a frame of an answer cell run by the sandbox names its cell."""
    try:
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if not os.path.abspath(f.filename).startswith(_LIBRARY_DIRS)
                  and not f.filename.endswith((".pyx", ".pxd")) and not f.filename.startswith("<frozen")]
    except BaseException:  # noqa: B036 - a traceback too deep or too strange to walk
        return ""
    if not frames:
        return ""
    f = frames[-1]
    cell = f" of {f.filename[1:-1]}" if f.filename.startswith("<cell ") else ""
    line = f" `{f.line.strip()}`" if f.line else ""
    return f"\n  raised at line {f.lineno}{cell}{line}"


class time_limit:
    """SIGALRM after `seconds`, when we are in the main thread of a POSIX process (a notebook kernel, the
    sandbox, pytest); elsewhere no limit (the inputs are tiny, so only an endless loop runs long)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.active = (seconds and hasattr(signal, "setitimer")
                       and threading.current_thread() is threading.main_thread())

    def __enter__(self):
        if self.active:
            def on_alarm(signum, frame):
                raise Timeout()
            self.previous = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


# ---- values on the wire --------------------------------------------------------------------------------
def encode(value, arrays, key, depth=0):
    """A value as a JSON spec, its arrays put in `arrays` under keys starting with `key`: arrays, tuples
    and lists (one level), generators (their state), numbers; anything else by its type name."""
    if isinstance(value, (np.ndarray, np.generic)):
        a = np.asarray(value)
        if a.dtype.kind in DTYPE_KINDS and a.dtype.fields is None and a.ndim <= MAX_DIMS:
            arrays[key] = np.ascontiguousarray(a)
            return {"kind": "array", "key": key, "generic": isinstance(value, np.generic)}
        return {"kind": "badarray", "dtype": str(a.dtype)[:40]}
    if isinstance(value, np.random.Generator):
        return {"kind": "rng", "bit_generator": type(value.bit_generator).__name__,
                "state": value.bit_generator.state}
    if isinstance(value, (tuple, list)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        if depth >= MAX_DEPTH or len(value) > MAX_ITEMS:
            return {"kind": kind, "len": len(value), "items": None}
        return {"kind": kind, "len": len(value),
                "items": [encode(v, arrays, f"{key}_{i}", depth + 1) for i, v in enumerate(value)]}
    if value is None or type(value) in (bool, str) or (type(value) is int and abs(value) < 2 ** 53) or \
            (type(value) is float and math.isfinite(value)):
        return {"kind": "value", "value": value[:MAX_TEXT] if type(value) is str else value}
    return {"kind": "object", "type": type(value).__name__[:60], "has_numpy": hasattr(type(value), "numpy"),
            "is_scalar": isinstance(value, (bool, int, float, complex))}


def safe_encode(value, arrays, key):
    """`encode`, for a value the student made: one that fails when looked at is an unnamed object."""
    try:
        return encode(value, arrays, key)
    except BaseException:  # noqa: B036 - a __len__ or dtype that raises anything
        for k in [k for k in arrays if k.startswith(key)]:
            del arrays[k]
        return {"kind": "object", "type": "object", "has_numpy": False, "is_scalar": False}


def decode(spec, arrays, depth=0):
    """The inverse of `encode`: arrays come out of `arrays`; a generator in its state; an object as an
    Opaque. Raises WireError for anything `encode` does not write."""
    if not isinstance(spec, dict) or depth > MAX_DEPTH:
        raise WireError("a value that is not a spec")
    kind = spec.get("kind")
    if kind == "array":
        a = arrays[_text_field(spec, "key")] if spec.get("key") in arrays else None
        if a is None:
            raise WireError("an array that was not sent")
        return a[()] if spec.get("generic") is True and a.ndim == 0 else a
    if kind == "badarray":
        return np.empty(0, dtype=object)
    if kind == "rng":
        name = _text_field(spec, "bit_generator")
        if name not in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
            raise WireError(f"an unknown bit generator {name[:40]!r}")
        g = np.random.Generator(getattr(np.random, name)())
        g.bit_generator.state = spec.get("state")
        return g
    if kind in ("tuple", "list"):
        items, n = spec.get("items"), spec.get("len")
        if type(n) is not int or not 0 <= n <= 1 << 40:
            raise WireError("a sequence without a length")
        if items is None:
            items = [Opaque("object")] * min(n, MAX_ITEMS + 1)
        elif isinstance(items, list) and len(items) == n <= MAX_ITEMS:
            items = [decode(s, arrays, depth + 1) for s in items]
        else:
            raise WireError("a sequence whose items do not match its length")
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        value = spec.get("value")
        if value is not None and type(value) not in (bool, int, float, str):
            raise WireError("a value that is not a plain number")
        return value
    if kind == "object":
        return Opaque(_text_field(spec, "type", 60), spec.get("has_numpy") is True, spec.get("is_scalar") is True)
    raise WireError(f"unknown kind {str(kind)[:40]!r}")


def _text_field(spec, name, limit=MAX_TEXT):
    value = spec.get(name, "")
    if not isinstance(value, str):
        raise WireError(f"{name} is not text")
    return value[:limit]


# ---- outcomes on the wire --------------------------------------------------------------------------------
def outcome_record(outcome):
    """An outcome -> (record, arrays) for `write_message`."""
    arrays = {}
    if isinstance(outcome, Returned):
        record = {"status": "returned", "value": safe_encode(outcome.value, arrays, "value"),
                  "mutated": bool(outcome.mutated),
                  "extra": [safe_encode(v, arrays, f"extra{i}") for i, v in enumerate(outcome.extra)]}
    elif isinstance(outcome, Raised):
        record = {"status": "raised", "type": outcome.type, "message": outcome.message, "where": outcome.where}
    elif isinstance(outcome, TimedOut):
        record = {"status": "timeout", "seconds": float(outcome.seconds)}
    elif isinstance(outcome, Stopped):
        record = {"status": "stopped", "message": outcome.message[:MAX_TEXT], "any_case": bool(outcome.any_case)}
    else:
        record = {"status": "not done"}
    return record, arrays


def read_outcome(record, arrays):
    """The inverse of `outcome_record`, for a record the grader did not write: raises WireError for
    anything malformed. A Stopped from the sandbox never carries a mistake name (only the grader names one)."""
    if not isinstance(record, dict):
        raise WireError("a record that is not a JSON object")
    status = record.get("status")
    if status == "returned":
        extra = record.get("extra", [])
        if not isinstance(extra, list) or len(extra) > 4:
            raise WireError("extra values that are not a short list")
        return Returned(decode(record.get("value"), arrays), record.get("mutated") is True,
                        [decode(s, arrays) for s in extra])
    if status == "raised":
        return Raised(_text_field(record, "type", 60), _text_field(record, "message"),
                      _text_field(record, "where", 500))
    if status == "timeout":
        return TimedOut(0.0)  # the grader knows the limit it set; a number from the sandbox is not needed
    if status == "stopped":
        return Stopped(_text_field(record, "message"), any_case=record.get("any_case") is True)
    if status == "not done":
        return NotDone()
    raise WireError(f"unknown status {str(status)[:40]!r}")


# ---- messages: one JSON line, then the arrays' bytes ------------------------------------------------------
def write_message(f, record, arrays):
    """Write one message to the binary file `f`: the JSON line names each array's dtype and shape."""
    meta = [{"key": k, "dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrays.items()]
    line = json.dumps({"record": record, "arrays": meta}, allow_nan=False).encode("utf-8")
    if len(line) >= MAX_LINE:
        raise WireError("a message too long to send")
    f.write(line + b"\n")
    for a in arrays.values():
        f.write(np.ascontiguousarray(a).tobytes())
    f.flush()


def read_messages(data, max_array_bytes=MAX_ARRAY_BYTES):
    """([(record, {key: array})], problem) from bytes written by `write_message`, in order: the messages up
    to the first that is malformed (problem: what is wrong with it) or cut short (the process died while
    writing; problem None)."""
    messages, pos = [], 0
    while pos < len(data):
        try:
            message, pos = _read_message(data, pos, max_array_bytes)
        except WireError as e:
            return messages, str(e)
        if message is None:
            break
        messages.append(message)
    return messages, None


def _read_message(data, pos, max_array_bytes):
    end = data.find(b"\n", pos, pos + MAX_LINE)
    if end < 0:
        if len(data) - pos >= MAX_LINE:
            raise WireError("a message line longer than the limit")
        return None, pos  # cut short
    try:
        head = json.loads(data[pos:end].decode("utf-8"))
    except (ValueError, RecursionError, MemoryError) as e:
        raise WireError(f"a message that is not JSON ({type(e).__name__})") from None
    if not isinstance(head, dict) or not isinstance(head.get("arrays"), list) or "record" not in head:
        raise WireError("a message without a record and its arrays")
    pos, arrays = end + 1, {}
    for meta in head["arrays"]:
        key, dtype, shape, nbytes = _array_meta(meta, max_array_bytes)
        if key in arrays:
            raise WireError(f"the array {key[:40]!r} sent twice")
        if pos + nbytes > len(data):
            return None, pos  # cut short
        arrays[key] = np.frombuffer(data, dtype, count=nbytes // dtype.itemsize, offset=pos).reshape(shape).copy() \
            if nbytes else np.zeros(shape, dtype)
        pos += nbytes
    return (head["record"], arrays), pos


def _array_meta(meta, max_bytes):
    """(key, dtype, shape, nbytes) of one array's description, checked before anything is allocated."""
    if not isinstance(meta, dict) or not isinstance(meta.get("key"), str) or not isinstance(meta.get("dtype"), str):
        raise WireError("an array without a key and a dtype")
    shape = meta.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
            not all(type(n) is int and 0 <= n <= max_bytes for n in shape):
        raise WireError(f"the array {meta['key'][:40]!r} has a shape that is not a short list of sizes")
    try:
        dtype = np.dtype(meta["dtype"][:16])
    except (TypeError, ValueError):
        raise WireError(f"the array {meta['key'][:40]!r} has an unknown dtype") from None
    if dtype.kind not in DTYPE_KINDS or dtype.fields is not None or dtype.hasobject or dtype.itemsize > 32:
        raise WireError(f"the array {meta['key'][:40]!r} has dtype {dtype}, not numbers")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise WireError(f"the array {meta['key'][:40]!r} is {nbytes} bytes, over the limit of {max_bytes}")
    return meta["key"][:200], dtype, tuple(shape), nbytes


__all__ = ["TIMEOUT_S", "BLOCKED", "BLOCKED_MESSAGE", "Returned", "Raised", "NotDone", "TimedOut", "Stopped",
           "Opaque", "Timeout", "WireError", "call",
           "copy_args", "same_args", "where", "time_limit", "encode", "safe_encode", "decode", "outcome_record",
           "read_outcome", "write_message", "read_messages"]
