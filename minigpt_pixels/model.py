"""The HF-named model classes: architecture only. They hold a config and a flat dict of float32 weights
keyed by the exact HF parameter names, and run `forward` below on the backend that `to()` chose
(backends.py). Input checks: inputs.py; loading and saving: loading.py.

    ImageGPTModel                    wte, wpe, h.{i}.*, ln_f           -> last_hidden_state
    ImageGPTForCausalImageModeling   transformer.* + lm_head.weight    -> logits over the 512 colours
    ImageGPTForImageClassification   transformer.* + score.weight      -> logits over num_labels
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backprop, generation, layers
from .backends import DEFAULT_DEVICE, backend
from .cache import KVCache
from .config import ImageGPTConfig
from .inputs import ModelInputError, check_classification_labels, check_inputs, check_lm_labels, options
from .loading import PreTrainedIO, WeightsError, check_weights
from .outputs import OutputMapping

__all__ = ["ImageGPTModel", "ImageGPTForCausalImageModeling", "ImageGPTForImageClassification", "KVCache",
           "ModelInputError", "ModelOutput", "WeightsError", "forward"]


# ---- outputs -------------------------------------------------------------------------------------
@dataclass
class ModelOutput(OutputMapping):
    """transformers' output field names, holding NumPy arrays, read as transformers' ModelOutput is
    (outputs.OutputMapping). `cache` is transformers 5.24's name for the KV cache; `past_key_values`,
    the older one, reads the same."""
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


# ---- the forward pass -----------------------------------------------------------------------------
def forward(ops, p, prefix, config, inputs):
    """ImageGPT's body, picoGPT's gpt2(): the embeddings, n_layer pre-norm blocks, ln_f.

    `ops` is the backend (backends.py): these same lines run layers.py's functions, the Numba kernels'
    or the GPU fallback's. p: the flat weight dict; prefix: "transformer." in the head models;
    inputs: inputs.ForwardInputs.
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
    """Every weight of the transformer body with its shape, named as transformers names it (each block's
    names from layers.block_weight_names, the one place they are spelled)."""
    C, V = config.n_embd, config.vocab_size
    shapes = {prefix + "wte.weight": (V, C), prefix + "wpe.weight": (config.n_positions, C)}
    names, block = layers.block_weight_names(), layers.block_shapes(config)
    for i in range(config.n_layer):
        shapes.update({f"{prefix}h.{i}.{names[field]}": shape for field, shape in block.items()})
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


# ---- transformers' accessors ----------------------------------------------------------------------
class _Count(int):
    """A parameter count that reads as a number (model.num_parameters) and calls as transformers'
    method does (model.num_parameters())."""

    def __call__(self, only_trainable=False, exclude_embeddings=False):
        if exclude_embeddings:
            raise ModelInputError("num_parameters: exclude_embeddings=True is not supported")
        return int(self)


class HFAccessors:
    """transformers' PreTrainedModel conveniences, on the weight arrays: shims for code written against
    transformers, no part of the architecture."""

    @property
    def num_parameters(self) -> int:
        """The weight count: model.num_parameters, or model.num_parameters() as in transformers."""
        return _Count(sum(int(v.size) for v in self.params.values()))

    def can_generate(self) -> bool:
        return hasattr(self, "generate")

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


