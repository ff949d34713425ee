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
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np

from . import backprop, layers, optim
from .config import ImageGPTConfig
from .model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from .weights import atomic_write_bytes, load_file, save_file

PROG = "minigpt-pixels-train"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LATEST = "latest"  # the file in --out naming the newest complete checkpoint
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
LN2 = math.log(2.0)

# Architecture defaults (used when pre-training; fine-tuning takes the checkpoint's).
MODEL_DEFAULTS = dict(n_embd=96, n_layer=4, n_head=4, dropout=0.1)  # the default model's
# Optimisation defaults that differ between the two modes.
MODE_DEFAULTS = {"pretrain": dict(steps=4000, lr=2e-3, warmup=100),
                 "finetune": dict(steps=1000, lr=1e-3, warmup=50)}


class TrainError(Exception):
    """Bad data, arguments or checkpoints: reported as one line, exit status 2."""


class NonFiniteLoss(Exception):
    """The loss or the gradient norm is NaN or infinite at a step."""


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
    return Dataset(list(images), digits.target.astype(np.int64), [str(i) for i in range(10)], "digits", (8, 8))


def load_folder(path, need_same_size=True):
    """Every image under `path` (recursively, sorted). If every image sits in a sub-folder, the first
    sub-folder's name is its label (torchvision's ImageFolder convention)."""
    from .processor import ImageError, load_image

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
    images = []
    for f in files:
        try:
            images.append(load_image(f))  # RGB [H, W, 3]
        except ImageError as e:
            raise TrainError(str(e)) from None
    sizes = {}
    for f, im in zip(files, images):
        sizes.setdefault(im.shape[:2], f)
    if len(sizes) > 1 and need_same_size:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise TrainError(f"--data {path}: images of mixed sizes ({os.path.relpath(f1, root)} is {s1[0]}x{s1[1]}, "
                         f"{os.path.relpath(f2, root)} is {s2[0]}x{s2[1]}); pass --image-size to resize them all")
    rel = [os.path.relpath(f, root).split(os.sep) for f in files]
    labels = class_names = None
    if all(len(r) > 1 for r in rel):
        class_names = sorted({r[0] for r in rel})
        labels = np.array([class_names.index(r[0]) for r in rel], np.int64)
    return Dataset(images, labels, class_names, root, next(iter(sizes)))


def load_data(spec, need_same_size=True):
    return load_digits_data() if spec == "digits" else load_folder(spec, need_same_size)


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
def latest_checkpoint(out):
    """The checkpoint folder `out/latest` names, or None when there is none yet."""
    try:
        with open(os.path.join(out, LATEST), encoding="utf-8") as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    path = os.path.join(out, name)
    if not os.path.isfile(os.path.join(path, STATE_NAME)):
        raise TrainError(f"{out}/{LATEST} names {name}, which is not a complete checkpoint")
    return path


def save_checkpoint(out, model, processor, optimizer, state, keep=2):
    """Write checkpoint-NNNNNN under a temporary name, rename it into place, then point `latest` at it
    and remove all but the `keep` newest. At every moment `latest` names a complete checkpoint."""
    name = f"checkpoint-{state['step']:06d}"
    final = os.path.join(out, name)
    if not os.path.isdir(final):
        tmp = os.path.join(out, f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write_model_dir(tmp, model, processor)
            tensors, meta = optimizer.state_dict()
            save_file(tensors, os.path.join(tmp, OPTIMIZER_NAME), {"t": str(meta["t"])})
            atomic_write_bytes(os.path.join(tmp, STATE_NAME), (json.dumps(state, indent=2) + "\n").encode())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    atomic_write_bytes(os.path.join(out, LATEST), (name + "\n").encode())
    old = sorted(d for d in os.listdir(out) if d.startswith("checkpoint-") and d != name)
    for d in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    return final


def write_model_dir(directory, model, processor):
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def export_model(directory, model, processor):
    """Write the model and its processor to `directory`, replacing what was there in one rename. Other
    files already in it (a README) are carried over."""
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(directory)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_model_dir(tmp, model, processor)
    if os.path.isdir(directory):
        for f in os.listdir(directory):
            if not os.path.exists(os.path.join(tmp, f)) and os.path.isfile(os.path.join(directory, f)):
                shutil.copy2(os.path.join(directory, f), tmp)
        old = os.path.join(parent, f".{os.path.basename(directory)}.old-{os.getpid()}")
        os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old)
    else:
        os.rename(tmp, directory)
    return directory


def writable(params):
    """Loaded weights are read-only memory maps; the optimizer updates in place, so copy them."""
    return {k: np.array(v, dtype=np.float32) for k, v in params.items()}


