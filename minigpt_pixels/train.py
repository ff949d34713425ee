"""Train a small ImageGPT in NumPy: `python -m minigpt_pixels.train` (or `minigpt-pixels-train`).

Pre-training (the default): fit a palette to the training images with `fit_palette`, encode them with
`ImageGPTImageProcessor`, and train ImageGPTForCausalImageModeling to predict each pixel's palette id
from the ones before it (SOS + pixels[:-1] in, every pixel as a target, as OpenAI's code does).
Fine-tuning (`--finetune-from DIR`): start ImageGPTForImageClassification from a causal checkpoint
and train it on the images' labels, reporting held-out accuracy.

Data: scikit-learn's handwritten digits (`--data digits`, 1797 images of 8x8 with 17 grey levels,
shipped inside scikit-learn, so no download) or any folder of images (`--data DIR`; images in
sub-folders take the sub-folder's name as their label). A fixed `--split-seed` holds out
`--holdout` of the images; the loss on them is reported in nats and bits per token.

Checkpoints: `--out DIR` gets checkpoint-NNNNNN/ folders in transformers' layout (config.json,
model.safetensors, preprocessor_config.json) plus optimizer.safetensors and trainer_state.json, and a
`latest` file naming the newest. Each is written under a temporary name and renamed into place
before `latest` moves to it, so the last good checkpoint is never overwritten. `--resume` continues
from `latest` (and refuses a checkpoint whose config differs from the arguments). Ctrl-C finishes the
current step, saves, and exits; a NaN or infinite loss stops with a message naming the step and keeps
the last good checkpoint. The same seed gives the same run, resumed or not (on the same machine and
thread count): every step draws its batch and dropout from a generator seeded by (seed, step).

The default model shipped in the package (minigpt_pixels.DEFAULT_MODEL) was rebuilt with:

    python -m minigpt_pixels.train --data digits --out runs/digits --n-embd 96 --n-layer 4 --n-head 4 \\
        --steps 4000 --batch-size 32 --lr 2e-3 --dropout 0.1 --seed 0 --threads 1 \\
        --export minigpt_pixels/data/default_model

(these are also the defaults), and its fine-tuned classifier with:

    python -m minigpt_pixels.train --finetune-from minigpt_pixels/data/default_model \\
        --out runs/digits-classifier --steps 1000 --lr 1e-3 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np

from . import backprop, layers, limits, optim
from .config import CONFIG_NAME, ImageGPTConfig
from .model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from .processor import PREPROCESSOR_CONFIG_NAME
from .weights import (SAFE_WEIGHTS_NAME, atomic_write_bytes, link_exclusive, load_file, load_metadata,
                      non_finite_names, save_file)

PROG = "minigpt-pixels-train"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LATEST = "latest"  # the file in --out naming the newest complete checkpoint
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
EXPORT_FILES = (SAFE_WEIGHTS_NAME, PREPROCESSOR_CONFIG_NAME, CONFIG_NAME)  # in the order they are renamed
LN2 = math.log(2.0)
DIGITS_SIZE, DIGITS_COUNT = (8, 8), 1797  # scikit-learn's digits

# Architecture defaults (used when pre-training; fine-tuning takes the checkpoint's).
MODEL_DEFAULTS = dict(n_embd=96, n_layer=4, n_head=4, dropout=0.1)  # the default model's
# Optimisation defaults that differ between the two modes.
MODE_DEFAULTS = {"pretrain": dict(steps=4000, lr=2e-3, warmup=100),
                 "finetune": dict(steps=1000, lr=1e-3, warmup=50)}


class TrainError(Exception):
    """Bad data, arguments or checkpoints: reported as one line, exit status 2."""


class NonFiniteLoss(Exception):
    """The loss or the gradient norm is NaN or infinite at a step, or the weights after its update."""


class Diverged(TrainError):
    """Training stopped on a non-finite loss: exit status 1."""


# ---- data ----------------------------------------------------------------------------------------
@dataclass
class Dataset:
    images: list  # HxW (grey) or HxWx3 uint8 arrays
    labels: np.ndarray | None  # int64 [N], or None for unlabelled folders
    class_names: list | None
    source: str  # "digits" or the folder's absolute path
    size: tuple  # (height, width) shared by every image


def load_digits_data():
    """scikit-learn's 1797 digits: 8x8 grey levels 0..16 -> uint8 0..255, with their labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
    return Dataset(list(images), digits.target.astype(np.int64), [str(i) for i in range(10)], "digits", DIGITS_SIZE)


