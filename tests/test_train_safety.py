"""The trainer under a careless user and a hostile machine: SIGTERM and SIGHUP, a save killed half-way,
the umask, unreadable folders, and numbers refused before anything is loaded (issue 23)."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from minigpt_pixels import checkpoints, datasets, train

from .test_train import TINY, make_folder, one_line_error, run

STEPS = ["--n-colors", 4, "--steps", 2]


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data")


# ---- signals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_save_a_checkpoint_like_ctrl_c(tmp_path, folder, signame):
    """`kill`, `timeout`, Slurm's pre-emption, `docker stop` (SIGTERM) and a closed terminal (SIGHUP): the old
    code died at once, losing every step since the last checkpoint. In a process of its own: the old code's
    death must not take the test runner with it."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from minigpt_pixels import train
        real, calls = train.train_step, []
        def signalled(*a, **kw):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.{signame})  # in the middle of step 3
            return real(*a, **kw)
        train.train_step = signalled
        sys.exit(train.main(sys.argv[1:]))
    """)
    out = tmp_path / "r"
    argv = ["--data", folder, "--n-colors", 4, "--steps", 6, *TINY, "--save-every", 100, "--out", out]
    proc = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    signum = getattr(signal, signame)
    assert proc.returncode == 128 + signum, (proc.returncode, proc.stderr)
    assert f"interrupted at step 3 ({signame}); saved" in proc.stderr and "--resume" in proc.stderr, proc.stderr
    assert os.path.basename(checkpoints.latest_checkpoint(str(out))) == "checkpoint-000003"
    assert not [d for d in os.listdir(out) if d.startswith(".")]


def test_a_signal_ignored_at_start_stays_ignored():
    """Under nohup SIGHUP is ignored: the trainer must not start catching it."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with train.StopRequest():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    finally:
        signal.signal(signal.SIGHUP, previous)


# ---- a save killed half-way, and the umask ------------------------------------------------------------
def stale_temporary(out, step=2):
    """What a save killed by SIGKILL leaves: a half-written .checkpoint-NNNNNN.tmp-XXXX folder."""
    tmp = out / f".checkpoint-{step:06d}.tmp-k1ll3d_x"
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(b"half a checkpoint")
    return tmp


def test_stale_temporary_folders_are_removed_at_start_and_resume(tmp_path, folder, capsys):
    """The old code never removed them, not even on a successful --resume."""
    out = tmp_path / "r"
    tmp = stale_temporary(out)
    (out / ".checkpoint-backup").mkdir()  # a user's, not of this trainer's naming: kept
    (out / ".checkpoint-000002.tmp-x.txt").write_text("a file, not a folder this trainer makes")
    code, err = run(["--data", folder, "--out", out, *STEPS, *TINY], capsys)
    assert code == 0, err
    assert not tmp.exists()
    assert (out / ".checkpoint-backup").is_dir() and (out / ".checkpoint-000002.tmp-x.txt").is_file()
    tmp = stale_temporary(out, step=4)
    assert run(["--data", folder, "--out", out, "--n-colors", 4, "--steps", 4, *TINY, "--resume"])[0] == 0
    assert not tmp.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoints_and_exports_follow_the_umask(tmp_path, folder, umask):
    """The old code's checkpoint folders were mode 0700 whatever the umask (tempfile.mkdtemp's mode)."""
    previous = os.umask(umask)
    try:
        assert run(["--data", folder, "--out", tmp_path / "r", *STEPS, *TINY, "--export", tmp_path / "m"])[0] == 0
    finally:
        os.umask(previous)
    ckpt = checkpoints.latest_checkpoint(str(tmp_path / "r"))
    assert stat.S_IMODE(os.stat(ckpt).st_mode) == 0o777 & ~umask
    for path in (tmp_path / "m", *(tmp_path / "m").iterdir(), *(os.path.join(ckpt, n) for n in os.listdir(ckpt))):
        want = (0o777 if os.path.isdir(path) else 0o666) & ~umask
        assert stat.S_IMODE(os.stat(path).st_mode) == want, path


# ---- --data never skips a folder ----------------------------------------------------------------------
@pytest.fixture
def unreadable(monkeypatch):
    """make(path): a folder this process cannot list. Root can list anything, so there os.scandir (what
    os.walk lists folders with) is made to refuse it as the kernel would."""
    made = []

    def make(path):
        os.chmod(path, 0)
        made.append(path)
        if os.geteuid() == 0:
            real = os.scandir
            refused = {os.path.abspath(p) for p in made}

            def scandir(p="."):
                if os.path.abspath(p) in refused:
                    raise PermissionError(13, "Permission denied", os.fspath(p))
                return real(p)

            monkeypatch.setattr(os, "scandir", scandir)
        return path

    yield make
    for path in made:
        os.chmod(path, 0o755)


