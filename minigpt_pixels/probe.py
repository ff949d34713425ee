"""The linear probe: how much a frozen iGPT's hidden states know about the class of an image.

iGPT's paper (Chen et al. 2020, section 3.3) measures representation quality by a linear probe:
take the hidden states of one layer, average-pool them over the sequence, and fit a logistic
regression on the pooled features with the model frozen. Repeating it for every layer gives the
accuracy-by-layer curve; the paper finds it peaks in the middle of the network, not at the end, and
suggests the last layers specialise in predicting the next pixel.

    ids = processor(images)["input_ids"]                     # [N, h*w], no SOS
    feats = extract_features(model, ids, layer=2, add_sos=True)   # [N, C]
    result = linear_probe(feats, labels)                     # held-out accuracy
    curve = probe_by_layer(model, ids, labels, add_sos=True)      # one result per layer

Layers are numbered as `hidden_states` numbers them: 0 is the embeddings, i (0 < i < n_layer) the
output of the i-th block, and n_layer (or -1) the last block's output after the final layer norm `ln_f`. Pooling averages every
position, SOS included, as transformers' `ImageGPTForImageClassification` does (it ignores
attention_mask when pooling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# ---- features ------------------------------------------------------------------------------------
def with_sos(input_ids, config):
    """The processor's ids [N, h*w] -> the sequence the causal model reads: SOS first, then the pixels,
    cut to n_positions (a model trained OpenAI's way, SOS + pixels[:-1] -> every pixel, has
    n_positions = h*w, so the last pixel is dropped: it is only ever a target)."""
    ids = np.asarray(input_ids)
    sos = np.full((ids.shape[0], 1), config.sos_token_id, dtype=np.int64)
    return np.concatenate([sos, ids], axis=1)[:, :config.n_positions]  # [N, min(1 + h*w, n_positions)]


def extract_features(model, input_ids, layer, *, add_sos=False, batch_size=256):
    """The mean-pooled hidden state of `layer`: hidden_states[layer].mean(axis=1) -> float32 [N, C].

    `model` is any of the three model classes (only the transformer body runs); `input_ids` [N, T] is
    fed as given unless `add_sos`, which prepends the SOS token as the causal model was trained (see
    `with_sos`). `layer` is an int in [-(n_layer + 1), n_layer], or a list of them, which returns
    [len(layer), N, C] from the same forward passes. Images go through `batch_size` at a time.
    """
    cfg = model.config
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.empty((len(wanted), ids.shape[0], cfg.n_embd), np.float32)  # [layers, N, C]
    for start in range(0, ids.shape[0], batch_size):
        hidden = model.transformer(ids[start:start + batch_size], output_hidden_states=True).hidden_states
        if hidden is None:  # a backend that skips hidden states
            raise ValueError(f"the model on device {model.device!r} returned no hidden states; use "
                             f"model.to('cpu') or model.to('numpy') to extract features")
        for i, w in enumerate(wanted):
            out[i, start:start + batch_size] = hidden[w].mean(axis=1)  # [b, T, C] -> [b, C]
    return out if many else out[0]


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
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x, y = _features(features, "features"), np.asarray(labels)
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},) like the features' rows, got {y.shape}")
    if (test_features is None) != (test_labels is None):
        raise ValueError("pass both test_features and test_labels, or neither")
    if test_features is None:
        x, x_test, y, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    else:
        x_test, y_test = _features(test_features, "test_features"), np.asarray(test_labels)
        if x_test.shape[1] != x.shape[1] or y_test.shape != (len(x_test),):
            raise ValueError(f"test features {x_test.shape} / labels {y_test.shape} do not match the training "
                             f"features' width {x.shape[1]}")
    if len(np.unique(y)) < 2:
        raise ValueError("the training labels hold a single class: nothing to separate")
    steps = [StandardScaler()] if standardize else []
    clf = make_pipeline(*steps, LogisticRegression(C=C, max_iter=max_iter))
    # One thread: these problems are tiny, and scikit-learn's OpenMP threads spin-wait for each other
    # (measured 20x slower on 2 shared cores).
    with threadpool_limits(limits=1):
        clf.fit(x, y)
        accuracy, train_accuracy = float(clf.score(x_test, y_test)), float(clf.score(x, y))
    return ProbeResult(accuracy=accuracy, train_accuracy=train_accuracy, n_train=len(x), n_test=len(x_test),
                       classifier=clf)


def _features(x, name):
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array [N, features] with N >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return x.astype(np.float64, copy=False)


def probe_by_layer(model, input_ids, labels, *, layers=None, add_sos=False, test_size=0.2, seed=0,
                   test_input_ids=None, test_labels=None, C=1.0, batch_size=256):
    """`linear_probe` on the mean-pooled features of every layer (or `layers`), all judged on the same
    held-out images. -> {layer: ProbeResult}, layers as hidden_states numbers them (0 = embeddings,
    n_layer = after ln_f)."""
    wanted = list(range(model.config.n_layer + 1)) if layers is None else list(layers)
    feats = extract_features(model, input_ids, wanted, add_sos=add_sos, batch_size=batch_size)  # [L, N, C]
    test_feats = None
    if test_input_ids is not None:
        test_feats = extract_features(model, test_input_ids, wanted, add_sos=add_sos, batch_size=batch_size)
    return {w: linear_probe(feats[i], labels, None if test_feats is None else test_feats[i], test_labels,
                            test_size=test_size, seed=seed, C=C)
            for i, w in enumerate(wanted)}
