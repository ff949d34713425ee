"""The linear probe: how much a frozen iGPT's hidden states know about the class of an image.

iGPT's paper (Chen et al. 2020, section 2.4) measures representation quality by a linear probe:
take the hidden states of one layer, average-pool them over the sequence, and fit a logistic
regression on the pooled features with the model frozen. Repeating it for every layer gives the
accuracy-by-layer curve; the paper finds it peaks in the middle of the network, not at the end, and
suggests the last layers specialise in predicting the next pixel.

    ids = processor(images)["input_ids"]                     # [N, h*w], no SOS
    feats = extract_features(model, ids, layer=2, add_sos=True)   # [N, C]
    result = linear_probe(feats, labels)                     # held-out accuracy
    curve = probe_by_layer(model, ids, labels, add_sos=True)      # one result per layer

    curves = compare_probes(model, ids, labels, raw_pixels=pixels)  # trained / untrained / raw pixels,
    plot_probe_curves(curves)                                  # every layer, mean +- std over 5 folds

Two recipes for the pooled features (`features=`): "mean", transformers' docs' suggestion, pools the raw
residual stream h^l; "paper", the paper's own f^l (section 2.4), pools layer_norm(h^l) with block l's
`ln_1` weight, the tensor OpenAI's code collects as `ln_1` (the last layer: after `ln_f`). The probe's
regularisation can be chosen per layer on an inner split of each training fold (`C="tuned"`), as the
paper tuned its probe. From the command line (`cli.py`, this package's `__main__`):

    python -m minigpt_pixels.probe --model DIR --data digits|shifted-digits|middle-peak|FOLDER \
        [--features paper|mean] [--folds 5] [--jobs N] [--json FILE] [--plot FILE] [--markdown]

Layers are numbered as `hidden_states` numbers them: 0 is the embeddings, i (0 < i < n_layer) the
output of the i-th block, and n_layer (or -1) the last block's output after the final layer norm `ln_f`. Pooling averages every
position, SOS included, as transformers' `ImageGPTForImageClassification` does (it ignores
attention_mask when pooling).

The comparison a paper makes (`compare_probes`) puts three curves side by side, each scored by the
same stratified k-fold cross-validation so that every image is tested once and the folds are shared:
the trained model, an untrained model of the same shape (the very weights training started from:
same config, same initialisation seed), and raw pixels. The untrained curve says how much of the
probe's accuracy is the architecture (random features of a pooled sequence are already informative);
the gap above it is what pre-training learned.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

from ..datasets import load_digits_data
from ..layers import layer_norm

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # minigpt_pixels/
# An 8-block iGPT trained on `shifted_digits(canvas=10, copies=3, seed=0)`, for the middle-layer question
# (how it was made: the README.md beside its weights). HF layout, like minigpt_pixels.DEFAULT_MODEL.
SHIFTED_DIGITS_MODEL = os.path.join(_PACKAGE, "data", "shifted_digits_model")
# A 16-block iGPT pre-trained on shifted digits 0-4 only, on which the paper's probe of new shifts of the digits
# 5-9 (classes it never saw) peaks inside the network (how it was made: the README.md beside its weights).
MIDDLE_PEAK_MODEL = os.path.join(_PACKAGE, "data", "middle_peak_model")
MIDDLE_PEAK_CLASSES = (5, 6, 7, 8, 9)  # the probe's classes; the model was pre-trained on the other five


# ---- features ------------------------------------------------------------------------------------
def with_sos(input_ids, config):
    """The processor's ids [N, h*w] -> the sequence the causal model reads: SOS first, then the pixels,
    cut to n_positions (a model trained OpenAI's way, SOS + pixels[:-1] -> every pixel, has
    n_positions = h*w, so the last pixel is dropped: it is only ever a target)."""
    ids = np.asarray(input_ids)
    sos = np.full((ids.shape[0], 1), config.sos_token_id, dtype=np.int64)
    return np.concatenate([sos, ids], axis=1)[:, :config.n_positions]  # [N, min(1 + h*w, n_positions)]


FEATURES = ("mean", "paper")  # the two pooling recipes `extract_features` offers


def paper_features(hidden, params, prefix, config, layer, pool_from=0):
    """The iGPT paper's features of one layer: f^l = mean_t layer_norm(h^l_t), with block l's own ln_1
    weight (OpenAI's code collects exactly this tensor as `ln_1`: the normalised input of block l).

    hidden: hidden_states[layer] [B, T, C]. For layer = n_layer there is no block l; its hidden state is
    already after `ln_f`, the normalised input of the LM head, which is what the paper's last-layer
    features are, so it is pooled as it is. Positions from `pool_from` on are averaged (0: all of them,
    as the paper does). -> float32 [B, C]."""
    if layer == config.n_layer:
        return hidden[:, pool_from:].mean(axis=1)  # [B, T, C] -> [B, C]: already layer-normed by ln_f
    weight = params[f"{prefix}h.{layer}.ln_1.weight"]  # [C]
    return layer_norm(hidden[:, pool_from:], weight, config.layer_norm_epsilon).mean(axis=1)  # [B, C]


def extract_features(model, input_ids, layer, *, add_sos=False, batch_size=None, features="mean", pool_from=0):
    """One pooled feature vector per image from the hidden state of `layer` -> float32 [N, C].

    `features` picks the recipe:
      "mean"  hidden_states[layer].mean(axis=1): the raw residual stream pooled, as transformers' docs
              suggest (layers 0..n_layer-1 unnormalised, layer n_layer after ln_f);
      "paper" the iGPT paper's f^l = mean over positions of layer_norm(h^l) with block l's own ln_1
              weight, the layer-normed input of block l (`paper_features`); for l = n_layer, the state
              after ln_f, as the paper's last-layer features. Every layer is then on the same scale.

    `features` may also be a tuple of recipes, e.g. ("paper", "mean"): then -> {recipe: features}, all
    from the same forward passes.

    `model` is any of the three model classes (only the transformer body runs); `input_ids` [N, T] is
    fed as given unless `add_sos`, which prepends the SOS token as the causal model was trained (see
    `with_sos`). `layer` is an int in [-(n_layer + 1), n_layer], or a list of them, which returns
    [len(layer), N, C] from the same forward passes. Images go through `batch_size` at a time (default
    `cache_sized_batch`: a bigger batch is slower, not faster).
    `pool_from` > 0 averages only the positions from there on (later positions have seen more of the
    image; the paper and transformers' classifier pool them all).
    """
    cfg = model.config
    recipes = _recipes(features)
    many = isinstance(layer, (list, tuple, range, np.ndarray))
    wanted = list(layer) if many else [layer]
    n_states = cfg.n_layer + 1
    for w in wanted:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not -n_states <= w < n_states:
            raise ValueError(f"layer must be an integer in [-{n_states}, {n_states - 1}] (hidden_states has "
                             f"n_layer + 1 = {n_states} entries), got {w!r}")
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"input_ids must have shape (N, sequence) with N >= 1, got {ids.shape}")
    if add_sos:
        ids = with_sos(ids, cfg)
    if isinstance(pool_from, bool) or not isinstance(pool_from, (int, np.integer)) or not 0 <= pool_from < ids.shape[1]:
        raise ValueError(f"pool_from must be an integer in [0, {ids.shape[1] - 1}] (the sequence has {ids.shape[1]} "
                         f"positions), got {pool_from!r}")
    if batch_size is None:
        batch_size = cache_sized_batch(cfg, ids.shape[1])
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    out = {r: np.empty((len(wanted), ids.shape[0], cfg.n_embd), np.float32) for r in recipes}  # [layers, N, C]
    # "numpy" is the device "auto" gives small models, whose matmuls are too small for BLAS's threads to pay:
    # on the middle-peak model 2 BLAS threads took 15-35 s where one took 5.5 s (2 cores, one busy).
    # The Numba device keeps its own thread policy.
    with one_thread() if model.device == "numpy" else contextlib.nullcontext():
        _extract(model, ids, wanted, recipes, batch_size, pool_from, out)
    out = {r: f if many else f[0] for r, f in out.items()}
    return out if isinstance(features, (tuple, list)) else out[features]


def _extract(model, ids, wanted, recipes, batch_size, pool_from, out):
    """extract_features' loop: forward `batch_size` images at a time, pool each wanted layer by each recipe
    into out[recipe][layer index, images]."""
    cfg, n_states = model.config, model.config.n_layer + 1
    for start in range(0, ids.shape[0], batch_size):
        hidden = model.transformer(ids[start:start + batch_size], output_hidden_states=True).hidden_states
        if hidden is None:  # a backend that skips hidden states
            raise ValueError(f"the model on device {model.device!r} returned no hidden states; use "
                             f"model.to('cpu') or model.to('numpy') to extract features")
        for i, w in enumerate(wanted):
            for recipe in recipes:
                if recipe == "paper":
                    pooled = paper_features(hidden[w], model.params, model.prefix, cfg, w % n_states, pool_from)
                else:
                    pooled = hidden[w][:, pool_from:].mean(axis=1)  # [b, T, C] -> [b, C]
                out[recipe][i, start:start + batch_size] = pooled  # [b, C]


def _recipes(features):
    """features: a recipe of FEATURES, or a non-empty tuple/list of them -> tuple of recipes."""
    recipes = tuple(features) if isinstance(features, (tuple, list)) else (features,)
    if not recipes or any(r not in FEATURES for r in recipes) or len(set(recipes)) < len(recipes):
        several = " (or a tuple of distinct ones)" if isinstance(features, (tuple, list)) else ""
        raise ValueError(f"features must be one of {', '.join(map(repr, FEATURES))}{several}, got {features!r}")
    return recipes


def cache_sized_batch(config, T, budget=1 << 21):
    """Images per forward pass when extracting features: enough that one layer's attention weights
    [b, n_head, T, T] in float32 stay within `budget` bytes (2 MiB, about an L2 cache), at most 256. The
    reference attention makes several passes over that tensor, and once it spills from the cache each
    pass goes to memory: on the shifted-digits model (T = 101) a batch of 16 ran twice as fast as 256."""
    per_image = config.n_head * T * T * 4  # bytes of one image's attention weights in one layer
    return int(max(1, min(256, budget // per_image)))


# ---- the probe -----------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    """A fitted probe: `accuracy` on the held-out images, `train_accuracy` on the ones it was fitted to,
    and the scikit-learn pipeline (standardisation + LogisticRegression) as `classifier`."""
    accuracy: float
    train_accuracy: float
    n_train: int
    n_test: int
    classifier: object

    def __repr__(self):
        return (f"ProbeResult(accuracy={self.accuracy:.4f}, train_accuracy={self.train_accuracy:.4f}, "
                f"n_train={self.n_train}, n_test={self.n_test})")


def linear_probe(features, labels, test_features=None, test_labels=None, *, test_size=0.2, seed=0, C=1.0,
                 max_iter=2000, standardize=True):
    """Fit scikit-learn's LogisticRegression on frozen features and report held-out accuracy.

    With `test_features`/`test_labels`, fit on (features, labels) and test on those; otherwise hold
    out a stratified `test_size` fraction chosen by `seed` (the same seed and N give the same split,
    so every layer is judged on the same images). Features are standardised first (each dimension to
    zero mean, unit variance on the training images), which keeps L-BFGS well conditioned; `C` is
    the inverse L2 strength. -> ProbeResult.
    """
    from sklearn.model_selection import train_test_split

    x, y = _features(features, "features"), np.asarray(labels)
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},) like the features' rows, got {y.shape}")
    if (test_features is None) != (test_labels is None):
        raise ValueError("pass both test_features and test_labels, or neither")
    if test_features is None:
        _check_split(y, test_size)
        x, x_test, y, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    else:
        x_test, y_test = _features(test_features, "test_features"), np.asarray(test_labels)
        if x_test.shape[1] != x.shape[1] or y_test.shape != (len(x_test),):
            raise ValueError(f"test features {x_test.shape} / labels {y_test.shape} do not match the training "
                             f"features' width {x.shape[1]}")
    if len(np.unique(y)) < 2:
        raise ValueError("the training labels hold a single class: nothing to separate")
    with one_thread():
        return _fit_probe(x, y, x_test, y_test, C, max_iter, standardize)


def one_thread():
    """scikit-learn's and BLAS's thread pools limited to one thread, for a block of probe fits: these
    problems are tiny, and scikit-learn's OpenMP threads spin-wait for each other (measured 20x slower
    on 2 shared cores). Entering it costs about 3 ms, so a curve of hundreds of fits enters it once."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _fit_probe(x, y, x_test, y_test, C, max_iter=2000, standardize=True):
    """The probe itself, on checked arrays: standardise, LogisticRegression, score. -> ProbeResult."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()] if standardize else []
    clf = make_pipeline(*steps, LogisticRegression(C=C, max_iter=max_iter)).fit(x, y)
    return ProbeResult(accuracy=float(clf.score(x_test, y_test)), train_accuracy=float(clf.score(x, y)),
                       n_train=len(x), n_test=len(x_test), classifier=clf)


def _check_split(y, test_size):
    """The stratified hold-out `linear_probe` makes must be possible: scikit-learn's own errors for these
    name neither the argument nor the class."""
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)) \
            or not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction strictly between 0 and 1, got {test_size!r}")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"labels: class {classes[counts.argmin()].item()!r} has a single image; a stratified split "
                         f"needs at least 2 of each class (one to fit, one to test)")
    n_test = int(np.ceil(test_size * len(y)))
    if n_test < len(classes) or len(y) - n_test < len(classes):
        raise ValueError(f"test_size={test_size} leaves {n_test} test and {len(y) - n_test} training images of "
                         f"{len(y)}: each side needs one of each of the {len(classes)} classes")


def _features(x, name):
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array [N, features] with N >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return x.astype(np.float64, copy=False)


def probe_by_layer(model, input_ids, labels, *, layers=None, add_sos=False, test_size=0.2, seed=0,
                   test_input_ids=None, test_labels=None, C=1.0, batch_size=None, features="mean"):
    """`linear_probe` on the pooled features (`features`: "mean" or "paper", see `extract_features`) of
    every layer (or `layers`), all judged on the same held-out images. `C="tuned"` (or a list) chooses
    each layer's C on an inner split of its training images (`choose_C`). -> {layer: ProbeResult},
    layers as hidden_states numbers them (0 = embeddings, n_layer = after ln_f)."""
    wanted = list(range(model.config.n_layer + 1)) if layers is None else list(layers)
    grid = _C_grid(C)
    if test_input_ids is None:
        _check_split(np.asarray(labels), test_size)  # before the forward passes, not after
    feats = extract_features(model, input_ids, wanted, add_sos=add_sos, batch_size=batch_size,
                             features=features)  # [L, N, C]
    test_feats = None
    if test_input_ids is not None:
        test_feats = extract_features(model, test_input_ids, wanted, add_sos=add_sos, batch_size=batch_size,
                                      features=features)
    results = {}
    for i, w in enumerate(wanted):
        fit = feats[i]
        if len(grid) > 1 and test_feats is None:  # the inner split comes from the training side only
            from sklearn.model_selection import train_test_split

            idx = train_test_split(np.arange(len(fit)), test_size=test_size, random_state=seed, stratify=labels)[0]
            c = choose_C(fit[idx], np.asarray(labels)[idx], grid, seed=seed)
        else:
            c = grid[0] if len(grid) == 1 else choose_C(fit, labels, grid, seed=seed)
        results[w] = linear_probe(fit, labels, None if test_feats is None else test_feats[i], test_labels,
                                  test_size=test_size, seed=seed, C=c)
    return results


# ---- the paper's comparison: trained vs untrained vs raw pixels, cross-validated -----------------
@dataclass
class ProbeCurve:
    """A probe scored by k-fold cross-validation on every layer of one set of features.

    `scores[i, f]` is the held-out accuracy of layer `layers[i]` on fold f (`train_scores` the same on
    the images the probe was fitted to). Every curve made with the same labels, `n_folds` and `seed`
    is scored on the same folds, so curves and layers compare image for image."""
    name: str
    layers: list
    scores: np.ndarray  # [n_layers, n_folds]
    train_scores: np.ndarray  # [n_layers, n_folds]
    C: np.ndarray | None = None  # [n_layers, n_folds] the inverse L2 strength each fit used

    @property
    def mean(self):
        return self.scores.mean(axis=1)  # [n_layers]

    @property
    def std(self):
        """The spread over folds (sample standard deviation, ddof=1)."""
        return self.scores.std(axis=1, ddof=1)  # [n_layers]

    @property
    def best_layer(self):
        return self.layers[int(np.argmax(self.mean))]

    def difference(self, a, b):
        """Fold-by-fold accuracy of layer `a` minus layer `b` -> [n_folds]. Its mean and spread say
        whether a gap between two layers is more than the noise of the split (the folds are shared, so
        the difference is much steadier than either curve)."""
        return self.scores[self.layers.index(a)] - self.scores[self.layers.index(b)]

    def __repr__(self):
        cells = ", ".join(f"{k}: {m:.3f}+-{s:.3f}" for k, m, s in zip(self.layers, self.mean, self.std))
        return f"ProbeCurve({self.name!r}, {self.scores.shape[1]} folds, {cells})"


C_GRID = (0.01, 0.1, 1.0, 10.0)  # the inverse L2 strengths `C="tuned"` chooses from (standardised features)


def choose_C(features, labels, grid=C_GRID, *, seed=0, inner_size=0.2):
    """The probe's regularisation for one layer, chosen as the paper tuned its probe: on an inner split of
    the images it is given (a stratified `inner_size` of them held out, by `seed`), the C of `grid` with
    the best accuracy (the smallest C on a tie: the simpler probe). The caller then refits on all of them,
    so the choice never sees the outer fold's test images. -> float."""
    from sklearn.model_selection import train_test_split

    x, y = _features(features, "features"), np.asarray(labels)
    _check_split(y, inner_size)
    x, x_test, y, y_test = train_test_split(x, y, test_size=inner_size, random_state=seed, stratify=y)
    with one_thread():
        scores = [_fit_probe(x, y, x_test, y_test, C=c).accuracy for c in grid]
    return float(grid[int(np.argmax(scores))])


def _C_grid(C):
    """C is a positive number, or "tuned" (choose from C_GRID), or a sequence of candidates -> tuple."""
    if isinstance(C, str):
        if C != "tuned":
            raise ValueError(f"C must be a positive number, 'tuned' or a list of candidates, got {C!r}")
        return C_GRID
    grid = tuple(C) if isinstance(C, (list, tuple, np.ndarray)) else (C,)
    if not grid or any(isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating))
                       or not c > 0 for c in grid):
        raise ValueError(f"C must be a positive number, 'tuned' or a list of positive candidates, got {C!r}")
    return grid


