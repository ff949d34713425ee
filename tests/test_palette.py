"""palette.py: k-means against scikit-learn, the quantizer against brute force, ids back to colours.

Photo pixels come from scikit-learn's sample photos (china.jpg, flower.jpg), normalised to
[-1, 1] exactly as the processor does.
"""

import numpy as np
import pytest

import minigpt_pixels.palette as palette
from minigpt_pixels.palette import dequantize, fit_palette, inertia, load_palette, palette_colors, quantize
from minigpt_pixels.processor import pixels_from_images


@pytest.fixture(scope="module")
def photo_pixels():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    return pixels_from_images(list(sklearn_datasets.load_sample_images().images))  # [546560, 3]


def sample(pixels, n, seed=0):
    return pixels[np.random.default_rng(seed).choice(len(pixels), n, replace=False)]


def brute_force_ids(pixels, clusters):
    """Nearest cluster by exact float64 differences: the reference for `quantize`."""
    d = np.sum((pixels[:, None, :].astype(np.float64) - clusters[None].astype(np.float64)) ** 2, axis=-1)
    return np.argmin(d, axis=1)


# --- fit_palette -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_palette_inertia_within_3_percent_of_sklearn(photo_pixels, seed):
    from sklearn.cluster import KMeans

    x = sample(photo_pixels, 20_000, seed)
    ours = inertia(x, fit_palette(x, 64, seed=seed))
    theirs = KMeans(n_clusters=64, n_init=1, random_state=seed).fit(x).inertia_
    print(f"[kmeans] k=64 n=20000 seed={seed}: ours {ours:.4f} sklearn {theirs:.4f} ratio {ours / theirs:.4f}")
    assert ours <= 1.03 * theirs


@pytest.mark.slow
def test_fit_palette_k512_within_3_percent_of_sklearn(photo_pixels):
    from sklearn.cluster import KMeans

    x = sample(photo_pixels, 50_000, seed=2)
    ours = inertia(x, fit_palette(x, 512, seed=2))
    theirs = KMeans(n_clusters=512, n_init=1, random_state=2).fit(x).inertia_
    print(f"[kmeans] k=512 n=50000: ours {ours:.4f} sklearn {theirs:.4f} ratio {ours / theirs:.4f}")
    assert ours <= 1.03 * theirs


def test_fit_palette_shape_dtype_and_determinism(photo_pixels):
    x = sample(photo_pixels, 5_000).astype(np.float64)  # float64 in, float32 out
    a = fit_palette(x, 16, seed=7)
    assert a.shape == (16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, fit_palette(x, 16, seed=7))
    np.testing.assert_array_equal(a, fit_palette(x, 16, seed=np.random.default_rng(7)))  # a Generator seeds alike
    assert not np.array_equal(a, fit_palette(x, 16, seed=8))
    assert len(np.unique(a, axis=0)) == 16


def test_fit_palette_converges_to_a_lloyd_fixed_point(photo_pixels):
    # With tol=0 it stops only when no pixel changes cluster, so every colour is the mean of its pixels.
    x = sample(photo_pixels, 3_000)
    c = fit_palette(x, 12, seed=0, tol=0, max_iter=1000)
    ids = quantize(x, c)
    counts = np.bincount(ids, minlength=12)
    assert counts.min() > 0
    means = np.stack([np.bincount(ids, weights=x[:, j], minlength=12) for j in range(3)], axis=1) / counts[:, None]
    np.testing.assert_allclose(c, means, rtol=0, atol=1e-6)


def test_fit_palette_max_iter_stops_early(photo_pixels):
    x = sample(photo_pixels, 3_000)
    one = fit_palette(x, 12, seed=0, max_iter=1)
    assert inertia(x, one) > inertia(x, fit_palette(x, 12, seed=0, tol=0, max_iter=1000))


def test_empty_cluster_reseeded_at_farthest_pixel(monkeypatch):
    # Two tight blobs and one far pixel; seed one centre where no pixel is, so its cluster is empty.
    rng = np.random.default_rng(0)
    blobs = [rng.normal(-0.5, 0.01, (200, 3)), rng.normal(0.5, 0.01, (200, 3)), [[0.9, -0.9, 0.9]]]
    x = np.concatenate(blobs).astype(np.float32)
    bad_init = np.array([[-0.5] * 3, [0.5] * 3, [5.0, 5.0, 5.0]], np.float32)
    monkeypatch.setattr(palette, "_kmeans_plus_plus", lambda pixels, k, rng: bad_init)
    c = fit_palette(x, 3, seed=0)
    assert np.all(np.abs(c) <= 1), "the empty centre stayed outside the data"
    assert any(np.allclose(row, [0.9, -0.9, 0.9]) for row in c), "the empty centre was not moved to the farthest pixel"
    assert np.bincount(quantize(x, c), minlength=3).min() > 0


