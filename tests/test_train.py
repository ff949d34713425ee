"""The trainer end to end on tiny runs in a temporary folder: checkpoints, resume, reproducibility,
fine-tuning, and every bad input the command line must refuse with one line."""

import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

from minigpt_pixels import backprop, checkpoints, train
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.weights import load_file, save_file

TINY = ["--n-embd", "8", "--n-layer", "1", "--n-head", "2", "--batch-size", "4", "--no-progress",
        "--eval-every", "2", "--save-every", "2", "--warmup", "1", "--threads", "1"]


def make_folder(root, n=12, size=(4, 4), classes=("a", "b"), seed=0):
    """Grey images in one sub-folder per class: class 0 bright on the left, class 1 on the right."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(n // len(classes)):
            img = rng.integers(0, 60, size).astype(np.uint8)
            if c == 0:
                img[:, : size[1] // 2] += 180
            else:
                img[:, size[1] // 2:] += 180
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data")


def run(argv, capsys=None):
    """main(argv) -> (exit status, stderr); argparse's exits count as statuses."""
    try:
        code = train.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err if capsys else ""
    return code, err


def latest(out):
    return checkpoints.latest_checkpoint(str(out))


def weights(path):
    return {k: np.array(v) for k, v in load_file(os.path.join(path, "model.safetensors")).items()}


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_tiny_digits_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run(["--data", "digits", "--out", out, "--steps", 4, *TINY, "--export", tmp_path / "model"], capsys)
    assert code == 0, err
    ckpt = latest(out)
    assert os.path.basename(ckpt) == "checkpoint-000004"
    assert sorted(os.listdir(ckpt)) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                        "preprocessor_config.json", "trainer_state.json"]
    assert not [d for d in os.listdir(out) if d.startswith(".")]  # no temporary folders left behind
    state = json.load(open(os.path.join(ckpt, "trainer_state.json")))
    assert state["step"] == 4 and [h["step"] for h in state["history"]] == [2, 4]
    assert 0 < state["history"][-1]["val_bits"] < 5  # 16 colours: log2(16) = 4 bits is chance
    assert state["history"][-1]["val_bits"] == pytest.approx(state["history"][-1]["val_nats"] / np.log(2))
    for path in (ckpt, tmp_path / "model"):
        model = ImageGPTForCausalImageModeling.from_pretrained(path)
        processor = ImageGPTImageProcessor.from_pretrained(path)
        assert model.config.vocab_size == 17 and model.config.n_positions == 64
        assert processor.size == {"height": 8, "width": 8} and processor.clusters.shape == (16, 3)
    assert sorted(os.listdir(tmp_path / "model")) == ["config.json", "minigpt-pixels-export.json", "model.safetensors",
                                                      "preprocessor_config.json"]


def test_export_again_replaces_the_model_but_keeps_other_files(tmp_path, folder):
    """The same run (resumed) exports into its earlier export: the model is replaced, the user's additions stay."""
    export, common = tmp_path / "model", ["--data", folder, "--out", tmp_path / "run", "--n-colors", 4, *TINY]
    assert run([*common, "--steps", 2, "--export", export])[0] == 0
    (export / "notes").mkdir()
    (export / "notes" / "log.txt").write_text("a sub-folder of the user's\n")
    (export / "README.md").write_text("how this model was made\n")
    assert run([*common, "--steps", 4, "--resume", "--export", export])[0] == 0
    assert (export / "README.md").read_text() == "how this model was made\n"
    assert (export / "notes" / "log.txt").read_text() == "a sub-folder of the user's\n"
    assert same_weights(export, latest(tmp_path / "run"))  # step 4's weights
    assert not [d for d in os.listdir(export) if d.startswith(".")]


