"""ImageGPTConfig: transformers' field names and defaults, read from and written to config.json."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from . import limits

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "relu", "tanh")  # the ones layers.activation knows
CONFIG_NAME = "config.json"


class ConfigError(ValueError):
    """A config.json or ImageGPTConfig argument that cannot describe a model."""


@dataclass
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
    use_cache: bool = True
    tie_word_embeddings: bool = False  # the LM head has no SOS row, so it cannot be tied to wte
    scale_attn_by_inverse_layer_idx: bool = False  # also divide scores by (layer_idx + 1)
    reorder_and_upcast_attn: bool = False  # scale inside the matmul, float32 softmax; same maths here
    add_cross_attention: bool = False  # blocks also attend to encoder_hidden_states
    num_labels: int = 2  # classification head outputs; 1 means regression (MSE)
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None  # None: chosen from num_labels and the labels' dtype, as transformers does
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict = field(default_factory=dict, repr=False)  # unknown config.json keys, written back unchanged

    def __post_init__(self):
        limits.check_config(self, ConfigError)  # before anything is sized by these fields (label names too)
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        self.validate()

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

    # transformers' attribute_map aliases
    hidden_size = property(lambda self: self.n_embd)
    max_position_embeddings = property(lambda self: self.n_positions)
    num_attention_heads = property(lambda self: self.n_head)
    num_hidden_layers = property(lambda self: self.n_layer)

    def validate(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "num_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config: {name} must be a positive integer, got {value!r}")
        if self.vocab_size < 2:
            raise ConfigError(f"config: vocab_size must be at least 2 (colours + SOS), got {self.vocab_size}")
        if self.n_inner is not None and (isinstance(self.n_inner, bool) or not isinstance(self.n_inner, int)
                                         or self.n_inner <= 0):
            raise ConfigError(f"config: n_inner must be a positive integer or null, got {self.n_inner!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"config: unknown activation_function {self.activation_function!r}; known: {', '.join(ACTIVATIONS)}")
        if not (isinstance(self.layer_norm_epsilon, (int, float)) and self.layer_norm_epsilon > 0):
            raise ConfigError(f"config: layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0 <= p < 1):
                raise ConfigError(f"config: {name} must be in [0, 1), got {p!r}")
        if self.problem_type not in (None, "regression", "single_label_classification",
                                     "multi_label_classification"):
            raise ConfigError(f"config: unknown problem_type {self.problem_type!r}")

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

    # ---- config.json -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}  # JSON keys are strings
        return {**self.extra, **d, "model_type": "imagegpt"}

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> ImageGPTConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("model_type", "imagegpt") != "imagegpt":
            raise ConfigError(f"{source}: model_type is {d['model_type']!r}, not 'imagegpt'")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        try:
            return cls(**known, extra=extra)
        except ConfigError as e:
            raise ConfigError(f"{source}: {str(e).removeprefix('config: ')}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ImageGPTConfig:
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from None
        return cls.from_dict(d, source=path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ImageGPTConfig:
        path = os.fspath(path)
        return cls.from_json_file(os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path)

    def to_json_string(self, **overrides) -> str:
        return json.dumps({**self.to_dict(), **overrides}, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike, architectures: list[str] | None = None) -> str:
        from .weights import atomic_write_bytes

        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        overrides = {"architectures": architectures} if architectures else {}
        atomic_write_bytes(path, self.to_json_string(**overrides).encode("utf-8"))
        return path
