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
from .backends import CpuBackend, backend
from .cache import KVCache, check_cache
from .config import CONFIG_NAME, ImageGPTConfig
from .inputs import ModelInputError
from .weights import load_state_dict, save_state_dict

__all__ = ["ImageGPTModel", "ImageGPTForCausalImageModeling", "ImageGPTForImageClassification", "KVCache",
           "ModelInputError", "ModelOutput", "WeightsError", "forward"]

# Non-persistent causal-mask buffers that older checkpoints saved: not weights, ignored on load.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".crossattention.bias", ".crossattention.masked_bias")


class WeightsError(ValueError):
    """A checkpoint that does not fit the config: a missing, unexpected or wrongly shaped tensor."""


# ---- outputs -------------------------------------------------------------------------------------
@dataclass
class ModelOutput:
    """transformers' output field names, holding NumPy arrays. Index by name (out["logits"]) or
    attribute (out.logits); `to_tuple()` gives the fields that are set, in order."""
    loss: np.ndarray | None = None
    logits: np.ndarray | None = None
    last_hidden_state: np.ndarray | None = None
    past_key_values: KVCache | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self):
        return tuple(getattr(self, k) for k in self.keys())


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
class ImageGPTPreTrainedModel:
    def __init__(self, config: ImageGPTConfig, params: dict[str, np.ndarray] | None = None, seed=None):
        if not isinstance(config, ImageGPTConfig):
            raise TypeError(f"config must be an ImageGPTConfig, got {type(config).__name__}")
        self.config = config
        self.backend = CpuBackend()  # see to()
        shapes = self.expected_shapes()
        if params is None:
            params = init_weights(shapes, config, seed)
        self.params = check_weights(params, shapes, source="params")

    # subclasses say where the body's weights live ("transformer." in the head models) and which head they add
    prefix = ""

    def head_shapes(self) -> dict[str, tuple]:
        return {}

    def expected_shapes(self) -> dict[str, tuple]:
        return {**transformer_shapes(self.config, self.prefix), **self.head_shapes()}

    @property
    def num_parameters(self) -> int:
        return sum(int(v.size) for v in self.params.values())

    # ---- loading and saving ----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, seed=None):
        """Load from an HF-layout directory (config.json + model.safetensors or a sharded index), or a
        .safetensors file with config.json beside it. Weights are memory-mapped, not copied.

        Names may come with or without the "transformer." prefix. A head this class has but the
        checkpoint lacks (score.weight when fine-tuning a causal checkpoint) is freshly initialised
        with a warning, as transformers does; the other class's head is ignored likewise.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such model directory or file")
        directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        config = ImageGPTConfig.from_pretrained(os.path.join(directory, CONFIG_NAME))
        state = load_state_dict(path)
        model = cls.__new__(cls)
        model.config, model.backend = config, CpuBackend()
        shapes = model.expected_shapes()
        params = _rename_for(state, model.prefix, shapes, source=path)
        missing_heads = [n for n in model.head_shapes() if n not in params]
        if missing_heads:
            warnings.warn(f"{path}: {', '.join(missing_heads)} not in the checkpoint; newly initialised "
                          f"(train it before use)", stacklevel=2)
            fresh = init_weights({n: shapes[n] for n in missing_heads}, config, seed)
            params.update(fresh)
        model.params = check_weights(params, shapes, source=path)
        return model

    def save_pretrained(self, directory, max_shard_size=None):
        """Write config.json and model.safetensors (or shards) that transformers' from_pretrained loads."""
        os.makedirs(directory, exist_ok=True)
        save_state_dict(self.params, directory, max_shard_size=max_shard_size, metadata={"format": "pt"})
        # config last: a directory with a config always has its weights
        self.config.save_pretrained(directory, architectures=[type(self).__name__])
        return directory

    # ---- devices ----------------------------------------------------------------------------
    def to(self, device: str):
        """Choose the backend explicitly, once: "numpy" runs layers.py line by line (the reference), "cpu"
        (the default) the same maths with Numba kernels for the hot spots (kernels/cpu.py), "cuda" the
        Numba CUDA kernels (kernels/cuda.py), copying the weights to the GPU now. All three agree with
        transformers; see backends.py."""
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
    def check_inputs(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                     inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                     output_hidden_states=False, encoder_hidden_states=None, encoder_attention_mask=None):
        """The arguments of a forward call, checked (inputs.py), as ForwardInputs. With use_cache and no
        past_key_values, a new KVCache."""
        cfg = self.config
        B, T = checks.check_input_ids(cfg, input_ids, inputs_embeds)
        cache = KVCache(cfg, B) if past_key_values is None and use_cache else past_key_values
        past = 0 if cache is None else check_cache(cfg, cache, B).get_seq_length()
        checks.check_positions(cfg, past, T)
        inputs = ForwardInputs(
            None if input_ids is None else np.asarray(input_ids),
            None if inputs_embeds is None else checks.check_floats("inputs_embeds", inputs_embeds, (B, T, cfg.n_embd)),
            np.arange(past, past + T)[None, :] if position_ids is None else  # [1, T]
            checks.check_ids("position_ids", position_ids, cfg.n_positions, (B, T)),
            cache=cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states)
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
            past_key_values=inputs.cache if use_cache else None,
            hidden_states=hidden if output_hidden_states else None,
            attentions=tuple(w[0] for w in weights) if output_attentions else None,
            cross_attentions=tuple(cross) if output_attentions and cross else None,
        )


