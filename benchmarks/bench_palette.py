"""Palette fitting speed and quality: our fit_palette against scikit-learn's KMeans.

    python benchmarks/bench_palette.py                     # k = 512 on 200k photo pixels
    python benchmarks/bench_palette.py --minibatch 4096    # also both mini-batch versions

Same pixels for both (a seeded sample of scikit-learn's two sample photos, normalised to [-1, 1] as
the processor does), one initialisation each (n_init=1), the same tolerance and iteration limit
for Lloyd, runs interleaved (ours, theirs, ours, ...) with the median time reported. --threads 1 compares
single-threaded code (ours runs its BLAS calls on one thread anyway); on a busy machine
scikit-learn's OpenMP threads can lose more to contention than they gain. Prints each time and
inertia and the ratios ours / scikit-learn; scikit-learn's own inertia varies by about 2% between
seeds, so a ratio within a few percent of 1 is a tie.
"""

import argparse
import contextlib
import statistics
import time

import numpy as np
import sklearn
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.datasets import load_sample_images
from threadpoolctl import threadpool_limits

from minigpt_pixels.palette import fit_palette, inertia
from minigpt_pixels.processor import pixels_from_images


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def compare(name, ours_fn, theirs_fn, pixels, repeats):
    """Interleaved runs; prints the median times, the inertias of the last run and the ratios."""
    ours_times, theirs_times = [], []
    for _ in range(repeats):
        seconds, ours = timed(ours_fn)
        ours_times.append(seconds)
        seconds, theirs = timed(theirs_fn)
        theirs_times.append(seconds)
    t_ours, t_theirs = statistics.median(ours_times), statistics.median(theirs_times)
    i_ours, i_theirs = inertia(pixels, ours), inertia(pixels, theirs)
    print(f"{name}:")
    print(f"  ours          {t_ours:8.2f} s   inertia {i_ours:10.4f}")
    print(f"  scikit-learn  {t_theirs:8.2f} s   inertia {i_theirs:10.4f}")
    print(f"  ratio ours / scikit-learn: time {t_ours / t_theirs:.2f}x, inertia {i_ours / i_theirs:.4f}")


def run(args, pixels):
    """Full-batch Lloyd, then (with --minibatch) mini-batch k-means, ours against scikit-learn."""
    compare(
        "Lloyd (full batch), k-means++ initialisation",
        lambda: fit_palette(pixels, args.k, seed=args.seed, max_iter=args.max_iter, tol=args.tol),
        lambda: KMeans(args.k, n_init=1, random_state=args.seed, max_iter=args.max_iter, tol=args.tol)
        .fit(pixels)
        .cluster_centers_,
        pixels,
        args.repeats,
    )
    if args.minibatch:
        # scikit-learn's max_iter counts passes over the data, ours counts batches; each stops by its own rule
        steps = max(1, args.max_iter * len(pixels) // args.minibatch)
        compare(
            f"mini-batch, {args.minibatch} pixels per batch",
            lambda: fit_palette(pixels, args.k, seed=args.seed, max_iter=steps, tol=args.tol, batch_size=args.minibatch),
            lambda: MiniBatchKMeans(args.k, n_init=1, random_state=args.seed, batch_size=args.minibatch,
                                    max_iter=args.max_iter).fit(pixels).cluster_centers_,
            pixels,
            args.repeats,
        )



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=512, help="palette size (default: %(default)s)")
    ap.add_argument("--pixels", type=int, default=200_000, help="photo pixels to fit (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed for the sample and both fits (default: %(default)s)")
    ap.add_argument("--max-iter", type=int, default=300, help="iteration limit for both (default: %(default)s)")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative tolerance for both (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per side (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None,
                    help="cap BLAS/OpenMP threads for both sides (default: each library's own choice)")
    ap.add_argument("--minibatch", type=int, default=0, metavar="B",
                    help="also compare mini-batch k-means with batches of B pixels (default: off)")
    args = ap.parse_args(argv)
    if args.k < 1 or args.pixels < args.k or args.repeats < 1:
        ap.error("need k >= 1, pixels >= k and repeats >= 1")

    photos = pixels_from_images(list(load_sample_images().images))  # [546560, 3]
    rng = np.random.default_rng(args.seed)
    pixels = photos[rng.choice(len(photos), min(args.pixels, len(photos)), replace=False)]
    threads = "library default" if args.threads is None else args.threads
    print(f"k={args.k}, {len(pixels)} photo pixels, seed {args.seed}, n_init=1, threads: {threads}; "
          f"numpy {np.__version__}, scikit-learn {sklearn.__version__}")
    with threadpool_limits(args.threads) if args.threads else contextlib.nullcontext():
        run(args, pixels)


if __name__ == "__main__":
    main()
