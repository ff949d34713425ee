"""ImageGPTConfig: transformers' field names and defaults, read from and written to config.json.

As in transformers: the aliases `hidden_size`, `num_attention_heads`, `num_hidden_layers` and
`max_position_embeddings` read and write n_embd, n_head, n_layer and n_positions; setting `num_labels`
rebuilds `id2label` / `label2id`; keys this class does not know (`dtype`, `transformers_version`,
a checkpoint's own extras) are kept in `extra`, readable as attributes and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from dataclasses import dataclass, field

import numpy as np

from . import limits
from .inputs import is_int, is_number
from .weights import atomic_write_bytes

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "relu", "tanh")  # the ones layers.activation knows
CONFIG_NAME = "config.json"
ALIASES = {  # transformers' attribute_map for ImageGPT
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
# from_pretrained's hub arguments: nothing is downloaded here, so each is accepted only at its default
HUB_ARGUMENTS = {"cache_dir": None, "force_download": False, "proxies": None, "token": None, "revision": "main",
                 "trust_remote_code": False, "local_files_only": None}


class ConfigError(ValueError):
    """A config.json or ImageGPTConfig argument that cannot describe a model."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """No config.json where one was asked for: an OSError, as transformers raises."""


@dataclass(init=False)
class ImageGPTConfig:
    vocab_size: int = 512 + 1  # 512 palette colours + 1 start-of-sequence token (SOS = vocab_size - 1)
    n_positions: int = 32 * 32  # one position per pixel of a 32x32 image
    n_embd: int = 512  # hidden width
    n_layer: int = 24  # transformer blocks
    n_head: int = 8  # attention heads; n_embd must divide evenly
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    activation_function: str = "quick_gelu"  # x * sigmoid(1.702 x), OpenAI's "gelu2"
    resid_pdrop: float = 0.1  # dropout probabilities: used only when training with dropout on
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02  # std of the normal initialisation
    scale_attn_weights: bool = True  # divide scores by sqrt(head_dim)
    use_cache: bool = True  # a forward returns its KV cache unless told use_cache=False
    tie_word_embeddings: bool = False  # the LM head has no SOS row, so it cannot be tied to wte
    scale_attn_by_inverse_layer_idx: bool = False  # also divide scores by (layer_idx + 1)
    reorder_and_upcast_attn: bool = False  # scale inside the matmul, float32 softmax; same maths here
    add_cross_attention: bool = False  # blocks also attend to encoder_hidden_states
    # PretrainedConfig's generic fields: the forward's defaults when an argument is not given
    output_hidden_states: bool = False
    output_attentions: bool = False
    return_dict: bool = True  # False: the forward returns a plain tuple
    architectures: list[str] | None = None
    id2label: dict[int, str] | None = None  # its length is num_labels (2 by default)
    label2id: dict[str, int] | None = None
    problem_type: str | None = None  # None: chosen from num_labels and the labels' dtype, as transformers does
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict = field(default_factory=dict, repr=False)  # unknown config.json keys, written back unchanged

    def __init__(self, **kwargs):
        for alias, name in ALIASES.items():
            if alias in kwargs:
                if name in kwargs:
                    raise ConfigError(f"config: pass {name} or its alias {alias}, not both")
                kwargs[name] = kwargs.pop(alias)
        if kwargs.pop("model_type", "imagegpt") != "imagegpt":
            raise ConfigError("config: model_type must be 'imagegpt'")
        if kwargs.get("is_encoder_decoder"):
            raise ConfigError("config: is_encoder_decoder=True is not supported: ImageGPT is decoder-only")
        num_labels = kwargs.pop("num_labels", None)
        for f in dataclasses.fields(self):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            object.__setattr__(self, f.name, kwargs.pop(f.name, default))
        self.extra = {**_as_dict("extra", self.extra), **kwargs}  # PretrainedConfig keeps every other key too
        sizes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        limits.check_config(types.SimpleNamespace(**sizes, num_labels=2 if num_labels is None else num_labels),
                            ConfigError)  # before anything is sized by these fields, label names included
        self._labels(num_labels)
        self.validate()
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            # transformers refuses this pair when a config is made, though a model takes it when the fields
            # are set afterwards (its test_problem_types does so): refused here, and only here, likewise
            raise ConfigError('config: problem_type="single_label_classification" needs num_labels > 1 '
                              '(use problem_type="regression" for one output)')

    def _labels(self, num_labels):
        if num_labels is not None and not (is_int(num_labels) and num_labels > 0):
            raise ConfigError(f"config: num_labels must be a positive integer, got {num_labels!r}")
        id2label, label2id = _as_dict("id2label", self.id2label), _as_dict("label2id", self.label2id)
        try:
            id2label = {int(k): str(v) for k, v in id2label.items()}
            label2id = {str(k): int(v) for k, v in label2id.items()}
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config: id2label must map integer ids to names, label2id names to integer ids "
                              f"({e})") from None
        if self.id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(2 if num_labels is None else int(num_labels))}
        elif num_labels is not None and len(id2label) != num_labels:
            raise ConfigError(f"config: num_labels={num_labels} disagrees with id2label, which has {len(id2label)} "
                              f"labels")
        if not id2label:
            raise ConfigError("config: id2label is empty; num_labels must be at least 1")
        object.__setattr__(self, "id2label", id2label)
        object.__setattr__(self, "label2id", label2id if self.label2id is not None else
                           {v: k for k, v in id2label.items()})

    # ---- attribute access as in transformers --------------------------------------------------
    def __getattr__(self, name):  # only called when normal lookup fails
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"'ImageGPTConfig' object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in ALIASES:
            name = ALIASES[name]
        if name.startswith("_") or name in self.__dataclass_fields__ or isinstance(
                getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:  # a PretrainedConfig attribute we do not use: kept, and saved with the rest
            self.extra[name] = value

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n):
        if n != self.num_labels:  # transformers: a new label count means fresh LABEL_i names
            self.id2label, self.label2id = None, None
            self._labels(n)

    # transformers' attribute_map aliases, readable and settable
    hidden_size = property(lambda self: self.n_embd, lambda self, v: setattr(self, "n_embd", v))
    max_position_embeddings = property(lambda self: self.n_positions, lambda self, v: setattr(self, "n_positions", v))
    num_attention_heads = property(lambda self: self.n_head, lambda self, v: setattr(self, "n_head", v))
    num_hidden_layers = property(lambda self: self.n_layer, lambda self, v: setattr(self, "n_layer", v))

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def sos_token_id(self) -> int:
        return self.vocab_size - 1  # ImageGPT's start-of-sequence token is the last id

    def get_text_config(self, decoder=None) -> ImageGPTConfig:
        return self  # not a composite config: transformers returns the config itself

    def validate(self) -> None:
        """Raise ConfigError naming the first field that cannot describe a model (called on creation; the
        model calls it again, since fields may be set afterwards)."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not (is_int(value) and value > 0):
                raise ConfigError(f"config: {name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.vocab_size < 2:
            raise ConfigError(f"config: vocab_size must be at least 2 (colours + SOS), got {self.vocab_size}")
        if self.n_inner is not None and not (is_int(self.n_inner) and self.n_inner > 0):
            raise ConfigError(f"config: n_inner must be a positive integer or null, got {self.n_inner!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"config: unknown activation_function {self.activation_function!r}; known: {', '.join(ACTIVATIONS)}")
        if not (is_number(self.layer_norm_epsilon) and self.layer_norm_epsilon > 0):
            raise ConfigError(f"config: layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}")
        if not (is_number(self.initializer_range) and self.initializer_range >= 0):
            raise ConfigError(f"config: initializer_range must be a number >= 0, got {self.initializer_range!r}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            p = getattr(self, name)
            if not (is_number(p) and 0 <= p < 1):
                raise ConfigError(f"config: {name} must be in [0, 1), got {p!r}")
        for f in dataclasses.fields(self):
            if f.type == "bool":
                value = getattr(self, f.name)
                if not isinstance(value, (bool, np.bool_)):  # "false" in a JSON file would count as True
                    raise ConfigError(f"config: {f.name} must be true or false, got {value!r}")
                object.__setattr__(self, f.name, bool(value))
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"config: unknown problem_type {self.problem_type!r}; known: "
                              f"{', '.join(map(str, PROBLEM_TYPES[1:]))}")
        if self.architectures is not None and not (isinstance(self.architectures, list)
                                                   and all(isinstance(a, str) for a in self.architectures)):
            raise ConfigError(f"config: architectures must be a list of class names, got {self.architectures!r}")
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and not is_int(value):
                raise ConfigError(f"config: {name} must be an integer or null, got {value!r}")

    # ---- presets from the paper's size table (not the SegFormer table pasted in newer docs) -----
    @classmethod
    def igpt_s(cls, **kw) -> ImageGPTConfig:
        return cls(**{"n_layer": 24, "n_embd": 512, "n_head": 8, **kw})  # 76M parameters

    @classmethod
    def igpt_m(cls, **kw) -> ImageGPTConfig:
        return cls(**{"n_layer": 36, "n_embd": 1024, "n_head": 8, **kw})  # 455M

    @classmethod
    def igpt_l(cls, **kw) -> ImageGPTConfig:
        return cls(**{"n_layer": 48, "n_embd": 1536, "n_head": 16, **kw})  # 1.4B

    # ---- dicts and config.json -------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}  # JSON keys are strings
        return {**self.extra, **d, "model_type": "imagegpt"}

    def to_diff_dict(self) -> dict:
        """to_dict() without the values that equal the defaults (model_type always kept)."""
        default = ImageGPTConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if k == "model_type" or default.get(k, object()) != v}

    def update(self, values: dict) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    @classmethod
    def from_dict(cls, config_dict: dict, source: str = "config", return_unused_kwargs=False, **kwargs):
        """A config from a dict (config.json's contents). `kwargs` override its fields, as in transformers;
        one that names no field is refused (returned instead with return_unused_kwargs=True)."""
        if not isinstance(config_dict, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(config_dict).__name__}")
        if config_dict.get("model_type", "imagegpt") != "imagegpt":
            raise ConfigError(f"{source}: model_type is {config_dict['model_type']!r}, not 'imagegpt'")
        known = set(cls.__dataclass_fields__) | set(ALIASES) | {"num_labels"}
        unused = {k: v for k, v in kwargs.items() if k not in known and k not in config_dict}
        if unused and not return_unused_kwargs:
            raise ConfigError(f"{source}: {', '.join(sorted(unused))} is not an ImageGPTConfig field")
        d = {**config_dict, **{k: v for k, v in kwargs.items() if k not in unused}}
        if "num_labels" in kwargs and "id2label" not in kwargs:
            d.pop("id2label", None), d.pop("label2id", None)  # a new label count: fresh names, as transformers does
        elif "id2label" in d and "num_labels" in d:
            d.pop("num_labels")  # older files wrote both; id2label decides
        try:
            config = cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {str(e).removeprefix('config: ')}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{source}: {e}") from None
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> ImageGPTConfig:
        path = os.fspath(json_file)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigNotFoundError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path} is a directory, not a config file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from None
        except RecursionError:  # json recurses once per level: a file nested 100 000 deep is no config
            raise ConfigError(f"{path}: cannot read config: JSON nested too deeply") from None
        return cls.from_dict(d, source=path)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str = "",
                        return_unused_kwargs=False, **kwargs):
        """Read DIR/config.json (or DIR/subfolder/config.json, or that file itself). Keyword arguments
        override its fields; hub arguments are accepted at their defaults only (nothing is downloaded)."""
        refuse_hub_arguments("ImageGPTConfig.from_pretrained", kwargs)
        path = os.fspath(pretrained_model_name_or_path)
        path = os.path.join(path, subfolder) if subfolder else path
        named = os.path.basename(os.path.normpath(path)) == CONFIG_NAME  # the file itself, or a folder misnamed so
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) and not named else path
        if os.path.isdir(file):
            raise ConfigError(f"{file} is a directory, not a config file")
        if not os.path.isfile(file):
            raise ConfigNotFoundError(f"{file}: no such file (a local model directory with {CONFIG_NAME} is needed; "
                                      f"nothing is downloaded)")
        config = cls.from_json_file(file)
        if not kwargs and not return_unused_kwargs:
            return config
        return cls.from_dict(config.to_dict(), source=file, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def to_json_string(self, use_diff: bool = False, **overrides) -> str:
        d = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps({**d, **overrides}, indent=2, sort_keys=True, default=_json_default) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = False) -> None:
        atomic_write_bytes(os.fspath(json_file_path), self.to_json_string(use_diff).encode("utf-8"))

    def save_pretrained(self, save_directory: str | os.PathLike, architectures: list[str] | None = None,
                        push_to_hub: bool = False) -> str:
        """Write save_directory/config.json (atomically) and return its path."""
        make_save_directory(save_directory, push_to_hub)
        path = os.path.join(save_directory, CONFIG_NAME)
        overrides = {"architectures": architectures} if architectures else {}
        atomic_write_bytes(path, self.to_json_string(**overrides).encode("utf-8"))
        return path


def make_save_directory(save_directory, push_to_hub=False):
    """save_pretrained's folder, made if need be; refused, naming it, if it is a file or an upload is asked."""
    if push_to_hub:
        raise ConfigError("save_pretrained: push_to_hub=True is not supported (nothing is uploaded)")
    if os.path.isfile(save_directory):
        raise ConfigError(f"save_pretrained: {os.fspath(save_directory)} is a file, not a directory")
    os.makedirs(save_directory, exist_ok=True)


def _as_dict(name, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config: {name} must be a JSON object (a dict), got {type(value).__name__}")
    return value


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    return str(x).removeprefix("torch.")  # torch dtypes, as transformers writes them


def refuse_hub_arguments(where, kwargs):
    """Pop from_pretrained's hub arguments; any not at its default is refused by name."""
    for name, default in HUB_ARGUMENTS.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if value != default and not (name == "local_files_only" and value is True):
                raise ConfigError(f"{where}: {name}={value!r} is not supported: nothing is downloaded; pass a local "
                                  f"directory")
