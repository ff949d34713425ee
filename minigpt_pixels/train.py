"""Train a small ImageGPT in NumPy: `python -m minigpt_pixels.train` (or `minigpt-pixels-train`).

Pre-training (the default) fits a palette to the images and trains ImageGPTForCausalImageModeling on
SOS + pixels[:-1] -> every pixel (OpenAI's form of the shift). `--resume` continues the run in --out;
`--init-from DIR` starts a new run (fresh optimizer and schedule) from DIR's weights and palette;
`--finetune-from DIR` trains ImageGPTForImageClassification on the images' labels. Ctrl-C, SIGTERM and
SIGHUP finish the step, save and exit. Each step's batch and dropout come from (seed, step), so a resumed
run equals a straight one. Images: datasets.py; checkpoints and --export: checkpoints.py. The default
model (minigpt_pixels.DEFAULT_MODEL, from these defaults) and its fine-tuned classifier were made with:

    python -m minigpt_pixels.train --data digits --out runs/digits --n-embd 96 --n-layer 4 --n-head 4 \\
        --steps 4000 --batch-size 32 --lr 2e-3 --dropout 0.1 --seed 0 --threads 1 \\
        --export minigpt_pixels/data/default_model
    python -m minigpt_pixels.train --finetune-from minigpt_pixels/data/default_model \\
        --out runs/digits-classifier --steps 1000 --lr 1e-3 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
from tqdm.auto import tqdm

from . import backprop, checkpoints, layers, limits, optim
from .checkpoints import CheckpointError
from .config import ImageGPTConfig
from .datasets import DataError, encode, fit_processor, load_data, split
from .kernels.threads import at_most as set_threads  # --threads (notebooks 5 and 8 use it too)
from .model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from .processor import ImageGPTImageProcessor
from .weights import non_finite_names


class TrainError(Exception):
    """Bad arguments: reported as one line, exit status 2."""


class NonFiniteLoss(Exception):
    """The loss or the gradient norm is NaN or infinite at a step, or the weights after its update."""


class Diverged(TrainError):
    """Training stopped on a non-finite loss: exit status 1."""


# ---- one step, the loss, evaluation --------------------------------------------------------------
def train_step(model, optimizer, inputs, targets, lr, grad_clip, dropout_rng):
    """Forward, backward, clip, AdamW. -> (loss, gradient norm before clipping). Raises NonFiniteLoss
    before touching the weights if the loss or the gradients are not finite, and after the update if a
    weight is (a huge step from finite gradients): such weights are never saved."""
    loss, grads = loss_and_grads(model, inputs, targets, dropout_rng)
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


def loss_and_grads(model, inputs, targets, dropout_rng=None):
    """The one loss of training and evaluation, and its gradient for every weight: the causal model's
    cross-entropy over targets aligned with its inputs (position t predicts pixel t, so no shift), or
    the classifier's over the labels. -> (loss float32, grads keyed like model.params)."""
    aligned = {} if isinstance(model, ImageGPTForImageClassification) else {"shift": False}
    return model.value_and_grad(inputs, targets, dropout_rng=dropout_rng, **aligned)


def evaluate(model, inputs, targets, batch=32):
    """Held-out metrics without dropout: mean nats per token (causal) or per image, in bits too, and the
    classifier's accuracy. The loss is train_step's own, loss_and_grads: one definition for both, at
    the price of a backward pass whose gradients are dropped (2.7x a forward alone; on the default
    model, one evaluation costs 2% of the 250 steps between two). In batches of `batch` images: the training batch fits in
    memory, so this does too."""
    classify = isinstance(model, ImageGPTForImageClassification)
    total, correct = 0.0, 0
    for i in range(0, len(inputs), batch):
        x, t = inputs[i:i + batch], targets[i:i + batch]
        loss, _ = loss_and_grads(model, x, t)
        total += float(loss) * t.size  # a mean over the batch's targets (no -100 here), weighted by their count
        if classify:  # the training forward (pure NumPy, no Numba compile), for the predicted classes
            h, _ = backprop.transformer_forward(model, x)  # [b, T, C]
            logits = layers.classification_head(h, model.params["score.weight"])  # [b, L]
            correct += int(np.sum(np.argmax(logits, axis=-1) == t))
    nats = total / targets.size
    out = {"nats": nats, "bits": nats / math.log(2.0)}
    if classify:
        out["accuracy"] = correct / len(targets)
    return out


