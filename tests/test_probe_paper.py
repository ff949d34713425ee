"""The paper's probe: features are layer_norm(h^l) with block l's own ln_1 weight, mean-pooled (ln_f's
output for the last layer), checked against transformers' own modules; the probe's regularisation is
chosen per layer on an inner split; bad probe inputs are one-line errors; the command line prints the
trained / untrained / raw-pixel table and writes what it is asked to, nothing else."""

import contextlib
import json

import numpy as np
import pytest
from PIL import Image

from minigpt_pixels import DEFAULT_MODEL
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.model import ImageGPTForCausalImageModeling
from minigpt_pixels.probe import (C_GRID, choose_C, colour_histogram, cross_validated_probe, extract_features,
                                  linear_probe, probe_by_layer)
from minigpt_pixels.probe.cli import main
from minigpt_pixels.processor import ImageGPTImageProcessor

from .conftest import GOLDEN_DIR, report

TOL = 1e-4
CAUSAL = GOLDEN_DIR / "models" / "causal_small"


def test_paper_features_are_transformers_ln_1_of_each_block_mean_pooled():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.ImageGPTForCausalImageModeling.from_pretrained(CAUSAL).eval()
    ids = np.load(CAUSAL / "outputs.npz")["input_ids"]
    ours = ImageGPTForCausalImageModeling.from_pretrained(CAUSAL)
    n = ours.config.n_layer
    with torch.no_grad():
        hidden = hf(torch.tensor(ids), output_hidden_states=True).hidden_states  # n + 1 of [B, T, C]
        expected = [hf.transformer.h[l].ln_1(hidden[l]).mean(1).numpy() for l in range(n)]  # block l's input, normed
        expected.append(hidden[n].mean(1).numpy())  # already after ln_f
    feats = extract_features(ours, ids, list(range(n + 1)), features="paper")  # [n + 1, B, C]
    assert feats.dtype == np.float32
    for l in range(n + 1):
        report(f"paper features, layer {l}", feats[l], expected[l], TOL)
    mean = extract_features(ours, ids, list(range(n + 1)))
    assert not np.allclose(mean[0], feats[0], atol=1e-3)  # the recipes differ below the top ...
    np.testing.assert_array_equal(mean[n], feats[n])  # ... and agree on the last layer
    np.testing.assert_array_equal(extract_features(ours, ids, -1, features="paper"), feats[n])


def test_bad_features_recipe_is_a_clear_error():
    model = ImageGPTForCausalImageModeling.from_pretrained(CAUSAL)
    with pytest.raises(ValueError, match="features must be one of 'mean', 'paper', got 'ln_1'"):
        extract_features(model, np.zeros((1, 4), np.int64), 0, features="ln_1")


def noisy_blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return rng.normal(size=(n, 20)) + 0.6 * np.eye(3)[y] @ rng.normal(size=(3, 20)), y


def test_C_is_chosen_on_an_inner_split_of_the_training_images_only():
    x, y = noisy_blobs()
    scores = [linear_probe(x, y, test_size=0.2, seed=0, C=c).accuracy for c in C_GRID]
    assert choose_C(x, y) == C_GRID[int(np.argmax(scores))]
    curve = cross_validated_probe(np.stack([x, x[::-1]]), y, n_folds=4, C="tuned")
    assert curve.C.shape == (2, 4) and set(curve.C.ravel()) <= set(C_GRID)
    fixed = cross_validated_probe(x, y, n_folds=4, C=0.1)
    np.testing.assert_array_equal(fixed.C, np.full((1, 4), 0.1))
    # the choice never sees a fold's test images: changing them does not change it
    from sklearn.model_selection import StratifiedKFold

    fit, test = next(StratifiedKFold(4, shuffle=True, random_state=0).split(x, y))
    poisoned = x.copy()
    poisoned[test] = np.random.default_rng(5).normal(size=poisoned[test].shape) * 100
    assert cross_validated_probe(poisoned, y, n_folds=4, C="tuned").C[0, 0] == curve.C[0, 0]


