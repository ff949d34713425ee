"""Make the README's pictures from the default model: `python scripts/make_readme_images.py`.

    docs/images/samples.png       unconditional samples: `python -m minigpt_pixels.sample`'s own output
    docs/images/completions.png   held-out digits: the original, the kept top half, then completions
    docs/images/probe_curve.png   linear-probe accuracy by layer against a raw-pixel baseline
    docs/images/probe.json        the probe's numbers, as printed

Everything is seeded, so the same model gives the same pictures. The probe is notebook 4's: fitted on
the digits the model trained on, scored on the 180 it never saw (train.py's held-out split).
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


def probe_numbers(model, processor, data, train_idx, held_out):
    """Held-out accuracy of a linear probe on every layer's mean-pooled features, and on raw pixels."""
    from minigpt_pixels.probe import linear_probe, probe_by_layer

    ids = processor(data.images)["input_ids"]  # [N, 64]
    y = data.labels
    results = probe_by_layer(model, ids[train_idx], y[train_idx], add_sos=True,
                             test_input_ids=ids[held_out], test_labels=y[held_out])
    raw = np.stack(data.images).reshape(len(data.images), -1) / 255.0  # [N, 64]
    baseline = linear_probe(raw[train_idx], y[train_idx], raw[held_out], y[held_out])
    return {"layers": {str(k): r.accuracy for k, r in results.items()},
            "train_accuracy": {str(k): r.train_accuracy for k, r in results.items()},
            "raw_pixels": baseline.accuracy, "n_train": int(len(train_idx)), "n_test": int(len(held_out))}


def plot_probe(numbers, n_layer, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [int(k) for k in numbers["layers"]]
    acc = list(numbers["layers"].values())
    names = ["embeddings"] + [f"block {i}" for i in range(n_layer - 1)] + [f"block {n_layer - 1}\n+ ln_f"]
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    ax.plot(layers, acc, "o-", label="linear probe on mean-pooled features")
    ax.axhline(numbers["raw_pixels"], color="gray", ls="--",
               label=f"linear probe on raw pixels ({numbers['raw_pixels']:.3f})")
    for x, a in zip(layers, acc):
        ax.annotate(f"{a:.3f}", (x, a), textcoords="offset points", xytext=(0, -9), ha="center", va="top", fontsize=8)
    ax.set_xticks(layers, names, fontsize=8)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(min(acc + [numbers["raw_pixels"]]) - 0.08, 1.0)
    ax.set_title(f"digits: linear probe by layer ({numbers['n_test']} held-out images)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
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
    from minigpt_pixels.generation import complete_images
    from minigpt_pixels.model import ImageGPTForCausalImageModeling
    from minigpt_pixels.processor import ImageGPTImageProcessor
    from minigpt_pixels.sample import image_grid, save_png
    from minigpt_pixels.train import load_digits_data, split

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
    save_png(image_grid([[o, k, *c] for o, k, c in zip(originals, kept, completions)]),
             str(args.out / "completions.png"), scale)

    numbers = probe_numbers(model, processor, data, train_idx, held_out)
    plot_probe(numbers, model.config.n_layer, args.out / "probe_curve.png")
    (args.out / "probe.json").write_text(json.dumps(numbers, indent=2) + "\n")

    for layer, acc in numbers["layers"].items():
        print(f"layer {layer}: held-out accuracy {acc:.3f}")
    print(f"raw pixels: {numbers['raw_pixels']:.3f} ({numbers['n_test']} held-out images)")
    print(f"wrote samples.png, completions.png, probe_curve.png, probe.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
