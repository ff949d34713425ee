"""Every size a user gives is bounded before it is allocated: under a memory limit (RLIMIT_AS, set in a
subprocess), huge config fields, --num-samples, --image-size and photos give a one-line error naming
the value, or, for photos, train within the limit, instead of a MemoryError traceback or minutes of work."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import minigpt_pixels
from minigpt_pixels import checkpoints, datasets, limits, sample, train
from minigpt_pixels.config import ConfigError, ImageGPTConfig
from minigpt_pixels.model import ImageGPTForCausalImageModeling, KVCache
from minigpt_pixels.processor import ImageGPTImageProcessor

LIMIT = 1_200_000_000  # bytes of address space: the CLIs need about 0.5 GB of it to start


def run_limited(module, *args, limit=LIMIT, cwd=None):
    """`python -m module args` with its address space limited to `limit` bytes -> (status, stderr)."""
    code = ("import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
            f"sys.argv = {[module, *map(str, args)]!r}; "
            f"runpy.run_module({module!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    return r.returncode, r.stderr


def refused(result, *needles):
    code, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and "MemoryError" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def huge_config_dirs(tmp_path_factory):
    """The default model's config.json with 10^6 or 10^7 blocks: 444 GB and 4.4 TB of weights (no weights
    are written: none could exist)."""
    dirs = {}
    processor = ImageGPTImageProcessor.from_pretrained(minigpt_pixels.DEFAULT_MODEL)
    for n_layer in (10**6, 10**7):
        d = tmp_path_factory.mktemp(f"layers_{n_layer}_")
        config = ImageGPTConfig.from_pretrained(minigpt_pixels.DEFAULT_MODEL).to_dict()
        (d / "config.json").write_text(json.dumps({**config, "n_layer": n_layer}))
        processor.save_pretrained(d)
        dirs[n_layer] = d
    return dirs


# ---- config fields ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_layer", [10**6, 10**7])
def test_a_config_with_a_million_layers_is_refused_at_once(n_layer, huge_config_dirs, tmp_path):
    """The old code spent 29 s and 2.4 GB on 10^6 before "missing tensor", and raised MemoryError on 10^7."""
    d = huge_config_dirs[n_layer]
    refused(run_limited("minigpt_pixels.sample", "--model", d, "--out", tmp_path / "x.png", "--no-progress"),
            f"n_layer={n_layer}", "config.json")
    refused(run_limited("minigpt_pixels.train", "--finetune-from", d, "--out", tmp_path / "r", "--no-progress"),
            f"n_layer={n_layer}")
    assert os.listdir(tmp_path) == []


def test_config_sizes_are_refused_in_process(huge_config_dirs):
    with pytest.raises(ConfigError, match="n_layer=1000000"):
        ImageGPTForCausalImageModeling.from_pretrained(huge_config_dirs[10**6])
    with pytest.raises(ConfigError, match="num_labels=1000000000"):
        ImageGPTConfig(num_labels=10**9)  # before its 10^9 label names are made
    with pytest.raises(ConfigError, match="n_positions=10000000000"):
        ImageGPTConfig(n_positions=10**10)
    ImageGPTConfig.igpt_l()  # 1.4B parameters: a real model fits (tests run without a memory limit)


def test_the_parameter_count_is_the_models():
    for cfg in (ImageGPTConfig(vocab_size=9, n_positions=36, n_embd=16, n_layer=2, n_head=2),
                ImageGPTConfig(vocab_size=5, n_positions=16, n_embd=8, n_layer=1, n_head=2, n_inner=12,
                               add_cross_attention=True)):
        assert limits.parameter_count(cfg) == ImageGPTForCausalImageModeling(cfg, seed=0).num_parameters
        cache = KVCache(cfg, 3)
        assert limits.kv_cache_bytes(cfg, 3, cfg.n_positions) == sum(a.nbytes for a in cache.keys + cache.values)


def test_a_kv_cache_larger_than_memory_is_refused_before_allocating():
    cfg = ImageGPTConfig(vocab_size=9, n_positions=36, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(limits.SizeError, match="a KV cache for 1,000,000,000,000 sequences needs"):
        KVCache(cfg, 10**12)


# ---- sample --num-samples --------------------------------------------------------------------------------------
def test_a_billion_samples_are_refused_before_sampling(tmp_path):
    """The old code allocated the KV cache of every sample at once: 18 GiB for 10^5, MemoryError for 10^9."""
    refused(run_limited("minigpt_pixels.sample", "--num-samples", 10**9, "--out", tmp_path / "x.png", "--no-progress"),
            "--num-samples 1,000,000,000")
    assert os.listdir(tmp_path) == []


def test_many_samples_are_drawn_in_chunks_of_bounded_memory(monkeypatch):
    """A chunk's KV cache, not the whole batch's: and the first chunk is the batch it would have been."""
    import tracemalloc

    cfg = ImageGPTConfig(vocab_size=9, n_positions=16, n_embd=64, n_layer=2, n_head=2)
    model = ImageGPTForCausalImageModeling(cfg, seed=0).to("numpy")
    greys = np.linspace(-1, 1, 8, dtype=np.float32)
    processor = ImageGPTImageProcessor(clusters=np.stack([greys] * 3, axis=1), size={"height": 4, "width": 4})
    monkeypatch.setattr(sample, "MAX_CHUNK", 32)
    n = 400
    tracemalloc.start()
    images = sample.sample_in_chunks(model, processor, n, seed=3, progress=False, stats={}, top_k=4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert images.shape == (n, 4, 4, 3) and images.dtype == np.uint8
    assert peak < limits.kv_cache_bytes(cfg, n, cfg.n_positions) / 2  # one cache for all 400 is 6.6 MB
    first = sample.sample_in_chunks(model, processor, 32, seed=3, progress=False, stats={}, top_k=4)
    np.testing.assert_array_equal(images[:32], first)


# ---- train --image-size, photos ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1024, 100000])
def test_huge_image_sizes_are_refused_before_any_work(size, tmp_path):
    """The old code ran 84 s and then asked for 16 TiB (1024), or died in PIL's resize (100000)."""
    refused(run_limited("minigpt_pixels.train", "--image-size", size, "--out", tmp_path / "r", "--no-progress"),
            f"--image-size {size}")
    assert os.listdir(tmp_path) == []