def test_same_seed_same_run_and_resume_is_exact(tmp_path, folder):
    common = ["--data", folder, "--n-colors", 4, "--steps", 6, "--dropout", 0.1, *TINY]
    assert run([*common, "--out", tmp_path / "a"])[0] == 0
    assert run([*common, "--out", tmp_path / "b"])[0] == 0
    assert same_weights(latest(tmp_path / "a"), latest(tmp_path / "b"))
    assert run([*common, "--out", tmp_path / "c", "--seed", 1])[0] == 0
    assert not same_weights(latest(tmp_path / "a"), latest(tmp_path / "c"))
    # a finished run resumed with more --steps goes on (its cosine now spans the new total)
    assert run([*common, "--out", tmp_path / "a", "--resume", "--steps", 8])[0] == 0
    assert os.path.basename(latest(tmp_path / "a")) == "checkpoint-000008"
    assert len([d for d in os.listdir(tmp_path / "a") if d.startswith("checkpoint-")]) == 2  # --keep 2


def test_finetune_reports_accuracy(tmp_path, folder, capsys):
    assert run(["--data", folder, "--n-colors", 4, "--steps", 4, *TINY, "--out", tmp_path / "lm"])[0] == 0
    code, _ = run(["--data", folder, "--finetune-from", latest(tmp_path / "lm"), "--steps", 4,
                   "--batch-size", 4, "--eval-every", 2, "--save-every", 2, "--no-progress",
                   "--out", tmp_path / "clf"], capsys)
    assert code == 0
    ckpt = latest(tmp_path / "clf")
    model = ImageGPTForImageClassification.from_pretrained(ckpt)
    assert model.config.num_labels == 2 and model.config.id2label == {0: "a", 1: "b"}
    assert "lm_head.weight" not in model.params
    state = json.load(open(os.path.join(ckpt, "trainer_state.json")))
    assert 0 <= state["history"][-1]["val_accuracy"] <= 1


# ---- bad input -------------------------------------------------------------------------------------
def one_line_error(code, err, *needles, status=2):
    assert code == status, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    one_line_error(*run(["--data", tmp_path / "empty", "--out", tmp_path / "r", *TINY], capsys), "no images found")
    one_line_error(*run(["--data", tmp_path / "missing", "--out", tmp_path / "r", *TINY], capsys),
                   "no such directory")


def test_unreadable_image(tmp_path, folder, capsys):
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    one_line_error(*run(["--data", folder, "--out", tmp_path / "r", *TINY], capsys), "broken.png")


def test_mixed_sizes(tmp_path, folder, capsys):
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(folder / "b" / "big.png")
    one_line_error(*run(["--data", folder, "--out", tmp_path / "r", "--n-colors", 4, *TINY], capsys),
                   "mixed sizes", "6x6", "--image-size")
    code, err = run(["--data", folder, "--out", tmp_path / "r", "--n-colors", 4, "--image-size", 4,
                     "--steps", 2, *TINY], capsys)
    assert code == 0, err  # resized to one size, they train


def test_batch_larger_than_data(tmp_path, folder, capsys):
    one_line_error(*run(["--data", folder, "--out", tmp_path / "r", *TINY, "--batch-size", 64], capsys),
                   "--batch-size 64", "larger than the training split")


def test_resume_refuses_a_different_config(tmp_path, folder, capsys):
    base = ["--data", folder, "--out", tmp_path / "r", "--n-colors", 4, "--steps", 2]
    assert run([*base, *TINY])[0] == 0
    bigger = [*TINY]
    bigger[1] = "16"  # --n-embd 16 instead of 8
    one_line_error(*run([*base, *bigger, "--resume", "--steps", 4], capsys), "cannot resume", "n_embd=8", "n_embd=16")
    one_line_error(*run([*base, *TINY, "--steps", 4], capsys), "already holds a run", "--resume")
    one_line_error(*run(["--data", folder, "--out", tmp_path / "new", *TINY, "--resume"], capsys), "no checkpoint")
    assert os.path.basename(latest(tmp_path / "r")) == "checkpoint-000002"  # untouched


def test_finetune_needs_labels_and_keeps_the_architecture(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):
        Image.fromarray(np.full((4, 4), 30 * i, np.uint8)).save(flat / f"{i}.png")
    assert run(["--data", flat, "--n-colors", 4, "--steps", 2, *TINY, "--out", tmp_path / "lm"])[0] == 0
    ckpt = latest(tmp_path / "lm")
    one_line_error(*run(["--data", flat, "--finetune-from", ckpt, "--out", tmp_path / "c", "--no-progress"], capsys),
                   "needs labels")
    one_line_error(*run(["--data", flat, "--finetune-from", ckpt, "--n-embd", 32, "--out", tmp_path / "c"], capsys),
                   "--n-embd")


