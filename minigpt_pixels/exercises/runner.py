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

The process limit is an rlimit counted per user, and the kernel exempts root from it (bwrap maps the
sandbox's uid to the caller's). So a grader running as root puts each sandbox in a fresh cgroup of its own
with pids.max = NPROC (`make_pids_cgroup`, where a pids controller is writable), joined before bwrap
starts, and removes it, killing whatever is left in it, when the sandbox ends (`remove_cgroup`).

The grader's side never waits on the student: the results come through a pipe read against a deadline
fixed when the process starts (nothing the student writes extends it), capped at MAX_RESULT_BYTES; at
the deadline or the cap the whole sandbox is killed (PID namespace: every process in it). `--no-sandbox`
runs the same script with the same rlimits as a plain `python -I` process: for trusted code only.
"""

import dataclasses
import errno
import os
import pathlib
import re
import secrets
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
NPROC = 32  # processes and threads one sandbox may hold (bwrap's own 2 included): its rlimit and pids.max
CGROUP_PREFIX = "minigpt-grade-"  # + the grader's pid + a random part: graders at once never share one
REMOVE_S = 10.0  # killing what a sandbox left in its cgroup and removing the cgroup, at most
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


# ---- the process limit when grading as root ---------------------------------------------------------
def _pids_parents(proc="/proc/self"):
    """Folders in which a new cgroup gets a pids.max: this process's own cgroup in the cgroup v2 hierarchy
    when it hands the pids controller down, and in cgroup v1's pids hierarchy; read from `proc`'s cgroup
    and mountinfo files."""
    try:
        with open(os.path.join(proc, "cgroup")) as f:
            own = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
        with open(os.path.join(proc, "mountinfo")) as f:
            mounts = [line.split() for line in f]
    except OSError:
        return []
    v2 = next((path for _, names, path in own if names == ""), None)  # "0::/path"
    v1 = next((path for _, names, path in own if "pids" in names.split(",")), None)  # "8:pids:/path"
    found = []
    for fields in mounts:
        if "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        fstype, options = fields[dash + 1], fields[dash + 3].split(",") if len(fields) > dash + 3 else []
        root, mountpoint = (_unescape(f) for f in fields[3:5])
        own_path = v2 if fstype == "cgroup2" else v1 if fstype == "cgroup" and "pids" in options else None
        if own_path is None or not (own_path + "/").startswith(root.rstrip("/") + "/"):
            continue  # this hierarchy, or the part of it that holds this process, is not mounted here
        folder = os.path.join(mountpoint, os.path.relpath(own_path, root))
        if fstype == "cgroup2" and "pids" not in _read(os.path.join(folder, "cgroup.subtree_control")).split():
            continue
        found.append((fstype != "cgroup2", os.path.normpath(folder)))
    return [folder for _, folder in sorted(set(found))]  # cgroup v2 first


def _unescape(field):
    """/proc/self/mountinfo writes a space, tab, newline or backslash in a path as \\ooo (octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def make_pids_cgroup(limit=NPROC):
    """A fresh cgroup of its own with pids.max = `limit` -> its folder; None when the grader is not root (the
    rlimit holds then) or no pids controller is writable here."""
    if os.geteuid() != 0:
        return None
    for parent in _pids_parents():
        for _ in range(3):  # a name taken (by chance) is drawn again
            folder = os.path.join(parent, f"{CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
            try:
                os.mkdir(folder)
            except FileExistsError:
                continue
            except OSError:
                break  # not writable: the next hierarchy
            try:
                with open(os.path.join(folder, "pids.max"), "w") as f:
                    f.write(str(int(limit)))
                return folder
            except OSError:
                os.rmdir(folder)
                break
    return None


def _start(argv, cgroup, **popen):
    """Popen `argv`, in `cgroup` when one is given -> (process, whether it is in the cgroup). The process
    waits in /bin/sh until the grader has written its pid to the cgroup's cgroup.procs, then execs `argv`,
    so everything it starts is counted; not a preexec_fn, which can deadlock beside the grader's threads.
    Where the pid cannot be written the process runs without the cgroup (make_pids_cgroup's callers check
    that it can, before grading: `process_limit_holds`)."""
    if cgroup is None:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, **popen), False
    proc = subprocess.Popen(["/bin/sh", "-c", 'read -r go && exec "$@"', "sh"] + list(argv),
                            stdin=subprocess.PIPE, bufsize=0, **popen)
    placed = False
    try:
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(proc.pid))
            placed = True
        except OSError:
            pass
        proc.stdin.write(b"go\n")
    except BaseException:
        proc.kill()  # the shell, before argv ran (or bwrap, whose sandbox dies with it)
        proc.wait()
        raise
    finally:
        proc.stdin.close()  # unbuffered: nothing left to flush; without "go" the shell exits without argv
    return proc, placed


