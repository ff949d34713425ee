"""Exercise: quick_gelu, x * sigmoid(1.702 x), replacing `layers.quick_gelu`."""

import numpy as np

from .. import layers
from .engine import F32, Case, Exercise, Mistake

EXERCISE = Exercise(
    name="quick_gelu",
    signature="quick_gelu(x)",
    returns="float32 array shaped like x",
    reference=layers.quick_gelu,
    points=1,
    cases=(Case("values from -6 to 6", lambda rng: (  # the ends and 0, then the seed's: no output to memorise
        np.sort(np.concatenate([[-6.0, 0.0, 6.0], rng.uniform(-6, 6, 58)])).astype(F32).reshape(1, 61),)),
           Case("random values", lambda rng: ((rng.normal(size=(3, 4, 5)) * 3).astype(F32),))),
    mistakes=(
        Mistake("exact_gelu", lambda x: layers.activation(x, "gelu"),
                "that is the exact GELU, x * Phi(x) with erf. ImageGPT uses quick_gelu: x * sigmoid(1.702 * x)"),
        Mistake("tanh_gelu", lambda x: layers.activation(x, "gelu_new"),
                "that is the tanh approximation of GELU (GPT-2's gelu_new). ImageGPT uses quick_gelu: "
                "x * sigmoid(1.702 * x)"),
        Mistake("silu", lambda x: x / (1 + np.exp(-x)),
                "that is SiLU, x * sigmoid(x): the 1.702 inside the sigmoid is missing"),
        Mistake("sigmoid_only", lambda x: 1 / (1 + np.exp(-1.702 * x)),
                "you returned sigmoid(1.702 * x); multiply it by x"),
        Mistake("relu", lambda x: np.maximum(x, 0), "that is ReLU; ImageGPT uses x * sigmoid(1.702 * x)"),
    ),
    advice="quick_gelu(x) = x * sigmoid(1.702 * x) = x / (1 + exp(-1.702 * x)).",
)
