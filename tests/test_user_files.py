"""Nothing a user saved is ever lost: every command writes only what it creates in this run, and never
deletes, moves or replaces anything else (unless the user names that exact file with --force).

Each test puts the user's own files beside the outputs (folders, another tool's checkpoints, a file of
the same name, one that appears while the command runs) and checks they come through byte for byte."""

import os
import subprocess
import sys
import threading

import pytest
from PIL import Image

from minigpt_pixels import checkpoints, sample
from minigpt_pixels.weights import atomic_open

from . import test_sample_cli
from .test_train import TINY, make_folder, one_line_error, run

tiny_model_dir = test_sample_cli.tiny_model_dir  # the fixture: a random 6x6 model in the HF layout

STEPS = ["--n-colors", 4, "--steps", 2]


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data")


def snapshot(root):
    """Every file under root (relative path -> bytes) and every folder: what must survive a run."""
    files, folders = {}, set()
    for directory, subdirs, names in os.walk(root):
        rel = os.path.relpath(directory, root)
        folders.update(os.path.normpath(os.path.join(rel, d)) for d in subdirs)
        for n in names:
            with open(os.path.join(directory, n), "rb") as f:
                files[os.path.normpath(os.path.join(rel, n))] = f.read()
    return files, folders


def survives(before, root):
    """Everything in `before` is still under root, unchanged."""
    files, folders = snapshot(root)
    assert before[1] <= folders, sorted(before[1] - folders)
    for path, data in before[0].items():
        assert files.get(path) == data, path


def user_project(root):
    """A project folder as a user has one: sources, notes, results of earlier runs."""
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "main.py").write_text("print('my code')\n")
    (root / "notes.md").write_text("my notes\n")
    (root / "data").mkdir()
    make_folder(root / "data" / "images")
    return root


# ---- train --export ---------------------------------------------------------------------------------
def test_export_into_the_project_folder_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """`--out runs/r --export .` from a project folder: only an empty folder or this run's own export is
    written into, and the refusal comes before any training."""
    project = user_project(tmp_path / "project")
    monkeypatch.chdir(project)
    before = snapshot(project)
    code, err = run(["--data", "data/images", "--out", "runs/r", *STEPS, *TINY, "--export", "."], capsys)
    one_line_error(code, err, "--export .", "not empty", "minigpt-pixels-export.json")
    survives(before, project)
    assert not (project / "runs").exists()


def test_export_refuses_an_imagegpt_folder_it_did_not_write(tmp_path, folder, capsys):
    """The old code took any config.json saying "imagegpt" for its own earlier export and replaced it: a hub
    checkpoint's folder got a 1-layer config beside its pytorch_model.bin."""
    hub = tmp_path / "imagegpt-small"
    hub.mkdir()
    (hub / "config.json").write_text('{"model_type": "imagegpt", "n_layer": 24}')
    (hub / "preprocessor_config.json").write_text('{"clusters": [[0, 0, 0]]}')
    (hub / "pytorch_model.bin").write_bytes(b"300 MB of weights")
    plain = tmp_path / "plain"  # an ImageGPT config.json and nothing else: still not this tool's export
    plain.mkdir()
    (plain / "config.json").write_text('{"model_type": "imagegpt", "n_embd": 4}')
    for target, needle in ((hub, "pytorch_model.bin"), (plain, "minigpt-pixels-export.json")):
        before = snapshot(target)
        code, err = run(["--data", folder, "--out", tmp_path / "r", *STEPS, *TINY, "--export", target], capsys)
        one_line_error(code, err, str(target), needle)
        survives(before, target)
        assert sorted(snapshot(target)[0]) == sorted(before[0]) and not (tmp_path / "r").exists()


