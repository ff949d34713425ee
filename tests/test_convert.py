"""convert.py: pytorch_model.bin -> model.safetensors, refusing pickles that hold more than tensors."""

import pathlib
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from minigpt_pixels.convert import main
from minigpt_pixels.weights import load_metadata, load_state_dict

torch = pytest.importorskip("torch")


class NotATensor:
    """A custom class: weights_only must refuse to rebuild it."""


class RunsCode:
    """Unpickling this would create the file `marker`; weights_only must refuse before that happens."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def tiny_state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "transformer.wte.weight": torch.randn(17, 8, generator=g),
        "transformer.h.0.attn.c_attn.weight": torch.randn(8, 24, generator=g).t().contiguous().t(),  # not C order
        "transformer.h.0.attn.c_attn.bias": torch.randn(24, generator=g),
        "transformer.h.0.ln_1.weight": torch.randn(8, generator=g).to(torch.bfloat16),
        "transformer.h.0.mlp.c_fc.bias": torch.randn(32, generator=g, dtype=torch.float64),
        "lm_head.weight": torch.randn(16, 8, generator=g).to(torch.float16),
        # Buffers older transformers saved; they are masks, not weights.
        "transformer.h.0.attn.bias": torch.tril(torch.ones(1, 1, 4, 4, dtype=torch.uint8)),
        "transformer.h.0.attn.masked_bias": torch.tensor(-1e4),
    }


def checkpoint(tmp_path, obj, **save_kwargs):
    torch.save(obj, tmp_path / "pytorch_model.bin", **save_kwargs)
    return tmp_path


@pytest.mark.parametrize("zip_format", [True, False])
def test_converts_to_float32_and_drops_mask_buffers(tmp_path, capsys, zip_format):
    state = tiny_state_dict()
    directory = checkpoint(tmp_path, state, _use_new_zipfile_serialization=zip_format)
    assert main([str(directory)]) == 0
    assert f"wrote {directory / 'model.safetensors'}: 6 tensors" in capsys.readouterr().out
    loaded = load_state_dict(directory)
    assert sorted(loaded) == sorted(set(state) - {"transformer.h.0.attn.bias", "transformer.h.0.attn.masked_bias"})
    for name, array in loaded.items():
        assert array.dtype == np.float32, name
        np.testing.assert_array_equal(array, state[name].float().numpy(), err_msg=name)
    assert load_metadata(directory / "model.safetensors") == {"format": "pt"}


def test_out_option_and_overwrite_needs_force(tmp_path, capsys):
    directory = checkpoint(tmp_path, tiny_state_dict())
    out = tmp_path / "elsewhere.safetensors"
    out.write_bytes(b"precious")
    assert main([str(directory), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists; pass --force" in err
    assert out.read_bytes() == b"precious"
    assert main([str(directory), "--out", str(out), "--force"]) == 0
    assert "transformer.wte.weight" in load_state_dict(out)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "no such directory"),
    (lambda d: d, "no pytorch_model.bin"),
    (lambda d: checkpoint(d, [torch.ones(2)]), "holds a list, not a state dict"),
    (lambda d: checkpoint(d, {"a": torch.ones(2), "step": 3}), "entry 'step' is of type int, not a tensor"),
    (lambda d: checkpoint(d, {3: torch.ones(2)}), "key 3 is not a string"),
    (lambda d: checkpoint(d, {"a": torch.ones(2), "obj": NotATensor()}), r"refused it: .*NotATensor"),
    (lambda d: (d / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle") and d,
     "refused it: Unsupported operand"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    directory = make(tmp_path)
    assert main([str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m minigpt_pixels.convert: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "model.safetensors").exists()


def test_a_pickle_that_runs_code_is_refused_unexecuted(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    directory = checkpoint(tmp_path, {"w": torch.ones(2), "evil": RunsCode(marker)})
    assert main([str(directory)]) == 2
    assert "refused it: Unsupported global" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "model.safetensors").exists()


def test_without_torch_it_says_so(tmp_path, capsys, monkeypatch):
    directory = checkpoint(tmp_path, tiny_state_dict())
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert main([str(directory)]) == 2
    assert "needs torch: pip install torch" in capsys.readouterr().err


def test_command_line_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "minigpt_pixels.convert", str(tmp_path / "missing")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("missing: no such directory") and "Traceback" not in result.stderr


def test_a_plain_pickle_that_runs_code_names_the_blocked_global(tmp_path, capsys):
    """A pickle written by pickle.dump, not torch.save: torch's own message names no global here, and
    opens with advice to pass weights_only=False. The refusal names it and says nothing was run."""
    marker = tmp_path / "code-ran"
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": RunsCode(marker)}, f, protocol=4)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Unsupported global pathlib" in err and "Path.touch" in err, err
    assert "not loaded, because loading it could run code" in err and "weights_only=False" not in err
    assert not marker.exists() and not (tmp_path / "model.safetensors").exists()


def test_a_torch_saved_pickle_that_runs_code_names_the_blocked_global(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    checkpoint(tmp_path, {"w": torch.ones(2), "evil": RunsCode(marker)})
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    # torch.save's protocol 2 pickles Path.touch as getattr(Path, "touch"): getattr is what it blocks
    assert "Unsupported global" in err and "getattr" in err and "could run code" in err, err
    assert "weights_only=False" not in err and not marker.exists()


@pytest.mark.parametrize("spelling", ["plain", "dotted", "force"])
def test_an_output_that_is_the_input_is_refused(tmp_path, capsys, spelling):
    directory = checkpoint(tmp_path, tiny_state_dict())
    source = directory / "pytorch_model.bin"
    before = source.read_bytes()
    out = {"plain": source, "dotted": directory / "." / "pytorch_model.bin", "force": source}[spelling]
    assert main([str(directory), "--out", str(out), *(["--force"] if spelling == "force" else [])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input pytorch_model.bin itself" in err, err
    assert source.read_bytes() == before


def test_an_output_hard_linked_to_the_input_is_refused(tmp_path, capsys):
    directory = checkpoint(tmp_path, tiny_state_dict())
    link = tmp_path / "alias.safetensors"
    link.hardlink_to(directory / "pytorch_model.bin")
    assert main([str(directory), "--out", str(link), "--force"]) == 2
    assert "is the input pytorch_model.bin itself" in capsys.readouterr().err
    assert torch.load(directory / "pytorch_model.bin", weights_only=True)["transformer.wte.weight"].shape == (17, 8)


def _long1(n):
    """The pickle opcode LONG1 for the integer n."""
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def claims_huge_storage(directory, zip_format, n=10**12):
    """A pytorch_model.bin whose one tensor, 'w', claims n float32 elements while holding 3."""
    path = directory / "pytorch_model.bin"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=zip_format)
    if not zip_format:  # the storage's numel in the pickle, the tensor's size, and the record's own length
        data = path.read_bytes()
        data = data.replace(b"K\x03N", _long1(n) + b"N").replace(b"K\x03\x85", _long1(n) + b"\x85")
        path.write_bytes(data.replace((3).to_bytes(8, "little") + b"\x00\x00\x80?", n.to_bytes(8, "little") +
                                      b"\x00\x00\x80?"))
        return directory
    with zipfile.ZipFile(path) as z:
        members = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"K\x03t", _long1(n) + b"t").replace(b"K\x03\x85", _long1(n) + b"\x85")
            z.writestr(info, data)
    return directory


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_tensor_claiming_more_than_the_file_holds_is_named(tmp_path, capsys, zip_format):
    """torch.load would ask its allocator for the 4 TB first (legacy format) or fail resizing a mapped
    storage (zip format); the claim is refused first, naming the file and the tensor."""
    directory = claims_huge_storage(tmp_path, zip_format)
    assert main([str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pytorch_model.bin: tensor 'w' claims 1,000,000,000,000 elements" in err, err
    assert "allocat" not in err and "resize" not in err
    assert not (tmp_path / "model.safetensors").exists()


def test_tensors_sharing_or_expanding_a_storage_still_convert(tmp_path):
    """The size check reads a tensor's reach from its strides: a view into a larger storage and an
    expanded tensor (stride 0: more elements than its storage) are both within what the file holds."""
    base = torch.arange(12, dtype=torch.float32)
    directory = checkpoint(tmp_path, {"view": base[4:8], "whole": base, "expanded": torch.ones(1, 3).expand(5, 3)})
    assert main([str(directory)]) == 0
    loaded = load_state_dict(directory)
    np.testing.assert_array_equal(loaded["view"], [4, 5, 6, 7])
    np.testing.assert_array_equal(loaded["expanded"], np.ones((5, 3), np.float32))
