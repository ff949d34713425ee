"""The sandbox's process limit (issue 22): a fork bomb gets a failed row, stopped by the limit rather than by the
deadline, with never more than NPROC of its processes alive, also when the grader runs as root (the kernel
exempts root from RLIMIT_NPROC, so there each sandbox gets a pids cgroup of its own), and no cgroup is left
behind, whatever happens. Skipped where bwrap cannot run (failed instead under MINIGPT_PIXELS_REQUIRE_BWRAP=1),
or where the grader is root and no pids cgroup is writable (the reason is shown)."""

import os
import pathlib
import threading

import pytest

from minigpt_pixels.exercises import grade, runner

from .grade_submissions import LN, NB1, answered, need_bwrap, write

FORK_BOMB = """import os, time
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(20)
            os._exit(0)
    return x / (1 + np.exp(-1.702 * x))"""


def need_process_limit():
    """The sandbox, and (as root) a pids cgroup: skip with the reason where either is missing."""
    bwrap = need_bwrap()
    if not runner.process_limit_holds():
        pytest.skip("grading as root here, with no writable pids cgroup: the process limit cannot hold")
    return bwrap


def need_cgroup():
    folder = runner.make_pids_cgroup()
    if folder is None:
        pytest.skip("no pids cgroup can be made here (the grader is not root, or no pids controller is writable)")
    return folder


def ours():
    """The cgroups this process made that still exist, in every pids hierarchy."""
    return sorted(str(p) for parent in runner._pids_parents()
                  for p in pathlib.Path(parent).glob(f"{runner.CGROUP_PREFIX}{os.getpid()}-*"))


