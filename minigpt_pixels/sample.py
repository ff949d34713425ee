"""Sample images from an ImageGPT model: `python -m minigpt_pixels.sample` (or `minigpt-pixels-sample`).

With no arguments it loads the small model shipped in the package (trained on scikit-learn's digits)
and writes samples.png, a grid of unconditional samples enlarged for viewing. With --prompt IMAGE it
keeps the image's top --prompt-rows rows and writes a completion grid: the original, the kept rows,
then the completions. Works offline; --model takes any HF-layout directory with
preprocessor_config.json (e.g. a hub checkpoint converted with `python -m minigpt_pixels.convert`).
An existing --out is refused unless --force. Ctrl-C, SIGTERM and SIGHUP stop it leaving nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np

from . import DEFAULT_MODEL, limits
from .backends import auto_device
from .config import ImageGPTConfig
from .generation import (GenerationConfig, OptionError, as_generator, complete_images, image_shape, progress_bar,
                         sample_images)
from .model import ImageGPTForCausalImageModeling
from .images import check_image_file
from .processor import PREPROCESSOR_CONFIG_NAME, ImageGPTImageProcessor
from .weights import NonFiniteWeightsWarning, atomic_open

DEFAULT_OUT = "samples.png"
# The formats --out's suffix may choose (PIL's names); the default and the documented one is PNG.
FORMATS = {".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
           ".jpg": "JPEG", ".jpeg": "JPEG", ".ppm": "PPM"}
# Large --num-samples are sampled in chunks whose KV cache holds at most this many bytes. A constant, not
# the memory free now, so that a seed gives the same images on every machine.
CHUNK_CACHE_BYTES = 1 << 30
# And at most this many sequences: on the CPU, batches of 16 sample the default model at about 2,500
# tokens/s, batches of 32 to 256 (today's decode kernels) at 100-550.
MAX_CHUNK = 16
MAX_GRID_PIXELS = 1 << 26  # the automatic --scale enlarges a grid up to this many pixels (64M, 192 MB)


def free_name(path):
    """`path` if it does not exist yet, else the first free `stem-1.ext`, `stem-2.ext`, ..."""
    if not os.path.lexists(path):
        return path
    stem, ext = os.path.splitext(path)
    i = 1
    while os.path.lexists(f"{stem}-{i}{ext}"):
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


def grid_shape(n_rows, n_cols, h, w, pad=1):
    """(height, width) of image_grid's result for n_rows x n_cols images of h x w."""
    return n_rows * (h + pad) + pad, n_cols * (w + pad) + pad


def image_format(path):
    """The PIL format --out's suffix asks for, or None when it names none we write."""
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        return None
    from PIL import features

    return fmt if fmt != "WEBP" or features.check("webp") else None


def save_grid(grid, path, scale, replace=False):
    """Enlarge the grid (big pixels, no blur) and write it under `path` or, should a file of that name
    appear meanwhile, the first free `stem-N.ext`. -> the path written."""
    from PIL import Image

    img = Image.fromarray(grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    fmt = image_format(path) or "PNG"
    for _ in range(100):
        try:
            with atomic_open(path, replace=replace) as f:  # a temporary file, hard-linked to `path`
                img.save(f, format=fmt)
            return path
        except FileExistsError:
            path = free_name(path)  # another run took the name while we sampled: never replace its file
    raise FileExistsError(f"{path}: no free name found beside it")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad input prints one line (no usage block) and exits with status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except None and those the help already explains."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = OneLineErrorParser(prog="minigpt-pixels-sample", description=__doc__.split("\n\n")[0],
                           formatter_class=_HelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF-layout model directory (with preprocessor_config.json)")
    p.add_argument("--num-samples", type=int, default=16,
                   help="images to sample (with --prompt: completions of the prompt); many are sampled in chunks")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divide the logits by this before sampling; one so small that the division overflows "
                        "float32 samples as --greedy, its limit")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely colours")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set with this mass")
    p.add_argument("--greedy", action="store_true", help="take the most likely colour instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0): the same seed gives the same images")
    p.add_argument("--prompt", default=None, metavar="IMAGE", help="complete this image instead of sampling")
    p.add_argument("--prompt-rows", type=int, default=None,
                   help="rows of the prompt image to keep (default: half the image height)")
    p.add_argument("--out", default=None,
                   help=f"output image; its suffix picks the format, PNG unless .jpg, .bmp, ...; an existing file "
                        f"is refused unless --force (default: {DEFAULT_OUT}, or {DEFAULT_OUT[:-4]}-1.png ... if "
                        f"taken: the default name never replaces a file)")
    p.add_argument("--force", action="store_true", help="let --out replace an existing file")
    p.add_argument("--scale", type=int, default=None,
                   help="enlarge each pixel this many times (default: to about 256 pixels an image)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "numpy"], default="auto",
                   help="auto: cpu for a model big enough to repay Numba's start-up, else numpy; cpu: NumPy + "
                        "Numba kernels; cuda: Numba CUDA kernels; numpy: the pure reference")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    return p


