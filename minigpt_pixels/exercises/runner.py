"""Running one student's notebook: a bubblewrap sandbox per student and notebook, a hard deadline, and the
outcomes read back through calls.py's wire format.

The sandbox (`bwrap_command`): new user, PID, network, IPC, UTS and mount namespaces; uid and gid 65534
(nobody); a root filesystem that shows, read-only, only /usr (with the /bin, /lib, /lib64 links), the
Python interpreter's prefix with its site-packages hidden, NumPy's own folders, and the two scripts
(sandbox.py, calls.py) and the job file, each mounted on its own. The package's source, the course's
sources, the other submissions, the grader's files and /home are not there at all. /tmp and the working
directory are one private tmpfs of TMPFS_MB; /proc shows only the sandbox's processes; the environment is
emptied; --die-with-parent and a new session. Inside, sandbox.py sets hard rlimits (memory, CPU, file
size, processes, open files) before the student's code runs.

The grader's side never waits on the student: the results come through a pipe read against a deadline
fixed when the process starts (nothing the student writes extends it), capped at MAX_RESULT_BYTES; at
the deadline or the cap the whole sandbox is killed (PID namespace: every process in it). `--no-sandbox`
runs the same script with the same rlimits as a plain `python -I` process: for trusted code only.
"""

import dataclasses
import os
import pathlib
import selectors
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import calls
from .calls import TIMEOUT_S

HERE = pathlib.Path(__file__).resolve().parent
SCRIPTS = ("sandbox.py", "calls.py")  # all the grader code the sandbox sees
MEMORY_MB = 1024  # address space the student's process may add to what Python and NumPy already use
TMPFS_MB = 32  # the student's whole disk: /tmp and the working directory together
START_S = 15.0  # starting the sandbox, Python and NumPy on a busy machine
GRACE_S = 2.0  # after the last call's own alarm, before the grader kills the sandbox
MAX_RESULT_BYTES = 32 << 20  # everything one notebook's process may send back
MAX_EXTRA = 2  # extra calls of one case at most (engine.extra_calls)
PREAMBLE = "import numpy as np\n"  # what the notebooks' read-only set-up cell gives the answers
BWRAP_INSTALL = "apt-get install bubblewrap (or your distribution's bubblewrap package)"


class SandboxError(RuntimeError):
    """bwrap is missing or cannot start a sandbox here: the grader refuses rather than run students unsandboxed."""


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout: float = TIMEOUT_S
    memory_mb: int = MEMORY_MB
    sandbox: bool = True


# ---- the sandbox's command line ---------------------------------------------------------------------
def find_bwrap():
    """The bwrap executable, checked by starting one sandbox; raises SandboxError with the fix."""
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError(f"bubblewrap (bwrap) is not installed, and grading runs every student in its sandbox: "
                           f"{BWRAP_INSTALL}; or pass --no-sandbox, for trusted code only")
    try:
        probe = subprocess.run(bwrap_command(path, None, ["/bin/true"]), capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxError(f"bwrap could not start a sandbox ({e})") from None
    if probe.returncode != 0:
        why = probe.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
        raise SandboxError(f"bwrap could not start a sandbox here ({why[0]}); user namespaces may be disabled")
    return path


def _hidden_folders():
    """Folders that hold installed packages (the grader's own among them): mounted empty in the sandbox."""
    folders = set(site.getsitepackages()) | {site.getusersitepackages(), str(HERE.parent.parent)}
    return sorted({os.path.realpath(f) for f in folders if f and os.path.isdir(f)})


def _numpy_folders():
    """NumPy's package folder and its bundled libraries (numpy.libs), by name in NumPy's own folder."""
    parent = pathlib.Path(np.__file__).resolve().parent.parent
    return [parent / n for n in ("numpy", "numpy.libs") if (parent / n).is_dir()]


def bwrap_command(bwrap, job, argv):
    """The bwrap command that runs `argv` in the sandbox, the job file (if any) mounted at /job."""
    cmd = [bwrap, "--unshare-all", "--uid", "65534", "--gid", "65534", "--die-with-parent", "--new-session",
           "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG",
           "C.UTF-8"]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        cmd += ["--setenv", var, "1"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, os.path.dirname(os.path.dirname(
        os.path.realpath(sys.executable))))}
    for prefix in sorted(prefixes):
        if not prefix.startswith("/usr/") and prefix != "/usr":
            cmd += ["--ro-bind", prefix, prefix]
    shown = ["/usr"] + sorted(prefixes)
    for folder in _hidden_folders():
        if any(folder == s or folder.startswith(s.rstrip("/") + "/") for s in shown):
            cmd += ["--tmpfs", folder, "--remount-ro", folder]
    for folder in _numpy_folders():
        cmd += ["--ro-bind", str(folder), f"/grader/site/{folder.name}"]
    for name in SCRIPTS:
        cmd += ["--ro-bind", str(HERE / name), f"/grader/{name}"]
    if job is not None:
        cmd += ["--ro-bind", str(job), "/job"]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS_MB << 20), "--tmpfs", "/tmp",
            "--chdir", "/tmp", "--remount-ro", "/"]
    return cmd + list(argv)