def cross_validated_probe(features, labels, *, n_folds=5, seed=0, layers=None, name="features", C=1.0, n_jobs=None):
    """`linear_probe` on every layer of `features`, scored by stratified k-fold cross-validation.

    `features` is [n_layers, N, C] (as `extract_features` returns for a list of layers) or [N, F] (one
    set, e.g. raw pixels); `layers` names the rows (default 0, 1, ...). The folds come from
    scikit-learn's StratifiedKFold shuffled by `seed`: each image is tested exactly once. `C` is the
    inverse L2 strength, or "tuned" (or a list of candidates): then each layer's C is chosen on every
    training fold by `choose_C`, on an inner split of that fold only (the chosen values are in
    `ProbeCurve.C`). `n_jobs` runs that many (layer, fold) fits at once in worker processes (joblib's
    convention: None is 1, -1 every core); each is the same computation, so the numbers do not change.
    -> ProbeCurve.
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(features)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"features must be [n_layers, N, C] or [N, F], got shape {x.shape}")
    y = np.asarray(labels)
    if y.shape != (x.shape[1],):
        raise ValueError(f"labels must have shape ({x.shape[1]},) like the features' images, got {y.shape}")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    smallest = int(np.unique(y, return_counts=True)[1].min())
    if smallest < n_folds:
        raise ValueError(f"n_folds={n_folds} is more than the {smallest} images of the rarest class: every fold "
                         f"needs one of each")
    layers = list(range(len(x))) if layers is None else list(layers)
    if len(layers) != len(x):
        raise ValueError(f"layers names {len(layers)} rows, features have {len(x)}")
    grid = _C_grid(C)
    folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    _check_jobs(n_jobs)
    feats = [_features(f, f"{name} (layer {k})") for f, k in zip(x, layers)]  # [N, C] float64, finite, each
    cells = Parallel(n_jobs=n_jobs)(delayed(_fold_score)(f, y, fit, test, grid, seed)
                                    for f in feats for fit, test in folds)  # [n_layers * n_folds][3]
    scores, train_scores, chosen = np.array(cells).reshape(len(x), n_folds, 3).transpose(2, 0, 1)  # [L, folds] each
    return ProbeCurve(name, layers, scores, train_scores, chosen)


def _check_jobs(n_jobs):
    """n_jobs: None or 1 (no worker processes), -1 (one per core) or a count up to the machine's cores."""
    cores = os.cpu_count() or 1
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer))
                               or not (n_jobs == -1 or 1 <= n_jobs <= cores)):
        raise ValueError(f"n_jobs must be None, -1 (every core) or a count of processes from 1 to this machine's "
                         f"{cores} cores, got {n_jobs!r}")


