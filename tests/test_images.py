"""Image files read as transformers reads them, and never decoded past the memory there is.

- EXIF orientation: transformers' processor reads a path through `load_image`, which applies
  `PIL.ImageOps.exif_transpose`; a PIL image it takes as it is. Ours does the same, checked id for id
  against transformers' ImageGPTImageProcessorPil on oriented JPEGs and PNGs made here; `train --data`
  and `sample --prompt` read files through the same function.
- Every decode is bounded before it allocates: a huge source with a small target is read reduced (JPEG
  draft, PIL reduce); one that cannot fit is a one-line error naming it and its size; a row wider than PIL
  can decode is named, not a bare MemoryError; the processor's `size` is bounded like every other size.
  The huge cases run in a subprocess under RLIMIT_AS, as tests/test_limits.py does.
"""

import json
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import PIL.Image
import pytest

from minigpt_pixels import datasets, limits
from minigpt_pixels.palette import load_palette, palette_colors
from minigpt_pixels.images import EXACT_MAX_PIXELS, ImageError, check_image_file, image_file_size, read_image_file
from minigpt_pixels.processor import ImageGPTImageProcessor

LIMIT = 1_200_000_000  # bytes of address space, as in test_limits.py: the CLIs need about 0.5 GB to start
ORIENTATION = 0x0112  # the EXIF tag


@pytest.fixture(scope="module")
def clusters():
    return load_palette()


def gradient(height=24, width=40):
    """A smooth [H, W, 3] uint8 image that looks different turned or flipped and survives JPEG."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 250 // width, y * 250 // height, (x + y) * 120 // (width + height)], -1).astype(np.uint8)


def oriented(path, orientation, array=None):
    """Save `array` (default: `gradient()`) to `path` with EXIF orientation `orientation`."""
    exif = PIL.Image.Exif()
    exif[ORIENTATION] = orientation
    PIL.Image.fromarray(gradient() if array is None else array).save(path, exif=exif, quality=95)
    return path


# ---- EXIF orientation, as transformers applies it ------------------------------------------------------
@pytest.mark.live
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_oriented_files_agree_with_transformers(tmp_path, clusters, orientation, suffix):
    transformers = pytest.importorskip("transformers")
    path = str(oriented(tmp_path / f"photo{suffix}", orientation))
    size = {"height": 8, "width": 8}
    theirs = transformers.ImageGPTImageProcessorPil(clusters=clusters.tolist(), size=size)
    ours = ImageGPTImageProcessor(clusters=clusters, size=size)
    expected = theirs(path, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(ours(path)["input_ids"], expected)
    # a PIL image is taken as it is, EXIF or not, by both
    with PIL.Image.open(path) as im:
        as_stored = theirs(im, return_tensors="np")["input_ids"]
        np.testing.assert_array_equal(ours(im)["input_ids"], as_stored)
    if orientation != 1:  # the file really is read turned (the old code read it as stored)
        assert np.count_nonzero(expected != as_stored) > 8


@pytest.mark.parametrize("orientation, turned", [(1, False), (3, False), (6, True), (8, True)])
def test_files_are_read_upright_everywhere(tmp_path, clusters, orientation, turned):
    """The processor, load_image, train's reading and its size from the header all see the upright image:
    a quarter turn swaps the sides, and the pixels are PIL.ImageOps.exif_transpose's."""
    path = oriented(tmp_path / "photo.png", orientation)
    with PIL.Image.open(path) as im:
        upright = np.asarray(PIL.ImageOps.exif_transpose(im).convert("RGB"))
    assert upright.shape == ((40, 24, 3) if turned else (24, 40, 3))
    np.testing.assert_array_equal(read_image_file(path), upright)
    assert image_file_size(path) == datasets.image_size_of(str(path)) == upright.shape[:2]
    np.testing.assert_array_equal(datasets.read_image(str(path), (8, 8)), read_image_file(path, (8, 8)))
    processor = ImageGPTImageProcessor(clusters=clusters, size={"height": 8, "width": 8})
    np.testing.assert_array_equal(processor(str(path))["input_ids"], processor(upright)["input_ids"])


