"""The trainer's files: checkpoints in --out, the model it exports, and the checks that keep both from
touching anything the trainer did not write.

--out DIR gets checkpoint-NNNNNN/ folders in transformers' layout (config.json, model.safetensors,
preprocessor_config.json) plus optimizer.safetensors and trainer_state.json, and a `latest` file naming
the newest. Each is written under a temporary name (.checkpoint-NNNNNN.tmp-XXXX) and renamed into place
before `latest` moves to it, so `latest` always names a complete checkpoint. A run touches only the
checkpoint folders it wrote itself (listed in its trainer_state.json under "checkpoints"), its own
temporary folders and `latest`: a transformers Trainer's checkpoint-1000/, a user's
checkpoint-000003-backup/, another run's checkpoint-000003/ are never reused, replaced or pruned.
Folders are made with the permissions the umask gives, as every other file.

--export DIR gets the model's three files and a marker, `minigpt-pixels-export.json`, naming the run
that wrote them and each file's SHA-256. DIR must be new, empty, or hold this same run's earlier export
with its files as the marker records them; never the model a run started from, nor a folder holding
any other model file. Anything else in DIR (a README added later) is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings

import numpy as np

from .config import CONFIG_NAME
from .processor import PREPROCESSOR_CONFIG_NAME
from .weights import SAFE_WEIGHTS_NAME, atomic_write_bytes, link_exclusive, load_file, load_metadata, \
    non_finite_names, save_file

LATEST = "latest"  # the file in --out naming the newest complete checkpoint
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
EXPORT_FILES = (SAFE_WEIGHTS_NAME, PREPROCESSOR_CONFIG_NAME, CONFIG_NAME)  # in the order they are renamed
EXPORT_MARKER = "minigpt-pixels-export.json"  # which run exported the files beside it, and their hashes
CHECKPOINT = re.compile(r"checkpoint-(\d{6})")
CHECKPOINT_TMP = re.compile(r"\.checkpoint-\d{6}\.tmp-\w+")  # save_checkpoint's temporary folders
EXPORT_TMP = re.compile(r"\.export\.tmp-\w+")  # export_model's
# Weights of other tools and formats: a folder holding one is a model that an export must not pair with
# its own config.json.
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npz")


class CheckpointError(ValueError):
    """A checkpoint, --out or --export folder that cannot be used; the message names it."""


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
        raise CheckpointError(f"{out}/{LATEST}: cannot read it: {e}") from None
    if not CHECKPOINT.fullmatch(name):
        raise CheckpointError(f"{out}/{LATEST} names {name[:80]!r}, not a checkpoint-NNNNNN folder of this trainer")
    path = os.path.join(out, name)
    if not os.path.isfile(os.path.join(path, STATE_NAME)):
        raise CheckpointError(f"{out}/{LATEST} names {name}, which is not a complete checkpoint")
    return path


def read_state(ckpt):
    """A checkpoint's trainer_state.json, checked enough to resume from."""
    path = os.path.join(ckpt, STATE_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read it ({e}); the checkpoint is damaged") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("history"), list)):
        raise CheckpointError(f"{path}: not a trainer state (needs an integer 'step' and a 'history' list)")
    names = state.setdefault("checkpoints", [os.path.basename(ckpt)])  # older states: only the one resumed
    if not (isinstance(names, list) and all(isinstance(n, str) and CHECKPOINT.fullmatch(n) for n in names)):
        raise CheckpointError(f"{path}: its 'checkpoints' list is damaged")
    return state


def check_out(out, state):
    """Before any work: --out is a folder this run can write, holding no checkpoint-NNNNNN folder that it
    did not write itself but might reach (it would neither reuse nor replace one)."""
    if not writable_folder(out, "--out"):
        return
    ours = set(state["checkpoints"]) if state else set()
    start = state["step"] if state else 0
    for name in sorted(os.listdir(out)):
        m = CHECKPOINT.fullmatch(name)
        if m and name not in ours and int(m[1]) > start:
            raise CheckpointError(f"--out {out} holds {name}, which this run did not write "
                                  f"({'no ' + LATEST + ' file names it' if not state else 'newer than ' + LATEST});"
                                  f" it would be neither reused nor replaced: move it away, or choose another --out")


def writable_folder(path, option):
    """`path` is a folder this run can write to (-> True), or can be created (-> False: it is empty)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{option} {path} is a file, not a folder")
    if not os.path.isdir(path):
        _check_can_create(path, option)
        return False
    if not os.access(path, os.W_OK | os.X_OK):
        raise CheckpointError(f"{option} {path}: this folder is not writable")
    return True


def _check_can_create(path, option):
    """`path` does not exist: its nearest existing parent must be a writable folder."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CheckpointError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"{option} {path}: cannot create it, {parent} is not writable")


def remove_stale_temporaries(out):
    """Remove the .checkpoint-NNNNNN.tmp-XXXX folders an earlier run left when it was killed mid-save
    (SIGKILL, a power cut): only this trainer makes folders of that name. -> the names removed."""
    stale = [n for n in sorted(os.listdir(out)) if CHECKPOINT_TMP.fullmatch(n)
             and os.path.isdir(os.path.join(out, n)) and not os.path.islink(os.path.join(out, n))]
    for name in stale:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    return stale


def _make_temporary_folder(prefix, parent):
    """A fresh folder (never someone else's) with the permissions the umask gives, not mkdtemp's 0700:
    it is renamed into the checkpoint or export the user then shares."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path


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
        raise CheckpointError(f"{final} already exists and this run did not write it; not replacing it: move it "
                              f"away, or choose another --out")
    else:
        tmp = _make_temporary_folder(f".{name}.tmp-", out)
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


def load_optimizer_state(optimizer, ckpt):
    """Restore AdamW's moments and step count from a checkpoint's optimizer.safetensors."""
    path = os.path.join(ckpt, OPTIMIZER_NAME)
    try:
        t = load_metadata(path).get("t", "")
        if not t.isdigit():
            raise ValueError(f"{path}: its metadata has no step count 't'")
        optimizer.load_state_dict(load_file(path), {"t": int(t)})
    except (KeyError, ValueError) as e:  # SafetensorsError names the file; the moments' checks the tensor
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        where = "" if path in message else f"{path}: "
        raise CheckpointError(f"cannot resume from {ckpt}: {where}{message}") from None


def writable(params):
    """Loaded weights are read-only memory maps; the optimizer updates in place, so copy them."""
    return {k: np.array(v, dtype=np.float32) for k, v in params.items()}


def finite_model(path, cls, what):
    """A checkpoint's model with its weights as writable float32 copies (the optimizer updates them in
    place), refused when a tensor holds NaN or infinity (training from them could only give NaN), or
    when it lacks its head (a classifier has no lm_head.weight): from_pretrained would make a random one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lm_head.weight ignored" when fine-tuning; the rest: refused below
        try:
            model, info = cls.from_pretrained(path, output_loading_info=True)
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{what}: {e}") from None
    missing = sorted(info["missing_keys"])
    if missing:
        why = " (it is a classifier, not a causal model)" if missing[0] == "lm_head.weight" else ""
        raise CheckpointError(f"{what}: {path} has no {missing[0]}{why}")
    bad = non_finite_names(model.params)
    if bad:
        raise CheckpointError(f"{what}: tensor {bad[0]!r} of {path} holds NaN or infinite values")
    model.params = writable(model.params)
    return model


