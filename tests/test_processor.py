"""processor.py: token-for-token agreement with transformers' ImageGPTImageProcessorPil, and bad input.

Tiers: golden fixtures written by scripts/make_processor_goldens.py (no transformers needed), then
live agreement when transformers is installed, then our own behaviour (conversions, errors).
"""

import json
import os
import re

import numpy as np
import PIL.Image
import pytest

from minigpt_pixels import palette
from minigpt_pixels.palette import dequantize, load_palette, palette_colors
from minigpt_pixels.processor import (
    PREPROCESSOR_CONFIG_NAME,
    ImageError,
    ImageGPTImageProcessor,
    load_image,
    pixels_from_images,
)

from .conftest import GOLDEN_DIR, report

GOLDEN = GOLDEN_DIR / "processor"
CASES = json.loads((GOLDEN / "cases.json").read_text())["cases"]


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "fixtures.npz"))


@pytest.fixture(scope="module")
def photos():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    return list(sklearn_datasets.load_sample_images().images)  # 2 x [427, 640, 3] uint8


@pytest.fixture(scope="module")
def clusters():
    return load_palette()


def processor_for(case, golden, **kwargs):
    height, width = case["size"]
    return ImageGPTImageProcessor(clusters=golden[f"clusters_{case['palette']}"], size={"height": height, "width": width},
                                  do_resize=case["do_resize"], **kwargs)


# --- golden fixtures from transformers ---------------------------------------------------------


def test_golden_fixtures_present_and_versioned():
    meta = json.loads((GOLDEN / "cases.json").read_text())
    assert meta["versions"]["transformers"] and meta["versions"]["pillow"] and meta["versions"]["numpy"]
    sizes = {tuple(c["size"]) for c in CASES if c["do_resize"]}
    assert {(32, 32), (16, 16), (24, 40), (64, 64), (8, 8)} <= sizes
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c["key"] for c in CASES])
def test_golden_input_ids(case, golden):
    ids = processor_for(case, golden)(golden[case["image"]])["input_ids"]
    expected = golden[f"ids_{case['key']}"]
    assert ids.shape == expected.shape, f"shape {ids.shape} != {expected.shape}"
    assert ids.dtype == np.int64
    mismatches = int(np.count_nonzero(ids != expected))
    print(f"[parity] {case['key']}: {mismatches} of {ids.size} ids differ")
    assert mismatches == 0


@pytest.mark.parametrize("case", [c for c in CASES if c["pixel_values"]], ids=lambda c: c["key"])
def test_golden_pixel_values(case, golden):
    out = processor_for(case, golden, do_color_quantize=False)(golden[case["image"]])
    assert set(out) == {"pixel_values"}
    assert out["pixel_values"].dtype == np.float32
    report(case["key"], out["pixel_values"], golden[f"pixel_values_{case['key']}"], tol=0.0)


# --- live agreement with transformers ----------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_processor():
    transformers = pytest.importorskip("transformers")
    return transformers.ImageGPTImageProcessorPil


def live_ids(transformers_processor, images, clusters, height, width):
    # clusters as a list, i.e. float64, as transformers reads them from preprocessor_config.json
    size = {"height": height, "width": width}
    theirs = transformers_processor(clusters=clusters.tolist(), size=size)(images, return_tensors="np")
    ours = ImageGPTImageProcessor(clusters=clusters, size=size)(images)
    assert ours["input_ids"].shape == theirs["input_ids"].shape == (len(images), height * width)
    return ours["input_ids"], theirs["input_ids"]


@pytest.mark.live
@pytest.mark.parametrize("size", [(32, 32), (64, 64), (24, 40)])
def test_live_photos_token_for_token(transformers_processor, photos, clusters, size):
    ours, theirs = live_ids(transformers_processor, photos, clusters, *size)
    assert int(np.count_nonzero(ours != theirs)) == 0


