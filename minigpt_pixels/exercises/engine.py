"""The grading engine: what an exercise is, and how a student's results become a verdict.

Grading has two halves, kept apart so that the second never depends on the student's process:

1. calling: `make_cases` draws each case's inputs (and `extra_calls` the repeated calls of a sampler);
   the student's function is called on them by `calls.call`, here in the notebook (`check`) or in the
   grader's sandbox (`exercises.grade`), and each call gives an outcome: `Returned` (the value, as plain
   arrays), `Raised`, `NotDone`, `TimedOut`, `Stopped`.
2. judging: `judge` compares the outcomes with the reference it computes itself from the same
   inputs: the type, then the shape, the dtype, NaN/inf, then the values within a named tolerance
   (sampling by its statistics instead), and names a classic mistake only when the student's output
   matches that mistake's output and the mistake is visible on those inputs.
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .calls import TIMEOUT_S, NotDone, Opaque, Raised, Returned, Stopped, TimedOut, Timeout, call, copy_args

F32 = np.float32
SEED = 1234  # case i draws its inputs from default_rng(SEED + i) unless a grader gives another seed
MISTAKE_TOL = dict(rtol=1e-3, atol=1e-4)  # how close an output must be to a known mistake to name it
SHOWN_DIFFS = 3  # differing values listed in a failure message
USES_PACKAGE = "uses_package"  # the mistake name of an answer built on minigpt_pixels itself


# ---- results ---------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The outcome of `check`: `status` is "passed", "failed" or "not done"; `message` says why.

    `case` names the failing case, `mistake` the classic mistake the output matched (if any), `worst`
    the largest absolute difference from the reference over the cases compared. `bool(result)` is
    `result.passed`.
    """
    name: str
    status: str
    message: str
    case: str | None = None
    mistake: str | None = None
    worst: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    _ICONS = {"passed": "\u2705", "failed": "\u274c", "not done": "\u23f3"}  # check mark, cross, hourglass

    def __str__(self) -> str:
        return f"{self._ICONS.get(self.status, '')} {self.name}: {self.message}"

    __repr__ = __str__  # what a notebook shows for a bare `check(...)` outside HTML front ends

    def _repr_html_(self) -> str:
        colour = {"passed": "#e6f4ea", "failed": "#fde8e8", "not done": "#fff4d6"}.get(self.status, "#eee")
        head, _, rest = self.message.partition("\n")
        body = f"<pre style='margin:4px 0 0 0;white-space:pre-wrap'>{html.escape(rest)}</pre>" if rest else ""
        return (f"<div style='background:{colour};padding:6px 10px;border-radius:4px;color:#222'>"
                f"{self._ICONS.get(self.status, '')} <b>{html.escape(self.name)}</b>: {html.escape(head)}{body}</div>")


@dataclass(frozen=True)
class Case:
    """One set of inputs: `make(rng)` returns the positional arguments; `about` says what it tests."""
    about: str
    make: Callable


@dataclass(frozen=True)
class Mistake:
    """A classic wrong version of the exercise, with the hint shown when a student's output matches it.
    `expect` is the part of the message a test looks for (the hint itself, unless given)."""
    name: str
    fn: Callable
    hint: str
    expect: str | None = None


@dataclass(frozen=True)
class Exercise:
    """One exercise: the student writes a function called `name` with this `signature`."""
    name: str
    signature: str  # how the grader calls the student's function
    returns: str  # what it must return
    reference: Callable  # the package's function, with the exercise's signature
    cases: tuple
    mistakes: tuple = ()
    points: int = 1  # what passing it is worth in a gradebook (nbgrader's test-cell points)
    outputs: tuple = ("output",)  # names of the returned arrays: one name, or several for a tuple
    rtol: float = 1e-5
    atol: float = 1e-6
    advice: str = ""  # shown when a wrong output matches no known mistake
    error_hints: tuple = ()  # (text in an exception message, the name of the mistake it suggests) pairs
    neg_inf_ok: bool = False  # -inf is a legitimate value in the output (filtered logits)
    compare: Callable | None = None  # a custom comparison (sampling), instead of element by element
    unpack: Callable | None = None  # adapts a return value to the outputs (e.g. attention's (out, weights))
    calls_twice: bool = False  # case 1 is called again with the same rng state (the draws must be equal) and
    # with another state (they must differ): `extra_calls`


class _Fail(Exception):
    """Raised inside the grader to stop at the first problem; never escapes `judge` or `check`."""

    def __init__(self, message, mistake=None, remind=True, any_case=False):
        super().__init__(message)
        self.message, self.mistake, self.remind, self.any_case = message, mistake, remind, any_case


class _NotDone(Exception):
    pass


