"""The backends `model.to(device)` chooses between, once. Each is an object holding the reference's
functions under the reference's names and signatures, so model.forward is the same lines on all three:

    embedding(input_ids, wte, wpe, position_ids, token_type_ids=None, inputs_embeds=None) -> x [B, T, C]
    transformer_block(x, p, prefix, config, layer_idx, mask=None, cache=None, encoder_hidden_states=None,
                      encoder_mask=None, need_weights=True) -> x [B, T, C], attention weights
    self_attention(x, w_attn, b_attn, w_proj, b_proj, n_head, scale, mask=None, cache=None, layer_idx=0)
    mlp(x, w_fc, b_fc, w_proj, b_proj, act)      layer_norm(x, weight, eps)      lm_head(h, w)

and two things a backend may do its own way:

    fused_forward(p, prefix, config, inputs)  the whole body (embedding, blocks, ln_f) as one fusion,
                                              or None where this backend has none for these inputs
    threads(rows)                             the BLAS thread policy around a pass over `rows` positions

    auto   (the default) "cpu" for a model big enough to repay Numba's start-up, else "numpy": see auto_device
    numpy  layers.py itself, line by line: the reference the others are tested against
    cpu    kernels/cpu.py: the same maths with Numba kernels and a block wired for them; a batch's decode
           step runs every block in one compiled call (cpu.decode_layers)
    cuda   kernels/cuda_model.py: the plain forward (ids, positions, a KV cache) as one flat list of GPU
           kernel launches, and the LM head on the GPU; anything else (masks, cross-attention, embeddings,
           hidden states, weights) runs the "cpu" backend's functions on the host
"""

from __future__ import annotations

import contextlib

from . import layers

DEFAULT_DEVICE = "auto"
# "auto" picks the Numba kernels for a model whose one image (n_positions positions) takes at least this many
# multiply-adds. Below it, a process's Numba start-up (about 0.5 s once the kernels are cached: importing
# Numba and its typing tables) costs more than the kernels save: the default model (28M multiply-adds an
# image) samples 16 images in 0.06 s with either backend, so its main job is won or lost by the start-up.
# At 2^28 the kernels save about that start-up on 16 images (measured: cpu 0.55-0.85 of numpy's time).
AUTO_KERNELS_MIN_WORK = 1 << 28


def image_work(config):
    """Multiply-adds of one whole image: n_positions positions through the blocks' matmuls and the head."""
    C, F = config.n_embd, config.n_inner or 4 * config.n_embd
    per_position = config.n_layer * (4 * C * C + 2 * C * F) + C * (config.vocab_size - 1)  # qkv + proj, mlp; head
    return config.n_positions * per_position


def auto_device(config):
    """ "cpu" (Numba kernels) for a model big enough to repay Numba's start-up, else "numpy" (the same
    maths, BLAS alone): see AUTO_KERNELS_MIN_WORK. Never "cuda": a GPU is asked for by name."""
    return "cpu" if image_work(config) >= AUTO_KERNELS_MIN_WORK else "numpy"


class NumpyBackend:
    """The reference: layers.py's functions, no fusion, BLAS left as it is."""
    name = "numpy"
    embedding = staticmethod(layers.embedding)
    transformer_block = staticmethod(layers.transformer_block)
    self_attention = staticmethod(layers.self_attention)
    mlp = staticmethod(layers.mlp)
    layer_norm = staticmethod(layers.layer_norm)
    lm_head = staticmethod(layers.lm_head)

    def fused_forward(self, p, prefix, config, inputs):
        return None

    def threads(self, rows):
        return contextlib.nullcontext()


class _Kernel:
    """A kernels/cpu.py function as a class attribute, imported on first use, not with this module: so
    "numpy" (and "auto" for a small model) never pays Numba's start-up."""
    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return getattr(_cpu_kernels(), self.name)


def _cpu_kernels():
    from .kernels import cpu
    return cpu


