"""Our forward pass ("cpu" device) against transformers' on the same random iGPT-S-shaped weights.

    python benchmarks/bench_forward.py                       # batch 1, 24 layers, 1 thread and default threads
    python benchmarks/bench_forward.py --batch 8 --layers 6 --repeats 2
    python benchmarks/bench_forward.py --decode-steps 32      # also time single-token steps with the KV cache

transformers' model is built under torch.manual_seed(--seed) and its state_dict copied into ours, so both
run the same float32 weights. Runs alternate (ours, theirs, ours, theirs, ...) so that load from other
processes hits both alike; medians are reported. Each thread setting limits all three pools alike: torch,
NumPy's BLAS (threadpoolctl) and Numba.

FLOP count (multiply-add = 2 FLOP), for B sequences of T tokens, width C, MLP width F, L layers:
    per layer, linear layers  2 T (C*3C + C*C + C*F + F*C)         = 6.4 GFLOP at T=1024, C=512, F=2048
    per layer, attention      2 * 2 C * (T(T+1)/2)  causal          = 1.07 GFLOP  (4 C T^2 = 2.1 if full)
    LM head                   2 T C (vocab_size - 1)                = 0.54 GFLOP
For iGPT-S (24 layers) at T = 1024: 181 GFLOP counting only the causal half of attention (the work a
forward needs: the "floor"), 206 GFLOP counting the full T x T products that transformers computes.
Embedding, norms, softmax and activations are O(T C) or O(T^2) non-FLOP work and are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np


def forward_flops(batch, T, C, F, layers, vocab, causal=True):
    linear = 2 * T * (C * 3 * C + C * C + C * F + F * C)
    attn = 2 * 2 * C * (T * (T + 1) // 2 if causal else T * T)
    return batch * (layers * (linear + attn) + 2 * T * C * (vocab - 1))


def matmul_peak(n=2048, repeats=10):
    """Best float32 GFLOP/s of one big np.matmul under the current thread limits. The best of several,
    as other processes can only slow a run down; measured before and after the timings too."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def build_models(layers, seed):
    import torch
    import transformers

    from minigpt_pixels.config import ImageGPTConfig
    from minigpt_pixels.model import ImageGPTForCausalImageModeling

    kw = dict(vocab_size=513, n_positions=1024, n_embd=512, n_layer=layers, n_head=8)
    torch.manual_seed(seed)
    theirs = transformers.ImageGPTForCausalImageModeling(
        transformers.ImageGPTConfig(**kw, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    state = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()
             if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    ours = ImageGPTForCausalImageModeling(ImageGPTConfig(**kw), params=state).to("cpu")
    return ours, theirs


@contextlib.contextmanager
def thread_limit(n):
    """n threads for torch, NumPy's BLAS (threadpoolctl) and Numba alike; n = None keeps each library's
    default. Restores the previous settings on exit."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    saved = torch.get_num_threads(), numba.get_num_threads()
    try:
        if n is not None:
            torch.set_num_threads(n)
            numba.set_num_threads(n)
        with threadpool_limits(n):  # None: no limit
            yield
    finally:
        torch.set_num_threads(saved[0])
        numba.set_num_threads(saved[1])


SETTLE_SECONDS = 0.5  # idle time before each timed run: see time_pair


def time_pair(ours_fn, theirs_fn, repeats):
    """Alternate the two, `repeats` times each; return the two lists of seconds. Each run starts after
    SETTLE_SECONDS of idle: a library's worker threads spin for a while after a call (torch's OpenMP
    threads, OpenBLAS's), and without the pause they took a core from whichever side ran next (ours
    1.39 s right after transformers, 1.18 s on its own, 2 threads)."""
    ours_t, theirs_t = [], []
    for _ in range(repeats):
        for fn, out in ((ours_fn, ours_t), (theirs_fn, theirs_t)):
            time.sleep(SETTLE_SECONDS)
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return ours_t, theirs_t


def fmt(ts):
    return f"{statistics.median(ts):7.3f} s (min {min(ts):.3f}, max {max(ts):.3f})"


def run_forward(ours, theirs, batch, T, repeats, seed, peak_size=2048):
    import torch

    cfg = ours.config
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size - 1, size=(batch, T))
    ids[:, 0] = cfg.vocab_size - 1  # SOS first, as real inputs
    t_ids = torch.tensor(ids)

    def ours_fn():
        return ours(ids).logits

    def theirs_fn():
        with torch.no_grad():
            return theirs(t_ids, use_cache=False).logits.numpy()

    diff = float(np.max(np.abs(ours_fn() - theirs_fn())))  # warm-up, compiles the kernels, checks the weights
    peak_before = matmul_peak(peak_size)
    ours_t, theirs_t = time_pair(ours_fn, theirs_fn, repeats)
    peak = max(peak_before, matmul_peak(peak_size))
    floor = forward_flops(batch, T, cfg.n_embd, cfg.inner_dim, cfg.n_layer, cfg.vocab_size)
    full = forward_flops(batch, T, cfg.n_embd, cfg.inner_dim, cfg.n_layer, cfg.vocab_size, causal=False)
    mo, mt = statistics.median(ours_t), statistics.median(theirs_t)
    print(f"  forward batch {batch} x {T} tokens, {cfg.n_layer} layers  (logits max abs diff {diff:.2e}; "
          f"peak {peak:.1f} GFLOP/s: the best np.matmul {peak_size}^3 of 10 before and 10 after)")
    print(f"    ours          {fmt(ours_t)}   {floor / mo / 1e9:6.1f} GFLOP/s = {floor / mo / 1e9 / peak:5.1%} "
          f"of peak (floor {floor / 1e9:.1f} GFLOP)")
    print(f"    transformers  {fmt(theirs_t)}   {floor / mt / 1e9:6.1f} GFLOP/s = {floor / mt / 1e9 / peak:5.1%} "
          f"of peak ({full / mt / 1e9:.1f} GFLOP/s counting the {full / 1e9:.1f} GFLOP it does)")
    print(f"    ratio ours / transformers: {mo / mt:.3f} of medians, {min(ours_t) / min(theirs_t):.3f} of minima, "
          f"{statistics.median(o / t for o, t in zip(ours_t, theirs_t)):.3f} median of per-pair ratios")


def run_decode(ours, theirs, batch, steps, repeats, seed):
    """Single-token steps with the KV cache: a 1-token prompt (SOS) then `steps` tokens."""
    import torch
    from transformers import DynamicCache

    from minigpt_pixels.model import KVCache

    cfg = ours.config
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size - 1, size=(batch, steps + 1))
    ids[:, 0] = cfg.vocab_size - 1
    t_ids = torch.tensor(ids)

    def ours_fn():
        cache = KVCache(cfg, batch, max_length=steps + 1)
        for t in range(steps + 1):
            ours(ids[:, t:t + 1], cache=cache, use_cache=True)

    def theirs_fn():
        with torch.no_grad():
            cache = DynamicCache(config=theirs.config)
            for t in range(steps + 1):
                theirs(t_ids[:, t:t + 1], cache=cache, use_cache=True)  # 5.24's name; past_key_values goes in 5.40

    ours_fn(), theirs_fn()  # warm-up
    ours_t, theirs_t = time_pair(ours_fn, theirs_fn, repeats)
    per = 1e3 / (steps + 1)
    mo, mt = statistics.median(ours_t), statistics.median(theirs_t)
    print(f"  decode batch {batch}, {steps + 1} single-token steps with the KV cache, {cfg.n_layer} layers")
    print(f"    ours          {mo * per:7.2f} ms/step    transformers {mt * per:7.2f} ms/step    "
          f"ratio {mo / mt:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes to time")
    ap.add_argument("--layers", type=int, default=24, help="transformer blocks (24 = iGPT-S; fewer for a quick run)")
    ap.add_argument("--tokens", type=int, default=1024, help="sequence length of the forward pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each model per setting")
    ap.add_argument("--threads", choices=["1", "default", "both"], default="both",
                    help="1 thread for every library, each library's default, or both in turn")
    ap.add_argument("--decode-steps", type=int, default=0,
                    help="also time this many single-token decode steps with the KV cache (0: skip)")
    ap.add_argument("--peak-size", type=int, default=2048, help="n of the n x n x n matmul that measures the peak")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed for the weights, and the inputs' seed")
    args = ap.parse_args(argv)
    if min(args.layers, args.repeats, args.peak_size, *args.batch) < 1 or not 1 <= args.tokens <= 1024 \
            or args.decode_steps < 0 or args.decode_steps > 1023:
        ap.error("--layers, --repeats, --batch and --peak-size must be >= 1, --tokens in [1, 1024], "
                 "--decode-steps in [0, 1023]")

    import numba
    import torch
    import transformers

    print(f"numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; default threads: torch {torch.get_num_threads()}, "
          f"numba {numba.get_num_threads()}")
    ours, theirs = build_models(args.layers, args.seed)
    settings = {"1": [1], "default": [None], "both": [1, None]}[args.threads]
    for n in settings:
        with thread_limit(n):
            print(f"\nthreads: {n or 'default'}")
            for batch in args.batch:
                run_forward(ours, theirs, batch, args.tokens, args.repeats, args.seed, args.peak_size)
                if args.decode_steps:
                    run_decode(ours, theirs, batch, args.decode_steps, args.repeats, args.seed)
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
