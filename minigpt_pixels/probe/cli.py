"""`python -m minigpt_pixels.probe`: the trained / untrained / raw-pixel table of one model on one data set,
with its spread, an ASCII curve, and optionally the JSON, a Markdown table and a plot (the README's tables are
printed by it)."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ..datasets import DataError, load_digits_data, load_folder
from ..model import ImageGPTForCausalImageModeling
from ..processor import ImageGPTImageProcessor
from ..weights import atomic_open
from . import (C_GRID, FEATURES, compare_probes, middle_peak_probe_data, plot_probe_curves,  # noqa: F401
               shifted_digits)


# ---- the command line ------------------------------------------------------------------------------
def probe_data(spec, processor):
    """--data: "digits" (scikit-learn's 1797), "shifted-digits" (new shifts, seed 1, on the model's canvas)
    or a folder of images in one sub-folder per class, resized to the model's size.
    -> (images [N, H, W] or [N, H, W, 3] uint8, labels int64 [N], what)."""
    height, width = processor.size["height"], processor.size["width"]
    if spec == "digits":
        data = load_digits_data()
        return np.stack(data.images), data.labels, "scikit-learn's digits"
    if spec == "middle-peak":
        images, labels = middle_peak_probe_data()
        return images, labels, "new shifts of the digits 5-9 (classes MIDDLE_PEAK_MODEL never saw)"
    if spec == "shifted-digits":
        if height != width or height < 8:
            raise ValueError(f"--data shifted-digits needs a square model of at least 8 x 8, this one reads "
                             f"{height} x {width}")
        images, labels = shifted_digits(canvas=height, copies=1, seed=1)
        return images, labels, f"digits shifted on a {height} x {width} canvas (seed 1: not the training images)"
    try:
        data = load_folder(spec, size=(height, width))
    except DataError as e:
        raise ValueError(str(e).replace("--data", "--data", 1)) from None
    if data.labels is None:
        raise ValueError(f"--data {spec}: no labels; put each class's images in a sub-folder named after it")
    return np.stack(data.images), data.labels, f"the images under {spec}"


def _grey_or_rgb(images):
    """Raw pixels for the pixel baseline: grey images as they are, RGB ones as one channel when all three
    agree -> float [N, P] in [0, 1]."""
    x = np.asarray(images)
    if x.ndim == 4 and np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2]):
        x = x[..., 0]
    return x.reshape(len(x), -1) / np.float32(255.0)  # [N, P]


def probe_report(curves):
    """The trained / untrained / raw-pixel numbers of `compare_probes`' curves as a plain dict (for --json,
    and what the table prints): per curve its layers, fold scores, mean and spread; for the trained curve
    the best layer and its margin over the last, fold by fold."""
    out = {name: {"layers": c.layers, "mean": c.mean.tolist(), "std": c.std.tolist(), "scores": c.scores.tolist(),
                  **({} if c.C is None else {"C": c.C.tolist()})} for name, c in curves.items()}
    trained = curves["trained"]
    best, last = trained.best_layer, trained.layers[-1]
    gap = trained.difference(best, last)  # [n_folds]
    out["best_layer"], out["last_layer"] = best, last
    out["best_minus_last"] = {"mean": float(gap.mean()), "std": float(gap.std(ddof=1)) if len(gap) > 1 else 0.0,
                              "folds_ahead": int((gap > 0).sum()), "n_folds": len(gap), "by_fold": gap.tolist()}
    return out


def format_table(curves, width=30):
    """The table the CLI prints: one row per layer, trained and untrained mean ± std, and a bar drawing
    the trained curve (scaled between the lowest and highest mean, so the shape shows)."""
    trained, untrained = curves["trained"], curves.get("untrained")
    lo, hi = float(trained.mean.min()), float(trained.mean.max())
    lines = [f"layer  trained          untrained        curve ({lo:.3f} .. {hi:.3f})"]
    for i, k in enumerate(trained.layers):
        u = f"{untrained.mean[i]:.3f} ± {untrained.std[i]:.3f}" if untrained is not None else "-"
        bar = "#" * (1 + int(round((width - 1) * (trained.mean[i] - lo) / (hi - lo)))) if hi > lo else "#"
        mark = "  <- best" if k == trained.best_layer else ""
        lines.append(f"{k:5d}  {trained.mean[i]:.3f} ± {trained.std[i]:.3f}    {u:15s}  {bar}{mark}")
    for name in ("raw pixels", "raw pixels, pooled"):
        if name in curves:
            c = curves[name]
            lines.append(f"{name}: {c.mean[0]:.3f} ± {c.std[0]:.3f}")
    r = probe_report(curves)
    g = r["best_minus_last"]
    lines.append(f"best layer {r['best_layer']} of {r['last_layer']}; best - last {g['mean']:+.3f} ± {g['std']:.3f}, "
                 f"ahead on {g['folds_ahead']} of {g['n_folds']} folds")
    return "\n".join(lines)


def markdown_table(report):
    """`probe_report`'s numbers (or the --json file's) as the README's table: a row per model, a column per
    layer (the best trained layer in bold), then the raw-pixel baselines; and a line with the best layer's
    margin over the last. -> str."""
    layers = report["trained"]["layers"]
    last = report["last_layer"]
    heads = [f"{k} (embeddings)" if k == 0 else f"{k} (+ ln_f)" if k == last else str(k) for k in layers]
    baselines = [n for n in ("raw pixels", "raw pixels, pooled") if n in report]
    lines = ["| layer | " + " | ".join(heads + baselines) + " |", "|---" * (1 + len(heads) + len(baselines)) + "|"]
    for name in ("trained", "untrained"):
        if name not in report:
            continue
        c = report[name]
        cells = [f"{m:.3f} ± {sd:.3f}" for m, sd in zip(c["mean"], c["std"])]
        if name == "trained":
            i = layers.index(report["best_layer"])
            cells[i] = f"**{cells[i]}**"
            cells += [f"{report[n]['mean'][0]:.3f} ± {report[n]['std'][0]:.3f}" for n in baselines]
        else:
            cells += [""] * len(baselines)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    g = report["best_minus_last"]
    lines.append("")
    lines.append(f"Best layer {report['best_layer']} of {last}; best minus last, fold by fold: {g['mean']:+.3f} ± "
                 f"{g['std']:.3f}, ahead on {g['folds_ahead']} of {g['n_folds']} folds.")
    return "\n".join(lines)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2, got {text!r}")
    return value


def _C_arg(text):
    if text == "tuned":
        return text
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number or 'tuned', got {text!r}")
    return value


def _jobs_arg(text):
    """--jobs: a count of worker processes up to the machine's cores, or -1 for one per core."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    cores = os.cpu_count() or 1
    if not (value == -1 or 1 <= value <= cores):
        raise argparse.ArgumentTypeError(f"expected a number of processes from 1 to this machine's {cores} cores, "
                                         f"or -1 (every core), got {text!r}")
    return value


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python -m minigpt_pixels.probe",
        description="The linear probe of a frozen ImageGPT, layer by layer: trained vs untrained (same config, "
                    "same init seed) vs raw pixels, scored by stratified k-fold cross-validation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True, help="HF-layout model directory (config.json, model.safetensors, "
                                                    "preprocessor_config.json)")
    ap.add_argument("--data", default="digits", help="'digits', 'shifted-digits' (new shifts on the model's "
                                                     "canvas), 'middle-peak' (middle_peak_probe_data()) or a "
                                                     "folder with one sub-folder of images per class")
    ap.add_argument("--features", choices=FEATURES, default="paper",
                    help="'paper': mean over positions of layer_norm(h^l) with block l's ln_1 (ln_f for the last "
                         "layer); 'mean': the raw hidden state mean-pooled")
    ap.add_argument("--folds", type=_positive_int, default=5, help="cross-validation folds")
    ap.add_argument("--pool-from", type=int, default=0, help="average positions from this one on (0: all, as "
                                                             "the paper; SOS is position 0)")
    ap.add_argument("--C", type=_C_arg, default="tuned", help="inverse L2 strength, or 'tuned': chosen per layer "
                                                              f"from {list(C_GRID)} on an inner split of each fold")
    ap.add_argument("--seed", type=int, default=0, help="the folds' shuffle")
    ap.add_argument("--init-seed", type=int, default=0, help="the untrained model's initialisation (train --seed)")
    ap.add_argument("--jobs", type=_jobs_arg, default=1, help="probe fits run at once in worker processes (-1: "
                                                           "one per core); the numbers do not change")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    ap.add_argument("--plot", metavar="FILE", help="also draw the curves to FILE (PNG)")
    ap.add_argument("--markdown", action="store_true", help="also print the table as the README's markdown")
    ap.add_argument("--force", action="store_true", help="overwrite --json / --plot files that exist")
    return ap