# ---- the loop ------------------------------------------------------------------------------------
def train(r, args, stop, bar):
    """nanoGPT's loop: from r.step to --steps, each step's batch and dropout drawn from (seed, step), the
    learning rate from the warm-up and cosine, one train_step; held-out metrics every --eval-every steps
    and a checkpoint every --save-every. A signal (`stop`) ends it after the step in progress."""
    cfg = r.model.config
    dropout = bool(cfg.resid_pdrop or cfg.attn_pdrop or cfg.embd_pdrop)
    losses, t0, tokens = [], time.perf_counter(), 0
    while r.step < args.steps and not stop.requested:
        rng = np.random.default_rng([args.seed, r.step])  # this step's batch and dropout: resumable
        batch = rng.choice(len(r.x_train), size=args.batch_size, replace=False)
        lr = optim.lr_schedule(r.step, args.lr, args.steps, args.warmup, args.min_lr)
        try:
            loss, norm = train_step(r.model, r.optimizer, r.x_train[batch], r.y_train[batch], lr, args.grad_clip,
                                    rng if dropout else None)
        except NonFiniteLoss as e:  # nothing of this step is saved: the last checkpoint is finite
            where = f"the last good checkpoint is {r.last_good}" if r.last_good else "no checkpoint was written"
            raise Diverged(f"stopping: {e} at step {r.step + 1}; {where}") from None
        r.step += 1
        losses.append(loss)
        tokens += args.batch_size * r.x_train.shape[1]  # every position of every image goes through the model
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", grad_norm=f"{norm:.2f}",
                        tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f}")
        if r.step % args.eval_every == 0 or r.step == args.steps:
            record(r, float(np.mean(losses)))
            losses = []
        if r.step % args.save_every == 0 or r.step == args.steps:
            save(r)


def run(args, mode):
    """Set up, train, then report and --export; on a signal, save and stop. -> the exit status."""
    r = build_run(args, mode)
    os.makedirs(r.out, exist_ok=True)
    stale = checkpoints.remove_stale_temporaries(r.out)
    if stale:
        tqdm.write(f"removed {len(stale)} temporary folder(s) a killed save left in {r.out} ({stale[0]})")
    tqdm.write(describe(r, mode))
    if r.skipped:  # said, not silent: a class folder of .heic photos would otherwise vanish from the labels
        tqdm.write(f"--data: skipped {len(r.skipped)} file(s) or folder(s) that are hidden or not images "
                   f"({', '.join(r.skipped[:3])}{', ...' if len(r.skipped) > 3 else ''})")
    bar = tqdm(total=args.steps, initial=r.step, desc=mode, unit="step", disable=not args.progress,
               dynamic_ncols=True)
    t_start = r.optimizer.t
    with StopRequest() as stop:  # held while saving and exporting too: a second signal cleans up, then stops
        try:
            train(r, args, stop, bar)
        except KeyboardInterrupt:  # a second signal, or Ctrl-C where no handler could be installed
            stop.requested = stop.requested or signal.SIGINT
        finally:
            bar.close()
        saved = r.last_good == os.path.join(r.out, checkpoints.checkpoint_name(r.step))
        if stop.requested and not (saved and r.step >= args.steps):  # (after the last save: the run is done)
            # AdamW has not begun a step it did not finish: the weights are those after r.step
            return interrupted(r, stop.requested, r.optimizer.t == t_start + r.step - r.start)
        finish(r, args)
    return 0