# ---- one step, and evaluation --------------------------------------------------------------------
def train_step(model, optimizer, inputs, targets, lr, grad_clip, dropout_rng):
    """Forward, backward, clip, AdamW. -> (loss, gradient norm before clipping). Raises NonFiniteLoss
    before touching the weights if the loss or the gradients are not finite."""
    # a causal model's targets are aligned with its inputs (position t predicts pixel t): no shift
    aligned = {} if isinstance(model, ImageGPTForImageClassification) else {"shift": False}
    loss, grads = model.value_and_grad(inputs, targets, dropout_rng=dropout_rng, **aligned)
    if not np.isfinite(loss):
        raise NonFiniteLoss(f"loss is {float(loss)}")
    norm = optim.clip_grad_norm(grads, grad_clip)
    if not math.isfinite(norm):
        raise NonFiniteLoss(f"gradient norm is {norm} (loss {float(loss):.4f})")
    optimizer.step(model.params, grads, lr=lr)
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
    checks = [("steps", args.steps >= 1), ("batch-size", args.batch_size >= 1), ("lr", args.lr > 0),
              ("warmup", args.warmup >= 0), ("eval-every", args.eval_every >= 1),
              ("save-every", args.save_every >= 1), ("holdout", 0 < args.holdout < 1),
              ("weight-decay", args.weight_decay >= 0), ("grad-clip", args.grad_clip >= 0),
              ("keep", args.keep >= 1)]
    if args.dropout is not None:
        checks.append(("dropout", 0 <= args.dropout < 1))
    if args.n_colors is not None:
        checks.append(("n-colors", args.n_colors >= 2))
    if args.threads is not None:
        checks.append(("threads", args.threads >= 1))
    for name, ok in checks:
        if not ok:
            raise TrainError(f"--{name} {getattr(args, name.replace('-', '_'))} is out of range")
    if args.min_lr < 0 or args.min_lr > args.lr:
        raise TrainError(f"--min-lr {args.min_lr} must be between 0 and --lr {args.lr}")
    return mode


def build_run(args, mode):
    """Data, processor, model and optimizer, fresh or from `latest` with --resume.
    -> (model, processor, optimizer, state, (train_in, train_tgt), (val_in, val_tgt))."""
    out = args.out
    ckpt = latest_checkpoint(out) if os.path.isdir(out) else None
    if ckpt and not args.resume:
        raise TrainError(f"--out {out} already holds a run ({os.path.basename(ckpt)}); pass --resume to continue "
                         f"it, or choose another --out")
    if args.resume and ckpt is None:
        raise TrainError(f"--resume: no checkpoint in {out} (no '{LATEST}' file)")
    from .processor import ImageGPTImageProcessor

    image_size = None if args.image_size is None else (args.image_size, args.image_size)
    data = load_data(args.data, need_same_size=image_size is None and mode == "pretrain")
    if mode == "finetune" and data.labels is None:
        raise TrainError(f"fine-tuning needs labels: put each class's images of {args.data} in its own sub-folder")
    if len(data.images) < 2:
        raise TrainError(f"--data {args.data}: one image cannot be split into training and held-out images")
    train_idx, val_idx = split(len(data.images), args.holdout, args.split_seed)
    if args.batch_size > len(train_idx):
        raise TrainError(f"--batch-size {args.batch_size} is larger than the training split ({len(train_idx)} "
                         f"images of {len(data.images)}; {len(val_idx)} held out)")

    # the model's config, from the arguments (pre-training) or the source checkpoint (fine-tuning)
    if mode == "pretrain":
        size = image_size or data.size
        n_colors = args.n_colors or 16
        p = args.dropout
        config = ImageGPTConfig(vocab_size=n_colors + 1, n_positions=size[0] * size[1], n_embd=args.n_embd,
                                n_layer=args.n_layer, n_head=args.n_head, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p)
    else:
        try:
            source = ImageGPTConfig.from_pretrained(args.finetune_from)
        except (ValueError, OSError) as e:
            raise TrainError(f"--finetune-from: {e}") from None
        over = {} if args.dropout is None else dict(resid_pdrop=args.dropout, embd_pdrop=args.dropout,
                                                    attn_pdrop=args.dropout)
        config = replace(source, num_labels=len(data.class_names), id2label=dict(enumerate(data.class_names)),
                         label2id=None, problem_type="single_label_classification", extra={}, **over)

    if ckpt:  # --resume: the checkpoint's config must be the one these arguments describe
        with open(os.path.join(ckpt, STATE_NAME), encoding="utf-8") as f:
            state = json.load(f)
        saved = ImageGPTConfig.from_pretrained(ckpt)
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
        model = cls.from_pretrained(ckpt)
        model.params = writable(model.params)
    elif mode == "pretrain":
        processor = fit_processor([data.images[i] for i in train_idx], size, n_colors, args.seed)
        model = ImageGPTForCausalImageModeling(config, seed=args.seed)
        state = {"step": 0, "mode": mode, "data": data.source, "history": []}
    else:
        processor = ImageGPTImageProcessor.from_pretrained(args.finetune_from)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lm_head.weight ignored": expected when fine-tuning
            body = ImageGPTForCausalImageModeling.from_pretrained(args.finetune_from).params
        params = {k: v for k, v in body.items() if k != "lm_head.weight"}
        rng = np.random.default_rng(args.seed)
        params["score.weight"] = rng.normal(0.0, config.initializer_range,
                                            (config.num_labels, config.n_embd)).astype(np.float32)
        model = ImageGPTForImageClassification(config, writable(params))
        state = {"step": 0, "mode": mode, "data": data.source, "history": [],
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
        tensors = load_file(os.path.join(ckpt, OPTIMIZER_NAME))
        from .weights import load_metadata

        optimizer.load_state_dict(tensors, {"t": int(load_metadata(os.path.join(ckpt, OPTIMIZER_NAME))["t"])})
    state["args"] = {k: v for k, v in vars(args).items()}
    return model, processor, optimizer, state, (inputs[train_idx], targets[train_idx]), \
        (inputs[val_idx], targets[val_idx]), ckpt


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
                except NonFiniteLoss as e:  # raised before the update: the weights are still those of `step`
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


if __name__ == "__main__":
    sys.exit(main())
