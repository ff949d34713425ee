"""The CUDA kernels on a real GPU against torch: matmul GFLOP/s against cuBLAS, causal and decode attention
against scaled_dot_product_attention, and 1024-token sampling for iGPT-S against transformers' generate.

    python benchmarks/bench_kernels.py                        # everything, iGPT-S shapes
    python benchmarks/bench_kernels.py --only matmul --rows 8192
    python benchmarks/bench_kernels.py --only sampling --tokens 128 --sample-batch 1 8

The goals: matmul at least 50% of cuBLAS's GFLOP/s; attention and sampling no slower than torch
(ratio ours / torch time <= 1). Both sides run true float32 (TF32 switched off in torch), from
Python, timed by wall clock around back-to-back calls with a synchronise at the end, so launch
overheads count on both sides as they do in use; medians of --repeats. Skips with a message (exit
status 0) where there is no CUDA GPU; without torch it prints our times alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

IGPT_S = dict(n_embd=512, n_head=8, n_inner=2048, palette=512)


def gpu_or_reason():
    """None when numba can launch on a real GPU, else why not."""
    import numba
    if numba.config.ENABLE_CUDASIM:
        return "NUMBA_ENABLE_CUDASIM is set: the simulator cannot be benchmarked"
    from numba import cuda
    if not cuda.is_available():
        return "numba finds no CUDA GPU"
    return None


def load_torch():
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False  # cuBLAS in true float32, like our kernels
    torch.backends.cudnn.allow_tf32 = False
    return torch


def timed(fn, sync, repeats, inner=1):
    """Median seconds per call of fn over `repeats` rounds of `inner` back-to-back calls."""
    fn()
    sync()  # warm-up: compilation, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def ratio(ours, theirs):
    return f"{ours / theirs:6.2f}" if theirs else "   n/a"


# ---- matmul --------------------------------------------------------------------------------------
def bench_matmul(args, K, cuda, torch):
    C, F, V = IGPT_S["n_embd"], IGPT_S["n_inner"], IGPT_S["palette"]
    shapes = {"c_attn": (C, 3 * C), "attn.c_proj": (C, C), "c_fc": (C, F), "mlp.c_proj": (F, C), "lm_head": (C, V)}
    print(f"\nmatmul, float32, [M, K] @ [K, N] (goal: at least 50% of cuBLAS)")
    print(f"{'layer':>12} {'M':>6} {'K':>5} {'N':>5} {'ours GFLOP/s':>13} {'cuBLAS GFLOP/s':>15} {'ours/cuBLAS':>12} "
          f"{'max |diff|':>10}")
    rng = np.random.default_rng(0)
    for M in args.rows:
        for name, (Kdim, N) in shapes.items():
            a = rng.standard_normal((M, Kdim), dtype=np.float32)
            b = (rng.standard_normal((Kdim, N), dtype=np.float32) / np.sqrt(Kdim)).astype(np.float32)
            da, db, dout = cuda.to_device(a), cuda.to_device(b), cuda.device_array((M, N), np.float32)
            ours = timed(lambda: K.launch_linear(da, db, None, dout), cuda.synchronize, args.repeats, args.inner)
            flops = 2.0 * M * Kdim * N
            theirs, diff = None, float("nan")
            if torch is not None:
                ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
                theirs = timed(lambda: ta @ tb, torch.cuda.synchronize, args.repeats, args.inner)
                diff = float(np.max(np.abs(dout.copy_to_host() - (ta @ tb).cpu().numpy())))
            cublas = f"{flops / theirs / 1e9:15.0f}" if theirs else f"{'n/a':>15}"
            share = f"{theirs / ours:11.0%}" if theirs else f"{'n/a':>11}"
            print(f"{name:>12} {M:6d} {Kdim:5d} {N:5d} {flops / ours / 1e9:13.0f} {cublas} {share:>12} {diff:10.2e}")


# ---- attention -----------------------------------------------------------------------------------
def bench_attention(args, K, cuda, torch):
    H, D = IGPT_S["n_head"], IGPT_S["n_embd"] // IGPT_S["n_head"]
    T, scale = args.positions, np.float32(1 / np.sqrt(D))
    print(f"\nattention, float32, H={H} D={D} (goal: ours / torch time <= 1)")
    print(f"{'kind':>8} {'B':>3} {'T':>5} {'S':>5} {'ours ms':>9} {'torch ms':>9} {'ours/torch':>11} "
          f"{'max |diff|':>10}")
    rng = np.random.default_rng(0)
    for B in args.batch:
        q, k, v = (rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(3))
        dq, dk, dv = cuda.to_device(q), cuda.to_device(k), cuda.to_device(v)
        dout, dout1 = cuda.device_array_like(q), cuda.device_array((B, H, 1, D), np.float32)
        q1 = dq[:, :, T - 1:T]  # the decode step: the last position's query against all T cached keys
        runs = {
            "causal": (lambda: K.launch_causal_attention(dq, dk, dv, dout, scale), T, dout),
            "decode": (lambda: K.launch_decode_attention(q1, dk, dv, T, dout1, scale), 1, dout1),
        }
        for kind, (fn, t, out) in runs.items():
            ours = timed(fn, cuda.synchronize, args.repeats, args.inner)
            theirs, diff = None, float("nan")
            if torch is not None:
                F = torch.nn.functional
                tq, tk, tv = (torch.from_numpy(x).cuda() for x in (q, k, v))
                tq = tq[:, :, T - t:]
                causal = kind == "causal"  # the decode query sees every key: no mask
                theirs = timed(lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal),
                               torch.cuda.synchronize, args.repeats, args.inner)
                ref = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal).cpu().numpy()
                diff = float(np.max(np.abs(out.copy_to_host() - ref)))
            torch_ms = f"{theirs * 1e3:9.3f}" if theirs else f"{'n/a':>9}"
            print(f"{kind:>8} {B:3d} {t:5d} {T:5d} {ours * 1e3:9.3f} {torch_ms} {ratio(ours, theirs):>11} {diff:10.2e}")


# ---- sampling ------------------------------------------------------------------------------------
def bench_sampling(args, torch):
    from minigpt_pixels.config import ImageGPTConfig
    from minigpt_pixels.generation import generate
    from minigpt_pixels.model import ImageGPTForCausalImageModeling

    cfg = ImageGPTConfig.igpt_s(n_layer=args.layers, n_positions=args.positions)
    hf, params = None, None
    if torch is not None:
        try:
            import transformers
        except ImportError:
            transformers = None
        if transformers is not None:  # the same random weights on both sides
            torch.manual_seed(0)
            hf = transformers.ImageGPTForCausalImageModeling(transformers.ImageGPTConfig(
                n_layer=cfg.n_layer, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_head=cfg.n_head,
                vocab_size=cfg.vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
            params = {k: v.numpy().copy() for k, v in hf.state_dict().items()
                      if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # causal-mask buffers, not weights
            hf = hf.cuda()
    ours = ImageGPTForCausalImageModeling(cfg, params=params, seed=0).to("cuda")
    tokens = min(args.tokens, cfg.n_positions)
    print(f"\nsampling {tokens} tokens after SOS, greedy, {cfg.n_layer} layers x {cfg.n_embd} wide "
          f"(goal: ours / transformers time <= 1)")
    print(f"{'batch':>5} {'ours s':>8} {'ours tok/s':>11} {'hf s':>8} {'hf tok/s':>9} {'ours/hf':>8} "
          f"{'same tokens':>12}")

    def run_ours(prompt, n):
        return generate(ours, prompt, max_new_tokens=n)

    def run_hf(prompt, n):
        tp = torch.from_numpy(prompt).cuda()
        with torch.no_grad():  # an all-ones mask: left to infer one, transformers would treat SOS as padding
            ids = hf.generate(tp, attention_mask=torch.ones_like(tp), max_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()
        return ids.cpu().numpy()

    for B in args.sample_batch:
        prompt = np.full((B, 1), cfg.sos_token_id, np.int64)
        sides = {"ours": run_ours} if hf is None else {"ours": run_ours, "hf": run_hf}
        times, ids = {side: [] for side in sides}, {}
        for run in sides.values():
            run(prompt, 4)  # warm-up: our kernels compile, torch initialises
        for _ in range(args.sample_repeats):  # interleaved: ours, theirs, ours, ...
            for side, run in sides.items():
                start = time.perf_counter()
                ids[side] = run(prompt, tokens)
                times[side].append(time.perf_counter() - start)
        o = statistics.median(times["ours"])
        h = statistics.median(times["hf"]) if hf is not None else None
        # informational: random weights give near-uniform logits, so greedy paths part at near-ties
        same = f"{np.mean(ids['ours'] == ids['hf']):11.1%}" if hf is not None else f"{'n/a':>11}"
        hf_s = f"{h:8.2f} {B * tokens / h:9.0f}" if h else f"{'n/a':>8} {'n/a':>9}"
        print(f"{B:5d} {o:8.2f} {B * tokens / o:11.0f} {hf_s} {ratio(o, h):>8} {same:>12}")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    ap.add_argument("--only", nargs="+", choices=["matmul", "attention", "sampling"],
                    default=["matmul", "attention", "sampling"], help="what to time")
    ap.add_argument("--rows", type=int, nargs="+", default=[1024, 8192],
                    help="matmul M: batch x 1024 positions (1 and 8 images)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="attention batch sizes")
    ap.add_argument("--positions", type=int, default=1024, help="sequence length (iGPT-S: 32 x 32 = 1024)")
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds per kernel (median reported)")
    ap.add_argument("--inner", type=int, default=5, help="back-to-back calls per timed round")
    ap.add_argument("--layers", type=int, default=24, help="transformer blocks for sampling (iGPT-S: 24)")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens to sample after the SOS token")
    ap.add_argument("--sample-batch", type=int, nargs="+", default=[1, 8], help="sampling batch sizes")
    ap.add_argument("--sample-repeats", type=int, default=1, help="interleaved sampling runs per side")
    args = ap.parse_args(argv)
    for name in ("rows", "batch", "sample_batch"):
        if min(getattr(args, name)) < 1:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if args.positions < 1 or args.tokens < 1 or args.layers < 1 or args.repeats < 1 or args.inner < 1:
        ap.error("--positions, --tokens, --layers, --repeats and --inner must be positive")

    reason = gpu_or_reason()
    if reason:
        print(f"bench_kernels: skipped, {reason}; run it on a machine with an NVIDIA GPU")
        return 0
    from numba import cuda

    from minigpt_pixels.kernels import cuda as K

    torch = load_torch()
    device = cuda.get_current_device()
    print(f"GPU: {device.name.decode() if isinstance(device.name, bytes) else device.name}, "
          f"{getattr(device, 'MULTIPROCESSOR_COUNT', '?')} SMs; torch: "
          f"{torch.__version__ if torch is not None else 'not installed or no CUDA (our numbers only)'}")
    with K.small_grids_expected():  # numba's low-occupancy warning, on every small launch, would count too
        if "matmul" in args.only:
            bench_matmul(args, K, cuda, torch)
        if "attention" in args.only:
            bench_attention(args, K, cuda, torch)
        if "sampling" in args.only:
            bench_sampling(args, torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