def test_export_never_replaces_the_model_a_run_starts_from(tmp_path, folder, capsys):
    """`--finetune-from base --export base`: the old code replaced the pretrained model with the classifier."""
    base = tmp_path / "base"
    assert run(["--data", folder, "--out", tmp_path / "lm", *STEPS, *TINY, "--export", base])[0] == 0
    before = snapshot(base)
    for option in ("--finetune-from", "--init-from"):
        code, err = run(["--data", folder, option, base, "--out", tmp_path / option[2:], "--steps", 2,
                         "--batch-size", 4, "--no-progress", "--export", base], capsys)
        one_line_error(code, err, f"is the {option} folder")
        survives(before, base)
        assert sorted(snapshot(base)[0]) == sorted(before[0]) and not (tmp_path / option[2:]).exists()


def test_export_refuses_another_runs_export_and_edited_files(tmp_path, folder, capsys):
    export, common = tmp_path / "model", ["--data", folder, *STEPS, *TINY]
    assert run([*common, "--out", tmp_path / "a", "--export", export])[0] == 0
    before = snapshot(export)
    code, err = run([*common, "--out", tmp_path / "b", "--export", export], capsys)  # a new run, same folder
    one_line_error(code, err, "export of another run", str(tmp_path / "a"))
    survives(before, export)
    (export / "config.json").write_text('{"model_type": "imagegpt", "note": "edited by hand"}')
    before = snapshot(export)
    code, err = run([*common, "--steps", 4, "--out", tmp_path / "a", "--resume", "--export", export], capsys)
    one_line_error(code, err, "config.json", "changed since")
    survives(before, export)
    code, err = run([*common, "--out", tmp_path / "c", "--export", tmp_path / "c"], capsys)
    one_line_error(code, err, "is the --out folder")


def test_export_onto_a_file_is_refused_before_training(tmp_path, folder, capsys):
    target = tmp_path / "model"
    target.write_bytes(b"my file")
    code, err = run(["--data", folder, "--out", tmp_path / "r", *STEPS, *TINY, "--export", target], capsys)
    one_line_error(code, err, "is a file, not a folder")
    assert target.read_bytes() == b"my file" and not (tmp_path / "r").exists()


# ---- train --out: checkpoints ---------------------------------------------------------------------------
def test_pruning_removes_only_the_checkpoints_this_run_wrote(tmp_path, folder, capsys):
    out = tmp_path / "r"
    for name in ("checkpoint-1000", "checkpoint-500", "checkpoint-000003-backup", "checkpoint-x"):
        (out / name).mkdir(parents=True)  # a transformers Trainer's, a user's backup, ...
        (out / name / "trainer_state.json").write_text(f"{name}: not this trainer's\n")
    (out / "checkpoint-000000").write_text("a file, not a folder")  # not a step this run reaches
    before = snapshot(out)
    code, err = run(["--data", folder, "--out", out, "--n-colors", 4, "--steps", 8, *TINY, "--keep", 2], capsys)
    assert code == 0, err
    survives(before, out)
    ours = sorted(d for d in os.listdir(out) if checkpoints.CHECKPOINT.fullmatch(d) and d != "checkpoint-000000")
    assert ours == ["checkpoint-000006", "checkpoint-000008"]  # --keep 2 of its own


def test_a_stale_checkpoint_without_latest_is_refused_not_reused(tmp_path, folder, capsys):
    """The old code skipped writing checkpoint-000002 because the folder existed, then reported it."""
    out = tmp_path / "r"
    (out / "checkpoint-000002").mkdir(parents=True)
    (out / "checkpoint-000002" / "model.safetensors").write_bytes(b"an older run's weights")
    before = snapshot(out)
    code, err = run(["--data", folder, "--out", out, *STEPS, *TINY], capsys)
    one_line_error(code, err, "checkpoint-000002", "did not write")
    survives(before, out)
    assert not (out / "latest").exists()