def test_minibatch_reaches_a_reasonable_inertia(photo_pixels):
    x = sample(photo_pixels, 100_000)
    full = inertia(x, fit_palette(x, 32, seed=0))
    mini_palette = fit_palette(x, 32, seed=0, batch_size=2048, max_iter=200)
    mini = inertia(x, mini_palette)
    print(f"[kmeans] mini-batch inertia {mini:.3f} vs full {full:.3f} ({mini / full:.3f})")
    assert mini_palette.shape == (32, 3) and mini_palette.dtype == np.float32
    assert mini <= 1.10 * full
    np.testing.assert_array_equal(mini_palette, fit_palette(x, 32, seed=0, batch_size=2048, max_iter=200))


def test_minibatch_seeds_from_all_pixels_when_its_sample_lacks_colours():
    # 61 distinct colours, 60 of them rare: a 300-pixel seeding sample misses most of them.
    rng = np.random.default_rng(0)
    rare = rng.uniform(-1, 1, (60, 3)).astype(np.float32)
    x = np.concatenate([np.zeros((100_000, 3), np.float32), rare])
    c = fit_palette(x, 50, seed=0, batch_size=100, max_iter=5)
    assert c.shape == (50, 3) and len(np.unique(c, axis=0)) == 50


@pytest.mark.parametrize("batch_size", [None, 64])
def test_more_colours_than_distinct_pixels_is_an_error(batch_size):
    x = np.repeat(np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3), 100, axis=0)  # 5 distinct pixels
    with pytest.raises(ValueError, match=r"n_colors=6 is larger than the number of distinct pixels \(5\)"):
        fit_palette(x, 6, seed=0, batch_size=batch_size)
    c = fit_palette(x, 5, seed=0, batch_size=batch_size)
    np.testing.assert_allclose(np.unique(c, axis=0), np.unique(x, axis=0), atol=1e-6)


@pytest.mark.parametrize(
    "pixels, kwargs, message",
    [
        (np.zeros(30, np.float32), {}, r"pixels must be a non-empty \(N, D\) array, got shape \(30,\)"),
        (np.zeros((0, 3), np.float32), {}, r"non-empty \(N, D\) array, got shape \(0, 3\)"),
        (np.array([[0.1, np.nan, 0.2]] * 10, np.float32), {}, "pixels contain NaN or infinite values"),
        (np.zeros((10, 3), np.float32), {"n_colors": 0}, "n_colors must be a positive integer, got 0"),
        (np.zeros((10, 3), np.float32), {"n_colors": 2.5}, "n_colors must be a positive integer, got 2.5"),
        (np.zeros((10, 3), np.float32), {"batch_size": 0}, "batch_size must be a positive integer or None, got 0"),
        (np.zeros((10, 3), np.float32), {"max_iter": 0}, "max_iter must be >= 1"),
    ],
)
def test_fit_palette_bad_input(pixels, kwargs, message):
    kwargs = {"n_colors": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit_palette(pixels, **kwargs)


# --- quantize / dequantize ---------------------------------------------------------------------


def test_quantize_matches_brute_force_any_shape(rng):
    clusters = rng.uniform(-1, 1, (512, 3)).astype(np.float32)
    pixels = rng.uniform(-1, 1, (2, 37, 41, 3)).astype(np.float32)
    ids = quantize(pixels, clusters)
    assert ids.shape == (2, 37, 41) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids.reshape(-1), brute_force_ids(pixels.reshape(-1, 3), clusters))
    assert quantize(pixels[0, 0, 0], clusters).shape == ()  # one pixel -> a scalar id


def test_quantize_resolves_near_ties_exactly(rng):
    # Pixels a hair (1e-7) off the midpoint of two colours: the float32 expansion cannot order them.
    clusters = rng.uniform(-1, 1, (64, 3)).astype(np.float32)
    a, b = clusters[rng.integers(0, 64, 4000)], clusters[rng.integers(0, 64, 4000)]
    pixels = ((a + b) / 2 + rng.choice([-1e-7, 1e-7], (4000, 1)) * (b - a)).astype(np.float32)
    reference = brute_force_ids(pixels, clusters)
    fast, _ = palette._nearest(pixels, clusters)  # the float32 expansion alone
    assert np.count_nonzero(fast != reference) > 0, "the test no longer exercises near ties"
    np.testing.assert_array_equal(quantize(pixels, clusters), reference)


def test_quantize_chunking_does_not_change_ids(rng, monkeypatch):
    clusters = rng.uniform(-1, 1, (100, 3)).astype(np.float32)
    pixels = rng.uniform(-1, 1, (5000, 3)).astype(np.float32)
    whole = quantize(pixels, clusters)
    monkeypatch.setattr(palette, "_CHUNK_ELEMENTS", 100 * 7)  # 7 rows per chunk, a ragged last chunk
    np.testing.assert_array_equal(quantize(pixels, clusters), whole)


