"""What the machine could hold: every size a user gives (config fields, a batch, an image size, a
length) is checked here before anything is allocated, so a typo like `n_layer: 1000000` or
`--num-samples 100000000` is a one-line error naming the value, not minutes of work and a MemoryError.

Two budgets:
- `machine_memory()`: what this process could ever hold (physical memory, or RLIMIT_AS when lower).
  A config whose weights exceed it describes a model no one can load here.
- `available_memory()`: what it could allocate now (MemAvailable, the cgroup's limit and the process's
  rlimits, less what it already uses). Allocations (a KV cache, training activations) must fit it.

The processor's `size` and every image file it, `sample --prompt` and `train --data` read are bounded the
same way (`processed_bytes`; `image_bytes`, `resize_bytes` and `pil_pixel_bytes` for what decoding costs,
reckoned from the file's header in processor.read_image_file before a pixel is decoded).

The estimates are lower bounds (the biggest arrays only), so a check never refuses a run that would fit.
This module imports nothing of the package: config, the model and the command lines all call it.
"""

from __future__ import annotations

import os
import resource

F32 = 4  # bytes per float32
TENSOR_OVERHEAD = 1024  # bytes of Python objects per weight tensor (name, array object, dict entry)


class SizeError(ValueError):
    """A size larger than this machine could hold; the message names the value."""


def fmt_bytes(n) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as `ls -h --si` and disk makers count)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


# ---- the budgets ---------------------------------------------------------------------------------
def _rlimit(kind):
    soft = resource.getrlimit(kind)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _proc_field(path, field):
    """A `Name:   123 kB` field of a /proc file (/proc/meminfo, /proc/self/status) in bytes, or None
    off Linux."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_free():
    """cgroup v2 memory.max - memory.current, or None when unlimited or not in a cgroup."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return max(0, int(limit) - int(f.read()))
    except (OSError, ValueError):
        return None


def machine_memory() -> int:
    """Bytes this process could ever hold: physical memory, capped by its address-space limit."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a large machine, the checks still catch typos
        total = 2**40
    limit = _rlimit(resource.RLIMIT_AS)
    return min(total, limit) if limit is not None else total


def available_memory() -> int:
    """Bytes this process could allocate now: the least of the free memory the kernel reports, the
    cgroup's headroom and the rlimits' headroom (RLIMIT_AS less the address space in use, RLIMIT_DATA
    less the data segment)."""
    candidates = [machine_memory()]
    for value in (_proc_field("/proc/meminfo", "MemAvailable"), _cgroup_free()):
        if value is not None:
            candidates.append(value)
    for kind, field in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        limit, used = _rlimit(kind), _proc_field("/proc/self/status", field)
        if limit is not None:
            candidates.append(max(0, limit - (used or 0)))
    return min(candidates)


def check_bytes(nbytes, what, budget=None, hint="") -> None:
    """Raise SizeError when `what` (e.g. "--num-samples 100000: the KV cache") needs more than `budget`
    bytes (default: the memory available now)."""
    budget = available_memory() if budget is None else budget
    if nbytes > budget:
        raise SizeError(f"{what} needs {fmt_bytes(nbytes)}, more than the {fmt_bytes(budget)} of memory "
                        f"available{hint}")


# ---- the estimates ---------------------------------------------------------------------------------
def _ints(config):
    """The config's size fields as Python ints (None for one that is not a positive int: validate() reports it)."""
    names = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "num_labels")
    values = {n: getattr(config, n, None) for n in names}
    if isinstance(getattr(config, "id2label", None), dict):  # it decides num_labels
        values["num_labels"] = max(1, len(config.id2label))
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values.values()):
        return None
    inner = getattr(config, "n_inner", None)
    values["n_inner"] = inner if isinstance(inner, int) and not isinstance(inner, bool) and inner > 0 \
        else 4 * values["n_embd"]
    values["cross"] = bool(getattr(config, "add_cross_attention", False))
    return values


def parameter_count(config) -> int | None:
    """Weights of ImageGPTForCausalImageModeling (the largest of the three classes' bodies + heads)."""
    v = _ints(config)
    if v is None:
        return None
    C, F, L = v["n_embd"], v["n_inner"], v["n_layer"]
    block = 2 * C + 3 * C * C + 3 * C + C * C + C + C * F + F + F * C + C  # ln_1, attn, ln_2, mlp
    if v["cross"]:
        block += C + 2 * C * C + 2 * C + 2 * C * C + 2 * C
    head = max(v["vocab_size"] - 1, v["num_labels"]) * C
    return v["vocab_size"] * C + v["n_positions"] * C + L * block + C + head


