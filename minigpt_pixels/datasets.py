"""Training images, as nanoGPT's `data/*/prepare.py` keeps them: scikit-learn's digits or a folder of
images, read, resized and encoded to palette ids. The trainer, the probe, the notebooks and the scripts
all load their images here.

- `load_data("digits")`: scikit-learn's 1797 handwritten digits (8x8, 17 grey levels, shipped inside
  scikit-learn, so no download), with their labels 0..9.
- `load_data(DIR)`: every image file under DIR (recursively, sorted; hidden names and files without an
  image suffix are not images). If every image sits in a sub-folder, the first sub-folder's name is its
  label (torchvision's ImageFolder convention). A folder or file that cannot be read is an error naming
  it, never skipped: a class folder missing from the labels would train a classifier of fewer classes.
- `split`, `fit_processor`, `encode`: the fixed held-out split, the palette fitted to the training
  images, and the images as palette ids.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
import PIL.Image

from . import limits
from .palette import fit_palette
from .images import ImageError, image_file_size, read_image_file
from .processor import ImageGPTImageProcessor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DIGITS_SIZE, DIGITS_COUNT = (8, 8), 1797  # scikit-learn's digits


class DataError(ValueError):
    """Images that cannot be read or used; the message names the folder or file."""


@dataclass
class Dataset:
    images: list  # HxW (grey) or HxWx3 uint8 arrays
    labels: np.ndarray | None  # int64 [N], or None for unlabelled folders
    class_names: list | None
    source: str  # "digits" or the folder's absolute path
    size: tuple  # (height, width) shared by every image
    skipped: list = field(default_factory=list)  # files and folders under a folder that are not images


def load_digits_data():
    """scikit-learn's 1797 digits: 8x8 grey levels 0..16 -> uint8 0..255, with their labels 0..9."""
    # imported here, not at the top: scikit-learn alone takes a second or more, and folders never need it
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
    return Dataset(list(images), digits.target.astype(np.int64), [str(i) for i in range(10)], "digits", DIGITS_SIZE)


def _unreadable(error):
    """os.walk's onerror: a folder it cannot list is an error naming it, not a silent gap in the data."""
    raise DataError(f"--data: cannot read the folder {error.filename}: {error.strerror or error}")


def find_images(path):
    """Every image file under `path` (recursively, sorted) -> (root, files, skipped): skipped lists, for
    the caller to report, the hidden names and the files without an image suffix. Symbolic links to
    folders are followed (a loop is an error); an unreadable folder is an error."""
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise DataError(f"--data {path}: no such directory (use 'digits' for scikit-learn's digits)")
    files, skipped, seen = [], [], set()
    for directory, subdirs, names in os.walk(root, onerror=_unreadable, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            raise DataError(f"--data {path}: the folder {directory} links back to {real}, already read (a loop)")
        seen.add(real)
        skipped += [os.path.join(directory, d) for d in sorted(subdirs) if d.startswith(".")]
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for n in sorted(names):
            image = not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
            (files if image else skipped).append(os.path.join(directory, n))
    if not files:
        raise DataError(f"--data {path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return root, files, [os.path.relpath(s, root) for s in skipped]


@contextlib.contextmanager
def _reading(path):
    """PIL's and the processor's errors reading `path` as one DataError naming it."""
    try:
        yield
    except (ImageError, limits.SizeError) as e:  # each names the file already
        raise DataError(str(e)) from None
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, EOFError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image file {path}: {e}") from None


def image_size_of(path):
    """(height, width) upright (EXIF orientation applied) from the file's header: nothing is decoded, so any
    size costs nothing to learn."""
    with _reading(path):
        return image_file_size(path)


def read_image(path, size=None, resample=None):
    """One image file -> RGB uint8 [H, W, 3], upright, resized to size=(height, width) as it is read, the way
    the processor would resize it, its decoding bounded (processor.read_image_file). A JPEG is decoded at the
    smallest power-of-two reduction still at least that size (draft), so memory grows with the training size."""
    with _reading(path):
        return read_image_file(path, size, *(() if resample is None else (resample,)), draft=True)


def load_folder(path, size=None, need_same_size=True, resample=None, check=None):
    """Every image under `path`, resized to size=(h, w) as read when given, labelled by sub-folder when
    every image has one. `check(size, n_images)`, called after the headers are read and before any image
    is decoded, can refuse a training size."""
    root, files, skipped = find_images(path)
    sizes = {}
    for f in files:
        sizes.setdefault(image_size_of(f), f)
    if len(sizes) > 1 and need_same_size and size is None:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise DataError(f"--data {path}: images of mixed sizes ({os.path.relpath(f1, root)} is {s1[0]}x{s1[1]}, "
                        f"{os.path.relpath(f2, root)} is {s2[0]}x{s2[1]}); pass --image-size to resize them all")
    size = tuple(size) if size is not None else next(iter(sizes))
    if check is not None:
        check(size, len(files))
    images = [read_image(f, size, resample) for f in files]
    rel = [os.path.relpath(f, root).split(os.sep) for f in files]
    labels = class_names = None
    if all(len(r) > 1 for r in rel):
        class_names = sorted({r[0] for r in rel})
        labels = np.array([class_names.index(r[0]) for r in rel], np.int64)
    return Dataset(images, labels, class_names, root, size, skipped)


def load_data(spec, size=None, need_same_size=True, resample=None, check=None):
    """'digits' or a folder (see the module's docstring) -> Dataset."""
    if spec == "digits":
        if check is not None:  # before scikit-learn's import, which alone takes a second or more
            check(tuple(size or DIGITS_SIZE), DIGITS_COUNT)
        return load_digits_data()
    return load_folder(spec, size, need_same_size, resample, check)


def split(n, holdout, seed):
    """A fixed random split: -> (train indices, held-out indices). At least one image on each side."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(holdout * n))), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit_processor(images, size, n_colors, seed):
    """A palette of n_colors fitted (k-means) to the training images' pixels at the training size."""
    size = {"height": size[0], "width": size[1]}
    raw = ImageGPTImageProcessor(size=size, do_color_quantize=False)(images)["pixel_values"]  # [N, 3, h, w]
    pixels = raw.transpose(0, 2, 3, 1).reshape(-1, 3)  # [N*h*w, 3] in [-1, 1]
    try:
        clusters = fit_palette(pixels, n_colors, seed=seed)
    except ValueError as e:
        raise DataError(f"cannot fit a {n_colors}-colour palette: {e}") from None
    return ImageGPTImageProcessor(clusters=clusters, size=size)


def encode(processor, images, batch=512):
    """Images -> palette ids [N, h*w] (no SOS), in chunks to bound memory."""
    return np.concatenate([processor(images[i:i + batch])["input_ids"] for i in range(0, len(images), batch)])