def record(r, train_loss):
    """Held-out metrics at r.step, printed and kept in the trainer state's history."""
    metrics = evaluate(r.model, r.x_val, r.y_val, r.batch_size)
    entry = {"step": r.step, "train_loss": train_loss, "val_nats": metrics["nats"], "val_bits": metrics["bits"]}
    if "accuracy" in metrics:
        entry["val_accuracy"] = metrics["accuracy"]
        tqdm.write(f"step {r.step}: train loss {train_loss:.4f}, held-out loss {metrics['nats']:.4f}, "
                   f"held-out accuracy {metrics['accuracy']:.4f}")
    else:
        tqdm.write(f"step {r.step}: train {train_loss:.4f} nats/token, held-out {metrics['nats']:.4f} nats/token = "
                   f"{metrics['bits']:.4f} bits/token")
    r.state["history"].append(entry)


def save(r):
    r.state["step"] = r.step
    r.last_good = checkpoints.save_checkpoint(r.out, r.model, r.processor, r.optimizer, r.state, keep=r.keep)
    return r.last_good


def interrupted(r, signum, consistent):
    """Ctrl-C, SIGTERM or SIGHUP: save the finished steps, say where they are. -> 128 + the signal."""
    why = f"interrupted at step {r.step} ({signal.Signals(signum).name})"
    if consistent and r.step > r.start:
        print(f"{why}; saved {save(r)}; continue with --resume", file=sys.stderr)
    elif r.last_good:
        print(f"{why}; the last good checkpoint is {r.last_good}; continue with --resume", file=sys.stderr)
    else:
        print(f"{why}; no checkpoint written", file=sys.stderr)
    return 128 + signum


def finish(r, args):
    """The final held-out figures, then --export."""
    if r.step == r.start and r.resumed:  # nothing left to train: --steps already reached
        tqdm.write(f"{r.last_good} is already at step {r.step} of --steps {args.steps}")
        if not r.state["history"] or r.state["history"][-1]["step"] != r.step:
            record(r, float("nan"))
    final = r.state["history"][-1]
    summary = (f"held-out accuracy {final['val_accuracy']:.4f} ({len(r.x_val)} images)" if "val_accuracy" in final
               else f"held-out {final['val_nats']:.4f} nats/token = {final['val_bits']:.4f} bits/token")
    tqdm.write(f"done: step {r.step}, {summary}; checkpoint {r.last_good}")
    if args.export:
        where = checkpoints.export_model(args.export, r.model, r.processor, r.state["run_id"], r.out, r.sources)
        tqdm.write(f"exported to {where}")


def describe(r, mode):
    m = r.model
    return (f"{mode}: {type(m).__name__} with {m.num_parameters:,} parameters (n_layer {m.config.n_layer}, "
            f"n_embd {m.config.n_embd}), {len(r.x_train)} training / {len(r.x_val)} held-out images of "
            f"{r.processor.size['height']}x{r.processor.size['width']}, {len(r.processor.clusters)} colours"
            + (f"; resuming at step {r.step}" if r.resumed else "")
            + (f"; initialised from {r.state['init_from']}" if r.state.get("init_from") else ""))