@pytest.mark.live
@pytest.mark.slow
def test_live_near_tie_on_a_real_photo(transformers_processor, photos, clusters):
    # At 256x256 the float32 expansion alone gets 1 of the flower's 65536 pixels wrong; the exact
    # re-ranking in palette.quantize gets it right. (transformers holds about 0.5 GB of distances here.)
    ours, theirs = live_ids(transformers_processor, photos[1:], clusters, 256, 256)
    pixels = ImageGPTImageProcessor(size=256, do_color_quantize=False)(photos[1])["pixel_values"]  # [1, 3, 256, 256]
    fast, _ = palette._nearest(pixels[0].transpose(1, 2, 0).reshape(-1, 3), clusters)
    assert np.count_nonzero(fast != theirs[0]) > 0, "the photo no longer has a near tie"
    assert int(np.count_nonzero(ours != theirs)) == 0


@pytest.mark.live
def test_live_pil_inputs_and_conversions(transformers_processor, photos, clusters):
    rgb = PIL.Image.fromarray(photos[1][50:250, 100:400])
    grey = rgb.convert("L")
    palette_mode = rgb.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=64)
    rgba = rgb.copy()
    rgba.putalpha(PIL.Image.linear_gradient("L").resize(rgb.size))
    theirs = transformers_processor(clusters=clusters.tolist(), size={"height": 32, "width": 32})
    ours = ImageGPTImageProcessor(clusters=clusters)
    for name, image in [("RGB", rgb), ("L", grey), ("P", palette_mode), ("RGBA", rgba)]:
        # transformers fails on all but RGB unless asked to convert; ours converts by itself
        expected = theirs(image, do_convert_rgb=True, return_tensors="np")["input_ids"]
        np.testing.assert_array_equal(ours(image)["input_ids"], expected, err_msg=name)


@pytest.mark.live
def test_live_save_pretrained_loads_in_transformers(transformers_processor, photos, tmp_path):
    clusters = np.random.default_rng(0).uniform(-1, 1, (37, 3)).astype(np.float32)  # arbitrary K
    ours = ImageGPTImageProcessor(clusters=clusters, size={"height": 24, "width": 40})
    ours.save_pretrained(tmp_path)
    theirs = transformers_processor.from_pretrained(tmp_path)
    np.testing.assert_array_equal(np.asarray(theirs.clusters), clusters)  # float32 values written exactly
    assert (theirs.size["height"], theirs.size["width"]) == (24, 40)
    assert int(theirs.resample) == 2 and theirs.do_normalize and theirs.do_color_quantize and theirs.do_resize
    np.testing.assert_array_equal(ours(photos)["input_ids"], theirs(photos, return_tensors="np")["input_ids"])


@pytest.mark.live
def test_live_transformers_config_loads_in_ours(transformers_processor, photos, clusters, tmp_path):
    bicubic = PIL.Image.Resampling.BICUBIC
    theirs = transformers_processor(clusters=clusters, size={"height": 16, "width": 48}, resample=bicubic)
    theirs.save_pretrained(tmp_path)
    ours = ImageGPTImageProcessor.from_pretrained(tmp_path)
    assert ours.clusters.dtype == np.float32
    np.testing.assert_array_equal(ours.clusters, clusters)
    assert ours.size == {"height": 16, "width": 48} and ours.resample == int(bicubic)
    theirs = transformers_processor.from_pretrained(tmp_path)  # float64 clusters, as users get them
    np.testing.assert_array_equal(ours(photos)["input_ids"], theirs(photos, return_tensors="np")["input_ids"])


