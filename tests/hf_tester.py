"""Shared by the tests ported from transformers (tests/test_hf_*.py): upstream's ImageGPTModelTester
sizes, and pairs of models (transformers', ours) holding the same random weights."""

import numpy as np
import pytest

from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification, ImageGPTModel

# transformers' ImageGPTModelTester (tests/models/imagegpt/test_modeling_imagegpt.py); dropout off, since
# transformers' models are compared in eval mode
TESTER = dict(batch_size=14, seq_length=7, vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=16, num_labels=3)
OURS = {"ImageGPTModel": ImageGPTModel, "ImageGPTForCausalImageModeling": ImageGPTForCausalImageModeling,
        "ImageGPTForImageClassification": ImageGPTForImageClassification}
ALL_CLASSES = list(OURS)


def config_kwargs(**overrides):
    t = TESTER
    return dict(vocab_size=t["vocab_size"], n_embd=t["hidden_size"], n_layer=t["num_hidden_layers"],
                n_head=t["num_attention_heads"], n_inner=t["intermediate_size"], activation_function=t["hidden_act"],
                n_positions=t["max_position_embeddings"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                use_cache=True, **overrides)


def our_config(**overrides):
    return ImageGPTConfig(**config_kwargs(**overrides))


def inputs(seed=0, batch=TESTER["batch_size"], length=TESTER["seq_length"], vocab=TESTER["vocab_size"]):
    """input_ids in [0, vocab_size - 1) (upstream's ids_tensor), token_type_ids, and upstream's
    random_attention_mask (random 0/1, the last position always 1)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab - 1, (batch, length))
    token_type_ids = rng.integers(0, TESTER["type_vocab_size"], (batch, length))
    mask = rng.integers(0, 2, (batch, length))
    mask[:, -1] = 1
    return ids, token_type_ids, mask


def pair(cls_name, seed=0, scale=0.3, **overrides):
    """(transformers model in eval mode, our model) with the same weights: transformers' initialisation,
    then normal noise of std `scale` on every weight so the outputs are far from an untrained model's."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    hf = getattr(transformers, cls_name)(transformers.ImageGPTConfig(**config_kwargs(**overrides))).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(scale * torch.randn_like(p))
    state = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()
             if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    ours = OURS[cls_name](ImageGPTConfig.from_dict(hf.config.to_dict()), params=state)
    return hf, ours


def run_hf(hf, **kw):
    """transformers' forward on NumPy inputs, without gradients."""
    import torch

    with torch.no_grad():
        return hf(**{k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()})


def tensors(output):
    """Every array of an output, in order, flattened out of tuples; caches and None left out."""
    out = []
    for value in output:
        if isinstance(value, (tuple, list)):
            out.extend(tensors(value))
        elif hasattr(value, "shape") and not hasattr(value, "get_seq_length"):
            out.append(np.asarray(value.detach().numpy() if hasattr(value, "detach") else value))
    return out
