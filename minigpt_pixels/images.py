"""Images in: arrays, PIL images and image files to RGB uint8 [H, W, 3], as transformers reads them.

Files are read upright (their EXIF orientation applied, as transformers' `load_image` does) and what decoding
them costs is reckoned from the header and bounded before any pixel is decoded (`limits`). The processor
(processor.py) takes it from there: resize, rescale, normalise, quantize.
"""

import contextlib
import os
import warnings
from typing import NamedTuple

import numpy as np
import PIL.Image
import PIL.ImageOps

from . import limits


class ImageError(ValueError):
    """An image that cannot be read or used; the message names the file or the image's place in the batch."""


def _is_wide(mode):
    """16- and 32-bit integer greys ("I;16...", "I") and float grey ("F"): read as arrays, not PIL RGB."""
    return mode.startswith("I") or mode == "F"


def _pil_rgb(im):
    """A PIL image of an 8-bit mode -> the same as a PIL "RGB" image (no copy when it already is one)."""
    if "A" in im.getbands() or "transparency" in im.info:
        # transparency composited onto white, as transformers' convert_to_rgb does
        return PIL.Image.alpha_composite(PIL.Image.new("RGBA", im.size, (255, 255, 255, 255)),
                                         im.convert("RGBA")).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _pil_to_array(im, name):
    """A PIL image of any mode -> [H, W, 3] uint8, [H, W] uint16 (16-bit grey) or [H, W] float32 ("F")."""
    if im.mode.startswith("I"):  # "I;16..." 16-bit greys, or "I" (32-bit), which some 16-bit files open as
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"{name}: 32-bit integer image with values in [{a.min()}, {a.max()}], outside 16 bits")
        return a.astype(np.uint16)  # scaled to 8 bits in `_array_to_rgb`; PIL's convert would clip at 255
    if im.mode == "F":
        return np.asarray(im)  # float grey: must be in [0, 1], checked in `_array_to_rgb`
    return np.asarray(_pil_rgb(im))


def _channels_last(a, name, data_format=None):
    """A 3-D image array with its channels last. Channels first ([C, H, W], as torch tensors come) is
    recognised when the last axis cannot be channels (C in 1, 3, 4) and the first can; an ambiguous shape
    ((1, W, 3): one row, or one channel?) is read channels last, as this package always has (transformers
    reads it channels first), unless data_format ("channels_first" or "channels_last") says which."""
    if data_format not in (None, "channels_first", "channels_last"):
        raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
    if a.ndim != 3:
        return a
    if data_format is None:
        first = a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4)
    else:
        first = data_format == "channels_first"
    return np.moveaxis(a, 0, -1) if first else a


