"""`train --init-from DIR`: a new run (fresh optimizer, schedule from step 0) from an existing model's
weights, config and palette; as opposed to --resume (continues a run) and --finetune-from (classifier)."""

import json
import os

import numpy as np
import pytest

from minigpt_pixels import checkpoints
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels.weights import load_metadata, save_file

from .test_train import TINY, make_folder, one_line_error, run, same_weights, weights

# the optimisation and run options of TINY, without its architecture (which --init-from fixes)
RUN = ["--batch-size", "4", "--no-progress", "--eval-every", "2", "--save-every", "2", "--warmup", "1",
       "--threads", "1"]


@pytest.fixture
def base(tmp_path):
    """A 2-step pre-trained model, exported, and the folder it trained on."""
    folder = make_folder(tmp_path / "data")
    assert run(["--data", folder, "--out", tmp_path / "lm", "--n-colors", 4, "--steps", 2, *TINY,
                "--export", tmp_path / "base"])[0] == 0
    return tmp_path / "base", folder


def test_init_from_starts_a_new_run_from_the_weights(tmp_path, base, capsys):
    base, folder = base
    out = tmp_path / "r"
    # a learning rate too small to move a float32 weight: the result is the source's weights exactly
    code, err = run(["--data", folder, "--init-from", base, "--out", out, "--steps", 4, *RUN, "--lr", "1e-30",
                     "--weight-decay", 0, "--dropout", 0], capsys)
    assert code == 0, err
    ckpt = checkpoints.latest_checkpoint(str(out))
    assert os.path.basename(ckpt) == "checkpoint-000004"  # its own steps, from 0
    assert same_weights(ckpt, base)
    state = json.load(open(os.path.join(ckpt, "trainer_state.json")))
    assert state["init_from"] == str(base) and [h["step"] for h in state["history"]] == [2, 4]
    assert load_metadata(os.path.join(ckpt, "optimizer.safetensors"))["t"] == "4"  # a fresh AdamW
    source = ImageGPTForCausalImageModeling.from_pretrained(base)
    model = ImageGPTForCausalImageModeling.from_pretrained(ckpt)
    assert model.config.n_embd == source.config.n_embd and model.config.vocab_size == source.config.vocab_size
    assert model.config.resid_pdrop == 0 and source.config.resid_pdrop == 0.1  # --dropout overrides the source's
    np.testing.assert_array_equal(ImageGPTImageProcessor.from_pretrained(ckpt).clusters,
                                  ImageGPTImageProcessor.from_pretrained(base).clusters)  # the source's palette


def test_init_from_trains_on_from_the_source(tmp_path, base, capsys):
    """A real learning rate moves the weights; --resume continues the run exactly (given --init-from again)."""
    base, folder = base
    common = ["--data", folder, "--init-from", base, *RUN]
    assert run([*common, "--out", tmp_path / "a", "--steps", 4])[0] == 0
    a = checkpoints.latest_checkpoint(str(tmp_path / "a"))
    assert not same_weights(a, base)
    assert run([*common, "--out", tmp_path / "b", "--steps", 2])[0] == 0
    assert run([*common, "--out", tmp_path / "b", "--steps", 4, "--resume"])[0] == 0
    assert same_weights(checkpoints.latest_checkpoint(str(tmp_path / "b")), a)
    one_line_error(*run(["--data", folder, *RUN, "--out", tmp_path / "b", "--steps", 6, "--resume"], capsys),
                   "--init-from", str(base))


def test_init_from_refusals(tmp_path, base, capsys):
    base, folder = base
    common = ["--data", folder, "--out", tmp_path / "r", *RUN]
    one_line_error(*run([*common, "--init-from", base, "--n-embd", 16], capsys), "--n-embd", "--init-from")
    one_line_error(*run([*common, "--init-from", base, "--finetune-from", base], capsys), "--init-from",
                   "--finetune-from")
    one_line_error(*run([*common, "--init-from", tmp_path / "missing"], capsys), "--init-from", "missing")
    assert run(["--data", folder, "--finetune-from", base, "--out", tmp_path / "clf", "--steps", 2, *RUN])[0] == 0
    classifier = checkpoints.latest_checkpoint(str(tmp_path / "clf"))
    one_line_error(*run([*common, "--init-from", classifier], capsys), "lm_head.weight", "classifier")
    w = weights(base)
    w["transformer.h.0.attn.c_attn.weight"][0, 0] = np.inf
    save_file(w, os.path.join(base, "model.safetensors"), {"format": "pt"})
    one_line_error(*run([*common, "--init-from", base], capsys), "transformer.h.0.attn.c_attn.weight",
                   "NaN or infinite")
    assert not (tmp_path / "r").exists()
