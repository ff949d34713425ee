"""The losses of ImageGPT's two heads, one pure NumPy function each with its `f_forward` / `f_backward`
pair (layers.py re-exports every name here; its docstring has the shape legend): the LM's shifted
cross-entropy over the palette, and the classifier's three problem types as transformers picks them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .activations import F32, log_softmax


def cross_entropy(logits, labels, ignore_index=-100):
    """Mean cross-entropy over labels != ignore_index. logits [N, K], labels [N]. NaN if all are ignored,
    as in torch."""
    keep = labels != ignore_index  # [N]
    logp = log_softmax(logits[keep])  # [n, K]
    picked = logp[np.arange(logp.shape[0]), labels[keep]]  # [n]
    return F32(-np.mean(picked)) if picked.size else F32(np.nan)


class CrossEntropyCache(NamedTuple):
    logits: np.ndarray  # [N, K]
    labels: np.ndarray  # [N]
    keep: np.ndarray  # [N] bool: the labels not ignored


def cross_entropy_forward(logits, labels, ignore_index=-100):
    loss = cross_entropy(logits, labels, ignore_index)
    return loss, CrossEntropyCache(logits, labels, labels != ignore_index)


def cross_entropy_backward(dloss, cache):
    """d mean(-log softmax(z)[y]) / dz = (softmax(z) - onehot(y)) / n on kept rows, 0 on ignored ones.
    -> dlogits [N, K] (all zero when every label is ignored: the loss is NaN, its gradient has no rows)."""
    logits, labels, keep = cache.logits, cache.labels, cache.keep
    dlogits = np.zeros_like(logits)  # [N, K]
    n = int(np.count_nonzero(keep))
    if n:
        prob = np.exp(log_softmax(logits[keep]))  # [n, K]
        prob[np.arange(n), labels[keep]] -= F32(1.0)
        dlogits[keep] = prob * F32(dloss / n)
    return dlogits


def lm_loss(logits, labels):
    """Shifted LM loss: logits at position t predict labels at t + 1; -100 is ignored."""
    V = logits.shape[-1]
    return cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))  # [B*(T-1), V]


class LmLossCache(NamedTuple):
    ce: CrossEntropyCache
    shape: tuple  # (B, T, V) of the logits
    shift: bool


def lm_loss_forward(logits, labels, shift=True):
    """lm_loss and its cache. shift=False takes labels already aligned with the logits (labels[:, t] is
    the target of position t, OpenAI's form): it reaches the last position, which a shift cannot."""
    B, T, V = logits.shape
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]  # [B, T-1, V], [B, T-1]
    loss, ce = cross_entropy_forward(logits.reshape(-1, V), labels.reshape(-1))  # [B*(T-1), V]
    return loss, LmLossCache(ce, (B, T, V), shift)


def lm_loss_backward(dloss, cache):
    """-> dlogits [B, T, V]; with the shift, the last position predicts nothing and gets zero."""
    (B, T, V), shift = cache.shape, cache.shift
    d = cross_entropy_backward(dloss, cache.ce)  # [B*(T-1), V]
    if not shift:
        return d.reshape(B, T, V)
    dlogits = np.zeros((B, T, V), F32)
    dlogits[:, :-1] = d.reshape(B, T - 1, V)
    return dlogits


def classification_problem_type(config, labels):
    """transformers' rule: regression if num_labels == 1, single-label if labels are integers, else multi-label."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if np.issubdtype(np.asarray(labels).dtype, np.integer):
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(logits, labels, problem_type):
    if problem_type == "regression":
        # transformers squeezes both sides when num_labels == 1
        diff = np.squeeze(logits) - np.squeeze(labels).astype(F32) if logits.shape[-1] == 1 \
            else logits - labels.astype(F32)
        return F32(np.mean(np.square(diff)))
    if problem_type == "single_label_classification":
        return cross_entropy(logits, labels.reshape(-1))
    y = labels.astype(F32)  # multi-label: binary cross-entropy with logits, averaged over every entry
    return F32(np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))))


class ClassificationLossCache(NamedTuple):
    logits: np.ndarray  # [B, L]
    labels: np.ndarray  # [B] or [B, L]
    problem_type: str


def classification_loss_forward(logits, labels, problem_type):
    return classification_loss(logits, labels, problem_type), ClassificationLossCache(logits, labels, problem_type)


def classification_loss_backward(dloss, cache):
    """-> dlogits [B, L] for each of transformers' three problem types."""
    logits, labels, problem_type = cache.logits, cache.labels, cache.problem_type
    if problem_type == "regression":  # mean((z - y)^2): 2 (z - y) / count
        diff = logits - np.reshape(labels, logits.shape).astype(F32) if logits.shape[-1] == 1 \
            else logits - labels.astype(F32)
        return diff * F32(2.0 * dloss / diff.size)
    if problem_type == "single_label_classification":
        return cross_entropy_backward(dloss, CrossEntropyCache(logits, labels.reshape(-1), labels.reshape(-1) != -100))
    y = labels.astype(F32)  # binary cross-entropy with logits: (sigmoid(z) - y) / count
    sigmoid = F32(0.5) * (F32(1.0) + np.tanh(F32(0.5) * logits))  # overflow-free logistic
    return (sigmoid - y) * F32(dloss / logits.size)