def remove_cgroup(folder, wait_s=REMOVE_S):
    """Kill every process left in the cgroup (the end of the sandbox's PID namespace normally has) and remove
    it, trying again while the last ones are reaped; SandboxError naming it if it outlives `wait_s`."""
    end = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(folder)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > end:
                raise SandboxError(f"the sandbox's cgroup {folder} could not be removed ({e.strerror})") from None
        _kill_members(folder)
        time.sleep(0.01)


def _kill_members(folder):
    """SIGKILL each process in the cgroup: cgroup v2's cgroup.kill, else each pid through a pidfd, signalled
    only while that pid is still listed (a pid that was reaped and reused is another process)."""
    if os.path.exists(os.path.join(folder, "cgroup.kill")):
        try:
            with open(os.path.join(folder, "cgroup.kill"), "w") as f:
                f.write("1")
            return
        except OSError:
            pass
    fds = {}
    try:
        for pid in map(int, _read(os.path.join(folder, "cgroup.procs")).split()):
            try:
                fds[pid] = os.pidfd_open(pid)
            except OSError:
                pass
        members = set(map(int, _read(os.path.join(folder, "cgroup.procs")).split()))
        for pid, fd in fds.items():
            if pid in members:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
    finally:
        for fd in fds.values():
            os.close(fd)


def remove_left_cgroups(min_age_s=60.0):
    """Remove the cgroups that a grader killed outright (SIGKILL, so no `finally` ran) left behind: named for
    a pid not running here, made over `min_age_s` ago, and empty (rmdir refuses any other). -> how many."""
    removed = 0
    for parent in _pids_parents():
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            found = re.fullmatch(re.escape(CGROUP_PREFIX) + r"(\d+)-[0-9a-f]+", name)
            folder = os.path.join(parent, name)
            try:
                if found and not os.path.exists(f"/proc/{found.group(1)}") and \
                        time.time() - os.stat(folder).st_ctime > min_age_s:
                    os.rmdir(folder)
                    removed += 1
            except OSError:
                pass
    return removed


def process_limit_holds():
    """Whether the sandbox's process limit is enforced here: not root (the rlimit), or a pids cgroup can be
    made, joined (by /bin/true, started as a sandbox is) and removed."""
    if os.geteuid() != 0:
        return True
    folder = make_pids_cgroup()
    if folder is None:
        return False
    try:
        proc, placed = _start(["/bin/true"], folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.wait()
    finally:
        remove_cgroup(folder)
    return placed


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
                   "nproc": NPROC,
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
    first = now + START_S + limits.timeout  # the first message comes once the notebook's cells have run
    cgroup = make_pids_cgroup() if limits.sandbox else None  # as root, whom RLIMIT_NPROC spares: pids.max
    try:
        proc, _ = _start(argv, cgroup, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         start_new_session=True,
                         env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd, "OMP_NUM_THREADS": "1"})
    except BaseException:
        if cgroup is not None:
            remove_cgroup(cgroup)
        raise
    try:
        data, killed, too_much = _read_until(proc, deadline, first, limits.timeout * (1 + MAX_EXTRA) + GRACE_S)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap and, through its PID namespace, all it holds
        except (ProcessLookupError, PermissionError):
            pass
        rc = proc.wait()
        proc.stdout.close()
        if cgroup is not None:
            remove_cgroup(cgroup)  # and any process still in it
    messages, broken = calls.read_messages(bytes(data))
    return {"rc": rc, "killed": killed, "too_much": too_much, "broken": broken}, messages


def _read_until(proc, deadline, stall, stall_s):
    """The student's output until it ends, the fixed `deadline` passes, it is silent past `stall` (pushed
    `stall_s` on by each message: a stall only ever ends it sooner) or it sends too much.
    -> (data, killed, too_much)."""
    data = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = min(deadline, stall) - time.monotonic()
            if left <= 0:
                return data, True, False
            if not sel.select(timeout=min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                return data, False, False
            data += chunk
            stall = time.monotonic() + stall_s
            if len(data) > MAX_RESULT_BYTES:
                return data, False, True


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


__all__ = ["Limits", "SandboxError", "find_bwrap", "bwrap_command", "make_pids_cgroup", "remove_cgroup",
           "remove_left_cgroups", "process_limit_holds", "run_student", "job_specs", "MEMORY_MB", "TMPFS_MB", "NPROC",
           "BWRAP_INSTALL"]