def model_bytes(config) -> int | None:
    """Host memory of the weights: float32 data plus the Python objects of each tensor."""
    n = parameter_count(config)
    if n is None:
        return None
    per_layer = 16 if getattr(config, "add_cross_attention", False) else 10
    return F32 * n + TENSOR_OVERHEAD * (per_layer * config.n_layer + 5)


def check_config(config, error=SizeError) -> None:
    """A config whose weights could not fit in this machine is refused (raising `error`) before any of
    them is made, or its label names. Called first by ImageGPTConfig; a field of the wrong type is left
    to its validate()."""
    nbytes = model_bytes(config)
    if nbytes is None:
        return
    budget = machine_memory()
    if nbytes > budget:
        fields = ", ".join(f"{k}={getattr(config, k)}" for k in ("n_layer", "n_embd", "n_positions", "vocab_size"))
        if getattr(config, "n_inner", None):
            fields += f", n_inner={config.n_inner}"
        if config.num_labels > config.vocab_size:
            fields += f", num_labels={config.num_labels}"
        raise error(f"config: {fields} make {parameter_count(config):,} parameters ({fmt_bytes(nbytes)} "
                        f"as float32), more than this machine's {fmt_bytes(budget)} of memory")


def kv_cache_bytes(config, batch, length) -> int:
    """Keys and values of every layer for `batch` sequences of `length` positions, float32."""
    return 2 * config.n_layer * batch * length * config.n_embd * F32


def training_bytes(config, batch) -> int:
    """A lower bound on one training step's memory: the weights, their gradients and AdamW's two moments,
    and per block the attention probabilities [B, H, T, T], the MLP's [B, T, F] and a few [B, T, C]
    the backward pass reads, and the logits with their gradient [B, T, V]."""
    T, C, H = config.n_positions, config.n_embd, config.n_head
    F = config.n_inner or 4 * C
    per_block = batch * T * (H * T + F + 4 * C)
    logits = 2 * batch * T * config.vocab_size
    return F32 * (4 * parameter_count(config) + config.n_layer * per_block + logits)


# Bytes a pixel of each PIL mode takes once decoded: PIL keeps every 3- and 4-band mode (RGB too) in 32 bits.
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def pil_pixel_bytes(mode) -> int:
    """Bytes a pixel of a decoded PIL image of `mode` takes (4 for RGB, RGBA, LA, I, F, CMYK, ...)."""
    return _PIL_BYTES.get(mode, 4)


def image_bytes(height, width, mode="RGB") -> int:
    """Reading an image whole into an [H, W, 3] uint8 array: PIL's decoded image (1 to 4 bytes a pixel by
    its mode), its RGB copy (4: PIL keeps RGB in 32 bits) and the array (3): 11 bytes a pixel for a colour
    photo, what reading one was measured to cost (the 7 this once assumed let photos through that did not
    fit)."""
    return height * width * (pil_pixel_bytes(mode) + 4 + 3)


def resize_bytes(in_height, in_width, out_height, out_width, support=1.0) -> int:
    """PIL's resize: its two passes' coefficient tables (doubles, 2 * support of them per input pixel of
    each side when shrinking: 1.3 GB for an 80,000,000-pixel-wide row shrunk by bilinear) and the
    intermediate image between the passes."""
    coefficients = 8 * 2 * max(support, 0.5) * (in_width + in_height) + 8 * 8 * (out_width + out_height)
    return int(coefficients) + 4 * out_width * in_height + 4 * out_width * out_height


def processed_bytes(batch, height, width) -> int:
    """The processor's arrays for `batch` images of height x width after any resize: per image its uint8
    RGB (3 bytes a pixel) and, for one at a time, the rescale's float64 (24); for all of them the float32
    pixels, their stacked batch (12 each) and the ids with their distances (12)."""
    pixels = height * width
    return batch * pixels * (12 + 12 + 12) + pixels * (3 + 24)


def check_count(value, what, most) -> None:
    """An integer argument that sizes an allocation: at most `most` (computed from a budget)."""
    if value > most:
        raise SizeError(f"{what} {value:,} is more than this machine could hold (at most {max(0, most):,})")


def largest(per_item, budget=None) -> int:
    """How many items of `per_item` bytes fit in `budget` (default: the memory available now)."""
    budget = available_memory() if budget is None else budget
    return budget // max(1, per_item)