def test_bad_numbers(tmp_path, capsys):
    one_line_error(*run(["--out", tmp_path / "r", "--holdout", 1.5], capsys), "--holdout")
    one_line_error(*run(["--out", tmp_path / "r", "--dropout", 1.0], capsys), "--dropout")
    for threads in (0, 10 ** 20):  # (the second reached BLAS as a C int: a ctypes traceback)
        one_line_error(*run(["--out", tmp_path / "r", "--threads", threads], capsys), "--threads", "between 1 and")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, folder, capsys, monkeypatch):
    real = backprop.causal_lm_value_and_grad
    calls = []

    def poisoned(*a, **kw):
        loss, grads = real(*a, **kw)
        if kw.get("dropout_rng") is None:  # evaluation (no dropout) calls the same loss: not a training step
            return loss, grads
        calls.append(1)
        return (np.float32(np.nan) if len(calls) == 5 else loss), grads

    monkeypatch.setattr(backprop, "causal_lm_value_and_grad", poisoned)
    out = tmp_path / "r"
    code, err = run(["--data", folder, "--out", out, "--n-colors", 4, "--steps", 8, *TINY], capsys)
    one_line_error(code, err, "loss is nan at step 5", "checkpoint-000004", status=1)
    assert os.path.basename(latest(out)) == "checkpoint-000004"
    ImageGPTForCausalImageModeling.from_pretrained(latest(out))
    assert not [d for d in os.listdir(out) if d.startswith(".")]


def test_ctrl_c_exception_leaves_a_resumable_checkpoint(tmp_path, folder, capsys, monkeypatch):
    real = train.train_step
    calls = []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # before the update: the weights are those after step 3
        return real(*a, **kw)

    monkeypatch.setattr(train, "train_step", interrupted)
    common = ["--data", folder, "--n-colors", 4, "--steps", 6, *TINY]
    code, err = run([*common, "--out", tmp_path / "r"], capsys)
    assert code == 130 and "interrupted at step 3" in err and "--resume" in err
    assert os.path.basename(latest(tmp_path / "r")) == "checkpoint-000003"
    ImageGPTForCausalImageModeling.from_pretrained(latest(tmp_path / "r"))
    monkeypatch.setattr(train, "train_step", real)
    assert run([*common, "--out", tmp_path / "r", "--resume"])[0] == 0
    assert run([*common, "--out", tmp_path / "straight"])[0] == 0
    assert same_weights(latest(tmp_path / "r"), latest(tmp_path / "straight"))


