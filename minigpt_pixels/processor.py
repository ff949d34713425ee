"""Images to palette tokens and back: `ImageGPTImageProcessor`, mirroring transformers'.

Each image goes through the same steps, in the same order and dtypes, as transformers'
`ImageGPTImageProcessorPil`, so the token ids agree one for one:

    load, convert to RGB             -> [H, W, 3] uint8 (or float32 in [0, 1])
    PIL resize (bilinear by default) -> [h, w, 3] uint8
    rescale x * (1/255)              -> float32 in [0, 1] (multiplied in float64, then rounded)
    normalise (x - 0.5) / 0.5        -> float32 in [-1, 1], the space the palette lives in
    nearest palette colour           -> ids [h * w] int64, row-major

The processor does NOT prepend the start-of-sequence token (id vocab_size - 1 = 512 for the
OpenAI checkpoints); add it before feeding the ids to the causal LM, as transformers' example does.
"""

import contextlib
import json
import os
import warnings
from typing import NamedTuple

import numpy as np
import PIL.Image
import PIL.ImageOps

from . import limits
from .config import refuse_hub_arguments, make_save_directory
from .palette import check_clusters, dequantize, quantize
from .weights import atomic_write_bytes

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

# Steps transformers can switch or tune but iGPT always uses as below; a config asking otherwise is refused.
_FIXED_STEPS = {
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "image_mean": (0.5, 0.5, 0.5),
    "image_std": (0.5, 0.5, 0.5),
}


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


def rescale(image):
    """uint8 [..., 3] -> float32 in [0, 1]: x * (1/255) in float64, rounded to float32, as transformers does."""
    return (image.astype(np.float64) * (1 / 255)).astype(np.float32)


def normalize(image):
    """float32 in [0, 1] -> float32 in [-1, 1]: (x - 0.5) / 0.5, iGPT's mean and std for every channel."""
    return (image - np.float32(0.5)) / np.float32(0.5)


def pixels_from_images(images):
    """Images (anything `load_image` takes) at their own size -> [N, 3] float32 pixels in [-1, 1].

    The pixels a palette is fitted to: rescaled and normalised exactly as the processor does, not resized.
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    pixels = []
    for i, image in enumerate(images):
        rgb = load_image(image, name=f"image {i}")
        pixels.append(normalize(rgb if rgb.dtype == np.float32 else rescale(rgb)).reshape(-1, 3))
    return np.concatenate(pixels)


def _size_dict(size):
    """int or {"height": h, "width": w} -> {"height": h, "width": w} of positive ints, bounded like every
    size (limits.py): one image of it must fit this machine's memory, so `size=30000` (or a typo in
    preprocessor_config.json) is a one-line error here, not a 30000x30000 float64 image later."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = {"height": int(size), "width": int(size)}  # hub configs store a square size as one int
    if not isinstance(size, dict) or set(size) != {"height", "width"}:
        raise ValueError(f'size must be an int or {{"height": h, "width": w}}, got {size!r}')
    for value in size.values():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"size must hold positive integers, got {size!r}")
    height, width = int(size["height"]), int(size["width"])
    nbytes, budget = limits.processed_bytes(1, height, width), limits.machine_memory()
    if nbytes > budget:
        raise limits.SizeError(f"size {height}x{width}: one image of it needs {limits.fmt_bytes(nbytes)} to process, "
                               f"more than this machine's {limits.fmt_bytes(budget)} of memory")
    return {"height": height, "width": width}


def _same_numbers(a, b):
    """Whether a config value equals iGPT's (a scalar 0.5 counts as [0.5, 0.5, 0.5], as in transformers)."""
    try:
        return bool(np.allclose(np.asarray(a, dtype=np.float64), b, rtol=1e-6, atol=0))
    except (TypeError, ValueError):
        return False