def test_a_million_layers_from_the_command_line(tmp_path):
    refused(run_limited("minigpt_pixels.train", "--n-layer", 10**6, "--out", tmp_path / "r", "--no-progress"),
            "--n-layer 1000000")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three 64-megapixel JPEG photos: 192 MB each decoded whole, more than the limit holds for three."""
    d = tmp_path_factory.mktemp("photos")
    Image.new("RGB", (8000, 8000), (200, 120, 40)).save(d / "a.jpg", quality=50)
    for name, colour in (("b.jpg", (30, 60, 200)), ("c.jpg", (90, 200, 90))):
        Image.new("RGB", (8000, 8000), colour).save(d / name, quality=50)
    return d


def test_photos_are_resized_as_they_are_read(photos, tmp_path):
    """With --image-size the photos decode at 1/8 scale and train within the limit."""
    code, err = run_limited("minigpt_pixels.train", "--data", photos, "--image-size", 4, "--n-colors", 2,
                            "--out", tmp_path / "r", "--steps", 1, "--batch-size", 2, "--n-embd", 8, "--n-layer", 1,
                            "--n-head", 2, "--no-progress", "--threads", 1)
    assert code == 0, err
    assert checkpoints.latest_checkpoint(str(tmp_path / "r"))


def test_photos_at_their_own_size_are_refused_before_decoding(photos, tmp_path):
    refused(run_limited("minigpt_pixels.train", "--data", photos, "--out", tmp_path / "r", "--no-progress"),
            "images of 8000x8000")


def test_read_image_matches_the_processor_for_other_formats(tmp_path):
    """Resizing as read gives the pixels the processor would make from the whole image (PNG: no draft)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    processor = ImageGPTImageProcessor(size={"height": 8, "width": 8}, do_color_quantize=False)
    np.testing.assert_array_equal(processor(datasets.read_image(str(tmp_path / "x.png"), (8, 8)))["pixel_values"],
                                  processor(str(tmp_path / "x.png"))["pixel_values"])


# ---- MemoryError and RecursionError are one line in every CLI -----------------------------------------------
@pytest.mark.parametrize("error", [MemoryError("Unable to allocate 16.0 TiB for an array"),
                                   RecursionError("maximum recursion depth exceeded")])
def test_memory_and_recursion_errors_are_one_line(error, tmp_path, monkeypatch, capsys):
    from minigpt_pixels import convert

    def fail(*a, **kw):
        raise error

    monkeypatch.setattr(sample, "run", fail)
    monkeypatch.setattr(train, "run", fail)
    monkeypatch.setattr(convert, "convert", fail)
    for main, argv in ((sample.main, ["--out", str(tmp_path / "x.png")]), (train.main, ["--out", str(tmp_path)]),
                       (convert.main, [str(tmp_path)])):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(error) in err, err