@pytest.mark.live
@pytest.mark.parametrize("size", [32, None])
def test_live_hub_style_config(transformers_processor, photos, clusters, tmp_path, size):
    # The openai/imagegpt-* configs: feature_extractor_type, a square size as one int; without a
    # size both libraries fall back to transformers' class default, 256x256.
    config = {"clusters": clusters.tolist(), "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "ImageGPTFeatureExtractor", "resample": 2}
    if size is not None:
        config["size"] = size
    (tmp_path / PREPROCESSOR_CONFIG_NAME).write_text(json.dumps(config))
    ours = ImageGPTImageProcessor.from_pretrained(tmp_path)
    theirs = transformers_processor.from_pretrained(tmp_path)
    assert ours.size == {"height": theirs.size["height"], "width": theirs.size["width"]}
    assert ours.size == ({"height": 32, "width": 32} if size else {"height": 256, "width": 256})
    np.testing.assert_array_equal(ours(photos[0])["input_ids"], theirs(photos[0], return_tensors="np")["input_ids"])


# --- outputs, round trips, save / load ---------------------------------------------------------


def test_batch_output_and_no_sos_token(photos, clusters):
    out = ImageGPTImageProcessor(clusters=clusters)(photos)
    assert set(out) == {"input_ids"}
    ids = out["input_ids"]
    assert ids.shape == (2, 32 * 32) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < len(clusters)  # no SOS (id 512) anywhere, in particular not first
    single = ImageGPTImageProcessor(clusters=clusters)(photos[0])["input_ids"]
    np.testing.assert_array_equal(single, ids[:1])
    np.testing.assert_array_equal(ImageGPTImageProcessor(clusters=clusters)(np.stack(photos))["input_ids"], ids)


def test_pixel_values_layout(photos):
    out = ImageGPTImageProcessor(size={"height": 24, "width": 40}, do_color_quantize=False)(photos)
    pv = out["pixel_values"]
    assert pv.shape == (2, 3, 24, 40) and pv.dtype == np.float32  # channels first, as transformers
    assert pv.min() >= -1 and pv.max() <= 1
    raw = ImageGPTImageProcessor(size={"height": 24, "width": 40}, do_color_quantize=False, do_normalize=False)(photos)
    np.testing.assert_allclose(pv, (raw["pixel_values"] - 0.5) / 0.5, atol=0)


def test_decode_round_trip_is_exact(clusters, rng):
    # An image painted in palette colours comes back unchanged: ids -> colours -> ids -> colours.
    ids = rng.integers(0, len(clusters), (3, 16 * 16))
    processor = ImageGPTImageProcessor(clusters=clusters, size={"height": 16, "width": 16})
    images = processor.decode(ids)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, dequantize(ids.reshape(3, 16, 16), clusters))
    np.testing.assert_array_equal(processor(list(images))["input_ids"], ids)
    np.testing.assert_array_equal(processor.decode(ids[0]), images[:1])  # one sequence
    np.testing.assert_array_equal(processor.decode(ids.reshape(3, 16, 16)), images)


def test_decode_bad_ids(clusters):
    processor = ImageGPTImageProcessor(clusters=clusters, size={"height": 4, "width": 4})
    with pytest.raises(ValueError, match=r"expected 16 ids per image for size 4x4, got 17 \(drop the SOS token"):
        processor.decode(np.zeros((1, 17), np.int64))
    with pytest.raises(ValueError, match="expected 16 ids per image for size 4x4, got 15$"):
        processor.decode(np.zeros((1, 15), np.int64))
    with pytest.raises(ValueError, match=r"ids must be in \[0, 512\)"):
        processor.decode(np.full((1, 16), 512))
    with pytest.raises(ValueError, match="no clusters to decode with"):
        ImageGPTImageProcessor().decode(np.zeros((1, 1024), np.int64))


def test_save_pretrained_writes_the_keys_transformers_writes(clusters, tmp_path):
    [path] = ImageGPTImageProcessor(clusters=clusters, size=16).save_pretrained(tmp_path / "model")
    assert os.path.basename(path) == PREPROCESSOR_CONFIG_NAME
    assert os.listdir(tmp_path / "model") == [PREPROCESSOR_CONFIG_NAME]  # no temporary file left behind
    config = json.loads(open(path).read())
    assert config == {
        "clusters": clusters.tolist(), "do_color_quantize": True, "do_normalize": True, "do_rescale": True,
        "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "ImageGPTImageProcessor",
        "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 1 / 255, "size": {"height": 16, "width": 16},
    }
    loaded = ImageGPTImageProcessor.from_pretrained(path)  # the file itself works as well as its folder
    np.testing.assert_array_equal(loaded.clusters, clusters)
    assert repr(loaded) == repr(ImageGPTImageProcessor(clusters=clusters, size=16))


