"""Issue 22's attacks, each a real submission notebook in one hostile class graded in the bubblewrap sandbox
with --jobs 2: no cheat passes, no file outside the sandbox changes, no classmate's grade or file changes,
and the grader's own time and memory stay bounded. Skipped where bwrap cannot run (the reason is shown),
failed instead under MINIGPT_PIXELS_REQUIRE_BWRAP=1."""

import csv
import hashlib
import os
import pathlib
import resource
import textwrap
import time

import pytest

from minigpt_pixels.exercises import grade

from .grade_submissions import LN, NB1, NB3, QG, ROOT, answered, need_bwrap, released, write

SEED = "987654321"  # the grader's secret: it must not be found from inside the sandbox
GRADER_FILES = [ROOT / "minigpt_pixels" / p for p in ("exercises/sandbox.py", "exercises/grade.py", "grade.py",
                                                      "exercises/calls.py", "layers.py")]
FORGE_HUGE = ('{"record": {"exercise": 0, "case": 0, "outcome": {"status": "returned", "value": {"kind": "array", '
              '"key": "v"}}}, "arrays": [{"key": "v", "dtype": "<f8", "shape": [1048576, 1048576]}]}\n')


def body(code):
    """Code for a function body that replaces the stub (the first line already sits at 4 spaces)."""
    return textwrap.indent(textwrap.dedent(code).strip(), "    ")[4:]


def to_every_fd(text):
    """The student finds the result channel among its open files and writes to all of them."""
    return body(f"""
        import os
        for fd in sorted(map(int, os.listdir('/proc/self/fd'))):
            try:
                os.write(fd, {text!r}.encode() if isinstance({text!r}, str) else {text!r})
            except OSError:
                pass
        return x
    """)


