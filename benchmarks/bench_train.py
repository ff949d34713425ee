"""One training step, ours (both paths) against torch, on the same config, weights, batch and thread count.

    python benchmarks/bench_train.py                    # issue 26's three configs, 1 and 2 threads
    python benchmarks/bench_train.py --configs 4x96@8 --threads 1 --repeats 20

A config is LAYERSxWIDTH@SIDE (n_head 4, T = SIDE^2, 16 colours, batch --batch-size):
    16x32@10   the middle-layer experiments' kind of model
    4x96@8     the default model's config
    8x128@16   a wider one

A step is the forward pass, the backward pass, global-norm clipping and an AdamW update, dropout off on
every side. "numpy" is backprop + optim on layers.py's pairs (device "numpy"), "kernels" the same on
kernels/cpu_train.py's (device "cpu"), torch transformers' ImageGPTForCausalImageModeling with
loss.backward(), clip_grad_norm_ and torch.optim.AdamW. The three are timed interleaved (numpy, kernels,
torch, numpy, ...) so a noisy neighbour slows all alike; each row is the median of --repeats steps, and
the run is repeated --rounds times to show the spread. Each step's CPU time (time.process_time, every
thread) is reported beside the wall time: on a machine shared with other jobs the wall time mostly
measures the scheduler, and for one thread the CPU time is the steadier comparison. "floor" is the
step's FLOPs (matmuls and full T x T attention, forward and twice for the backward, as issue 26 counts
them) at this machine's single-thread sgemm rate (a 1024^3 product, measured here), times the thread
count: the fraction is floor / time. "floor/torch" is the floor over torch's wall time: the lowest
kernels / torch ratio that any code doing these FLOPs could reach here, even at the full sgemm rate for
the whole step (issue 26 asks 0.5 at the default config: on the issue's machine, torch's 103 ms against a
58 ms floor, 6.06 GFLOP at 104 GFLOP/s, that is 0.57). The load average is printed with each row: on a shared machine
timings are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

ISSUE_CONFIGS = "16x32@10,4x96@8,8x128@16"


def parse_config(text):
    layers_width, side = text.split("@")
    n_layer, n_embd = (int(v) for v in layers_width.split("x"))
    return n_layer, n_embd, int(side)


def step_flops(n_layer, C, T, B, V, F=None):
    """FLOPs of a forward + backward: 2 per multiply-add, the backward twice the forward."""
    F = F or 4 * C
    per_layer = B * T * (4 * C * C + 2 * C * F) + 2 * B * T * T * C  # matmuls; q k^T and w v, full T x T
    forward = n_layer * per_layer + B * T * C * V
    return 3 * 2 * forward


def sgemm_rate(threads):
    """FLOP/s of one 1024^3 float32 product on `threads` BLAS threads (best of 5)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    best = np.inf
    with threadpool_limits(limits=threads):
        for _ in range(5):
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
    return 2 * 1024 ** 3 / best


def run_config(n_layer, n_embd, side, args, threads):
    import numba
    import torch
    import transformers
    from threadpoolctl import threadpool_limits

    from minigpt_pixels import backprop, optim
    from minigpt_pixels.config import ImageGPTConfig
    from minigpt_pixels.model import ImageGPTForCausalImageModeling

    torch.set_num_threads(threads)
    T, V = side * side, args.n_colors
    kw = dict(vocab_size=V + 1, n_positions=T, n_embd=n_embd, n_layer=n_layer, n_head=args.n_head,
              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    theirs = transformers.ImageGPTForCausalImageModeling(transformers.ImageGPTConfig(**kw)).train()
    params = {k: v.detach().numpy().copy() for k, v in theirs.named_parameters()}
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(args.batch_size, T))
    ids[:, 0] = V  # SOS
    labels = ids.copy()
    labels[:, 0] = -100
    t_ids, t_labels = torch.tensor(ids), torch.tensor(labels)

    def ours(path):
        model = ImageGPTForCausalImageModeling(ImageGPTConfig(**kw), {k: v.copy() for k, v in params.items()})
        opt = optim.AdamW(model.params, lr=1e-4, weight_decay=0.1)

        def step():
            loss, grads = backprop.causal_lm_value_and_grad(model, ids, labels, path=path)
            optim.clip_grad_norm(grads, 1.0)
            opt.step(model.params, grads)
            return float(loss)
        return step

    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))

    def step_torch():
        opt_theirs.zero_grad(set_to_none=True)
        loss = theirs(t_ids, labels=t_labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt_theirs.step()
        return loss.item()

    steps = {"numpy": ours("numpy"), "kernels": ours("kernels"), "torch": step_torch}
    wall, cpu = {k: [] for k in steps}, {k: [] for k in steps}
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=threads):
            for i in range(args.repeats + 2):
                for name, fn in steps.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn()
                    if i >= 2:
                        wall[name].append(time.perf_counter() - t0)
                        cpu[name].append(time.process_time() - c0)
    finally:
        numba.set_num_threads(saved)
    median = {k: statistics.median(v) for k, v in wall.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return median, median_cpu, step_flops(n_layer, n_embd, T, args.batch_size, V)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--configs", default=ISSUE_CONFIGS, help="comma-separated LAYERSxWIDTH@SIDE")
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-colors", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (BLAS, Numba and torch)")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per side and round, after 2 warm-up steps")
    ap.add_argument("--rounds", type=int, default=2, help="times the whole comparison runs, to show the spread")
    args = ap.parse_args(argv)

    import torch

    thread_counts = [int(t) for t in args.threads.split(",")]
    rate = sgemm_rate(1)
    print(f"torch {torch.__version__}; single-thread sgemm {rate / 1e9:.0f} GFLOP/s; batch {args.batch_size}, "
          f"n_head {args.n_head}, {args.n_colors} colours")
    print("wall: median wall-clock ms per step; cpu: median CPU ms per step (all threads), which on a loaded "
          "machine\nis the steadier measure of single-thread work; floor/kern: FLOP floor over kernels' wall time; "
          "floor/torch: over torch's")
    print(f"{'config':>10} {'thr':>3} {'load':>5} | {'numpy':>7} {'kernels':>7} {'torch':>7} wall | "
          f"{'kern/torch':>10} {'numpy/torch':>11} wall | {'kern/torch':>10} cpu | {'GFLOP':>6} {'floor/kern':>10} "
          f"{'floor/torch':>11}")
    for rnd in range(args.rounds):
        for text in args.configs.split(","):
            for threads in thread_counts:
                med, cpu, flops = run_config(*parse_config(text), args, threads)
                floor = flops / (rate * threads)
                print(f"{text:>10} {threads:>3} {os.getloadavg()[0]:5.2f} | {med['numpy'] * 1e3:7.1f} "
                      f"{med['kernels'] * 1e3:7.1f} {med['torch'] * 1e3:7.1f}      | "
                      f"{med['kernels'] / med['torch']:10.2f} {med['numpy'] / med['torch']:11.2f}      | "
                      f"{cpu['kernels'] / cpu['torch']:10.2f}     | {flops / 1e9:6.2f} {floor / med['kernels']:10.2f} "
                      f"{floor / med['torch']:11.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
