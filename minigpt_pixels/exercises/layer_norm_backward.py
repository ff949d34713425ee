"""Exercise: the layer norm's backward pass, replacing `layers.layer_norm_backward`."""

import numpy as np

from .. import layers
from .engine import F32, Case, Exercise, Mistake


def _backward(dout, cache, projection=True, centred=False, use_weight=True, dw="sum", divide=True):
    n, weight, rms = cache  # n = x / rms, as layers.layer_norm_forward keeps it
    C = n.shape[-1]
    if dw == "sum":
        dweight = np.sum((dout * n).reshape(-1, C), axis=0)
    elif dw == "times weight":
        dweight = np.sum((dout * n * weight).reshape(-1, C), axis=0)
    else:  # not summed over the positions
        dweight = dout * n
    g = dout * weight if use_weight else dout
    dx = g
    if centred:
        dx = dx - np.mean(g, axis=-1, keepdims=True)
    if projection:
        dx = dx - n * np.mean(g * n, axis=-1, keepdims=True)
    return (dx / rms if divide else dx).astype(F32), dweight.astype(F32)


def _case(shape):
    def make(rng):
        x = (rng.normal(size=shape) + 0.5).astype(F32)
        w = rng.normal(1.0, 0.3, size=shape[-1]).astype(F32)
        _, cache = layers.layer_norm_forward(x, w)
        return rng.normal(size=shape).astype(F32), cache
    return make


EXERCISE = Exercise(
    name="layer_norm_backward",
    signature="layer_norm_backward(dout, cache)",
    returns="(dx shaped like x, dweight [C]), float32; cache = (n, weight, rms) from layers.layer_norm_forward, "
            "n = x / rms",
    reference=layers.layer_norm_backward,
    points=3,
    outputs=("dx", "dweight"),
    rtol=1e-4, atol=1e-5,
    cases=(Case("x [2, 3, 8]", _case((2, 3, 8))),
           Case("x [5, 16]", _case((5, 16)))),
    mistakes=(
        Mistake("missing_projection", lambda d, c: _backward(d, c, projection=False),
                "dx is missing a term: rms depends on x too. dx = (g - n * mean(g * n)) / rms with "
                "g = dout * weight and n = x / rms"),
        Mistake("centred_backward", lambda d, c: _backward(d, c, centred=True),
                "dx has a mean-subtraction term from the centred LayerNorm; ImageGPT's layer norm does not "
                "centre, so drop the - mean(g)"),
        Mistake("no_weight", lambda d, c: _backward(d, c, use_weight=False),
                "dx forgot the weight: the gradient reaching the normalised x is g = dout * weight"),
        Mistake("dweight_not_summed", lambda d, c: _backward(d, c, dw="not summed"),
                "dweight must be summed over every position: np.sum(dout * n, axis=all but the last)"),
        Mistake("dweight_times_weight", lambda d, c: _backward(d, c, dw="times weight"),
                "dweight has an extra factor of weight: y = n * weight, so dy/dweight = n and "
                "dweight = sum(dout * n)"),
        Mistake("no_rms_division", lambda d, c: _backward(d, c, divide=False),
                "dx is missing the final division by rms: n = x / rms, so every path back to x goes "
                "through 1 / rms"),
    ),
    advice="with cache = (n, weight, rms) and g = dout * weight: dx = (g - n * mean(g * n, axis=-1)) / rms and "
           "dweight = sum(dout * n) over every position.",
)
