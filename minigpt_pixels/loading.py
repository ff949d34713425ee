"""Loading and saving models in transformers' layout, as transformers keeps them in modeling_utils: the
PreTrainedIO mixin gives a model class `from_pretrained` and `save_pretrained`.

A checkpoint is checked before any model is built: the config first (a config that cannot fit is refused
before a weight is read), then every tensor's name and shape against the class's `weight_shapes(config)`.
The mixin asks two things of the class it serves: `weight_shapes(config)` (every weight's name and shape)
and `initial_weights(shapes, config, seed)` (fresh weights for a head the checkpoint lacks); it ends in
`cls(config, params=...)`, so loading builds a model exactly as the constructor does.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .config import CONFIG_NAME, ConfigError, ImageGPTConfig, make_save_directory, refuse_hub_arguments
from .errors import ModelInputError
from .weights import load_state_dict, save_state_dict

# Non-persistent causal-mask buffers that older checkpoints saved: not weights, ignored on load.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".crossattention.bias", ".crossattention.masked_bias")
# from_pretrained's torch-side arguments: accepted only where they change nothing here
_LOADING_NO_OPS = {"dtype": (None, "float32", "auto"), "torch_dtype": (None, "float32", "auto"),
                   "use_safetensors": (None, True), "attn_implementation": (None, "eager"),
                   "low_cpu_mem_usage": (None, False, True), "device_map": (None, "cpu"), "weights_only": (None, True)}
HEAD_NAMES = ("lm_head.weight", "score.weight")  # the two head classes' own weights


class WeightsError(ValueError, RuntimeError):
    """A checkpoint that does not fit the config: a missing, unexpected or wrongly shaped tensor. Also a
    RuntimeError, which is what transformers raises for a size mismatch."""


class PreTrainedIO:
    """from_pretrained and save_pretrained, for a class with weight_shapes(config) and initial_weights."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, config=None, state_dict=None, subfolder="",
                        ignore_mismatched_sizes=False, output_loading_info=False, seed=None, **kwargs):
        """Load from an HF-layout directory (config.json + model.safetensors or a sharded index; or DIR/
        subfolder), or a .safetensors file with config.json beside it. Weights are memory-mapped, not copied.

        As in transformers: keyword arguments naming config fields override config.json (num_labels=5
        for a new label set); config= replaces it, state_dict= the weights (with a None path, both are
        needed); ignore_mismatched_sizes=True newly initialises, with a warning, each tensor whose shape
        the (overridden) config changes, instead of refusing; output_loading_info=True also returns
        {"missing_keys", "unexpected_keys", "mismatched_keys"} as sets. Names may come with or without the
        "transformer." prefix. A head this class has but the checkpoint lacks (score.weight when
        fine-tuning a causal checkpoint) is freshly initialised with a warning, as transformers does; the
        other class's head is ignored likewise. A missing path raises FileNotFoundError (an OSError).
        """
        refuse_hub_arguments(f"{cls.__name__}.from_pretrained", kwargs)
        _refuse_torch_arguments(kwargs)
        source, config, state = _read_checkpoint(pretrained_model_name_or_path, subfolder, config, state_dict, kwargs)
        params, info = _fit(cls, config, state, source, ignore_mismatched_sizes, seed)
        model = cls(config, params=params)
        return (model, info) if output_loading_info else model

    def save_pretrained(self, save_directory, max_shard_size=None, safe_serialization=True, push_to_hub=False):
        """Write config.json and model.safetensors (or shards) that transformers' from_pretrained loads.
        Returns the directory. (No generation_config.json: transformers loads without one, and generate's
        settings here are its arguments.)"""
        if not safe_serialization or push_to_hub:
            raise ModelInputError("save_pretrained writes safetensors locally only: safe_serialization=False "
                                  "and push_to_hub=True are not supported")
        make_save_directory(save_directory)  # a file of that name is refused before anything is written
        save_state_dict(self.params, save_directory, max_shard_size=max_shard_size, metadata={"format": "pt"})
        # config last: a directory with a config always has its weights
        self.config.save_pretrained(save_directory, architectures=[type(self).__name__])
        return save_directory


def _refuse_torch_arguments(kwargs):
    """Pop from_pretrained's torch-side arguments; any that would change something here is refused by name."""
    for name, allowed in _LOADING_NO_OPS.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if not any(value is a or (a is not None and str(value).removeprefix("torch.") == str(a)) for a in allowed):
                raise ModelInputError(f"from_pretrained: {name} is not supported (got {value!r}; the weights are "
                                      f"NumPy float32, on the device that to() chooses)")