# ---- the models ----------------------------------------------------------------------------------
class ImageGPTPreTrainedModel(PreTrainedIO, HFAccessors):
    """What the three classes share: the weights, the backend, and the body (`transformer`)."""
    main_input_name = "input_ids"
    base_model_prefix = "transformer"
    prefix = ""  # where the body's weights live: "transformer." in the head models

    def __init__(self, config: ImageGPTConfig, params: dict[str, np.ndarray] | None = None, seed=None):
        if not isinstance(config, ImageGPTConfig):
            raise TypeError(f"config must be an ImageGPTConfig, got {type(config).__name__}")
        config.validate()  # fields may have been set since the config was made
        self.config = config
        shapes = self.weight_shapes(config)
        self.params = check_weights(init_weights(shapes, config, seed) if params is None else params, shapes,
                                    source="params")
        self.backend = backend(DEFAULT_DEVICE, self.params, config, self.prefix)  # see to()

    @classmethod
    def head_shapes(cls, config) -> dict[str, tuple]:
        return {}  # the head classes add theirs

    @classmethod
    def weight_shapes(cls, config) -> dict[str, tuple]:
        """Every weight this class holds for `config`, with its shape (what loading checks a checkpoint against)."""
        return {**transformer_shapes(config, cls.prefix), **cls.head_shapes(config)}

    initial_weights = staticmethod(init_weights)  # what loading gives a head the checkpoint lacks

    def expected_shapes(self) -> dict[str, tuple]:
        return self.weight_shapes(self.config)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def to(self, device):
        """Choose the backend explicitly, once: "numpy" runs layers.py line by line (the reference), "cpu"
        the same maths with Numba kernels for the hot spots (kernels/cpu.py), "cuda" the Numba CUDA
        kernels (kernels/cuda.py), copying the weights to the GPU now. "auto" (what a new model has) is
        "cpu" for a model big enough to repay Numba's start-up, else "numpy" (backends.auto_device);
        `model.device` says which. All agree with transformers; see backends.py. A torch.device (or any
        object with a `.type`) is read as transformers' code means it: type "cuda" is "cuda", and "cpu"
        (the processor, not our Numba backend) is "auto"'s choice, which `model.device` then names."""
        self.backend = backend(device, self.params, self.config, self.prefix)
        return self

    @property
    def device(self) -> str:
        return self.backend.name

    @property
    def _cuda(self):
        """The GPU's copy of the weights and its forward (kernels/cuda_model.CudaRunner) on "cuda", else None."""
        return getattr(self.backend, "runner", None)

    def transformer(self, input_ids=None, *, output_hidden_states=False, **inputs):
        """The body: embeddings, n_layer blocks, ln_f (`forward`, or the backend's fusion of it where it
        has one for these inputs), on inputs.check_inputs' arguments. -> ModelOutput(last_hidden_state,
        cache, hidden_states, attentions, cross_attentions)."""
        x_in = check_inputs(self.config, input_ids=input_ids, output_hidden_states=output_hidden_states, **inputs)
        hidden = weights = None
        with self.backend.threads(x_in.rows):
            x = self.backend.fused_forward(self.params, self.prefix, self.config, x_in)  # or None
            if x is None:
                x, hidden, weights = forward(self.backend, self.params, self.prefix, self.config, x_in)
        attentions = tuple(w[0] for w in weights) if x_in.output_attentions else None
        cross = tuple(w[1] for w in weights if len(w) > 1) if x_in.output_attentions else ()
        return ModelOutput(last_hidden_state=x, cache=x_in.cache if inputs.get("use_cache") else None,
                           hidden_states=hidden if output_hidden_states else None,
                           attentions=attentions, cross_attentions=cross or None)

    def _body(self, input_ids, opts, **inputs):
        """The heads' call of the body, with the switches `options` resolved."""
        return self.transformer(input_ids, cache=opts.cache, use_cache=opts.use_cache,
                                output_attentions=opts.output_attentions,
                                output_hidden_states=opts.output_hidden_states, **inputs)


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
        opts = options(self.config, "ImageGPTModel.forward", cache, kwargs, use_cache, output_attentions,
                       output_hidden_states, return_dict)
        out = self._body(input_ids, opts, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, inputs_embeds=inputs_embeds,
                         encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask)
        return out if opts.return_dict else out.to_tuple()


class ImageGPTForCausalImageModeling(ImageGPTPreTrainedModel):
    """The transformer plus the LM head: vocab_size - 1 outputs (no SOS row), no bias, not tied to wte."""
    prefix = "transformer."

    @classmethod
    def head_shapes(cls, config):
        return {"lm_head.weight": (config.vocab_size - 1, config.n_embd)}

    def forward(self, input_ids=None, cache=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        """transformers' forward, arguments in its order. labels=input_ids is the canonical call: the loss
        shifts inside (logits at t predict labels at t + 1), so labels[:, 0] (SOS) is never read.
        -> ModelOutput(loss, logits, cache, hidden_states, attentions, cross_attentions), or its tuple."""
        opts = options(self.config, "ImageGPTForCausalImageModeling.forward", cache, kwargs, use_cache,
                       output_attentions, output_hidden_states, return_dict)
        out = self._body(input_ids, opts, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, inputs_embeds=inputs_embeds,
                         encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask)
        h = out.last_hidden_state
        with self.backend.threads(h.shape[0] * h.shape[1]):  # as for the blocks
            out.logits = self.backend.lm_head(h, self.params["lm_head.weight"])  # [B, T, V]
        if labels is not None:
            labels = check_lm_labels(labels, out.logits.shape[:2], self.config.vocab_size)
            out.loss = layers.lm_loss(out.logits, labels)
        out.last_hidden_state = None  # transformers' CausalLM output has logits, not last_hidden_state
        return out if opts.return_dict else out.to_tuple()

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

    @classmethod
    def head_shapes(cls, config):
        return {"score.weight": (config.num_labels, config.n_embd)}

    def forward(self, input_ids=None, cache=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        """transformers' forward, arguments in its order. labels (B,) class ids, or (B, num_labels) floats
        (multi-label; regression with num_labels > 1), or (B,) floats (regression, num_labels == 1).
        -> ModelOutput(loss, logits, cache, hidden_states, attentions), or its tuple."""
        if kwargs.get("encoder_hidden_states") is not None:
            raise ModelInputError("ImageGPTForImageClassification takes no encoder_hidden_states")
        kwargs.pop("encoder_hidden_states", None)
        opts = options(self.config, "ImageGPTForImageClassification.forward", cache, kwargs, use_cache,
                       output_attentions, output_hidden_states, return_dict)
        out = self._body(input_ids, opts, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, inputs_embeds=inputs_embeds)
        out.logits = layers.classification_head(out.last_hidden_state, self.params["score.weight"])  # [B, L]
        if labels is not None:
            labels, kind = check_classification_labels(self.config, labels, out.logits.shape[0])
            out.loss = layers.classification_loss(out.logits, labels, kind)
        out.last_hidden_state = None
        return out if opts.return_dict else out.to_tuple()

    def value_and_grad(self, input_ids, labels, attention_mask=None, *, dropout_rng=None):
        """The classification loss and its gradient for every weight, keyed like self.params; see
        backprop.classification_value_and_grad."""
        return backprop.classification_value_and_grad(self, input_ids, labels, attention_mask,
                                                      dropout_rng=dropout_rng)