def the_class(root, out, feedback):
    """{folder: (notebook file name, notebook)}; str(ROOT), the submissions and the outputs are the paths a
    student would aim at (the grader's, the classmates', the teacher's)."""
    sub, c = root / "submitted", {}
    ada = str(sub / "ada" / f"{NB1}.ipynb")
    c["ada"] = (NB1, answered(NB1, layer_norm=LN, quick_gelu=QG))
    c["rewrite_grader"] = (NB1, answered(NB1, layer_norm=body(f"""
        for path in {[str(p) for p in GRADER_FILES]!r}:
            try:
                open(path, 'a').write('\\nraise SystemExit("planted")\\n')
            except OSError:
                pass
        return x"""), quick_gelu=QG))
    c["setsid_child"] = (NB1, answered(NB1, layer_norm=body(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1.5)
                for path in ({str(out)!r}, {str(feedback / 'ada.txt')!r}):
                    try:
                        open(path, 'w').write('rewritten')
                    except OSError:
                        pass
            os._exit(0)
        return x""")))
    c["overwrite_classmate"] = (NB1, answered(NB1, layer_norm=body(f"""
        import os
        try:
            open({ada!r}, 'w').write('{{}}')
        except OSError:
            pass
        raise RuntimeError('classmates visible: ' + str(os.path.exists({str(sub)!r})))""")))
    c["reads_grader"] = (NB1, answered(NB1, layer_norm=body(f"""
        import os
        seen = []
        for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
            for what in ('cmdline', 'environ'):
                try:
                    seen.append(open(f'/proc/{{pid}}/{{what}}', 'rb').read().decode('utf-8', 'replace'))
                except OSError:
                    pass
        found = any('{SEED}' in s or '--seed' in s for s in seen)
        raise RuntimeError(f'seed found: {{found}} in {{len(seen)}} files')""")))
    c["raises_rlimits"] = (NB1, answered(NB1, layer_norm=body("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        return x"""), quick_gelu=body("""
        import resource
        kinds = [resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC]
        raise RuntimeError('hard limits: ' + str(all(resource.getrlimit(k)[0] == resource.getrlimit(k)[1]
                                                        != resource.RLIM_INFINITY for k in kinds)))""")))
    c["forges_huge_array"] = (NB1, answered(NB1, layer_norm=to_every_fd(FORGE_HUGE), quick_gelu=QG))
    c["forges_deep_record"] = (NB1, answered(NB1, layer_norm=to_every_fd("[" * 100_000 + "\n"), quick_gelu=QG))
    nb = answered(NB1, layer_norm=LN, quick_gelu=QG)
    cell = next(c for c in nb["cells"] if "def layer_norm" in "".join(c["source"]))
    cell["source"] = ("import os\nfor fd in range(3, 64):\n    try:\n"
                      "        os.write(fd, b'{\"record\": 5, \"arrays\": []}\\n')\n    except OSError:\n"
                      "        pass\n" + "".join(cell["source"]))
    c["forges_before_loading"] = (NB1, nb)
    c["stubborn_progress"] = (NB1, answered(NB1, layer_norm=body("""
        i = 0
        while True:
            try:
                while True:
                    i += 1
                    open(f'ex0_case{i % 50}.json', 'w').write('{}')
            except BaseException:
                pass"""), quick_gelu=QG))
    nb = answered(NB1, layer_norm=body("""
        mod = __import__('minigpt' + '_pixels.layers', fromlist=['layer_norm'])
        return mod.layer_norm(x, weight, eps)"""))
    cell = next(c for c in nb["cells"] if "def layer_norm" in "".join(c["source"]))
    cell["source"] = ("import sys\nsys.meta_path[:] = [f for f in sys.meta_path if 'Blocker' not in type(f).__name__]\n"
                      "for f in sys.meta_path:\n    f.find_spec = lambda *a, **k: None\n" + "".join(cell["source"]))
    c["unblocks_import"] = (NB1, nb)
    c["argv_grandparent"] = (NB1, answered(NB1, layer_norm=body("""
        import os, sys
        package = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0])))
        scope = {}
        exec(open(os.path.join(package, 'layers.py')).read(), scope)
        return scope['layer_norm'](x, weight, eps)""")))
    c["editable_finder"] = (NB1, answered(NB1, layer_norm=body("""
        import glob, os, sysconfig
        finder = glob.glob(os.path.join(sysconfig.get_paths()['purelib'], '__editable__*finder.py'))
        scope = {}
        exec(open(finder[0]).read(), scope)
        layers = os.path.join(scope['MAPPING']['minigpt' + '_pixels'], 'layers.py')
        exec(open(layers).read(), scope)
        return scope['layer_norm'](x, weight, eps)""")))
    c["teacher_sources"] = (NB1, answered(NB1, layer_norm=body(f"""
        scope = {{}}
        exec(open({str(ROOT / 'notebooks' / 'src' / 'exercises' / (NB1 + '.py'))!r}).read(), scope)
        return scope['layer_norm'](x, weight, eps)""")))
    c["zip_copy"] = (NB1, answered(NB1, layer_norm=body(f"""
        import shutil, sys
        shutil.make_archive('/tmp/mp', 'zip', {str(ROOT)!r}, 'minigpt' + '_pixels')
        sys.path.insert(0, '/tmp/mp.zip')
        return __import__('minigpt' + '_pixels.layers', fromlist=['x']).layer_norm(x, weight, eps)""")))
    c["subprocess_package"] = (NB1, answered(NB1, layer_norm=body("""
        import subprocess, sys, numpy as np
        code = 'import numpy as np, sys; from minigpt' + '_pixels.layers import layer_norm'
        subprocess.check_call([sys.executable, '-c', code])
        return x""")))
    c["sibling_writer"] = (NB1, answered(NB1, layer_norm=body("""
        import time
        open('/tmp/shared_marker', 'w').write('here')
        open('shared_marker', 'w').write('here')
        time.sleep(1.2)
        return x""")))
    c["sibling_reader"] = (NB1, answered(NB1, layer_norm=body("""
        import os, time
        seen = False
        for _ in range(15):
            seen = seen or os.path.exists('/tmp/shared_marker') or os.path.exists('shared_marker')
            time.sleep(0.1)
        raise RuntimeError(f'sibling visible: {seen}')""")))
    hot = ("p = np.exp((logits - logits.max(-1, keepdims=True)) / 1.1)\n    "
           "p = np.where(logits >= np.sort(logits, -1)[:, -k][:, None], p, 0)\n    p /= p.sum(-1, keepdims=True)\n"
           "    return (p.cumsum(-1) < rng.random((len(p), 1))).sum(-1)")
    c["hot_sampler"] = (NB3, answered(NB3, top_k_sample=hot))
    c["fixed_rng_sampler"] = (NB3, answered(NB3, top_k_sample=hot.replace("/ 1.1", "").replace(
        "rng.random", "np.random.default_rng(0).random")))
    c["no_randomness_sampler"] = (NB3, answered(NB3, top_k_sample=body("""
        rows, first = np.unique(logits, axis=0, return_inverse=True)
        out = np.empty(len(logits), np.int64)
        for r, row in enumerate(rows):
            at = np.flatnonzero(first.ravel() == r)
            p = np.where(row >= np.sort(row)[-k], np.exp(row - row.max()), 0)
            cdf = np.cumsum(p / p.sum())
            out[at] = np.minimum(np.searchsorted(cdf, (np.arange(len(at)) + 0.5) / len(at)), len(row) - 1)
        return out""")))
    return c


def hashes(paths):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    need_bwrap()
    root = tmp_path_factory.mktemp("hostile")
    out, feedback = root / "grades.csv", root / "feedback"
    feedback.mkdir()
    (feedback / "notes.txt").write_text("teacher's notes\n")
    (root / "grades.csv.tmp").write_text("keep me\n")
    (root / "precious.txt").write_text("precious\n")
    os.symlink(root / "precious.txt", root / "grades_totals.csv.tmp")
    for student, (stem, nb) in the_class(root, out, feedback).items():
        write(root / "submitted" / student / f"{stem}.ipynb", nb)
    watched = GRADER_FILES + sorted((root / "submitted").rglob("*.ipynb"))
    before = hashes(watched)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    code = grade.main([str(root / "submitted"), "--out", str(out), "--feedback", str(feedback), "--seed", SEED,
                       "--timeout", "2", "--jobs", "2", "--no-progress"])
    took = time.monotonic() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    written = out.read_bytes(), (feedback / "ada.txt").read_bytes()
    time.sleep(2.5)  # the double-forked child's moment, had it survived
    rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(open(out, newline="", encoding="utf-8"))}
    return {"code": code, "rows": rows, "root": root, "took": took, "grown_mb": grown_mb, "before": before,
            "after": hashes(watched), "written": written, "out": out, "feedback": feedback}