class ImageGPTModel(ImageGPTPreTrainedModel):
    """The bare transformer: hidden states, no head."""
    prefix = ""

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                 output_hidden_states=False, labels=None, encoder_hidden_states=None, encoder_attention_mask=None):
        if labels is not None:
            raise ModelInputError("ImageGPTModel has no head and takes no labels; use "
                                  "ImageGPTForCausalImageModeling or ImageGPTForImageClassification")
        return self.transformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                past_key_values, use_cache, output_attentions, output_hidden_states,
                                encoder_hidden_states, encoder_attention_mask)


class ImageGPTForCausalImageModeling(ImageGPTPreTrainedModel):
    """The transformer plus the LM head: vocab_size - 1 outputs (no SOS row), no bias, not tied to wte."""
    prefix = "transformer."

    def head_shapes(self):
        return {"lm_head.weight": (self.config.vocab_size - 1, self.config.n_embd)}

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                 output_hidden_states=False, labels=None, encoder_hidden_states=None, encoder_attention_mask=None):
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               past_key_values, use_cache, output_attentions, output_hidden_states,
                               encoder_hidden_states, encoder_attention_mask)
        h = out.last_hidden_state
        with self.backend.threads(h.shape[0] * h.shape[1]):  # as for the blocks
            out.logits = self.backend.lm_head(h, self.params["lm_head.weight"])  # [B, T, V]
        if labels is not None:
            labels = checks.check_lm_labels(labels, out.logits.shape[:2], self.config.vocab_size)
            out.loss = layers.lm_loss(out.logits, labels)
        out.last_hidden_state = None  # transformers' CausalLM output has logits, not last_hidden_state
        return out

    def generate(self, input_ids, max_length=None, max_new_tokens=None, do_sample=False, temperature=1.0,
                 top_k=None, top_p=None, seed=None, progress=False):
        """Sample with the KV cache; see generation.generate."""
        return generation.generate(self, input_ids, max_length=max_length, max_new_tokens=max_new_tokens,
                                   do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                                   seed=seed, progress=progress)

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

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                 output_hidden_states=False, labels=None, encoder_hidden_states=None, encoder_attention_mask=None):
        if encoder_hidden_states is not None:
            raise ModelInputError("ImageGPTForImageClassification takes no encoder_hidden_states")
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               past_key_values, use_cache, output_attentions, output_hidden_states)
        out.logits = layers.classification_head(out.last_hidden_state, self.params["score.weight"])  # [B, L]
        if labels is not None:
            labels, kind = checks.check_classification_labels(self.config, labels, out.logits.shape[0])
            out.loss = layers.classification_loss(out.logits, labels, kind)
        out.last_hidden_state = None
        return out

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
    return out


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