def check_args(args, parser):
    """The checks that need no work, before anything is loaded or sampled. -> (the sampling options, the
    random generator): generate()'s own checks, their errors said for the flags."""
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}")
    try:
        options = GenerationConfig(do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k,
                                   top_p=args.top_p)
        rng = as_generator(args.seed)
    except OptionError as e:  # e.g. "--top-k must be an integer >= 1, got 0"
        parser.error(f"--{e.name.replace('_', '-')} must be {e.rule}, got {e.value}")
    if args.scale is not None and not 1 <= args.scale <= 64:
        parser.error(f"--scale must be between 1 and 64, got {args.scale}")
    if args.prompt_rows is not None and args.prompt is None:
        parser.error("--prompt-rows needs --prompt IMAGE")
    check_out(args.out, args.force, parser)
    if not os.path.isdir(args.model):
        parser.error(f"--model {args.model}: no such directory")
    if not os.path.exists(os.path.join(args.model, PREPROCESSOR_CONFIG_NAME)):
        parser.error(f"--model {args.model}: no {PREPROCESSOR_CONFIG_NAME} (the palette the model was trained with)")
    return options, rng


def check_out(out, force, parser):
    """--out names a file this run can create (or, with --force, replace) in a format we write."""
    path = DEFAULT_OUT if out is None else out
    if os.path.isdir(path):
        parser.error(f"--out {path} is a folder; name a file in it, e.g. {os.path.join(path, DEFAULT_OUT)}")
    if out is not None and os.path.lexists(out) and not force:
        parser.error(f"--out {out} exists; pass --force to replace it, or choose another name")
    if image_format(path) is None:
        suffix = os.path.splitext(path)[1] or "no suffix"
        parser.error(f"--out {path}: {suffix} is not an image format this writes; use .png (or "
                     f"{', '.join(sorted(set(FORMATS) - {'.png'}))})")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"--out {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        parser.error(f"--out {path}: the folder {folder} is not writable")


