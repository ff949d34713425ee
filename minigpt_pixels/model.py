"""The HF-named model classes. They hold a config and a flat dict of float32 weights keyed by the exact
HF parameter names, check their inputs (inputs.py), and run `forward` below on the backend that
`to()` chose (backends.py).

    ImageGPTModel                    wte, wpe, h.{i}.*, ln_f           -> last_hidden_state
    ImageGPTForCausalImageModeling   transformer.* + lm_head.weight    -> logits over the 512 colours
    ImageGPTForImageClassification   transformer.* + score.weight      -> logits over num_labels
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields

import numpy as np

from . import backprop, generation, layers
from . import inputs as checks
from .backends import DEFAULT_DEVICE, backend
from .cache import KVCache, check_cache
from .config import CONFIG_NAME, ImageGPTConfig, refuse_hub_arguments
from .inputs import ModelInputError
from .weights import load_state_dict, save_state_dict

__all__ = ["ImageGPTModel", "ImageGPTForCausalImageModeling", "ImageGPTForImageClassification", "KVCache",
           "ModelInputError", "ModelOutput", "WeightsError", "forward"]

# Non-persistent causal-mask buffers that older checkpoints saved: not weights, ignored on load.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".crossattention.bias", ".crossattention.masked_bias")


class WeightsError(ValueError, RuntimeError):
    """A checkpoint that does not fit the config: a missing, unexpected or wrongly shaped tensor. Also a
    RuntimeError, which is what transformers raises for a size mismatch."""


# ---- outputs -------------------------------------------------------------------------------------
@dataclass
class ModelOutput:
    """transformers' output field names, holding NumPy arrays. Index by name (out["logits"]) or
    attribute (out.logits) or position (out[0]); `len(out)`, `keys()` and `to_tuple()` count the fields
    that are set, in order, as transformers' ModelOutput does. `cache` is transformers 5.24's name for
    the KV cache; `past_key_values`, the older one, reads the same."""
    loss: np.ndarray | None = None
    logits: np.ndarray | None = None
    last_hidden_state: np.ndarray | None = None
    cache: KVCache | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None

    @property
    def past_key_values(self):
        return self.cache

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key):
        return key in self.keys()

    def __len__(self):
        return len(self.keys())

    def __iter__(self):
        return iter(self.keys())

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self):
        return self.to_tuple()

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self):
        return tuple(getattr(self, k) for k in self.keys())


class _Count(int):
    """A parameter count that reads as a number (model.num_parameters) and calls as transformers'
    method does (model.num_parameters())."""

    def __call__(self, only_trainable=False, exclude_embeddings=False):
        if exclude_embeddings:
            raise ModelInputError("num_parameters: exclude_embeddings=True is not supported")
        return int(self)


# ---- the forward pass -----------------------------------------------------------------------------
@dataclass
class ForwardInputs:
    """One call's inputs, checked (see ImageGPTPreTrainedModel.check_inputs): ids [B, T] or embeddings
    [B, T, C], positions [B or 1, T], the additive masks layers.additive_mask makes, the KV cache."""
    input_ids: np.ndarray | None
    inputs_embeds: np.ndarray | None
    position_ids: np.ndarray
    token_type_ids: np.ndarray | None = None
    attention_mask: np.ndarray | None = None  # the caller's 0/1 mask [B, P + T]; `mask` is what attention adds
    mask: np.ndarray | None = None  # [B, 1, 1, P + T]
    cache: KVCache | None = None
    encoder_hidden_states: np.ndarray | None = None  # [B, S, C]
    encoder_mask: np.ndarray | None = None  # [B, 1, 1, S]
    output_attentions: bool = False
    output_hidden_states: bool = False

    @property
    def rows(self):
        """B * T: the positions this call runs through every weight."""
        B, T = (self.input_ids if self.input_ids is not None else self.inputs_embeds).shape[:2]
        return B * T

    @property
    def plain(self):
        """Ids, positions and a KV cache alone: what a whole-forward fusion (the GPU's) takes."""
        return (self.input_ids is not None and self.attention_mask is None and self.token_type_ids is None
                and self.encoder_hidden_states is None and not self.output_attentions
                and not self.output_hidden_states)


def forward(ops, p, prefix, config, inputs):
    """ImageGPT's body, picoGPT's gpt2(): the embeddings, n_layer pre-norm blocks, ln_f.

    `ops` is the backend (backends.py): these same lines run layers.py's functions, the Numba kernels'
    or the GPU fallback's. p: the flat weight dict; prefix: "transformer." in the head models.
    -> the last hidden state [B, T, C], the n_layer + 1 hidden states (the embeddings, each block's
    output, except that the last is taken after ln_f, as transformers does) and each block's tuple of
    attention weights (None in it when not asked for).
    """
    x = ops.embedding(inputs.input_ids, p[prefix + "wte.weight"], p[prefix + "wpe.weight"], inputs.position_ids,
                      inputs.token_type_ids, inputs.inputs_embeds)  # [B, T] -> [B, T, C]
    hidden, weights = [x], []
    for i in range(config.n_layer):
        x, w = ops.transformer_block(x, p, f"{prefix}h.{i}.", config, i, inputs.mask, inputs.cache,
                                     inputs.encoder_hidden_states, inputs.encoder_mask,
                                     need_weights=inputs.output_attentions)  # [B, T, C]
        hidden.append(x)
        weights.append(w)
    x = ops.layer_norm(x, p[prefix + "ln_f.weight"], config.layer_norm_epsilon)  # [B, T, C]
    return x, (*hidden[:-1], x), weights


# ---- weights: expected names and shapes, random initialisation ----------------------------------
def transformer_shapes(config: ImageGPTConfig, prefix: str = "") -> dict[str, tuple]:
    """Every weight of the transformer body with its shape, named as transformers names it."""
    C, F, V = config.n_embd, config.inner_dim, config.vocab_size
    shapes = {prefix + "wte.weight": (V, C), prefix + "wpe.weight": (config.n_positions, C)}
    for i in range(config.n_layer):
        h = f"{prefix}h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,),
            h + "mlp.c_fc.weight": (C, F), h + "mlp.c_fc.bias": (F,),
            h + "mlp.c_proj.weight": (F, C), h + "mlp.c_proj.bias": (C,),
        })
        if config.add_cross_attention:
            shapes.update({
                h + "ln_cross_attn.weight": (C,),
                h + "crossattention.c_attn.weight": (C, 2 * C), h + "crossattention.c_attn.bias": (2 * C,),
                h + "crossattention.q_attn.weight": (C, C), h + "crossattention.q_attn.bias": (C,),
                h + "crossattention.c_proj.weight": (C, C), h + "crossattention.c_proj.bias": (C,),
            })
    shapes[prefix + "ln_f.weight"] = (C,)
    return shapes