class CpuBackend(NumpyBackend):
    """kernels/cpu.py's versions of the block and its parts; each mirrors the layers.py function of its name."""
    name = "cpu"
    transformer_block = _Kernel()
    self_attention = _Kernel()
    mlp = _Kernel()
    layer_norm = _Kernel()

    def fused_forward(self, p, prefix, config, inputs):
        """model.forward for a batch's decode step, its n_layer blocks in one compiled call
        (cpu.decode_layers); None where that does not apply (see decode_layers), and then the model runs
        forward block by block. Asking for attention weights, hidden states or cross-attention opts out."""
        if inputs.cache is None or inputs.output_attentions or inputs.output_hidden_states or \
                inputs.encoder_hidden_states is not None:
            return None
        x = self.embedding(inputs.input_ids, p[prefix + "wte.weight"], p[prefix + "wpe.weight"], inputs.position_ids,
                           inputs.token_type_ids, inputs.inputs_embeds)  # [B, 1, C]
        blocks = [layers.block_weights(p, f"{prefix}h.{i}.", config, i) for i in range(config.n_layer)]
        x = _cpu_kernels().decode_layers(x, blocks, range(config.n_layer), config, inputs.mask,
                                         inputs.cache)  # [B, 1, C] or None
        return None if x is None else self.layer_norm(x, p[prefix + "ln_f.weight"], config.layer_norm_epsilon)

    def threads(self, rows):
        return _cpu_kernels().blas_threads_for(rows)  # one BLAS thread where our threads share the work out


class CudaBackend(CpuBackend):
    """The GPU for plain forwards and the LM head; "cpu"'s functions for the rest (on the host).

    The weights are copied to the device once, here: after changing model.params, call model.to("cuda")
    again."""
    name = "cuda"

    def __init__(self, params, config, prefix):
        # imported here, not at the top: loading Numba's CUDA support needs a CUDA driver, which
        # "numpy" and "cpu" users need not have (kernels/__init__.py)
        from .kernels.cuda_model import CudaRunner  # raises a clear error when CUDA is unavailable
        self.runner = CudaRunner(params, config, prefix)

    def fused_forward(self, p, prefix, config, inputs):
        """model.forward as cuda_model.hidden_states' launches, for ids, positions and a KV cache alone."""
        if not inputs.plain:
            return None
        return self.runner.hidden_states(inputs.input_ids, inputs.position_ids, inputs.cache)

    def lm_head(self, h, w):
        """layers.lm_head on the device, with the device's copy of w; h is not uploaded again when it is
        the hidden state hidden_states just left there."""
        return self.runner.lm_logits(h)


def device_name(device) -> str:
    """A device name: a string as it is; a torch.device, or anything with a `.type`, by its type, as
    transformers' code means it: "cuda" is "cuda", and "cpu" (the processor, not our Numba backend) is
    DEFAULT_DEVICE, whose choice `model.device` then names."""
    if isinstance(device, str):
        return device
    kind = getattr(device, "type", None)
    if kind == "cuda":
        return "cuda"
    if kind == "cpu":
        return DEFAULT_DEVICE
    raise ValueError(f"unknown device {device!r}: use 'auto' (the default), 'numpy', 'cpu', 'cuda', or a "
                     f"torch.device of type 'cpu' or 'cuda'")


def backend(device, params, config, prefix):
    """The backend object for a device name or a torch.device (see the module docstring and device_name); its
    `requested` is the name asked for ("auto" included), which backprop.training_path reads to choose the
    training path."""
    device = requested = device_name(device)
    if device == "auto":
        device = auto_device(config)
    if device == "numpy":
        chosen = NumpyBackend()
    elif device == "cpu":
        chosen = CpuBackend()
    elif device == "cuda":
        chosen = CudaBackend(params, config, prefix)
    else:
        raise ValueError(f"unknown device {device!r}: use 'auto' (the default), 'numpy' (pure reference), 'cpu' "
                         f"or 'cuda'")
    chosen.requested = requested
    return chosen
