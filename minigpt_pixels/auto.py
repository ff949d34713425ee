"""transformers' Auto* names, as the ImageGPT documentation's examples use them, each resolving a local
directory (nothing is downloaded) to this package's class:

    AutoConfig.from_pretrained(DIR)                       -> ImageGPTConfig
    AutoImageProcessor.from_pretrained(DIR)               -> ImageGPTImageProcessor
    AutoModel.from_pretrained(DIR)                        -> ImageGPTModel
    AutoModelForImageClassification.from_pretrained(DIR)  -> ImageGPTForImageClassification

Each also has from_config(config) where transformers has it. Only ImageGPT exists here, so a directory
holding another model type is refused by its config (model_type must be "imagegpt").
"""

from __future__ import annotations

from .config import ImageGPTConfig
from .model import ImageGPTForImageClassification, ImageGPTModel
from .processor import ImageGPTImageProcessor

__all__ = ["AutoConfig", "AutoImageProcessor", "AutoModel", "AutoModelForImageClassification"]


class _Auto:
    """A name that only loads: transformers' Auto classes cannot be instantiated either."""
    target = None

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is not made directly: use {type(self).__name__}.from_pretrained(DIR)"
                        f" (it gives a {self.target.__name__})")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return cls.target.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class AutoConfig(_Auto):
    target = ImageGPTConfig


class AutoImageProcessor(_Auto):
    target = ImageGPTImageProcessor


class _AutoModel(_Auto):
    @classmethod
    def from_config(cls, config, seed=None):
        """A newly initialised model of this kind for `config` (an ImageGPTConfig)."""
        return cls.target(config, seed=seed)


class AutoModel(_AutoModel):
    target = ImageGPTModel


class AutoModelForImageClassification(_AutoModel):
    target = ImageGPTForImageClassification
