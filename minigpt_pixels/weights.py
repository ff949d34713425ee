"""Safetensors files to a flat dict of NumPy arrays and back, and transformers' checkpoint folders.

The format: an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`,
then the tensors' raw little-endian bytes; offsets count from the start of that data section,
and the tensors must cover it exactly, with no gaps (so a file cannot hide a second payload).

Loading memory-maps the file: float32 tensors are read-only views of the map, so a 5.6 GB
model costs page cache, not a copy. Every problem with a file raises SafetensorsError naming it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import mmap
import os
import re
import secrets
import struct
import warnings

import numpy as np

from .inputs import is_int

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
MAX_HEADER_BYTES = 100_000_000  # the Rust library's cap; a larger claim is corruption, not a model
MAX_DIMS = 64  # NumPy's limit on ndim

# safetensors dtype code -> NumPy dtype of the stored bytes (BF16 has no NumPy type: its raw bits).
_STORED = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
# The writer's code for a NumPy dtype, keyed by kind and size so byte order does not matter.
_CODE = {(d.kind, d.itemsize): code for code, d in _STORED.items() if code != "BF16"}
# The Rust library's Dtype enum order: it writes larger dtypes first (keeping every tensor aligned),
# then by name; following it makes our files byte-identical to safetensors.numpy.save.
_RUST_ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


_SCAN_ELEMENTS = 1 << 23  # the finiteness scan reads 32 MB of float32 at a time


class SafetensorsError(ValueError):
    """A file or checkpoint folder that is not a readable safetensors model."""


class NonFiniteWeightsWarning(UserWarning):
    """A checkpoint's weights hold NaN or infinity: every output of the model will be NaN."""


# ---------------------------------------------------------------------------------------------
# Reading


def read_header(path) -> tuple[dict, int]:
    """The validated tensor entries (without __metadata__) and the absolute offset of the data section."""
    path = os.fspath(path)
    with _open(path) as f:
        tensors, _, data_start = _read_header(f, path)
    return tensors, data_start


def load_metadata(path) -> dict[str, str]:
    """The file's __metadata__ (an empty dict when it has none)."""
    path = os.fspath(path)
    with _open(path) as f:
        return _read_header(f, path)[1]


def load_file(path, names=None, non_finite=None) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file as read-only arrays over a memory map of it.

    F32 is zero-copy; F16, BF16 and F64 become float32 copies; integers and BOOL keep their dtype.
    `names` restricts which tensors load (in that order); by default all, in the header's order.
    `non_finite`, if a list, receives the names of the tensors holding NaN or infinity (the scan reads
    the file once, giving its pages back as it goes, so it does not raise the resident memory).
    """
    path = os.fspath(path)
    with _open(path) as f:
        tensors, _, data_start = _read_header(f, path)
        if names is None:
            names = list(tensors)
        else:
            names = list(names)
            missing = [n for n in names if n not in tensors]
            if missing:
                raise SafetensorsError(f"{path}: no tensor named {', '.join(map(repr, missing))}")
        if not names:
            return {}
        # The map outlives the file object: the arrays keep it alive through their .base.
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    arrays = {name: _to_array(buf, data_start, tensors[name]) for name in names}
    if non_finite is not None:
        non_finite += non_finite_names(arrays, buf)
    return arrays


def non_finite_names(tensors, mapped=None) -> list[str]:
    """Names of the floating tensors holding a NaN or an infinity. Each is read in chunks (min and max
    propagate NaN), so there is no temporary as large as a tensor; the pages of `mapped` (the mmap the
    tensors view) that a chunk read are handed back to the page cache after it."""
    base = end = 0
    if mapped is not None and len(mapped) and hasattr(mapped, "madvise"):
        base = np.frombuffer(mapped, np.uint8).__array_interface__["data"][0]
        end = base + len(mapped)
    bad = []
    for name, a in tensors.items():
        if a.dtype.kind != "f" or a.size == 0:
            continue
        flat = a.reshape(-1)
        for i in range(0, flat.size, _SCAN_ELEMENTS):
            chunk = flat[i:i + _SCAN_ELEMENTS]
            finite = np.isfinite(chunk.min()) and np.isfinite(chunk.max())
            start = chunk.__array_interface__["data"][0]
            if base <= start < end:
                _drop_pages(mapped, start - base, chunk.nbytes)
            if not finite:
                bad.append(name)
                break
    return bad


def _drop_pages(mapped, offset, length):
    """MADV_DONTNEED the whole pages inside [offset, offset + length) of a read-only file map: they stay
    in the page cache and fault back in if read again."""
    first = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    last = (offset + length) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        with contextlib.suppress(OSError, ValueError):
            mapped.madvise(mmap.MADV_DONTNEED, first, last - first)


def _open(path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot open: {e.strerror or e}") from e


def _to_array(buf, data_start: int, entry: dict) -> np.ndarray:
    code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    stored = _STORED[code]
    flat = np.frombuffer(buf, stored, count=(end - begin) // stored.itemsize, offset=data_start + begin)
    if code == "BF16":
        flat = (flat.astype(np.uint32) << 16).view(np.float32)  # bfloat16 is the top half of a float32
    elif code in ("F16", "F64"):
        flat = flat.astype(np.float32)
    return flat.reshape(shape)


def _no_duplicate_keys(pairs):
    """json object_pairs_hook: a repeated key would silently shadow a tensor."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _parse_json(raw: bytes, path: str, what: str):
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"{path}: {what} is not UTF-8: {e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, duplicate keys, overlong ints, deep nesting
        raise SafetensorsError(f"{path}: {what} is not valid JSON: {e}") from None