class BatchFeature(dict):
    """The processor's output, as transformers' BatchFeature: a dict that also reads by attribute
    (`enc.input_ids`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchFeature has no {name!r}; it holds {', '.join(self)}") from None


def _as_tensors(data, return_tensors):
    """{"input_ids": array} -> the same as NumPy arrays (None / "np") or torch tensors ("pt")."""
    if return_tensors in (None, "np"):
        return BatchFeature(data)
    if return_tensors == "pt":
        try:
            import torch  # optional: only this conversion needs it
        except ImportError:
            raise ValueError('return_tensors="pt" needs torch, which is not installed; use "np"') from None
        return BatchFeature({k: torch.from_numpy(v) for k, v in data.items()})
    raise ValueError(f'return_tensors must be None, "np" or "pt", got {return_tensors!r}')


# Keys transformers writes into preprocessor_config.json that describe no step of ours; read and ignored.
_IGNORED_KEYS = ("image_processor_type", "feature_extractor_type", "processor_class", "do_convert_rgb",
                 "data_format", "input_data_format", "default_to_square", "crop_size", "do_center_crop",
                 "do_pad", "pad_size", "size_divisor", "backend")


class ImageGPTImageProcessor:
    """Images -> palette ids (or normalised pixels) and ids -> images, as transformers' ImageGPTImageProcessor.

    processor = ImageGPTImageProcessor(clusters=load_palette())        # or .from_pretrained(model_dir)
    ids = processor(images).input_ids       # int64 [batch, height * width], WITHOUT the SOS token
    images = processor.decode(ids)          # uint8 [batch, height, width, 3]

    `images` is one image or a list of them (file paths, PIL images, arrays or CPU tensors, channels
    last or first: see `load_image`), or a [B, H, W, C] / [B, C, H, W] batch. A file that is missing,
    unreadable or truncated, an empty image, a NaN or out-of-range float image raises ImageError
    naming it. Differences from transformers, all deliberate:
    - grey, RGBA, palette-mode and 16-bit images are converted to RGB (transformers fails on them);
    - float images in [0, 1] are taken as already rescaled, i.e. what transformers does when called
      with do_rescale=False (with its default it would divide them by 255 a second time), and any
      float image is processed in float32;
    - ids are the true nearest colour (see `palette.quantize`), which is what transformers computes
      for clusters loaded from JSON (float64); given float32 clusters, its own float32 arithmetic can
      pick the other of two nearly equidistant colours;
    - the default size is iGPT's 32x32 (transformers' class default is 256x256; both read a file alike).
    Without color quantization it returns {"pixel_values": float32 [batch, 3, height, width]},
    channels first, as transformers does.
    """

    model_input_names = ["input_ids"]

    def __init__(
        self,
        clusters=None,
        size={"height": 32, "width": 32},  # never mutated: _size_dict copies it
        resample=PIL.Image.Resampling.BILINEAR,
        do_resize=True,
        do_normalize=True,
        do_color_quantize=True,
        **kwargs,
    ):
        _check_fixed_steps("", kwargs)
        unknown = [k for k in kwargs if k not in _IGNORED_KEYS]
        if unknown:
            raise ValueError(f"ImageGPTImageProcessor: unknown argument(s) {', '.join(unknown)}")
        # clusters: [K, 3] palette in [-1, 1]; None is allowed until the processor has to quantize
        self.clusters = None if clusters is None else check_clusters(clusters, n_channels=3)
        self.size = _size_dict(size)
        self.resample = _resample(resample)
        self.do_resize, self.do_normalize, self.do_color_quantize = _flags(
            do_resize=do_resize, do_normalize=do_normalize, do_color_quantize=do_color_quantize)

    def __repr__(self):
        palette = "None" if self.clusters is None else f"<{len(self.clusters)} colours>"
        return (
            f"ImageGPTImageProcessor(clusters={palette}, size={self.size}, resample={self.resample}, "
            f"do_resize={self.do_resize}, do_normalize={self.do_normalize}, do_color_quantize={self.do_color_quantize})"
        )

    def preprocess_one(self, image, name="image", input_data_format=None, do_resize=None, size=None, resample=None,
                       do_normalize=None):
        """One image -> float32 [height, width, 3]: load, resize, rescale, normalise (no quantizing)."""
        do_resize = self.do_resize if do_resize is None else do_resize
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        size = self.size if size is None else size
        resample = self.resample if resample is None else resample
        if isinstance(image, (str, os.PathLike)):  # a file: read upright, resized as it is read, bounded
            rgb = read_image_file(image, (size["height"], size["width"]) if do_resize else None, resample)
        else:
            rgb = load_image(image, name, input_data_format)  # [H, W, 3]
            if do_resize:
                rgb = resize(rgb, size["height"], size["width"], resample)
        if not do_resize:  # at its own size: its float arrays bounded as a `size` of it would be
            what = os.fspath(image) if isinstance(image, (str, os.PathLike)) else name
            limits.check_bytes(limits.processed_bytes(1, *rgb.shape[:2]),
                               f"{what} at its own size {rgb.shape[0]}x{rgb.shape[1]} (do_resize=False)")
        pixels = rgb if rgb.dtype == np.float32 else rescale(rgb)  # floats in [0, 1] are already rescaled
        return normalize(pixels) if do_normalize else pixels

    def preprocess(self, images, return_tensors=None, do_resize=None, size=None, resample=None, do_normalize=None,
                   do_color_quantize=None, clusters=None, input_data_format=None, data_format="channels_first",
                   **kwargs):
        """One image, a list, or a [B, H, W, C] / [B, C, H, W] batch -> BatchFeature {"input_ids": int64
        [B, h * w]} (no SOS token), or {"pixel_values": float32 [B, 3, h, w]} without do_color_quantize.

        The keyword arguments override this processor's settings for this call, as in transformers;
        return_tensors is None or "np" (NumPy arrays) or "pt" (torch tensors).
        """
        _check_fixed_steps("preprocess: ", kwargs)
        unknown = [k for k in kwargs if k not in ("do_convert_rgb",)]
        if unknown:
            raise ValueError(f"preprocess: unknown argument(s) {', '.join(unknown)}")
        if data_format != "channels_first":
            raise ValueError(f"preprocess: data_format={data_format!r} is not supported: pixel_values are "
                             f"channels first, as transformers returns them")
        size = None if size is None else _size_dict(size)
        resample = None if resample is None else _resample(resample)
        flags = {k: v for k, v in dict(do_resize=do_resize, do_normalize=do_normalize,
                                       do_color_quantize=do_color_quantize).items() if v is not None}
        flags = dict(zip(flags, _flags(**flags)))
        quantizing = flags.get("do_color_quantize", self.do_color_quantize)
        clusters = self.clusters if clusters is None else check_clusters(clusters, n_channels=3)

        if hasattr(images, "__array__") and not isinstance(images, PIL.Image.Image) and np.ndim(images) == 4:
            images = list(np.asarray(images))  # a batch array or tensor
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ImageError("no images given")
        if quantizing and clusters is None:
            raise ValueError("clusters must be provided for color quantization (or set do_color_quantize=False)")
        if flags.get("do_resize", self.do_resize):  # the batch's arrays, bounded before any image is read
            target = size or self.size
            limits.check_bytes(limits.processed_bytes(len(images), target["height"], target["width"]),
                               f"{len(images):,} images of size {target['height']}x{target['width']}")
        processed = [self.preprocess_one(image, f"image {i}", input_data_format, flags.get("do_resize"), size,
                                         resample, flags.get("do_normalize"))
                     for i, image in enumerate(images)]  # B x [h, w, 3]
        shapes = sorted({p.shape[:2] for p in processed})
        if len(shapes) > 1:
            raise ImageError(f"images of different sizes {shapes} cannot form a batch; use do_resize=True")
        batch = np.stack(processed)  # [B, h, w, 3]
        if not quantizing:
            return _as_tensors({"pixel_values": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))},  # [B, 3, h, w]
                               return_tensors)
        ids = quantize(batch, clusters)  # [B, h, w]
        return _as_tensors({"input_ids": ids.reshape(len(batch), -1)}, return_tensors)  # [B, h * w], row-major

    def __call__(self, images, **kwargs):
        """The same as preprocess(images, **kwargs)."""
        return self.preprocess(images, **kwargs)

    def decode(self, input_ids):
        """Palette ids [B, height * width], [height * width] or [B, h, w] -> uint8 RGB [B, h, w, 3].

        Drop the SOS token first: ids must lie in [0, K) for the K palette colours.
        """
        if self.clusters is None:
            raise ValueError("this processor has no clusters to decode with")
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim == 2:
            height, width = self.size["height"], self.size["width"]
            if ids.shape[1] != height * width:
                hint = " (drop the SOS token: ids[:, 1:])" if ids.shape[1] == height * width + 1 else ""
                raise ValueError(
                    f"expected {height * width} ids per image for size {height}x{width}, got {ids.shape[1]}{hint}"
                )
            ids = ids.reshape(len(ids), height, width)
        if ids.ndim != 3:
            raise ValueError(f"input_ids must have shape (B, H*W), (H*W,) or (B, H, W), got {ids.shape}")
        return dequantize(ids, self.clusters)  # [B, h, w, 3]

    # ---- dicts and preprocessor_config.json ------------------------------------------------------
    def to_dict(self):
        """The preprocessor_config.json contents, with the keys and values transformers writes."""
        config = {
            "do_color_quantize": self.do_color_quantize,
            "do_normalize": self.do_normalize,
            "do_resize": self.do_resize,
            "image_processor_type": "ImageGPTImageProcessor",
            "resample": self.resample,
            "size": dict(self.size),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in _FIXED_STEPS.items()},
        }
        if self.clusters is not None:
            config["clusters"] = self.clusters.tolist()  # float32 -> exact Python floats
        return dict(sorted(config.items()))

    def to_json_string(self):
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_json_file(self, json_file_path):
        """Write the JSON atomically to json_file_path (any name: transformers' from_json_file reads it)."""
        atomic_write_bytes(os.fspath(json_file_path), self.to_json_string().encode("utf-8"))

    def save_pretrained(self, save_directory, push_to_hub=False):
        """Write save_directory/preprocessor_config.json atomically; return the list of files written.

        transformers' `ImageGPTImageProcessorPil.from_pretrained(save_directory)` reads it.
        """
        make_save_directory(save_directory, push_to_hub)
        path = os.path.join(save_directory, PREPROCESSOR_CONFIG_NAME)
        self.to_json_file(path)
        return [path]

    @classmethod
    def from_dict(cls, image_processor_dict, source="dict", **kwargs):
        """A processor from preprocessor_config.json's contents; `kwargs` replace its values.

        Reads the keys transformers writes and those of the older hub configs (`"size": 32`,
        `feature_extractor_type`). A key missing takes transformers' class default (size 256x256, not our
        32x32), so both read a file alike. Raises ValueError naming `source` when quantizing without
        clusters, when the clusters are not a finite (K, 3) array, or for steps iGPT does not use.
        """
        if not isinstance(image_processor_dict, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(image_processor_dict).__name__}")
        known = ("clusters", "size", "resample", "do_resize", "do_normalize", "do_color_quantize", *_FIXED_STEPS)
        config = {"size": {"height": 256, "width": 256}}  # transformers' class default, for files without a size
        config.update({k: v for k, v in image_processor_dict.items() if k in known})  # other keys: not ours to read
        config.update(kwargs)  # explicit arguments: an unknown one is refused by name
        if config.get("do_color_quantize", True) and config.get("clusters") is None:
            raise ValueError(
                f"{source} has no clusters, which color quantization needs: pass clusters=... or do_color_quantize=False"
            )
        try:
            return cls(**config)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def from_json_file(cls, json_file, **kwargs):
        file = os.fspath(json_file)
        try:
            with open(file, encoding="utf-8") as f:
                config = json.load(f)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{file}: no such file") from e
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {file}: {e}") from e
        return cls.from_dict(config, source=file, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder="", **kwargs):
        """Read a model directory's preprocessor_config.json (or DIR/subfolder/..., or that file itself);
        keyword arguments replace its values (see from_dict). Hub arguments only at their defaults."""
        refuse_hub_arguments("ImageGPTImageProcessor.from_pretrained", kwargs)
        path = os.fspath(pretrained_model_name_or_path)
        path = os.path.join(path, subfolder) if subfolder else path
        file = os.path.join(path, PREPROCESSOR_CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no {PREPROCESSOR_CONFIG_NAME} at {path} (nothing is downloaded)")
        return cls.from_json_file(file, **kwargs)


def check_palette_fits(processor, config):
    """A processor and a model used together: the palette must have one colour per LM-head output."""
    if processor.clusters is not None and len(processor.clusters) != config.vocab_size - 1:
        raise ValueError(f"the processor's palette has {len(processor.clusters)} colours but the model predicts "
                         f"vocab_size - 1 = {config.vocab_size - 1}; they do not belong together")


def _check_fixed_steps(where, kwargs):  # where: a prefix for the message
    """Pop transformers' rescale/normalise settings; refuse any but iGPT's, naming it."""
    for key, value in _FIXED_STEPS.items():
        if key in kwargs:
            given = kwargs.pop(key)
            if not _same_numbers(given, value):
                raise ValueError(f"{where}{key}={given!r} is not supported (iGPT uses {value!r})")


def _resample(resample):
    try:
        return int(PIL.Image.Resampling(int(resample)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"resample must be a PIL resampling filter (0-5), got {resample!r}") from e


def _flags(**flags):
    for flag, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    return tuple(bool(v) for v in flags.values())
