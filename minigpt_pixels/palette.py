"""Palettes: k-means colour clusters, pixels to palette ids, and ids back to RGB.

iGPT never sees RGB values. Each pixel, normalised to [-1, 1], becomes the id of its nearest
palette colour (512 colours for the OpenAI checkpoints), found by k-means on pixels in that same
[-1, 1] space. `fit_palette` fits a palette, `quantize` maps pixels to ids, `dequantize` maps ids
back to uint8 RGB, and `load_palette` reads a palette shipped with the package.

Shapes: N pixels, D channels (3 for RGB), K palette colours. Everything stays float32; the two
deliberate exceptions (float64 cluster sums in k-means, an exact float64 re-check of near ties in
`quantize`) are commented where they happen.
"""

import glob
import json
import os

import numpy as np
from threadpoolctl import threadpool_limits

PALETTE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# Distance-matrix entries held at once: 2**20 float32 = 4 MiB, which keeps each chunk in cache
# (measured 2-3x faster than 16k-row chunks) and memory bounded however large the image.
_CHUNK_ELEMENTS = 2**20


def _check_pixels(pixels, name="pixels"):
    """Any array-like [N, D] -> float32 [N, D], refusing NaN/inf."""
    x = np.asarray(pixels)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must hold numbers, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def _sq_dist_to(x_t, points):
    """Squared distances computed directly, so a pixel equal to a point gives exactly 0: [D, N], [M, D] -> [M, N]."""
    d = np.zeros((len(points), x_t.shape[1]), np.float32)
    for j in range(len(x_t)):
        d += (x_t[j] - points[:, j, None]) ** 2  # [M, N]
    return d


def _kmeans_plus_plus(x, k, rng):
    """Greedy k-means++ seeding (scikit-learn's variant): [N, D] -> [k', D] with k' <= k.

    Each new centre is the best (lowest total potential) of 2 + log(k) pixels drawn with
    probability proportional to their squared distance to the nearest centre so far. A pixel that
    equals a centre has probability 0, so the centres are distinct pixels; when every pixel equals a
    centre the seeding stops early and k' is the number of distinct pixels.
    """
    n_trials = 2 + int(np.log(k))
    x_t = np.ascontiguousarray(x.T)  # [D, N] rows, so each channel is read contiguously
    centres = [x[rng.integers(len(x))]]
    closest = _sq_dist_to(x_t, centres[0][None])[0]  # [N] squared distance to the nearest centre
    while len(centres) < k:
        cdf = np.cumsum(closest, dtype=np.float64)  # float64: a float32 running sum of 1e6 terms drifts
        if cdf[-1] == 0:
            break
        # side="right" never lands on a zero-probability pixel; the clip only guards r * total rounding up to total
        picks = np.searchsorted(cdf, rng.random(n_trials) * cdf[-1], side="right").clip(max=len(x) - 1)
        trial = np.minimum(closest, _sq_dist_to(x_t, x[picks]))  # [n_trials, N] potential with each candidate
        best = int(np.argmin(trial.sum(axis=1)))
        centres.append(x[picks[best]])
        closest = trial[best]
    return np.array(centres, dtype=np.float32)