def status(rows, student, exercise):
    r = rows[(student, exercise)]
    return r["status"], r["message"]


def test_the_class_is_graded_and_the_honest_student_is_untouched(attacked):
    assert attacked["code"] == 0
    assert status(attacked["rows"], "ada", "layer_norm")[0] == "passed"
    assert status(attacked["rows"], "ada", "quick_gelu")[0] == "passed"


def test_no_file_outside_the_sandbox_changes(attacked):
    assert attacked["after"] == attacked["before"]  # the grader's sources, every submitted notebook
    root = attacked["root"]
    assert (root / "grades.csv.tmp").read_text() == "keep me\n"
    assert (root / "precious.txt").read_text() == "precious\n" and (root / "grades_totals.csv.tmp").is_symlink()
    assert (attacked["feedback"] / "notes.txt").read_text() == "teacher's notes\n"


def test_a_process_left_behind_cannot_rewrite_the_grades(attacked):
    assert (attacked["out"].read_bytes(), (attacked["feedback"] / "ada.txt").read_bytes()) == attacked["written"]
    assert status(attacked["rows"], "setsid_child", "layer_norm")[0] == "failed"


def test_the_grader_classmates_and_seed_are_not_visible(attacked):
    rows = attacked["rows"]
    assert "classmates visible: False" in status(rows, "overwrite_classmate", "layer_norm")[1]
    message = status(rows, "reads_grader", "layer_norm")[1]
    assert "seed found: False" in message and SEED not in message


def test_a_sibling_sandbox_is_not_visible_with_two_jobs(attacked):
    assert "sibling visible: False" in status(attacked["rows"], "sibling_reader", "layer_norm")[1]


def test_the_limits_are_hard(attacked):
    rows = attacked["rows"]
    assert "ValueError" in status(rows, "raises_rlimits", "layer_norm")[1]
    assert "hard limits: True" in status(rows, "raises_rlimits", "quick_gelu")[1]


def test_forged_results_are_refused_and_the_next_exercise_is_still_graded(attacked):
    rows = attacked["rows"]
    for student in ("forges_huge_array", "forges_deep_record"):
        state, message = status(rows, student, "layer_norm")
        assert state == "failed" and "cannot read" in message, (student, message)
        assert rows[(student, "layer_norm")]["max_points"] == "2"
        assert status(rows, student, "quick_gelu")[0] == "passed"
    assert "over the limit" in status(rows, "forges_huge_array", "layer_norm")[1]
    for exercise, top in [("layer_norm", "2"), ("quick_gelu", "1")]:  # a forged record before any result
        row = rows[("forges_before_loading", exercise)]
        assert row["status"] == "failed" and row["max_points"] == top and "grader itself" not in row["message"]
    assert attacked["grown_mb"] < 300  # nothing of the forged 8 TiB array was allocated


def test_progress_files_do_not_extend_the_deadline(attacked):
    rows = attacked["rows"]
    assert status(rows, "stubborn_progress", "layer_norm")[0] == "failed"
    assert "longer than" in status(rows, "stubborn_progress", "layer_norm")[1]
    assert status(rows, "stubborn_progress", "quick_gelu")[0] == "passed"
    assert attacked["took"] < 150  # 30 notebooks, one stubborn loop: each bounded by its fixed deadline


@pytest.mark.parametrize("student", ["unblocks_import", "argv_grandparent", "editable_finder", "teacher_sources",
                                     "zip_copy", "subprocess_package"])
def test_no_route_to_the_package_passes(attacked, student):
    state, message = status(attacked["rows"], student, "layer_norm")
    assert state == "failed" and "took longer" not in message, message
    assert rows_points(attacked["rows"], student, "layer_norm") == 0


@pytest.mark.parametrize("student", ["hot_sampler", "fixed_rng_sampler", "no_randomness_sampler"])
def test_samplers_that_do_not_follow_rng_at_temperature_1_fail(attacked, student):
    assert status(attacked["rows"], student, "top_k_sample")[0] == "failed"


def rows_points(rows, student, exercise):
    return float(rows[(student, exercise)]["points"])


def test_a_released_notebook_in_the_sandbox_is_not_done_not_failed(tmp_path):
    """The plain skeleton, as a control: the sandbox itself costs no student a point."""
    bwrap = need_bwrap()
    path = write(tmp_path / "kim" / f"{NB1}.ipynb", released(NB1))
    rows = grade.grade_notebook("kim", path, 5, grade.Limits(2.0), bwrap=bwrap)
    assert [r.status for r in rows] == ["not done", "not done"]
    assert pathlib.Path(path).exists()