def test_arbitrary_palette_and_size_grey_digits(tmp_path):
    # As the digits model uses it: 16 greys, 8x8 grey images given as 2-D arrays.
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    digits = (sklearn_datasets.load_digits().images[:5] * 15).astype(np.uint8)  # [5, 8, 8], 0..240
    greys = np.repeat(np.linspace(-1, 1, 16, dtype=np.float32)[:, None], 3, axis=1)
    processor = ImageGPTImageProcessor(clusters=greys, size={"height": 8, "width": 8})
    ids = processor(list(digits))["input_ids"]
    assert ids.shape == (5, 64) and ids.max() < 16
    processor.save_pretrained(tmp_path)
    again = ImageGPTImageProcessor.from_pretrained(tmp_path)
    assert again.clusters.shape == (16, 3) and again.size == {"height": 8, "width": 8}
    np.testing.assert_array_equal(again(list(digits))["input_ids"], ids)
    decoded = again.decode(ids)  # [5, 8, 8, 3], grey: all channels equal
    assert decoded.shape == (5, 8, 8, 3) and np.all(decoded == decoded[..., :1])


def test_pixels_from_images_match_the_processor(photos):
    pixels = pixels_from_images(photos)
    assert pixels.shape == (2 * 427 * 640, 3) and pixels.dtype == np.float32
    pv = ImageGPTImageProcessor(do_resize=False, do_color_quantize=False)(photos[0])["pixel_values"]  # [1, 3, H, W]
    np.testing.assert_array_equal(pixels[: 427 * 640], pv[0].transpose(1, 2, 0).reshape(-1, 3))


# --- inputs of every kind ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_photo(photos):
    return photos[0][150:230, 250:350]  # [80, 100, 3] uint8


def ids_of(image, clusters, **kwargs):
    return ImageGPTImageProcessor(clusters=clusters, **kwargs)(image)["input_ids"]


def test_paths_pil_and_arrays_agree(small_photo, clusters, tmp_path):
    expected = ids_of(small_photo, clusters)
    PIL.Image.fromarray(small_photo).save(tmp_path / "photo.png")
    np.testing.assert_array_equal(ids_of(str(tmp_path / "photo.png"), clusters), expected)
    np.testing.assert_array_equal(ids_of(tmp_path / "photo.png", clusters), expected)  # os.PathLike
    np.testing.assert_array_equal(ids_of(PIL.Image.fromarray(small_photo), clusters), expected)
    np.testing.assert_array_equal(ids_of(small_photo.astype(np.int64), clusters), expected)  # 0..255 in a wider int


def test_float_images_in_0_1_are_taken_as_rescaled(small_photo, clusters):
    # u8 / 255 goes back to exactly u8 on the way into PIL, so the ids are those of the uint8 image
    for do_resize in (True, False):
        expected = ids_of(small_photo, clusters, do_resize=do_resize)
        for dtype in (np.float32, np.float64):
            np.testing.assert_array_equal(ids_of(small_photo.astype(dtype) / 255, clusters, do_resize=do_resize), expected)


def test_grey_images_are_converted_to_rgb(small_photo, clusters):
    grey = small_photo[..., 1]  # [H, W]
    expected = ids_of(np.repeat(grey[..., None], 3, axis=-1), clusters)
    np.testing.assert_array_equal(ids_of(grey, clusters), expected)
    np.testing.assert_array_equal(ids_of(grey[..., None], clusters), expected)
    np.testing.assert_array_equal(ids_of(PIL.Image.fromarray(grey), clusters), expected)
    np.testing.assert_array_equal(ids_of(PIL.Image.fromarray(grey).convert("LA"), clusters), expected)