# ---- the processor's size ----------------------------------------------------------------------------------
def run_limited_code(code, limit=LIMIT):
    """Python `code` under an address-space limit of `limit` bytes -> (status, stdout, stderr)."""
    prefix = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
    r = subprocess.run([sys.executable, "-c", prefix + code], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def one_line_error(code, *needles, limit=LIMIT):
    """Run `code`, which prints `type: message` of what it raised; check it is one line holding `needles`."""
    status, out, err = run_limited_code(code, limit)
    assert status == 0 and "MemoryError" not in out + err, out + err
    line = out.strip()
    assert len(line.splitlines()) == 1, line
    for needle in needles:
        assert needle in line, line
    return line


RAISE = """
try:
    {call}
except Exception as e:
    print(type(e).__name__ + ": " + str(e))
else:
    print("no error")
"""


def test_a_huge_size_is_refused_before_any_allocation(tmp_path):
    """size=30000 resized an 8x8 image to 30000x30000 in float64 (OOM-killed at 23.5 GB); now the
    constructor, a config file holding it and a call's size= override are each one line."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": 30000, "do_color_quantize": False}))
    setup = "import numpy as np\nfrom minigpt_pixels.processor import ImageGPTImageProcessor as P\n"
    for call, needles in [
        ("P(size=30000, do_color_quantize=False)", ["SizeError", "size 30000x30000", "this machine's"]),
        (f"P.from_pretrained({str(tmp_path)!r})", ["preprocessor_config.json", "size 30000x30000"]),
        ("P(do_color_quantize=False)(np.zeros((8, 8, 3), np.uint8), size=30000)", ["size 30000x30000"]),
    ]:
        one_line_error(setup + RAISE.format(call=call), *needles)


def test_a_batch_too_big_for_memory_is_refused_before_reading_it():
    """Each image fits; a thousand of them at 512x512 do not: refused naming the count, before any is read."""
    line = one_line_error(
        "import numpy as np\nfrom minigpt_pixels.processor import ImageGPTImageProcessor as P\n"
        "images = [np.zeros((4, 4, 3), np.uint8)] * 1000\n"
        + RAISE.format(call="P(size=512, do_color_quantize=False)(images)"),
        "1,000 images of size 512x512 needs")
    assert line.startswith("SizeError")


def test_sizes_that_fit_are_kept():
    assert ImageGPTImageProcessor(size=1024, do_color_quantize=False).size == {"height": 1024, "width": 1024}
    assert limits.processed_bytes(1, 30000, 30000) > 50 * 10**9  # what the refusal above is about


# ---- huge sources -----------------------------------------------------------------------------------------
def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def flat_png(path, width, height, colour=(200, 120, 40), pixels=True):
    """An RGB (or, for a 1-tuple colour, grey) PNG of one colour, written row by row: any size in a few kB,
    never held in memory. With pixels=False only the header is right (for checks that must refuse it from
    the header alone)."""
    z = zlib.compressobj(1)
    kind = 2 if len(colour) == 3 else 0  # PNG colour type: RGB or grey
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, kind, 0, 0, 0)))
        if pixels:
            piece = bytes(colour) * min(width, 1 << 20)
            parts = []
            for _ in range(height):
                parts.append(z.compress(b"\x00"))
                for start in range(0, width, 1 << 20):
                    parts.append(z.compress(piece[: len(colour) * min(1 << 20, width - start)]))
            data = b"".join(parts) + z.flush()
        else:
            data = z.compress(b"\x00" * 16) + z.flush()
        f.write(_chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def huge_images(tmp_path_factory):
    """A 10000x10000 PNG, grey PNG and JPEG of one colour (100 M pixels: 400 MB decoded whole, more than PIL's
    89 M-pixel warning), a 80,000,000x1 PNG (below it, but 1.3 GB of resize tables) and a 170,000,000x1 PNG
    header (a row wider than PIL can decode)."""
    d = tmp_path_factory.mktemp("huge")
    flat_png(d / "big.png", 10_000, 10_000)
    flat_png(d / "grey.png", 10_000, 10_000, colour=(90,))
    with warnings.catch_warnings():  # PIL's warning from 89 M pixels on
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        with PIL.Image.open(d / "big.png") as im:  # made once here, outside any limit
            im.save(d / "big.jpg", quality=90)
    flat_png(d / "wide.png", 80_000_000, 1)
    flat_png(d / "row.png", 170_000_000, 1, pixels=False)
    return d


READ_IDS = """
import json, resource
from minigpt_pixels.palette import load_palette, palette_colors
from minigpt_pixels.processor import ImageGPTImageProcessor
processor = ImageGPTImageProcessor(clusters=load_palette(), size={{"height": 8, "width": 8}})
try:
    ids = processor({path!r})["input_ids"]
    # VmHWM, this process's own peak: getrusage's ru_maxrss keeps the forking parent's (pytest's) across exec
    peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) * 1024
    print(json.dumps(dict(ids=ids.tolist(), peak=peak)))
