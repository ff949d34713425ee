"""ImageGPT's elementwise activations and the softmaxes, one pure NumPy function each (with the
`f_forward` / `f_backward` pairs training uses; see layers.py, which re-exports every name here, for the
shape legend and the conventions).

The config's activation_function picks one by name: quick_gelu (x * sigmoid(1.702 x), OpenAI's "gelu2",
ImageGPT's own), gelu (exact), gelu_new (tanh approximation), relu, tanh.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

F32 = np.float32  # every constant is float32, so NumPy never promotes a hot path to float64


def quick_gelu(x):
    """x * sigmoid(1.702 x): OpenAI's "gelu2", not the exact erf GELU."""
    return quick_gelu_forward(x)[0]  # [...]


class QuickGeluCache(NamedTuple):
    x: np.ndarray  # [...]
    e: np.ndarray  # [...] 1 + exp(-1.702 x) = 1 / sigmoid(1.702 x)


def quick_gelu_forward(x):
    e = F32(1.0) + np.exp(F32(-1.702) * x)  # [...] 1 / sigmoid(1.702 x)
    return x / e, QuickGeluCache(x, e)  # [...]


def quick_gelu_backward(dout, cache):
    """d/dx x s(1.702 x) = s (1 + 1.702 x (1 - s)), with s the sigmoid."""
    s = F32(1.0) / cache.e  # [...]
    d = F32(1.0) - s  # in place from here on: this runs on the MLP's widest tensor [B, T, F]
    d *= cache.x
    d *= F32(1.702)
    d += F32(1.0)
    d *= s
    d *= dout
    return d


def activation(x, name):
    """The config's activation_function by name."""
    if name == "quick_gelu":
        return quick_gelu(x)
    if name == "relu":
        return np.maximum(x, F32(0))
    if name == "tanh":
        return np.tanh(x)
    if name == "gelu_new":  # the tanh approximation of GELU
        c = F32(np.sqrt(2.0 / np.pi))
        return F32(0.5) * x * (F32(1.0) + np.tanh(c * (x + F32(0.044715) * x * x * x)))
    if name == "gelu":  # exact GELU; erf through a float32-accurate rational approximation
        return F32(0.5) * x * (F32(1.0) + _erf(x * F32(1 / np.sqrt(2.0))))
    raise ValueError(f"unknown activation_function {name!r}")


class ActivationCache(NamedTuple):
    saved: object  # quick_gelu's QuickGeluCache, else the input x [...]
    name: str


def activation_forward(x, name):
    if name == "quick_gelu":
        out, cache = quick_gelu_forward(x)
        return out, ActivationCache(cache, name)
    return activation(x, name), ActivationCache(x, name)


def activation_backward(dout, cache):
    name = cache.name
    if name == "quick_gelu":
        return quick_gelu_backward(dout, cache.saved)  # its own QuickGeluCache
    x = cache.saved  # [...] the input
    if name == "relu":
        return dout * (x > 0)
    if name == "tanh":
        return dout * (F32(1.0) - np.square(np.tanh(x)))
    if name == "gelu_new":  # 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
        c = F32(np.sqrt(2.0 / np.pi))
        t = np.tanh(c * (x + F32(0.044715) * x * x * x))
        du = c * (F32(1.0) + F32(3 * 0.044715) * x * x)
        return dout * (F32(0.5) * (F32(1.0) + t) + F32(0.5) * x * (F32(1.0) - t * t) * du)
    if name == "gelu":  # Phi(x) + x phi(x): the exact derivative (the forward's erf is accurate to 1.5e-7)
        cdf = F32(0.5) * (F32(1.0) + _erf(x * F32(1 / np.sqrt(2.0))))
        pdf = np.exp(F32(-0.5) * x * x) * F32(1 / np.sqrt(2 * np.pi))
        return dout * (cdf + x * pdf)
    raise ValueError(f"unknown activation_function {name!r}")


def _erf(x):
    # Abramowitz-Stegun 7.1.26 is only 1.5e-7 accurate in absolute terms: enough for float32.
    s = np.sign(x)
    a = np.abs(x)
    t = F32(1.0) / (F32(1.0) + F32(0.3275911) * a)
    poly = t * (F32(0.254829592) + t * (F32(-0.284496736) + t * (F32(1.421413741)
                                                                  + t * (F32(-1.453152027) + t * F32(1.061405429)))))
    return s * (F32(1.0) - poly * np.exp(-a * a))


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))  # subtract the max so exp never overflows
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