def test_rgba_is_composited_onto_white(small_photo, clusters):
    opaque = np.concatenate([small_photo, np.full(small_photo.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(ids_of(opaque, clusters), ids_of(small_photo, clusters))
    np.testing.assert_array_equal(ids_of(PIL.Image.fromarray(opaque), clusters), ids_of(small_photo, clusters))
    clear = opaque.copy()
    clear[..., 3] = 0
    white = np.full_like(small_photo, 255)
    np.testing.assert_array_equal(ids_of(clear, clusters), ids_of(white, clusters))
    np.testing.assert_array_equal(load_image(clear.astype(np.float32) / 255), np.ones(small_photo.shape, np.float32))


def test_palette_mode_images(small_photo, clusters, tmp_path):
    image = PIL.Image.fromarray(small_photo).quantize(colors=32)  # mode "P"
    assert image.mode == "P"
    np.testing.assert_array_equal(ids_of(image, clusters), ids_of(np.asarray(image.convert("RGB")), clusters))
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(ids_of(tmp_path / "p.png", clusters), ids_of(image, clusters))


def test_16_bit_images_are_scaled_to_8_bits(small_photo, clusters, tmp_path):
    expected = ids_of(small_photo, clusters)
    np.testing.assert_array_equal(ids_of(small_photo.astype(np.uint16) * 257, clusters), expected)
    grey = small_photo[..., 0]
    PIL.Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # a 16-bit PNG
    with PIL.Image.open(tmp_path / "grey16.png") as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(ids_of(tmp_path / "grey16.png", clusters), ids_of(grey, clusters))


def test_no_resize_keeps_the_image_size(small_photo, clusters):
    ids = ids_of(small_photo, clusters, do_resize=False)
    assert ids.shape == (1, 80 * 100)


# --- bad input ---------------------------------------------------------------------------------


def write_truncated(tmp_path, image, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    PIL.Image.fromarray(image).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_names_the_path(small_photo, clusters, tmp_path, fmt):
    path = write_truncated(tmp_path, small_photo, fmt)
    with pytest.raises(ImageError, match=f"(?i)cannot read image file {re.escape(str(path))}: .*truncated"):
        ids_of(path, clusters)


def test_missing_and_unreadable_files_name_the_path(clusters, tmp_path):
    with pytest.raises(ImageError, match=f"image file not found: {tmp_path / 'nope.png'}"):
        ids_of(str(tmp_path / "nope.png"), clusters)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageError, match=f"cannot read image file {tmp_path / 'notes.png'}: cannot identify image file"):
        ids_of(tmp_path / "notes.png", clusters)
    with pytest.raises(ImageError, match="cannot read image file"):
        ids_of(str(tmp_path), clusters)  # a folder


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 32, 3), np.uint8), r"image 0 has zero height or width \(shape \(0, 32, 3\)\)"),
        (np.zeros((32, 0), np.uint8), r"image 0 has zero height or width \(shape \(32, 0, 1\)\)"),
        (PIL.Image.new("RGB", (0, 8)), r"image 0 has zero height or width"),
        (np.full((8, 8, 3), np.nan, np.float32), "image 0 contains NaN or infinite values"),
        (np.full((8, 8, 3), 1.5, np.float32), r"image 0: float images must be in \[0, 1\], got values in \[1.5, 1.5\]"),
        (np.full((8, 8, 3), -0.25), r"float images must be in \[0, 1\], got values in \[-0.25, -0.25\]"),
        (np.full((8, 8, 3), 300, np.int64), r"integer images must be in \[0, 255\] \(or uint16\), got values in \[300, 300\]"),
        (np.zeros((5, 32, 32), np.uint8), r"expected an \(H, W\) array or \(H, W, C\) / \(C, H, W\) with C = 1, 3 or 4 "
                                          r"channels, got shape \(5, 32, 32\)"),
        (np.zeros((8, 8, 3), bool), "unsupported dtype bool"),
        (12, "expected a file path, a PIL image or an array, got int"),
    ],
)
def test_bad_images(image, message, clusters):
    with pytest.raises(ImageError, match=message):
        ids_of(image, clusters)


def test_bad_image_in_a_batch_is_named_by_position(small_photo, clusters):
    with pytest.raises(ImageError, match="image 2 contains NaN"):
        ids_of([small_photo, small_photo, np.full((4, 4), np.nan)], clusters)