@pytest.mark.parametrize("C,match", [("best", "C must be a positive number"), (0, "C must be a positive"),
                                     ([1.0, -1.0], "positive candidates"), ([], "C must be")])
def test_bad_C_is_a_clear_error(C, match):
    x, y = noisy_blobs()
    with pytest.raises(ValueError, match=match):
        cross_validated_probe(x, y, C=C)


@pytest.mark.parametrize("kwargs,match", [
    (dict(test_size=0), "test_size must be a fraction strictly between 0 and 1, got 0"),
    (dict(test_size=1), "test_size must be a fraction strictly between 0 and 1, got 1"),
    (dict(test_size=1.5), "test_size must be"),
    (dict(labels=np.r_[np.zeros(9, int), 1]), "class 1 has a single image"),
    (dict(test_size=0.05), "leaves 1 test and 9 training images"),
])
def test_probe_split_errors_name_the_argument(kwargs, match):
    args = {"features": np.random.default_rng(0).normal(size=(10, 3)), "labels": np.arange(10) % 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        linear_probe(args.pop("features"), args.pop("labels"), **args)


def test_probe_by_layer_checks_the_split_before_any_forward_pass():
    cfg = ImageGPTConfig(vocab_size=9, n_positions=10, n_embd=16, n_layer=2, n_head=2)
    model = ImageGPTForCausalImageModeling(cfg, seed=0)
    calls = []
    model.transformer = lambda *a, **k: calls.append(1)
    with pytest.raises(ValueError, match="class 3 has a single image"):
        probe_by_layer(model, np.zeros((7, 10), int), np.r_[np.zeros(3, int), np.ones(3, int), 3])
    assert not calls


def test_colour_histogram_is_what_pooling_makes_of_the_pixels():
    ids = np.array([[0, 0, 2, 1], [3, 3, 3, 3]])
    np.testing.assert_array_equal(colour_histogram(ids, 4), [[0.5, 0.25, 0.25, 0], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="palette ids in \\[0, 3\\)"):
        colour_histogram(ids, 3)


# ---- the command line ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-block model with the default model's 8 x 8, 16-grey processor, and a folder of two classes:
    bright top halves vs bright bottom halves (a probe reads them easily)."""
    root = tmp_path_factory.mktemp("probe_cli")
    cfg = ImageGPTConfig(vocab_size=17, n_positions=64, n_embd=16, n_layer=2, n_head=2)
    ImageGPTForCausalImageModeling(cfg, seed=3).save_pretrained(root / "model")
    ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    for label in ("top", "bottom"):
        (root / "data" / label).mkdir(parents=True)
        for i in range(15):
            im = rng.integers(0, 60, (8, 8)).astype(np.uint8)
            if label == "top":
                im[:4] += 180
            else:
                im[4:] += 180
            Image.fromarray(im).save(root / "data" / label / f"{i}.png")
    return root


def test_cli_prints_the_table_and_writes_json_and_plot(tiny, capsys):
    out_json, out_png = tiny / "probe.json", tiny / "probe.png"
    assert main(["--model", str(tiny / "model"), "--data", str(tiny / "data"), "--folds", "3", "--jobs", "2",
                 "--json", str(out_json), "--plot", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert "2 blocks of width 16; 30 images" in text and "paper features" in text
    assert "layer  trained          untrained" in text and "raw pixels: " in text and "raw pixels, pooled: " in text
    r = json.loads(out_json.read_text())
    assert r["features"] == "paper" and r["folds"] == 3 and r["C"] == "tuned"
    assert r["trained"]["layers"] == [0, 1, 2] and np.array(r["trained"]["scores"]).shape == (3, 3)
    assert set(np.ravel(r["trained"]["C"])) <= set(C_GRID)
    assert r["raw pixels"]["mean"][0] > 0.9  # the halves are read off the pixels
    assert f"best layer {r['best_layer']} of 2" in text and r["best_minus_last"]["n_folds"] == 3
    assert out_png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv,match", [
    (["--features", "ln_1"], "invalid choice: 'ln_1'"),
    (["--folds", "1"], "--folds: must be an integer >= 2"),
    (["--C", "-2"], "--C: must be a positive number or 'tuned'"),
    (["--data", "/no/such/folder"], "no such directory"),
    (["--json", "EXISTING"], "exists; pass --force"),
    (["--plot", "/no/such/dir/p.png"], "--plot /no/such/dir/p.png: no such directory"),
    (["--jobs", "0"], "--jobs: expected a number of processes from 1 to this machine's"),
    (["--jobs", "1000000000"], "--jobs: expected a number of processes from 1 to this machine's"),
    (["--jobs", "two"], "--jobs: expected a number of processes"),
])
def test_cli_bad_arguments_are_one_line_errors(tiny, capsys, argv, match):
    existing = tiny / "existing.json"
    existing.write_text("keep me")
    argv = [a.replace("EXISTING", str(existing)) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tiny / "model"), "--data", str(tiny / "data"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and len([line for line in err if "error" in line]) == 1
    assert existing.read_text() == "keep me"


def test_cli_refuses_a_folder_that_is_not_a_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path)])
    assert "not a model directory (no config.json)" in capsys.readouterr().err


def test_shifted_digits_can_say_where_each_digit_was_pasted():
    from minigpt_pixels.probe import shifted_digits

    images, labels, offsets = shifted_digits(canvas=10, copies=1, seed=1, return_offsets=True)
    plain, plain_labels = shifted_digits(canvas=10, copies=1, seed=1)
    np.testing.assert_array_equal(images, plain)
    np.testing.assert_array_equal(labels, plain_labels)
    assert offsets.shape == (len(images), 2) and offsets.min() >= 0 and offsets.max() <= 2
    for im, (r, c) in zip(images[:50], offsets[:50]):
        outside = im.copy()
        outside[r:r + 8, c:c + 8] = 0
        assert not outside.any()  # nothing outside the pasted 8 x 8 box


def test_pool_from_averages_only_the_later_positions():
    model = ImageGPTForCausalImageModeling.from_pretrained(CAUSAL)
    ids = np.load(CAUSAL / "outputs.npz")["input_ids"]
    hidden = model.transformer(ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(extract_features(model, ids, 1, pool_from=2), hidden[1][:, 2:].mean(1), atol=1e-6)
    late = extract_features(model, ids, [0, 2], features="paper", pool_from=2)
    np.testing.assert_allclose(late[1], hidden[2][:, 2:].mean(1), atol=1e-6)  # the last layer: ln_f's output
    with pytest.raises(ValueError, match="pool_from must be an integer in \\[0, "):
        extract_features(model, ids, 0, pool_from=ids.shape[1])


def test_cli_keeps_the_user_s_files_when_a_write_fails(tiny, capsys, monkeypatch):
    """--force replaces an existing --json / --plot file only with a whole new one: a write that fails half
    way (here the PNG encoder, as a full disk would) is a one-line error naming the file, and the user's
    old file is byte for byte as it was, with no temporary file left beside it."""
    import matplotlib.figure

    out_json, out_png = tiny / "kept.json", tiny / "kept.png"
    out_json.write_text("the user's numbers")
    out_png.write_bytes(b"the user's picture")

    def half_written(self, f, **kw):  # what savefig does on a full disk, given a file or a path
        with contextlib.nullcontext(f) if hasattr(f, "write") else open(f, "wb") as out:
            out.write(b"\x89PNG half")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written)
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tiny / "model"), "--data", str(tiny / "data"), "--folds", "2", "--C", "1",
              "--json", str(out_json), "--plot", str(out_png), "--force"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"error: {out_png}: No space left on device")
    assert out_png.read_bytes() == b"the user's picture"
    assert json.loads(out_json.read_text())["folds"] == 2  # --force: the finished json replaced the old one
    assert not [p.name for p in tiny.iterdir() if p.name.endswith(".tmp")]