# ---- one notebook -------------------------------------------------------------------------------------
def run_student(program, specs, arrays, limits, bwrap=None):
    """Run `program` (notebook.Program) and call each exercise's function on its cases (`specs`, with their
    `arrays`, from `job_specs`). -> ({exercise: [outcome, ...]}, [notes on the student's code that failed
    to run]). A process that dies or hangs on one exercise is replaced by a fresh one for the rest."""
    outcomes = {s["name"]: [] for s in specs}
    notes, start = [], 0
    with tempfile.TemporaryDirectory(prefix="minigpt-grade-") as tmp:
        while start < len(specs):
            job = {"cells": program.cells, "preamble": PREAMBLE, "exercises": specs, "start": start,
                   "timeout": limits.timeout, "memory_mb": limits.memory_mb, "sandboxed": limits.sandbox,
                   "cpu_s": limits.timeout * (_calls(specs[start:]) + 1) + START_S}
            path = pathlib.Path(tmp) / f"job{start}"
            with open(path, "wb") as f:
                calls.write_message(f, job, arrays)
            how, messages = _run(path, limits, _calls(specs[start:]), bwrap)
            stopped_at = _collect(messages, how, specs, start, outcomes, limits.timeout)
            if not notes and messages and isinstance(messages[0][0], dict) and \
                    isinstance(messages[0][0].get("loaded"), list):
                notes = [str(x)[:500] for x in messages[0][0]["loaded"][:20]]
            if stopped_at is None:
                break
            start = stopped_at + 1  # a fresh process for the exercises after the one that stopped it
    return outcomes, notes


def _calls(specs):
    return sum(len(s["cases"]) + sum(len(c["extra"]) for c in s["cases"]) for s in specs)


