"""minigpt_pixels: OpenAI's ImageGPT (iGPT) in readable NumPy, accelerated by Numba.

Reading order: layers.py -> model.py -> generation.py -> kernels/.
"""

import importlib
import os

__version__ = "0.1.0"

# The small iGPT trained on scikit-learn's digits that ships inside the package (HF layout).
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "default_model")

_LAZY = {  # public name -> module; imported on first use so `import minigpt_pixels` stays light
    "ImageGPTConfig": "config",
    "ImageGPTModel": "model",
    "ImageGPTForCausalImageModeling": "model",
    "ImageGPTForImageClassification": "model",
    "ImageGPTImageProcessor": "processor",
    "GenerationConfig": "generation",
    "fit_palette": "palette",
    "quantize": "palette",
    "dequantize": "palette",
    "load_palette": "palette",
    "load_image": "images",
    "ImageError": "images",
    "AutoConfig": "auto",  # transformers' Auto* names for a local directory, as the ImageGPT docs use them
    "AutoImageProcessor": "auto",
    "AutoModel": "auto",
    "AutoModelForImageClassification": "auto",
}

__all__ = ["DEFAULT_MODEL", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'minigpt_pixels' has no attribute {name!r}")
