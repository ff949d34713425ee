"""Memory cost of load_state_dict on an iGPT-L-sized checkpoint (1.36B float32 parameters, 5.5 GB).

Writes a sparse safetensors file with transformers' ImageGPT parameter names (zeros, except the layer-norm
weights, which are 1), loads it in a fresh process and reports that process's peak RSS before and after
the load: memory-mapping should leave it far below the file size.

    python benchmarks/bench_load.py [--path FILE] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time


def igpt_shapes(n_layer: int, n_embd: int, vocab_size: int, n_positions: int) -> dict[str, list[int]]:
    """ImageGPTForCausalImageModeling's parameters, Conv1D weights stored [in, out]."""
    c = n_embd
    shapes = {"transformer.wte.weight": [vocab_size, c], "transformer.wpe.weight": [n_positions, c]}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        shapes.update({
            h + "ln_1.weight": [c],
            h + "attn.c_attn.weight": [c, 3 * c], h + "attn.c_attn.bias": [3 * c],
            h + "attn.c_proj.weight": [c, c], h + "attn.c_proj.bias": [c],
            h + "ln_2.weight": [c],
            h + "mlp.c_fc.weight": [c, 4 * c], h + "mlp.c_fc.bias": [4 * c],
            h + "mlp.c_proj.weight": [4 * c, c], h + "mlp.c_proj.bias": [c],
        })
    shapes["transformer.ln_f.weight"] = [c]
    shapes["lm_head.weight"] = [vocab_size - 1, c]  # no row for SOS: the model never predicts it
    return shapes


def write_sparse_checkpoint(path: str, shapes: dict[str, list[int]]) -> None:
    """A float32 safetensors file laid out as save_file would, but with its zeros left as holes.

    save_file would write all 5.5 GB; here only the header and the layer-norm weights are written, and
    truncate() extends the file, so it is never held in memory and takes almost no disk.
    """
    entries, offset = {}, 0
    for name in sorted(shapes):  # one dtype, so save_file's order is by name
        nbytes = 4 * math.prod(shapes[name])
        entries[name] = {"dtype": "F32", "shape": shapes[name], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    data_start = 8 + len(header)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for name, entry in entries.items():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                f.seek(data_start + entry["data_offsets"][0])
                f.write(struct.pack("<f", 1.0) * math.prod(entry["shape"]))
        f.truncate(data_start + offset)


def _peak_rss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def measure(path: str) -> dict:
    """Run in a fresh process: peak RSS around load_state_dict, and a checksum that reads real pages."""
    from minigpt_pixels.weights import load_state_dict

    before = _peak_rss_bytes()
    start = time.perf_counter()
    state = load_state_dict(path)
    seconds = time.perf_counter() - start
    after = _peak_rss_bytes()
    return {"rss_before": before, "rss_after": after, "load_seconds": seconds, "tensors": len(state),
            "parameters": sum(a.size for a in state.values()),
            "ln_f_sum": float(state["transformer.ln_f.weight"].sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--path", default=None, help="checkpoint file to write; None means a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the file afterwards")
    parser.add_argument("--n-layer", type=int, default=48, help="iGPT-L: 48")
    parser.add_argument("--n-embd", type=int, default=1536, help="iGPT-L: 1536")
    parser.add_argument("--vocab-size", type=int, default=513, help="512 colours + SOS")
    parser.add_argument("--n-positions", type=int, default=1024, help="32x32 pixels")
    parser.add_argument("--measure", metavar="FILE", help=argparse.SUPPRESS)  # the fresh child process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0

    tmpdir = None if args.path else tempfile.mkdtemp(prefix="bench_load-")
    path = args.path or os.path.join(tmpdir, "model.safetensors")
    try:
        start = time.perf_counter()
        write_sparse_checkpoint(path, igpt_shapes(args.n_layer, args.n_embd, args.vocab_size, args.n_positions))
        written = time.perf_counter() - start
        stat = os.stat(path)
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", path],
                               capture_output=True, text=True)
        if child.returncode:
            sys.stderr.write(child.stderr)
            return child.returncode
        r = json.loads(child.stdout)
    finally:
        if not args.keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if tmpdir:
                os.rmdir(tmpdir)

    print(f"file            {path}{'' if args.keep else ' (deleted)'}")
    print(f"file size       {stat.st_size / 1e9:.3f} GB ({r['parameters']:,} float32 parameters "
          f"in {r['tensors']} tensors; {stat.st_blocks * 512 / 1e6:.1f} MB on disk, sparse; "
          f"written in {written:.2f} s)")
    print(f"peak RSS        {r['rss_before'] / 1e6:.1f} MB before load_state_dict, "
          f"{r['rss_after'] / 1e6:.1f} MB after "
          f"(+{(r['rss_after'] - r['rss_before']) / 1e6:.1f} MB in {r['load_seconds'] * 1e3:.0f} ms)")
    print(f"RSS / file size {r['rss_after'] / stat.st_size:.4f} after the load, "
          f"{(r['rss_after'] - r['rss_before']) / stat.st_size:.5f} for the load itself")
    expected = float(args.n_embd)
    print(f"check           sum(transformer.ln_f.weight) = {r['ln_f_sum']:g} (expected {expected:g})")
    return 0 if r["ln_f_sum"] == expected else 1


if __name__ == "__main__":
    sys.exit(main())
