"""AdamW, the learning-rate schedule and gradient clipping: the three pieces of a GPT training step
after the backward pass, each checked against torch (tests/test_optim.py).

    grads -> clip_grad_norm (global norm) -> AdamW.step(params, grads, lr=lr_schedule(step, ...))

Parameters and gradients are the flat float32 dicts keyed by HF names; AdamW updates the parameter
arrays in place and keeps its moments in dicts with the same keys.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32
F32_MAX = float(np.finfo(np.float32).max)
FUSED_MIN_PARAMS = 1 << 16  # AdamW fuses its update from this many parameters up (see AdamW.__init__)


def finite_float32(x) -> bool:
    """x is finite and stays finite as float32 (1e39 does not: it becomes inf)."""
    return math.isfinite(x) and abs(x) <= F32_MAX


def _check_lr(lr):
    if not (finite_float32(lr) and lr >= 0):
        raise ValueError(f"learning rate must be finite in float32 and >= 0, got {lr!r}")
    return float(lr)


def decay_names(names, decay_position_embeddings=False):
    """The parameters that get weight decay: the matrices (Conv1D and Linear weights, wte and the heads).
    Not the layer-norm weights or the biases (decaying a gain towards 0 only hurts), and the position
    embeddings only when asked."""
    out = set()
    for name in names:
        if name.endswith(".bias") or ".ln_" in name or name.startswith("ln_"):
            continue
        if name.endswith("wpe.weight") and not decay_position_embeddings:
            continue
        out.add(name)
    return out


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), the same arithmetic as torch.optim.AdamW:

        p <- p * (1 - lr * wd)                       (only for names in `decay`)
        m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, decay=None, fused=None):
        """fused: update each tensor in one compiled pass (kernels/cpu_train.adamw_kernel, the same bits)
        instead of NumPy's eight; None (auto) fuses from FUSED_MIN_PARAMS parameters up, where the ~10 us
        a NumPy call costs per tensor outweighs Numba's start-up."""
        self.lr, self.betas, self.eps, self.weight_decay = _check_lr(lr), tuple(map(float, betas)), float(eps), \
            float(weight_decay)
        self.fused = sum(np.size(v) for v in params.values()) >= FUSED_MIN_PARAMS if fused is None else bool(fused)
        self.decay = set(decay_names(params) if decay is None else decay)
        unknown = self.decay - set(params)
        if unknown:
            raise KeyError(f"decay names not in params: {sorted(unknown)[:3]}")
        self.m = {k: np.zeros_like(v, dtype=F32) for k, v in params.items()}  # first moments
        self.v = {k: np.zeros_like(v, dtype=F32) for k, v in params.items()}  # second moments
        self.t = 0  # steps taken

    def step(self, params, grads, lr=None):
        """Update every array of `params` in place from `grads` (same keys)."""
        lr = self.lr if lr is None else _check_lr(lr)
        b1, b2 = self.betas
        self.t += 1
        step_size = F32(lr / (1.0 - b1 ** self.t))
        root_c2 = F32(math.sqrt(1.0 - b2 ** self.t))
        kernel = _adamw_kernel() if self.fused else None
        for name, p in params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            decay = F32(1.0 - lr * self.weight_decay) if name in self.decay and self.weight_decay else None
            if kernel is not None and all(a.dtype == F32 and a.flags.c_contiguous and a.shape == p.shape
                                          for a in (p, g, m, v)):
                kernel(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), F32(1.0) if decay is None else decay,
                       F32(b1), F32(1.0 - b1), F32(b2), F32(1.0 - b2), step_size, root_c2, F32(self.eps))
                continue
            if decay is not None:
                p *= decay
            m *= F32(b1)
            m += F32(1.0 - b1) * g  # [...] running mean of g
            v *= F32(b2)
            v += F32(1.0 - b2) * np.square(g)  # [...] running mean of g^2
            p -= step_size * m / (np.sqrt(v) / root_c2 + F32(self.eps))

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self):
        """Moments as flat float32 arrays ("m.<name>", "v.<name>") and the step count."""
        tensors = {**{f"m.{k}": v for k, v in self.m.items()}, **{f"v.{k}": v for k, v in self.v.items()}}
        return tensors, {"t": self.t}

    def load_state_dict(self, tensors, meta):
        """Moments and step count from state_dict()'s form. A missing moment is a KeyError, a misshapen
        one a ValueError, each naming it; nothing is changed then."""
        for k in self.m:
            for moment in ("m", "v"):
                a = tensors.get(f"{moment}.{k}")
                if a is None:
                    raise KeyError(f"optimizer state has no moment {moment}.{k}")
                if a.shape != self.m[k].shape:
                    raise ValueError(f"optimizer state {moment}.{k} has shape {a.shape}, expected {self.m[k].shape}")
        for k in self.m:
            self.m[k] = np.array(tensors[f"m.{k}"], dtype=F32)  # a writable copy, not a read-only map
            self.v[k] = np.array(tensors[f"v.{k}"], dtype=F32)
        self.t = int(meta["t"])


def _adamw_kernel():
    """kernels/cpu_train.adamw_kernel, imported on first use: an unfused optimizer never loads Numba."""
    from .kernels.cpu_train import adamw_kernel
    return adamw_kernel


def lr_schedule(step, max_lr, total_steps, warmup_steps=0, min_lr=0.0):
    """The learning rate for `step` (0-based): a linear warm-up to max_lr over warmup_steps, then a
    cosine from max_lr down to min_lr at total_steps (and min_lr after it)."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def global_norm(grads):
    """The 2-norm of all gradients as one vector: the norm of the per-tensor norms, as torch computes it."""
    return math.sqrt(sum(float(np.linalg.norm(g.ravel())) ** 2 for g in grads.values()))


def clip_grad_norm(grads, max_norm):
    """Scale every gradient in place by max_norm / (norm + 1e-6) when the global norm exceeds max_norm,
    as torch.nn.utils.clip_grad_norm_ does. Returns the norm before clipping (inf or NaN passes through
    unclipped, for the caller to stop on)."""
    norm = global_norm(grads)
    if max_norm is not None and max_norm > 0 and math.isfinite(norm):
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in grads.values():
                g *= F32(coef)
    return norm