def find_images(path):
    """Every image file under `path` (recursively, sorted, hidden names skipped) -> (root, files)."""
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise TrainError(f"--data {path}: no such directory (use 'digits' for scikit-learn's digits)")
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files += [os.path.join(directory, n) for n in sorted(names)
                  if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise TrainError(f"--data {path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return root, files


@contextlib.contextmanager
def _reading(path):
    """PIL's and our errors reading `path` as one TrainError naming it."""
    import PIL.Image

    from .processor import ImageError

    try:
        yield
    except (ImageError, limits.SizeError) as e:  # each names the file already
        raise TrainError(str(e)) from None
    except FileNotFoundError:
        raise TrainError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, EOFError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise TrainError(f"cannot read image file {path}: {e}") from None


def image_size_of(path):
    """(height, width) upright (EXIF orientation applied) from the file's header: nothing is decoded."""
    from .processor import image_file_size

    with _reading(path):
        return image_file_size(path)


def read_image(path, size=None, resample=None):
    """One image file -> RGB uint8 [H, W, 3], upright, resized to size=(height, width) as it is read, the way
    the processor would resize it, its decoding bounded (processor.read_image_file). A JPEG is decoded at the
    smallest power-of-two reduction still at least that size (draft), so memory grows with the training size."""
    from .processor import read_image_file

    with _reading(path):
        return read_image_file(path, size, *(() if resample is None else (resample,)), draft=True)


def load_folder(path, size=None, need_same_size=True, resample=None, check=None):
    """Every image under `path` (recursively, sorted), resized to size=(h, w) as read when given. If every
    image sits in a sub-folder, the first sub-folder's name is its label (torchvision's ImageFolder
    convention). `check(size, n_images)`, called after the headers are read and before any image is
    decoded, can refuse a training size (see build_run)."""
    root, files = find_images(path)
    sizes = {}
    for f in files:
        sizes.setdefault(image_size_of(f), f)
    if len(sizes) > 1 and need_same_size and size is None:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise TrainError(f"--data {path}: images of mixed sizes ({os.path.relpath(f1, root)} is {s1[0]}x{s1[1]}, "
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
    return Dataset(images, labels, class_names, root, size)


def load_data(spec, size=None, need_same_size=True, resample=None, check=None):
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
    from .palette import fit_palette
    from .processor import ImageGPTImageProcessor

    size = {"height": size[0], "width": size[1]}
    raw = ImageGPTImageProcessor(size=size, do_color_quantize=False)(images)["pixel_values"]  # [N, 3, h, w]
    pixels = raw.transpose(0, 2, 3, 1).reshape(-1, 3)  # [N*h*w, 3] in [-1, 1]
    try:
        clusters = fit_palette(pixels, n_colors, seed=seed)
    except ValueError as e:
        raise TrainError(f"cannot fit a {n_colors}-colour palette: {e}") from None
    return ImageGPTImageProcessor(clusters=clusters, size=size)


def encode(processor, images, batch=512):
    """Images -> palette ids [N, h*w] (no SOS), in chunks to bound memory."""
    return np.concatenate([processor(images[i:i + batch])["input_ids"] for i in range(0, len(images), batch)])


# ---- checkpoints ---------------------------------------------------------------------------------
# What a run may touch in --out: the checkpoint folders it wrote itself (listed in its trainer_state.json
# under "checkpoints"), its own temporary folders and `latest`. Anything else there, a transformers
# Trainer's checkpoint-1000/, a user's checkpoint-000003-backup/, another run's checkpoint-000003/, is
# never reused, replaced or pruned.
CHECKPOINT = re.compile(r"checkpoint-(\d{6})")


def checkpoint_name(step):
    return f"checkpoint-{step:06d}"


def latest_checkpoint(out):
    """The checkpoint folder `out/latest` names, or None when there is none yet."""
    try:
        with open(os.path.join(out, LATEST), encoding="utf-8") as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise TrainError(f"{out}/{LATEST}: cannot read it: {e}") from None
    if not CHECKPOINT.fullmatch(name):
        raise TrainError(f"{out}/{LATEST} names {name[:80]!r}, not a checkpoint-NNNNNN folder of this trainer")
    path = os.path.join(out, name)
    if not os.path.isfile(os.path.join(path, STATE_NAME)):
        raise TrainError(f"{out}/{LATEST} names {name}, which is not a complete checkpoint")
    return path


def read_state(ckpt):
    """A checkpoint's trainer_state.json, checked enough to resume from."""
    path = os.path.join(ckpt, STATE_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TrainError(f"{path}: cannot read it ({e}); the checkpoint is damaged") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("history"), list)):
        raise TrainError(f"{path}: not a trainer state (needs an integer 'step' and a 'history' list)")
    names = state.setdefault("checkpoints", [os.path.basename(ckpt)])  # older states: only the one resumed
    if not (isinstance(names, list) and all(isinstance(n, str) and CHECKPOINT.fullmatch(n) for n in names)):
        raise TrainError(f"{path}: its 'checkpoints' list is damaged")
    return state


def check_out(out, state):
    """Before any work: --out is a folder this run can write, holding no checkpoint-NNNNNN folder that it
    did not write itself but might reach (it would neither reuse nor replace one)."""
    if not _writable_folder(out, "--out"):
        return
    ours = set(state["checkpoints"]) if state else set()
    start = state["step"] if state else 0
    for name in sorted(os.listdir(out)):
        m = CHECKPOINT.fullmatch(name)
        if m and name not in ours and int(m[1]) > start:
            raise TrainError(f"--out {out} holds {name}, which this run did not write "
                             f"({'no ' + LATEST + ' file names it' if not state else 'newer than ' + LATEST}); "
                             f"it would be neither reused nor replaced: move it away, or choose another --out")


def _writable_folder(path, option):
    """`path` is a folder this run can write to (-> True), or can be created (-> False: it is empty)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise TrainError(f"{option} {path} is a file, not a folder")
    if not os.path.isdir(path):
        _check_can_create(path, option)
        return False
    if not os.access(path, os.W_OK | os.X_OK):
        raise TrainError(f"{option} {path}: this folder is not writable")
    return True


def _check_can_create(path, option):
    """`path` does not exist: its nearest existing parent must be a writable folder."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise TrainError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TrainError(f"{option} {path}: cannot create it, {parent} is not writable")


def save_checkpoint(out, model, processor, optimizer, state, keep=2):
    """Write checkpoint-NNNNNN under a temporary name, rename it into place, then point `latest` at it
    and remove this run's checkpoints beyond the `keep` newest. At every moment `latest` names a
    complete checkpoint; a folder this run did not write is never replaced or removed."""
    name = checkpoint_name(state["step"])
    final = os.path.join(out, name)
    written = state.setdefault("checkpoints", [])
    kept = [n for n in written if n != name] + [name]
    kept, dropped = kept[-keep:], kept[:-keep]
    if name in written and os.path.isdir(final):
        pass  # this run saved this very step already (a Ctrl-C right after a save)
    elif os.path.lexists(final):
        raise TrainError(f"{final} already exists and this run did not write it; not replacing it: move it "
                         f"away, or choose another --out")
    else:
        tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out)  # a fresh name: never someone else's folder
        try:
            write_model_dir(tmp, model, processor)
            tensors, meta = optimizer.state_dict()
            save_file(tensors, os.path.join(tmp, OPTIMIZER_NAME), {"t": str(meta["t"])})
            atomic_write_bytes(os.path.join(tmp, STATE_NAME),
                               (json.dumps({**state, "checkpoints": kept}, indent=2) + "\n").encode())
            os.rename(tmp, final)  # fails on a folder that appeared meanwhile, unless it is empty
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    atomic_write_bytes(os.path.join(out, LATEST), (name + "\n").encode())
    state["checkpoints"] = kept
    for d in dropped:
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    return final


def write_model_dir(directory, model, processor):
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def _is_imagegpt_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(d, dict) and d.get("model_type") == "imagegpt"


def check_export(directory):
    """Before any work: --export DIR may be created, or already hold an ImageGPT model (a previous export,
    whose three files it replaces); a file of one of those names that belongs to something else is
    refused, as is DIR being a file. Nothing else in DIR is ever touched."""
    if not _writable_folder(directory, "--export"):
        return
    present = [n for n in EXPORT_FILES if os.path.lexists(os.path.join(directory, n))]
    for n in present:
        if not os.path.isfile(os.path.join(directory, n)) or os.path.islink(os.path.join(directory, n)):
            raise TrainError(f"--export {directory}: its {n} is not a plain file; not replacing it")
    if present and not _is_imagegpt_config(os.path.join(directory, CONFIG_NAME)):
        raise TrainError(f"--export {directory}: it holds a {present[0]} that is not part of an ImageGPT model; "
                         f"not replacing it (export into a new folder, or one holding an earlier export)")


def export_model(directory, model, processor):
    """Write the model's three files (weights, processor, config) into `directory`, each by a rename, and
    nothing else: the folder's other files and sub-folders stay as they are."""
    check_export(directory)  # again: the folder may have changed while training
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export.tmp-", dir=directory)  # same file system: renames are atomic
    try:
        write_model_dir(tmp, model, processor)
        for name in EXPORT_FILES:  # the config last: a folder with a config always has its weights
            src, dest = os.path.join(tmp, name), os.path.join(directory, name)
            if os.path.lexists(dest):
                os.replace(src, dest)  # an earlier export's file: check_export has just vouched for it
            else:
                link_exclusive(src, dest)  # a file of that name appearing meanwhile is not replaced
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def writable(params):
    """Loaded weights are read-only memory maps; the optimizer updates in place, so copy them."""
    return {k: np.array(v, dtype=np.float32) for k, v in params.items()}


# ---- one step, and evaluation --------------------------------------------------------------------
def train_step(model, optimizer, inputs, targets, lr, grad_clip, dropout_rng):
    """Forward, backward, clip, AdamW. -> (loss, gradient norm before clipping). Raises NonFiniteLoss
    before touching the weights if the loss or the gradients are not finite, and after the update if a
    weight is (a huge step from finite gradients): such weights are never saved."""
    # a causal model's targets are aligned with its inputs (position t predicts pixel t): no shift
    aligned = {} if isinstance(model, ImageGPTForImageClassification) else {"shift": False}
    loss, grads = model.value_and_grad(inputs, targets, dropout_rng=dropout_rng, **aligned)
    if not np.isfinite(loss):
        raise NonFiniteLoss(f"loss is {float(loss)}")
    norm = optim.clip_grad_norm(grads, grad_clip)
    if not math.isfinite(norm):
        raise NonFiniteLoss(f"gradient norm is {norm} (loss {float(loss):.4f})")
    optimizer.step(model.params, grads, lr=lr)
    bad = non_finite_names(model.params)
    if bad:
        raise NonFiniteLoss(f"the update left NaN or infinite values in {bad[0]!r} (loss {float(loss):.4f}, "
                            f"learning rate {lr:.3g})")
    return float(loss), norm


def evaluate(model, inputs, targets, batch=256):
    """Held-out metrics without dropout: mean nats per token (causal) or per image, and accuracy."""
    total, count, correct = 0.0, 0, 0
    classify = isinstance(model, ImageGPTForImageClassification)
    for i in range(0, len(inputs), batch):
        # the training forward (pure NumPy, no Numba compile) without dropout; same numbers as model(...)
        h, _ = backprop.transformer_forward(model, inputs[i:i + batch])  # [b, T, C]
        logits = layers.classification_head(h, model.params["score.weight"]) if classify else \
            layers.lm_head(h, model.params["lm_head.weight"])
        t = targets[i:i + batch]
        n = t.size
        if classify:
            total += float(layers.cross_entropy(logits, t)) * n
            correct += int(np.sum(np.argmax(logits, axis=-1) == t))
        else:
            total += float(layers.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1))) * n
        count += n
    nats = total / count
    out = {"nats": nats, "bits": nats / LN2}
    if classify:
        out["accuracy"] = correct / count
    return out