class StopRequest:
    """The first Ctrl-C, SIGTERM (kill, timeout, Slurm's pre-emption, docker stop) or SIGHUP (a closed
    terminal) asks the loop to stop after the current step, which then saves; a second one raises
    KeyboardInterrupt at once. A signal the process was started ignoring (nohup's SIGHUP) stays ignored.
    Only the main thread can install handlers; elsewhere Ctrl-C stays a plain KeyboardInterrupt."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))

    def __init__(self):
        self.requested = 0  # the signal that asked, or 0
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self):
        for s in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


# ---- set-up --------------------------------------------------------------------------------------
MODEL_DEFAULTS = dict(n_embd=96, n_layer=4, n_head=4, dropout=0.1)  # the default model's (pre-training)
MODE_DEFAULTS = {"pretrain": dict(steps=4000, lr=2e-3, warmup=100),  # optimisation defaults that differ
                 "finetune": dict(steps=1000, lr=1e-3, warmup=50)}
ARCHITECTURE = ("n_embd", "n_layer", "n_head", "n_colors", "image_size")  # what a source model fixes


@dataclass
class Run:
    """Everything a run works on; `step` moves as it trains."""
    model: object
    processor: ImageGPTImageProcessor
    optimizer: optim.AdamW
    state: dict  # trainer_state.json: step, mode, data, history, checkpoints, run_id, args
    x_train: np.ndarray  # [N, T] int64 inputs
    y_train: np.ndarray  # [N, T] targets (causal) or [N] labels
    x_val: np.ndarray
    y_val: np.ndarray
    out: str
    keep: int
    batch_size: int
    sources: tuple  # (option, folder) a model was read from, never exported into
    skipped: list  # what --data held that is not an image
    last_good: str | None  # the newest complete checkpoint (at first: the one resumed, if any)
    resumed: bool  # --resume: continues a checkpoint's run
    start: int  # the step it started at
    step: int


def resolve(args):
    """Fill the mode-dependent defaults and check every argument, before anything is loaded.
    -> the mode ("pretrain" or "finetune")."""
    if args.finetune_from and args.init_from:
        raise TrainError("--init-from and --finetune-from cannot be combined: fine-tuning already starts from "
                         "--finetune-from's weights")
    mode = "finetune" if args.finetune_from else "pretrain"
    source = "--finetune-from" if args.finetune_from else "--init-from" if args.init_from else None
    for k, v in MODE_DEFAULTS[mode].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    given = [k for k in ARCHITECTURE if getattr(args, k) is not None]
    if source and given:
        raise TrainError(f"--{given[0].replace('_', '-')} cannot be given with {source}: the architecture, "
                         f"palette and image size come from {source}")
    for k, v in ({} if source else MODEL_DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for name, ok, need in argument_checks(args):
        value = getattr(args, name.replace('-', '_'))
        if value is not None and not ok(value):
            why = " (not finite as float32)" if isinstance(value, float) and not optim.finite_float32(value) else ""
            raise TrainError(f"--{name} {value} is out of range{why}: it must be {need}")
    if args.min_lr < 0 or args.min_lr > args.lr:
        raise TrainError(f"--min-lr {args.min_lr} must be between 0 and --lr {args.lr}")
    return mode


AT_LEAST_ONE = ("steps", "batch-size", "eval-every", "save-every", "keep", "image-size", "n-embd", "n-layer",
                "n-head")
MAX_THREADS = 4096  # --threads: more than any machine has (BLAS takes the count as a C int)
NOT_NEGATIVE = ("warmup", "seed", "split-seed")  # a negative seed is refused by NumPy, after the data loads


def argument_checks(args):
    """(option, test, what it needs) for every number; a None value (the default) is not tested."""
    f32 = optim.finite_float32
    return [*((name, lambda v: v >= 1, "at least 1") for name in AT_LEAST_ONE),
            *((name, lambda v: v >= 0, "0 or more") for name in NOT_NEGATIVE),
            ("threads", lambda v: 1 <= v <= MAX_THREADS, f"between 1 and {MAX_THREADS}"),
            ("lr", lambda v: v > 0 and f32(v), "a positive float32"), ("min-lr", f32, "a finite float32"),
            ("holdout", lambda v: 0 < v < 1, "between 0 and 1"), ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("weight-decay", lambda v: v >= 0 and f32(v), "0 or more"), ("n-colors", lambda v: v >= 2, "at least 2"),
            ("grad-clip", lambda v: v >= 0 and math.isfinite(v), "0 (off) or more")]


def build_run(args, mode):
    """Data, processor, model and optimizer, fresh, from --init-from, or from --out's latest checkpoint
    with --resume. The checks that need no work come first (--out, --export, the source model's config),
    then every size against the memory available, from the images' headers, before any image is decoded."""
    ckpt, state = open_out(args)
    run_id = state.get("run_id") if state else None
    run_id = run_id or secrets.token_hex(8)  # names this run in its exports' markers
    sources = (("--finetune-from", args.finetune_from), ("--init-from", args.init_from))
    if args.export:
        check_export_args(args, run_id, sources)
    source, source_processor = read_source(args)
    n_colors = args.n_colors or 16
    size = None if args.image_size is None else (args.image_size, args.image_size)
    if source_processor is not None:  # the image size comes from the source model's processor
        size = (source_processor.size["height"], source_processor.size["width"])
    data = load_data(args.data, size, need_same_size=size is None, check=fits_check(args, mode, n_colors, source),
                     resample=source_processor.resample if source_processor else None)
    train_idx, val_idx = check_data(args, mode, data)
    config = make_config(args, mode, n_colors, size or data.size, source, data.class_names)
    if ckpt:
        model, processor = resume_model(ckpt, state, config, mode, data)
    else:
        model, processor, state = new_model(args, mode, config, data, train_idx, source_processor)
    inputs, targets = model_data(model, processor, data, mode)
    optimizer = optim.AdamW(model.params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay,
                            decay=optim.decay_names(model.params, args.decay_position_embeddings))
    if ckpt:
        checkpoints.load_optimizer_state(optimizer, ckpt)
    state["run_id"], state["args"] = run_id, dict(vars(args))
    return Run(model=model, processor=processor, optimizer=optimizer, state=state,
               x_train=inputs[train_idx], y_train=targets[train_idx], x_val=inputs[val_idx], y_val=targets[val_idx],
               out=args.out, keep=args.keep, batch_size=args.batch_size, sources=sources, skipped=data.skipped,
               last_good=ckpt, resumed=ckpt is not None, start=state["step"], step=state["step"])


def open_out(args):
    """--out's latest checkpoint and its state (None, None for a new run), checked against --resume."""
    out = args.out
    ckpt = checkpoints.latest_checkpoint(out) if os.path.isdir(out) else None
    if ckpt and not args.resume:
        raise TrainError(f"--out {out} already holds a run ({os.path.basename(ckpt)}); pass --resume to continue "
                         f"it, or choose another --out")
    if args.resume and ckpt is None:
        raise TrainError(f"--resume: no checkpoint in {out} (no '{checkpoints.LATEST}' file)")
    state = checkpoints.read_state(ckpt) if ckpt else None
    if state and state.get("init_from") and not args.init_from:  # its config comes from there
        raise TrainError(f"--resume: the run in {out} started --init-from {state['init_from']}; pass that again")
    checkpoints.check_out(out, state)
    return ckpt, state


def check_export_args(args, run_id, sources):
    out, export = os.path.abspath(args.out), os.path.abspath(args.export)
    if out == export or (os.path.isdir(out) and os.path.isdir(export) and os.path.samefile(out, export)):
        raise TrainError(f"--export {args.export} is the --out folder, which holds the checkpoints: export into "
                         f"a folder of its own")
    checkpoints.check_export(args.export, run_id, sources)


def read_source(args):
    """The config and processor of --finetune-from's or --init-from's model, or (None, None)."""
    option, path = ("--finetune-from", args.finetune_from) if args.finetune_from else ("--init-from", args.init_from)
    if not path:
        return None, None
    try:
        return ImageGPTConfig.from_pretrained(path), ImageGPTImageProcessor.from_pretrained(path)
    except (ValueError, OSError) as e:
        raise TrainError(f"{option}: {e}") from None


def make_config(args, mode, n_colors, size, source=None, class_names=None):
    """The model's config: from the arguments (pre-training), or the source model's (--init-from, and
    fine-tuning with the classes as labels); --dropout, when given, overrides the source's."""
    p = args.dropout
    over = {} if p is None else dict(resid_pdrop=p, embd_pdrop=p, attn_pdrop=p)
    if mode == "finetune":
        labels = dict(enumerate(class_names)) if class_names else None
        return replace(source, num_labels=len(labels) if labels else 2, id2label=labels, label2id=None,
                       problem_type="single_label_classification", extra={}, **over)
    if source is not None:
        return replace(source, **over)
    return ImageGPTConfig(vocab_size=n_colors + 1, n_positions=size[0] * size[1], n_embd=args.n_embd,
                          n_layer=args.n_layer, n_head=args.n_head, **over)


def fits_check(args, mode, n_colors, source):
    """check(size, n_images) for load_data: refuses, before any image is decoded, a training size this
    machine cannot hold."""
    def check(size, n_images):
        what = f"--image-size {args.image_size}" if args.image_size else f"images of {size[0]}x{size[1]}"
        if source is None:  # the weights first, from the numbers alone (the config would refuse them too)
            sizes = SimpleNamespace(vocab_size=n_colors + 1, n_positions=size[0] * size[1], n_embd=args.n_embd,
                                    n_layer=args.n_layer, n_head=args.n_head, num_labels=2)
            nbytes, budget = limits.model_bytes(sizes), limits.machine_memory()
            if nbytes is not None and nbytes > budget:
                raise TrainError(f"--n-layer {args.n_layer}, --n-embd {args.n_embd}, --n-colors {n_colors} and {what} "
                                 f"make {limits.parameter_count(sizes):,} parameters ({limits.fmt_bytes(nbytes)} as "
                                 f"float32), more than this machine's {limits.fmt_bytes(budget)} of memory")
        config = make_config(args, mode, n_colors, size, source)
        # the data: uint8 pixels, the palette fit's float32 pixels, int64 inputs and targets
        data = n_images * size[0] * size[1] * (3 + 3 * 4 + 2 * 8)
        limits.check_bytes(limits.training_bytes(config, args.batch_size) + data,
                           f"{what} ({config.n_positions:,} positions) with --batch-size {args.batch_size}: training",
                           hint="; use a smaller --image-size or --batch-size")
    return check


def check_data(args, mode, data):
    """Enough images, and labels of two classes or more for fine-tuning. -> (train, held-out) indices."""
    if mode == "finetune" and data.labels is None:
        raise TrainError(f"fine-tuning needs labels: put each class's images of {args.data} in its own sub-folder")
    if mode == "finetune" and len(data.class_names) < 2:
        raise TrainError(f"fine-tuning needs two classes or more: every image of --data {args.data} is in the one "
                         f"sub-folder {data.class_names[0]!r}")
    if len(data.images) < 2:
        raise TrainError(f"--data {args.data}: one image cannot be split into training and held-out images")
    train_idx, val_idx = split(len(data.images), args.holdout, args.split_seed)
    if args.batch_size > len(train_idx):
        raise TrainError(f"--batch-size {args.batch_size} is larger than the training split ({len(train_idx)} "
                         f"images of {len(data.images)}; {len(val_idx)} held out)")
    return train_idx, val_idx


def resume_model(ckpt, state, config, mode, data):
    """--resume: the checkpoint's model and processor, when its config is the one these arguments give."""
    try:
        saved = ImageGPTConfig.from_pretrained(ckpt).to_dict()
    except (ValueError, OSError) as e:
        raise TrainError(f"cannot resume from {ckpt}: {e}") from None
    wanted = config.to_dict()
    diff = [k for k, v in wanted.items() if k != "architectures" and saved.get(k) != v]
    if diff:
        k = diff[0]
        raise TrainError(f"cannot resume from {ckpt}: its config has {k}={saved.get(k)!r}, these arguments give "
                         f"{k}={wanted[k]!r}; use the original arguments or a new --out")
    if state.get("mode") != mode or state.get("data") != data.source:
        raise TrainError(f"cannot resume from {ckpt}: it is a {state.get('mode')} run on {state.get('data')}, "
                         f"not a {mode} run on {data.source}")
    cls = ImageGPTForImageClassification if mode == "finetune" else ImageGPTForCausalImageModeling
    return checkpoints.finite_model(ckpt, cls, f"cannot resume from {ckpt}"), \
        ImageGPTImageProcessor.from_pretrained(ckpt)


def new_model(args, mode, config, data, train_idx, source_processor):
    """A new run's model, processor and state: fresh weights and a palette fitted to the training images,
    --init-from's weights and palette, or --finetune-from's body with a new classifier head."""
    state = {"step": 0, "mode": mode, "data": data.source, "history": [], "checkpoints": []}
    if mode == "pretrain" and not args.init_from:
        processor = fit_processor([data.images[i] for i in train_idx], data.size, config.vocab_size - 1, args.seed)
        return ImageGPTForCausalImageModeling(config, seed=args.seed), processor, state
    option, path = ("--finetune-from", args.finetune_from) if mode == "finetune" else ("--init-from", args.init_from)
    params = checkpoints.finite_model(path, ImageGPTForCausalImageModeling, option).params  # writable copies
    state[option[2:].replace("-", "_")] = os.path.abspath(path)
    if mode == "pretrain":
        return ImageGPTForCausalImageModeling(config, params), source_processor, state
    params.pop("lm_head.weight")
    rng = np.random.default_rng(args.seed)
    params["score.weight"] = rng.normal(0.0, config.initializer_range,
                                        (config.num_labels, config.n_embd)).astype(np.float32)
    return ImageGPTForImageClassification(config, params), source_processor, state


def model_data(model, processor, data, mode):
    """The images as the model's inputs and targets: SOS + pixels[:-1] -> every pixel (pre-training), or
    the pixels -> the label (fine-tuning, as transformers' users feed a classifier)."""
    h, w = processor.size["height"], processor.size["width"]
    if h * w != model.config.n_positions:
        raise TrainError(f"the processor makes {h}x{w} = {h * w} tokens, the model has {model.config.n_positions} "
                         f"positions")
    ids = encode(processor, data.images)  # [N, h*w]
    if mode == "finetune":
        return ids, data.labels
    sos = np.full((len(ids), 1), model.config.sos_token_id, np.int64)
    return np.concatenate([sos, ids[:, :-1]], axis=1), ids


# ---- the command line ----------------------------------------------------------------------------
PROG = "minigpt-pixels-train"


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
    g = p.add_argument_group("model (pre-training; --finetune-from and --init-from take the source model's)")
    g.add_argument("--n-embd", type=int, default=None, help=f"hidden width (default: {MODEL_DEFAULTS['n_embd']})")
    g.add_argument("--n-layer", type=int, default=None, help=f"blocks (default: {MODEL_DEFAULTS['n_layer']})")
    g.add_argument("--n-head", type=int, default=None, help=f"attention heads (default: {MODEL_DEFAULTS['n_head']})")
    g.add_argument("--dropout", type=float, default=None,
                   help=f"resid/embd/attn dropout while training (default: {MODEL_DEFAULTS['dropout']}; "
                        f"fine-tuning and --init-from: the source model's)")
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
    g.add_argument("--threads", type=int, default=None,
                   help="threads that compute: BLAS's and the cpu device's kernels' (default: the libraries' choice)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=os.path.join("runs", "digits"), help="checkpoint folder")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint --out/latest names")
    g.add_argument("--init-from", default=None, metavar="DIR",
                   help="start a new run (fresh optimizer and schedule) from this causal model's weights, config "
                        "and palette")
    g.add_argument("--finetune-from", default=None, metavar="DIR",
                   help="fine-tune ImageGPTForImageClassification from this causal checkpoint on the labels")
    g.add_argument("--eval-every", type=int, default=250, help="evaluate on the held-out split every N steps")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    g.add_argument("--keep", type=int, default=2, help="checkpoints kept in --out")
    g.add_argument("--export", default=None, metavar="DIR",
                   help="at the end, write the model and processor (no optimizer state) to DIR: a new or empty "
                        "folder, or this run's earlier export")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        mode = resolve(args)
        with set_threads(args.threads):
            return run(args, mode)
    except KeyboardInterrupt:  # during set-up (nothing written yet), or a third signal while saving
        print("interrupted; stopped without saving", file=sys.stderr)
        return 130
    except (TrainError, DataError, CheckpointError, OSError, ValueError) as e:
        parser.exit(1 if isinstance(e, Diverged) else 2, f"{PROG}: error: {e}\n")
    except MemoryError as e:  # an estimate in limits.py fell short: still one line
        parser.exit(2, f"{PROG}: error: out of memory{': ' + str(e) if str(e) else ''}; try a smaller --batch-size, "
                       f"--image-size or model\n")
    except RecursionError as e:
        parser.exit(2, f"{PROG}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
