"""The HF-named model classes. They hold a config and a flat dict of float32 weights keyed by the exact
HF parameter names, check their inputs, and call the pure functions in layers.py.

    ImageGPTModel                    wte, wpe, h.{i}.*, ln_f           -> last_hidden_state
    ImageGPTForCausalImageModeling   transformer.* + lm_head.weight    -> logits over the 512 colours
    ImageGPTForImageClassification   transformer.* + score.weight      -> logits over num_labels
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, fields

import numpy as np

from . import layers, limits
from .kernels import cpu as cpu_kernels
from .config import CONFIG_NAME, ImageGPTConfig
from .weights import load_state_dict, save_state_dict

# Non-persistent causal-mask buffers that older checkpoints saved: not weights, ignored on load.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".crossattention.bias", ".crossattention.masked_bias")


class ModelInputError(ValueError):
    """An input (ids, mask, cache, embeddings) the model cannot take; the message names it."""


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


# ---- the KV cache --------------------------------------------------------------------------------
class KVCache:
    """Preallocated float32 keys and values, one [B, H, max_length, D] pair per layer.

    Appending T new positions writes into the buffer (no reallocation, unlike a cache that
    concatenates) and hands attention a view of everything so far. Cross-attention keys and values
    are computed once per layer and kept here too.

    Public attributes: `keys[layer]` and `values[layer]` are the whole C-contiguous buffers (the
    decode kernels in kernels/ read them directly), `lengths[layer]` how many positions are filled.
    """

    def __init__(self, config: ImageGPTConfig, batch_size: int, max_length: int | None = None):
        self.max_length = int(max_length or config.n_positions)
        if not 0 < self.max_length <= config.n_positions:
            raise ModelInputError(f"KVCache max_length {self.max_length} must be in [1, n_positions="
                                  f"{config.n_positions}]")
        self.batch_size = batch_size
        limits.check_bytes(limits.kv_cache_bytes(config, batch_size, self.max_length), f"a KV cache for {batch_size:,} sequences")
        shape = (batch_size, config.n_head, self.max_length, config.head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(config.n_layer)]
        self.values = [np.zeros(shape, np.float32) for _ in range(config.n_layer)]
        self.lengths = [0] * config.n_layer
        self.cross = [None] * config.n_layer  # per layer: (k, v) of the encoder states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def claim(self, layer_idx, T):
        """Count T more positions of one layer as filled and return the first: for a kernel that writes
        them into keys[layer_idx] and values[layer_idx] itself (update() for everyone else)."""
        start = self.lengths[layer_idx]
        if start + T > self.max_length:
            raise ModelInputError(f"KV cache is full: {start} cached + {T} new positions > max_length "
                                  f"{self.max_length}")
        self.lengths[layer_idx] = start + T
        return start

    def update(self, layer_idx, k, v):
        """Append k, v [B, H, T, D] for one layer; return views of all cached keys and values [B, H, S, D]."""
        T = k.shape[2]
        start = self.claim(layer_idx, T)
        self.keys[layer_idx][:, :, start:start + T] = k
        self.values[layer_idx][:, :, start:start + T] = v
        return self.keys[layer_idx][:, :, :start + T], self.values[layer_idx][:, :, :start + T]

    def select(self, index):
        """Keep only the sequences in `index` (e.g. to drop finished rows from a batch)."""
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        self.batch_size = self.keys[0].shape[0]


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
        self.device = "cpu"  # "numpy": the pure layers.py reference; "cpu": Numba kernels; "cuda": GPU
        self._cuda = None  # the device copy of the weights when on "cuda" (kernels/cuda_model.py)
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
        model.config, model.device, model._cuda = config, "cpu", None
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
        """Choose the backend explicitly: "numpy" runs layers.py line by line (the reference), "cpu" (the
        default) the same maths with Numba kernels for the hot spots (kernels/cpu.py), "cuda" the Numba
        CUDA kernels (kernels/cuda.py). All three agree with transformers."""
        if device in ("cpu", "numpy"):
            self.device, self._cuda = device, None
        elif device == "cuda":
            from .kernels.cuda_model import CudaRunner  # raises a clear error when CUDA is unavailable
            self._cuda = CudaRunner(self.params, self.config, self.prefix)
            self.device = "cuda"
        else:
            raise ValueError(f"unknown device {device!r}: use 'numpy' (pure reference), 'cpu' or 'cuda'")
        return self

    # ---- the forward pass -------------------------------------------------------------------
    def _blas_threads(self, rows):
        """BLAS's thread count for a pass over `rows` new positions: the Numba kernels' policy (one thread
        for a decode step, whose work runs on Numba's threads; see kernels/cpu.py), unchanged for the
        pure-NumPy reference."""
        return contextlib.nullcontext() if self.device == "numpy" else cpu_kernels.blas_threads_for(rows)

    def _decode_all_blocks(self, x, mask, cache):
        """All n_layer blocks of a batch's decode step in one compiled call on "cpu" (kernels/cpu.py,
        decode_layers), or None where that does not apply; the blocks then run one by one."""
        cfg = self.config
        if self.device != "cpu" or cache is None:
            return None
        scales = [layers.attention_scale(cfg.head_dim, cfg.scale_attn_weights, i, cfg.scale_attn_by_inverse_layer_idx)
                  for i in range(cfg.n_layer)]
        return cpu_kernels.decode_layers(x, self.params, [f"{self.prefix}h.{i}." for i in range(cfg.n_layer)],
                                         range(cfg.n_layer), cfg, mask, cache, scales)

    def transformer(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                    inputs_embeds=None, past_key_values=None, use_cache=False, output_attentions=False,
                    output_hidden_states=False, encoder_hidden_states=None, encoder_attention_mask=None):
        """The body: embeddings, n_layer blocks, ln_f. Returns a ModelOutput with last_hidden_state."""
        cfg, p, pre = self.config, self.params, self.prefix
        B, T = _check_inputs(cfg, input_ids, inputs_embeds)
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(cfg, B)
        if cache is not None:
            _check_cache(cfg, cache, B, T)
        past = cache.get_seq_length() if cache is not None else 0
        if past + T > cfg.n_positions:
            raise ModelInputError(f"sequence length {past + T} (cached {past} + new {T}) exceeds n_positions "
                                  f"{cfg.n_positions}")
        if position_ids is None:
            position_ids = np.arange(past, past + T)[None, :]  # [1, T]
        else:
            position_ids = _check_ids("position_ids", position_ids, cfg.n_positions, (B, T))
        if token_type_ids is not None:
            token_type_ids = _check_ids("token_type_ids", token_type_ids, cfg.vocab_size, (B, T))
        mask = None
        if attention_mask is not None:
            mask = layers.additive_mask(_check_mask("attention_mask", attention_mask, (B, past + T)))
        encoder_mask = None
        if encoder_hidden_states is not None:
            if not cfg.add_cross_attention:
                raise ModelInputError("encoder_hidden_states given, but the config has add_cross_attention=False")
            encoder_hidden_states = _check_floats("encoder_hidden_states", encoder_hidden_states,
                                                  (B, None, cfg.n_embd))
            if encoder_attention_mask is not None:
                encoder_mask = layers.additive_mask(_check_mask(
                    "encoder_attention_mask", encoder_attention_mask, encoder_hidden_states.shape[:2]))

        plain = not (output_attentions or output_hidden_states or attention_mask is not None or
                     encoder_hidden_states is not None or token_type_ids is not None or inputs_embeds is not None)
        if self.device == "cuda" and plain:  # the GPU runs the plain forward; the rest falls back to NumPy
            x = self._cuda.hidden_states(np.asarray(input_ids), np.broadcast_to(position_ids, (B, T)), cache)
            return ModelOutput(last_hidden_state=x, past_key_values=cache if use_cache else None)

        if inputs_embeds is None:
            x = layers.embedding(input_ids, p[pre + "wte.weight"], p[pre + "wpe.weight"], position_ids,
                                 token_type_ids)  # [B, T, C]
        else:
            x = inputs_embeds + p[pre + "wpe.weight"][position_ids]
            if token_type_ids is not None:
                x = x + p[pre + "wte.weight"][token_type_ids]
        x = x.astype(np.float32, copy=False)
        block = layers.transformer_block if self.device == "numpy" else cpu_kernels.transformer_block
        all_hidden, all_attn, all_cross = [], [], []
        with self._blas_threads(B * T):
            fused = None
            if not (output_attentions or output_hidden_states or encoder_hidden_states is not None):
                fused = self._decode_all_blocks(x, mask, cache)  # a batch's decode step: one call
            if fused is not None:
                x = fused
            for i in range(cfg.n_layer) if fused is None else ():
                if output_hidden_states:
                    all_hidden.append(x)
                x, weights = block(x, p, f"{pre}h.{i}.", cfg, i, mask=mask, cache=cache,
                                   encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
                                   need_weights=output_attentions)
                all_attn.append(weights[0])
                if len(weights) > 1:
                    all_cross.append(weights[1])
        x = layers.layer_norm(x, p[pre + "ln_f.weight"], cfg.layer_norm_epsilon)  # [B, T, C]
        if output_hidden_states:
            all_hidden.append(x)  # the last hidden state is after ln_f
        return ModelOutput(
            last_hidden_state=x,
            past_key_values=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
            cross_attentions=tuple(all_cross) if output_attentions and all_cross else None,
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
        if self.device == "cuda" and out.hidden_states is None and out.attentions is None:
            out.logits = self._cuda.lm_logits(out.last_hidden_state)
        else:
            h = out.last_hidden_state
            with self._blas_threads(h.shape[0] * h.shape[1]):  # as for the blocks
                out.logits = layers.lm_head(h, self.params["lm_head.weight"])  # [B, T, V]
        if labels is not None:
            labels = _check_labels_like_ids(labels, out.logits.shape[:2], self.config.vocab_size)
            out.loss = layers.lm_loss(out.logits, labels)
        out.last_hidden_state = None  # transformers' CausalLM output has logits, not last_hidden_state
        return out

    def generate(self, input_ids, max_length=None, max_new_tokens=None, do_sample=False, temperature=1.0,
                 top_k=None, top_p=None, seed=None, progress=False):
        """Sample with the KV cache; see generation.generate."""
        from .generation import generate
        return generate(self, input_ids, max_length=max_length, max_new_tokens=max_new_tokens,
                        do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                        progress=progress)

    def value_and_grad(self, input_ids, labels, attention_mask=None):
        """The LM loss and its gradient for every weight, keyed like self.params; see backprop.py."""
        from .backprop import causal_lm_value_and_grad
        return causal_lm_value_and_grad(self, input_ids, labels, attention_mask)


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
            labels = np.asarray(labels)
            if labels.shape[:1] != out.logits.shape[:1]:
                raise ModelInputError(f"labels shape {labels.shape} does not match batch {out.logits.shape[0]}")
            kind = layers.classification_problem_type(self.config, labels)
            if kind == "single_label_classification":
                bad = labels[(labels != -100) & ((labels < 0) | (labels >= self.config.num_labels))]
                if bad.size:
                    raise ModelInputError(f"labels must be in [0, num_labels={self.config.num_labels}) or -100, "
                                          f"got {int(bad[0])}")
            out.loss = layers.classification_loss(out.logits, labels, kind)
        out.last_hidden_state = None
        return out

    def value_and_grad(self, input_ids, labels, attention_mask=None):
        """The classification loss and its gradient for every weight, keyed like self.params."""
        from .backprop import classification_value_and_grad
        return classification_value_and_grad(self, input_ids, labels, attention_mask)


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


def _as_int_array(name, x):
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ModelInputError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


def _check_ids(name, ids, upper, shape):
    arr = _as_int_array(name, ids)
    if arr.ndim != 2:
        raise ModelInputError(f"{name} must have shape (batch, sequence), got shape {arr.shape}")
    if arr.shape[1] != shape[1] or arr.shape[0] not in (1, shape[0]):  # a batch of 1 broadcasts
        raise ModelInputError(f"{name} has shape {arr.shape}, expected {shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        bad = arr[(arr < 0) | (arr >= upper)].flat[0]
        raise ModelInputError(f"{name} holds {int(bad)}, outside [0, {upper})")
    return arr


def _check_inputs(cfg, input_ids, inputs_embeds):
    if (input_ids is None) == (inputs_embeds is None):
        raise ModelInputError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        arr = _as_int_array("input_ids", input_ids)
        if arr.ndim != 2:
            hint = " (add a batch axis: ids[None])" if arr.ndim == 1 else ""
            raise ModelInputError(f"input_ids must have shape (batch, sequence), got shape {arr.shape}{hint}")
        B, T = arr.shape
        if T > cfg.n_positions:
            raise ModelInputError(f"input_ids has {T} positions, more than n_positions {cfg.n_positions}")
        if B == 0 or T == 0:
            raise ModelInputError(f"input_ids is empty (shape {arr.shape})")
        if arr.min() < 0 or arr.max() >= cfg.vocab_size:
            bad = arr[(arr < 0) | (arr >= cfg.vocab_size)].flat[0]
            raise ModelInputError(f"input_ids holds token id {int(bad)}, outside [0, vocab_size={cfg.vocab_size})")
        return B, T
    emb = _check_floats("inputs_embeds", inputs_embeds, (None, None, cfg.n_embd))
    if emb.shape[1] > cfg.n_positions:
        raise ModelInputError(f"inputs_embeds has {emb.shape[1]} positions, more than n_positions {cfg.n_positions}")
    return emb.shape[0], emb.shape[1]


def _check_floats(name, x, shape):
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ModelInputError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ModelInputError(f"{name} has shape {arr.shape}, expected {want}")
    return arr.astype(np.float32, copy=False)


def _check_mask(name, mask, shape):
    arr = np.asarray(mask)
    if tuple(arr.shape) != tuple(shape):
        raise ModelInputError(f"{name} has shape {arr.shape}, expected {tuple(shape)} (batch, past + new positions)")
    return arr


def _check_cache(cfg, cache, B, T):
    if not isinstance(cache, KVCache):
        raise ModelInputError(f"past_key_values must be a minigpt_pixels KVCache, got {type(cache).__name__}")
    if cache.batch_size != B:
        raise ModelInputError(f"past_key_values holds batch {cache.batch_size}, but the input has batch {B}")
    if len(cache.keys) != cfg.n_layer:
        raise ModelInputError(f"past_key_values has {len(cache.keys)} layers, the model {cfg.n_layer}")


def _check_labels_like_ids(labels, shape, vocab_size):
    arr = _as_int_array("labels", labels)
    if arr.shape != tuple(shape):
        raise ModelInputError(f"labels has shape {arr.shape}, expected {tuple(shape)} like input_ids")
    bad = arr[(arr != -100) & ((arr < 0) | (arr >= vocab_size - 1))]
    if bad.size:
        raise ModelInputError(f"labels holds {int(bad[0])}: labels must be palette ids in [0, {vocab_size - 1}) "
                              f"or -100 (ignored); the SOS token is never a target")
    return arr