# ---- Ctrl-C --------------------------------------------------------------------------------------
class StopRequest:
    """The first Ctrl-C asks the loop to stop after the current step (which then saves); a second one
    raises KeyboardInterrupt at once. Only the main thread can install signal handlers."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: plain KeyboardInterrupt
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ---- the run -------------------------------------------------------------------------------------
def set_threads(n):
    """Limit BLAS to n threads (same count as torch.set_num_threads would use in a comparison)."""
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def resolve(args):
    """Fill the mode-dependent defaults and check the arguments; -> the mode ("pretrain"/"finetune")."""
    mode = "finetune" if args.finetune_from else "pretrain"
    for k, v in MODE_DEFAULTS[mode].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if mode == "pretrain":
        for k, v in MODEL_DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    else:
        given = [k for k in ("n_embd", "n_layer", "n_head", "n_colors", "image_size") if getattr(args, k) is not None]
        if given:
            raise TrainError(f"--{given[0].replace('_', '-')} cannot change when fine-tuning: the architecture and "
                             f"palette come from --finetune-from")
    checks = [("steps", args.steps >= 1), ("batch-size", args.batch_size >= 1),
              ("lr", args.lr > 0 and optim.finite_float32(args.lr)), ("min-lr", optim.finite_float32(args.min_lr)),
              ("warmup", args.warmup >= 0), ("eval-every", args.eval_every >= 1),
              ("save-every", args.save_every >= 1), ("holdout", 0 < args.holdout < 1),
              ("weight-decay", args.weight_decay >= 0 and optim.finite_float32(args.weight_decay)),
              ("grad-clip", args.grad_clip >= 0 and math.isfinite(args.grad_clip)),
              ("keep", args.keep >= 1)]
    if args.dropout is not None:
        checks.append(("dropout", 0 <= args.dropout < 1))
    if args.n_colors is not None:
        checks.append(("n-colors", args.n_colors >= 2))
    if args.threads is not None:
        checks.append(("threads", args.threads >= 1))
    for name, ok in checks:
        if not ok:
            value = getattr(args, name.replace('-', '_'))
            why = " (not finite as float32)" if isinstance(value, float) and not optim.finite_float32(value) else ""
            raise TrainError(f"--{name} {value} is out of range{why}")
    if args.min_lr < 0 or args.min_lr > args.lr:
        raise TrainError(f"--min-lr {args.min_lr} must be between 0 and --lr {args.lr}")
    return mode


def build_run(args, mode):
    """Data, processor, model and optimizer, fresh or from `latest` with --resume.
    -> (model, processor, optimizer, state, (train_in, train_tgt), (val_in, val_tgt), checkpoint or None).
    The checks that need no work come first: --out and --export, then every size against the memory
    available, from the images' headers, before any image is decoded."""
    from .processor import ImageGPTImageProcessor

    out = args.out
    ckpt = latest_checkpoint(out) if os.path.isdir(out) else None
    if ckpt and not args.resume:
        raise TrainError(f"--out {out} already holds a run ({os.path.basename(ckpt)}); pass --resume to continue "
                         f"it, or choose another --out")
    if args.resume and ckpt is None:
        raise TrainError(f"--resume: no checkpoint in {out} (no '{LATEST}' file)")
    state = read_state(ckpt) if ckpt else None
    check_out(out, state)
    if args.export:
        check_export(args.export)

    image_size = None if args.image_size is None else (args.image_size, args.image_size)
    source = source_processor = None
    if mode == "finetune":  # the architecture and the image size come from the checkpoint
        try:
            source = ImageGPTConfig.from_pretrained(args.finetune_from)
            source_processor = ImageGPTImageProcessor.from_pretrained(args.finetune_from)
        except (ValueError, OSError) as e:
            raise TrainError(f"--finetune-from: {e}") from None
        image_size = (source_processor.size["height"], source_processor.size["width"])
    n_colors = args.n_colors or 16

    def make_config(size, class_names=None):
        if mode == "pretrain":
            p = args.dropout
            return ImageGPTConfig(vocab_size=n_colors + 1, n_positions=size[0] * size[1], n_embd=args.n_embd,
                                  n_layer=args.n_layer, n_head=args.n_head, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p)
        over = {} if args.dropout is None else dict(resid_pdrop=args.dropout, embd_pdrop=args.dropout,
                                                    attn_pdrop=args.dropout)
        labels = dict(enumerate(class_names)) if class_names else None
        return replace(source, num_labels=len(labels) if labels else 2, id2label=labels, label2id=None,
                       problem_type="single_label_classification", extra={}, **over)

    def check_fits(size, n_images):
        """Refuse, before decoding any image, a training size this machine cannot hold."""
        what = f"--image-size {args.image_size}" if args.image_size else f"images of {size[0]}x{size[1]}"
        if mode == "pretrain":  # the weights first, from the numbers alone (the config would refuse them too)
            sizes = SimpleNamespace(vocab_size=n_colors + 1, n_positions=size[0] * size[1], n_embd=args.n_embd,
                                    n_layer=args.n_layer, n_head=args.n_head, num_labels=2)
            nbytes, budget = limits.model_bytes(sizes), limits.machine_memory()
            if nbytes is not None and nbytes > budget:
                raise TrainError(f"--n-layer {args.n_layer}, --n-embd {args.n_embd}, --n-colors {n_colors} and {what} "
                                 f"make {limits.parameter_count(sizes):,} parameters ({limits.fmt_bytes(nbytes)} as "
                                 f"float32), more than this machine's {limits.fmt_bytes(budget)} of memory")
        config = make_config(size)
        # the data: uint8 pixels, the palette fit's float32 pixels, int64 inputs and targets
        data = n_images * size[0] * size[1] * (3 + 3 * 4 + 2 * 8)
        limits.check_bytes(limits.training_bytes(config, args.batch_size) + data,
                           f"{what} ({config.n_positions:,} positions) with --batch-size {args.batch_size}: training",
                           hint="; use a smaller --image-size or --batch-size")

    data = load_data(args.data, image_size, need_same_size=image_size is None and mode == "pretrain",
                     resample=source_processor.resample if source_processor else None, check=check_fits)
    if mode == "finetune" and data.labels is None:
        raise TrainError(f"fine-tuning needs labels: put each class's images of {args.data} in its own sub-folder")
    if len(data.images) < 2:
        raise TrainError(f"--data {args.data}: one image cannot be split into training and held-out images")
    train_idx, val_idx = split(len(data.images), args.holdout, args.split_seed)
    if args.batch_size > len(train_idx):
        raise TrainError(f"--batch-size {args.batch_size} is larger than the training split ({len(train_idx)} "
                         f"images of {len(data.images)}; {len(val_idx)} held out)")

    # the model's config, from the arguments (pre-training) or the source checkpoint (fine-tuning)
    size = image_size or data.size
    config = make_config(size, data.class_names)

    if ckpt:  # --resume: the checkpoint's config must be the one these arguments describe
        try:
            saved = ImageGPTConfig.from_pretrained(ckpt)
        except (ValueError, OSError) as e:
            raise TrainError(f"cannot resume from {ckpt}: {e}") from None
        diff = [k for k, v in config.to_dict().items() if k not in ("architectures",) and saved.to_dict().get(k) != v]
        if diff:
            k = diff[0]
            raise TrainError(f"cannot resume from {ckpt}: its config has {k}={saved.to_dict().get(k)!r}, these "
                             f"arguments give {k}={config.to_dict()[k]!r}; use the original arguments or a new --out")
        if state.get("mode") != mode or state.get("data") != data.source:
            raise TrainError(f"cannot resume from {ckpt}: it is a {state.get('mode')} run on {state.get('data')}, "
                             f"not a {mode} run on {data.source}")
        processor = ImageGPTImageProcessor.from_pretrained(ckpt)
        cls = ImageGPTForImageClassification if mode == "finetune" else ImageGPTForCausalImageModeling
        model = finite_model(ckpt, cls, what=f"cannot resume from {ckpt}")
    elif mode == "pretrain":
        processor = fit_processor([data.images[i] for i in train_idx], size, n_colors, args.seed)
        model = ImageGPTForCausalImageModeling(config, seed=args.seed)
        state = {"step": 0, "mode": mode, "data": data.source, "history": [], "checkpoints": []}
    else:
        processor = source_processor
        body = finite_model(args.finetune_from, ImageGPTForCausalImageModeling, what="--finetune-from").params
        params = {k: v for k, v in body.items() if k != "lm_head.weight"}
        rng = np.random.default_rng(args.seed)
        params["score.weight"] = rng.normal(0.0, config.initializer_range,
                                            (config.num_labels, config.n_embd)).astype(np.float32)
        model = ImageGPTForImageClassification(config, params)  # writable: finite_model copied them
        state = {"step": 0, "mode": mode, "data": data.source, "history": [], "checkpoints": [],
                 "finetune_from": os.path.abspath(args.finetune_from)}

    h, w = processor.size["height"], processor.size["width"]
    if h * w != model.config.n_positions:
        raise TrainError(f"the processor makes {h}x{w} = {h * w} tokens, the model has {model.config.n_positions} "
                         f"positions")
    try:
        ids = encode(processor, data.images)  # [N, h*w]
    except ValueError as e:
        raise TrainError(str(e)) from None
    if mode == "pretrain":
        sos = np.full((len(ids), 1), model.config.sos_token_id, np.int64)
        inputs, targets = np.concatenate([sos, ids[:, :-1]], axis=1), ids  # SOS + pixels[:-1] -> every pixel
    else:
        inputs, targets = ids, data.labels  # the classifier sees the pixels as transformers' users feed them

    optimizer = optim.AdamW(model.params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay,
                            decay=optim.decay_names(model.params, args.decay_position_embeddings))
    if ckpt:
        path = os.path.join(ckpt, OPTIMIZER_NAME)
        try:
            t = load_metadata(path).get("t", "")
            if not t.isdigit():
                raise ValueError(f"{path}: its metadata has no step count 't'")
            optimizer.load_state_dict(load_file(path), {"t": int(t)})
        except (KeyError, ValueError) as e:  # SafetensorsError names the file; the moments' checks the tensor
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            where = "" if path in message else f"{path}: "
            raise TrainError(f"cannot resume from {ckpt}: {where}{message}") from None
    state["args"] = {k: v for k, v in vars(args).items()}
    return model, processor, optimizer, state, (inputs[train_idx], targets[train_idx]), \
        (inputs[val_idx], targets[val_idx]), ckpt