@pytest.mark.parametrize(
    "clusters, message",
    [
        (np.zeros((512, 4), np.float32), r"pixels have 3 channels but the clusters have 4 \(shape \(512, 4\)\)"),
        (np.zeros(3, np.float32), r"clusters must be a non-empty \(K, D\) array of numbers, got shape \(3,\)"),
        (np.zeros((0, 3), np.float32), r"got shape \(0, 3\)"),
        (np.array([[0.0, np.inf, 0.0]], np.float32), "clusters contain NaN or infinite values"),
        ([[0.0, 0.0, 0.0], [1.0, 1.0]], r"clusters must be a non-empty \(K, D\) array of numbers"),
        (np.array([["a", "b", "c"]]), r"array of numbers, got shape \(1, 3\) dtype <U1"),
    ],
)
def test_quantize_bad_clusters(clusters, message):
    with pytest.raises(ValueError, match=message):
        quantize(np.zeros((4, 3), np.float32), clusters)


def test_quantize_bad_pixels():
    clusters = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="pixels contain NaN"):
        quantize(np.full((4, 3), np.nan, np.float32), clusters)
    with pytest.raises(ValueError, match="pixels have 4 channels but the clusters have 3"):
        quantize(np.zeros((4, 4), np.float32), clusters)


def test_dequantize_matches_the_transformers_docs_formula(rng):
    clusters = load_palette()
    ids = rng.integers(0, len(clusters), (3, 8, 8))
    # transformers' docs: np.rint(127.5 * (clusters[s] + 1.0)).astype(np.uint8), clusters read from JSON (float64)
    expected = np.rint(127.5 * (clusters.astype(np.float64)[ids] + 1.0)).astype(np.uint8)
    out = dequantize(ids, clusters)
    assert out.shape == (3, 8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_dequantize_rounds_in_float64_like_the_docs():
    # float32 colours next to half levels: 127.5 * (c + 1) rounds one way in float32, the other in float64
    half = ((np.arange(255) + 0.5) / 127.5 - 1).astype(np.float32)
    values = np.concatenate([np.nextafter(half, np.float32(-2)), half, np.nextafter(half, np.float32(2))])
    clusters = np.repeat(values[:, None], 3, axis=1)  # [765, 3] greys
    in_float32 = np.rint(np.float32(127.5) * (clusters + np.float32(1))).astype(np.uint8)
    in_float64 = np.rint(127.5 * (clusters.astype(np.float64) + 1.0)).astype(np.uint8)
    assert np.any(in_float32 != in_float64), "the test no longer exercises float32 rounding"
    np.testing.assert_array_equal(dequantize(np.arange(len(clusters)), clusters), in_float64)


def test_dequantize_bad_ids():
    clusters = np.zeros((16, 3), np.float32)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 16\).*got values in \[0, 16\].*SOS"):
        dequantize(np.array([0, 16]), clusters)
    with pytest.raises(ValueError, match=r"got values in \[-1, 3\]"):
        dequantize(np.array([-1, 3]), clusters)
    with pytest.raises(ValueError, match="ids must be integers, got dtype float64"):
        dequantize(np.array([0.0, 1.0]), clusters)


def test_round_trip_reproduces_palette_colours_exactly():
    clusters = load_palette()
    ids = np.arange(len(clusters))
    np.testing.assert_array_equal(quantize(clusters, clusters), ids)
    # the uint8 colours, rescaled and normalised as the processor does, map back to their own ids
    colours = palette_colors(clusters)  # [K, 3] uint8
    again = pixels_from_images(colours[None])  # [K, 3] in [-1, 1]
    np.testing.assert_array_equal(quantize(again, clusters), ids)
    np.testing.assert_array_equal(dequantize(quantize(again, clusters), clusters), colours)


def test_inertia_is_the_sum_of_squared_distances(rng):
    clusters = rng.uniform(-1, 1, (20, 3)).astype(np.float32)
    pixels = rng.uniform(-1, 1, (1000, 3)).astype(np.float32)
    d = np.sum((pixels[:, None].astype(np.float64) - clusters[None]) ** 2, axis=-1).min(axis=1)
    assert inertia(pixels, clusters) == pytest.approx(d.sum(), rel=1e-5)


# --- the shipped palette -----------------------------------------------------------------------


def test_shipped_palette():
    clusters = load_palette("photos512")
    assert clusters.shape == (512, 3) and clusters.dtype == np.float32
    assert np.all(np.abs(clusters) <= 1) and len(np.unique(clusters, axis=0)) == 512
    assert "photos512" in palette.available_palettes()
    with pytest.raises(ValueError, match="no shipped palette 'imagenet'; available: .*photos512"):
        load_palette("imagenet")
