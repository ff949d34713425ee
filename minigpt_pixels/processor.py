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

from . import limits
from .config import refuse_hub_arguments, make_save_directory
from .images import (  # noqa: F401  (re-exported: images in, as the processor reads them)
    ImageError, check_image_file, image_file_size, load_image, read_image_file, resize)
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