def descendants():
    """The number of processes under this one (the sandboxes and all they start), from /proc."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return len(found)


class Watch:
    """The most processes alive under this one while the block runs, sampled every few milliseconds."""

    def __enter__(self):
        self.most, self.stop = 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def run(self):
        while not self.stop.wait(0.005):
            self.most = max(self.most, descendants())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_a_fork_bomb_fails_at_the_process_limit_and_leaves_no_cgroup(tmp_path, capsys):
    need_process_limit()
    write(tmp_path / "sub" / "bomber" / f"{NB1}.ipynb", answered(NB1, layer_norm=LN, quick_gelu=FORK_BOMB))
    out = tmp_path / "grades.csv"
    with Watch() as watch:
        code = grade.main([str(tmp_path / "sub"), "--out", str(out), "--timeout", "5", "--seed", "3",
                           "--no-progress"])
    err = capsys.readouterr().err
    rows = {r.split(",")[2]: r for r in out.read_text().splitlines()[1:]}
    assert code == 0 and "not enforced" not in err, err
    assert ",passed," in rows["layer_norm"]
    assert ",failed," in rows["quick_gelu"] and "BlockingIOError" in rows["quick_gelu"], rows["quick_gelu"]
    assert 0 < watch.most <= runner.NPROC, watch.most  # bwrap's own processes and the student's, all counted
    assert ours() == []
    assert descendants() == 0


def test_what_is_left_in_a_cgroup_is_killed_and_the_cgroup_removed():
    folder = need_cgroup()
    proc, placed = runner._start(["sleep", "60"], folder)
    try:
        assert placed and open(os.path.join(folder, "cgroup.procs")).read().split() == [str(proc.pid)]
        runner.remove_cgroup(folder)
        assert proc.wait(timeout=10) == -9
    finally:
        proc.kill()
        proc.wait()
        runner.remove_cgroup(folder)
    assert not os.path.exists(folder) and ours() == []


def test_the_cgroup_is_removed_when_grading_fails_midway_or_cannot_start(tmp_path, monkeypatch):
    bwrap = need_process_limit()
    path = write(tmp_path / "kim" / f"{NB1}.ipynb", answered(NB1, layer_norm=LN))
    made, make = [], runner.make_pids_cgroup

    def recorded():
        made.append(make())
        return made[-1]

    def broken(*args, **kwargs):
        raise RuntimeError("the grader broke here")
    monkeypatch.setattr(runner, "make_pids_cgroup", recorded)
    monkeypatch.setattr(runner.selectors, "DefaultSelector", broken)  # once the sandbox runs
    with pytest.raises(RuntimeError, match="broke"):
        grade.grade_notebook("kim", path, 5, grade.Limits(2.0), bwrap=bwrap)
    assert ours() == [] and descendants() == 0
    monkeypatch.setattr(runner.subprocess, "Popen", broken)  # before it starts
    with pytest.raises(RuntimeError, match="broke"):
        grade.grade_notebook("kim", path, 5, grade.Limits(2.0), bwrap=bwrap)
    assert ours() == []
    assert len(made) == 2 and all(made) == (os.geteuid() == 0)  # as root, each run had a cgroup of its own


def test_as_root_without_a_pids_cgroup_the_grader_says_what_is_not_enforced(tmp_path, capsys, monkeypatch):
    need_bwrap()
    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner, "_pids_parents", lambda: [])
    assert runner.make_pids_cgroup() is None and not runner.process_limit_holds()
    write(tmp_path / "sub" / "kim" / f"{NB1}.ipynb", answered(NB1, layer_norm=LN))
    code = grade.main([str(tmp_path / "sub"), "--out", str(tmp_path / "g.csv"), "--timeout", "2", "--no-progress"])
    warned = [line for line in capsys.readouterr().err.splitlines() if "process limit" in line]
    assert code == 0 and len(warned) == 1, warned
    assert f"process limit ({runner.NPROC}" in warned[0] and "not enforced" in warned[0] and "root" in warned[0]


def test_cgroups_left_by_a_grader_killed_outright_are_removed_and_no_others():
    mine = need_cgroup()
    try:
        parent = os.path.dirname(mine)
        dead = os.path.join(parent, f"{runner.CGROUP_PREFIX}{(1 << 22) + 1}-0badcafe")  # above any pid_max
        other = os.path.join(parent, "minigpt-grade-notes")  # not a name the grader makes
        os.mkdir(dead)
        os.mkdir(other)
        try:
            assert runner.remove_left_cgroups(min_age_s=3600) == 0  # too young to be left
            assert runner.remove_left_cgroups(min_age_s=0) == 1
            assert not os.path.exists(dead) and os.path.exists(other) and os.path.exists(mine)  # mine: pid alive
        finally:
            for folder in (dead, other):
                if os.path.exists(folder):
                    os.rmdir(folder)
    finally:
        runner.remove_cgroup(mine)


def test_the_pids_cgroups_are_found_where_the_controller_is_handed_down(tmp_path):
    """cgroup v2 (where the grader's cgroup hands pids down) before v1's pids hierarchy, each at this process's
    own cgroup, mounted at a path with a space or as a container's part of the tree; nothing else."""
    proc, v1, v2, bare = tmp_path / "proc", tmp_path / "v1 pids", tmp_path / "unified", tmp_path / "bare"
    for folder in (proc, v1 / "job", v2 / "job", bare):
        folder.mkdir(parents=True)
    (proc / "cgroup").write_text("9:name=systemd:/\n8:pids:/docker/c1/job\n4:memory:/x\n0::/job\n")

    def mounts(v2_root="/"):
        esc = str(v1).replace(" ", "\\040")
        return (f"30 25 0:26 /docker/c1 {esc} rw,nosuid - cgroup cgroup rw,pids\n"
                f"31 25 0:27 / {tmp_path / 'cpu'} rw shared:9 - cgroup cgroup rw,cpu\n"
                f"32 25 0:28 {v2_root} {v2} rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate\n"
                f"33 25 0:29 / {bare} rw - tmpfs tmpfs rw\n")
    (proc / "mountinfo").write_text(mounts())
    assert runner._pids_parents(str(proc)) == [str(v1 / "job")]  # v2 does not hand pids down
    (v2 / "job" / "cgroup.subtree_control").write_text("cpu pids\n")
    assert runner._pids_parents(str(proc)) == [str(v2 / "job"), str(v1 / "job")]
    (proc / "mountinfo").write_text(mounts(v2_root="/elsewhere"))  # the grader's cgroup is not under this mount
    assert runner._pids_parents(str(proc)) == [str(v1 / "job")]
    assert runner._pids_parents(str(tmp_path / "no_proc")) == []
