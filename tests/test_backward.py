"""Backward passes, in three tiers.

1. Every `*_backward` in layers.py against central finite differences of its `*_forward`, in float64
   (the layers keep the input dtype, so float64 inputs give float64 maths). The scalar checked is
   sum(out * G) for a fixed random G, so the backward's upstream gradient is G.
2. The model's gradients against the golden `grad.<name>` tensors that transformers + torch autograd
   wrote (scripts/make_goldens.py), for every golden config.
3. Live: fresh random transformers models at test time, with padding masks, against torch autograd.

Gradient tolerance: rel(ours, theirs) = max|ours - theirs| / max|theirs| per tensor, i.e. the worst
error measured against the tensor's own scale (robust to tiny elements, unlike an elementwise ratio).
"""

import numpy as np
import pytest

from minigpt_pixels import backprop, layers
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification

from .conftest import GOLDEN_DIR

MODELS = GOLDEN_DIR / "models"
GOLDEN = sorted(p.name for p in MODELS.iterdir() if p.is_dir())
GRAD_RTOL = 1e-3  # ours vs torch, float32: rel as defined above
FD_RTOL = 1e-6  # analytic vs finite differences, float64
FD_EPS = 1e-6


def rel(ours, theirs):
    return float(np.max(np.abs(ours.astype(np.float64) - theirs)) / max(np.max(np.abs(theirs)), 1e-30))


def check_grads(name, ours, theirs, tol):
    """Shape, then dtype, then the relative error; prints and returns the worst."""
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != {theirs.shape}"
    r = rel(ours, theirs)
    print(f"[grad] {name}: rel {r:.3g} (tol {tol:g})")
    assert r <= tol, f"{name}: rel error {r:.3g} > {tol:g}"
    return r


# ---- tier 1: finite differences ------------------------------------------------------------------
def central_difference(f, x, i, eps=FD_EPS):
    """d f / d x[i]; x[i] is perturbed in place and restored."""
    old = x[i]
    x[i] = old + eps
    up = f()
    x[i] = old - eps
    down = f()
    x[i] = old
    return (up - down) / (2 * eps)