# ---- calling ---------------------------------------------------------------------------------------
def make_cases(ex: Exercise, seed: int = SEED) -> list:
    """The positional arguments of each case: case i draws from default_rng(seed + i)."""
    return [case.make(np.random.default_rng(seed + i)) for i, case in enumerate(ex.cases)]


def extra_calls(ex: Exercise, i: int, args: tuple) -> list:
    """The extra calls of case i: for a sampler (calls_twice), case 1 again with a generator in the same
    state, then with one in another state drawn from it, so that following `rng` is tested exactly."""
    if not (ex.calls_twice and i == 0):
        return []
    other = tuple(np.random.default_rng(int(copy_args(a).integers(2 ** 62))) if isinstance(a, np.random.Generator)
                  else copy_args(a) for a in args)
    return [copy_args(args), other]


def check_in(EXERCISES: dict, name: str, fn: Callable, timeout: float = TIMEOUT_S, seed: int = SEED) -> CheckResult:
    """Grade `fn` as exercise `name` of EXERCISES (the package's dict, passed in so that imports run one
    way), calling it here; see the package docstring. Never raises (bar KeyboardInterrupt)."""
    try:
        if name not in EXERCISES:
            return CheckResult(str(name), "failed",
                               f"there is no exercise named {name!r}; the exercises are: {', '.join(EXERCISES)}")
        ex = EXERCISES[name]
        if not callable(fn):
            return CheckResult(name, "failed", f"expected a function, got {type(fn).__name__}: pass the function "
                                               f"itself, check({name!r}, {ex.name}), without calling it")
        cases = make_cases(ex, seed)

        def outcomes():  # lazily: judging stops at the first failing case, and so do the calls
            for i, args in enumerate(cases):
                outcome = call(fn, args, ex.signature, timeout)
                if isinstance(outcome, Returned):
                    for more in extra_calls(ex, i, args):
                        again = call(fn, more, ex.signature, timeout)
                        outcome.extra.append(again.value if isinstance(again, Returned) else None)
                yield outcome
        return judge(ex, cases, outcomes())
    except KeyboardInterrupt:  # the student pressed stop: let it stop
        raise
    except Timeout:  # the alarm rang just after the function returned
        return CheckResult(str(name), "failed", f"your function took longer than {timeout:g} s")
    except BaseException as e:  # a bug of ours must still not land on a student as a traceback
        return CheckResult(str(name), "failed", f"the grader itself failed ({type(e).__name__}: {e}); "
                                                f"please tell your teacher")


# ---- judging ---------------------------------------------------------------------------------------
def judge(ex: Exercise, cases, outcomes) -> CheckResult:
    """The verdict on `outcomes` (one per case, in order; an iterable, read lazily), computing the
    reference from `cases` here. Stops at the first failing case."""
    worst = 0.0
    n = len(ex.cases)
    outcomes = iter(outcomes)
    for i, args in enumerate(cases):
        case = ex.cases[i]
        outcome = next(outcomes, None)  # None: no result came back for this case
        try:
            worst = max(worst, _judge_case(ex, i, args, outcome))
        except _NotDone:
            return CheckResult(ex.name, "not done", "not done yet: replace `raise NotImplementedError` with your "
                                                    "code, run that cell, then run this check again")
        except _Fail as f:
            hint = _hint(ex, f.mistake)
            msg = f.message if f.any_case else f"failed on case {i + 1} of {n} ({case.about}).\n{f.message}"
            if hint:
                msg += f"\nLikely mistake: {hint}"
            elif ex.advice and f.remind:
                msg += f"\nReminder: {ex.advice}"
            return CheckResult(ex.name, "failed", msg, case=case.about, mistake=f.mistake)
    tol = "" if ex.compare is not None else f"; worst abs diff {worst:.2g}, tolerance rtol {ex.rtol:g} atol {ex.atol:g}"
    return CheckResult(ex.name, "passed", f"passed all {n} cases{tol}", worst=worst)


def _judge_case(ex, i, args, outcome):
    if isinstance(outcome, NotDone):
        raise _NotDone()
    if isinstance(outcome, TimedOut):
        raise _Fail(f"your function took longer than {outcome.seconds:g} s on these small inputs (an endless loop?)",
                    remind=False)
    if isinstance(outcome, Stopped):
        raise _Fail(outcome.message, outcome.mistake, remind=False, any_case=outcome.any_case)
    if isinstance(outcome, Raised):
        text = f"your function raised {outcome.type}: {outcome.message}"
        if outcome.type == "MemoryError":
            text += " (it asked for more memory than the grader allows; the inputs are small)"
        text += outcome.where
        mistake = next((m for key, m in ex.error_hints if key in outcome.message), None)
        raise _Fail(text, mistake)
    if not isinstance(outcome, Returned):
        raise _Fail(f"the grader got no result for this case ({type(outcome).__name__})", remind=False)
    if outcome.mutated:
        raise _Fail("your function changed its input arrays in place; compute into new arrays (e.g. "
                    "x = x - m, not x -= m) so the caller's data stays as it was", remind=False)
    if ex.compare is not None:
        ids = _as_arrays(outcome.value, ex, integer=True)[0]
        worst = ex.compare(ids, args)
        if ex.calls_twice and i == 0:
            _follows_rng(ex, ids, outcome.extra)
        return worst
    expected = ex.reference(*copy_args(args))
    return _compare(outcome.value, expected, ex, args)


