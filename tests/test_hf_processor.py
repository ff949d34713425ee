"""transformers' image-processor tests (tests/models/imagegpt/test_image_processing_imagegpt.py and the
ImageProcessingTestMixin checks of tests/test_image_processing_common.py it inherits), run on our
ImageGPTImageProcessor with upstream's tester settings (2 clusters, 18x18, batches of 7 random images
between 30 and 400 pixels a side) and, where transformers is installed, compared id for id with
transformers' ImageGPTImageProcessorPil on the same images.

Ported: 17 upstream tests. ImageGPT's own 9: image_processor_properties, from_dict_with_kwargs (size=42),
to_json_string, to_json_file, from_and_save_pretrained, save_load_with_autoimageprocessor (transformers'
AutoImageProcessor reads our file), call_pil, call_numpy, call_pytorch (channels-first tensors). The mixin's 8:
backends_equivalence and backends_equivalence_batched (ours against transformers' processor), has_attributes,
from_dict_has_attributes, from_dict_with_kwargs_has_attributes (do_convert_rgb),
convert_to_rgb_mixed_input_batch, image_processor_preprocess_arguments (an unknown argument is named: refused
here, a warning upstream), override_instance_attributes_does_not_affect_other_instances. Also: pixel_values
against transformers, BatchFeature access, channels-first batches.

Not applicable: 15.
- test_init_without_params, test_call_numpy_4_channels: skipped upstream for ImageGPT (clusters needed;
  3-channel clusters).
- test_image (integration): the hub's openai/imagegpt-small and a hub dataset.
- test_save_load_backends, test_save_load_backends_auto, test_pil_can_run_without_torchvision,
  test_can_compile_torchvision_backend, test_new_models_require_torchvision_backend,
  test_fast_image_processor_explicit_none_preserved, test_valid_kwargs_set: transformers' choice between its
  PIL and torchvision backends; we have one NumPy/PIL path.
- test_cast_dtype_device: BatchFeature.to(torch dtype and device).
- test_post_process_semantic_segmentation, ..._target_sizes, test_post_process_test_mixin_inheritance,
  test_processor_can_use_legacy_annotation_format: segmentation and detection processors only.

Deliberate difference: an array whose first and last axes could both be channels ((3, H, 3), (1, W, 3))
is read channels last, as this package always has; transformers reads it channels first. Pass
input_data_format to say which.
"""

import json

import numpy as np
import PIL.Image
import pytest

from minigpt_pixels.processor import BatchFeature, ImageGPTImageProcessor

CLUSTERS = np.asarray([[0.8866443634033203, 0.6618829369544983, 0.3891746401786804],
                       [-0.6042559146881104, -0.02295008860528469, 0.5423797369003296]])
PROCESSOR_DICT = {"clusters": CLUSTERS, "do_resize": True, "size": {"height": 18, "width": 18}, "do_normalize": True}
BATCH = 7


