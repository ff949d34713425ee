"""Make the README's pictures from the default model: `python scripts/make_readme_images.py`.

    docs/images/samples.png       unconditional samples: `python -m minigpt_pixels.sample`'s own output
    docs/images/completions.png   held-out digits: the original, the kept top half, then completions
    docs/images/probe_curve.png   linear-probe accuracy by layer: trained vs untrained vs raw pixels
    docs/images/probe.json        the probe's numbers, as printed

Everything is seeded, so the same model gives the same pictures. The probe is notebook 4's: 5-fold
cross-validation over all the images, for the default model on the digits and for the 8-block model
(minigpt_pixels/data/shifted_digits_model) on digits shifted about a 10 x 10 canvas.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def probe_numbers(model, ids, labels, raw_pixels, name):
    """The paper's comparison (`compare_probes`): trained vs untrained (the same config and init seed)
    vs raw pixels, every layer, mean and spread over 5 shared stratified folds."""
    from minigpt_pixels.probe import compare_probes

    curves = compare_probes(model, ids, labels, raw_pixels=raw_pixels, n_folds=5, seed=0)
    trained = curves["trained"]
    best, last = trained.best_layer, trained.layers[-1]
    gap = trained.difference(best, last)  # [5 folds]
    return {"name": name, "n_layer": model.config.n_layer, "n_images": int(len(labels)), "n_folds": 5,
            "curves": {k: {"mean": c.mean.tolist(), "std": c.std.tolist(), "scores": c.scores.tolist()}
                       for k, c in curves.items()},
            "best_layer": best, "best_minus_last": {"mean": float(gap.mean()), "std": float(gap.std(ddof=1))}}, curves


def plot_probes(panels, path):
    """One panel per setting: the three curves with their error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minigpt_pixels.probe import plot_probe_curves

    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 3.9), dpi=110, squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        plot_probe_curves(curves, ax=ax, title=title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    from minigpt_pixels import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="HF-layout model directory trained on the digits")
    ap.add_argument("--out", type=pathlib.Path, default=OUT, help="where the pictures go")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.model):
        ap.exit(2, f"{ap.prog}: error: --model {args.model}: no such directory\n")

    from minigpt_pixels import sample
    from minigpt_pixels.datasets import load_digits_data, split
    from minigpt_pixels.generation import complete_images
    from minigpt_pixels.model import ImageGPTForCausalImageModeling
    from minigpt_pixels.processor import ImageGPTImageProcessor
    from minigpt_pixels.sample import image_grid, save_grid
    from minigpt_pixels.train import set_threads

    model = ImageGPTForCausalImageModeling.from_pretrained(args.model)
    processor = ImageGPTImageProcessor.from_pretrained(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    scale = 8  # 8 x 8 digits -> 64 x 64 on screen

    # exactly what `python -m minigpt_pixels.sample` writes with its defaults
    sample.main(["--model", args.model, "--seed", str(args.seed), "--out", str(args.out / "samples.png"), "--force",
                 "--no-progress"])

    data = load_digits_data()
    train_idx, held_out = split(len(data.images), 0.1, seed=0)  # the split the default model trained with
    picks = held_out[:4]
    ids = processor([data.images[i] for i in picks])["input_ids"]  # [4, 64]
    rows_kept = processor.size["height"] // 2
    completions = complete_images(model, processor, ids, rows_kept, 6, seed=args.seed)  # [4, 6, 8, 8, 3]
    originals = processor.decode(ids)
    kept = originals.copy()
    kept[:, rows_kept:] = 128  # grey where the model fills in, as the sample CLI draws it
    save_grid(image_grid([[o, k, *c] for o, k, c in zip(originals, kept, completions)]),
              str(args.out / "completions.png"), scale, replace=True)

    # the probe: the default model on the plain digits, the deeper one on the shifted digits
    from minigpt_pixels.probe import SHIFTED_DIGITS_MODEL, shifted_digits

    with set_threads(1):
        digits, digit_curves = probe_numbers(model, processor(data.images)["input_ids"], data.labels,
                                             np.stack(data.images) / 255.0, "digits, 8 x 8, default model")
        deep = ImageGPTForCausalImageModeling.from_pretrained(SHIFTED_DIGITS_MODEL)
        deep_processor = ImageGPTImageProcessor.from_pretrained(SHIFTED_DIGITS_MODEL)
        images, labels = shifted_digits(canvas=10, copies=1, seed=1)  # new places: not the training images
        shifted, shifted_curves = probe_numbers(deep, deep_processor(list(images))["input_ids"], labels,
                                                images / 255.0, "shifted digits, 10 x 10, 8-block model")
    plot_probes([(f"digits 8 x 8: default model ({model.config.n_layer} blocks)", digit_curves),
                 (f"digits shifted on 10 x 10: {deep.config.n_layer} blocks", shifted_curves)],
                args.out / "probe_curve.png")
    numbers = {  # "layers" and "n_test": the default model's trained curve, as notebook 4 prints it
        "layers": {str(k): m for k, m in zip(digit_curves["trained"].layers, digit_curves["trained"].mean)},
        "n_test": len(data.labels) // 5, "digits": digits, "shifted_digits": shifted}
    (args.out / "probe.json").write_text(json.dumps(numbers, indent=2) + "\n")

    for setting in (digits, shifted):
        print(setting["name"], f"({setting['n_images']} images, {setting['n_folds']} folds):")
        for k, c in setting["curves"].items():
            print(f"  {k:10s}", " ".join(f"{m:.3f}+-{s:.3f}" for m, s in zip(c["mean"], c["std"])))
        g = setting["best_minus_last"]
        print(f"  best layer {setting['best_layer']} of {setting['n_layer']}; best - last {g['mean']:+.3f} +- {g['std']:.3f}")
    print(f"wrote samples.png, completions.png, probe_curve.png, probe.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
