"""Convert a hub checkpoint's pytorch_model.bin into model.safetensors, without running code from its pickle.

    python -m minigpt_pixels.convert DIR [--out PATH] [--force]

The openai/imagegpt-* checkpoints ship only pytorch_model.bin; load_state_dict reads safetensors.
Nothing the user has is lost: an --out that is the input itself is refused, --force or not, and a file
whose tensors claim more bytes than it holds (10^12 floats) is refused naming the tensor, before torch
would try to allocate them.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import pickletools
import re
import sys
import warnings
import zipfile

import numpy as np

from .weights import SAFE_WEIGHTS_NAME, TORCH_WEIGHTS_NAME, save_file

# Causal-mask buffers that older transformers versions saved; the model rebuilds them, so they are not weights.
_MASK_BUFFER = re.compile(r"(^|\.)(attn|crossattention)\.(bias|masked_bias)$")


class ConvertError(Exception):
    """Bad input for the converter; main() prints it as one line."""


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a torch.save'd state dict as contiguous float32, mask buffers dropped.

    torch.load runs with weights_only=True: a pickle holding anything but tensors and plain
    containers is refused before any of its code runs.
    """
    try:
        import torch
    except ImportError:
        raise ConvertError("reading pytorch_model.bin needs torch: pip install torch") from None
    check_storage_sizes(path)  # a claim of 10^12 floats is refused here, before torch allocates it
    try:
        with warnings.catch_warnings():  # torch's advice about pickle protocols would break the one-line error
            warnings.simplefilter("ignore", UserWarning)
            # mmap works only for torch's zip format; older pickle-only checkpoints are read whole.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise ConvertError(f"{path}: torch.load(weights_only=True) refused it: {refusal_reason(path, str(e))}; "
                           f"the file was not loaded, because loading it could run code") from None
    except Exception as e:  # torch reports a damaged file as RuntimeError, EOFError, zipfile errors, ...
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConvertError(f"{path}: cannot read it with torch.load: {first_line}") from None
    if not isinstance(state, dict):
        raise ConvertError(f"{path}: holds a {type(state).__name__}, not a state dict")
    arrays = {}
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise ConvertError(f"{path}: key {name!r} is not a string")
        if not isinstance(tensor, torch.Tensor):
            raise ConvertError(f"{path}: entry {name!r} is of type {type(tensor).__name__}, not a tensor")
        if not _MASK_BUFFER.search(name):
            # float32 tensors come through without a copy (still backed by the mmap).
            arrays[name] = tensor.detach().to(torch.float32).contiguous().numpy()
    return arrays