# ---- --export ------------------------------------------------------------------------------------
def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_marker(directory):
    """The export marker in `directory` -> dict, or None when there is none."""
    path = os.path.join(directory, EXPORT_MARKER)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"--export {directory}: cannot read its {EXPORT_MARKER} ({e}); not replacing "
                              f"anything there") from None
    files = marker.get("files") if isinstance(marker, dict) else None
    if not (isinstance(files, dict) and isinstance(marker.get("run"), str)
            and all(isinstance(v, list) for v in files.values())):
        raise CheckpointError(f"--export {directory}: its {EXPORT_MARKER} is damaged; not replacing anything there")
    return marker


def _same_folder(folder, source):
    """`folder` is `source`, or the folder of `source` when that is a weights file."""
    if os.path.isfile(source):
        source = os.path.dirname(os.path.abspath(source))
    return os.path.exists(folder) and os.path.exists(source) and os.path.samefile(folder, source)


def check_export(directory, run_id, sources=()):
    """Before any work (and again before exporting): --export DIR is new, empty, or holds this run's own
    earlier export, unchanged since. sources: (option, folder) pairs a run reads its model from, such as
    ("--finetune-from", DIR), which an export must never replace. -> the marker found, or None."""
    for option, source in sources:
        if source and _same_folder(directory, source):
            raise CheckpointError(f"--export {directory} is the {option} folder; exporting there would replace "
                                  f"the model this run starts from: export into a new folder")
    if not writable_folder(directory, "--export"):
        return None
    names = sorted(n for n in os.listdir(directory) if not EXPORT_TMP.fullmatch(n))
    others = [n for n in names if n.lower().endswith(MODEL_SUFFIXES) and n != SAFE_WEIGHTS_NAME]
    if others:
        raise CheckpointError(f"--export {directory} holds {others[0]}, another model's file; an export there "
                              f"would pair it with this model's config: export into a new folder")
    if not names:
        return None
    marker = _read_marker(directory)
    if marker is None:
        raise CheckpointError(f"--export {directory} is not empty (it holds {names[0]}) and holds no earlier export "
                              f"of this trainer (no {EXPORT_MARKER}): export into a new or empty folder")
    if marker["run"] != run_id:
        raise CheckpointError(f"--export {directory} holds the export of another run ({marker.get('out', '?')}); "
                              f"not replacing it: export into a new folder")
    for name in EXPORT_FILES:
        path = os.path.join(directory, name)
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)
                                      or _sha256(path) not in marker["files"].get(name, [])):
            raise CheckpointError(f"--export {directory}: its {name} is not the file this run exported there "
                                  f"(changed since); not replacing it")
    return marker