def test_batch_problems(small_photo, clusters):
    with pytest.raises(ImageError, match="no images given"):
        ids_of([], clusters)
    with pytest.raises(ImageError, match=r"images of different sizes \[\(40, 50\), \(80, 100\)\] cannot form a batch"):
        ids_of([small_photo, small_photo[:40, :50]], clusters, do_resize=False)
    with pytest.raises(ValueError, match="clusters must be provided for color quantization"):
        ImageGPTImageProcessor()(small_photo)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clusters": np.zeros((512, 4))}, r"clusters must be a non-empty \(K, 3\) array of numbers, got shape \(512, 4\)"),
        ({"clusters": np.zeros((3,))}, r"\(K, 3\) array of numbers, got shape \(3,\)"),
        ({"clusters": [[0.0, np.nan, 0.0]]}, "clusters contain NaN or infinite values"),
        ({"size": {"height": 32}}, r"size must be an int or \{\"height\": h, \"width\": w\}, got \{'height': 32\}"),
        ({"size": {"shortest_edge": 32}}, "size must be an int or"),
        ({"size": 0}, "size must hold positive integers"),
        ({"resample": 9}, r"resample must be a PIL resampling filter \(0-5\), got 9"),
        ({"do_resize": "yes"}, "do_resize must be True or False, got 'yes'"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageGPTImageProcessor(**kwargs)


def write_config(tmp_path, **config):
    (tmp_path / PREPROCESSOR_CONFIG_NAME).write_text(json.dumps(config))
    return tmp_path / PREPROCESSOR_CONFIG_NAME


def test_config_without_clusters(tmp_path, clusters):
    path = write_config(tmp_path, size=32, do_color_quantize=True)
    with pytest.raises(ValueError, match=f"{path} has no clusters, which color quantization needs"):
        ImageGPTImageProcessor.from_pretrained(tmp_path)
    assert ImageGPTImageProcessor.from_pretrained(tmp_path, do_color_quantize=False).clusters is None
    loaded = ImageGPTImageProcessor.from_pretrained(tmp_path, clusters=clusters)  # overrides fill the gap
    np.testing.assert_array_equal(loaded.clusters, clusters)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"clusters": [[0.0, 0.0]] * 4}, r"clusters must be a non-empty \(K, 3\) array of numbers, got shape \(4, 2\)"),
        ({"clusters": [[0.0, None, 0.0]]}, r"clusters must be a non-empty \(K, 3\) array of numbers, got shape \(1, 3\) "
                                            r"dtype object"),
        ({"clusters": [[0.0, 0.0, 0.0]], "image_mean": [0.485, 0.456, 0.406]},
         r"image_mean=\[0.485, 0.456, 0.406\] is not supported \(iGPT uses \(0.5, 0.5, 0.5\)\)"),
        ({"clusters": [[0.0, 0.0, 0.0]], "do_rescale": False}, "do_rescale=False is not supported"),
        ({"clusters": [[0.0, 0.0, 0.0]], "size": {"shortest_edge": 32}}, "size must be an int or"),
    ],
)
def test_bad_configs_name_the_file(tmp_path, config, message):
    path = write_config(tmp_path, **config)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        ImageGPTImageProcessor.from_pretrained(tmp_path)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no {PREPROCESSOR_CONFIG_NAME} at {tmp_path}"):
        ImageGPTImageProcessor.from_pretrained(tmp_path)
    (tmp_path / PREPROCESSOR_CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"cannot read {tmp_path / PREPROCESSOR_CONFIG_NAME}"):
        ImageGPTImageProcessor.from_pretrained(tmp_path)


def test_colours_of_the_shipped_palette_survive_the_processor(clusters):
    # every palette colour as a 32x32 image of one colour, quantized back to its own id
    colours = palette_colors(clusters)  # [512, 3]
    images = list(np.broadcast_to(colours[:, None, None, :], (512, 32, 32, 3)))
    ids = ImageGPTImageProcessor(clusters=clusters)(images)["input_ids"]
    np.testing.assert_array_equal(ids, np.repeat(np.arange(512)[:, None], 1024, axis=1))