def init_weights(shapes: dict[str, tuple], config: ImageGPTConfig, seed=None) -> dict[str, np.ndarray]:
    """transformers' initialisation: N(0, 0.02) weights, zero biases, unit norms, and the residual
    projections (c_proj) scaled by 1/sqrt(2 * n_layer) as in GPT-2."""
    rng = np.random.default_rng(seed)
    std = config.initializer_range
    params = {}
    for name, shape in shapes.items():
        if name.endswith("bias"):
            params[name] = np.zeros(shape, np.float32)
        elif "ln_" in name:
            params[name] = np.ones(shape, np.float32)
        else:
            s = std / np.sqrt(2 * config.n_layer) if "c_proj" in name else std
            params[name] = rng.normal(0.0, s, size=shape).astype(np.float32)
    return params


# ---- the models ----------------------------------------------------------------------------------
# from_pretrained's torch-side arguments: accepted only where they change nothing here
_LOADING_NO_OPS = {"dtype": (None, "float32", "auto"), "torch_dtype": (None, "float32", "auto"),
                   "use_safetensors": (None, True), "attn_implementation": (None, "eager"),
                   "low_cpu_mem_usage": (None, False, True), "device_map": (None, "cpu"), "weights_only": (None, True)}


class ImageGPTPreTrainedModel:
    main_input_name = "input_ids"
    base_model_prefix = "transformer"

    def __init__(self, config: ImageGPTConfig, params: dict[str, np.ndarray] | None = None, seed=None):
        if not isinstance(config, ImageGPTConfig):
            raise TypeError(f"config must be an ImageGPTConfig, got {type(config).__name__}")
        config.validate()  # fields may have been set since the config was made
        self.config = config
        shapes = self.expected_shapes()
        if params is None:
            params = init_weights(shapes, config, seed)
        self.params = check_weights(params, shapes, source="params")
        self.backend = backend(DEFAULT_DEVICE, self.params, config, self.prefix)  # see to()

    # subclasses say where the body's weights live ("transformer." in the head models) and which head they add
    prefix = ""

    def head_shapes(self) -> dict[str, tuple]:
        return {}

    def expected_shapes(self) -> dict[str, tuple]:
        return {**transformer_shapes(self.config, self.prefix), **self.head_shapes()}

    @property
    def num_parameters(self) -> int:
        """The weight count: model.num_parameters, or model.num_parameters() as in transformers."""
        return _Count(sum(int(v.size) for v in self.params.values()))

    def can_generate(self) -> bool:
        return hasattr(self, "generate")

    # transformers' embedding accessors, on the weight arrays
    def get_input_embeddings(self) -> np.ndarray:
        """wte [vocab_size, n_embd]: `model.get_input_embeddings()[input_ids]` gives inputs_embeds."""
        return self.params[self.prefix + "wte.weight"]

    def set_input_embeddings(self, value):
        name = self.prefix + "wte.weight"
        value = np.asarray(value)
        if value.shape != self.params[name].shape:
            raise ModelInputError(f"set_input_embeddings: wte.weight has shape {value.shape}, the config needs "
                                  f"{self.params[name].shape}")
        self.params[name] = value.astype(np.float32, copy=False)

    def get_output_embeddings(self):
        return self.params.get("lm_head.weight")

    @property
    def base_model(self):
        """The transformer body as an ImageGPTModel sharing these weights (the model itself for ImageGPTModel)."""
        if not self.prefix:
            return self
        body = {k[len(self.prefix):]: v for k, v in self.params.items() if k.startswith(self.prefix)}
        return ImageGPTModel(self.config, params=body).to(self.device)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- loading and saving ----------------------------------------------------------------
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
        for name, allowed in _LOADING_NO_OPS.items():
            if name in kwargs:
                value = kwargs.pop(name)
                if not any(value is a or (a is not None and str(value).removeprefix("torch.") == str(a))
                           for a in allowed):
                    raise ModelInputError(f"from_pretrained: {name} is not supported (got {value!r}; the weights "
                                          f"are NumPy float32, on the device that to() chooses)")
        if pretrained_model_name_or_path is None:
            if config is None or state_dict is None:
                raise ModelInputError("from_pretrained(None, ...) needs both config= and state_dict=")
            path, state = "state_dict", state_dict
        else:
            path = os.fspath(pretrained_model_name_or_path)
            path = os.path.join(path, subfolder) if subfolder else path
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such model directory or file (nothing is downloaded)")
            directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
            state = state_dict
        if config is None:  # the config first: a config that cannot fit is refused before any weight is read
            config = ImageGPTConfig.from_pretrained(os.path.join(directory, CONFIG_NAME), **kwargs)
        elif kwargs:
            config = ImageGPTConfig.from_dict(config.to_dict(), **kwargs)
        if state is None:
            state = load_state_dict(path)
        model = cls.__new__(cls)
        model.config = config
        config.validate()
        shapes = model.expected_shapes()
        params, dropped = _rename_for(state, model.prefix, shapes, source=path)
        mismatched = {n for n, v in params.items() if n in shapes and tuple(v.shape) != tuple(shapes[n])}
        if mismatched and ignore_mismatched_sizes:
            for n in sorted(mismatched):
                warnings.warn(f"{path}: {n} has shape {tuple(params.pop(n).shape)} in the checkpoint but "
                              f"{tuple(shapes[n])} in this model; newly initialised (size mismatch)", stacklevel=2)
        missing_heads = [n for n in model.head_shapes() if n not in params and n not in mismatched]
        if missing_heads:
            warnings.warn(f"{path}: {', '.join(missing_heads)} not in the checkpoint; newly initialised "
                          f"(train it before use)", stacklevel=2)
        fresh = [n for n in shapes if n not in params and (n in missing_heads or n in mismatched)]
        params.update(init_weights({n: shapes[n] for n in fresh}, config, seed))
        model.params = check_weights(params, shapes, source=path)
        model.backend = backend(DEFAULT_DEVICE, model.params, config, model.prefix)  # see to()
        if output_loading_info:
            info = {"missing_keys": set(missing_heads), "unexpected_keys": set(dropped),
                    "mismatched_keys": mismatched if ignore_mismatched_sizes else set()}
            return model, info
        return model

    def save_pretrained(self, save_directory, max_shard_size=None, safe_serialization=True, push_to_hub=False):
        """Write config.json and model.safetensors (or shards) that transformers' from_pretrained loads.
        Returns the directory. (No generation_config.json: transformers loads without one, and generate's
        settings here are its arguments.)"""
        if not safe_serialization or push_to_hub:
            raise ModelInputError("save_pretrained writes safetensors locally only: safe_serialization=False "
                                  "and push_to_hub=True are not supported")
        os.makedirs(save_directory, exist_ok=True)
        save_state_dict(self.params, save_directory, max_shard_size=max_shard_size, metadata={"format": "pt"})
        # config last: a directory with a config always has its weights
        self.config.save_pretrained(save_directory, architectures=[type(self).__name__])
        return save_directory

    # ---- devices ----------------------------------------------------------------------------
    def to(self, device: str):
        """Choose the backend explicitly, once: "numpy" runs layers.py line by line (the reference), "cpu"
        the same maths with Numba kernels for the hot spots (kernels/cpu.py), "cuda" the Numba CUDA
        kernels (kernels/cuda.py), copying the weights to the GPU now. "auto" (what a new model has) is
        "cpu" for a model big enough to repay Numba's start-up, else "numpy" (backends.auto_device);
        `model.device` says which. All agree with transformers; see backends.py."""
        self.backend = backend(device, self.params, self.config, self.prefix)
        return self

    @property
    def device(self) -> str:
        return self.backend.name

    @property
    def _cuda(self):
        """The GPU's copy of the weights and its forward (kernels/cuda_model.CudaRunner) on "cuda", else None."""
        return getattr(self.backend, "runner", None)

    # ---- the forward pass -------------------------------------------------------------------
    def options(self, cache, kwargs, use_cache, output_attentions, output_hidden_states, return_dict):
        """transformers' defaults for a forward: each option left None follows the config; the cache may come
        as cache= or, the older name, past_key_values= (kept in kwargs). -> (cache, use_cache, output_attentions,
        output_hidden_states, return_dict)."""
        if "past_key_values" in kwargs:
            if cache is not None:
                raise ModelInputError("pass cache or past_key_values, not both (the same thing: 5.24's name and "
                                      "the older one)")
            cache = kwargs.pop("past_key_values")
        checks.check_forward_kwargs(f"{type(self).__name__}.forward", kwargs)
        cfg = self.config
        pick = (lambda value, default: default if value is None else value)
        return (cache, pick(use_cache, cfg.use_cache), pick(output_attentions, cfg.output_attentions),
                pick(output_hidden_states, cfg.output_hidden_states), pick(return_dict, cfg.return_dict))

    def check_inputs(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                     inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                     output_hidden_states=False, encoder_hidden_states=None, encoder_attention_mask=None):
        """The arguments of a forward call, checked (inputs.py), as ForwardInputs. With use_cache and no
        past_key_values, a new KVCache holding just this call's positions."""
        cfg = self.config
        B, T = checks.check_input_ids(cfg, input_ids, inputs_embeds)
        cache = KVCache(cfg, B, grow=True) if past_key_values is None and use_cache else past_key_values
        past = 0 if cache is None else check_cache(cfg, cache, B).get_seq_length()
        checks.check_positions(cfg, past, T)
        if position_ids is None:
            position_ids = np.arange(past, past + T)[None, :]  # [1, T]: the positions after the cached ones
        else:
            position_ids = checks.check_ids("position_ids", position_ids, cfg.n_positions, (B, T))
        if cache is not None:
            cache.reserve(past + T)  # room for this call's keys and values before any block writes them
        inputs = ForwardInputs(
            None if input_ids is None else np.asarray(input_ids),
            None if inputs_embeds is None else checks.check_floats("inputs_embeds", inputs_embeds, (B, T, cfg.n_embd)),
            position_ids, cache=cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        if token_type_ids is not None:
            inputs.token_type_ids = checks.check_ids("token_type_ids", token_type_ids, cfg.vocab_size, (B, T))
        if attention_mask is not None:
            inputs.attention_mask = checks.check_mask("attention_mask", attention_mask, (B, past + T))
            inputs.mask = layers.additive_mask(inputs.attention_mask)  # [B, 1, 1, P + T]
        if encoder_hidden_states is not None:
            enc = inputs.encoder_hidden_states = checks.check_encoder_states(cfg, encoder_hidden_states, B)
            if encoder_attention_mask is not None:
                inputs.encoder_mask = layers.additive_mask(checks.check_mask(
                    "encoder_attention_mask", encoder_attention_mask, enc.shape[:2]))  # [B, 1, 1, S]
        return inputs

    def transformer(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                    inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                    output_hidden_states=False, encoder_hidden_states=None, encoder_attention_mask=None):
        """The body: embeddings, n_layer blocks, ln_f (`forward`, or the backend's fusion of it where it
        has one for these inputs). Returns a ModelOutput with last_hidden_state."""
        inputs = self.check_inputs(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                   past_key_values, use_cache, output_attentions, output_hidden_states,
                                   encoder_hidden_states, encoder_attention_mask)
        hidden = weights = None
        with self.backend.threads(inputs.rows):
            x = self.backend.fused_forward(self.params, self.prefix, self.config, inputs)  # or None
            if x is None:
                x, hidden, weights = forward(self.backend, self.params, self.prefix, self.config, inputs)
        cross = [w[1] for w in weights or () if len(w) > 1]
        return ModelOutput(
            last_hidden_state=x,
            cache=inputs.cache if use_cache else None,
            hidden_states=hidden if output_hidden_states else None,
            attentions=tuple(w[0] for w in weights) if output_attentions else None,
            cross_attentions=tuple(cross) if output_attentions and cross else None,
        )


class ImageGPTModel(ImageGPTPreTrainedModel):
    """The bare transformer: hidden states, no head."""
    prefix = ""

    def forward(self, input_ids=None, cache=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        """transformers' ImageGPTModel.forward, arguments in its order. -> ModelOutput(last_hidden_state,
        cache, hidden_states, attentions, cross_attentions), or its to_tuple() with return_dict=False."""
        if kwargs.get("labels") is not None:
            raise ModelInputError("ImageGPTModel has no head and takes no labels; use "
                                  "ImageGPTForCausalImageModeling or ImageGPTForImageClassification")
        kwargs.pop("labels", None)
        cache, use_cache, output_attentions, output_hidden_states, return_dict = self.options(
            cache, kwargs, use_cache, output_attentions, output_hidden_states, return_dict)
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               cache, use_cache, output_attentions, output_hidden_states,
                               encoder_hidden_states, encoder_attention_mask)
        return out if return_dict else out.to_tuple()


class ImageGPTForCausalImageModeling(ImageGPTPreTrainedModel):
    """The transformer plus the LM head: vocab_size - 1 outputs (no SOS row), no bias, not tied to wte."""
    prefix = "transformer."

    def head_shapes(self):
        return {"lm_head.weight": (self.config.vocab_size - 1, self.config.n_embd)}

    def forward(self, input_ids=None, cache=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        """transformers' forward, arguments in its order. labels=input_ids is the canonical call: the loss
        shifts inside (logits at t predict labels at t + 1), so labels[:, 0] (SOS) is never read.
        -> ModelOutput(loss, logits, cache, hidden_states, attentions, cross_attentions), or its tuple."""
        cache, use_cache, output_attentions, output_hidden_states, return_dict = self.options(
            cache, kwargs, use_cache, output_attentions, output_hidden_states, return_dict)
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               cache, use_cache, output_attentions, output_hidden_states,
                               encoder_hidden_states, encoder_attention_mask)
        h = out.last_hidden_state
        with self.backend.threads(h.shape[0] * h.shape[1]):  # as for the blocks
            out.logits = self.backend.lm_head(h, self.params["lm_head.weight"])  # [B, T, V]
        if labels is not None:
            labels = checks.check_lm_labels(labels, out.logits.shape[:2], self.config.vocab_size)
            out.loss = layers.lm_loss(out.logits, labels)
        out.last_hidden_state = None  # transformers' CausalLM output has logits, not last_hidden_state
        return out if return_dict else out.to_tuple()

    def generate(self, input_ids=None, **kwargs):
        """Greedy, sampling or beam search with the KV cache, as transformers' generate; see generation.generate."""
        return generation.generate(self, input_ids, **kwargs)

    def value_and_grad(self, input_ids, labels, attention_mask=None, *, shift=True, encoder_hidden_states=None,
                       dropout_rng=None):
        """The LM loss and its gradient for every weight, keyed like self.params; see
        backprop.causal_lm_value_and_grad for shift and dropout_rng."""
        return backprop.causal_lm_value_and_grad(self, input_ids, labels, attention_mask, shift=shift,
                                                 encoder_hidden_states=encoder_hidden_states, dropout_rng=dropout_rng)


class ImageGPTForImageClassification(ImageGPTPreTrainedModel):
    """The transformer plus a classifier over the mean of every position's final hidden state."""
    prefix = "transformer."

    def head_shapes(self):
        return {"score.weight": (self.config.num_labels, self.config.n_embd)}

    def forward(self, input_ids=None, cache=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        """transformers' forward, arguments in its order. labels (B,) class ids, or (B, num_labels) floats
        (multi-label; regression with num_labels > 1), or (B,) floats (regression, num_labels == 1).
        -> ModelOutput(loss, logits, cache, hidden_states, attentions), or its tuple."""
        if kwargs.get("encoder_hidden_states") is not None:
            raise ModelInputError("ImageGPTForImageClassification takes no encoder_hidden_states")
        kwargs.pop("encoder_hidden_states", None)
        cache, use_cache, output_attentions, output_hidden_states, return_dict = self.options(
            cache, kwargs, use_cache, output_attentions, output_hidden_states, return_dict)
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               cache, use_cache, output_attentions, output_hidden_states)
        out.logits = layers.classification_head(out.last_hidden_state, self.params["score.weight"])  # [B, L]
        if labels is not None:
            labels, kind = checks.check_classification_labels(self.config, labels, out.logits.shape[0])
            out.loss = layers.classification_loss(out.logits, labels, kind)
        out.last_hidden_state = None
        return out if return_dict else out.to_tuple()

    def value_and_grad(self, input_ids, labels, attention_mask=None, *, dropout_rng=None):
        """The classification loss and its gradient for every weight, keyed like self.params; see
        backprop.classification_value_and_grad."""
        return backprop.classification_value_and_grad(self, input_ids, labels, attention_mask,
                                                      dropout_rng=dropout_rng)


# ---- checks --------------------------------------------------------------------------------------
def _rename_for(state: dict, prefix: str, shapes: dict, source: str) -> dict:
    """Map checkpoint names onto this class's names: add or strip "transformer.", drop mask buffers,
    drop the other class's head. Anything else unexpected is an error."""
    other_heads = {"lm_head.weight", "score.weight"} - set(shapes)
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
        warnings.warn(f"{source}: ignoring {', '.join(dropped)} (not part of this model class)", stacklevel=3)
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