def _write_marker(directory, run_id, out, files, replace):
    text = json.dumps({"tool": "minigpt-pixels-train", "run": run_id, "out": os.path.abspath(out),
                       "files": files}, indent=2) + "\n"
    atomic_write_bytes(os.path.join(directory, EXPORT_MARKER), text.encode(), replace=replace)


def export_model(directory, model, processor, run_id, out, sources=()):
    """Write the model's three files into `directory`, each by a rename, and the marker that lets this
    run export there again: nothing else in the folder is touched. The marker is written first and
    vouches for the old and the new file of each name while they are swapped, so an export cut short
    can be repeated."""
    marker = check_export(directory, run_id, sources)  # again: the folder may have changed while training
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = _make_temporary_folder(".export.tmp-", directory)  # same file system: renames are atomic
    try:
        write_model_dir(tmp, model, processor)
        new = {name: _sha256(os.path.join(tmp, name)) for name in EXPORT_FILES}
        present = {n: _sha256(os.path.join(directory, n)) for n in EXPORT_FILES
                   if os.path.isfile(os.path.join(directory, n))}
        _write_marker(directory, run_id, out, {n: [new[n], *([present[n]] if n in present else [])]
                                               for n in EXPORT_FILES}, replace=marker is not None)
        for name in EXPORT_FILES:  # the config last: a folder with a config always has its weights
            src, dest = os.path.join(tmp, name), os.path.join(directory, name)
            if name in present:
                os.replace(src, dest)  # this run's earlier export: check_export has just vouched for it
            else:
                link_exclusive(src, dest)  # a file of that name appearing meanwhile is not replaced
        _write_marker(directory, run_id, out, {n: [new[n]] for n in EXPORT_FILES}, replace=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