def finite_model(path, cls, what):
    """A checkpoint's model with its weights as writable float32 copies (the optimizer updates them in
    place), refused when a tensor holds NaN or infinity: training from them could only give NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lm_head.weight ignored" when fine-tuning; non-finite: refused below
        try:
            model = cls.from_pretrained(path)
        except (ValueError, OSError) as e:
            raise TrainError(f"{what}: {e}") from None
    bad = non_finite_names(model.params)
    if bad:
        raise TrainError(f"{what}: tensor {bad[0]!r} of {path} holds NaN or infinite values")
    model.params = writable(model.params)
    return model


def run(args, mode):
    from tqdm.auto import tqdm

    model, processor, optimizer, state, (x_train, y_train), (x_val, y_val), ckpt = build_run(args, mode)
    out = args.out
    os.makedirs(out, exist_ok=True)
    say = tqdm.write
    n_params = model.num_parameters
    say(f"{mode}: {type(model).__name__} with {n_params:,} parameters "
        f"(n_layer {model.config.n_layer}, n_embd {model.config.n_embd}), "
        f"{len(x_train)} training / {len(x_val)} held-out images of {processor.size['height']}x"
        f"{processor.size['width']}, {len(processor.clusters)} colours"
        + (f"; resuming at step {state['step']}" if ckpt else ""))
    last_good = ckpt
    start = state["step"]
    tokens_per_step = args.batch_size * x_train.shape[1]  # every position of every image goes through the model

    def record(step, train_loss):
        metrics = evaluate(model, x_val, y_val)
        entry = {"step": step, "train_loss": train_loss, "val_nats": metrics["nats"], "val_bits": metrics["bits"]}
        if "accuracy" in metrics:
            entry["val_accuracy"] = metrics["accuracy"]
            say(f"step {step}: train loss {train_loss:.4f}, held-out loss {metrics['nats']:.4f}, "
                f"held-out accuracy {metrics['accuracy']:.4f}")
        else:
            say(f"step {step}: train {train_loss:.4f} nats/token, held-out {metrics['nats']:.4f} nats/token = "
                f"{metrics['bits']:.4f} bits/token")
        state["history"].append(entry)
        return entry

    def checkpoint(step):
        nonlocal last_good
        state["step"] = step
        last_good = save_checkpoint(out, model, processor, optimizer, state, keep=args.keep)
        return last_good

    step, losses, start_t = start, [], optimizer.t
    bar = tqdm(total=args.steps, initial=start, desc=mode, unit="step", disable=not args.progress,
               dynamic_ncols=True)
    t0, tokens = time.perf_counter(), 0
    try:
        with StopRequest() as stop:
            while step < args.steps:
                rng = np.random.default_rng([args.seed, step])  # batch and dropout of this step, resumable
                batch = rng.choice(len(x_train), size=args.batch_size, replace=False)
                lr = optim.lr_schedule(step, args.lr, args.steps, args.warmup, args.min_lr)
                try:
                    loss, norm = train_step(model, optimizer, x_train[batch], y_train[batch], lr, args.grad_clip,
                                            rng if model.config.resid_pdrop or model.config.attn_pdrop
                                            or model.config.embd_pdrop else None)
                except NonFiniteLoss as e:  # nothing of this step is saved: the last checkpoint is finite
                    bar.close()
                    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written"
                    raise Diverged(f"stopping: {e} at step {step + 1}; {where}") from None
                step += 1
                losses.append(loss)
                tokens += tokens_per_step
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", grad_norm=f"{norm:.2f}",
                                tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f}")
                if step % args.eval_every == 0 or step == args.steps:
                    record(step, float(np.mean(losses)))
                    losses = []
                if step % args.save_every == 0 or step == args.steps:
                    checkpoint(step)
                if stop.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        consistent = optimizer.t == start_t + step - start  # AdamW has not begun a step it did not finish
        if consistent and step > start:
            path = checkpoint(step)
            print(f"interrupted at step {step}; saved {path}; continue with --resume", file=sys.stderr)
        elif last_good:
            print(f"interrupted at step {step}; the last good checkpoint is {last_good}; continue with --resume",
                  file=sys.stderr)
        else:
            print(f"interrupted at step {step}; no checkpoint written", file=sys.stderr)
        return 130
    bar.close()
    if step == start and ckpt:  # nothing left to train: --steps already reached
        say(f"{ckpt} is already at step {step} of --steps {args.steps}")
        if not state["history"] or state["history"][-1]["step"] != step:
            record(step, float("nan"))
    final = state["history"][-1]
    summary = (f"held-out accuracy {final['val_accuracy']:.4f} ({len(x_val)} images)" if "val_accuracy" in final
               else f"held-out {final['val_nats']:.4f} nats/token = {final['val_bits']:.4f} bits/token")
    say(f"done: step {step}, {summary}; checkpoint {last_good}")
    if args.export:
        say(f"exported to {export_model(args.export, model, processor)}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default; options whose default depends on the mode say so in their own help."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", help="'digits' (scikit-learn's, offline) or a folder of images")
    g.add_argument("--image-size", type=int, default=None,
                   help="resize images to this square size (default: their own size, 8 for the digits)")
    g.add_argument("--n-colors", type=int, default=None, help="palette size fitted by k-means (default: 16)")
    g.add_argument("--holdout", type=float, default=0.1, help="fraction of the images held out for evaluation")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split (keep it when fine-tuning)")
    g = p.add_argument_group("model (pre-training; fine-tuning takes the checkpoint's)")
    g.add_argument("--n-embd", type=int, default=None, help=f"hidden width (default: {MODEL_DEFAULTS['n_embd']})")
    g.add_argument("--n-layer", type=int, default=None, help=f"blocks (default: {MODEL_DEFAULTS['n_layer']})")
    g.add_argument("--n-head", type=int, default=None, help=f"attention heads (default: {MODEL_DEFAULTS['n_head']})")
    g.add_argument("--dropout", type=float, default=None,
                   help=f"resid/embd/attn dropout while training (default: {MODEL_DEFAULTS['dropout']}; "
                        f"fine-tuning: the checkpoint's)")
    g = p.add_argument_group("optimisation")
    d = MODE_DEFAULTS
    g.add_argument("--steps", type=int, default=None,
                   help=f"total steps (default: {d['pretrain']['steps']}; fine-tuning {d['finetune']['steps']})")
    g.add_argument("--batch-size", type=int, default=32, help="images per step")
    g.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default: {d['pretrain']['lr']:g}; fine-tuning {d['finetune']['lr']:g})")
    g.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine")
    g.add_argument("--warmup", type=int, default=None,
                   help=f"linear warm-up steps (default: {d['pretrain']['warmup']}; fine-tuning "
                        f"{d['finetune']['warmup']})")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's decoupled decay (not on norms, biases)")
    g.add_argument("--decay-position-embeddings", action="store_true", help="also decay wpe")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0: off)")
    g.add_argument("--seed", type=int, default=0, help="initialisation, palette, batches and dropout")
    g.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's choice)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=os.path.join("runs", "digits"), help="checkpoint folder")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint --out/latest names")
    g.add_argument("--finetune-from", default=None, metavar="DIR",
                   help="fine-tune ImageGPTForImageClassification from this causal checkpoint on the labels")
    g.add_argument("--eval-every", type=int, default=250, help="evaluate on the held-out split every N steps")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    g.add_argument("--keep", type=int, default=2, help="checkpoints kept in --out")
    g.add_argument("--export", default=None, metavar="DIR",
                   help="at the end, write the model and processor (no optimizer state) to DIR")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        mode = resolve(args)
        with set_threads(args.threads):
            return run(args, mode)
    except KeyboardInterrupt:  # during set-up, before any step
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    except (TrainError, OSError, ValueError) as e:
        parser.exit(1 if isinstance(e, Diverged) else 2, f"{PROG}: error: {e}\n")
    except MemoryError as e:  # an estimate in limits.py fell short: still one line
        parser.exit(2, f"{PROG}: error: out of memory{': ' + str(e) if str(e) else ''}; try a smaller --batch-size, "
                       f"--image-size or model\n")
    except RecursionError as e:
        parser.exit(2, f"{PROG}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