def _run(job, limits, n_calls, bwrap):
    """Start the student's process and read its results until it ends, the deadline passes or it sends
    too much. -> (how it ended, the messages read)."""
    if limits.sandbox:
        argv = bwrap_command(bwrap, job, [os.path.realpath(sys.executable), "-I", "-S", "/grader/sandbox.py", "/job"])
        cwd = "/"
    else:
        argv = [sys.executable, "-I", str(HERE / "sandbox.py"), str(job)]
        cwd = str(job.parent)
    now = time.monotonic()
    deadline = now + START_S + limits.timeout * (n_calls + 1) + GRACE_S  # fixed now: nothing extends it
    stall_s = limits.timeout * (1 + MAX_EXTRA) + GRACE_S  # silence for longer than one case's calls: stuck
    stall = now + START_S + limits.timeout  # the first message comes once the notebook's cells have run
    data, killed, too_much = bytearray(), False, False
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd, "OMP_NUM_THREADS": "1"})
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = min(deadline, stall) - time.monotonic()  # a stall only ever ends it sooner
                if left <= 0:
                    killed = True
                    break
                if not sel.select(timeout=min(left, 1.0)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                data += chunk
                stall = time.monotonic() + stall_s
                if len(data) > MAX_RESULT_BYTES:
                    too_much = True
                    break
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap and, through its PID namespace, all it holds
        except (ProcessLookupError, PermissionError):
            pass
        rc = proc.wait()
        proc.stdout.close()
    messages, broken = calls.read_messages(bytes(data))
    return {"rc": rc, "killed": killed, "too_much": too_much, "broken": broken}, messages


def _collect(messages, how, specs, start, outcomes, timeout):
    """Put each case's outcome where it belongs; -> the index of the exercise the process stopped on (it
    died, hung or sent nonsense there), or None when it finished."""
    if not messages or not isinstance(messages[0][0], dict) or "loaded" not in messages[0][0]:
        reason = _death(how, timeout, "while your notebook's code was being run, before any function could be "
                                      "called")
        for s in specs[start:]:
            outcomes[s["name"]].append(calls.Stopped(reason))
        return None
    done = any(isinstance(m[0], dict) and m[0].get("done") is True for m in messages)
    expected = [(e, c) for e in range(start, len(specs)) for c in range(len(specs[e]["cases"]))]
    position = 0
    for record, arrays in messages[1:]:
        if not isinstance(record, dict):
            return _stop(expected, position, outcomes, specs, "sent back a result that is not a record")
        if record.get("done") is True:
            break
        if position >= len(expected) or (record.get("exercise"), record.get("case")) != expected[position]:
            return _stop(expected, position, outcomes, specs, "sent back results out of order")
        e, c = expected[position]
        try:
            outcome = calls.read_outcome(record.get("outcome"), arrays)
        except (calls.WireError, KeyError, TypeError, ValueError, RecursionError) as err:
            return _stop(expected, position, outcomes, specs, f"sent back what the grader cannot read ({err})")
        if isinstance(outcome, calls.TimedOut):
            outcome = calls.TimedOut(timeout)
        outcomes[specs[e]["name"]].append(outcome)
        position += 1
        if not isinstance(outcome, calls.Returned):  # the sandbox moves on to the next exercise
            position = next((i for i, (e2, _) in enumerate(expected) if e2 > e), len(expected))
    if done and not how["killed"] and not how["too_much"] and how["broken"] is None:
        return None
    if position >= len(expected):
        return None
    e, _ = expected[position]
    if how["broken"] is not None:
        outcomes[specs[e]["name"]].append(calls.Stopped(f"your code sent back what the grader cannot read "
                                                        f"({how['broken']})"))
    elif how["too_much"]:
        outcomes[specs[e]["name"]].append(calls.Stopped(f"your code sent back more than {MAX_RESULT_BYTES >> 20} "
                                                        f"MiB of results"))
    elif how["killed"]:
        outcomes[specs[e]["name"]].append(calls.TimedOut(timeout))
    else:
        outcomes[specs[e]["name"]].append(calls.Stopped(_death(how, timeout, "on this case")))
    return e


def _stop(expected, position, outcomes, specs, what):
    e = expected[min(position, len(expected) - 1)][0]
    outcomes[specs[e]["name"]].append(calls.Stopped(f"your code {what}"))
    return e


def _death(how, timeout, when):
    rc = how["rc"]
    signum = -rc if rc < 0 else rc - 128 if rc > 128 else 0  # bwrap reports a signal as 128 + its number
    if how["killed"] or signum == signal.SIGXCPU:
        return f"your code ran longer than {timeout:g} s {when} (an endless loop?), and was stopped"
    if how["too_much"]:
        return f"your code sent back more than {MAX_RESULT_BYTES >> 20} MiB {when}"
    if signum == signal.SIGKILL:
        return f"the process running your code was killed {when} (out of memory?)"
    if signum == signal.SIGSEGV:
        return f"your code crashed Python (a segmentation fault) {when}"
    if signum:
        return f"the process running your code died of signal {signum} {when}"
    return f"your code ended the process running it (exit status {rc}: os._exit or similar) {when}"


def job_specs(exercises, cases, extra):
    """The exercises' cases as wire specs and one dict of arrays. `extra[name][i]` lists case i's extra calls."""
    arrays, specs = {}, []
    for e, (name, signature) in enumerate(exercises):
        specs.append({"name": name, "function": name, "signature": signature, "cases": [
            {"args": calls.encode(tuple(args), arrays, f"e{e}c{c}"),
             "extra": [calls.encode(tuple(more), arrays, f"e{e}c{c}x{j}") for j, more in enumerate(extra[name][c])]}
            for c, args in enumerate(cases[name])]})
    return specs, arrays


__all__ = ["Limits", "SandboxError", "find_bwrap", "bwrap_command", "run_student", "job_specs", "MEMORY_MB",
           "TMPFS_MB", "BWRAP_INSTALL"]