def test_an_unreadable_class_folder_is_an_error_naming_it(tmp_path, unreadable, capsys):
    """Three class folders, one unreadable: the old code trained a two-class classifier, exit 0."""
    data = make_folder(tmp_path / "data", classes=("a", "b", "c"))
    unreadable(data / "b")
    one_line_error(*run(["--data", data, "--out", tmp_path / "r", *STEPS, *TINY], capsys),
                   "cannot read the folder", str(data / "b"), "Permission denied")
    assert not (tmp_path / "r").exists()


def test_finetuning_with_one_of_two_class_folders_unreadable_names_the_folder(tmp_path, folder, unreadable, capsys):
    """The old code said "problem_type needs num_labels > 1"."""
    assert run(["--data", folder, "--out", tmp_path / "lm", *STEPS, *TINY])[0] == 0
    base = checkpoints.latest_checkpoint(str(tmp_path / "lm"))
    unreadable(folder / "a")
    one_line_error(*run(["--data", folder, "--finetune-from", base, "--out", tmp_path / "c", "--no-progress"], capsys),
                   "cannot read the folder", str(folder / "a"))


def test_finetuning_on_one_class_says_so(tmp_path, folder, capsys):
    assert run(["--data", folder, "--out", tmp_path / "lm", *STEPS, *TINY])[0] == 0
    base = checkpoints.latest_checkpoint(str(tmp_path / "lm"))
    one_class = make_folder(tmp_path / "one", classes=("a",))
    one_line_error(*run(["--data", one_class, "--finetune-from", base, "--out", tmp_path / "c", "--no-progress"],
                        capsys), "two classes or more", "'a'")


def test_files_that_are_not_images_are_named_not_skipped_silently(tmp_path, folder, capsys):
    (folder / "a" / "IMG_0001.heic").write_bytes(b"a photo in a format PIL cannot read")
    (folder / "b" / ".thumbnails").mkdir()
    assert train.main([str(a) for a in ["--data", folder, "--out", tmp_path / "r", *STEPS, *TINY]]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "skipped" in x]
    assert len(line) == 1 and "2 file(s) or folder(s)" in line[0], line
    assert os.path.join("a", "IMG_0001.heic") in line[0] and os.path.join("b", ".thumbnails") in line[0]


def test_a_folder_linked_into_itself_is_an_error_not_a_hang(tmp_path, folder, capsys):
    os.symlink(folder, folder / "a" / "loop")
    one_line_error(*run(["--data", folder, "--out", tmp_path / "r", *STEPS, *TINY], capsys), "loop")


def test_a_linked_class_folder_is_read(tmp_path, folder):
    """os.walk does not follow links by default: the old code skipped a linked class folder silently."""
    elsewhere = make_folder(tmp_path / "elsewhere", classes=("c",))
    os.symlink(elsewhere / "c", folder / "c")
    data = datasets.load_folder(str(folder))
    assert data.class_names == ["a", "b", "c"] and len(data.images) == 6 + 6 + 12


# ---- numbers refused before anything is loaded ----------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [(["--seed", "-1"], "--seed -1"), (["--split-seed", "-1"], "--split-seed -1"),
                                          (["--image-size", "-1"], "--image-size -1"),
                                          (["--image-size", "0"], "--image-size 0")])
def test_negative_seeds_and_sizes_name_the_argument_before_loading(tmp_path, folder, capsys, monkeypatch, argv, needle):
    """The old code loaded the data first, then blamed the palette, the first image or n_positions."""
    def no_loading(*a, **kw):
        raise AssertionError("loaded data before checking the arguments")

    monkeypatch.setattr(datasets, "find_images", no_loading)
    monkeypatch.setattr(datasets, "load_digits_data", no_loading)
    for data in (folder, "digits"):
        one_line_error(*run(["--data", data, "--out", tmp_path / "r", *TINY, *argv], capsys), needle, "out of range")
    assert not (tmp_path / "r").exists()


# ---- one loss -----------------------------------------------------------------------------------------
def test_evaluate_reports_the_loss_train_step_minimises(tmp_path, folder, monkeypatch):
    assert run(["--data", folder, "--out", tmp_path / "r", *STEPS, *TINY])[0] == 0
    model = train.ImageGPTForCausalImageModeling.from_pretrained(checkpoints.latest_checkpoint(str(tmp_path / "r")))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (6, 16))
    x[:, 0] = model.config.sos_token_id
    y = rng.integers(0, 4, (6, 16))
    seen = []
    real = train.loss_and_grads
    monkeypatch.setattr(train, "loss_and_grads", lambda *a, **kw: seen.append(1) or real(*a, **kw))
    nats = train.evaluate(model, x, y, batch=6)["nats"]
    assert seen, "evaluate did not call train_step's loss"
    assert np.float32(nats) == real(model, x, y)[0]


def test_header_sizes_follow_the_exif_orientation(tmp_path):
    """A phone photo stored 6 wide and 4 high with orientation 6 (turn 90 degrees) is shown 4 wide, 6 high:
    the mixed-size check and the training size must see it as transformers' processor does."""
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: turned 90 degrees
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "plain.jpg")
    assert datasets.image_size_of(str(tmp_path / "phone.jpg")) == (6, 4)
    assert datasets.image_size_of(str(tmp_path / "plain.jpg")) == (4, 6)
