"""The default model shipped in the package: it loads with both from_pretrained calls, and its
samples look like handwritten digits of many classes to an ordinary classifier trained on the
digits, one that also knows a "not a digit" class (noise and shuffled-pixel digits), so noise does
not count as a digit."""

import json
import os

import numpy as np
import pytest

import minigpt_pixels
from minigpt_pixels import ImageGPTForCausalImageModeling, ImageGPTImageProcessor
from minigpt_pixels.generation import sample_images

NOT_A_DIGIT = 10
N_SAMPLES = 40


def test_default_model_files_are_small_and_in_the_hf_layout():
    files = sorted(os.listdir(minigpt_pixels.DEFAULT_MODEL))
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert name in files
    size = sum(os.path.getsize(os.path.join(minigpt_pixels.DEFAULT_MODEL, f)) for f in files)
    assert size < 5_000_000, f"{size} bytes: the package should stay small"
    config = json.load(open(os.path.join(minigpt_pixels.DEFAULT_MODEL, "config.json")))
    assert config["model_type"] == "imagegpt" and config["architectures"] == ["ImageGPTForCausalImageModeling"]


def test_default_model_loads_with_both_from_pretrained_calls():
    model = ImageGPTForCausalImageModeling.from_pretrained(minigpt_pixels.DEFAULT_MODEL)
    processor = ImageGPTImageProcessor.from_pretrained(minigpt_pixels.DEFAULT_MODEL)
    h, w = processor.size["height"], processor.size["width"]
    assert h * w == model.config.n_positions
    assert len(processor.clusters) == model.config.vocab_size - 1  # one id per palette colour, plus SOS


def digit_classifier(seed=0):
    """An RBF SVM on scikit-learn's digits (features 0..16) plus an 11th class, "not a digit": uniform
    noise, digits with their pixels shuffled, and blotchy noise smoothed over neighbouring pixels."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    digits = load_digits()
    x, y = digits.data, digits.target
    n = len(x) // 10 * 2
    noise = rng.uniform(0, 16, (n, 64))
    shuffled = np.array([rng.permutation(row) for row in x[rng.choice(len(x), n)]])
    blobs = rng.uniform(0, 16, (n, 8, 8))
    blobs = (blobs + np.roll(blobs, 1, 1) + np.roll(blobs, 1, 2) + np.roll(blobs, (1, 1), (1, 2))) / 4
    blobs = np.where(blobs > 8, 16.0, 0.0).reshape(n, 64)
    junk = np.concatenate([noise, shuffled, blobs])
    features = np.concatenate([x, junk])
    labels = np.concatenate([y, np.full(len(junk), NOT_A_DIGIT)])
    return SVC(gamma="scale", C=10).fit(features, labels)


def classify(classifier, images):
    """uint8 [N, 8, 8, 3] grey samples -> predicted classes (0..9, or NOT_A_DIGIT)."""
    grey = images[..., 0].astype(np.float64) * (16.0 / 255.0)  # back to the digits' 0..16 scale
    return classifier.predict(grey.reshape(len(images), -1))


@pytest.fixture(scope="module")
def clf():
    return digit_classifier()


def test_the_classifier_rejects_noise(clf):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (50, 8, 8, 1)).repeat(3, axis=-1).astype(np.uint8)
    assert np.mean(classify(clf, noise) == NOT_A_DIGIT) > 0.9


def test_default_model_samples_look_like_many_digits(clf):
    # the pure NumPy device: 40 x 64 tokens take a fraction of a second, with no Numba compile
    model = ImageGPTForCausalImageModeling.from_pretrained(minigpt_pixels.DEFAULT_MODEL).to("numpy")
    processor = ImageGPTImageProcessor.from_pretrained(minigpt_pixels.DEFAULT_MODEL)
    images = sample_images(model, processor, N_SAMPLES, seed=0)  # [N, 8, 8, 3] uint8
    assert images.shape == (N_SAMPLES, 8, 8, 3)
    predicted = classify(clf, images)
    digits = predicted[predicted != NOT_A_DIGIT]
    counts = np.bincount(digits, minlength=10)
    print(f"[samples] {len(digits)}/{N_SAMPLES} look like digits; per class {counts.tolist()}")
    assert len(digits) >= 0.75 * N_SAMPLES, f"only {len(digits)} of {N_SAMPLES} samples look like digits"
    assert np.count_nonzero(counts) >= 5, f"only classes {np.flatnonzero(counts).tolist()} appear"


def test_every_file_of_the_shipped_models_is_package_data():
    """An installed (not editable) package carries only what pyproject's package-data globs name: each
    file under minigpt_pixels/data, the model cards (README.md) included, must match one of them."""
    import fnmatch
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["minigpt_pixels"]
    data = root / "minigpt_pixels" / "data"
    files = [p.relative_to(root / "minigpt_pixels").as_posix() for p in data.rglob("*") if p.is_file()
             and "__pycache__" not in p.parts]
    assert any(f.endswith("README.md") for f in files) and any(f.endswith(".safetensors") for f in files)
    missing = [f for f in files if not any(fnmatch.fnmatchcase(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"