def _array_to_rgb(a, name, data_format=None):
    """[H, W], [H, W, C] or [C, H, W] array (C = 1, 3 or 4) -> [H, W, 3] uint8, or float32 in [0, 1] for float input."""
    if a.ndim == 2:
        a = a[:, :, None]
    a = _channels_last(a, name, data_format)
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ImageError(
            f"{name}: expected an (H, W) array or (H, W, C) / (C, H, W) with C = 1, 3 or 4 channels, got shape "
            f"{a.shape} (a batch of grey images is a list of (H, W) arrays)"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{name} has zero height or width (shape {a.shape})")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageError(f"{name} contains NaN or infinite values")
        if a.min() < 0 or a.max() > 1:
            raise ImageError(f"{name}: float images must be in [0, 1], got values in [{a.min():g}, {a.max():g}]")
        a = a.astype(np.float32)
    elif a.dtype == np.uint16:
        a = np.rint(a / 257).astype(np.uint8)  # 16-bit to 8-bit: 65535 -> 255, 257 * v -> v
    elif np.issubdtype(a.dtype, np.integer) and a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise ImageError(
                f"{name}: integer images must be in [0, 255] (or uint16), got values in [{a.min()}, {a.max()}]"
            )
        a = a.astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported dtype {a.dtype}; give uint8, uint16, or floats in [0, 1]")
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 4:  # composite onto white with transformers' formula for arrays
        white = 255 if a.dtype == np.uint8 else 1.0
        alpha = a[..., 3:] / white
        rgb = alpha * a[..., :3] + (1 - alpha) * white
        return np.round(rgb).astype(np.uint8) if white == 255 else rgb.astype(np.float32)
    return a


def load_image(image, name="image", input_data_format=None):
    """One image -> RGB [H, W, 3], uint8 or (for float input) float32 in [0, 1].

    `image` is a file path (str or os.PathLike), a PIL image of any mode, or a NumPy array:
    [H, W] or [H, W, 1] grey, [H, W, 3] RGB or [H, W, 4] RGBA (or channels first, [C, H, W], as torch
    tensors come; `input_data_format` settles an ambiguous shape), of dtype uint8, uint16 (16-bit),
    another integer type holding 0..255, or float in [0, 1]. Unlike transformers, grey, RGBA,
    palette-mode ("P") and 16-bit images are converted to RGB instead of failing: transparency is
    composited onto white (as transformers' `do_convert_rgb` does) and 16 bits become 8 by v / 257.
    Raises ImageError naming `name` (or the path) for anything it cannot read or use.

    A file is read as transformers' `load_image` reads it: turned upright by its EXIF orientation (see
    `read_image_file`). A PIL image is taken as it is, as transformers' processor takes it: its EXIF
    orientation is not applied (`PIL.ImageOps.exif_transpose(image)` first does that).
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image_file(image)
    if isinstance(image, PIL.Image.Image):
        try:
            array = _pil_to_array(image, name)
        except (OSError, SyntaxError, EOFError, ValueError) as e:
            raise ImageError(f"cannot convert {name} (PIL mode {image.mode}) to RGB: {e}") from e
    elif hasattr(image, "__array__"):  # NumPy arrays, and torch tensors on the CPU
        return _array_to_rgb(np.asarray(image), name, input_data_format)
    else:
        raise ImageError(f"{name}: expected a file path, a PIL image or an array, got {type(image).__name__}")
    return _array_to_rgb(array, name, "channels_last")  # decoded by PIL: channels last, whatever the shape


def resize(image, height, width, resample=PIL.Image.Resampling.BILINEAR):
    """RGB [H, W, 3] uint8 or float in [0, 1] -> [height, width, 3] uint8 by PIL, as transformers resizes.

    transformers hands PIL a uint8 image; a float image in [0, 1] is first multiplied by 255 (in
    float64, rounded to float32) and truncated, not rounded, to uint8. We do the same so the ids agree.
    """
    if image.dtype != np.uint8:
        image = (image.astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
    return np.asarray(PIL.Image.fromarray(image).resize((width, height), resample=resample))


# ---- image files: upright, and their decoding bounded before it allocates ----------------------------------
# EXIF orientation (tag 0x0112) -> the transpose that makes the image upright, PIL.ImageOps.exif_transpose's
# table; 5 to 8 are quarter turns, which swap width and height.
_UPRIGHT = {2: PIL.Image.Transpose.FLIP_LEFT_RIGHT, 3: PIL.Image.Transpose.ROTATE_180,
            4: PIL.Image.Transpose.FLIP_TOP_BOTTOM, 5: PIL.Image.Transpose.TRANSPOSE,
            6: PIL.Image.Transpose.ROTATE_270, 7: PIL.Image.Transpose.TRANSVERSE, 8: PIL.Image.Transpose.ROTATE_90}
# Above this many pixels PIL itself warns of a possible decompression bomb. Such a source with a small target
# is read reduced (a JPEG decoded at 1/2, 1/4 or 1/8 scale by Image.draft, any format then shrunk by
# Image.reduce to REDUCING_GAP times the target before the resize), so it costs memory by the target, not the
# source; its pixels then differ slightly from transformers', which decodes it whole. Every smaller image is
# read whole, exactly as transformers reads it.
EXACT_MAX_PIXELS = 89_478_485
REDUCING_GAP = 3  # PIL's advice for resize(reducing_gap=): 3 is indistinguishable from resampling the whole
_REDUCE_AS_STORED = ("L", "RGB")  # modes reduced before their RGB conversion (others: palettes, alpha, after)
_SUPPORT = {0: 0.0, 4: 0.5, 2: 1.0, 5: 1.0, 3: 2.0, 1: 3.0}  # resample filter -> its support, in source pixels


@contextlib.contextmanager
def _opened(name):
    """PIL.Image.open(name), its errors (opening or, within the block, decoding) one ImageError naming the
    file. Without PIL's warning from 89 M pixels on: what such an image costs is reckoned and bounded here
    instead (`_plan`); above twice that, PIL refuses it (DecompressionBombError, reported as the others)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(name) as im:
                yield im
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {name}") from e
    except (OSError, SyntaxError, EOFError, PIL.Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image file {name}: {e}") from e


def _orientation(im):
    """The EXIF orientation of an opened image, 1 (as stored) when it has none or a damaged one."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # PIL's PngImageFile.getexif() decodes the whole image to look for an eXIf chunk after the pixels
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: read the pixels as stored
        return 1
    return value if value in _UPRIGHT else 1


def _reduce_factors(width, height, target_width, target_height):
    """Image.reduce's (x, y) factors that leave at least REDUCING_GAP times the target on each side."""
    return (max(1, width // (REDUCING_GAP * target_width)), max(1, height // (REDUCING_GAP * target_height)))


class _Plan(NamedTuple):
    """How an opened image file will be read: found from its header, before anything is decoded."""
    orientation: int  # EXIF orientation, 1 to 8 (1: as stored)
    reduce: tuple | None  # Image.reduce's (x, y) factors, or None to resize the whole image
    nbytes: int  # the reading's peak memory
    what: str  # "image PATH (WxH pixels)", for messages


def _plan(im, name, size, resample, draft):
    """Plan reading the opened image file `im` to size=(height, width) (None: its own size), setting a
    JPEG's draft scale where it pays (see EXACT_MAX_PIXELS). The cost counts PIL's decoded image, the
    decoder's row buffers, the RGB conversion (16-bit and float greys: a uint16 and a float64 array instead),
    the reduced and the upright copies, then PIL's resize or, with no target, the [H, W, 3] array and its bytes."""
    width, height = im.size
    what = f"image {name} ({width}x{height} pixels)"
    # PIL's decoders count a row's bits in a C int: a wider row fails in PIL as a bare MemoryError
    bits = 32 if im.mode in ("I", "F") else 16 if im.mode.startswith("I;16") else 8 * len(im.getbands())
    if width > (2**31 - 1) // bits - 8:
        raise ImageError(f"{what}: rows of {width:,} pixels are wider than PIL can decode "
                         f"(at most {(2**31 - 1) // bits - 8:,} for mode {im.mode})")
    orientation = _orientation(im)
    turned = orientation in (5, 6, 7, 8)  # a quarter turn: the target's sides swap in the stored image
    stored = None if size is None else (size[::-1] if turned else size)  # (h, w) as stored
    large = size is not None and width * height > EXACT_MAX_PIXELS
    if stored is not None and (draft or large):
        im.draft(None, (stored[1], stored[0]))  # JPEG only: decoded at 1/2, 1/4 or 1/8 scale, at least the target
    width, height = im.size
    factors = _reduce_factors(width, height, stored[1], stored[0]) if large and not _is_wide(im.mode) else (1, 1)
    pixels = width * height
    if _is_wide(im.mode):
        convert = 2 + 8 + 3  # uint16 array, its float64 division, the uint8 result
    elif "A" in im.getbands() or "transparency" in im.info:
        convert = 16  # RGBA copy, white RGBA, the composite, its RGB
    else:
        convert = 0 if im.mode == "RGB" else 4
    kept_w, kept_h = -(-width // factors[0]), -(-height // factors[1])  # after any reduce
    if factors != (1, 1) and im.mode in _REDUCE_AS_STORED:
        convert = convert * kept_w * kept_h // pixels  # the conversion comes after the reduce
    # the decoded image and its conversion, kept throughout; while decoding, the decoder's row buffers (a PNG's:
    # two rows); after it, the reduced and upright copies, and the resize or the array
    later = (4 * kept_w * kept_h if factors != (1, 1) else 0) + (4 * kept_w * kept_h if orientation != 1 else 0)
    if size is None:
        later += 6 * pixels
    else:
        in_h, in_w = (kept_w, kept_h) if turned else (kept_h, kept_w)
        later += limits.resize_bytes(in_h, in_w, size[0], size[1], _SUPPORT.get(resample, 3.0))
    nbytes = pixels * (limits.pil_pixel_bytes(im.mode) + convert) + max(width * bits // 4, later)
    return _Plan(orientation, factors if factors != (1, 1) else None, nbytes, what)


def read_image_file(path, size=None, resample=PIL.Image.Resampling.BILINEAR, draft=False):
    """An image file -> RGB [H, W, 3] uint8 (float32 in [0, 1] for a float "F" image), upright, resized to
    size=(height, width) when given as the processor resizes, all as transformers reads the file.

    Upright: the EXIF orientation (a phone photo's tag 0x0112) is applied, as transformers' `load_image`
    applies it (PIL.ImageOps.exif_transpose), before any resize. Bounded: what decoding and converting the
    image will cost is reckoned from its header and checked against the memory available before a pixel is
    decoded; a source of more than EXACT_MAX_PIXELS with a small target is read reduced (see there).
    `draft` decodes a JPEG at the smallest of 1/2, 1/4 and 1/8 scale still at least the target, whatever its
    size (train's choice: memory by the training size; the pixels differ slightly from a whole decode).
    Raises ImageError naming the file for one missing or unreadable, limits.SizeError naming it and its size
    for one this machine cannot decode now.
    """
    name = os.fspath(path)
    size = None if size is None else (int(size[0]), int(size[1]))
    with _opened(name) as im:
        plan = _plan(im, name, size, resample, draft)
        limits.check_bytes(plan.nbytes, plan.what)
        try:
            im.load()  # PIL opens lazily: a truncated file only fails here
            if _is_wide(im.mode):
                rgb = _array_to_rgb(_pil_to_array(im, name), name, "channels_last")  # [H, W, 3]
                if plan.orientation != 1:
                    rgb = np.asarray(PIL.Image.fromarray(rgb).transpose(_UPRIGHT[plan.orientation]))
                return rgb if size is None else resize(rgb, size[0], size[1], resample)
            if plan.reduce and im.mode in _REDUCE_AS_STORED:
                rgb = _pil_rgb(im.reduce(plan.reduce))  # a grey image is reduced before it is made RGB
            else:
                rgb = _pil_rgb(im)  # a PIL RGB image, as stored
                rgb = rgb.reduce(plan.reduce) if plan.reduce else rgb
            if plan.orientation != 1:
                rgb = rgb.transpose(_UPRIGHT[plan.orientation])  # upright, before the resize as in transformers
            if size is not None:
                rgb = rgb.resize((size[1], size[0]), resample=resample)  # `resize`, without its array copy
            return np.asarray(rgb)  # [h, w, 3] uint8
        except MemoryError:  # the estimate fell short: still one line naming the image
            raise limits.SizeError(f"{plan.what}: out of memory decoding it") from None


def image_file_size(path):
    """(height, width) of an image file as `read_image_file` reads it (upright), from its header alone."""
    with _opened(os.fspath(path)) as im:
        width, height = im.size
        return (width, height) if _orientation(im) in (5, 6, 7, 8) else (height, width)


def check_image_file(path, size=None, resample=PIL.Image.Resampling.BILINEAR):
    """Raise limits.SizeError, naming the file and its size, if `read_image_file(path, size, resample)` could
    not decode it in the memory available now; decodes nothing. An unreadable file passes: reading it says why."""
    name = os.fspath(path)
    try:
        with _opened(name) as im:
            plan = _plan(im, name, size, resample, draft=False)
    except ImageError:
        return
    limits.check_bytes(plan.nbytes, plan.what)
