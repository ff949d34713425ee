"""One training step, ours against torch, on the same config, batch and thread count.

    python benchmarks/bench_train.py                       # the default model's config and batch, 1 thread
    python benchmarks/bench_train.py --threads 2 --batch-size 64 --n-embd 128

A step is the forward pass, the backward pass, global-norm clipping and an AdamW update, with dropout
off on both sides. Ours is minigpt_pixels.backprop + optim (NumPy); torch's is transformers'
ImageGPTForCausalImageModeling with loss.backward(), clip_grad_norm_ and torch.optim.AdamW. The two
are timed interleaved (ours, torch, ours, torch, ...) so a noisy neighbour slows both alike, and the
median of each is compared. Ratio > 1 means ours is slower.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--n-embd", type=int, default=96)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=8, help="side of the square image: T = side^2")
    ap.add_argument("--n-colors", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads for NumPy and torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per side, after 2 warm-up steps")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from threadpoolctl import threadpool_limits

    from minigpt_pixels import backprop, optim
    from minigpt_pixels.config import ImageGPTConfig
    from minigpt_pixels.model import ImageGPTForCausalImageModeling

    torch.set_num_threads(args.threads)
    T = args.image_size ** 2
    kw = dict(vocab_size=args.n_colors + 1, n_positions=T, n_embd=args.n_embd, n_layer=args.n_layer,
              n_head=args.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    theirs = transformers.ImageGPTForCausalImageModeling(transformers.ImageGPTConfig(**kw)).train()
    params = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items() if k in
              dict(theirs.named_parameters())}
    ours = ImageGPTForCausalImageModeling(ImageGPTConfig(**kw), params)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.n_colors, size=(args.batch_size, T))
    ids[:, 0] = args.n_colors  # SOS
    labels = ids.copy()
    labels[:, 0] = -100
    t_ids, t_labels = torch.tensor(ids), torch.tensor(labels)

    opt_ours = optim.AdamW(ours.params, lr=1e-4, weight_decay=0.1)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))

    def step_ours():
        loss, grads = backprop.causal_lm_value_and_grad(ours, ids, labels)
        optim.clip_grad_norm(grads, 1.0)
        opt_ours.step(ours.params, grads)
        return float(loss)

    def step_theirs():
        opt_theirs.zero_grad(set_to_none=True)
        loss = theirs(t_ids, labels=t_labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt_theirs.step()
        return loss.item()

    times = {"ours": [], "torch": []}
    with threadpool_limits(limits=args.threads):
        for i in range(args.repeats + 2):
            for name, fn in (("ours", step_ours), ("torch", step_theirs)):
                t0 = time.perf_counter()
                fn()
                if i >= 2:
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(v.size for v in ours.params.values())
    print(f"config: n_embd={args.n_embd} n_layer={args.n_layer} n_head={args.n_head} T={T} "
          f"vocab={args.n_colors + 1} ({n_params:,} parameters), batch {args.batch_size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    for k in ("ours", "torch"):
        print(f"{k:>6}: median {med[k] * 1e3:8.2f} ms/step  ({args.batch_size * T / med[k]:,.0f} tokens/s)")
    print(f"ratio ours/torch: {med['ours'] / med['torch']:.2f}")


if __name__ == "__main__":
    main()