def _nearest(x, centres, exact=False):
    """Nearest centre by squared Euclidean distance, chunked: [N, D], [K, D] -> ids [N] int64, distances [N] float32.

    ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, and ||x||^2 is the same for every centre, so the argmin
    needs only ||c||^2 - 2 x.c: one matmul once each pixel gets a trailing 1 and each centre a
    trailing ||c||^2. With `exact`, rows whose best two distances are closer than the rounding error
    of that float32 expansion are re-ranked exactly in float64 (see `quantize`).
    """
    c_aug = np.vstack([-2 * centres.T, np.sum(centres**2, axis=1)[None]])  # [D+1, K]
    # The expansion's rounding error is a few eps times ||x||^2 + max ||c||^2; 32 eps is a safe bound.
    margin_scale = 32 * np.finfo(np.float32).eps
    c2_max = float(np.max(c_aug[-1]))
    ids = np.empty(len(x), np.int64)
    dist = np.empty(len(x), np.float32)
    rows = max(1, _CHUNK_ELEMENTS // len(centres))
    # These skinny matmuls are memory-bound: BLAS threads only add synchronisation (4-10x slower on
    # a busy two-core machine), so, as scikit-learn's KMeans does, they run on one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, len(x), rows):
            xs = x[start : start + rows]  # [n, D]
            d = np.hstack([xs, np.ones((len(xs), 1), np.float32)]) @ c_aug  # [n, K] = ||c||^2 - 2 x.c
            best = np.argmin(d, axis=1)  # [n]
            d_best = d[np.arange(len(xs)), best]  # [n]
            x2 = np.sum(xs**2, axis=1)  # [n]
            # add ||x||^2 back; rounding can leave a tiny negative where x sits on a centre
            dist_best = np.maximum(d_best + x2, 0)
            if exact:
                near = np.count_nonzero(d <= (d_best + margin_scale * (x2 + c2_max))[:, None], axis=1) > 1  # [n]
                if near.any():
                    diff = xs[near, None, :].astype(np.float64) - centres.astype(np.float64)  # [m, K, D]
                    d64 = np.sum(diff**2, axis=-1)  # [m, K]
                    best[near] = np.argmin(d64, axis=1)
                    dist_best[near] = np.min(d64, axis=1)
            ids[start : start + rows] = best
            dist[start : start + rows] = dist_best
    return ids, dist


def _cluster_sums(x, ids, k):
    """Pixels per cluster and their sums: [N, D], [N] -> counts [K] int64, sums [K, D] float64.

    float64 is bincount's only dtype for weights, and what keeps the mean of a million pixels exact
    to float32.
    """
    sums = np.stack([np.bincount(ids, weights=x[:, j], minlength=k) for j in range(x.shape[1])], axis=1)
    return np.bincount(ids, minlength=k), sums


def lloyd_step(pixels, centres, exact=False):
    """One Lloyd iteration of k-means: float32 [N, D] pixels, [K, D] centres -> the new centres [K, D].

    Each pixel goes to its nearest centre (squared Euclidean distance, the lowest id on a tie; with
    `exact`, near ties are settled in float64 as `quantize` does), and each centre moves to the mean
    of its pixels. A centre no pixel chose moves to the pixel farthest from its own nearest centre:
    with several such centres, the first gets the farthest pixel, the next the second farthest, ...
    `fit_palette` repeats this step; the k-means classroom exercise asks for exactly this function.
    """
    k = len(centres)
    ids, dist = _nearest(pixels, centres, exact=exact)  # [N], [N]
    counts, sums = _cluster_sums(pixels, ids, k)  # [K], [K, D]
    new = centres.copy()
    filled = counts > 0
    new[filled] = sums[filled] / counts[filled, None]  # [K, D] means, rounded to float32
    empty = np.flatnonzero(~filled)
    if len(empty):  # re-seed at the pixels worst served by their centres, the worst first
        worst = np.argpartition(dist, -len(empty))[-len(empty):]
        new[empty] = pixels[worst[np.argsort(-dist[worst], kind="stable")]]
    return new


def fit_palette(pixels, n_colors, seed=None, max_iter=300, tol=1e-4, batch_size=None):
    """Fit a palette of `n_colors` colours to `pixels` by k-means: [N, D] -> [n_colors, D] float32.

    Pixels are in the model's [-1, 1] space (see `processor.pixels_from_images`); D is 3 for RGB.
    `seed` (int, None or np.random.Generator) fixes every random choice, so a seed gives the same
    palette every time.

    1. Seed the centres with greedy k-means++ (the best of 2 + log(k) candidates per centre, as
       scikit-learn does).
    2. Lloyd iterations: assign each pixel to its nearest centre, move each centre to the mean of its
       pixels. A centre left with no pixels is re-seeded at the pixel farthest from its own centre.
       Stop when the summed squared centre shift is at most `tol` times the pixels' mean per-channel
       variance (scikit-learn's criterion; a shift of 0 means the assignment stopped changing), or
       after `max_iter` iterations.

    With `batch_size`, mini-batch k-means (Sculley 2010) for millions of pixels instead: k-means++
    runs on a sample of 3 * max(batch_size, n_colors) pixels, then each of at most `max_iter` steps
    draws `batch_size` pixels and moves each centre towards the mean of its new pixels with a
    learning rate of (its new pixels) / (all pixels it has seen); the same `tol` stops it early.

    Raises ValueError naming the problem for a malformed pixel array, NaN/inf pixels, or
    `n_colors` larger than the number of distinct pixels.
    """
    x = _check_pixels(pixels)
    if isinstance(n_colors, bool) or not isinstance(n_colors, (int, np.integer)) or n_colors < 1:
        raise ValueError(f"n_colors must be a positive integer, got {n_colors!r}")
    if max_iter < 1 or tol < 0:
        raise ValueError(f"max_iter must be >= 1 and tol >= 0, got max_iter={max_iter}, tol={tol}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    rng = np.random.default_rng(seed)  # a Generator passes through unchanged
    k = int(n_colors)
    shift_tol = tol * float(np.mean(np.var(x, axis=0)))

    sample = x
    if batch_size is not None and len(x) > 3 * max(batch_size, k):
        sample = x[rng.choice(len(x), size=3 * max(batch_size, k), replace=False)]
    centres = _kmeans_plus_plus(sample, k, rng)  # [k', D]
    if len(centres) < k and len(sample) < len(x):
        centres = _kmeans_plus_plus(x, k, rng)  # the sample had too few distinct colours; seed from them all
    if len(centres) < k:
        raise ValueError(f"n_colors={k} is larger than the number of distinct pixels ({len(centres)})")
    if batch_size is None:
        centres = _lloyd(x, centres, max_iter, shift_tol)
    else:
        centres = _mini_batch(x, centres, max_iter, shift_tol, batch_size, rng)
    return centres.astype(np.float32)


def _lloyd(x, centres, max_iter, shift_tol):
    """Lloyd iterations from `centres` [K, D] until the summed squared shift is at most shift_tol."""
    for _ in range(max_iter):
        new = lloyd_step(x, centres)  # [K, D]
        shift = float(np.sum((new - centres) ** 2))
        centres = new
        if shift <= shift_tol:
            break
    return centres


def _mini_batch(x, centres, max_iter, shift_tol, batch_size, rng):
    """Mini-batch k-means (Sculley 2010) from `centres` [K, D]. Centres no pixel has reached yet stay where
    k-means++ put them, on a real pixel, so unlike Lloyd there is nothing to re-seed."""
    k = len(centres)
    seen = np.zeros(k, np.float64)  # [K] pixels each centre has absorbed so far
    for _ in range(max_iter):
        batch = x[rng.integers(0, len(x), size=batch_size)]  # [B, D]
        ids, _ = _nearest(batch, centres)  # [B]
        counts, sums = _cluster_sums(batch, ids, k)  # [K], [K, D]
        seen += counts
        hit = counts > 0
        new = centres.copy()
        # running mean: c + (sum - n c) / seen, i.e. per-centre learning rate n / seen
        new[hit] += (sums[hit] - counts[hit, None] * centres[hit]) / seen[hit, None]
        shift = float(np.sum((new - centres) ** 2))
        centres = new
        if shift <= shift_tol:
            break
    return centres


def check_clusters(clusters, n_channels=None):
    """A palette as any array-like [K, D] (D = n_channels if given) -> float32 [K, D].

    Raises ValueError for a wrong shape, a non-numeric dtype or NaN/inf.
    """
    want = "D" if n_channels is None else str(n_channels)
    try:
        c = np.asarray(clusters)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"clusters must be a non-empty (K, {want}) array of numbers: {e}") from e
    bad_shape = c.ndim != 2 or c.shape[0] == 0 or (n_channels is not None and c.shape[1] != n_channels)
    if bad_shape or not (np.issubdtype(c.dtype, np.floating) or np.issubdtype(c.dtype, np.integer)):
        raise ValueError(
            f"clusters must be a non-empty (K, {want}) array of numbers, got shape {c.shape} dtype {c.dtype}"
        )
    c = c.astype(np.float32, copy=False)
    if not np.all(np.isfinite(c)):
        raise ValueError("clusters contain NaN or infinite values")
    return c


def quantize(pixels, clusters):
    """Id of the nearest palette colour for every pixel: [..., D], [K, D] -> int64 [...].

    The float32 expansion ||c||^2 - 2 x.c can misorder two colours whose distances differ by less
    than its rounding error (~1e-5 for pixels in [-1, 1]), while transformers, reading clusters from
    JSON as float64, orders them correctly. So the rows where that can happen (a fraction of a
    percent) are re-ranked exactly in float64: the result is the true nearest colour, the lowest id
    on an exact tie (as np.argmin picks).
    """
    x = np.asarray(pixels)
    if x.ndim < 1:
        raise ValueError("pixels must have a trailing channel axis, got a scalar")
    c = check_clusters(clusters)
    if c.shape[1] != x.shape[-1]:
        raise ValueError(f"pixels have {x.shape[-1]} channels but the clusters have {c.shape[1]} (shape {c.shape})")
    if x.size == 0:
        return np.zeros(x.shape[:-1], np.int64)
    ids, _ = _nearest(_check_pixels(x.reshape(-1, x.shape[-1])), c, exact=True)  # [N]
    return ids.reshape(x.shape[:-1])


def palette_colors(clusters):
    """Palette [K, 3] in [-1, 1] -> uint8 RGB [K, 3], as transformers' docs: rint(127.5 * (c + 1)).

    Computed in float64 like the docs' example (its clusters come from JSON as float64): in float32,
    colours near a half level would round the other way. Clipped to [0, 255] where the example
    would wrap around for a cluster outside [-1, 1].
    """
    c = check_clusters(clusters).astype(np.float64)
    return np.clip(np.rint(127.5 * (c + 1.0)), 0, 255).astype(np.uint8)


def dequantize(ids, clusters):
    """Palette ids of any shape -> uint8 RGB of shape ids.shape + (3,) (see `palette_colors`)."""
    ids = np.asarray(ids)
    colors = palette_colors(clusters)  # [K, 3]
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(colors)):
        raise ValueError(
            f"ids must be in [0, {len(colors)}) for a palette of {len(colors)} colours, got values in "
            f"[{ids.min()}, {ids.max()}] (the SOS token, id {len(colors)}, has no colour: drop it first)"
        )
    return colors[ids]


