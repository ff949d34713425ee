"""Write golden fixtures from transformers' ImageGPTImageProcessorPil (not from minigpt_pixels) to tests/golden/processor/.

    python scripts/make_processor_goldens.py        # needs transformers (torch is not needed)

Inputs are crops and resizes of the photos scikit-learn and matplotlib ship plus a few synthetic
images (non-square, smaller than the output, grey, RGBA, float in [0, 1]); each is processed by
transformers at 32x32, 16x16, 24x40 (height x width) and 64x64. fixtures.npz holds the input images,
the palettes and transformers' input_ids (and pixel_values at 32x32 and 24x40); cases.json lists
every case with the transformers arguments used and the versions that made them.

The palettes are read as plain JSON lists, as transformers reads a preprocessor_config.json (float64).
"""

import argparse
import json
import pathlib
import platform

import matplotlib.cbook
import numpy as np
import PIL
import PIL.Image
import sklearn
import transformers
from sklearn.datasets import load_digits, load_sample_images
from transformers import ImageGPTImageProcessorPil

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "golden" / "processor"
SIZES = [(32, 32), (16, 16), (24, 40), (64, 64)]
PIXEL_VALUE_SIZES = [(32, 32), (24, 40)]


def pil_resize(array, height, width):
    return np.asarray(PIL.Image.fromarray(array).resize((width, height), PIL.Image.Resampling.LANCZOS))


def make_images():
    """name -> (image as stored, image as handed to transformers, extra transformers kwargs)."""
    china, flower = load_sample_images().images  # [427, 640, 3] uint8 each
    hopper = np.asarray(PIL.Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:24, 0:40]
    gradient = np.stack([rows * 10, cols * 6, 255 - rows * 5 - cols * 3], axis=-1).astype(np.uint8)  # [24, 40, 3]
    gray = pil_resize(china, 50, 70)[..., 1]  # [50, 70]
    rgba = np.concatenate([pil_resize(flower, 40, 30), rng.integers(0, 256, (40, 30, 1), dtype=np.uint8)], axis=-1)
    float01 = pil_resize(hopper, 45, 33).astype(np.float32) / 255  # [45, 33, 3] in [0, 1], on the k / 255 grid
    float_offgrid = np.random.default_rng(1).uniform(0, 1, (29, 37, 3)).astype(np.float32)  # truncation shows
    images = {
        "china_crop": china[100:228, 300:428],  # [128, 128, 3]
        "flower_small": pil_resize(flower, 107, 160),  # non-square, wider than tall
        "hopper_small": pil_resize(hopper, 75, 64),  # non-square, taller than wide
        "gradient": gradient,  # exactly the 24x40 output size
        "noise": rng.integers(0, 256, (13, 17, 3), dtype=np.uint8),  # smaller than every output, random colours
    }
    cases = {name: (image, image, {}) for name, image in images.items()}
    # transformers needs do_convert_rgb for grey (and only takes grey as a PIL image) and RGBA,
    # and do_rescale=False for floats already in [0, 1]; ours does that by itself.
    cases["gray"] = (gray, PIL.Image.fromarray(gray), {"do_convert_rgb": True})
    cases["rgba"] = (rgba, rgba, {"do_convert_rgb": True})
    cases["float01"] = (float01, float01, {"do_rescale": False})
    cases["float_offgrid"] = (float_offgrid, float_offgrid, {"do_rescale": False})
    return cases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    with open(ROOT / "minigpt_pixels" / "data" / "palette_photos512.json", encoding="utf-8") as f:
        photos512 = json.load(f)["clusters"]  # list of lists, as in a preprocessor_config.json
    grey16 = [[v, v, v] for v in np.linspace(-1, 1, 16).tolist()]  # an arbitrary-K palette, as for the digits model
    arrays = {"clusters_photos512": np.array(photos512, np.float32), "clusters_grey16": np.array(grey16, np.float32)}
    cases = []

    def run(name, image_key, transformers_image, palette, clusters, size, kwargs, do_resize=True, pixel_values=False):
        height, width = size
        size_dict = {"height": height, "width": width}
        processor = ImageGPTImageProcessorPil(clusters=clusters, size=size_dict, do_resize=do_resize)
        key = f"{name}_{height}x{width}" if do_resize else f"{name}_noresize"
        out = processor(transformers_image, return_tensors="np", **kwargs)
        arrays[f"ids_{key}"] = out["input_ids"].astype(np.int16)  # [1, h * w]; int16 keeps the file small
        if pixel_values:
            out = processor(transformers_image, return_tensors="np", do_color_quantize=False, **kwargs)
            arrays[f"pixel_values_{key}"] = out["pixel_values"]  # [1, 3, h, w] float32
        cases.append(dict(key=key, image=image_key, palette=palette, size=[height, width], do_resize=do_resize,
                          transformers_kwargs=kwargs, pixel_values=pixel_values))

    for name, (stored, given, kwargs) in make_images().items():
        arrays[f"image_{name}"] = stored
        for size in SIZES:
            run(name, f"image_{name}", given, "photos512", photos512, size, kwargs, pixel_values=size in PIXEL_VALUE_SIZES)
        if name in ("gradient", "float01", "float_offgrid"):  # no resize: the uint8 and float paths without PIL
            run(name, f"image_{name}", given, "photos512", photos512, stored.shape[:2], kwargs, do_resize=False,
                pixel_values=True)

    # 16 greys on scikit-learn's 8x8 digits (0..16 scaled to 0..240), as the digits model uses them
    digits = (load_digits().images[:4] * 15).astype(np.uint8)  # [4, 8, 8]
    for i, digit in enumerate(digits):
        arrays[f"image_digit{i}"] = digit
        for size in [(8, 8), (16, 16)]:
            run(f"digit{i}", f"image_digit{i}", PIL.Image.fromarray(digit), "grey16", grey16, size, {"do_convert_rgb": True})

    np.savez_compressed(args.out / "fixtures.npz", **arrays)
    meta = {
        "made_by": "scripts/make_processor_goldens.py",
        "versions": {"transformers": transformers.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
                     "scikit-learn": sklearn.__version__, "python": platform.python_version()},
        "cases": cases,
    }
    (args.out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    size_kb = (args.out / "fixtures.npz").stat().st_size / 1024
    print(f"wrote {len(cases)} cases to {args.out} (fixtures.npz {size_kb:.0f} KB)")


if __name__ == "__main__":
    main()