def test_resume_refuses_a_newer_checkpoint_it_did_not_write(tmp_path, folder, capsys):
    out = tmp_path / "r"
    assert run(["--data", folder, "--out", out, *STEPS, *TINY])[0] == 0
    (out / "checkpoint-000004").mkdir()
    (out / "checkpoint-000004" / "notes.txt").write_text("someone else's\n")
    code, err = run(["--data", folder, "--out", out, "--n-colors", 4, "--steps", 4, *TINY, "--resume"], capsys)
    one_line_error(code, err, "checkpoint-000004", "did not write")
    assert (out / "checkpoint-000004" / "notes.txt").read_text() == "someone else's\n"
    assert os.path.basename(checkpoints.latest_checkpoint(str(out))) == "checkpoint-000002"


def test_resumed_runs_prune_their_own_earlier_checkpoints(tmp_path, folder):
    out = tmp_path / "r"
    common = ["--data", folder, "--out", out, "--n-colors", 4, *TINY, "--keep", 1]
    assert run([*common, "--steps", 4])[0] == 0
    (out / "checkpoint-000002-mine").mkdir()
    assert run([*common, "--steps", 6, "--resume"])[0] == 0
    assert sorted(os.listdir(out)) == ["checkpoint-000002-mine", "checkpoint-000006", "latest"]


def test_out_that_is_a_file_is_refused(tmp_path, folder, capsys):
    out = tmp_path / "r"
    out.write_bytes(b"mine")
    one_line_error(*run(["--data", folder, "--out", out, *STEPS, *TINY], capsys), "is a file, not a folder")
    assert out.read_bytes() == b"mine"


# ---- sample --out -----------------------------------------------------------------------------------------
def sample_main(argv, capsys):
    try:
        code = sample.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_file_that_appears_while_sampling_is_not_replaced(tmp_path, capsys, monkeypatch, tiny_model_dir):
    """Two runs with the same --out: both passed the start-up check; the old code's os.replace lost the first."""
    out = tmp_path / "x.png"
    real = sample.image_grid

    def the_other_run_finishes_first(rows):
        out.write_bytes(b"the other run's picture")
        return real(rows)

    monkeypatch.setattr(sample, "image_grid", the_other_run_finishes_first)
    code, stdout, err = sample_main(["--model", tiny_model_dir, "--out", out, "--num-samples", 2, "--no-progress"],
                                    capsys)
    assert code == 0, err
    assert out.read_bytes() == b"the other run's picture"
    assert f"wrote {tmp_path / 'x-1.png'}" in stdout and "appeared while sampling" in stdout
    Image.open(tmp_path / "x-1.png").verify()
    assert sorted(os.listdir(tmp_path)) == ["x-1.png", "x.png"]  # no temporary file left


def test_two_writers_at_once_never_replace_each_other(tmp_path):
    """Eight threads create the same name at once: exactly one wins, the others get FileExistsError."""
    path = tmp_path / "same.png"
    barrier, results = threading.Barrier(8), {}

    def writer(i):
        try:
            with atomic_open(path, replace=False) as f:
                f.write(f"writer {i}".encode())
                barrier.wait()  # every writer holds a finished temporary file before any links it
            results[i] = "won"
        except FileExistsError:
            results[i] = "refused"

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if r == "won"]
    assert len(winners) == 1 and len(results) == 8
    assert path.read_bytes() == f"writer {winners[0]}".encode()
    assert os.listdir(tmp_path) == ["same.png"]  # the losers' temporary files are gone