def _read_header(f, path: str) -> tuple[dict, dict, int]:
    """Parse and check the header of the open file `f`: (tensor entries, metadata, data start)."""
    file_size = os.fstat(f.fileno()).st_size
    if file_size < 8:
        raise SafetensorsError(f"{path}: {file_size} bytes is too short for a safetensors file "
                               f"(needs 8 for the header length)")
    (n,) = struct.unpack("<Q", f.read(8))
    # Both checks come before reading: never allocate a size the file merely claims.
    if n > MAX_HEADER_BYTES:
        raise SafetensorsError(f"{path}: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if 8 + n > file_size:
        raise SafetensorsError(f"{path}: header length {n} runs past the end of the {file_size}-byte file")
    header = _parse_json(f.read(n), path, "header")
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is a JSON {type(header).__name__}, not an object")

    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings, got {metadata!r:.200}")

    data_size = file_size - 8 - n
    tensors = {name: _check_entry(name, entry, data_size, path) for name, entry in header.items()}

    # Sorted by position, each tensor must start where the previous one ended.
    position, previous = 0, None
    for name in sorted(tensors, key=lambda k: tensors[k]["data_offsets"]):
        begin, end = tensors[name]["data_offsets"]
        if begin < position:
            raise SafetensorsError(f"{path}: tensor {name!r} at bytes [{begin}, {end}) overlaps tensor {previous!r}")
        if begin > position:
            raise SafetensorsError(
                f"{path}: {begin - position} unused bytes before tensor {name!r} at [{begin}, {end})")
        position, previous = end, name
    if position != data_size:
        raise SafetensorsError(
            f"{path}: {data_size - position} bytes after the last tensor are not part of any tensor")
    return tensors, metadata, 8 + n


def _check_entry(name: str, entry, data_size: int, path: str) -> dict:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: entry is a {type(entry).__name__}, not an object")
    missing = {"dtype", "shape", "data_offsets"} - entry.keys()
    if missing:
        raise SafetensorsError(f"{where}: entry lacks {', '.join(sorted(missing))}")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not (isinstance(code, str) and code in _STORED):
        raise SafetensorsError(f"{where}: unsupported dtype {code!r:.50} (supported: {', '.join(_STORED)})")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(is_int(d) and d >= 0 for d in shape)):
        raise SafetensorsError(f"{where}: shape {shape!r:.200} is not a list of at most {MAX_DIMS} non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size):
        raise SafetensorsError(
            f"{where}: data_offsets {offsets!r:.200} are not [begin, end] "
            f"with 0 <= begin <= end <= {data_size} (the data size)")
    itemsize = _STORED[code].itemsize
    begin, end = offsets
    if end - begin != math.prod(shape) * itemsize:
        raise SafetensorsError(
            f"{where}: dtype {code} shape {shape} needs {math.prod(shape) * itemsize} bytes, "
            f"data_offsets [{begin}, {end}) hold {end - begin}")
    # A zero-size tensor passes the size check with any other dims; NumPy still has to represent them.
    if math.prod(d for d in shape if d) * itemsize > np.iinfo(np.intp).max:
        raise SafetensorsError(f"{where}: shape {shape} is too large for NumPy")
    return {"dtype": code, "shape": shape, "data_offsets": offsets}


# ---------------------------------------------------------------------------------------------
# Writing


def atomic_write_bytes(path, data: bytes, replace: bool = True) -> None:
    """Write to a temporary file beside `path`, then rename, so a crash never leaves a half-written file."""
    with atomic_open(path, replace) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_open(path, replace: bool = True):
    """A binary file that takes the name `path` only once the block finishes without error; the
    temporary file behind it is removed on every path.

    With replace=False an existing `path` is never replaced, not even one that appeared while the block
    ran (FileExistsError): the name is given by a hard link, which fails on an existing name, or, on a file
    system without hard links, by an exclusive create (O_EXCL) and a copy. Replacing rather than
    rewriting in place also keeps arrays mapped from the old file valid.
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask set the permissions (mkstemp would make the file owner-only).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data must reach the disk before the rename does
        if replace:
            os.replace(tmp, path)
        else:
            link_exclusive(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_NO_HARD_LINKS = {getattr(errno, n) for n in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "EXDEV", "EMLINK", "ENOSYS")
                  if hasattr(errno, n)}


def link_exclusive(tmp, path):
    """Give the finished file `tmp` a second name, `path`, failing (FileExistsError) if `path` exists."""
    try:
        os.link(tmp, path)
        return
    except OSError as e:
        if isinstance(e, FileExistsError) or e.errno not in _NO_HARD_LINKS:
            raise
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as out, open(tmp, "rb") as f:
            while chunk := f.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(path)  # ours, half-written
        raise


def _check_tensor(name, value) -> np.ndarray:
    """`value` as the C-ordered little-endian array that save_file writes (a copy only when needed)."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be strings, got {name!r} ({type(name).__name__})")
    if name == "__metadata__":
        raise TypeError("'__metadata__' is reserved for the header's metadata, not a tensor name")
    if isinstance(value, np.generic):  # a NumPy scalar is a 0-d tensor
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"tensor {name!r}: expected a numpy.ndarray, got {type(value).__name__}")
    if (value.dtype.kind, value.dtype.itemsize) not in _CODE:
        raise TypeError(f"tensor {name!r}: dtype {value.dtype} has no safetensors code")
    return value.astype(value.dtype.newbyteorder("<"), order="C", copy=False)