def numeric_grad(f, x, eps=FD_EPS):
    """d f / d x by central differences, every element."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        g[it.multi_index] = central_difference(f, x, it.multi_index, eps)
    return g


def fd_check(forward, backward, inputs, names, seed=0):
    """forward(*inputs) -> (out, cache); backward(G, cache) -> the inputs' gradients in input order (a
    tuple, or a single array). Checks the inputs named by (index, name) against finite differences."""
    out, cache = forward(*inputs)
    G = np.random.default_rng(seed).normal(size=np.shape(out))
    grads = backward(G, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for idx, name in names:
        x, analytic = inputs[idx], grads[idx]
        num = numeric_grad(lambda: float(np.sum(forward(*inputs)[0] * G)), x)
        assert analytic.shape == x.shape, f"{name}: shape {analytic.shape} != {x.shape}"
        r = rel(analytic, num)
        print(f"[fd] {name}: rel {r:.3g}")
        assert r <= FD_RTOL, f"{name}: rel error {r:.3g} against finite differences"


def f64(rng, *shape, scale=1.0):
    return rng.normal(size=shape) * scale


@pytest.fixture
def r():
    return np.random.default_rng(0)


def test_embedding_fd(r):
    wte, wpe = f64(r, 7, 5), f64(r, 6, 5)
    ids = r.integers(0, 7, (2, 4))
    ids[1, :2] = ids[0, 0]  # a repeated token: its rows must add up
    for pos, types in [(np.arange(4)[None], None), (np.array([[3, 2, 1, 0], [0, 0, 5, 5]]), r.integers(0, 7, (2, 4)))]:
        fd_check(lambda wte, wpe: layers.embedding_forward(ids, wte, wpe, pos, types), layers.embedding_backward,
                 [wte, wpe], [(0, "wte"), (1, "wpe")])


def test_embedding_forward_matches_reference(r):
    wte, wpe = f64(r, 7, 5).astype(np.float32), f64(r, 6, 5).astype(np.float32)
    ids = r.integers(0, 7, (2, 4))
    out, _ = layers.embedding_forward(ids, wte, wpe, np.arange(4)[None])
    np.testing.assert_array_equal(out, layers.embedding(ids, wte, wpe, np.arange(4)[None]))


def test_layer_norm_fd(r):
    x, w = f64(r, 2, 3, 6), 1 + f64(r, 6, scale=0.3)
    fd_check(lambda x, w: layers.layer_norm_forward(x, w, 1e-5), layers.layer_norm_backward, [x, w],
             [(0, "x"), (1, "weight")])


def test_layer_norm_forward_is_bitwise_the_reference(r):
    x, w = f64(r, 4, 9, 16).astype(np.float32), f64(r, 16).astype(np.float32)
    out, _ = layers.layer_norm_forward(x, w, 1e-5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, layers.layer_norm(x, w, 1e-5))


@pytest.mark.parametrize("name", ["quick_gelu", "gelu_new", "gelu", "relu", "tanh"])
def test_activation_fd(r, name):
    x = f64(r, 3, 7, scale=2.0)
    x[np.abs(x) < 1e-3] = 0.5  # keep relu away from its kink
    if name == "gelu":  # our forward uses a 1.5e-7-accurate erf, the backward the exact derivative
        out, cache = layers.activation_forward(x, name)
        G = np.random.default_rng(0).normal(size=x.shape)
        num = numeric_grad(lambda: float(np.sum(layers.activation(x, name) * G)), x, eps=1e-4)
        assert rel(layers.activation_backward(G, cache), num) < 1e-5
        return
    fd_check(lambda x: layers.activation_forward(x, name), layers.activation_backward, [x], [(0, name)])


def test_quick_gelu_forward_is_bitwise_the_reference(r):
    x = f64(r, 5, 33, scale=3).astype(np.float32)
    out, _ = layers.activation_forward(x, "quick_gelu")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, layers.quick_gelu(x))


def test_linear_fd(r):
    x, w, b = f64(r, 2, 3, 4), f64(r, 4, 5), f64(r, 5)
    fd_check(layers.linear_forward, layers.linear_backward, [x, w, b], [(0, "x"), (1, "w"), (2, "b")])


def test_mlp_fd(r):
    x, w1, b1, w2, b2 = f64(r, 2, 3, 4), f64(r, 4, 6), f64(r, 6), f64(r, 6, 4), f64(r, 4)
    fd_check(lambda *a: layers.mlp_forward(*a, act="quick_gelu"), layers.mlp_backward, [x, w1, b1, w2, b2],
             [(0, "x"), (1, "w_fc"), (2, "b_fc"), (3, "w_proj"), (4, "b_proj")])


def test_mlp_dropout_fd(r):
    """With dropout the same seed gives the same mask on every call, so the function is deterministic."""
    x, w1, b1, w2, b2 = f64(r, 2, 3, 4), f64(r, 4, 6), f64(r, 6), f64(r, 6, 4), f64(r, 4)

    def forward(*a):
        return layers.mlp_forward(*a, act="gelu_new", dropout_p=0.3, rng=np.random.default_rng(5))

    out, cache = forward(x, w1, b1, w2, b2)
    assert np.any(out == 0) and cache[-1] is not None  # some outputs were dropped
    fd_check(forward, layers.mlp_backward, [x, w1, b1, w2, b2], [(0, "x"), (1, "w_fc"), (3, "w_proj")])


MASKS = {
    "none": None,
    # right padding of the second sequence: every query still sees key 0 (a fully masked row has no
    # gradient through the scores in exact arithmetic, only in the chain rule torch applies)
    "padding": layers.additive_mask(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])),
}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_attention_fd(r, mask, causal, dropout):
    q, k, v = f64(r, 2, 2, 5, 3), f64(r, 2, 2, 5, 3), f64(r, 2, 2, 5, 3)
    scale = layers.attention_scale(3, True, 1, True)  # 1/sqrt(D) / (layer + 1)

    def forward(q, k, v):
        rng = np.random.default_rng(3) if dropout else None
        return layers.attention_forward(q, k, v, scale, causal, MASKS[mask], dropout, rng)

    fd_check(forward, layers.attention_backward, [q, k, v], [(0, "q"), (1, "k"), (2, "v")])


def test_attention_forward_matches_reference(r):
    q, k, v = (f64(r, 2, 3, 6, 4).astype(np.float32) for _ in range(3))
    mask = layers.additive_mask(np.array([[1] * 6, [1, 1, 1, 1, 0, 0]]))
    out, cache = layers.attention_forward(q, k, v, np.float32(0.5), True, mask)
    ref, weights = layers.attention(q, k, v, np.float32(0.5), True, mask)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(cache[4], weights)


def test_self_attention_fd(r):
    C, H = 6, 2
    x, w, b, wp, bp = f64(r, 2, 5, C), f64(r, C, 3 * C), f64(r, 3 * C), f64(r, C, C), f64(r, C)

    def forward(x, w, b, wp, bp):
        return layers.self_attention_forward(x, w, b, wp, bp, H, 0.7, MASKS["padding"], 0.2, 0.1,
                                             np.random.default_rng(1))

    fd_check(forward, layers.self_attention_backward, [x, w, b, wp, bp],
             [(0, "x"), (1, "c_attn.weight"), (2, "c_attn.bias"), (3, "c_proj.weight"), (4, "c_proj.bias")])


def test_cross_attention_fd(r):
    C, H = 4, 2
    x, enc = f64(r, 2, 3, C), f64(r, 2, 5, C)
    wq, bq, wkv, bkv, wp, bp = f64(r, C, C), f64(r, C), f64(r, C, 2 * C), f64(r, 2 * C), f64(r, C, C), f64(r, C)
    enc_mask = layers.additive_mask(np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0]]))

    def forward(*a):
        return layers.cross_attention_forward(*a, H, 0.5, enc_mask)

    fd_check(forward, layers.cross_attention_backward, [x, enc, wq, bq, wkv, bkv, wp, bp],
             [(0, "x"), (1, "enc"), (2, "q_attn.weight"), (3, "q_attn.bias"), (4, "c_attn.weight"),
              (5, "c_attn.bias"), (6, "c_proj.weight"), (7, "c_proj.bias")])


def tiny_config(**kw):
    return ImageGPTConfig(**{**dict(vocab_size=9, n_positions=6, n_embd=4, n_layer=2, n_head=2, n_inner=6), **kw})


def float64_params(model, r):
    """The model's weights as float64 (the layers keep the dtype), randomised beyond the default init."""
    return {k: (1 + 0.3 * r.normal(size=v.shape)) if "ln_" in k else 0.5 * r.normal(size=v.shape)
            for k, v in model.params.items()}


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_transformer_block_fd(r, cross, dropout):
    cfg = tiny_config(add_cross_attention=cross, scale_attn_by_inverse_layer_idx=True, attn_pdrop=0.2,
                      resid_pdrop=0.2)
    p = float64_params(ImageGPTForCausalImageModeling(cfg, seed=0), r)
    prefix = "transformer.h.1."
    x = f64(r, 2, 5, 4)
    enc = f64(r, 2, 3, 4) if cross else None
    names = sorted(k for k in p if k.startswith(prefix))

    def forward(x, *ws):
        q = {**p, **dict(zip(names, ws))}
        rng = np.random.default_rng(7) if dropout else None
        return layers.transformer_block_forward(x, q, prefix, cfg, 1, MASKS["padding"], enc, None, rng)

    def backward(G, cache):
        dx, g, _ = layers.transformer_block_backward(G, cache)
        return (dx, *[g[n] for n in names])

    weights = [p[n] for n in names]
    fd_check(forward, backward, [x, *weights], [(0, "x")] + [(i + 1, n) for i, n in enumerate(names)])


