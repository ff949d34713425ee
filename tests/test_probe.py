"""The linear probe: features are transformers' hidden states mean-pooled, the probe is scikit-learn's
logistic regression scored on held-out data, and on the default model it reads the digits."""

import json
import pathlib
import re

import numpy as np
import pytest

import minigpt_pixels
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification, ImageGPTModel
from minigpt_pixels.probe import (ProbeCurve, ProbeResult, compare_probes, cross_validated_probe, extract_features,
                                  linear_probe, plot_probe_curves, probe_by_layer, shifted_digits, untrained_like,
                                  with_sos)

from .conftest import GOLDEN_DIR, report

TOL = 1e-4  # as the golden model tests
MODELS = GOLDEN_DIR / "models"
PROBE_JSON = pathlib.Path(__file__).resolve().parents[1] / "docs" / "images" / "probe.json"


@pytest.mark.parametrize("name,cls", [("causal_small", ImageGPTForCausalImageModeling),
                                      ("classify_3", ImageGPTForImageClassification)])
def test_features_are_transformers_hidden_states_mean_pooled(name, cls):
    model = cls.from_pretrained(MODELS / name)
    g = np.load(MODELS / name / "outputs.npz")
    n_states = model.config.n_layer + 1
    for layer in range(n_states):
        feats = extract_features(model, g["input_ids"], layer)
        assert feats.dtype == np.float32 and feats.shape == (len(g["input_ids"]), model.config.n_embd)
        report(f"{name} layer {layer} features", feats, g[f"hidden_states.{layer}"].mean(axis=1), TOL)
    # the last entry is after ln_f: the classifier's own pooled input
    if cls is ImageGPTForImageClassification:
        logits = extract_features(model, g["input_ids"], -1) @ model.params["score.weight"].T
        report(f"{name} pooled last layer @ score", logits, g["logits"], TOL)