def _fold_score(x, y, fit, test, grid, seed):
    """One layer, one fold: C chosen from `grid` on the training fold when it has several, then the probe.
    -> (test accuracy, train accuracy, C)."""
    with one_thread():
        c = grid[0] if len(grid) == 1 else choose_C(x[fit], y[fit], grid, seed=seed)
        r = _fit_probe(x[fit], y[fit], x[test], y[test], C=c)
    return r.accuracy, r.train_accuracy, c


def untrained_like(model, seed=0):
    """A freshly initialised model of the same class and config: with the seed training started from
    (`train.py --seed`, 0 by default) it is the trained model's own step 0."""
    return type(model)(model.config, seed=seed)


def colour_histogram(input_ids, n_colors):
    """What mean-pooling makes of the pixels themselves, with no model: the fraction of an image's pixels
    in each palette colour. ids [N, T] -> float32 [N, n_colors]. Every position is averaged away, so this
    is the baseline for pooled features: layer 0's "mean" features (the pooled embeddings) are a linear map
    of it plus a constant. Its "paper" features are not (each position's wte + wpe is layer-normed before
    pooling, which keeps some of where each grey is). Raw pixels unpooled keep all of it."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.size == 0 or ids.min() < 0 or ids.max() >= n_colors:
        raise ValueError(f"input_ids must be [N, T] palette ids in [0, {n_colors}), got shape {ids.shape}")
    counts = np.zeros((len(ids), n_colors), np.float32)  # [N, n_colors]
    np.add.at(counts, (np.repeat(np.arange(len(ids)), ids.shape[1]), ids.ravel()), 1.0)
    return counts / np.float32(ids.shape[1])


def compare_probes(model, input_ids, labels, *, raw_pixels=None, untrained=None, init_seed=0, layers=None,
                   add_sos=True, n_folds=5, seed=0, C=1.0, batch_size=None, features="mean", pooled_pixels=False,
                   pool_from=0, n_jobs=None):
    """The probe curves a paper shows, every layer scored on the same folds:
    -> {"trained": ProbeCurve, "untrained": ProbeCurve, "raw pixels": ProbeCurve}.

    "untrained" is `untrained` if given, else `untrained_like(model, init_seed)`; pass
    `untrained=False` to leave it out. "raw pixels" is there when `raw_pixels` [N, P] is given (e.g.
    the grey levels, scaled to [0, 1]); "raw pixels, pooled" (the `colour_histogram` of `input_ids`)
    when `pooled_pixels`. `layers` defaults to all of them, 0 .. n_layer. `add_sos` defaults to True:
    these are causal models, trained on SOS + pixels. `features` ("mean" or "paper") is the pooling
    recipe of `extract_features`; a tuple of both gives {recipe: curves} from one forward pass per model
    (the pixel curves, which no recipe touches, are shared). `C` a number or "tuned"
    (`cross_validated_probe`, which `n_jobs` is passed to).
    """
    wanted = list(range(model.config.n_layer + 1)) if layers is None else list(layers)
    _C_grid(C)  # a bad C or n_jobs is an error before the forward passes
    _check_jobs(n_jobs)
    recipes = _recipes(features)
    by_recipe = {r: {} for r in recipes}
    models = {"trained": model}
    if untrained is not False:
        models["untrained"] = untrained_like(model, init_seed) if untrained is None else untrained
    for name, m in models.items():
        feats = extract_features(m, input_ids, wanted, add_sos=add_sos, batch_size=batch_size,
                                 features=recipes, pool_from=pool_from)  # {recipe: [L, N, C]}
        for r in recipes:
            by_recipe[r][name] = cross_validated_probe(feats[r], labels, n_folds=n_folds, seed=seed, layers=wanted,
                                                       name=name, C=C, n_jobs=n_jobs)
    baselines = {}
    if raw_pixels is not None:
        raw = np.asarray(raw_pixels)
        raw = raw.reshape(len(raw), -1)  # [N, P]: images of any shape, flattened
        baselines["raw pixels"] = cross_validated_probe(raw, labels, n_folds=n_folds, seed=seed, name="raw pixels",
                                                        C=C, n_jobs=n_jobs)
    if pooled_pixels:
        hist = colour_histogram(input_ids, model.config.vocab_size - 1)  # [N, n_colors]
        baselines["raw pixels, pooled"] = cross_validated_probe(hist, labels, n_folds=n_folds, seed=seed,
                                                                name="raw pixels, pooled", C=C, n_jobs=n_jobs)
    by_recipe = {r: {**curves, **baselines} for r, curves in by_recipe.items()}
    return by_recipe if isinstance(features, (tuple, list)) else by_recipe[features]


def plot_probe_curves(curves, ax=None, title=None):
    """Draw `compare_probes`' curves: mean accuracy by layer with error bars of one standard deviation
    over the folds; a one-layer curve (raw pixels) as a line with its spread shaded. -> the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8))
    layered = [c for c in curves.values() if len(c.layers) > 1]
    flat_styles = iter([("gray", "--"), ("saddlebrown", ":"), ("olive", "-."), ("black", (0, (1, 3)))] * 8)
    for c in curves.values():
        n_folds = c.scores.shape[1]
        if len(c.layers) > 1:
            k = c.layers.index(c.best_layer)
            ax.errorbar(c.layers, c.mean, yerr=c.std, marker="o", ms=4, capsize=3,
                        label=f"{c.name} (best: layer {c.best_layer}, {c.mean[k]:.3f} ± {c.std[k]:.3f})")
        else:
            colour, style = next(flat_styles)  # one look per baseline, so two of them can be told apart
            line = ax.axhline(c.mean[0], ls=style, color=colour, label=f"{c.name} ({c.mean[0]:.3f} ± {c.std[0]:.3f})")
            ax.axhspan(c.mean[0] - c.std[0], c.mean[0] + c.std[0], color=line.get_color(), alpha=0.15)
    if layered:
        layers = layered[0].layers
        last = max(layers)
        ax.set_xticks(layers, [("0\nemb" if k == 0 else f"{k}\n+ln_f" if k == last else str(k)) for k in layers])
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel(f"accuracy, mean ± std\nover {n_folds} folds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_layer_margins(curve, ax=None, title=None):
    """Each layer's margin over the last layer of one ProbeCurve, fold by fold (dots) with its mean and
    standard deviation (bars): the folds are shared, so a layer that truly beats the last has its dots
    above the red zero line. -> the Axes."""
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.subplots(figsize=(6, 3.9))[1]
    last = curve.layers[-1]
    for k in curve.layers[:-1]:
        margins = curve.difference(k, last)  # [n_folds]
        ax.scatter(np.full(len(margins), k), margins, s=12, color="C0")
        ax.errorbar(k, margins.mean(), yerr=margins.std(ddof=1), fmt="_", color="black", capsize=4, ms=12)
    ax.axhline(0, color="C3", lw=1)
    ax.set_xlabel("layer l")
    ax.set_ylabel("accuracy(l) - accuracy(last)\nper fold (dots), mean ± std (bars)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


# ---- a harder task -------------------------------------------------------------------------------
def shifted_digits(canvas=10, copies=1, seed=0, *, return_offsets=False):
    """scikit-learn's digits, each pasted at a random place on a blank `canvas` x `canvas` image:
    -> (uint8 images [copies * 1797, canvas, canvas], labels int64 [copies * 1797]), and with
    `return_offsets` also each paste's top-left corner (row, column), int64 [copies * 1797, 2].

    On the plain 8x8 digits raw pixels are already a strong linear feature (a stroke is always at the
    same place); shifting the digit by up to `canvas - 8` pixels each way breaks that, which is the
    regime where learned features can beat pixels. `copies` draws that many shifted versions of
    each digit; the same seed gives the same images.
    """
    if canvas < 8 or copies < 1:
        raise ValueError(f"canvas must be >= 8 and copies >= 1, got canvas={canvas}, copies={copies}")
    data = load_digits_data()
    rng = np.random.default_rng(seed)
    digits = np.stack(data.images)  # [1797, 8, 8] uint8
    n = len(digits)
    out = np.zeros((copies * n, canvas, canvas), np.uint8)
    offsets = rng.integers(0, canvas - 8 + 1, size=(copies * n, 2))  # top-left corner of each paste
    for i, (r, c) in enumerate(offsets):
        out[i, r:r + 8, c:c + 8] = digits[i % n]
    labels = np.tile(data.labels, copies)
    return (out, labels, offsets.astype(np.int64)) if return_offsets else (out, labels)


def middle_peak_probe_data():
    """The images MIDDLE_PEAK_MODEL is probed on: new shifts (seed 1) on a 10 x 10 canvas of every digit 5-9
    in scikit-learn's set, classes the model never saw in pre-training (it saw shifts by seed 0 of the
    digits 0-4). -> (uint8 images [896, 10, 10], labels int64 [896], the digits 5..9)."""
    images, labels = shifted_digits(canvas=10, copies=1, seed=1)
    keep = np.isin(labels, MIDDLE_PEAK_CLASSES)
    return images[keep], labels[keep]