# ---- the sizes a pickle claims, read before torch allocates them ---------------------------------------
# Bytes an element of each storage type takes (unknown types count 1: the check stays a lower bound).
_STORAGE_ITEMSIZE = {"DoubleStorage": 8, "LongStorage": 8, "ComplexFloatStorage": 8, "FloatStorage": 4,
                     "IntStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "ShortStorage": 2}


class _Storage(tuple):
    """(key, itemsize, numel) of a storage as the pickle's persistent id describes it; nothing allocated."""


class _Tensor(tuple):
    """(storage, reach) of a tensor: `_rebuild_tensor_v2`'s storage, and the elements from its start it reads."""


def _rebuild(storage, offset, shape, stride, *args):
    """_rebuild_tensor_v2's stand-in: the storage and how many of its elements the tensor reaches."""
    dims = tuple(shape) + tuple(stride)
    if not all(isinstance(d, int) and d >= 0 for d in dims) or not isinstance(offset, int) or len(shape) != len(stride):
        raise pickle.UnpicklingError("a tensor of malformed shape")  # torch.load reports it
    reach = offset if 0 in shape else offset + sum((n - 1) * st for n, st in zip(shape, stride)) + 1
    return _Tensor((storage, reach))


class _SizeReader(pickle.Unpickler):
    """Reads a state dict's pickle without torch: tensors become _Tensor records, storages _Storage.
    Any global but the few a state dict uses is refused (raises), so nothing of the file's runs here."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid):  # ("storage", type name, key, location, numel[, view metadata (legacy)])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"persistent id {pid!r}")
        _, kind, key, _, numel = pid[:5]
        return _Storage((str(key), _STORAGE_ITEMSIZE.get(kind if isinstance(kind, str) else "", 1), numel))


def _claimed_tensors(path):
    """{name: _Tensor} from the state dict's pickle and {storage key: bytes the file holds for it}, or None
    when the pickle is not the plain kind this can read (torch.load then gives its own verdict)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
                prefix = pkl[: -len("data.pkl")]
                held = {n[len(prefix) + 5:]: z.getinfo(n).file_size for n in z.namelist()
                        if n.startswith(prefix + "data/")}  # {key: record size}
                state = _SizeReader(io.BytesIO(z.read(pkl))).load()
        else:  # the legacy format: magic number, protocol, system info, then the state dict's pickle
            with open(path, "rb") as f:
                for _ in range(3):
                    _SizeReader(f).load()  # plain ints and a dict of ints (a global among them is refused)
                state = _SizeReader(f).load()
            held = None  # storages follow in one stream: the file's size bounds every one of them
    except Exception:  # not the plain kind: torch.load reports it
        return None, None
    if not isinstance(state, dict):
        return None, None
    return {k: v for k, v in state.items() if isinstance(v, _Tensor)}, held


def check_storage_sizes(path):
    """Refuse a tensor whose storage claims more bytes than the file holds for it, naming the tensor:
    torch.load would try to allocate the claim (10^12 floats: 4 TB) before noticing."""
    tensors, held = _claimed_tensors(path)
    if not tensors:
        return
    file_size = os.path.getsize(path)
    for name, (storage, reach) in tensors.items():
        if not isinstance(storage, _Storage):
            continue
        key, itemsize, numel = storage
        claimed = max(numel if isinstance(numel, int) else 0, reach)
        available = file_size if held is None else held.get(key, 0)
        if claimed * itemsize > available:
            raise ConvertError(f"{path}: tensor {name!r} claims {claimed:,} elements ({claimed * itemsize:,} bytes) "
                               f"but the file holds {available:,} bytes for it; the file is damaged")


# The globals a torch.save'd state dict needs, which weights_only allows; any other is what it refused.
_TENSOR_GLOBALS = re.compile(r"(torch|collections\.OrderedDict$|_codecs\.encode$|builtins\.(set|bytearray)$)")
_PICKLE_SCAN_BYTES = 64 << 20


def refusal_reason(path, message):
    """Why weights_only refused the file, in one phrase naming the global it blocked. torch's message
    opens with advice to pass weights_only=False (which would run the pickle's code) and names the global
    only sometimes; when it does not, the pickle's opcodes are read (not run) to find it."""
    found = re.search(r"GLOBAL (\S+)", message)
    name = found[1] if found else next((g for g in pickle_globals(path) if not _TENSOR_GLOBALS.match(g)), None)
    if name:
        return f"Unsupported global {name} (a module attribute that a file of tensors has no need for)"
    reason = re.search(r"WeightsUnpickler error:\s*([^\n]*\S)", message)
    lines = [line for line in message.splitlines() if line.strip() and "weights_only" not in line]
    return reason[1] if reason else (lines[0] if lines else message.splitlines()[0])


def pickle_globals(path):
    """The `module.name` globals a pickle file (or a torch zip's data.pkl) imports, read by pickletools
    without executing anything; a damaged pickle yields those before the damage."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.open(member).read(_PICKLE_SCAN_BYTES) if member else b""
        else:
            with open(path, "rb") as f:
                data = f.read(_PICKLE_SCAN_BYTES)
    except (OSError, zipfile.BadZipFile):
        return []
    found, strings, f = [], [], io.BytesIO(data)
    while f.tell() < len(data):  # the legacy format is several pickles in a row
        try:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # not a pickle (any more): what was read so far is all there is
            break
    return found


def convert(directory, out=None, force: bool = False) -> tuple[str, dict[str, np.ndarray]]:
    """Write DIR/pytorch_model.bin as safetensors at `out` (default DIR/model.safetensors); return (out, tensors)."""
    directory = os.fspath(directory)
    source = os.path.join(directory, TORCH_WEIGHTS_NAME)
    out = os.path.join(directory, SAFE_WEIGHTS_NAME) if out is None else os.fspath(out)
    if not os.path.isdir(directory):
        raise ConvertError(f"{directory}: no such directory")
    if not os.path.isfile(source):
        raise ConvertError(f"{directory}: no {TORCH_WEIGHTS_NAME} in this directory")
    if os.path.abspath(out) == os.path.abspath(source) or (os.path.exists(out) and os.path.samefile(out, source)):
        raise ConvertError(f"--out {out} is the input {TORCH_WEIGHTS_NAME} itself; writing it would destroy the "
                           f"checkpoint (choose another path, e.g. {os.path.join(directory, SAFE_WEIGHTS_NAME)})")
    if os.path.exists(out) and not force:
        raise ConvertError(f"{out} already exists; pass --force to overwrite it")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ConvertError(f"{out}: its directory does not exist")
    arrays = load_torch_state_dict(source)
    try:  # transformers 4.x refuses files without "format"; without --force a file that appeared is kept
        save_file(arrays, out, metadata={"format": "pt"}, replace=force)
    except FileExistsError:
        raise ConvertError(f"{out} appeared while converting; not replacing it (pass --force to)") from None
    except OSError as e:
        raise ConvertError(f"{out}: cannot write: {e.strerror or e}") from None
    return out, arrays


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minigpt_pixels.convert",
        description="Convert DIR/pytorch_model.bin (a hub ImageGPT checkpoint) into safetensors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("directory", metavar="DIR", help="checkpoint folder holding pytorch_model.bin")
    parser.add_argument("--out", metavar="PATH", default=None,
                        help="output file; %(default)s means DIR/model.safetensors")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    args = parser.parse_args(argv)
    try:
        out, arrays = convert(args.directory, args.out, args.force)
    except (ConvertError, MemoryError, RecursionError) as e:
        message = str(e) if isinstance(e, ConvertError) else f"{type(e).__name__}: {e}".rstrip(": ")
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2
    size = sum(a.nbytes for a in arrays.values())
    print(f"wrote {out}: {len(arrays)} tensors, {size / 1e6:.1f} MB float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
