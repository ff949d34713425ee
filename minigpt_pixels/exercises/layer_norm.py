"""Exercise: ImageGPT's layer norm (no mean, no bias), replacing `layers.layer_norm`."""

import numpy as np

from .. import layers
from .engine import F32, Case, Exercise, Mistake

FORMULA = "x / sqrt(mean(x**2, axis=-1) + eps) * weight"


def _ms(x):
    return np.mean(np.square(x), axis=-1, keepdims=True)  # [..., 1]


def _case(shape, scale, shift, eps=None):
    def make(rng):
        x = (rng.normal(size=shape) * scale + shift).astype(F32)  # [..., C]
        w = rng.normal(1.0, 0.3, size=shape[-1]).astype(F32)  # [C]
        return (x, w) if eps is None else (x, w, eps)
    return make


EXERCISE = Exercise(
    name="layer_norm",
    signature="layer_norm(x, weight, eps=1e-5)",
    returns="float32 array shaped like x",
    reference=layers.layer_norm,
    points=2,
    cases=(Case("random rows with a non-zero mean", _case((2, 3, 8), 2.0, 0.5)),
           Case("tiny values, where eps matters", _case((4, 8), 1e-3, 0.0)),
           Case("eps passed as the third argument (0.01)", _case((3, 8), 0.1, 0.05, eps=0.01))),
    mistakes=(
        Mistake("mean_centred",
                lambda x, w, eps=1e-5: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w,
                f"you subtracted the mean (that is torch's LayerNorm). ImageGPT's layer norm never centres: {FORMULA}"),
        Mistake("weight_added", lambda x, w, eps=1e-5: x / np.sqrt(_ms(x) + eps) + w,
                "you added the weight like a bias. ImageGPT's layer norm has a gain and no bias: multiply by weight"),
        Mistake("no_weight", lambda x, w, eps=1e-5: x / np.sqrt(_ms(x) + eps),
                "you forgot to multiply by weight (the learned gain)"),
        Mistake("no_eps", lambda x, w, eps=1e-5: x / np.sqrt(_ms(x)) * w,
                "you left out eps: add it inside the square root, sqrt(mean(x**2) + eps)"),
        Mistake("eps_outside_sqrt", lambda x, w, eps=1e-5: x / (np.sqrt(_ms(x)) + eps) * w,
                "eps is added outside the square root; it goes inside: sqrt(mean(x**2) + eps)"),
        Mistake("eps_hard_coded", lambda x, w, eps=1e-5: x / np.sqrt(_ms(x) + 1e-5) * w,
                "you ignored the eps argument (1e-5 hard-coded?): use the eps you are given"),
        Mistake("sum_not_mean", lambda x, w, eps=1e-5: x / np.sqrt(np.sum(x * x, -1, keepdims=True) + eps) * w,
                "you summed the squares; take their mean over the last axis"),
        Mistake("wrong_axis", lambda x, w, eps=1e-5: x / np.sqrt(np.mean(x * x, 0, keepdims=True) + eps) * w,
                "you averaged over the wrong axis: normalise each position over its C features, axis=-1 "
                "(with keepdims=True so it broadcasts)"),
        Mistake("std_not_rms", lambda x, w, eps=1e-5: x / (_ms(x) + eps) * w,
                "you divided by the mean square; divide by its square root"),
    ),
    advice=f"ImageGPT's layer norm is {FORMULA}: no mean subtraction, no bias.",
)
