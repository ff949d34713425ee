"""Sample images from an ImageGPT model: `python -m minigpt_pixels.sample` (or `minigpt-pixels-sample`).

With no arguments it loads the small model shipped in the package (trained on scikit-learn's digits)
and writes samples.png, a grid of unconditional samples enlarged for viewing. With --prompt IMAGE it
keeps the image's top --prompt-rows rows and writes a completion grid: the original, the kept rows,
then the completions. Works offline; --model takes any HF-layout directory with
preprocessor_config.json (e.g. a hub checkpoint converted with `python -m minigpt_pixels.convert`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import DEFAULT_MODEL

DEFAULT_OUT = "samples.png"


def free_name(path):
    """`path` if it does not exist yet, else the first free `stem-1.ext`, `stem-2.ext`, ..."""
    if not os.path.exists(path):
        return path
    stem, ext = os.path.splitext(path)
    i = 1
    while os.path.exists(f"{stem}-{i}{ext}"):
        i += 1
    return f"{stem}-{i}{ext}"


def image_grid(rows, pad=1, background=255):
    """rows: a list of lists of (H, W, 3) uint8 images -> one (R*(H+pad)+pad, C*(W+pad)+pad, 3) image."""
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, ncols * (w + pad) + pad, 3), background, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = img
    return grid


def save_png(grid, path, scale):
    from PIL import Image

    img = Image.fromarray(grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)  # big pixels, no blur
    tmp = f"{path}.tmp-{os.getpid()}.png"
    img.save(tmp)
    os.replace(tmp, path)  # never leave a half-written PNG under the user's name


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad input prints one line (no usage block) and exits with status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    p = OneLineErrorParser(prog="minigpt-pixels-sample", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF-layout model directory (with preprocessor_config.json)")
    p.add_argument("--num-samples", type=int, default=16,
                   help="images to sample (with --prompt: completions of the prompt)")
    p.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this before sampling")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely colours")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set with this mass")
    p.add_argument("--greedy", action="store_true", help="take the most likely colour instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same images")
    p.add_argument("--prompt", default=None, metavar="IMAGE", help="complete this image instead of sampling")
    p.add_argument("--prompt-rows", type=int, default=None,
                   help="rows of the prompt image to keep (default: half the image height)")
    p.add_argument("--out", default=None,
                   help=f"output PNG (default: {DEFAULT_OUT}, or {DEFAULT_OUT[:-4]}-1.png ... if taken)")
    p.add_argument("--force", action="store_true", help="allow --out to replace an existing file")
    p.add_argument("--scale", type=int, default=None, help="enlarge each pixel this many times (default: auto)")
    p.add_argument("--device", choices=["cpu", "cuda", "numpy"], default="cpu",
                   help="cpu: NumPy + Numba kernels; cuda: Numba CUDA kernels; numpy: the pure reference")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    return p


def check_args(args, parser):
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}")
    if not args.greedy:
        if not (np.isfinite(args.temperature) and args.temperature > 0):
            parser.error(f"--temperature must be > 0 when sampling, got {args.temperature}")
        if args.top_k is not None and args.top_k < 1:
            parser.error(f"--top-k must be >= 1, got {args.top_k}")
        if args.top_p is not None and not 0 < args.top_p <= 1:
            parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.scale is not None and not 1 <= args.scale <= 64:
        parser.error(f"--scale must be between 1 and 64, got {args.scale}")
    if args.prompt_rows is not None and args.prompt is None:
        parser.error("--prompt-rows needs --prompt IMAGE")
    if args.out is not None and os.path.exists(args.out) and not args.force:
        parser.error(f"--out {args.out} exists; pass --force to replace it, or choose another name")
    if not os.path.isdir(args.model):
        parser.error(f"--model {args.model}: no such directory")
    from .processor import PREPROCESSOR_CONFIG_NAME

    if not os.path.exists(os.path.join(args.model, PREPROCESSOR_CONFIG_NAME)):
        parser.error(f"--model {args.model}: no {PREPROCESSOR_CONFIG_NAME} (the palette the model was trained with)")


def run(args, parser):
    from .model import ImageGPTForCausalImageModeling
    from .generation import complete_images, image_shape, sample_images
    from .processor import ImageGPTImageProcessor

    model = ImageGPTForCausalImageModeling.from_pretrained(args.model).to(args.device)
    processor = ImageGPTImageProcessor.from_pretrained(args.model)
    h, w = image_shape(processor, model.config)
    sampling = dict(do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    stats = {}
    start = time.perf_counter()
    if args.prompt is None:
        images = sample_images(model, processor, args.num_samples, seed=args.seed, progress=args.progress,
                               stats=stats, **sampling)
        per_row = int(np.ceil(np.sqrt(len(images))))
        rows = [list(images[i:i + per_row]) for i in range(0, len(images), per_row)]
        what = f"{len(images)} samples"
    else:
        rows_kept = args.prompt_rows if args.prompt_rows is not None else h // 2
        if not 1 <= rows_kept < h:
            parser.error(f"--prompt-rows must be between 1 and {h - 1} for this model's {h}x{w} images, "
                         f"got {rows_kept}")
        ids = processor(args.prompt)["input_ids"]  # [1, H*W]
        completions = complete_images(model, processor, ids, rows_kept, args.num_samples, seed=args.seed,
                                      progress=args.progress, stats=stats, **sampling)[0]
        original = processor.decode(ids)[0]
        kept = original.copy()
        kept[rows_kept:] = 128  # grey where the model has to fill in
        rows = [[original, kept, *completions]]
        what = f"{len(completions)} completions of {args.prompt} from its top {rows_kept} of {h} rows"
    out = args.out if args.out is not None else free_name(DEFAULT_OUT)
    scale = args.scale or max(1, 256 // max(h, w) // 2)
    save_png(image_grid(rows), out, scale)
    seconds = time.perf_counter() - start
    rate = stats["new_tokens"] / stats["seconds"] if stats.get("seconds") else float("nan")
    print(f"wrote {out}: {what}, {h}x{w} pixels each, on {args.device} in {seconds:.1f} s "
          f"({rate:,.0f} tokens/s)")
    return out


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    from .kernels.compile_cache import compiling_notice  # here, not at the top: --help stays instant

    try:
        with compiling_notice():  # one line on stderr when the kernels compile (a first run)
            run(args, parser)
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError, ImportError) as e:  # bad files, bad sizes, no CUDA: one line
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
