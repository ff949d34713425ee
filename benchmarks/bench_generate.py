"""Sampling speed: our KV-cached generate() against transformers' generate() with its cache.

    python benchmarks/bench_generate.py                       # iGPT-S shape, 1024 tokens, batch 1 and 8
    python benchmarks/bench_generate.py --tokens 128 --batch 1   # a quick look

Same random iGPT-S-shaped weights in both, same sampling settings (multinomial sampling at
temperature 1, no top-k), same thread count (torch's, BLAS's and Numba's), runs interleaved (ours,
theirs, ours, ...), medians reported. Each side first samples 4 untimed tokens at each batch size:
that compiles our Numba kernels (the time is printed) and warms transformers up the same way. Prints
each time, the ratio ours / transformers, and the fraction of the memory-bandwidth floor reached:
every step must read all the weights once (plus the KV cache so far), so a step cannot beat bytes /
bandwidth; bandwidth is measured here with a large array copy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import torch
import transformers
from threadpoolctl import threadpool_limits

from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.generation import generate
from minigpt_pixels.kernels import cpu as cpu_kernels
from minigpt_pixels.model import ImageGPTForCausalImageModeling

SETTLE_SECONDS = 0.5  # idle before each timed run: other libraries' worker threads spin for a while after a call


def build(layers, positions):
    torch.manual_seed(0)
    hf_cfg = transformers.ImageGPTConfig(n_layer=layers, n_positions=positions, resid_pdrop=0, embd_pdrop=0,
                                         attn_pdrop=0)
    hf = transformers.ImageGPTForCausalImageModeling(hf_cfg).eval()
    params = {k: v.numpy().copy() for k, v in hf.state_dict().items() if not k.endswith(".attn.bias")}
    ours = ImageGPTForCausalImageModeling(ImageGPTConfig.from_dict(hf_cfg.to_dict()), params=params)
    return ours, hf


def bandwidth_gbs():
    a = np.ones(64 * 2**20, np.float32)  # 256 MB, far beyond the caches
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / best / 1e9  # read + write


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def floor_seconds(model, batch, tokens, gbs):
    cfg = model.config
    weight_bytes = sum(v.nbytes for k, v in model.params.items() if k != "transformer.wpe.weight")
    kv_per_pos = 2 * cfg.n_layer * cfg.n_embd * 4 * batch  # keys + values, float32
    kv_bytes = kv_per_pos * tokens * (tokens + 1) / 2  # read once per step, growing by one position
    return (tokens * weight_bytes + kv_bytes) / (gbs * 1e9)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24, help="transformer blocks (iGPT-S has 24)")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens to sample after the SOS token")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per side")
    ap.add_argument("--threads", type=int, default=None, help="threads for both sides (default: all cores)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "numpy"], help="our backend")
    args = ap.parse_args(argv)

    ours, hf = build(args.layers, max(args.tokens, 1))
    ours.to(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    gbs = bandwidth_gbs()
    print(f"iGPT-S shape with {args.layers} layers, {ours.num_parameters / 1e6:.1f}M parameters; "
          f"{threads} threads; copy bandwidth {gbs:.1f} GB/s; transformers {transformers.__version__}, "
          f"torch {torch.__version__}")
    with threadpool_limits(threads):
        for batch in args.batch:
            prompt = np.full((batch, 1), ours.config.sos_token_id, np.int64)

            def run_ours(tokens, seed):
                return _timed(lambda: generate(ours, prompt, max_new_tokens=tokens, do_sample=True, seed=seed))

            def run_hf(tokens):
                with torch.no_grad():
                    return _timed(lambda: hf.generate(
                        torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                        do_sample=True, top_k=0, max_new_tokens=tokens, min_new_tokens=tokens,
                        pad_token_id=0, use_cache=True))

            warm = min(4, args.tokens)
            print(f"batch {batch}: warm-up ({warm} tokens, untimed below): ours {run_ours(warm, 0):.2f} s "
                  f"(compiling the kernels it uses the first time), transformers {run_hf(warm):.2f} s")
            t_ours, t_hf = [], []
            for r in range(args.repeats):  # each after SETTLE_SECONDS idle (bench_forward.time_pair says why)
                time.sleep(SETTLE_SECONDS)
                t_ours.append(run_ours(args.tokens, r))
                time.sleep(SETTLE_SECONDS)
                t_hf.append(run_hf(args.tokens))
            mo, mh = statistics.median(t_ours), statistics.median(t_hf)
            floor = floor_seconds(ours, batch, args.tokens, gbs)
            print(f"batch {batch}: ours {mo:.2f} s, transformers {mh:.2f} s, ratio {mo / mh:.2f}; "
                  f"{batch * args.tokens / mo:.0f} vs {batch * args.tokens / mh:.0f} tokens/s; "
                  f"bandwidth floor {floor:.2f} s, ours at {floor / mo:.0%} of it")
            clock = {k: v for k, v in cpu_kernels.STEP_CLOCK.seconds.items() if k[0] == batch}
            for (_, _, _, most), times in clock.items():  # the fused decode step's choice (kernels/cpu.py)
                kept = min(times, key=times.get)
                print(f"batch {batch}: decode steps kept on {kept} of {most} threads (latest step times: "
                      + ", ".join(f"{n} threads {t * 1e3:.1f} ms" for n, t in sorted(times.items())) + ")")


if __name__ == "__main__":
    main()