def test_many_layers_at_once_batches_and_negative_layers():
    model = ImageGPTForCausalImageModeling.from_pretrained(MODELS / "causal_small")
    ids = np.load(MODELS / "causal_small" / "outputs.npz")["input_ids"]
    ids = np.concatenate([ids, ids[:, ::-1]])  # 4 sequences
    stacked = extract_features(model, ids, [0, 2, -1], batch_size=3)
    assert stacked.shape == (3, 4, model.config.n_embd)
    np.testing.assert_array_equal(stacked[0], extract_features(model, ids, 0))
    np.testing.assert_allclose(stacked[1], extract_features(model, ids, 2), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(stacked[1], stacked[2])  # -1 is the last of n_layer + 1 = 3 entries


def test_bare_model_works_too():
    cfg = ImageGPTConfig(vocab_size=9, n_positions=12, n_embd=16, n_layer=2, n_head=2)
    ids = np.random.default_rng(0).integers(0, 9, (5, 12))
    feats = extract_features(ImageGPTModel(cfg, seed=0), ids, 1)
    assert feats.shape == (5, 16) and np.all(np.isfinite(feats))


def test_with_sos_prepends_and_cuts_to_n_positions():
    cfg = ImageGPTConfig(vocab_size=17, n_positions=4, n_embd=8, n_layer=1, n_head=2)
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(with_sos(ids, cfg), [[16, 1, 2, 3], [16, 5, 6, 7]])  # the last pixel is only a target
    np.testing.assert_array_equal(with_sos(ids[:, :2], cfg), [[16, 1, 2], [16, 5, 6]])
    model = ImageGPTForCausalImageModeling(cfg, seed=0)
    np.testing.assert_array_equal(extract_features(model, ids, 1, add_sos=True),
                                  extract_features(model, with_sos(ids, cfg), 1))


@pytest.mark.parametrize("layer", [3, -4, 1.0, "1", True, None])
def test_bad_layer_is_a_clear_error(layer):
    model = ImageGPTForCausalImageModeling.from_pretrained(MODELS / "causal_small")
    with pytest.raises(ValueError, match="layer must be an integer in \\[-3, 2\\]"):
        extract_features(model, np.zeros((1, 4), np.int64), layer)


def test_bad_inputs_are_clear_errors():
    model = ImageGPTForCausalImageModeling.from_pretrained(MODELS / "causal_small")
    with pytest.raises(ValueError, match="input_ids must have shape"):
        extract_features(model, np.zeros(4, np.int64), 0)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(model, np.zeros((1, 4), np.int64), 0, batch_size=0)


# ---- the probe -----------------------------------------------------------------------------------
def blobs(n=300, d=6, seed=0):
    """Three well-separated classes: a linear probe must get them all."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return rng.normal(size=(n, d)) + 6 * np.eye(d)[y], y


def test_separable_classes_are_read_perfectly():
    x, y = blobs()
    result = linear_probe(x, y)
    assert isinstance(result, ProbeResult)
    assert result.accuracy == 1.0 and result.train_accuracy == 1.0
    assert result.n_train == 240 and result.n_test == 60  # test_size 0.2, stratified
    assert "accuracy=1.0000" in repr(result)
    assert result.classifier.predict(x[:3]).tolist() == y[:3].tolist()


def test_random_labels_are_read_at_chance():
    x, _ = blobs(n=600)
    y = np.random.default_rng(1).integers(0, 3, 600)
    assert linear_probe(x, y).accuracy < 0.5


def test_explicit_test_set_and_seeded_split():
    x, y = blobs()
    a = linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert a.n_train == 200 and a.n_test == 100 and a.accuracy == 1.0
    r1, r2 = linear_probe(x, y, seed=3, test_size=0.5), linear_probe(x, y, seed=3, test_size=0.5)
    assert r1.n_test == 150 and r1.accuracy == r2.accuracy


@pytest.mark.parametrize("args,match", [
    ((np.zeros(5), np.zeros(5)), "2-D array"),
    ((np.zeros((5, 2)), np.zeros(4)), "labels must have shape"),
    ((np.full((4, 2), np.nan), np.arange(4)), "NaN"),
    ((np.zeros((10, 2)), np.zeros(10, int), np.zeros((2, 2))), "both test_features and test_labels"),
    ((np.zeros((4, 2)), np.zeros(4, int), np.zeros((2, 3)), np.zeros(2, int)), "do not match"),
    ((np.random.rand(6, 2), np.zeros(6, int), np.random.rand(2, 2), np.zeros(2, int)), "single class"),
])
def test_probe_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        linear_probe(*args)


def test_probe_by_layer_on_a_random_model():
    cfg = ImageGPTConfig(vocab_size=9, n_positions=10, n_embd=16, n_layer=2, n_head=2)
    model = ImageGPTForCausalImageModeling(cfg, seed=0)
    rng = np.random.default_rng(0)
    y = np.arange(90) % 2
    ids = rng.integers(0, 4, (90, 10)) + 4 * y[:, None]  # class 1 uses colours 4..7: easy to read
    results = probe_by_layer(model, ids, y)
    assert list(results) == [0, 1, 2]
    assert all(r.accuracy > 0.9 for r in results.values())
    assert list(probe_by_layer(model, ids, y, layers=[-1])) == [-1]


# ---- cross-validated curves: trained vs untrained vs raw pixels ---------------------------------
def test_cross_validation_tests_every_image_once_on_shared_folds():
    x, y = blobs(n=300)
    noise = np.random.default_rng(2).normal(size=x.shape)
    curve = cross_validated_probe(np.stack([noise, x]), y, n_folds=5, layers=[3, 7], name="blobs")
    assert isinstance(curve, ProbeCurve) and curve.layers == [3, 7] and curve.scores.shape == (2, 5)
    assert curve.scores[1].tolist() == [1.0] * 5  # separable on every fold
    assert curve.mean[0] < 0.6 and curve.best_layer == 7  # the noise layer reads near chance (1/3)
    np.testing.assert_allclose(curve.std, np.std(curve.scores, axis=1, ddof=1))
    np.testing.assert_array_equal(curve.difference(7, 3), curve.scores[1] - curve.scores[0])
    assert "'blobs', 5 folds, 3: " in repr(curve)
    # each fold tests 300 / 5 = 60 images, so every accuracy is a multiple of 1/60
    np.testing.assert_allclose(curve.scores * 60, np.round(curve.scores * 60), atol=1e-9)
    # one [N, F] array is one layer; the same seed gives the same folds, another seed others
    alone = cross_validated_probe(noise, y, n_folds=5)
    assert alone.layers == [0]
    np.testing.assert_array_equal(alone.scores[0], curve.scores[0])
    assert not np.array_equal(cross_validated_probe(noise, y, n_folds=5, seed=1).scores[0], alone.scores[0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(features=np.zeros(6)), "features must be"),
    (dict(labels=np.zeros(5)), "labels must have shape"),
    (dict(n_folds=1), "n_folds must be an integer >= 2"),
    (dict(n_folds=2.0), "n_folds must be an integer >= 2"),
    (dict(n_folds=31), "rarest class"),
    (dict(layers=[0, 1]), "layers names 2 rows"),
])
def test_cross_validation_bad_inputs(kwargs, match):
    x, y = blobs(n=90)  # 30 of each class
    args = {"features": x, "labels": y, **kwargs}
    with pytest.raises(ValueError, match=match):
        cross_validated_probe(args.pop("features"), args.pop("labels"), **args)


def test_untrained_like_is_the_models_step_zero():
    cfg = ImageGPTConfig(vocab_size=9, n_positions=10, n_embd=16, n_layer=2, n_head=2)
    model = ImageGPTForCausalImageModeling(cfg, seed=5)
    fresh = untrained_like(model, seed=5)
    assert type(fresh) is type(model) and fresh.config == model.config
    assert all(np.array_equal(fresh.params[k], v) for k, v in model.params.items())
    other = untrained_like(model, seed=6)
    assert not np.array_equal(other.params["transformer.h.0.attn.c_attn.weight"],
                              model.params["transformer.h.0.attn.c_attn.weight"])


def small_task(n=120):
    """Class 1 uses colours 4..7, class 0 colours 0..3: an easy task for every feature set."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    return rng.integers(0, 4, (n, 10)) + 4 * y[:, None], y


def test_compare_probes_gives_three_curves_on_the_same_folds():
    cfg = ImageGPTConfig(vocab_size=9, n_positions=10, n_embd=16, n_layer=2, n_head=2)
    trained = ImageGPTForCausalImageModeling(cfg, seed=1)  # stands in for a trained model
    ids, y = small_task()
    curves = compare_probes(trained, ids, y, raw_pixels=ids.reshape(-1, 2, 5) / 8, n_folds=3)
    assert list(curves) == ["trained", "untrained", "raw pixels"]
    assert curves["trained"].layers == curves["untrained"].layers == [0, 1, 2]
    assert curves["raw pixels"].layers == [0] and curves["raw pixels"].mean[0] > 0.9
    # "untrained" is the same probe on untrained_like(model, 0)'s features, fitted on the same folds
    feats = extract_features(untrained_like(trained, 0), ids, [0, 1, 2], add_sos=True)
    np.testing.assert_array_equal(curves["untrained"].scores,
                                  cross_validated_probe(feats, y, n_folds=3, layers=[0, 1, 2]).scores)
    assert not np.array_equal(extract_features(trained, ids, 1, add_sos=True), feats[1])
    assert list(compare_probes(trained, ids, y, untrained=False, layers=[2], n_folds=3)) == ["trained"]
    given = compare_probes(trained, ids, y, untrained=trained, layers=[-1], n_folds=3)
    assert given["trained"].layers == [-1]
    np.testing.assert_array_equal(given["untrained"].scores, given["trained"].scores)


def test_both_recipes_come_from_one_forward_pass_and_worker_processes_change_no_number(monkeypatch):
    from minigpt_pixels.probe import cache_sized_batch

    cfg = ImageGPTConfig(vocab_size=9, n_positions=10, n_embd=16, n_layer=2, n_head=2)
    model = ImageGPTForCausalImageModeling(cfg, seed=1)
    ids, y = small_task()
    calls = []
    forward = type(model).transformer
    monkeypatch.setattr(type(model), "transformer", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    both = extract_features(model, ids, [0, 2], add_sos=True, features=("paper", "mean"), batch_size=60)
    assert len(calls) == 2  # 120 images in batches of 60: one pass for both recipes
    for recipe in ("paper", "mean"):
        np.testing.assert_array_equal(both[recipe], extract_features(model, ids, [0, 2], add_sos=True,
                                                                     features=recipe, batch_size=60))
    assert set(extract_features(model, ids, 1, features=["mean"])) == {"mean"}  # a list is a tuple of recipes
    curves = compare_probes(model, ids, y, raw_pixels=ids / 8, n_folds=3, features=("paper", "mean"))
    alone = compare_probes(model, ids, y, raw_pixels=ids / 8, n_folds=3, features="mean", n_jobs=2)
    assert list(curves) == ["paper", "mean"] and list(curves["mean"]) == ["trained", "untrained", "raw pixels"]
    for name in alone:  # the same numbers, serial or on 2 worker processes
        np.testing.assert_array_equal(curves["mean"][name].scores, alone[name].scores)
    assert curves["paper"]["raw pixels"] is curves["mean"]["raw pixels"]  # no recipe touches the pixels
    # the default batch keeps one layer's attention weights [b, H, T, T] near 2 MiB, at most 256 images
    assert cache_sized_batch(cfg, 10) == 256 and cache_sized_batch(ImageGPTConfig(n_head=4), 101) == 12


@pytest.mark.parametrize("kwargs,match", [
    (dict(features=("paper", "paper")), "tuple of distinct ones"), (dict(features=()), "features must be one of"),
    (dict(features=("paper", "raw")), "features must be one of"), (dict(n_jobs=0), "n_jobs must be"),
    (dict(n_jobs=10 ** 9), "n_jobs must be"), (dict(n_jobs=2.0), "n_jobs must be"),
])
def test_bad_recipes_and_job_counts_are_refused_before_any_forward_pass(kwargs, match, monkeypatch):
    cfg = ImageGPTConfig(vocab_size=9, n_positions=10, n_embd=16, n_layer=2, n_head=2)
    model = ImageGPTForCausalImageModeling(cfg, seed=1)
    monkeypatch.setattr(type(model), "transformer", lambda *a, **k: pytest.fail("a forward pass ran"))
    with pytest.raises(ValueError, match=match):
        compare_probes(model, *small_task(), n_folds=3, **kwargs)


def test_plot_draws_error_bars_and_the_raw_pixel_band():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = blobs(n=150)
    curves = {"trained": cross_validated_probe(np.stack([x, x[::-1]]), y, n_folds=3, name="trained"),
              "raw pixels": cross_validated_probe(x, y, n_folds=3, name="raw pixels")}
    ax = plot_probe_curves(curves, title="blobs")
    labels = sorted(ax.get_legend_handles_labels()[1])
    assert labels[0].startswith("raw pixels (1.000 ± 0.000)") and labels[1] == "trained (best: layer 0, 1.000 ± 0.000)"
    assert len(ax.containers) == 1 and len(ax.containers[0].lines[2]) == 1  # one curve, with its error bars
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0\nemb", "1\n+ln_f"]
    assert ax.get_title() == "blobs"
    plt.close(ax.figure)


def test_margin_plot_draws_each_layer_s_folds_against_the_last():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minigpt_pixels.probe import plot_layer_margins

    x, y = blobs(n=150)
    noise = np.random.default_rng(2).normal(size=x.shape)
    curve = cross_validated_probe(np.stack([noise, x, noise]), y, n_folds=3, name="trained")
    ax = plot_layer_margins(curve, title="margins")
    from matplotlib.collections import PathCollection

    dots = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]  # a scatter a layer, not the last
    assert len(dots) == 2 and [d[:, 0].tolist() for d in dots] == [[0] * 3, [1] * 3]
    np.testing.assert_allclose(dots[1][:, 1], curve.difference(1, 2))  # the separable layer beats the noise
    assert (dots[1][:, 1] > 0).all() and ax.get_title() == "margins"
    plt.close(ax.figure)


def test_shifted_digits_paste_each_digit_whole_at_a_random_place():
    from minigpt_pixels.datasets import load_digits_data

    digits = np.stack(load_digits_data().images)
    images, labels = shifted_digits(canvas=10, copies=2, seed=0)
    assert images.shape == (2 * 1797, 10, 10) and images.dtype == np.uint8 and labels.shape == (2 * 1797,)
    np.testing.assert_array_equal(images.reshape(len(images), -1).sum(1), np.tile(digits.reshape(1797, -1).sum(1), 2))
    for i in (0, 1797, 2000):  # the digit sits whole somewhere, blank around it
        hits = [(r, c) for r in range(3) for c in range(3)
                if np.array_equal(images[i, r:r + 8, c:c + 8], digits[i % 1797])]
        assert hits
    moved = {tuple(np.argwhere(im.sum(0))[[0, -1], 0]) for im in images[:200]}
    assert len(moved) > 3  # not always the same place
    np.testing.assert_array_equal(shifted_digits(10, 1, seed=0)[0], shifted_digits(10, 1, seed=0)[0])
    np.testing.assert_array_equal(shifted_digits(8)[0], digits)  # no room to move: the plain digits
    with pytest.raises(ValueError, match="canvas must be >= 8"):
        shifted_digits(canvas=7)


# ---- the shipped models (the numbers of notebook 4 and the README) -------------------------------
def stored_curve(setting, name):
    return np.array(json.loads(PROBE_JSON.read_text())[setting]["curves"][name]["mean"])


@pytest.mark.parametrize("setting,header", [
    ("digits", "| layer | 0 (embeddings) | 1 | 2 | 3 | 4 (+ ln_f) | raw pixels |"),
    ("shifted_digits", "| layer | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 (+ ln_f) |"),
])
def test_the_readme_s_mean_recipe_tables_are_probe_json_s(setting, header):
    """The README's two tables of transformers' recipe are docs/images/probe.json's numbers (which the two
    tests below check a fresh probe against), each cell mean ± std to 3 decimals."""
    lines = [line.strip() for line in (PROBE_JSON.parents[2] / "README.md").read_text().splitlines()]
    curves = json.loads(PROBE_JSON.read_text())[setting]["curves"]
    at = lines.index(header)
    for row, name in zip(lines[at + 2:at + 4], ("trained", "untrained")):
        cells = re.findall(r"(\d\.\d{3}) ± (\d\.\d{3})", row)
        expected = [(f"{m:.3f}", f"{s:.3f}") for m, s in zip(curves[name]["mean"], curves[name]["std"])]
        if name == "trained" and "raw pixels" in header:
            expected.append(tuple(f"{curves['raw pixels'][k][0]:.3f}" for k in ("mean", "std")))
        assert row.startswith(f"| {name} |") and cells == expected, f"README's {setting} {name} row: {row}"


def test_default_model_probe_reads_the_digits():
    from minigpt_pixels.processor import ImageGPTImageProcessor
    from minigpt_pixels.datasets import load_digits_data

    model = ImageGPTForCausalImageModeling.from_pretrained(minigpt_pixels.DEFAULT_MODEL)
    processor = ImageGPTImageProcessor.from_pretrained(minigpt_pixels.DEFAULT_MODEL)
    data = load_digits_data()
    ids = processor(data.images)["input_ids"]
    trained = compare_probes(model, ids, data.labels, untrained=False, n_jobs=-1)["trained"]
    untrained = compare_probes(untrained_like(model), ids, data.labels, untrained=False, layers=[-1])["trained"]
    print("probe accuracy by layer:", np.round(trained.mean, 3), "untrained, last layer:", untrained.mean.round(3))
    assert len(trained.layers) == model.config.n_layer + 1
    assert trained.mean[1:].min() > 0.85  # far above the 0.1 of chance: the blocks learned what digits are
    assert trained.mean[1:].min() > trained.mean[0] + 0.5  # and more than the pooled embeddings hold
    gain = trained.scores[-1] - untrained.scores[0]  # the same folds: pre-training's gain, fold by fold
    assert gain.min() > 0.05, gain

    # the README's numbers (docs/images/probe.json) are these: regenerate them when the model changes
    one_image = 1 / (len(data.labels) // 5)  # another BLAS may flip an image on the boundary, no more
    assert trained.mean == pytest.approx(stored_curve("digits", "trained"), abs=one_image), \
        "run python scripts/make_readme_images.py (and scripts/run_notebooks.py)"


@pytest.mark.slow
def test_shifted_digits_model_probe_is_the_readmes():
    from minigpt_pixels.probe import SHIFTED_DIGITS_MODEL
    from minigpt_pixels.processor import ImageGPTImageProcessor

    model = ImageGPTForCausalImageModeling.from_pretrained(SHIFTED_DIGITS_MODEL)
    processor = ImageGPTImageProcessor.from_pretrained(SHIFTED_DIGITS_MODEL)
    images, labels = shifted_digits(canvas=10, copies=1, seed=1)
    curves = compare_probes(model, processor(list(images))["input_ids"], labels, raw_pixels=images / 255.0,
                            untrained=False, n_jobs=-1)
    trained, pixels = curves["trained"], curves["raw pixels"]
    print("shifted digits, probe accuracy by layer:", np.round(trained.mean, 3), "raw pixels", pixels.mean.round(3))
    assert trained.mean[1:].min() > pixels.mean[0]  # every block beats raw pixels on this task
    one_image = 1 / (len(labels) // 5)
    assert trained.mean == pytest.approx(stored_curve("shifted_digits", "trained"), abs=one_image), \
        "run python scripts/make_readme_images.py (and scripts/run_notebooks.py)"
    assert pixels.mean == pytest.approx(stored_curve("shifted_digits", "raw pixels"), abs=one_image)