def _read_checkpoint(path, subfolder, config, state_dict, kwargs):
    """-> (the source's name for messages, the config with kwargs applied, the state dict). The config is
    read first, so a config that cannot fit is refused before any weight is read."""
    if path is None:
        if config is None or state_dict is None:
            raise ModelInputError("from_pretrained(None, ...) needs both config= and state_dict=")
        source = "state_dict"
    else:
        source = os.fspath(path)
        source = os.path.join(source, subfolder) if subfolder else source
        if not os.path.exists(source):
            raise FileNotFoundError(f"{source}: no such model directory or file (nothing is downloaded)")
        if os.path.isdir(source) and os.path.basename(os.path.normpath(source)) == CONFIG_NAME:
            raise ConfigError(f"{source} is a directory, not a config file")
        if os.path.isfile(source) and source.endswith(".json"):
            raise ConfigError(f"from_pretrained: {source} is a config file, not a model; pass the folder that holds "
                              f"it ({os.path.dirname(os.path.abspath(source))})")
    if config is None:
        directory = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
        config = ImageGPTConfig.from_pretrained(os.path.join(directory, CONFIG_NAME), **kwargs)
    elif kwargs:
        config = ImageGPTConfig.from_dict(config.to_dict(), **kwargs)
    config.validate()
    return source, config, load_state_dict(source) if state_dict is None else state_dict


def _fit(cls, config, state, source, ignore_mismatched_sizes, seed):
    """The checkpoint's tensors under this class's names, with its missing head (and, asked for, each
    mismatched tensor) freshly initialised, warning. -> (params, loading info)."""
    shapes = cls.weight_shapes(config)
    params, dropped = rename_for(state, cls.prefix, shapes, source)
    mismatched = {n for n, v in params.items() if n in shapes and tuple(v.shape) != tuple(shapes[n])}
    if mismatched and ignore_mismatched_sizes:
        for n in sorted(mismatched):
            warnings.warn(f"{source}: {n} has shape {tuple(params.pop(n).shape)} in the checkpoint but "
                          f"{tuple(shapes[n])} in this model; newly initialised (size mismatch)", stacklevel=3)
    missing_heads = [n for n in HEAD_NAMES if n in shapes and n not in params and n not in mismatched]
    if missing_heads:
        warnings.warn(f"{source}: {', '.join(missing_heads)} not in the checkpoint; newly initialised "
                      f"(train it before use)", stacklevel=3)
    fresh = [n for n in shapes if n not in params and (n in missing_heads or n in mismatched)]
    params.update(cls.initial_weights({n: shapes[n] for n in fresh}, config, seed))
    params = check_weights(params, shapes, source)
    info = {"missing_keys": set(missing_heads), "unexpected_keys": set(dropped),
            "mismatched_keys": mismatched if ignore_mismatched_sizes else set()}
    return params, info


def rename_for(state: dict, prefix: str, shapes: dict, source: str) -> tuple[dict, list]:
    """Map checkpoint names onto a class's names: add or strip "transformer.", drop mask buffers, drop
    the other class's head. Anything else unexpected is left for check_weights to refuse."""
    other_heads = set(HEAD_NAMES) - set(shapes)
    out, dropped = {}, []
    for name, value in state.items():
        if name.endswith(_BUFFER_SUFFIXES):
            continue
        if name in other_heads:
            dropped.append(name)
            continue
        if prefix and not name.startswith(prefix) and prefix + name in shapes:
            name = prefix + name
        elif not prefix and name.startswith("transformer."):
            name = name[len("transformer."):]
        if name in out:
            raise WeightsError(f"{source}: tensor {name!r} appears twice (with and without 'transformer.')")
        out[name] = value
    if dropped:
        warnings.warn(f"{source}: ignoring {', '.join(dropped)} (not part of this model class)", stacklevel=4)
    return out, dropped


def check_weights(params: dict, shapes: dict, source: str) -> dict:
    """Every expected tensor present, none unexpected, each with the config's shape, float32."""
    missing = [n for n in shapes if n not in params]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise WeightsError(f"{source}: missing tensor(s) {', '.join(missing[:3])}{more}")
    unexpected = [n for n in params if n not in shapes]
    if unexpected:
        more = f" (and {len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise WeightsError(f"{source}: unexpected tensor(s) {', '.join(unexpected[:3])}{more} for this config")
    out = {}
    for name, shape in shapes.items():
        value = params[name]
        if tuple(value.shape) != tuple(shape):
            raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(value.shape)}, but config.json "
                               f"implies {tuple(shape)}")
        if not np.issubdtype(value.dtype, np.floating):
            raise WeightsError(f"{source}: tensor {name!r} has dtype {value.dtype}, expected floating point")
        out[name] = value if value.dtype == np.float32 else value.astype(np.float32)
    return out