def test_transformer_block_forward_matches_reference():
    m = ImageGPTForCausalImageModeling.from_pretrained(MODELS / "causal_randomized")
    x = np.random.default_rng(0).normal(size=(2, 7, m.config.n_embd)).astype(np.float32)
    mask = layers.additive_mask(np.array([[1] * 7, [1] * 5 + [0] * 2]))
    out, _ = layers.transformer_block_forward(x, m.params, "transformer.h.2.", m.config, 2, mask)
    ref, _ = layers.transformer_block(x, m.params, "transformer.h.2.", m.config, 2, mask)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)


def test_heads_fd(r):
    h, w = f64(r, 2, 3, 4), f64(r, 5, 4)
    fd_check(layers.lm_head_forward, layers.lm_head_backward, [h, w], [(0, "h"), (1, "lm_head")])
    fd_check(layers.classification_head_forward, layers.classification_head_backward, [h, w[:3]],
             [(0, "h"), (1, "score")])


# The losses return float32 scalars by design, so their backward is checked against finite
# differences of the same formula in float64 (layers.log_softmax keeps the dtype).
def ce64(z, y, ignore=-100):
    keep = y != ignore
    return -np.mean(layers.log_softmax(z[keep])[np.arange(keep.sum()), y[keep]])


@pytest.mark.parametrize("shift", [True, False])
def test_lm_loss_fd(r, shift):
    z = f64(r, 2, 4, 5, scale=2)
    y = r.integers(0, 5, (2, 4))
    y[0, 1] = y[1, 3] = -100
    loss, cache = layers.lm_loss_forward(z.astype(np.float32), y, shift=shift)
    zz, yy = (z[:, :-1], y[:, 1:]) if shift else (z, y)
    assert abs(loss - ce64(zz.reshape(-1, 5), yy.reshape(-1))) < 1e-6
    _, cache = layers.lm_loss_forward(z, y, shift=shift)
    analytic = layers.lm_loss_backward(1.0, cache)
    num = numeric_grad(lambda: ce64((z[:, :-1] if shift else z).reshape(-1, 5), yy.reshape(-1)), z)
    assert rel(analytic, num) <= FD_RTOL
    if shift:
        assert not np.any(analytic[:, -1])  # the last position predicts nothing