def image_inputs(seed=0, numpify=False, torchify=False, equal_resolution=False):
    """upstream's prepare_image_inputs: random uint8 images made channels first, then PIL images (channels
    last), NumPy arrays (channels last) or torch tensors (channels first)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(BATCH):
        w, h = (400, 400) if equal_resolution else rng.choice(np.arange(30, 400), 2)
        images.append(rng.integers(0, 255, (3, w, h), dtype=np.uint8))
    if torchify:
        torch = pytest.importorskip("torch")
        return [torch.from_numpy(im) for im in images]
    if numpify:
        return [im.transpose(1, 2, 0) for im in images]
    return [PIL.Image.fromarray(np.moveaxis(im, 0, -1)) for im in images]


def theirs(**kw):
    transformers = pytest.importorskip("transformers")
    return transformers.ImageGPTImageProcessorPil(**{**PROCESSOR_DICT, **kw})


def assert_attributes(processor, expected):
    for key, value in expected.items():
        got = getattr(processor, key)
        assert np.array_equal(got, value) if key == "clusters" else got == value, key


def test_image_processor_properties_and_has_attributes():
    processor = ImageGPTImageProcessor(**PROCESSOR_DICT)
    for name in ("clusters", "do_resize", "size", "do_normalize"):
        assert hasattr(processor, name)
    assert_attributes(processor, PROCESSOR_DICT)


def test_from_dict_has_attributes_and_kwargs():
    processor = ImageGPTImageProcessor.from_dict(PROCESSOR_DICT)
    assert_attributes(processor, PROCESSOR_DICT)
    assert processor.size == {"height": 18, "width": 18}
    assert ImageGPTImageProcessor.from_dict(PROCESSOR_DICT, size=42).size == {"height": 42, "width": 42}
    for flag in (False, True):  # upstream's do_convert_rgb check: accepted (we convert to RGB always)
        ImageGPTImageProcessor.from_dict(PROCESSOR_DICT, do_convert_rgb=flag)


def test_to_json_string_agrees_with_transformers():
    obj = json.loads(ImageGPTImageProcessor(**PROCESSOR_DICT).to_json_string())
    for key, value in PROCESSOR_DICT.items():
        assert np.array_equal(value, obj[key]) if key == "clusters" else obj[key] == value, key
    reference = json.loads(theirs().to_json_string())
    for key, value in obj.items():
        if key in reference:
            assert value == reference[key], key


def test_to_json_file_and_from_json_file(tmp_path):
    first = ImageGPTImageProcessor(**PROCESSOR_DICT)
    first.to_json_file(tmp_path / "image_processor.json")
    assert ImageGPTImageProcessor.from_json_file(tmp_path / "image_processor.json").to_dict() == first.to_dict()


def test_from_and_save_pretrained(tmp_path):
    first = ImageGPTImageProcessor(**PROCESSOR_DICT)
    saved = first.save_pretrained(tmp_path)
    assert isinstance(saved, list) and len(saved) == 1
    json.loads(open(saved[0]).read())  # upstream's check_json_file_has_correct_format
    assert ImageGPTImageProcessor.from_pretrained(tmp_path).to_dict() == first.to_dict()
    (tmp_path / "sub").mkdir()
    first.save_pretrained(tmp_path / "sub")
    assert ImageGPTImageProcessor.from_pretrained(tmp_path, subfolder="sub").to_dict() == first.to_dict()
    with pytest.raises(OSError):
        ImageGPTImageProcessor.from_pretrained(tmp_path / "missing")


def test_save_load_with_autoimageprocessor(tmp_path):
    transformers = pytest.importorskip("transformers")
    first = ImageGPTImageProcessor(**PROCESSOR_DICT)
    first.save_pretrained(tmp_path)
    second = json.loads(transformers.AutoImageProcessor.from_pretrained(tmp_path).to_json_string())
    for key, value in first.to_dict().items():
        assert np.array_equal(value, second[key]) if key == "clusters" else value == second[key], key


@pytest.mark.parametrize("kind", ["pil", "numpy", "pytorch"])
def test_call(kind):
    processor = ImageGPTImageProcessor(**PROCESSOR_DICT)
    images = image_inputs(numpify=kind == "numpy", torchify=kind == "pytorch")
    single = processor(images[0], return_tensors="pt" if kind == "pytorch" else "np").input_ids
    assert tuple(single.shape) == (1, 18 * 18)
    batch = processor(images, return_tensors="pt" if kind == "pytorch" else "np").input_ids
    assert tuple(batch.shape) == (BATCH, 18 * 18)
    if kind == "pytorch":
        torch = pytest.importorskip("torch")
        assert batch.dtype == torch.int64


@pytest.mark.parametrize("kind", ["pil", "numpy", "pytorch"])
def test_backends_equivalence_batched(kind):
    """ours and transformers' processor give the same ids for every image of a batch (upstream compares its
    two backends the same way)."""
    reference = theirs()
    images = image_inputs(seed=1, numpify=kind == "numpy", torchify=kind == "pytorch")
    ours = ImageGPTImageProcessor(**PROCESSOR_DICT)(images).input_ids
    expected = np.stack(reference(images, return_tensors="np")["input_ids"])
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(ImageGPTImageProcessor(**PROCESSOR_DICT)(images[0]).input_ids,
                                  np.stack(reference(images[0], return_tensors="np")["input_ids"]))


def test_pixel_values_agree_with_transformers():
    images = image_inputs(seed=2, numpify=True)
    ours = ImageGPTImageProcessor(**PROCESSOR_DICT, do_color_quantize=False)(images).pixel_values  # [B, 3, 18, 18]
    reference = np.stack(theirs(do_color_quantize=False)(images, return_tensors="np")["pixel_values"])
    assert ours.shape == reference.shape == (BATCH, 3, 18, 18)
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_convert_to_rgb_mixed_input_batch():
    rng = np.random.default_rng(3)
    grey = PIL.Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8), mode="L")
    rgb = PIL.Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    ids = ImageGPTImageProcessor(**PROCESSOR_DICT)([grey, rgb]).input_ids
    assert ids.shape == (2, 18 * 18)
    np.testing.assert_array_equal(ids[0], ImageGPTImageProcessor(**PROCESSOR_DICT)(grey.convert("RGB")).input_ids[0])


def test_preprocess_arguments_named():
    processor = ImageGPTImageProcessor(**PROCESSOR_DICT)
    with pytest.raises(ValueError, match="unknown argument.*extra_argument"):
        processor(image_inputs(), extra_argument=True)
    with pytest.raises(ValueError, match="unknown argument.*extra_argument"):
        ImageGPTImageProcessor(**PROCESSOR_DICT, extra_argument=True)
    with pytest.raises(ValueError, match="return_tensors must be"):
        processor(image_inputs(), return_tensors="tf")
    with pytest.raises(ValueError, match="image_mean=.* is not supported"):
        processor(image_inputs(), image_mean=[0.4, 0.4, 0.4])
    # per-call overrides, as transformers' preprocess takes them
    out = processor.preprocess(image_inputs(), size={"height": 4, "width": 5}, do_color_quantize=False)
    assert out.pixel_values.shape == (BATCH, 3, 4, 5) and processor.size == {"height": 18, "width": 18}


def test_override_instance_attributes_does_not_affect_other_instances():
    first, second = ImageGPTImageProcessor(), ImageGPTImageProcessor()
    for key in first.size:
        first.size[key] = -1
    assert second.size == {"height": 32, "width": 32} and ImageGPTImageProcessor().size == {"height": 32, "width": 32}


def test_batch_feature_reads_by_key_and_attribute():
    enc = ImageGPTImageProcessor(**PROCESSOR_DICT)(image_inputs(numpify=True))
    assert isinstance(enc, BatchFeature) and enc["input_ids"] is enc.input_ids and list(enc) == ["input_ids"]
    with pytest.raises(AttributeError, match="it holds input_ids"):
        enc.pixel_values


def test_channels_first_batch_array_and_ambiguous_shape():
    images = image_inputs(seed=4, numpify=True, equal_resolution=True)[:2]  # [400, 400, 3] each
    processor = ImageGPTImageProcessor(**PROCESSOR_DICT)
    last = processor(np.stack(images)).input_ids  # [2, 400, 400, 3]
    first = processor(np.stack([im.transpose(2, 0, 1) for im in images])).input_ids  # [2, 3, 400, 400]
    np.testing.assert_array_equal(last, first)
    tiny = np.random.default_rng(5).integers(0, 255, (3, 5, 3), dtype=np.uint8)  # channels first or last?
    # ambiguous: read channels last (transformers reads it channels first); input_data_format decides
    np.testing.assert_array_equal(processor(tiny).input_ids, processor(tiny, input_data_format="channels_last").input_ids)
    np.testing.assert_array_equal(processor(tiny, input_data_format="channels_first").input_ids,
                                  processor(np.moveaxis(tiny, 0, -1)).input_ids)