def _header_bytes(entries: dict, metadata: dict | None) -> bytes:
    header = {"__metadata__": metadata} if metadata else {}
    header.update(entries)
    try:
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate in a name
        raise TypeError(f"a tensor name or metadata string is not valid Unicode: {e}") from None
    raw += b" " * (-len(raw) % 8)  # pad to a multiple of 8 with spaces, as the Rust library does
    return struct.pack("<Q", len(raw)) + raw


def save_file(tensors: dict[str, np.ndarray], path, metadata: dict[str, str] | None = None,
              replace: bool = True) -> None:
    """Write `tensors` to a .safetensors file atomically, streaming one tensor at a time. With
    replace=False an existing file is never replaced (FileExistsError), even one that appears meanwhile."""
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError(f"metadata must map strings to strings, got {metadata!r:.200}")
    arrays = {name: _check_tensor(name, value) for name, value in tensors.items()}
    codes = {name: _CODE[a.dtype.kind, a.dtype.itemsize] for name, a in arrays.items()}
    order = sorted(arrays, key=lambda name: (-_RUST_ORDER.index(codes[name]), name))
    entries, offset = {}, 0
    for name in order:
        a = arrays[name]
        entries[name] = {"dtype": codes[name], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header = _header_bytes(entries, metadata)
    with atomic_open(path, replace) as f:
        f.write(header)
        for name in order:
            f.write(arrays[name])  # the array's own buffer: no bytes copy of the weights


# ---------------------------------------------------------------------------------------------
# Checkpoint folders (transformers' layout)


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file, or of a folder holding model.safetensors or a sharded index.
    Warns (NonFiniteWeightsWarning) naming the tensors that hold NaN or infinity."""
    path = os.fspath(path)
    bad = []
    if os.path.isfile(path):
        if path.endswith(".bin"):
            raise SafetensorsError(f"{path} is a PyTorch pickle; convert it first: "
                                   f"python -m minigpt_pixels.convert {os.path.dirname(path) or '.'}")
        tensors = load_file(path, non_finite=bad)
    elif not os.path.isdir(path):
        raise SafetensorsError(f"{path}: no such file or directory")
    # model.safetensors wins over an index, as in transformers; save_state_dict relies on that order.
    elif os.path.isfile(os.path.join(path, SAFE_WEIGHTS_NAME)):
        tensors = load_file(os.path.join(path, SAFE_WEIGHTS_NAME), non_finite=bad)
    elif os.path.isfile(os.path.join(path, SAFE_WEIGHTS_INDEX_NAME)):
        tensors = _load_sharded(path, bad)
    else:
        raise _no_weights(path)
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        warnings.warn(f"{path}: tensor {bad[0]!r}{more} holds NaN or infinite values; every output of this "
                      f"model will be NaN", NonFiniteWeightsWarning, stacklevel=2)
    return tensors


def _no_weights(path) -> SafetensorsError:
    """The error for a folder without safetensors weights, with the fix."""
    if os.path.isfile(os.path.join(path, TORCH_WEIGHTS_NAME)):
        return SafetensorsError(
            f"{path} holds only {TORCH_WEIGHTS_NAME}; convert it first: python -m minigpt_pixels.convert {path}")
    return SafetensorsError(f"{path}: no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} in this folder")


def _read_weight_map(index_path: str) -> dict[str, str]:
    with _open(index_path) as f:
        index = _parse_json(f.read(), index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise SafetensorsError(f"{index_path}: no \"weight_map\" object")
    for name, shard in weight_map.items():
        # A bare file name: an index must not point outside its folder.
        if not (isinstance(shard, str) and shard not in ("", ".", "..") and "/" not in shard and "\\" not in shard):
            raise SafetensorsError(
                f"{index_path}: tensor {name!r} maps to {shard!r:.200}, not a file name in this folder")
    return weight_map


def _load_sharded(directory: str, non_finite=None) -> dict[str, np.ndarray]:
    index_path = os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME)
    weight_map = _read_weight_map(index_path)
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    loaded = {}
    for shard, names in by_shard.items():
        shard_path = os.path.join(directory, shard)
        if not os.path.isfile(shard_path):
            raise SafetensorsError(
                f"{index_path}: shard {shard} (holding {names[0]!r} and {len(names) - 1} more) does not exist")
        stored = read_header(shard_path)[0].keys()
        missing = [n for n in names if n not in stored]
        if missing:
            raise SafetensorsError(
                f"{shard_path}: lacks {', '.join(map(repr, missing[:5]))}, which {index_path} places there")
        extra = [n for n in stored if weight_map.get(n) != shard]
        if extra:  # a tensor in two shards, or one the index does not know
            raise SafetensorsError(
                f"{shard_path}: holds {', '.join(repr(n) for n in extra[:5])}, which {index_path} "
                f"places {'elsewhere' if extra[0] in weight_map else 'nowhere'}")
        loaded.update(load_file(shard_path, names, non_finite))
    return {name: loaded[name] for name in weight_map}


def _parse_size(size) -> int:
    """Bytes from an int or a string like "2GB" (10**9) or "2GiB" (2**30); units are case-insensitive."""
    if is_int(size):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", size) if isinstance(size, str) else None
        if not match or match[2].upper() not in _SIZE_UNITS:
            raise ValueError(f"max_shard_size must be a byte count or a string like '2GB' or '500MiB', got {size!r}")
        value = int(match[1]) * _SIZE_UNITS[match[2].upper()]
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _split(arrays: dict[str, np.ndarray], limit: int | None) -> list[dict[str, np.ndarray]]:
    """Consecutive groups of at most `limit` bytes, as transformers does; a bigger tensor goes alone."""
    shards, current, size = [], {}, 0
    for name, a in arrays.items():
        if limit is not None and current and size + a.nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[name] = a
        size += a.nbytes
    return shards + [current]


def save_state_dict(tensors: dict[str, np.ndarray], directory, max_shard_size=None,
                    metadata: dict[str, str] | None = None) -> list[str]:
    """Write `tensors` in transformers' layout and return the paths written.

    One model.safetensors, or model-0000i-of-0000N.safetensors shards and model.safetensors.index.json
    when they exceed max_shard_size bytes (an int or a string like "2GB"). metadata defaults to
    {"format": "pt"}, which transformers 4.x requires. Files of a previous save are removed only once the
    new ones are in place, so a crash leaves the old or the new model loadable.
    """
    directory = os.fspath(directory)
    metadata = {"format": "pt"} if metadata is None else metadata
    limit = None if max_shard_size is None else _parse_size(max_shard_size)
    arrays = {name: _check_tensor(name, value) for name, value in tensors.items()}  # fail before writing
    shards = _split(arrays, limit)
    os.makedirs(directory, exist_ok=True)

    if len(shards) == 1:
        written = [SAFE_WEIGHTS_NAME]
        save_file(arrays, os.path.join(directory, SAFE_WEIGHTS_NAME), metadata)
    else:
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        # Write every shard under a temporary name first, so an older index meets newer shards of the
        # same names only during the renames below, not during the long writes.
        staged = [os.path.join(directory, f".{name}.staged") for name in names]
        try:
            for shard, tmp in zip(shards, staged):
                save_file(shard, tmp, metadata)
            for name, tmp in zip(names, staged):
                os.replace(tmp, os.path.join(directory, name))
        finally:
            for tmp in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        weight_map = {tensor: name for name, shard in zip(names, shards) for tensor in shard}
        index = {"metadata": {"total_size": sum(a.nbytes for a in arrays.values())}, "weight_map": weight_map}
        atomic_write_bytes(os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME),
                           (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        written = names + [SAFE_WEIGHTS_INDEX_NAME]

    # Stale files go last. Until then the loader still finds a whole model: it prefers model.safetensors,
    # and a replaced index no longer names the old shards.
    stale = [SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME] + sorted(
        f for f in os.listdir(directory) if _SHARD_NAME.fullmatch(f))
    for name in stale:
        if name not in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
    return [os.path.join(directory, name) for name in written]
