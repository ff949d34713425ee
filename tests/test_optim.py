"""AdamW, the learning-rate schedule and gradient clipping, against torch where torch has the same thing."""

import math

import numpy as np
import pytest

from minigpt_pixels import optim
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from minigpt_pixels.config import ImageGPTConfig


def tiny_params(seed=0):
    cfg = ImageGPTConfig(vocab_size=9, n_positions=6, n_embd=8, n_layer=2, n_head=2)
    return ImageGPTForCausalImageModeling(cfg, seed=seed).params


def test_decay_names_skip_norms_biases_and_positions():
    params = tiny_params()
    decay = optim.decay_names(params)
    assert "transformer.h.0.attn.c_attn.weight" in decay and "lm_head.weight" in decay
    assert "transformer.wte.weight" in decay
    assert not any(".ln_" in n or n.endswith(".bias") for n in decay)
    assert "transformer.wpe.weight" not in decay
    assert "transformer.wpe.weight" in optim.decay_names(params, decay_position_embeddings=True)
    bare = optim.decay_names({"ln_f.weight": 0, "h.0.ln_1.weight": 0, "wte.weight": 0, "score.weight": 0})
    assert bare == {"wte.weight", "score.weight"}


@pytest.mark.parametrize("fused", [False, True])
def test_adamw_matches_torch(fused):
    torch = pytest.importorskip("torch")
    params = tiny_params()
    decay = optim.decay_names(params)
    ours = {k: v.copy() for k, v in params.items()}
    theirs = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = optim.AdamW(ours, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, decay=decay, fused=fused)
    topt = torch.optim.AdamW([{"params": [theirs[k] for k in params if k in decay], "weight_decay": 0.1},
                              {"params": [theirs[k] for k in params if k not in decay], "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.default_rng(0)
    for step in range(5):
        lr = optim.lr_schedule(step, 1e-2, total_steps=5, warmup_steps=2)
        grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        opt.step(ours, grads, lr=lr)
        for g in topt.param_groups:
            g["lr"] = lr
        for k, t in theirs.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
    for k in params:
        assert ours[k].dtype == np.float32
        np.testing.assert_allclose(ours[k], theirs[k].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
        assert not np.array_equal(ours[k], params[k])


def test_adamw_without_decay_leaves_norms_alone_and_state_round_trips():
    params = tiny_params()
    opt = optim.AdamW(params, lr=0.1, weight_decay=0.5)
    zero = {k: np.zeros_like(v) for k, v in params.items()}
    before = {k: v.copy() for k, v in params.items()}
    opt.step(params, zero)  # no gradient: only decay moves the weights
    np.testing.assert_array_equal(params["transformer.h.0.ln_1.weight"], before["transformer.h.0.ln_1.weight"])
    np.testing.assert_allclose(params["lm_head.weight"], before["lm_head.weight"] * (1 - 0.1 * 0.5), rtol=1e-6)

    tensors, meta = opt.state_dict()
    other = optim.AdamW(params, lr=0.1)
    other.load_state_dict(tensors, meta)
    assert other.t == 1 and all(np.array_equal(other.m[k], opt.m[k]) for k in params)
    with pytest.raises(KeyError):
        other.load_state_dict({}, meta)


def test_lr_schedule_warmup_then_cosine():
    lrs = [optim.lr_schedule(s, 1.0, total_steps=110, warmup_steps=10, min_lr=0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up reaches the peak
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)  # half-way down the cosine
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:110]))
    assert lrs[110] == lrs[119] == 0.1
    assert optim.lr_schedule(0, 3e-4, total_steps=100) == pytest.approx(3e-4)  # no warm-up


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grads = {f"g{i}": rng.normal(size=(3, 4)).astype(np.float32) * 5 for i in range(3)}
    tensors = [torch.nn.Parameter(torch.zeros(3, 4)) for _ in grads]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    tnorm = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    norm = optim.clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(float(tnorm), rel=1e-6)
    for t, g in zip(tensors, grads.values()):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6)
    assert optim.global_norm(grads) == pytest.approx(1.0, rel=1e-5)


def test_clip_leaves_small_and_non_finite_gradients_alone():
    small = {"a": np.full(4, 0.1, np.float32)}
    assert optim.clip_grad_norm(small, 1.0) == pytest.approx(0.2)
    np.testing.assert_array_equal(small["a"], np.float32(0.1))
    bad = {"a": np.array([np.nan, 1], np.float32)}
    assert math.isnan(optim.clip_grad_norm(bad, 1.0))
    assert optim.clip_grad_norm({"a": np.full(4, 10, np.float32)}, 0) == pytest.approx(20)  # 0: off


def test_a_few_steps_lower_the_loss():
    """The pieces together on a real model: loss down after 30 AdamW steps on one batch."""
    cfg = ImageGPTConfig(vocab_size=9, n_positions=8, n_embd=16, n_layer=1, n_head=2, num_labels=3)
    model = ImageGPTForImageClassification(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, 8, (6, 8))
    labels = np.array([0, 1, 2, 0, 1, 2])
    opt = optim.AdamW(model.params, lr=1e-2)
    first, _ = model.value_and_grad(ids, labels)
    for step in range(30):
        loss, grads = model.value_and_grad(ids, labels)
        optim.clip_grad_norm(grads, 1.0)
        opt.step(model.params, grads, lr=optim.lr_schedule(step, 1e-2, 30, 5))
    assert loss < 0.5 * first