def plan_grid(args, n_cells, h, w):
    """Rows, columns and scale of the output grid, checked against the memory available before any
    sampling: the images, the grid and its enlarged copy. -> (per_row, scale)."""
    per_row = int(np.ceil(np.sqrt(n_cells)))
    if args.prompt is not None:
        per_row = max(per_row, min(n_cells, 16))  # a few completions stay on the prompt's row
    gh, gw = grid_shape(-(-n_cells // per_row), per_row, h, w)
    scale = args.scale
    if scale is None:  # about 256 pixels an image, less when the grid would be huge
        scale = max(1, 256 // max(h, w) // 2)
        while scale > 1 and gh * gw * scale * scale > MAX_GRID_PIXELS:
            scale -= 1
    need = 2 * n_cells * h * w * 3 + gh * gw * 3 * (1 + 2 * scale * scale)
    limits.check_bytes(need, f"--num-samples {args.num_samples:,}: keeping the images and their "
                             f"{gw * scale}x{gh * scale} grid")
    return per_row, scale


def chunk_size(config, n):
    """Sequences sampled at once: MAX_CHUNK, or as many as a KV cache of CHUNK_CACHE_BYTES holds (at least one)."""
    per_sequence = limits.kv_cache_bytes(config, 1, config.n_positions)
    return max(1, min(n, MAX_CHUNK, CHUNK_CACHE_BYTES // per_sequence))


def sample_in_chunks(model, processor, n, seed, progress, stats, prompt_ids=None, prompt_rows=None, **sampling):
    """n unconditional samples, or n completions of prompt_ids [1, H*W], sampled chunk_size() at a time
    from one generator: chunk i draws where chunk i - 1 stopped. -> [n, H, W, 3] uint8. `progress`: a
    bool, or one generation.progress_bar that every chunk advances; `sampling`: generate()'s options."""
    rng = as_generator(seed)
    step = chunk_size(model.config, n)
    parts, totals = [], {"new_tokens": 0, "seconds": 0.0}
    for start in range(0, n, step):
        k, chunk_stats = min(step, n - start), {}
        if prompt_ids is None:
            parts.append(sample_images(model, processor, k, seed=rng, progress=progress, stats=chunk_stats,
                                       **sampling))
        else:
            parts.append(complete_images(model, processor, prompt_ids, prompt_rows, k, seed=rng, progress=progress,
                                         stats=chunk_stats, **sampling)[0])
        for key in totals:
            totals[key] += chunk_stats.get(key, 0)
    stats.update(totals)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def load_model(path, device):
    """The model, refused when it cannot sample: a weight NaN or infinite (its samples would be one flat
    colour), or no LM head (a classifier's checkpoint: the head would be random, its samples noise)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", NonFiniteWeightsWarning)
        try:
            model, info = ImageGPTForCausalImageModeling.from_pretrained(path, output_loading_info=True)
        except NonFiniteWeightsWarning as e:
            raise ValueError(f"{e}; not sampling from it") from None
    if "lm_head.weight" in info["missing_keys"]:
        what = "this is a classifier" if "score.weight" in info["unexpected_keys"] else "this is no causal LM"
        raise ValueError(f"--model {path}: {what}: its checkpoint has no lm_head.weight, the head that predicts "
                         f"pixels; sampling needs an ImageGPTForCausalImageModeling checkpoint")
    for w in caught:  # the others, as they would have been shown
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model.to(device)


def check_cuda(config, parser):
    """--device cuda where it cannot run: a one-line error for the command line, before the model loads."""
    from .kernels import cuda  # imports Numba's CUDA support: only for --device cuda

    try:
        cuda.require_cuda()
    except cuda.CudaUnavailableError:
        parser.error("--device cuda: numba finds no CUDA GPU and driver here; use --device cpu or --device auto "
                     "(or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in numba's slow simulator)")
    if config.head_dim > cuda.MAX_HEAD_DIM:
        parser.error(f"--device cuda: this model's head_dim {config.head_dim} is beyond the CUDA attention kernels' "
                     f"limit of {cuda.MAX_HEAD_DIM}; use --device cpu or --device auto")


def check_prompt_file(path, processor):
    """The prompt image's decoding, bounded from its header before it is decoded (an unreadable file passes:
    the processor reports it, naming the file)."""
    check_image_file(path, (processor.size["height"], processor.size["width"]), processor.resample)


def kernels_notice(device):
    """One line on stderr if Numba kernels compile (a first run) while sampling on `device`; nothing, and
    Numba not even imported, on "numpy"."""
    if device == "numpy":
        return contextlib.nullcontext()
    from .kernels.compile_cache import compiling_notice  # imports Numba
    return compiling_notice()


def check_prompt_rows(args, parser, h, w, processor):
    """The rows of --prompt kept (None without --prompt), and the prompt image's size bounded."""
    if args.prompt is None:
        return None
    rows_kept = args.prompt_rows if args.prompt_rows is not None else h // 2
    if not 1 <= rows_kept < h:
        parser.error(f"--prompt-rows must be between 1 and {h - 1} for this model's {h}x{w} images, got {rows_kept}")
    check_prompt_file(args.prompt, processor)
    return rows_kept


def run(args, parser, options, rng):
    """Sample (or complete --prompt) and write the grid. -> the path written."""
    # the sizes first, from the two small JSON files: nothing is sampled that could not be kept
    config = ImageGPTConfig.from_pretrained(args.model)
    processor = ImageGPTImageProcessor.from_pretrained(args.model)
    h, w = image_shape(processor, config)
    rows_kept = check_prompt_rows(args, parser, h, w, processor)
    per_row, scale = plan_grid(args, args.num_samples + (0 if rows_kept is None else 2), h, w)
    limits.check_bytes(limits.kv_cache_bytes(config, chunk_size(config, args.num_samples), config.n_positions),
                       f"--num-samples {args.num_samples:,}: the KV cache of one chunk")
    device = auto_device(config) if args.device == "auto" else args.device
    if device == "cuda":
        check_cuda(config, parser)

    # one bar for the whole job, on screen before the model loads and any kernel compiles
    new_tokens = args.num_samples * (h - (rows_kept or 0)) * w
    with progress_bar(new_tokens, disable=not args.progress) as bar, kernels_notice(device):
        model = load_model(args.model, device)
        start, stats = time.perf_counter(), {}
        cells, what = sample_cells(args, model, processor, rows_kept, options, rng, bar, stats)
    rows = [cells[i:i + per_row] for i in range(0, len(cells), per_row)]
    wanted = args.out if args.out is not None else free_name(DEFAULT_OUT)
    out = save_grid(image_grid(rows), wanted, scale, replace=args.force)
    seconds = time.perf_counter() - start
    rate = stats["new_tokens"] / stats["seconds"] if stats.get("seconds") else float("nan")
    taken = f" ({wanted} appeared while sampling)" if out != wanted else ""
    on = model.device + (" (auto)" if args.device == "auto" else "")
    print(f"wrote {out}{taken}: {what}, {h}x{w} pixels each, on {on} in {seconds:.1f} s "
          f"({rate:,.0f} tokens/s)")
    return out


def sample_cells(args, model, processor, rows_kept, options, rng, bar, stats):
    """The grid's images: the samples, or the prompt, its kept rows (grey below) and its completions.
    -> (list of (H, W, 3) uint8, what they are in words)."""
    if rows_kept is None:
        cells = sample_in_chunks(model, processor, args.num_samples, rng, bar, stats, generation_config=options)
        return list(cells), f"{len(cells)} samples"
    ids = processor(args.prompt)["input_ids"]  # [1, H*W]
    completions = sample_in_chunks(model, processor, args.num_samples, rng, bar, stats, prompt_ids=ids,
                                   prompt_rows=rows_kept, generation_config=options)
    original = processor.decode(ids)[0]
    kept = original.copy()
    kept[rows_kept:] = 128  # grey where the model has to fill in
    h = original.shape[0]
    return [original, kept, *completions], (f"{len(completions)} completions of {args.prompt} from its top "
                                            f"{rows_kept} of {h} rows")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised wherever the program is so that it unwinds as after Ctrl-C: the temporary
    file beside --out is removed (weights.atomic_open), the progress bar closed, nothing half-written left."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def stopped_like_ctrl_c(signals=STOP_SIGNALS):
    """Within the block, SIGTERM (kill, timeout, Slurm pre-emption, docker stop) and SIGHUP (a closed
    terminal) raise Stopped, as Ctrl-C raises KeyboardInterrupt; the old handlers come back after. Only the
    main thread may set handlers: called elsewhere (main() in a thread), it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv=None):
    parser = build_parser()
    with stopped_like_ctrl_c():
        try:
            args = parser.parse_args(argv)
            options, rng = check_args(args, parser)
            run(args, parser, options, rng)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP (Stopped)
            signum = getattr(e, "signum", signal.SIGINT)
            print(f"interrupted ({signal.Signals(signum).name}); nothing written", file=sys.stderr)
            return 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
        except (OSError, ValueError, RuntimeError, ImportError) as e:  # bad files, sizes, RecursionError
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        except MemoryError as e:  # an estimate in limits.py fell short: still one line
            parser.exit(2, f"{parser.prog}: error: out of memory{': ' + str(e) if str(e) else ''}; try a smaller "
                           f"--num-samples\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
