"""weights.py: the safetensors reader/writer against the format, the safetensors package and transformers."""

import json
import mmap
import os
import re
import struct
import tempfile
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigpt_pixels import weights
from minigpt_pixels.weights import (
    SafetensorsError,
    load_file,
    load_metadata,
    load_state_dict,
    read_header,
    save_file,
    save_state_dict,
)

KEPT_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64, np.float32]
SHAPES = [(), (0,), (3, 0, 2), (5,), (2, 3, 4)]


def random_array(rng, dtype, shape):
    if np.dtype(dtype).kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True))
    return np.asarray(rng.standard_normal(shape), dtype=dtype)


def raw_file(header, data=b"", header_len=None):
    """Bytes of a safetensors file with an arbitrary header (a dict, or raw bytes) and data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


def write(tmp_path, data, name="m.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# Round trips and cross-checks


def test_round_trip_keeps_dtype_shape_and_values(tmp_path, rng):
    tensors = {f"{np.dtype(d).name}/{i}": random_array(rng, d, s) for d in KEPT_DTYPES for i, s in enumerate(SHAPES)}
    path = tmp_path / "all.safetensors"
    save_file(tensors, path, metadata={"format": "np", "note": "é"})
    loaded = load_file(path)
    assert sorted(loaded) == sorted(tensors)
    for name, want in tensors.items():
        got = loaded[name]
        assert got.shape == want.shape, name
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert load_metadata(path) == {"format": "np", "note": "é"}


def test_half_and_double_load_as_float32(tmp_path, rng):
    f16 = np.array([0.0, -0.0, 1.5, 65504.0, 6e-8, np.inf, -np.inf], np.float16)
    f64 = np.array([[1 / 3, -2.5e-30], [1e30, np.pi]])
    save_file({"h": f16, "d": f64}, tmp_path / "x.safetensors")
    loaded = load_file(tmp_path / "x.safetensors")
    assert loaded["h"].dtype == loaded["d"].dtype == np.float32
    np.testing.assert_array_equal(loaded["h"], f16.astype(np.float32))
    np.testing.assert_array_equal(np.signbit(loaded["h"]), np.signbit(f16))
    np.testing.assert_array_equal(loaded["d"], f64.astype(np.float32))


def test_bfloat16_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    values = torch.cat([torch.randn(50, generator=torch.Generator().manual_seed(0)) * 100,
                        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-40, 3.0e38])])
    bf16 = values.to(torch.bfloat16).reshape(2, 28)
    st_torch.save_file({"w": bf16}, str(tmp_path / "bf16.safetensors"))
    got = load_file(tmp_path / "bf16.safetensors")["w"]
    assert got.dtype == np.float32 and got.shape == (2, 28)
    np.testing.assert_array_equal(got, bf16.float().numpy())
    nan = torch.tensor([float("nan")], dtype=torch.bfloat16)
    st_torch.save_file({"n": nan}, str(tmp_path / "nan.safetensors"))
    assert np.isnan(load_file(tmp_path / "nan.safetensors")["n"]).all()


def test_files_are_byte_identical_to_the_safetensors_package(tmp_path, rng):
    sn = pytest.importorskip("safetensors.numpy")
    tensors = {f"t{i}.{np.dtype(d).name}": random_array(rng, d, s)
               for i, (d, s) in enumerate(zip([*KEPT_DTYPES, np.float16, np.float64], [*SHAPES] * 3))}
    tensors["ünïcode"] = np.ones((2, 2), np.float32)
    save_file(tensors, tmp_path / "ours.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == sn.save(tensors, metadata={"format": "pt"})


def test_cross_loads_with_the_safetensors_package(tmp_path, rng):
    sn = pytest.importorskip("safetensors.numpy")
    tensors = {"a": random_array(rng, np.float32, (3, 4)), "b": random_array(rng, np.int64, (5,)),
               "c": random_array(rng, np.float16, (2, 2)), "d": np.zeros((0, 7), np.float32)}
    sn.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"k": "v"})
    ours = load_file(tmp_path / "theirs.safetensors")
    save_file(tensors, tmp_path / "ours.safetensors", metadata={"k": "v"})
    theirs = sn.load_file(str(tmp_path / "ours.safetensors"))
    for name, want in tensors.items():
        np.testing.assert_array_equal(ours[name], want.astype(np.float32) if want.dtype == np.float16 else want)
        assert theirs[name].dtype == want.dtype
        np.testing.assert_array_equal(theirs[name], want)
    assert load_metadata(tmp_path / "theirs.safetensors") == {"k": "v"}


def test_float32_is_a_read_only_view_of_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, path)
    w = load_file(path)["w"]
    assert not w.flags.owndata and not w.flags.writeable
    base = w
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    # A copy would not notice the file changing underneath; the shared mapping does.
    _, data_start = read_header(path)
    with open(path, "r+b") as f:
        f.seek(data_start + 4 * 4)
        f.write(np.float32(-7.0).tobytes())
    assert w[1, 1] == -7.0


def test_names_selects_tensors(tmp_path):
    tensors = {"a": np.zeros(1, np.float32), "b": np.ones(2, np.int8), "c": np.ones(1, np.float64)}
    save_file(tensors, tmp_path / "x.st")
    assert list(load_file(tmp_path / "x.st", names=["c", "a"])) == ["c", "a"]
    assert load_file(tmp_path / "x.st", names=[]) == {}
    with pytest.raises(SafetensorsError, match=r"x\.st.*'nope'"):
        load_file(tmp_path / "x.st", names=["a", "nope"])


def test_save_converts_byte_order_and_layout(tmp_path):
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    fortran = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    strided = np.arange(20, dtype=np.float64)[::3]
    save_file({"be": big_endian, "f": fortran, "s": strided, "scalar": np.float32(2.5)}, tmp_path / "x.st")
    loaded = load_file(tmp_path / "x.st")
    np.testing.assert_array_equal(loaded["be"], big_endian)
    np.testing.assert_array_equal(loaded["f"], fortran)
    np.testing.assert_array_equal(loaded["s"], strided.astype(np.float32))
    assert loaded["scalar"].shape == () and loaded["scalar"] == 2.5


@pytest.mark.parametrize("tensors, match", [
    ({1: np.zeros(1, np.float32)}, "names must be strings"),
    ({"obj": np.array([object()])}, "'obj'.*dtype object"),
    ({"cplx": np.zeros(2, np.complex64)}, "'cplx'.*complex64"),
    ({"str": np.array(["a"])}, "'str'.*<U1"),
    ({"list": [1.0, 2.0]}, "'list'.*expected a numpy.ndarray"),
    ({"__metadata__": np.zeros(1, np.float32)}, "reserved"),
    ({"bad\ud800": np.zeros(1, np.float32)}, "not valid Unicode"),
])
def test_save_rejects_what_safetensors_cannot_hold(tmp_path, tensors, match):
    with pytest.raises(TypeError, match=match):
        save_file(tensors, tmp_path / "x.st")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("metadata", [{"a": 1}, {1: "a"}, ["a"]])
def test_save_rejects_metadata_that_is_not_strings(tmp_path, metadata):
    with pytest.raises(TypeError, match="metadata"):
        save_file({"a": np.zeros(1, np.float32)}, tmp_path / "x.st", metadata=metadata)


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.st"
    save_file({"old": np.zeros(3, np.float32)}, path)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        save_file({"new": np.ones(3, np.float32)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.st"]


def test_written_files_follow_the_umask(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    weights.atomic_write_bytes(tmp_path / "x.bin", b"abc")
    assert (tmp_path / "x.bin").read_bytes() == b"abc"
    assert os.stat(tmp_path / "x.bin").st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------------------------
# Corrupt files: every one is a SafetensorsError naming the file (and the tensor, where there is one)

F32_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CORRUPT = {
    "empty file": (b"", "too short"),
    "7 bytes": (b"\x05\0\0\0\0\0\0", "too short"),
    "header past end": (raw_file(b"{}", header_len=1000), "runs past the end"),
    "header over cap": (raw_file(b"{}", header_len=2**63), "exceeds the limit"),
    "not utf-8": (raw_file(b'{"\xff":1}'), "not UTF-8"),
    "not json": (raw_file(b'{"a": '), "not valid JSON"),
    "deep nesting": (raw_file(b"[" * 100_000), "not valid JSON"),
    "json list": (raw_file([1, 2]), "JSON list, not an object"),
    "duplicate key": (raw_file(b'{"w":' + json.dumps(F32_ENTRY).encode() + b',"w":'
                               + json.dumps(F32_ENTRY).encode() + b"}", b"\0" * 8), "duplicate key 'w'"),
    "entry not object": (raw_file({"w": [1]}), "'w'.*not an object"),
    "entry lacks shape": (raw_file({"w": {"dtype": "F32", "data_offsets": [0, 0]}}), "'w'.*lacks shape"),
    "unknown dtype": (raw_file({"w": {**F32_ENTRY, "dtype": "F8_E4M3"}}, b"\0" * 8),
                      "'w'.*unsupported dtype 'F8_E4M3'"),
    "dtype not str": (raw_file({"w": {**F32_ENTRY, "dtype": 4}}, b"\0" * 8), "'w'.*unsupported dtype 4"),
    "shape negative": (raw_file({"w": {**F32_ENTRY, "shape": [-2]}}, b"\0" * 8), r"'w'.*shape \[-2\]"),
    "shape bool": (raw_file({"w": {**F32_ENTRY, "shape": [True, 2]}}, b"\0" * 8), "'w'.*shape"),
    "shape float": (raw_file({"w": {**F32_ENTRY, "shape": [2.0]}}, b"\0" * 8), "'w'.*shape"),
    "shape not list": (raw_file({"w": {**F32_ENTRY, "shape": 2}}, b"\0" * 8), "'w'.*shape"),
    "too many dims": (raw_file({"w": {**F32_ENTRY, "shape": [1] * 65 + [2]}}, b"\0" * 8), "'w'.*at most 64"),
    "zero size, huge dims": (raw_file({"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}),
                             "'w'.*too large for NumPy"),
    "offsets one int": (raw_file({"w": {**F32_ENTRY, "data_offsets": [8]}}, b"\0" * 8), "'w'.*data_offsets"),
    "offsets reversed": (raw_file({"w": {**F32_ENTRY, "data_offsets": [8, 0]}}, b"\0" * 8), "'w'.*data_offsets"),
    "offsets negative": (raw_file({"w": {**F32_ENTRY, "data_offsets": [-8, 0]}}, b"\0" * 8), "'w'.*data_offsets"),
    "offsets past data": (raw_file({"w": {**F32_ENTRY, "data_offsets": [0, 2**70]}}, b"\0" * 8),
                          r"'w'.*<= 8 \(the data size\)"),
    "size mismatch": (raw_file({"w": {**F32_ENTRY, "shape": [3]}}, b"\0" * 8),
                      r"'w'.*F32 shape \[3\] needs 12 bytes.*\[0, 8\) hold 8"),
    "overlap": (raw_file({"a": F32_ENTRY, "b": {**F32_ENTRY, "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
                "'b'.*overlaps tensor 'a'"),
    "gap": (raw_file({"w": {**F32_ENTRY, "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
            "4 unused bytes before tensor 'w'"),
    "trailing bytes": (raw_file({"w": F32_ENTRY}, b"\0" * 12), "4 bytes after the last tensor"),
    "metadata not dict": (raw_file({"__metadata__": ["x"]}), "__metadata__ must map strings"),
    "metadata value int": (raw_file({"__metadata__": {"a": 1}}), "__metadata__ must map strings"),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_file_raises_naming_file_and_tensor(tmp_path, case):
    data, match = CORRUPT[case]
    path = write(tmp_path, data, "corrupt.safetensors")
    for read in (load_file, read_header, load_metadata):
        with pytest.raises(SafetensorsError, match=match) as info:
            read(path)
        assert str(path) in str(info.value)


def test_missing_file_is_a_safetensors_error(tmp_path):
    with pytest.raises(SafetensorsError, match="nope.safetensors.*cannot open"):
        load_file(tmp_path / "nope.safetensors")


def _valid_file_bytes():
    rng = np.random.default_rng(1)
    tensors = {"f32": rng.standard_normal((3, 2)).astype(np.float32), "f16": np.ones(3, np.float16),
               "f64": np.arange(2.0), "i8": np.arange(-2, 3, dtype=np.int8), "b": np.array([True, False]),
               "scalar": np.array(1.0, np.float32), "empty": np.zeros((0, 4), np.float32)}
    with tempfile.TemporaryDirectory() as d:
        save_file(tensors, os.path.join(d, "v.st"), metadata={"format": "pt"})
        return open(os.path.join(d, "v.st"), "rb").read()


VALID = _valid_file_bytes()
VALID_HEADER_END = 8 + struct.unpack("<Q", VALID[:8])[0]
VALID_HEADER = json.loads(VALID[8:VALID_HEADER_END])


def _mutate(data: bytes, ops) -> bytes:
    for op, pos, arg in ops:
        pos %= len(data) + 1
        if op == "truncate":
            data = data[:pos]
        elif op == "overwrite":
            data = data[:pos] + arg + data[pos + len(arg):]
        elif op == "overwrite data":  # keeps the header valid, so the garbage reaches the arrays
            pos = VALID_HEADER_END + pos % (len(VALID) - VALID_HEADER_END)
            data = data[:pos] + arg + data[pos + len(arg):]
        elif op == "insert":
            data = data[:pos] + arg + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + len(arg):]
        elif op == "splice":  # a slice of the valid file copied over another place
            start = int.from_bytes(arg[:2], "little") % len(VALID)
            chunk = VALID[start:start + 1 + len(arg) * 8]
            data = data[:pos] + chunk + data[pos + len(chunk):]
        elif op == "header length":
            data = arg[:8].ljust(8, b"\0") + data[8:]
    return data


def _edit_header(edits, metadata, data_len):
    """The valid file with some header fields replaced; data_len None keeps its data section whole."""
    header = json.loads(json.dumps(VALID_HEADER))
    for name, field, value in edits:
        if field is None:
            header.pop(name, None)
        else:
            header.setdefault(name, {})[field] = value
    if metadata is not None:
        header["__metadata__"] = metadata
    data = VALID[VALID_HEADER_END:]
    return raw_file(header, data if data_len is None else data[:data_len])


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12)
ints = st.one_of(st.integers(-2, 64), st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64, 10**20]))
dtypes = st.sampled_from([*weights._STORED, "F8_E5M2", "f32", ""])
field_values = st.one_of(dtypes, st.lists(ints, max_size=3), json_values)
metadata = st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2), json_values)

OPS = ["truncate", "overwrite", "overwrite data", "insert", "delete", "splice", "header length"]
mutated_files = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, len(VALID)), st.binary(min_size=1, max_size=12)),
    min_size=1, max_size=4,
).map(lambda ops: _mutate(VALID, ops))
edited_headers = st.builds(
    _edit_header,
    st.lists(st.tuples(st.sampled_from([*VALID_HEADER, "new"]),
                       st.sampled_from(["dtype", "shape", "data_offsets", None]), field_values),
             min_size=1, max_size=3),
    metadata, st.one_of(st.none(), st.integers(0, 80)),
)
random_headers = st.builds(
    lambda header, data: raw_file(header, data),
    st.dictionaries(st.text(max_size=6), st.one_of(
        st.fixed_dictionaries({"dtype": dtypes, "shape": st.lists(ints, max_size=4),
                               "data_offsets": st.lists(ints, min_size=2, max_size=2)}),
        json_values), max_size=4),
    st.binary(max_size=64),
)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # random F64 bytes may overflow float32
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(mutated_files, edited_headers, random_headers))
def test_fuzzed_files_load_or_raise_safetensors_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        tracemalloc.start()
        try:
            loaded = load_file(path)
        except SafetensorsError as e:
            assert path in str(e)
            return
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            # Nothing may allocate what the file merely claims: at most the float32 upcasts of its bytes.
            assert peak < 1_000_000 + 4 * len(data), f"peak {peak} bytes for a {len(data)}-byte file"
        header, _ = read_header(path)
        assert list(loaded) == list(header)
        for name, array in loaded.items():
            assert list(array.shape) == header[name]["shape"]


# ---------------------------------------------------------------------------------------------
# Checkpoint folders


def small_state_dict(rng):
    return {f"h.{i}.{part}": rng.standard_normal((16, 8)).astype(np.float32) for i in range(3) for part in ("w", "v")}


def test_sharded_save_writes_transformers_layout_and_loads_back(tmp_path, rng):
    tensors = small_state_dict(rng)  # 6 tensors of 512 bytes
    paths = save_state_dict(tensors, tmp_path, max_shard_size="1KiB")
    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert paths == [str(tmp_path / n) for n in [*names, "model.safetensors.index.json"]]
    assert sorted(os.listdir(tmp_path)) == sorted([*names, "model.safetensors.index.json"])
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": 6 * 512}
    assert index["weight_map"] == {name: names[i // 2] for i, name in enumerate(tensors)}
    assert load_metadata(tmp_path / names[0]) == {"format": "pt"}
    loaded = load_state_dict(tmp_path)
    assert sorted(loaded) == sorted(tensors)
    for name, want in tensors.items():
        np.testing.assert_array_equal(loaded[name], want)


def test_resaving_removes_the_previous_layout(tmp_path, rng):
    first, second, third = small_state_dict(rng), small_state_dict(rng), small_state_dict(rng)
    save_state_dict(first, tmp_path, max_shard_size=1024)
    (tmp_path / "config.json").write_text("{}")  # other files are left alone
    save_state_dict(second, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    np.testing.assert_array_equal(load_state_dict(tmp_path)["h.2.v"], second["h.2.v"])
    save_state_dict(third, tmp_path, max_shard_size="2KiB")
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model-00001-of-00002.safetensors",
                                            "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    np.testing.assert_array_equal(load_state_dict(tmp_path)["h.2.v"], third["h.2.v"])


def test_a_tensor_bigger_than_the_shard_size_gets_its_own_shard(tmp_path):
    tensors = {"small": np.zeros(10, np.float32), "big": np.zeros(1000, np.float32), "tail": np.zeros(10, np.float32)}
    save_state_dict(tensors, tmp_path, max_shard_size=100)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"small": "model-00001-of-00003.safetensors",
                                   "big": "model-00002-of-00003.safetensors",
                                   "tail": "model-00003-of-00003.safetensors"}


@pytest.mark.parametrize("size, expected",
                         [(7, 7), ("2GB", 2 * 10**9), ("500MiB", 500 * 2**20), ("3 kb", 3000), ("10", 10)])
def test_parse_size(size, expected):
    assert weights._parse_size(size) == expected


@pytest.mark.parametrize("size", ["", "2XB", "1.5GB", "-3MB", 0, True, 1.0])
def test_parse_size_rejects(size):
    with pytest.raises(ValueError, match="max_shard_size"):
        weights._parse_size(size)


def sharded_dir(tmp_path, rng):
    save_state_dict(small_state_dict(rng), tmp_path, max_shard_size=1024)
    return tmp_path, tmp_path / "model.safetensors.index.json"


def edit_index(index_path, edit):
    index = json.loads(index_path.read_text())
    edit(index["weight_map"])
    index_path.write_text(json.dumps(index))


def test_index_naming_a_missing_shard(tmp_path, rng):
    directory, index_path = sharded_dir(tmp_path, rng)
    os.unlink(directory / "model-00002-of-00003.safetensors")
    with pytest.raises(SafetensorsError,
                       match=r"index\.json: shard model-00002-of-00003\.safetensors .*does not exist"):
        load_state_dict(directory)


def test_index_placing_a_tensor_in_the_wrong_shard(tmp_path, rng):
    directory, index_path = sharded_dir(tmp_path, rng)
    edit_index(index_path, lambda wm: wm.update({"h.0.w": "model-00003-of-00003.safetensors"}))
    with pytest.raises(SafetensorsError, match=r"00001-of-00003\.safetensors: holds 'h\.0\.w'.* places elsewhere"):
        load_state_dict(directory)


def test_shard_lacking_a_tensor_of_the_index(tmp_path, rng):
    directory, index_path = sharded_dir(tmp_path, rng)
    shard = directory / "model-00002-of-00003.safetensors"
    save_file(load_file(shard, names=["h.1.w"]), shard)
    with pytest.raises(SafetensorsError, match=r"00002-of-00003\.safetensors: lacks 'h\.1\.v'"):
        load_state_dict(directory)


def test_index_missing_a_tensor_a_shard_holds(tmp_path, rng):
    directory, index_path = sharded_dir(tmp_path, rng)
    edit_index(index_path, lambda wm: wm.pop("h.1.v"))
    with pytest.raises(SafetensorsError, match=r"00002-of-00003\.safetensors: holds 'h\.1\.v'.* places nowhere"):
        load_state_dict(directory)


def test_a_tensor_stored_in_two_shards(tmp_path, rng):
    directory, index_path = sharded_dir(tmp_path, rng)
    shard = directory / "model-00003-of-00003.safetensors"
    save_file({**load_file(shard), "h.0.w": np.zeros((16, 8), np.float32)}, shard)
    with pytest.raises(SafetensorsError, match=r"00003\.safetensors: holds 'h\.0\.w'.* places elsewhere"):
        load_state_dict(directory)


@pytest.mark.parametrize("text, match", [
    ("[]", "no \"weight_map\""),
    ('{"weight_map": []}', "no \"weight_map\""),
    ('{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}', "duplicate key 'a'"),
    ('{"weight_map": {"a": "../model.safetensors"}}', "not a file name in this folder"),
    ('{"weight_map": {"a": "/etc/passwd"}}', "not a file name in this folder"),
    ('{"weight_map": {"a": 3}}', "not a file name in this folder"),
    ('{"weight_map": ', "not valid JSON"),
])
def test_bad_index(tmp_path, text, match):
    (tmp_path / "model.safetensors.index.json").write_text(text)
    with pytest.raises(SafetensorsError, match=match) as info:
        load_state_dict(tmp_path)
    assert "model.safetensors.index.json" in str(info.value)


def test_folder_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(SafetensorsError, match="missing: no such file"):
        load_state_dict(tmp_path / "missing")
    with pytest.raises(SafetensorsError, match=re.escape(f"{tmp_path}: no model.safetensors")):
        load_state_dict(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(SafetensorsError, match=re.escape(f"python -m minigpt_pixels.convert {tmp_path}") + "$"):
        load_state_dict(tmp_path)
    with pytest.raises(SafetensorsError, match="python -m minigpt_pixels.convert"):
        load_state_dict(tmp_path / "pytorch_model.bin")


def test_load_state_dict_of_a_file_and_of_a_single_file_folder(tmp_path, rng):
    tensors = small_state_dict(rng)
    save_file(tensors, tmp_path / "any-name.safetensors")
    save_state_dict(tensors, tmp_path / "folder")
    for loaded in (load_state_dict(tmp_path / "any-name.safetensors"), load_state_dict(tmp_path / "folder")):
        assert sorted(loaded) == sorted(tensors)
        for name in tensors:
            np.testing.assert_array_equal(loaded[name], tensors[name])


@pytest.mark.live
def test_transformers_sharded_checkpoint_both_ways(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.ImageGPTConfig(n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=17)
    torch.manual_seed(0)
    model = transformers.ImageGPTModel(config).eval()
    expected = {k: v.numpy() for k, v in model.state_dict().items()}

    model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = load_state_dict(tmp_path / "hf")
    assert sorted(ours) == sorted(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(ours[name], want, err_msg=name)

    # And back: our shards, read by transformers, rebuild the same model.
    save_state_dict(ours, tmp_path / "ours", max_shard_size="20KB")
    config.save_pretrained(tmp_path / "ours")
    assert len(os.listdir(tmp_path / "ours")) > 3
    reloaded = transformers.ImageGPTModel.from_pretrained(tmp_path / "ours").state_dict()
    for name, want in expected.items():
        np.testing.assert_array_equal(reloaded[name].numpy(), want, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Non-finite weights and exclusive creation


def test_non_finite_weights_warn_at_load_naming_the_tensor(tmp_path):
    good = {"a.weight": np.ones((3, 4), np.float32), "ids": np.arange(3)}
    save_state_dict(good, tmp_path / "good")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_state_dict(tmp_path / "good")  # finite: not a word
    for value, name in [(np.nan, "h.0.attn.c_attn.weight"), (np.inf, "wte.weight"), (-np.inf, "ln_f.weight")]:
        bad = {**good, name: np.ones(20, np.float32)}
        bad[name][17] = value
        save_state_dict(bad, tmp_path / name)
        with pytest.warns(weights.NonFiniteWeightsWarning, match=re.escape(f"tensor {name!r}")):
            loaded = load_state_dict(tmp_path / name)
        assert np.isnan(loaded[name][17]) == np.isnan(value)  # still loaded, as the file holds it


def test_non_finite_names_reads_chunk_by_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_SCAN_ELEMENTS", 1000)  # many chunks, each handed back after reading
    arrays = {"x": np.arange(10_000, dtype=np.float32).reshape(100, 100), "y": np.zeros(5000, np.float16)}
    arrays["y"][4999] = np.inf
    save_file(arrays, tmp_path / "m.safetensors")
    bad = []
    loaded = load_file(tmp_path / "m.safetensors", non_finite=bad)
    assert bad == ["y"]
    np.testing.assert_array_equal(loaded["x"], arrays["x"])  # pages given back still read the same


def test_save_without_replace_keeps_a_file_that_is_there(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        save_file({"a": np.zeros(2, np.float32)}, path, replace=False)
    assert path.read_bytes() == b"mine" and os.listdir(tmp_path) == ["m.safetensors"]
    save_file({"a": np.zeros(2, np.float32)}, tmp_path / "new.safetensors", replace=False)
    assert load_file(tmp_path / "new.safetensors")["a"].shape == (2,)


def test_exclusive_creation_without_hard_links(tmp_path, monkeypatch):
    """A file system without hard links (FAT, some network mounts): an O_EXCL create and a copy."""
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(weights.os, "link", no_links)
    weights.atomic_write_bytes(tmp_path / "a.bin", b"abc", replace=False)
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    with pytest.raises(FileExistsError):
        weights.atomic_write_bytes(tmp_path / "a.bin", b"xyz", replace=False)
    assert (tmp_path / "a.bin").read_bytes() == b"abc" and os.listdir(tmp_path) == ["a.bin"]