def test_lm_loss_all_ignored_is_nan_with_zero_gradient():
    z = np.zeros((1, 3, 4), np.float32)
    loss, cache = layers.lm_loss_forward(z, np.full((1, 3), -100))
    assert np.isnan(loss) and not np.any(layers.lm_loss_backward(1.0, cache))


@pytest.mark.parametrize("kind,num_labels", [("regression", 1), ("regression", 3), ("single_label_classification", 3),
                                             ("multi_label_classification", 1), ("multi_label_classification", 3)])
def test_classification_loss_fd(r, kind, num_labels):
    z = f64(r, 4, num_labels, scale=2)
    if kind == "single_label_classification":
        y = r.integers(0, num_labels, 4)
        y[2] = -100
        f = lambda: ce64(z, y)  # noqa: E731
    elif kind == "regression":
        y = r.normal(size=(4,) if num_labels == 1 else (4, num_labels))
        f = lambda: np.mean((z - y.reshape(z.shape)) ** 2)  # noqa: E731
    else:
        y = r.integers(0, 2, (4, num_labels)).astype(np.float64)
        f = lambda: np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))  # noqa: E731
    loss, cache = layers.classification_loss_forward(z, y, kind)
    assert abs(loss - f()) < 1e-6
    analytic = layers.classification_loss_backward(1.0, cache)
    assert rel(analytic, numeric_grad(f, z)) <= FD_RTOL


def test_dropout_is_inverted_and_off_without_rng(r):
    x = np.ones((1000,), np.float32)
    y, mask = layers.dropout_forward(x, 0.25, np.random.default_rng(0))
    assert y.dtype == np.float32 and set(np.unique(y)) == {0, np.float32(1 / 0.75)}
    assert 0.2 < np.mean(y == 0) < 0.3
    np.testing.assert_array_equal(layers.dropout_backward(x, mask), y)
    out, mask = layers.dropout_forward(x, 0.25, None)  # no generator: inference, nothing dropped
    assert out is x and mask is None
    assert layers.dropout_forward(x, 0.0, np.random.default_rng(0))[1] is None