def test_two_sample_processes_with_the_same_out(tmp_path, tiny_model_dir):
    """Two real runs started together: each one that says "wrote P" has its own P; none is lost."""
    out = tmp_path / "x.png"
    cmd = [sys.executable, "-m", "minigpt_pixels.sample", "--model", str(tiny_model_dir), "--out", str(out),
           "--num-samples", "2", "--no-progress", "--device", "numpy"]
    procs = [subprocess.Popen(cmd + ["--seed", str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in (1, 2)]
    results = [p.communicate() + (p.returncode,) for p in procs]
    written = [o.split()[1].rstrip(":") for o, e, rc in results if rc == 0]
    assert written and len(set(written)) == len(written)  # two winners wrote two names
    for o, e, rc in results:
        assert rc == 0 or "exists; pass --force" in e, e  # a late starter is refused up front
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(w) for w in written)
    for w in written:
        Image.open(w).verify()


def test_out_is_checked_before_sampling(tmp_path, capsys, monkeypatch, tiny_model_dir):
    """The old code sampled to the end, then failed naming its own temporary file."""
    from minigpt_pixels import generation

    def no_sampling(*a, **kw):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(generation, "generate", no_sampling)
    folder = tmp_path / "results"
    folder.mkdir()
    for out, force, message in [(tmp_path / "no" / "such" / "x.png", [], "does not exist"),
                                (folder, ["--force"], "is a folder"),
                                (folder, [], "is a folder"),
                                (tmp_path / "x.foo", [], ".foo is not an image format"),
                                (tmp_path / "x", [], "no suffix is not an image format")]:
        code, _, err = sample_main(["--model", tiny_model_dir, "--out", out, *force, "--no-progress"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["results"] and not os.listdir(folder)  # no DIR.tmp-NNNN.png


def test_the_suffix_decides_the_format(tmp_path, capsys, tiny_model_dir):
    """The old code wrote PNG bytes under a .jpg name."""
    for name, fmt in [("x.jpg", "JPEG"), ("x.bmp", "BMP"), ("x.PNG", "PNG")]:
        code, _, err = sample_main(["--model", tiny_model_dir, "--out", tmp_path / name, "--num-samples", 1,
                                    "--no-progress"], capsys)
        assert code == 0, err
        assert Image.open(tmp_path / name).format == fmt


def test_a_failed_write_leaves_no_temporary_file(tmp_path, capsys, monkeypatch, tiny_model_dir):
    def disk_full(self, fp, format=None, **kw):
        fp.write(b"half a picture")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    code, _, err = sample_main(["--model", tiny_model_dir, "--out", tmp_path / "x.png", "--no-progress"], capsys)
    assert code == 2 and "No space left" in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_force_replaces_only_the_named_file(tmp_path, capsys, tiny_model_dir):
    (tmp_path / "x.png").write_bytes(b"old")
    (tmp_path / "x-1.png").write_bytes(b"keep")
    code, _, err = sample_main(["--model", tiny_model_dir, "--out", tmp_path / "x.png", "--force", "--no-progress"],
                               capsys)
    assert code == 0, err
    Image.open(tmp_path / "x.png").verify()
    assert (tmp_path / "x-1.png").read_bytes() == b"keep" and sorted(os.listdir(tmp_path)) == ["x-1.png", "x.png"]


# ---- a read-only folder -------------------------------------------------------------------------------------
@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder this process cannot write to. Root may write anywhere, so there its permission is the one
    os.access reports (what the commands consult), made to say no."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "mine.txt").write_text("mine\n")
    os.chmod(ro, 0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.path.abspath(p) == str(ro) and
                            mode & os.W_OK else real(p, mode, **kw))
    yield ro
    os.chmod(ro, 0o755)


def test_read_only_folders_are_refused_up_front(tmp_path, read_only, folder, capsys, tiny_model_dir):
    ro = read_only
    code, _, err = sample_main(["--model", tiny_model_dir, "--out", ro / "x.png", "--no-progress"], capsys)
    assert code == 2 and "is not writable" in err and len(err.strip().splitlines()) == 1, err
    one_line_error(*run(["--data", folder, "--out", ro / "run", *STEPS, *TINY], capsys), "is not writable")
    one_line_error(*run(["--data", folder, "--out", ro, *STEPS, *TINY], capsys), "is not writable")
    one_line_error(*run(["--data", folder, "--out", tmp_path / "run", *STEPS, *TINY, "--export", ro], capsys),
                   "is not writable")
    assert sorted(os.listdir(ro)) == ["mine.txt"] and not (tmp_path / "run").exists()