def test_sigint_finishes_the_step_then_saves(tmp_path, folder, capsys, monkeypatch):
    real = train.train_step
    calls = []

    def with_ctrl_c(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C in the middle of step 3
        return real(*a, **kw)

    monkeypatch.setattr(train, "train_step", with_ctrl_c)
    # Ctrl-C as a terminal delivers it: Python's own handler in place. A job started in the background by a
    # non-interactive shell inherits SIGINT ignored, and training then leaves it ignored, as nohup asks
    # (test_train_safety.py covers that case for SIGHUP).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, err = run(["--data", folder, "--n-colors", 4, "--steps", 6, *TINY, "--out", tmp_path / "r"], capsys)
        assert code == 130, err
        assert len(calls) == 3 and os.path.basename(latest(tmp_path / "r")) == "checkpoint-000003"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert "--finetune-from" in text and "default: digits" in text and "default: 0.1" in text


# ---- damaged checkpoints, non-finite weights and learning rates --------------------------------------
def test_lr_that_is_infinite_in_float32_is_refused(tmp_path, capsys):
    """1e39 passes `lr > 0` but is inf in float32: the old code trained and kept an all-NaN checkpoint."""
    one_line_error(*run(["--out", tmp_path / "r", "--lr", "1e39", *TINY], capsys), "--lr 1e+39", "float32")
    one_line_error(*run(["--out", tmp_path / "r", "--lr", "nan", *TINY], capsys), "--lr nan")
    assert not (tmp_path / "r").exists()


def test_weights_are_checked_after_every_update(tmp_path, folder, capsys, monkeypatch):
    """Finite loss and gradients, but an update that overflows: the old code saved it as the last good one."""
    real = train.optim.AdamW.step
    calls = []

    def overflowing(self, params, grads, lr=None):
        real(self, params, grads, lr=lr)
        calls.append(1)
        if len(calls) == 3:
            params["transformer.h.0.mlp.c_fc.weight"][0, 0] = np.inf

    monkeypatch.setattr(train.optim.AdamW, "step", overflowing)
    out = tmp_path / "r"
    code, err = run(["--data", folder, "--out", out, "--n-colors", 4, "--steps", 6, *TINY], capsys)
    one_line_error(code, err, "at step 3", "transformer.h.0.mlp.c_fc.weight", "checkpoint-000002", status=1)
    assert os.path.basename(latest(out)) == "checkpoint-000002"
    assert all(np.isfinite(w).all() for w in weights(latest(out)).values())
    assert [d for d in os.listdir(out) if d.startswith("checkpoint-")] == ["checkpoint-000002"]


def test_resume_from_damaged_files_names_the_file(tmp_path, folder, capsys):
    out = tmp_path / "r"
    common = ["--data", folder, "--out", out, "--n-colors", 4, *TINY]
    assert run([*common, "--steps", 2])[0] == 0
    ckpt = latest(out)
    state_path = os.path.join(ckpt, "trainer_state.json")
    state = open(state_path).read()
    open(state_path, "w").write(state[:len(state) // 2])  # truncated
    one_line_error(*run([*common, "--steps", 4, "--resume"], capsys), "trainer_state.json", "damaged")
    open(state_path, "w").write(state)

    opt_path = os.path.join(ckpt, "optimizer.safetensors")
    tensors = {k: np.array(v) for k, v in load_file(opt_path).items()}
    name = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != name}, opt_path, {"t": "2"})  # a moment missing
    one_line_error(*run([*common, "--steps", 4, "--resume"], capsys), "optimizer.safetensors", name)
    save_file(tensors, opt_path)  # no step count in the metadata
    one_line_error(*run([*common, "--steps", 4, "--resume"], capsys), "optimizer.safetensors", "'t'")
    with open(opt_path, "wb") as f:
        f.write(b"\x08\x00\x00\x00")  # cut short
    one_line_error(*run([*common, "--steps", 4, "--resume"], capsys), "optimizer.safetensors")


def test_resume_from_nan_weights_is_refused(tmp_path, folder, capsys):
    out = tmp_path / "r"
    common = ["--data", folder, "--out", out, "--n-colors", 4, *TINY]
    assert run([*common, "--steps", 2])[0] == 0
    path = os.path.join(latest(out), "model.safetensors")
    w = weights(latest(out))
    w["transformer.wte.weight"][1, 2] = np.nan
    save_file(w, path, {"format": "pt"})
    one_line_error(*run([*common, "--steps", 4, "--resume"], capsys), "transformer.wte.weight", "NaN")


def test_threads_holds_blas_and_the_kernels_to_that_many_and_restores(tmp_path, folder, monkeypatch):
    """--threads N: every library that computes runs on at most N threads while training (BLAS, and Numba's
    threads for the cpu device's training attention), and each gets its own setting back after."""
    import numba
    from threadpoolctl import threadpool_info

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here (NUMBA_NUM_THREADS=1): nothing to hold back")
    seen = []

    def fake_run(args, mode):
        seen.append((numba.get_num_threads(), {p["num_threads"] for p in threadpool_info()}))
        return 0
    monkeypatch.setattr(train, "run", fake_run)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        assert run(["--data", folder, "--out", tmp_path / "out"] + TINY) == (0, "")
        assert seen == [(1, {1})] and numba.get_num_threads() == 2
        assert run(["--data", folder, "--out", tmp_path / "out", "--threads", "2"] + TINY[:-2]) == (0, "")
        assert seen[1][0] == 2 and numba.get_num_threads() == 2
    finally:
        numba.set_num_threads(saved)
