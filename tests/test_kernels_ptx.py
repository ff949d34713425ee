"""Compile every CUDA kernel for a real GPU (sm_90, the H100) without one, and check what the simulator
cannot: the simulator happily runs float64 arithmetic, runtime-sized local arrays and any amount of
shared memory, while a GPU pays for the first and refuses the others.

For each kernel, at the real tile sizes and the argument layouts the code launches it with:
- it compiles at all (constant-sized shared and local arrays, no Python objects, typable code);
- no `.f64` instruction or register in its PTX (every constant and scalar stayed float32);
- its static shared memory (the `.shared` declarations) fits the 48 KB a block gets without opt-in;
- the attention kernels keep their query row and accumulator in registers (no `.local` depot).

The compiling runs in a subprocess because tests/conftest.py switches the simulator on for this
process. numba-cuda finds libNVVM through cuda-pathfinder, which looks in site-packages first: the
`nvidia-nvvm` wheel (a test dependency) provides it, so no CUDA toolkit or driver is needed.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SHARED_LIMIT = 48 * 1024  # static shared memory per block without the opt-in attribute

SCRIPT = textwrap.dedent("""
    import json, re, sys, types as pytypes
    try:
        from numba import cuda, types
        from numba.cuda import cuda_paths
        cuda.compile_ptx(lambda x: None, (types.float32[::1],), cc=(9, 0))
    except Exception as e:
        print(json.dumps({"skip": f"numba-cuda cannot compile PTX here ({type(e).__name__}: {e}); install "
                                  f"the nvidia-nvvm and nvidia-cuda-nvrtc wheels"}))
        raise SystemExit(0)

    # Device functions (cuda.jit(device=True)) ask the driver for the current device's compute
    # capability when a kernel calling them compiles, even under compile_ptx; there is no driver
    # here, so tell them the target's.
    import numba.cuda.dispatcher
    numba.cuda.dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))

    from minigpt_pixels.kernels import cuda as K

    f32, i64, none = types.float32, types.int64, types.none
    C1, C2, C4 = (types.Array(f32, n, "C") for n in (1, 2, 4))
    A4 = types.Array(f32, 4, "A")  # head-split views into the model's fused qkv buffer
    I1 = types.Array(types.int32, 1, "C")
    kernels = {
        "matmul, big tiles, bias + residual": (K.matmul_kernel(K.MATMUL_TILES), (C2, C2, C1, C2, C2, i64)),
        "matmul, small tiles, no bias": (K.matmul_kernel(K.MATMUL_TILES_SMALL), (C2, C2, none, none, C2, i64)),
        "skinny matmul, bias + residual": (K.skinny_matmul_kernel(K.SKINNY_TILES), (C2, C2, C1, C2, C2, i64)),
        "skinny matmul, no bias": (K.skinny_matmul_kernel(K.SKINNY_TILES), (C2, C2, none, none, C2, i64)),
        "causal attention D=64, contiguous": (K.causal_attention_kernel(64, K.ATTENTION_TILES), (C4,) * 4 + (f32,)),
        "causal attention D=128, small tiles": (K.causal_attention_kernel(128, K.ATTENTION_TILES_SMALL),
                                                (A4,) * 4 + (f32,)),
        "decode attention D=64, contiguous": (K.decode_attention_kernel(64, K.DECODE_TILES),
                                              (C4,) * 4 + (f32, i64)),
        "layer norm": (K.layer_norm_kernel(K.ROW_THREADS), (C2, C1, C2, f32)),
        "softmax": (K.softmax_kernel(K.ROW_THREADS), (C2, C2)),
        "quick_gelu": (K.quick_gelu_kernel, (C1, C1)),
        "add": (K.add_kernel, (C1, C1, C1)),
        "embedding": (K.embedding_kernel, (I1, I1, C2, C2, C2)),
        "append kv": (K.append_kv_kernel, (A4, A4, C4, C4, C4, C4, i64)),
    }
    for D in (64, 96, 128):  # the head sizes of iGPT-S, -L and -M, with the model's layouts
        kernels[f"causal attention D={D}"] = (K.causal_attention_kernel(D, K.ATTENTION_TILES), (A4,) * 4 + (f32,))
        kernels[f"decode attention D={D}"] = (K.decode_attention_kernel(D, K.DECODE_TILES),
                                              (A4, C4, C4, A4, f32, i64))

    results = {"nvvm": str(cuda_paths.get_cuda_paths().get("nvvm")), "kernels": {}}
    for name, (kernel, sig) in kernels.items():
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
        decl = r"\\.b8\\s+[\\w$]+\\[(\\d+)\\]"
        results["kernels"][name] = {
            "f64": [line.strip() for line in ptx.splitlines() if ".f64" in line][:5],
            "shared_bytes": sum(int(n) for n in re.findall(r"\\.shared\\s+\\.align\\s+\\d+\\s+" + decl, ptx)),
            "local_bytes": sum(int(n) for n in re.findall(r"\\.local\\s+\\.align\\s+\\d+\\s+" + decl, ptx)),
        }
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}  # the real target, not the simulator
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, f"compiling the kernels for sm_90 failed:\n{run.stderr[-4000:]}"
    results = json.loads(run.stdout.strip().splitlines()[-1])
    if "skip" in results:
        pytest.skip(results["skip"])
    print(f"libNVVM: {results['nvvm']}")
    for name, r in results["kernels"].items():
        print(f"[ptx] {name}: shared {r['shared_bytes']} B, local {r['local_bytes']} B, f64 {len(r['f64'])}")
    return results["kernels"]


def test_every_kernel_is_compiled(compiled):
    from minigpt_pixels.kernels import cuda as K
    factories = {n for n in dir(K) if n.endswith("_kernel") and callable(getattr(K, n))}
    covered = {"matmul_kernel", "skinny_matmul_kernel", "causal_attention_kernel", "decode_attention_kernel",
               "layer_norm_kernel", "softmax_kernel", "quick_gelu_kernel", "add_kernel", "embedding_kernel",
               "append_kv_kernel"}
    assert factories == covered, f"kernels missing from the PTX check: {sorted(factories - covered)}"
    assert len(compiled) == 19


def test_no_float64_in_any_kernel(compiled):
    promoted = {name: r["f64"] for name, r in compiled.items() if r["f64"]}
    assert not promoted, f"float64 instructions (a Python float or an int / int slipped in): {promoted}"


def test_shared_memory_fits_48kb(compiled):
    over = {name: r["shared_bytes"] for name, r in compiled.items() if r["shared_bytes"] > SHARED_LIMIT}
    assert not over, f"static shared memory above {SHARED_LIMIT} bytes: {over}"


def test_attention_keeps_rows_in_registers(compiled):
    spilled = {name: r["local_bytes"] for name, r in compiled.items()
               if "attention" in name and r["local_bytes"]}
    assert not spilled, f"attention kernels with a local-memory array (a row fell out of registers): {spilled}"