# ---- the whole model in float64, dropout included ------------------------------------------------
@pytest.mark.parametrize("kind", ["causal", "classify"])
def test_model_fd_with_dropout(r, kind):
    cfg = tiny_config(num_labels=3, resid_pdrop=0.2, attn_pdrop=0.2, embd_pdrop=0.2)
    cls = ImageGPTForCausalImageModeling if kind == "causal" else ImageGPTForImageClassification
    model = cls(cfg, seed=0)
    model.params = float64_params(model, r)
    ids = r.integers(0, 8, (2, 5))
    ids[:, 0] = 8
    labels = np.where(ids == 8, -100, ids) if kind == "causal" else np.array([0, 2])  # SOS is never a target
    value_and_grad = backprop.causal_lm_value_and_grad if kind == "causal" else \
        backprop.classification_value_and_grad
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])

    def loss64():
        h, _ = backprop.transformer_forward(model, ids, mask, dropout_rng=np.random.default_rng(11))
        if kind == "causal":
            z = layers.lm_head(h, model.params["lm_head.weight"])
            return ce64(z[:, :-1].reshape(-1, 8), labels[:, 1:].reshape(-1))
        return ce64(layers.classification_head(h, model.params["score.weight"]), labels)

    loss, grads = value_and_grad(model, ids, labels, mask, dropout_rng=np.random.default_rng(11))
    assert abs(loss - loss64()) < 1e-6
    assert list(grads) == list(model.params)
    pick = np.random.default_rng(1)
    for name, w in model.params.items():  # a few elements of every tensor
        for _ in range(3):
            i = tuple(pick.integers(0, s) for s in w.shape)
            num = central_difference(loss64, w, i)
            assert abs(grads[name][i] - num) <= 1e-6 * max(1.0, abs(num)), f"{name}{i}: {grads[name][i]} vs {num}"


def test_dropout_off_by_default_and_changes_the_loss():
    model = ImageGPTForCausalImageModeling(tiny_config(resid_pdrop=0.3, attn_pdrop=0.3, embd_pdrop=0.3), seed=0)
    ids = np.array([[8, 1, 2, 3, 4, 5]])
    labels = np.array([[-100, 1, 2, 3, 4, 5]])
    loss, _ = model.value_and_grad(ids, labels)
    assert loss == model.to("numpy")(ids, labels=labels).loss  # value_and_grad never drops
    dropped, _ = backprop.causal_lm_value_and_grad(model, ids, labels, dropout_rng=np.random.default_rng(0))
    assert dropped != loss


# ---- tier 2: golden gradients from transformers + torch autograd ---------------------------------
def golden(name):
    cls = ImageGPTForImageClassification if name.startswith("classify") else ImageGPTForCausalImageModeling
    return cls.from_pretrained(MODELS / name), dict(np.load(MODELS / name / "outputs.npz"))


# The training paths (backprop.training_path): layers.py's pairs on "numpy", kernels/cpu_train.py's on "cpu".
PATH_DEVICES = {"numpy": "numpy", "kernels": "cpu"}


@pytest.mark.parametrize("path", list(PATH_DEVICES))
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_gradients(name, path):
    model, g = golden(name)
    model.to(PATH_DEVICES[path])
    assert backprop.training_path(model) == path
    enc = g.get("encoder_hidden_states")
    if enc is not None:  # model.value_and_grad takes no encoder states; the backprop function does
        loss, grads = backprop.causal_lm_value_and_grad(model, g["input_ids"], g["labels"],
                                                        encoder_hidden_states=enc)
    else:
        loss, grads = model.value_and_grad(g["input_ids"], g["labels"])
    assert isinstance(loss, np.float32)
    assert abs(loss - g["loss"]) <= 1e-5 * max(1.0, abs(float(g["loss"])))
    assert list(grads) == list(model.params), "gradients keyed (and ordered) exactly like model.params"
    worst = 0.0
    for k, w in model.params.items():
        assert grads[k].dtype == np.float32, f"{k}: {grads[k].dtype}"
        worst = max(worst, check_grads(f"{name} {k}", grads[k], g[f"grad.{k}"], GRAD_RTOL))
    print(f"[grad] {name}: worst rel {worst:.3g} over {len(grads)} tensors")


@pytest.mark.parametrize("path", list(PATH_DEVICES))
@pytest.mark.parametrize("name", [n for n in GOLDEN if n.startswith("causal") and n != "causal_cross"])
def test_value_matches_forward_loss_and_shift_false(name, path):
    model, g = golden(name)
    ids, labels = g["input_ids"], g["labels"]
    loss, grads = model.to(PATH_DEVICES[path]).value_and_grad(ids, labels)
    reference = model.to("numpy")(ids, labels=labels).loss
    if path == "numpy":
        assert loss == reference  # the same layers.py functions: the same bits
    else:  # the kernels' exp and sums: within float32 rounding
        assert abs(loss - reference) <= 1e-6 * abs(reference)
    model.to(PATH_DEVICES[path])
    # shift=False with labels moved one place left is the same loss (the last position has no target)
    aligned = np.concatenate([labels[:, 1:], np.full((len(labels), 1), -100)], axis=1)
    loss2, grads2 = backprop.causal_lm_value_and_grad(model, ids, aligned, shift=False)
    assert loss2 == loss
    for k in grads:
        np.testing.assert_array_equal(grads2[k], grads[k])