def _save(ap, path, force, write):
    """write(f) into a file that takes the name `path` only once whole (weights.atomic_open): a crash or a
    full disk leaves the user's old file as it was. Without --force a file that appeared meanwhile is kept.
    Failures are one-line errors naming the file."""
    try:
        with atomic_open(path, replace=force) as f:
            write(f)
    except FileExistsError:
        ap.exit(2, f"{ap.prog}: error: {path}: appeared while the probe ran; pass --force to overwrite it\n")
    except OSError as e:
        ap.exit(2, f"{ap.prog}: error: {path}: {e.strerror or e}\n")


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    for option in ("json", "plot"):
        path = getattr(args, option)
        if path is not None and os.path.exists(path) and not args.force:
            ap.exit(2, f"{ap.prog}: error: --{option} {path}: exists; pass --force to overwrite it\n")
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            ap.exit(2, f"{ap.prog}: error: --{option} {path}: no such directory\n")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        ap.exit(2, f"{ap.prog}: error: --model {args.model}: not a model directory (no config.json)\n")
    from threadpoolctl import threadpool_limits

    try:
        model = ImageGPTForCausalImageModeling.from_pretrained(args.model)
        processor = ImageGPTImageProcessor.from_pretrained(args.model)
        images, labels, what = probe_data(args.data, processor)
        ids = processor(list(images))["input_ids"]  # [N, h*w]
        print(f"{model.config.n_layer} blocks of width {model.config.n_embd}; {len(labels)} images ({what}), "
              f"{args.folds} folds, {args.features} features, C {args.C}")
        with threadpool_limits(limits=1):  # tiny matrices: one BLAS thread is fastest, and polite on shared CPUs
            curves = compare_probes(model, ids, labels, raw_pixels=_grey_or_rgb(images), init_seed=args.init_seed,
                                    n_folds=args.folds, seed=args.seed, C=args.C, features=args.features,
                                    pooled_pixels=True, pool_from=args.pool_from, n_jobs=args.jobs)
    except (OSError, ValueError) as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    print(format_table(curves))
    report = {"model": args.model, "data": args.data, "features": args.features, "folds": args.folds,
              "C": args.C, "n_images": int(len(labels)), **probe_report(curves)}
    if args.markdown:
        print(markdown_table(report))
    if args.json:
        _save(ap, args.json, args.force, lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ax = plot_probe_curves(curves, title=f"{os.path.basename(os.path.normpath(args.model))} on {args.data}, "
                                             f"{args.features} features")
        ax.figure.tight_layout()
        _save(ap, args.plot, args.force, lambda f: ax.figure.savefig(f, dpi=110, format="png"))
        plt.close(ax.figure)
    return 0