def _follows_rng(ex, ids, extra):
    """The same generator state must give the same draws, and another state other draws: every random
    number comes from `rng` (not np.random, random, a generator of its own, or no randomness at all)."""
    values = [None if v is None else _as_arrays(v, ex, integer=True)[0] for v in list(extra) + [None, None]][:2]
    same, other = values
    if same is None or not np.array_equal(same, ids):
        raise _Fail("two runs with generators of the same seed drew different tokens: take every random number "
                    "from the rng argument (not np.random or random)", remind=False)
    if other is None or np.array_equal(other, ids):
        raise _Fail("a generator in another state drew exactly the same tokens: your draws do not come from the "
                    "rng argument (draw with rng.random or rng.choice)", remind=False)


def _hint(ex, mistake_name):
    if mistake_name == USES_PACKAGE:
        return None  # the message itself says it
    return next((m.hint for m in ex.mistakes if m.name == mistake_name), None)


def _describe(x):
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape}, dtype {x.dtype}"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of length {len(x)}"
    if isinstance(x, Opaque):
        return x.type_name
    return type(x).__name__


def _as_arrays(result, ex, integer=False):
    """The return value as a list of arrays, one per name in ex.outputs, or a _Fail saying what it is."""
    if ex.unpack is not None:
        result = ex.unpack(result)
    if result is None or (isinstance(result, Opaque) and result.type_name == "NoneType"):
        raise _Fail("your function returned None: did you forget the `return`?")
    n = len(ex.outputs)
    if n > 1:
        if not isinstance(result, (tuple, list)) or len(result) != n:
            raise _Fail(f"expected a tuple of {n} arrays ({', '.join(ex.outputs)}), got a {_describe(result)}")
        items = list(result)
    else:
        items = [result]
    arrays = []
    for label, item in zip(ex.outputs, items):
        what = f"{label}: " if n > 1 else ""
        if isinstance(item, (list, tuple)):
            raise _Fail(f"{what}got a Python {type(item).__name__}; return a NumPy array (np.asarray(...), float32)")
        if isinstance(item, Opaque):
            if item.is_scalar:
                raise _Fail(f"{what}got a {item.type_name} scalar; return a NumPy array shaped {ex.returns}")
            raise _Fail(f"{what}got a {item.type_name}; return a NumPy array"
                        + (" (call .numpy() on a torch tensor)" if item.has_numpy else ""))
        if np.isscalar(item) and not isinstance(item, np.generic):
            raise _Fail(f"{what}got a {type(item).__name__} scalar; return a NumPy array shaped {ex.returns}")
        if not isinstance(item, (np.ndarray, np.generic)):
            raise _Fail(f"{what}got a {type(item).__name__}; return a NumPy array"
                        + (" (call .numpy() on a torch tensor)" if hasattr(item, "numpy") else ""))
        item = np.asarray(item)
        if not (np.issubdtype(item.dtype, np.number) or item.dtype == bool):
            raise _Fail(f"{what}got an array of dtype {item.dtype}; return numbers")
        if integer and not np.issubdtype(item.dtype, np.integer):
            raise _Fail(f"{what}got dtype {item.dtype}; token ids must be integers (e.g. .astype(np.int64))")
        arrays.append(item)
    return arrays