def test_value_and_grad_input_errors():
    from minigpt_pixels.model import ModelInputError

    model, g = golden("causal_small")
    with pytest.raises(ModelInputError, match="labels"):
        model.value_and_grad(g["input_ids"], g["input_ids"][:, :3])
    with pytest.raises(ModelInputError, match="input_ids"):
        model.value_and_grad(g["input_ids"].astype(np.float32), g["labels"])
    clf, g = golden("classify_3")
    with pytest.raises(ModelInputError, match="labels"):
        clf.value_and_grad(g["input_ids"], np.array([0, 1]))
    with pytest.raises(ModelInputError, match="num_labels"):
        clf.value_and_grad(g["input_ids"], np.array([0, 1, 7]))


# ---- tier 3: live, against torch autograd on fresh transformers models ---------------------------
LIVE = [
    ("ImageGPTForCausalImageModeling", dict(vocab_size=13, n_positions=12, n_embd=16, n_layer=2, n_head=4)),
    ("ImageGPTForCausalImageModeling", dict(vocab_size=9, n_positions=10, n_embd=24, n_layer=3, n_head=3,
                                            n_inner=20, scale_attn_by_inverse_layer_idx=True,
                                            activation_function="gelu")),
    ("ImageGPTForCausalImageModeling", dict(vocab_size=9, n_positions=10, n_embd=8, n_layer=1, n_head=2,
                                            activation_function="tanh", scale_attn_weights=False)),
    ("ImageGPTForImageClassification", dict(vocab_size=9, n_positions=10, n_embd=16, n_layer=2, n_head=2,
                                            num_labels=4)),
    ("ImageGPTForImageClassification", dict(vocab_size=9, n_positions=10, n_embd=16, n_layer=2, n_head=2,
                                            num_labels=3, problem_type="multi_label_classification")),
]


@pytest.mark.live
@pytest.mark.parametrize("path", list(PATH_DEVICES))
@pytest.mark.parametrize("cls,kw", LIVE, ids=[f"{c[12:20]}-{i}" for i, (c, _) in enumerate(LIVE)])
def test_live_gradients_against_torch(cls, kw, path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = getattr(transformers, cls)(transformers.ImageGPTConfig(**kw, resid_pdrop=0.0, embd_pdrop=0.0,
                                                                 attn_pdrop=0.0)).eval()
    with torch.no_grad():  # well away from the init, so attention and norms matter
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.4 * torch.randn_like(p)) if "ln_" in name else p.add_(0.2 * torch.randn_like(p))
    params = {k: v.detach().numpy().copy() for k, v in hf.named_parameters()}
    ours = (ImageGPTForCausalImageModeling if "Causal" in cls else ImageGPTForImageClassification)(
        ImageGPTConfig.from_dict(hf.config.to_dict()), params).to(PATH_DEVICES[path])
    rng = np.random.default_rng(1)
    B, T, V = 3, kw["n_positions"], kw["vocab_size"]
    ids = rng.integers(0, V - 1, (B, T))
    ids[:, 0] = V - 1
    mask = np.ones((B, T), np.int64)
    mask[1, -3:] = 0  # right padding
    if "Causal" in cls:
        labels = ids.copy()
        labels[:, 0] = -100
        labels[1, -3:] = -100
        t_labels = torch.tensor(labels)
    elif kw.get("problem_type") == "multi_label_classification":
        labels = rng.integers(0, 2, (B, kw["num_labels"])).astype(np.float32)
        t_labels = torch.tensor(labels)
    else:
        labels = rng.integers(0, kw["num_labels"], B)
        t_labels = torch.tensor(labels)
    out = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=t_labels, use_cache=False)
    out.loss.backward()
    loss, grads = ours.value_and_grad(ids, labels, attention_mask=mask)
    assert abs(loss - out.loss.item()) <= 1e-5 * max(1.0, abs(out.loss.item()))
    assert list(grads) == list(params)
    for name, p in hf.named_parameters():
        check_grads(f"live {name}", grads[name], p.grad.numpy(), GRAD_RTOL)
