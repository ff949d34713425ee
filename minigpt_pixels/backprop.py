"""Backpropagation through the whole model: the forward pass keeping every layer's cache, then the
same list of layers read in reverse. Nothing here is new maths: each step is a `*_forward` /
`*_backward` pair from layers.py.

    forward:   embedding -> [dropout] -> block 0 .. block L-1 -> ln_f -> head -> loss
    backward:  loss -> head -> ln_f -> block L-1 .. block 0 -> [dropout] -> embedding

The gradients come back as a flat dict keyed exactly like `model.params` (transformers' parameter
names), float32, and equal torch autograd on the same transformers model (tests/test_backward.py).

Dropout is off unless a `dropout_rng` (an np.random.Generator) is passed: then the config's
embd_pdrop, attn_pdrop and resid_pdrop apply where transformers applies them. Inference never drops.
"""

from __future__ import annotations

import numpy as np

from . import layers
from .inputs import check_classification_labels, check_encoder_states, check_input_ids, check_lm_labels, check_mask


# ---- the body ------------------------------------------------------------------------------------
def transformer_forward(model, input_ids, attention_mask=None, encoder_hidden_states=None, dropout_rng=None):
    """Embeddings, n_layer blocks, ln_f over whole sequences (no KV cache). -> h [B, T, C], caches."""
    cfg, p, pre = model.config, model.params, model.prefix
    B, T = check_input_ids(cfg, input_ids, None)
    mask = None
    if attention_mask is not None:
        mask = layers.additive_mask(check_mask("attention_mask", attention_mask, (B, T)))  # [B, 1, 1, T]
    if encoder_hidden_states is not None:
        encoder_hidden_states = check_encoder_states(cfg, encoder_hidden_states, B)  # [B, S, C]
    position_ids = np.arange(T)[None, :]  # [1, T]
    x, emb = layers.embedding_forward(input_ids, p[pre + "wte.weight"], p[pre + "wpe.weight"], position_ids)
    x, emb_drop = layers.dropout_forward(x, cfg.embd_pdrop, dropout_rng)  # [B, T, C]
    blocks = []
    for i in range(cfg.n_layer):
        x, c = layers.transformer_block_forward(x, p, f"{pre}h.{i}.", cfg, i, mask=mask,
                                                encoder_hidden_states=encoder_hidden_states, rng=dropout_rng)
        blocks.append(c)
    h, ln_f = layers.layer_norm_forward(x, p[pre + "ln_f.weight"], cfg.layer_norm_epsilon)  # [B, T, C]
    return h, (emb, emb_drop, blocks, ln_f)


def transformer_backward(model, dh, caches):
    """The body's forward read in reverse. -> grads for every body weight (zeros for unused ones,
    e.g. cross-attention without encoder states), and d encoder_hidden_states (None without them)."""
    pre = model.prefix
    emb, emb_drop, blocks, ln_f = caches
    grads = {}
    dx, grads[pre + "ln_f.weight"] = layers.layer_norm_backward(dh, ln_f)  # [B, T, C]
    denc = None
    for c in reversed(blocks):
        dx, g, de = layers.transformer_block_backward(dx, c)
        grads.update(g)
        if de is not None:
            denc = de if denc is None else denc + de
    dx = layers.dropout_backward(dx, emb_drop)
    grads[pre + "wte.weight"], grads[pre + "wpe.weight"] = layers.embedding_backward(dx, emb)
    # keyed and ordered like model.params; a weight the forward never used has a zero gradient
    return {name: grads[name] if name in grads else np.zeros_like(w) for name, w in model.params.items()}, denc


# ---- the heads -----------------------------------------------------------------------------------
def causal_lm_value_and_grad(model, input_ids, labels, attention_mask=None, *, shift=True,
                             encoder_hidden_states=None, dropout_rng=None):
    """The LM loss of ImageGPTForCausalImageModeling and d loss / d every weight.

    labels as transformers takes them: same shape as input_ids, shifted inside (logits at t predict
    labels at t + 1), -100 ignored. shift=False instead aligns labels with the logits (OpenAI's form:
    feed SOS + pixels[:-1], target every pixel), which reaches the last position of n_positions.
    -> (loss float32, grads dict keyed like model.params).
    """
    B, T = check_input_ids(model.config, input_ids, None)
    labels = check_lm_labels(labels, (B, T), model.config.vocab_size)
    h, body = transformer_forward(model, input_ids, attention_mask, encoder_hidden_states, dropout_rng)
    logits, head = layers.lm_head_forward(h, model.params["lm_head.weight"])  # [B, T, V]
    loss, loss_cache = layers.lm_loss_forward(logits, labels, shift=shift)

    dlogits = layers.lm_loss_backward(1.0, loss_cache)  # [B, T, V]
    dh, dw_head = layers.lm_head_backward(dlogits, head)  # [B, T, C]
    grads, _ = transformer_backward(model, dh, body)
    grads["lm_head.weight"] = dw_head
    return loss, grads


def classification_value_and_grad(model, input_ids, labels, attention_mask=None, *, dropout_rng=None):
    """The loss of ImageGPTForImageClassification (labels of shape (batch,), or (batch, num_labels) for
    multi-label) and d loss / d every weight. The head mean-pools every position, as transformers does,
    so attention_mask changes the attention but not the pooling. -> (loss, grads keyed like model.params).
    """
    B, T = check_input_ids(model.config, input_ids, None)
    labels, kind = check_classification_labels(model.config, labels, B)
    h, body = transformer_forward(model, input_ids, attention_mask, None, dropout_rng)
    logits, head = layers.classification_head_forward(h, model.params["score.weight"])  # [B, L]
    loss, loss_cache = layers.classification_loss_forward(logits, labels, kind)

    dlogits = layers.classification_loss_backward(1.0, loss_cache)  # [B, L]
    dh, dw_score = layers.classification_head_backward(dlogits, head)  # [B, T, C]
    grads, _ = transformer_backward(model, dh, body)
    grads["score.weight"] = dw_score
    return loss, grads