except Exception as e:
    print(json.dumps(dict(error=type(e).__name__ + ": " + str(e))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["big.png", "grey.png", "big.jpg"])
def test_a_huge_source_with_a_small_target_is_read_within_the_limit(huge_images, clusters, name):
    """The old code decoded the 100 M pixels whole and converted them twice: 1.4 to 2.3 GB for an 8x8
    result, a MemoryError under this limit. Read reduced (JPEG at 1/8 scale, PNG reduced after decoding, a
    grey one before its RGB conversion), every id is the flat colour's."""
    assert 10_000 * 10_000 > EXACT_MAX_PIXELS
    status, out, err = run_limited_code(READ_IDS.format(path=str(huge_images / name)))
    assert status == 0, err
    result = json.loads(out)
    assert "error" not in result, result["error"]
    ids = set(result["ids"][0])
    assert len(ids) == 1, ids  # one colour throughout
    if name.endswith(".png"):  # lossless: exactly the colour's id
        colour = (200, 120, 40) if name == "big.png" else (90, 90, 90)
        expected = ImageGPTImageProcessor(clusters=clusters, size=1)(np.full((1, 1, 3), colour, np.uint8))
        assert ids == {int(expected["input_ids"][0, 0])}
    else:  # JPEG moves the colour a little: its palette colour is still near it
        assert np.abs(palette_colors(clusters)[ids.pop()].astype(int) - (200, 120, 40)).max() <= 16
    assert result["peak"] < LIMIT


def test_an_image_that_cannot_fit_is_one_line_naming_it_and_its_size(huge_images):
    """80,000,000x1 is below the reduced-reading threshold: read whole, its resize tables alone are 1.3 GB.
    Refused from the header, before any decoding (the old code raised MemoryError inside PIL)."""
    path = str(huge_images / "wide.png")
    line = json.loads(run_limited_code(READ_IDS.format(path=path))[1])["error"]
    assert line.startswith("SizeError: image ") and f"{path} (80000000x1 pixels) needs" in line, line
    assert "memory available" in line and "--num-samples" not in line


def test_a_row_wider_than_pil_decodes_is_named_not_a_bare_memory_error(huge_images):
    path = huge_images / "row.png"
    for read in (lambda: read_image_file(path, (8, 8)), lambda: read_image_file(path),
                 lambda: ImageGPTImageProcessor(do_color_quantize=False)(str(path))):
        with pytest.raises(ImageError, match=r"row.png \(170000000x1 pixels\): rows of 170,000,000 pixels are wider "
                                             r"than PIL can decode \(at most 89,478,477 for mode RGB\)"):
            read()


def test_sample_prompt_too_big_is_refused_before_the_model_loads(huge_images, tmp_path):
    """The old pre-check counted 7 bytes a pixel, let this through, and then said "try a smaller --num-samples"."""
    argv = ["sample", "--prompt", str(huge_images / "wide.png"), "--out", str(tmp_path / "x.png"), "--no-progress"]
    code = f"import runpy, sys; sys.argv = {argv!r}; runpy.run_module('minigpt_pixels.sample', run_name='__main__')"
    status, out, err = run_limited_code(code)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err and "MemoryError" not in err, err
    assert "wide.png (80000000x1 pixels) needs" in lines[0] and "--num-samples" not in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_the_checks_decode_nothing(huge_images):
    """check_image_file and image_file_size read the header only: instant on 100 M pixels, in-process."""
    check_image_file(huge_images / "big.png", (8, 8))
    assert image_file_size(huge_images / "big.jpg") == (10_000, 10_000)


def test_an_image_kept_at_its_own_size_is_bounded_like_a_size():
    """do_resize=False: the float arrays of a 20000x20000 image (25 GB) are refused naming it, before any is
    made (the old code allocated them until the MemoryError)."""
    one_line_error("import numpy as np\nfrom minigpt_pixels.processor import ImageGPTImageProcessor as P\n"
                   "image = np.zeros((20000, 20000, 3), np.uint8)\n"
                   + RAISE.format(call="P(do_resize=False, do_color_quantize=False)(image)"),
                   "SizeError: image 0 at its own size 20000x20000 (do_resize=False) needs", limit=3_000_000_000)