def _compare(got, expected, ex, args):
    """Shape, dtype, NaN/inf, then values, for each returned array; -> the worst abs difference."""
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    arrays = _as_arrays(got, ex)
    worst = 0.0
    for label, g, e in zip(ex.outputs, arrays, expected):
        what = f"{label}: " if len(ex.outputs) > 1 else ""
        if g.shape != e.shape:
            raise _Fail(f"{what}expected shape {e.shape}, got shape {g.shape}",
                        _which_mistake(ex, args, arrays, expected, shape_only=True))
        close = _close(g, e, ex.rtol, ex.atol, ex.neg_inf_ok)
        if g.dtype != e.dtype:
            if close.all():  # only the dtype: say exactly that, and name no mistake
                raise _Fail(f"{what}expected dtype {e.dtype}, got {g.dtype}. The values are right: only the dtype is "
                            f"wrong. Keep everything float32: a float64 array (np.ones, np.tri(..., dtype=float) "
                            f"or np.float64 constants) promotes the result; .astype(np.float32) at the end also "
                            f"works", remind=False)
            raise _Fail(f"{what}expected dtype {e.dtype}, got {g.dtype}, and the values differ too (max abs diff "
                        f"{np.nanmax(_absdiff(g, e), initial=0.0):.3g})", _which_mistake(ex, args, arrays, expected))
        bad = ~np.isfinite(g) & ~(ex.neg_inf_ok & np.isneginf(g))
        if bad.any() and not (~np.isfinite(e) == bad).all():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise _Fail(f"{what}your output holds {int(bad.sum())} NaN/inf value(s), the first at index {list(first)} "
                        f"({g[first]}; expected {e[first]:.6g})", _which_mistake(ex, args, arrays, expected))
        if not close.all():
            diff = _absdiff(g, e)
            idx = np.argwhere(~close)[:SHOWN_DIFFS]
            lines = "\n".join(f"    {[int(i) for i in j]}: {e[tuple(j)]:.6g} vs {g[tuple(j)]:.6g}" for j in idx)
            worst_at = [int(i) for i in np.unravel_index(np.nanargmax(diff), diff.shape)]
            raise _Fail(f"{what}{int((~close).sum())} of {close.size} values differ (shape {g.shape} and dtype are "
                        f"right); max abs diff {np.nanmax(diff):.3g} at {worst_at}, tolerance rtol {ex.rtol:g} atol "
                        f"{ex.atol:g}.\n  first differing values, index: expected vs yours\n{lines}",
                        _which_mistake(ex, args, arrays, expected))
        worst = max(worst, float(np.nanmax(_absdiff(g, e), initial=0.0)))
    return worst


def _absdiff(g, e):
    with np.errstate(all="ignore"):
        d = np.abs(g.astype(np.float64) - e.astype(np.float64))
    return np.where(np.isneginf(g) & np.isneginf(e), 0.0, d)


def _close(g, e, rtol, atol, neg_inf_ok):
    with np.errstate(all="ignore"):
        ok = np.isclose(g.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol)
    if neg_inf_ok:  # a removed logit may be -inf or any huge negative number: softmax gives it 0 either way
        ok |= np.isneginf(e) & (g <= -1e9)
    return ok


def _which_mistake(ex, args, mine, expected, shape_only=False):
    """The classic mistake whose output on these inputs the student's matches (within MISTAKE_TOL), the
    closest if several do; None unless that mistake is visible here (its output differs from the
    reference on these inputs). With shape_only, the first whose output has the student's wrong shape."""
    best, best_score = None, 1.0
    for m in ex.mistakes:
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = m.fn(*copy_args(args))
            theirs = [np.asarray(t) for t in (theirs if len(ex.outputs) > 1 else [theirs])]
        except Exception:
            continue
        if len(theirs) != len(mine) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
            continue
        if shape_only:
            return m.name
        if all(a.shape == b.shape and _mistake_distance(a, b) <= 1 for a, b in zip(theirs, expected)):
            continue  # this mistake gives the right answer on these inputs: it cannot be what went wrong
        score = max(_mistake_distance(a, b) for a, b in zip(mine, theirs))
        if score <= best_score:
            best, best_score = m.name, score
    return best


def _mistake_distance(a, b):
    """max |a - b| / (atol + rtol |b|) with MISTAKE_TOL: <= 1 means a matches b. NaN matches NaN, and
    -inf or a huge negative matches either (a removed logit)."""
    with np.errstate(all="ignore"):
        a64, b64 = np.asarray(a).astype(np.float64), np.asarray(b).astype(np.float64)
        d = np.abs(a64 - b64) / (MISTAKE_TOL["atol"] + MISTAKE_TOL["rtol"] * np.abs(b64))
    same = (np.isnan(a64) & np.isnan(b64)) | ((a64 <= -1e9) & (b64 <= -1e9)) | (a64 == b64)
    d = np.where(same, 0.0, d)
    d = np.where(np.isnan(d), np.inf, d)  # NaN on one side only
    return float(d.max(initial=0.0))


def describe_in(EXERCISES: dict, name: str) -> str:
    """The exercise's signature, what it returns, and the cases it is checked on."""
    if name not in EXERCISES:
        return f"there is no exercise named {name!r}; the exercises are: {', '.join(EXERCISES)}"
    ex = EXERCISES[name]
    cases = "\n".join(f"  {i + 1}. {c.about}" for i, c in enumerate(ex.cases))
    return f"{ex.signature}\n  returns {ex.returns}\nchecked on:\n{cases}"


__all__ = ["CheckResult", "Case", "Mistake", "Exercise", "Returned", "Raised", "NotDone", "TimedOut", "Stopped",
           "Opaque", "make_cases", "extra_calls", "call", "check_in", "judge", "describe_in", "F32", "SEED",
           "TIMEOUT_S", "USES_PACKAGE"]