def inertia(pixels, clusters):
    """Sum of squared distances from each pixel to its nearest palette colour (k-means' objective)."""
    x = _check_pixels(pixels)
    c = check_clusters(clusters)
    if c.shape[1] != x.shape[1]:
        raise ValueError(f"pixels have {x.shape[1]} channels but the clusters have {c.shape[1]} (shape {c.shape})")
    _, dist = _nearest(x, c)
    return float(np.sum(dist, dtype=np.float64))


def available_palettes():
    """Names of the palettes shipped in minigpt_pixels/data/ (files palette_<name>.json)."""
    paths = glob.glob(os.path.join(PALETTE_DIR, "palette_*.json"))
    return sorted(os.path.basename(p)[len("palette_") : -len(".json")] for p in paths)


def load_palette(name="photos512"):
    """A palette shipped with the package, float32 [K, 3] in [-1, 1].

    "photos512" is fitted by `fit_palette` on photos that scikit-learn and matplotlib ship (see
    scripts/make_palette.py). It is for demos and notebooks: a checkpoint's own palette is the
    `clusters` in its preprocessor_config.json (`ImageGPTImageProcessor.from_pretrained`).
    """
    path = os.path.join(PALETTE_DIR, f"palette_{name}.json")
    if not os.path.exists(path):
        raise ValueError(f"no shipped palette {name!r}; available: {', '.join(available_palettes()) or 'none'}")
    with open(path, encoding="utf-8") as f:
        return check_clusters(json.load(f)["clusters"], n_channels=3)
