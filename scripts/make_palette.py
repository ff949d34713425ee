"""Rebuild the palette shipped as minigpt_pixels/data/palette_photos512.json.

    python scripts/make_palette.py

Fits `fit_palette` (full-batch k-means, k = 512, seed 0) to every pixel of the photos that the
project's dependencies ship: scikit-learn's two sample photos (china.jpg, flower.jpg) and
matplotlib's grace_hopper.jpg, about 850k pixels, normalised to [-1, 1] exactly as the processor
does. It takes a minute or two on two cores. The result is deterministic for a given seed and
NumPy/BLAS, and is a palette for demos and notebooks: a checkpoint's own palette is the `clusters`
list of its preprocessor_config.json.
"""

import argparse
import json
import os
import sys
import time

import matplotlib.cbook
import numpy as np
from sklearn.datasets import load_sample_images

from minigpt_pixels.palette import PALETTE_DIR, fit_palette, inertia
from minigpt_pixels.processor import pixels_from_images

SOURCES = ["sklearn.datasets.load_sample_images(): china.jpg, flower.jpg", "matplotlib sample_data: grace_hopper.jpg"]


def photo_images():
    """The shipped photos as RGB arrays: scikit-learn's china and flower, matplotlib's Grace Hopper."""
    return [*load_sample_images().images, matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)]


def palette_json(clusters, **metadata):
    """Metadata, then one cluster per line, so a refit shows up as a readable diff."""
    header = json.dumps(metadata, indent=2)[:-2]  # drop the closing "\n}" to append the clusters
    rows = ",\n".join("    " + json.dumps(row) for row in clusters.tolist())
    return f'{header},\n  "clusters": [\n{rows}\n  ]\n}}\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n-colors", type=int, default=512, help="palette size k")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    parser.add_argument("--max-iter", type=int, default=300, help="at most this many Lloyd iterations")
    parser.add_argument("--out", default=os.path.join(PALETTE_DIR, "palette_photos512.json"), help="JSON file to write")
    args = parser.parse_args(argv)
    if args.n_colors < 1 or args.max_iter < 1:
        parser.error("--n-colors and --max-iter must be positive")

    pixels = pixels_from_images(photo_images())  # [N, 3] in [-1, 1]
    print(f"fitting {args.n_colors} colours to {len(pixels)} pixels (seed {args.seed})...", file=sys.stderr)
    start = time.perf_counter()
    clusters = fit_palette(pixels, args.n_colors, seed=args.seed, max_iter=args.max_iter)
    seconds = time.perf_counter() - start
    mse = inertia(pixels, clusters) / len(pixels)
    text = palette_json(
        clusters,
        name=os.path.basename(args.out).removeprefix("palette_").removesuffix(".json"),
        description="k-means palette for demos, in the model's [-1, 1] pixel space; not the OpenAI iGPT palette",
        command=f"python scripts/make_palette.py --n-colors {args.n_colors} --seed {args.seed} --max-iter {args.max_iter}",
        sources=SOURCES,
        n_pixels=len(pixels),
        seed=args.seed,
        mean_squared_error=round(mse, 6),
        numpy=np.__version__,
    )
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out} in {seconds:.0f} s: mean squared error {mse:.5f} per pixel", file=sys.stderr)


if __name__ == "__main__":
    main()
