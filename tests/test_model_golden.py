"""Our model against transformers' outputs saved by scripts/make_goldens.py (no torch needed).

Each fixture is a model saved by transformers (config.json + model.safetensors) and its outputs.
Every comparison checks shape, then values, and prints the worst absolute difference.
"""

import json

import numpy as np
import pytest

from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification, KVCache

from .conftest import GOLDEN_DIR, report

MODELS = GOLDEN_DIR / "models"
CAUSAL = sorted(p.name for p in MODELS.iterdir() if p.name.startswith("causal"))
CLASSIFY = sorted(p.name for p in MODELS.iterdir() if p.name.startswith("classify"))
TOL = 1e-4
DEVICES = ["numpy", "cpu"]


def load(name, cls, device):
    model = cls.from_pretrained(MODELS / name).to(device)
    return model, dict(np.load(MODELS / name / "outputs.npz"))


def test_fixtures_present_and_versioned():
    assert len(CAUSAL) >= 4 and len(CLASSIFY) >= 2
    versions = json.loads((MODELS / "versions.json").read_text())
    assert versions["transformers"] and versions["torch"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CAUSAL)
def test_causal_forward(name, device):
    model, g = load(name, ImageGPTForCausalImageModeling, device)
    enc = g.get("encoder_hidden_states")
    out = model(g["input_ids"], labels=g["labels"], output_hidden_states=True, output_attentions=True,
                encoder_hidden_states=enc)
    assert out.logits.dtype == np.float32
    assert out.logits.shape[-1] == model.config.vocab_size - 1  # the head never predicts SOS
    report(f"{name}/{device} logits", out.logits, g["logits"], TOL)
    report(f"{name}/{device} loss", out.loss, g["loss"], TOL)
    assert len(out.hidden_states) == model.config.n_layer + 1
    for i, h in enumerate(out.hidden_states):
        report(f"{name}/{device} hidden_states[{i}]", h, g[f"hidden_states.{i}"], TOL)
    for i, a in enumerate(out.attentions):
        report(f"{name}/{device} attentions[{i}]", a, g[f"attentions.{i}"], TOL)
    if enc is not None:
        for i, a in enumerate(out.cross_attentions):
            report(f"{name}/{device} cross_attentions[{i}]", a, g[f"cross_attentions.{i}"], TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CAUSAL)
def test_token_types_and_positions(name, device):
    model, g = load(name, ImageGPTForCausalImageModeling, device)
    out = model(g["input_ids"], token_type_ids=g["token_type_ids"], position_ids=g["position_ids"],
                encoder_hidden_states=g.get("encoder_hidden_states"))
    report(f"{name}/{device} logits with token types and positions", out.logits, g["logits_types_positions"], TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [n for n in CAUSAL if n != "causal_cross"])
def test_attention_mask(name, device):
    model, g = load(name, ImageGPTForCausalImageModeling, device)
    out = model(g["input_ids"], attention_mask=g["attention_mask"])
    report(f"{name}/{device} masked logits", out.logits, g["masked_logits"], TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [n for n in CAUSAL if n != "causal_cross"])
def test_incremental_decode(name, device):
    """A 4-token prompt, then one token a step with our KV cache, equals transformers' cached decode
    and our own full forward."""
    model, g = load(name, ImageGPTForCausalImageModeling, device)
    ids = g["input_ids"]
    cache = KVCache(model.config, ids.shape[0])
    steps = [model(ids[:, :4], past_key_values=cache, use_cache=True).logits]
    for t in range(4, ids.shape[1]):
        out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        assert out.past_key_values is cache and cache.get_seq_length() == t + 1
        steps.append(out.logits)
    decoded = np.concatenate(steps, axis=1)
    report(f"{name}/{device} decode logits", decoded, g["decode_logits"], TOL)
    report(f"{name}/{device} decode vs our full forward", decoded, model(ids).logits, TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CLASSIFY)
def test_classification(name, device):
    model, g = load(name, ImageGPTForImageClassification, device)
    out = model(g["input_ids"], labels=g["labels"], output_hidden_states=True)
    report(f"{name}/{device} logits", out.logits, g["logits"], TOL)
    report(f"{name}/{device} loss", out.loss, g["loss"], TOL)
    report(f"{name}/{device} last hidden state (after ln_f)", out.hidden_states[-1], g[f"hidden_states.{model.config.n_layer}"], TOL)


def test_output_object_mirrors_transformers():
    model, g = load("causal_small", ImageGPTForCausalImageModeling, "numpy")
    out = model(g["input_ids"], labels=g["labels"])
    assert out["logits"] is out.logits and out[0] is out.loss and out.keys() == ["loss", "logits", "cache"]
    assert out.hidden_states is None and out.attentions is None and out.past_key_values is out.cache
