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

import json
import os

import numpy as np
import PIL.Image

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


def _pil_to_array(im, name):
    """A PIL image of any mode -> [H, W, 3] uint8, [H, W] uint16 (16-bit grey) or [H, W] float32 ("F")."""
    if im.mode.startswith("I"):  # "I;16..." 16-bit greys, or "I" (32-bit), which some 16-bit files open as
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"{name}: 32-bit integer image with values in [{a.min()}, {a.max()}], outside 16 bits")
        return a.astype(np.uint16)  # scaled to 8 bits in `_array_to_rgb`; PIL's convert would clip at 255
    if im.mode == "F":
        return np.asarray(im)  # float grey: must be in [0, 1], checked in `_array_to_rgb`
    if "A" in im.getbands() or "transparency" in im.info:
        # transparency composited onto white, as transformers' convert_to_rgb does
        im = PIL.Image.alpha_composite(PIL.Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return np.asarray(im.convert("RGB"))


def _array_to_rgb(a, name):
    """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] array -> [H, W, 3] uint8, or float32 in [0, 1] for float input."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ImageError(
            f"{name}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape {a.shape} "
            "(channels last; a batch of grey images is a list of (H, W) arrays)"
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


def load_image(image, name="image"):
    """One image -> RGB [H, W, 3], uint8 or (for float input) float32 in [0, 1].

    `image` is a file path (str or os.PathLike), a PIL image of any mode, or a NumPy array:
    [H, W] or [H, W, 1] grey, [H, W, 3] RGB or [H, W, 4] RGBA, of dtype uint8, uint16 (16-bit),
    another integer type holding 0..255, or float in [0, 1]. Unlike transformers, grey, RGBA,
    palette-mode ("P") and 16-bit images are converted to RGB instead of failing: transparency is
    composited onto white (as transformers' `do_convert_rgb` does) and 16 bits become 8 by v / 257.
    Raises ImageError naming `name` (or the path) for anything it cannot read or use.
    """
    if isinstance(image, (str, os.PathLike)):
        name = os.fspath(image)
        try:
            with PIL.Image.open(name) as im:
                im.load()  # PIL opens lazily: a truncated file only fails here
                array = _pil_to_array(im, name)
        except FileNotFoundError as e:
            raise ImageError(f"image file not found: {name}") from e
        except (OSError, SyntaxError, EOFError, PIL.Image.DecompressionBombError) as e:
            raise ImageError(f"cannot read image file {name}: {e}") from e
    elif isinstance(image, PIL.Image.Image):
        try:
            array = _pil_to_array(image, name)
        except (OSError, SyntaxError, EOFError, ValueError) as e:
            raise ImageError(f"cannot convert {name} (PIL mode {image.mode}) to RGB: {e}") from e
    elif hasattr(image, "__array__"):  # NumPy arrays, and torch tensors on the CPU
        array = np.asarray(image)
    else:
        raise ImageError(f"{name}: expected a file path, a PIL image or an array, got {type(image).__name__}")
    return _array_to_rgb(array, name)


def resize(image, height, width, resample=PIL.Image.Resampling.BILINEAR):
    """RGB [H, W, 3] uint8 or float in [0, 1] -> [height, width, 3] uint8 by PIL, as transformers resizes.

    transformers hands PIL a uint8 image; a float image in [0, 1] is first multiplied by 255 (in
    float64, rounded to float32) and truncated, not rounded, to uint8. We do the same so the ids agree.
    """
    if image.dtype != np.uint8:
        image = (image.astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
    return np.asarray(PIL.Image.fromarray(image).resize((width, height), resample=resample))


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
    """int or {"height": h, "width": w} -> {"height": h, "width": w} of positive ints."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = {"height": int(size), "width": int(size)}  # hub configs store a square size as one int
    if not isinstance(size, dict) or set(size) != {"height", "width"}:
        raise ValueError(f'size must be an int or {{"height": h, "width": w}}, got {size!r}')
    for value in size.values():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"size must hold positive integers, got {size!r}")
    return {"height": int(size["height"]), "width": int(size["width"])}


def _same_numbers(a, b):
    """Whether a config value equals iGPT's (a scalar 0.5 counts as [0.5, 0.5, 0.5], as in transformers)."""
    try:
        return bool(np.allclose(np.asarray(a, dtype=np.float64), b, rtol=1e-6, atol=0))
    except (TypeError, ValueError):
        return False


class ImageGPTImageProcessor:
    """Images -> palette ids (or normalised pixels) and ids -> images, as transformers' ImageGPTImageProcessor.

    processor = ImageGPTImageProcessor(clusters=load_palette())        # or .from_pretrained(model_dir)
    ids = processor(images)["input_ids"]    # int64 [batch, height * width], WITHOUT the SOS token
    images = processor.decode(ids)          # uint8 [batch, height, width, 3]

    `images` is one image or a list of them (file paths, PIL images, arrays: see `load_image`). A
    file that is missing, unreadable or truncated, an empty image, a NaN or out-of-range float image
    raises ImageError naming it. Differences from transformers, all deliberate:
    - grey, RGBA, palette-mode and 16-bit images are converted to RGB (transformers fails on them);
    - float images in [0, 1] are taken as already rescaled, i.e. what transformers does when called
      with do_rescale=False (with its default it would divide them by 255 a second time), and any
      float image is processed in float32;
    - ids are the true nearest colour (see `palette.quantize`), which is what transformers computes
      for clusters loaded from JSON (float64); given float32 clusters, its own float32 arithmetic can
      pick the other of two nearly equidistant colours.
    Without color quantization it returns {"pixel_values": float32 [batch, 3, height, width]},
    channels first, as transformers does.
    """

    def __init__(
        self,
        clusters=None,
        size={"height": 32, "width": 32},  # never mutated: _size_dict copies it
        resample=PIL.Image.Resampling.BILINEAR,
        do_resize=True,
        do_normalize=True,
        do_color_quantize=True,
    ):
        # clusters: [K, 3] palette in [-1, 1]; None is allowed until the processor has to quantize
        self.clusters = None if clusters is None else check_clusters(clusters, n_channels=3)
        self.size = _size_dict(size)
        try:
            self.resample = int(PIL.Image.Resampling(int(resample)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"resample must be a PIL resampling filter (0-5), got {resample!r}") from e
        flags = {"do_resize": do_resize, "do_normalize": do_normalize, "do_color_quantize": do_color_quantize}
        for flag, value in flags.items():
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        self.do_resize = bool(do_resize)
        self.do_normalize = bool(do_normalize)
        self.do_color_quantize = bool(do_color_quantize)

    def __repr__(self):
        palette = "None" if self.clusters is None else f"<{len(self.clusters)} colours>"
        return (
            f"ImageGPTImageProcessor(clusters={palette}, size={self.size}, resample={self.resample}, "
            f"do_resize={self.do_resize}, do_normalize={self.do_normalize}, do_color_quantize={self.do_color_quantize})"
        )

    def preprocess_one(self, image, name="image"):
        """One image -> float32 [height, width, 3]: load, resize, rescale, normalise (no quantizing)."""
        rgb = load_image(image, name)  # [H, W, 3]
        if self.do_resize:
            rgb = resize(rgb, self.size["height"], self.size["width"], self.resample)  # [h, w, 3] uint8
        pixels = rgb if rgb.dtype == np.float32 else rescale(rgb)  # floats in [0, 1] are already rescaled
        return normalize(pixels) if self.do_normalize else pixels

    def __call__(self, images):
        """One image or a list (or an [B, H, W, C] array) -> {"input_ids": int64 [B, h * w]} (no SOS token).

        Without do_color_quantize: {"pixel_values": float32 [B, 3, h, w]}.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ImageError("no images given")
        if self.do_color_quantize and self.clusters is None:
            raise ValueError("clusters must be provided for color quantization (or set do_color_quantize=False)")
        processed = [self.preprocess_one(image, name=f"image {i}") for i, image in enumerate(images)]  # B x [h, w, 3]
        shapes = sorted({p.shape[:2] for p in processed})
        if len(shapes) > 1:
            raise ImageError(f"images of different sizes {shapes} cannot form a batch; use do_resize=True")
        batch = np.stack(processed)  # [B, h, w, 3]
        if not self.do_color_quantize:
            return {"pixel_values": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))}  # [B, 3, h, w]
        ids = quantize(batch, self.clusters)  # [B, h, w]
        return {"input_ids": ids.reshape(len(batch), -1)}  # [B, h * w], row-major like transformers

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

    def to_dict(self):
        """The preprocessor_config.json contents, with the keys and values transformers writes."""
        config = {
            "do_color_quantize": self.do_color_quantize,
            "do_normalize": self.do_normalize,
            "do_resize": self.do_resize,
            "image_processor_type": "ImageGPTImageProcessor",
            "resample": self.resample,
            "size": dict(self.size),
            **_FIXED_STEPS,
        }
        if self.clusters is not None:
            config["clusters"] = self.clusters.tolist()  # float32 -> exact Python floats
        return dict(sorted(config.items()))

    def save_pretrained(self, save_directory):
        """Write save_directory/preprocessor_config.json atomically and return its path.

        transformers' `ImageGPTImageProcessorPil.from_pretrained(save_directory)` reads it.
        """
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, PREPROCESSOR_CONFIG_NAME)
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"))
        return path

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Read a model directory's preprocessor_config.json (or that file itself); `overrides` replace its values.

        Reads the keys transformers writes and those of the older hub configs (`"size": 32`,
        `feature_extractor_type`); other keys are ignored. A key missing from the file takes
        transformers' class default (size 256x256, not our 32x32), so both read a file alike.
        Raises ValueError naming the file when quantizing without clusters, when the clusters are not
        a finite (K, 3) array, or when the file asks for steps iGPT does not use.
        """
        path = os.fspath(path)
        file = os.path.join(path, PREPROCESSOR_CONFIG_NAME) if os.path.isdir(path) else path
        try:
            with open(file, encoding="utf-8") as f:
                config = json.load(f)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no {PREPROCESSOR_CONFIG_NAME} at {path}") from e
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {file}: {e}") from e
        if not isinstance(config, dict):
            raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
        for key, value in _FIXED_STEPS.items():
            if key in config and not _same_numbers(config[key], value):
                raise ValueError(f"{file}: {key}={config[key]!r} is not supported (iGPT uses {value!r})")
        kwargs = {"size": {"height": 256, "width": 256}}
        known = ("clusters", "size", "resample", "do_resize", "do_normalize", "do_color_quantize")
        kwargs.update({key: config[key] for key in known if key in config})
        kwargs.update(overrides)
        if kwargs.get("do_color_quantize", True) and kwargs.get("clusters") is None:
            raise ValueError(
                f"{file} has no clusters, which color quantization needs: pass clusters=... or do_color_quantize=False"
            )
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from e
