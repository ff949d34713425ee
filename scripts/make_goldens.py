"""Write golden fixtures from transformers' ImageGPT (never from minigpt_pixels) under tests/golden/models/.

    python scripts/make_goldens.py            # needs torch and transformers

For each small seeded random config it saves the model as transformers saves it (config.json +
model.safetensors), then the inputs and transformers' outputs in outputs.npz: logits, loss, every
hidden state, attentions, step-by-step decode logits, greedy generate tokens, and the gradient of the
loss for every parameter. versions.json records the library versions that made them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import shutil

import numpy as np
import torch
import transformers
from transformers import DynamicCache

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "golden" / "models"
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

# name -> (model class, config kwargs, weight randomisation scale or None for transformers' default init)
CONFIGS = {
    "causal_small": ("causal", dict(vocab_size=17, n_positions=24, n_embd=32, n_layer=2, n_head=4), None),
    # weights far from the default initialisation: attention is far from uniform, norm weights matter
    "causal_randomized": ("causal", dict(vocab_size=33, n_positions=20, n_embd=48, n_layer=3, n_head=6,
                                         n_inner=40, scale_attn_by_inverse_layer_idx=True), 0.35),
    "causal_reorder_noscale": ("causal", dict(vocab_size=17, n_positions=16, n_embd=24, n_layer=2, n_head=2,
                                              reorder_and_upcast_attn=True, scale_attn_weights=False,
                                              activation_function="gelu_new"), 0.2),
    "causal_cross": ("causal", dict(vocab_size=17, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                    add_cross_attention=True), 0.2),
    "classify_3": ("classify", dict(vocab_size=17, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                    num_labels=3), 0.2),
    "classify_regression": ("classify", dict(vocab_size=17, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                             num_labels=1), 0.2),
}


def randomize_(model, scale, gen):
    """Perturb every weight well beyond the default init; norm weights drawn around 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            if "ln_" in name:
                p.copy_(1.0 + 2 * noise)
            else:
                p.add_(noise)


def build(name, kind, kw, scale):
    torch.manual_seed(sum(map(ord, name)))  # stable per name, unlike hash()
    config = transformers.ImageGPTConfig(**kw, **NO_DROPOUT)
    cls = transformers.ImageGPTForCausalImageModeling if kind == "causal" else \
        transformers.ImageGPTForImageClassification
    model = cls(config).eval()
    if scale is not None:
        randomize_(model, scale, torch.Generator().manual_seed(sum(map(ord, name)) + 1))
    return model


def tensors(xs):
    return [x.detach().numpy().astype(np.float32) for x in xs]


def causal_outputs(model, cfg, rng, out):
    V, T = cfg.vocab_size, cfg.n_positions - 2
    sos = V - 1
    ids = rng.integers(0, V - 1, size=(2, T))
    ids[:, 0] = sos  # sequences start with SOS, as the processor's users prepend it
    labels = ids.copy()
    labels[:, 0] = -100  # SOS is never a target
    labels[1, -3:] = -100
    mask = np.ones((2, T), np.int64)
    mask[1, -4:] = 0  # right padding on the second sequence
    extra = {}
    if cfg.add_cross_attention:
        enc = rng.normal(size=(2, 5, cfg.n_embd)).astype(np.float32)
        extra["encoder_hidden_states"] = torch.tensor(enc)
        out["encoder_hidden_states"] = enc
    t_ids, t_labels = torch.tensor(ids), torch.tensor(labels)

    model.zero_grad()
    o = model(t_ids, labels=t_labels, output_hidden_states=True, output_attentions=True, use_cache=False, **extra)
    o.loss.backward()
    out.update(input_ids=ids, labels=labels, logits=o.logits.detach().numpy(), loss=o.loss.detach().numpy())
    for i, h in enumerate(tensors(o.hidden_states)):
        out[f"hidden_states.{i}"] = h
    for i, a in enumerate(tensors(o.attentions)):
        out[f"attentions.{i}"] = a
    if o.cross_attentions:
        for i, a in enumerate(tensors(o.cross_attentions)):
            out[f"cross_attentions.{i}"] = a
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad.detach().numpy().copy()

    with torch.no_grad():
        if not cfg.add_cross_attention:  # transformers passes the self-attention mask to cross-attention
            om = model(t_ids, attention_mask=torch.tensor(mask), use_cache=False)
            out.update(attention_mask=mask, masked_logits=om.logits.numpy())
            # step-by-step decoding with transformers' own cache: a 4-token prompt, then one token a step
            cache, steps = DynamicCache(config=cfg), []
            r = model(t_ids[:, :4], past_key_values=cache, use_cache=True)
            steps.append(r.logits.numpy())
            for t in range(4, T):
                r = model(t_ids[:, t:t + 1], past_key_values=r.past_key_values, use_cache=True)
                steps.append(r.logits.numpy())
            out["decode_logits"] = np.concatenate(steps, axis=1)
            prompt = t_ids[:, :3]
            gen = model.generate(prompt, do_sample=False, max_length=cfg.n_positions + 1,
                                 attention_mask=torch.ones_like(prompt), pad_token_id=0)
            out.update(generate_prompt=prompt.numpy(), generate_greedy=gen.numpy())
        token_type = rng.integers(0, V, size=(2, T))
        position = np.tile(np.arange(T)[::-1].copy(), (2, 1))
        ot = model(t_ids, token_type_ids=torch.tensor(token_type), position_ids=torch.tensor(position),
                   use_cache=False, **extra)  # its cross-attention breaks on its own default cache
        out.update(token_type_ids=token_type, position_ids=position, logits_types_positions=ot.logits.numpy())


def classify_outputs(model, cfg, rng, out):
    V, T = cfg.vocab_size, cfg.n_positions
    ids = rng.integers(0, V - 1, size=(3, T))
    ids[:, 0] = V - 1
    labels = rng.normal(size=(3,)).astype(np.float32) if cfg.num_labels == 1 else rng.integers(0, cfg.num_labels, 3)
    model.zero_grad()
    o = model(torch.tensor(ids), labels=torch.tensor(labels), output_hidden_states=True, use_cache=False)
    o.loss.backward()
    out.update(input_ids=ids, labels=labels, logits=o.logits.detach().numpy(), loss=o.loss.detach().numpy())
    for i, h in enumerate(tensors(o.hidden_states)):
        out[f"hidden_states.{i}"] = h
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad.detach().numpy().copy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=OUT, help="where the fixtures go")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.out.exists():
        shutil.rmtree(args.out)
    for name, (kind, kw, scale) in CONFIGS.items():
        model = build(name, kind, kw, scale)
        d = args.out / name
        model.save_pretrained(d)  # transformers writes config.json + model.safetensors
        (d / "generation_config.json").unlink(missing_ok=True)  # not ours to test
        out = {}
        rng = np.random.default_rng(sum(map(ord, name)))
        (causal_outputs if kind == "causal" else classify_outputs)(model, model.config, rng, out)
        np.savez_compressed(d / "outputs.npz", **out)
        print(f"{name}: {sum(v.size for v in out.values())} values")
    versions = {"transformers": transformers.__version__, "torch": torch.__version__, "numpy": np.__version__,
                "python": platform.python_version()}
    (args.out / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    print(versions)


if __name__ == "__main__":
    main()
