"""Backpropagation through the whole model: the forward pass keeping every layer's cache, then the
same list of layers read in reverse. Nothing here is new maths: each step is a `*_forward` /
`*_backward` pair from layers.py.

    forward:   embedding -> [dropout] -> block 0 .. block L-1 -> ln_f -> head -> loss
    backward:  loss -> head -> ln_f -> block L-1 .. block 0 -> [dropout] -> embedding

The gradients come back as a flat dict keyed exactly like `model.params` (transformers' parameter
names), float32, and equal torch autograd on the same transformers model (tests/test_backward.py).

Dropout is off unless a `dropout_rng` (an np.random.Generator) is passed: then the config's
embd_pdrop, attn_pdrop and resid_pdrop apply where transformers applies them. Inference never drops.

Two paths run these same lines, chosen per model by training_path: "numpy", layers.py's pairs (the
reference, what model.to("numpy") trains with), and "kernels", kernels/cpu_train.py's mirrors of them
(Numba kernels for layer norm, attention, the MLP's activation, the loss; the same names and
signatures), which "cpu" and, for a model big enough to repay Numba's start-up, "auto" train with.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import layers
from .backends import image_work
from .inputs import check_classification_labels, check_encoder_states, check_input_ids, check_lm_labels, check_mask


# ---- which path ----------------------------------------------------------------------------------
# "auto" trains with the kernels from this much work per image (multiply-adds, backends.image_work) up:
# below it Numba's start-up (about 0.5 s a process once the kernels are cached) outweighs what a few
# steps save, and the tests' tiny models stay on the reference.
TRAIN_KERNELS_MIN_WORK = 1 << 22
# ... and up to this width: beyond it the step is the matmuls (BLAS on both paths) and the kernels gain
# nothing (benchmarks/bench_train.py, 2x512@16 batch 8, one thread: 1196 ms against numpy's 1177 ms, while
# at 128 wide they take 0.77 of numpy's time).
TRAIN_KERNELS_MAX_EMBD = 256


def training_path(model):
    """ "numpy" (layers.py's pairs) or "kernels" (kernels/cpu_train.py's): the model's device says, as for
    inference. "numpy" asked for by name trains on the reference; "cpu" and "cuda" on the kernels (the
    backward runs on the host); "auto" on the kernels where they pay: a model of at least
    TRAIN_KERNELS_MIN_WORK multiply-adds an image and at most TRAIN_KERNELS_MAX_EMBD wide."""
    requested = getattr(model.backend, "requested", model.device)
    if requested == "auto":
        cfg = model.config
        big_enough = image_work(cfg) >= TRAIN_KERNELS_MIN_WORK
        return "kernels" if big_enough and cfg.n_embd <= TRAIN_KERNELS_MAX_EMBD else "numpy"
    return "numpy" if requested == "numpy" else "kernels"


def training_ops(path):
    """The module whose `*_forward` / `*_backward` pairs a path runs: layers, or kernels.cpu_train (imported
    on first use, as backends imports kernels.cpu: so "numpy" never pays Numba's start-up)."""
    if path == "numpy":
        return layers
    if path == "kernels":
        from .kernels import cpu_train
        return cpu_train
    raise ValueError(f"unknown training path {path!r}: use 'numpy' or 'kernels'")


def step_threads(path, model, B, T):
    """The thread policy around one step's forward and backward: the kernels' (cpu_train.step_threads,
    timed per shape), or none for "numpy" (BLAS as the caller set it)."""
    if path == "numpy":
        return contextlib.nullcontext()
    return training_ops(path).step_threads((type(model).__name__, B, T, model.config.n_embd, model.config.n_layer))


# ---- the body ------------------------------------------------------------------------------------
def transformer_forward(model, input_ids, attention_mask=None, encoder_hidden_states=None, dropout_rng=None,
                        path="numpy"):
    """Embeddings, n_layer blocks, ln_f over whole sequences (no KV cache), on `path` (see training_path;
    the reference unless asked). -> h [B, T, C], caches (transformer_backward runs the same path)."""
    ops = training_ops(path)
    cfg, p, pre = model.config, model.params, model.prefix
    B, T = check_input_ids(cfg, input_ids, None)
    mask = None
    if attention_mask is not None:
        mask = layers.additive_mask(check_mask("attention_mask", attention_mask, (B, T)))  # [B, 1, 1, T]
    if encoder_hidden_states is not None:
        encoder_hidden_states = check_encoder_states(cfg, encoder_hidden_states, B)  # [B, S, C]
    position_ids = np.arange(T)[None, :]  # [1, T]
    x, emb = ops.embedding_forward(input_ids, p[pre + "wte.weight"], p[pre + "wpe.weight"], position_ids)
    x, emb_drop = ops.dropout_forward(x, cfg.embd_pdrop, dropout_rng)  # [B, T, C]
    blocks = []
    for i in range(cfg.n_layer):
        x, c = ops.transformer_block_forward(x, p, f"{pre}h.{i}.", cfg, i, mask=mask,
                                             encoder_hidden_states=encoder_hidden_states, rng=dropout_rng)
        blocks.append(c)
    h, ln_f = ops.layer_norm_forward(x, p[pre + "ln_f.weight"], cfg.layer_norm_epsilon)  # [B, T, C]
    return h, (ops, emb, emb_drop, blocks, ln_f)


def transformer_backward(model, dh, caches):
    """The body's forward read in reverse. -> grads for every body weight (zeros for unused ones,
    e.g. cross-attention without encoder states), and d encoder_hidden_states (None without them)."""
    pre = model.prefix
    ops, emb, emb_drop, blocks, ln_f = caches
    grads = {}
    dx, grads[pre + "ln_f.weight"] = ops.layer_norm_backward(dh, ln_f)  # [B, T, C]
    denc = None
    for c in reversed(blocks):
        dx, g, de = ops.transformer_block_backward(dx, c)
        grads.update(g)
        if de is not None:
            denc = de if denc is None else denc + de
    dx = ops.dropout_backward(dx, emb_drop)
    grads[pre + "wte.weight"], grads[pre + "wpe.weight"] = ops.embedding_backward(dx, emb)
    # keyed and ordered like model.params; a weight the forward never used has a zero gradient
    return {name: grads[name] if name in grads else np.zeros_like(w) for name, w in model.params.items()}, denc


# ---- the heads -----------------------------------------------------------------------------------
def causal_lm_value_and_grad(model, input_ids, labels, attention_mask=None, *, shift=True,
                             encoder_hidden_states=None, dropout_rng=None, path=None):
    """The LM loss of ImageGPTForCausalImageModeling and d loss / d every weight.

    labels as transformers takes them: same shape as input_ids, shifted inside (logits at t predict
    labels at t + 1), -100 ignored. shift=False instead aligns labels with the logits (OpenAI's form:
    feed SOS + pixels[:-1], target every pixel), which reaches the last position of n_positions.
    path: "numpy" or "kernels"; None takes training_path(model).
    -> (loss float32, grads dict keyed like model.params).
    """
    B, T = check_input_ids(model.config, input_ids, None)
    labels = check_lm_labels(labels, (B, T), model.config.vocab_size, shift=shift)
    path = training_path(model) if path is None else path
    ops = training_ops(path)
    with step_threads(path, model, B, T):
        h, body = transformer_forward(model, input_ids, attention_mask, encoder_hidden_states, dropout_rng, path)
        logits, head = ops.lm_head_forward(h, model.params["lm_head.weight"])  # [B, T, V]
        loss, loss_cache = ops.lm_loss_forward(logits, labels, shift=shift)

        dlogits = ops.lm_loss_backward(1.0, loss_cache)  # [B, T, V]
        dh, dw_head = ops.lm_head_backward(dlogits, head)  # [B, T, C]
        grads, _ = transformer_backward(model, dh, body)
    grads["lm_head.weight"] = dw_head
    return loss, grads


def classification_value_and_grad(model, input_ids, labels, attention_mask=None, *, dropout_rng=None, path=None):
    """The loss of ImageGPTForImageClassification (labels of shape (batch,), or (batch, num_labels) for
    multi-label) and d loss / d every weight. The head mean-pools every position, as transformers does,
    so attention_mask changes the attention but not the pooling. path as for causal_lm_value_and_grad.
    -> (loss, grads keyed like model.params).
    """
    B, T = check_input_ids(model.config, input_ids, None)
    labels, kind = check_classification_labels(model.config, labels, B)
    path = training_path(model) if path is None else path
    ops = training_ops(path)
    with step_threads(path, model, B, T):
        h, body = transformer_forward(model, input_ids, attention_mask, None, dropout_rng, path)
        logits, head = ops.classification_head_forward(h, model.params["score.weight"])  # [B, L]
        loss, loss_cache = ops.classification_loss_forward(logits, labels, kind)

        dlogits = ops.classification_loss_backward(1.0, loss_cache)  # [B, L]
        dh, dw_score = ops.classification_head_backward(dlogits, head)  # [B, T, C]
        grads, _ = transformer_backward(model, dh, body)
    grads["score.weight"] = dw_score
    return loss, grads
