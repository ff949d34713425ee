from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.generation import (TOKEN, GenerationConfig, OptionError, as_generator, generate, rule,
                                       sample_from_logits, softmax, top_k_filter, top_p_filter)
from minigpt_pixels.model import ImageGPTForCausalImageModeling

from .conftest import GOLDEN_DIR

GREEDY_GOLDENS = ["causal_small", "causal_randomized", "causal_reorder_noscale"]


@pytest.fixture(scope="module")
def model():
    cfg = ImageGPTConfig(vocab_size=17, n_positions=24, n_embd=32, n_layer=2, n_head=4)
    m = ImageGPTForCausalImageModeling(cfg, seed=1)
    rng = np.random.default_rng(2)  # weights well beyond the default init, so sampling is not uniform
    m.params = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in m.params.items()}
    return m


def sos(model, batch):
    return np.full((batch, 1), model.config.sos_token_id, np.int64)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
@pytest.mark.parametrize("name", GREEDY_GOLDENS)
def test_greedy_equals_transformers_golden(name, device):
    model = ImageGPTForCausalImageModeling.from_pretrained(GOLDEN_DIR / "models" / name).to(device)
    g = np.load(GOLDEN_DIR / "models" / name / "outputs.npz")
    ours = generate(model, g["generate_prompt"], max_length=model.config.n_positions + 1)
    np.testing.assert_array_equal(ours, g["generate_greedy"])


def test_greedy_equals_transformers_live():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(21)
    hf = transformers.ImageGPTForCausalImageModeling(transformers.ImageGPTConfig(
        vocab_size=33, n_positions=40, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0, embd_pdrop=0,
        attn_pdrop=0)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = {k: v.numpy().copy() for k, v in hf.state_dict().items() if not k.endswith(".attn.bias")}
    ours = ImageGPTForCausalImageModeling(ImageGPTConfig.from_dict(hf.config.to_dict()), params=params)
    prompt = np.concatenate([np.full((4, 1), 32), np.random.default_rng(0).integers(0, 32, (4, 5))], axis=1)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                             do_sample=False, max_length=41, pad_token_id=0).numpy()
    np.testing.assert_array_equal(generate(ours, prompt, max_length=41), theirs)


def test_top_k_1_equals_greedy(model):
    greedy = generate(model, sos(model, 3), max_new_tokens=12)
    np.testing.assert_array_equal(generate(model, sos(model, 3), max_new_tokens=12, do_sample=True, top_k=1, seed=5),
                                  greedy)


def test_seeds_reproduce_and_differ(model):
    a = generate(model, sos(model, 4), max_new_tokens=20, do_sample=True, seed=7)
    b = generate(model, sos(model, 4), max_new_tokens=20, do_sample=True, seed=7)
    c = generate(model, sos(model, 4), max_new_tokens=20, do_sample=True, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.2
    assert a.dtype == np.int64 and a.shape == (4, 21) and np.all(a[:, 0] == model.config.sos_token_id)
    assert a[:, 1:].max() < model.config.vocab_size - 1  # SOS is never generated


def test_generator_argument_is_used(model):
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    a = generate(model, sos(model, 2), max_new_tokens=8, do_sample=True, seed=g1)
    b = generate(model, sos(model, 2), max_new_tokens=8, do_sample=True, seed=g2)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.8])
def test_samples_follow_softmax_of_scaled_logits(temperature):
    """Chi-square goodness of fit: 40,000 draws against softmax(logits / temperature)."""
    logits = np.random.default_rng(1).normal(0, 2, 12).astype(np.float32)
    n = 40_000
    draws = sample_from_logits(np.tile(logits, (n, 1)), np.random.default_rng(9), temperature)
    observed = np.bincount(draws, minlength=12)
    expected = softmax((logits / temperature).astype(np.float64)) * n
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # and the wrong temperature is rejected: the test has power
    wrong = softmax((logits / (temperature * 1.5)).astype(np.float64)) * n
    assert stats.chisquare(observed, wrong).pvalue < 1e-6


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.5), (5, 0.7), (None, 1.0)])
def test_draws_never_leave_the_top_k_or_top_p_set(top_k, top_p):
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 1.5, (400, 20)).astype(np.float32)
    draws = sample_from_logits(logits, rng, 1.0, top_k, top_p)
    allowed = np.ones_like(logits, bool)
    order = np.argsort(-logits, axis=-1)
    if top_k is not None:
        allowed &= logits >= np.sort(logits, axis=-1)[:, [-top_k]]
    if top_p is not None:
        p_sorted = np.take_along_axis(softmax(logits.astype(np.float64)), order, axis=-1)
        n_keep = np.argmax(np.cumsum(p_sorted, axis=-1) >= top_p - 1e-6, axis=-1) + 1
        in_nucleus = np.zeros_like(allowed)
        for i in range(len(logits)):
            in_nucleus[i, order[i, :n_keep[i]]] = True
        allowed &= in_nucleus
    assert allowed[np.arange(len(draws)), draws].all()


def test_filters():
    x = np.array([[1.0, 5.0, 3.0, 5.0, -2.0]], np.float32)
    assert np.isfinite(top_k_filter(x, 2)).tolist() == [[False, True, False, True, False]]
    assert np.isfinite(top_k_filter(x, 99)).all()
    p = softmax(x)[0]
    kept = np.isfinite(top_p_filter(x, 0.9))[0]
    assert kept[1] and kept[3] and p[kept].sum() >= 0.9 and not kept[4]
    assert np.isfinite(top_p_filter(x, 1e-6)).sum() == 1  # always at least one token


def test_kv_cache_feeds_one_position_per_step(model):
    seen = []
    original = type(model).__call__

    class Spy(type(model)):
        def __call__(self, input_ids=None, **kw):
            seen.append(np.asarray(input_ids).shape[1])
            return original(self, input_ids, **kw)

    spy = Spy.__new__(Spy)
    spy.__dict__.update(model.__dict__)
    generate(spy, np.full((2, 5), 3), max_new_tokens=6)
    assert seen == [5, 1, 1, 1, 1, 1]  # the prompt once, then one token a step; the last never fed back


def test_a_whole_image_fits_n_positions_plus_one(model):
    out = generate(model, sos(model, 1), max_length=model.config.n_positions + 1)
    assert out.shape == (1, 25)


@pytest.mark.parametrize("kw, message", [
    (dict(max_length=26), "exceeds n_positions \\+ 1 = 25"),
    (dict(max_length=1), "nothing to generate"),
    (dict(max_length=5, max_new_tokens=3), "not both"),
    (dict(max_new_tokens=4, do_sample=True, temperature=0), "temperature must be > 0"),
    (dict(max_new_tokens=4, do_sample=True, top_k=0), "top_k must be an integer >= 1"),
    (dict(max_new_tokens=4, do_sample=True, top_p=1.5), "top_p must be in \\(0, 1\\]"),
    (dict(max_new_tokens=4, do_sample=True, top_p=0), "top_p must be in \\(0, 1\\]"),
])
def test_bad_arguments(model, kw, message):
    with pytest.raises(ValueError, match=message):
        generate(model, sos(model, 1), **kw)


@pytest.mark.parametrize("prompt, message", [
    (np.zeros((1, 3), np.float32), "input_ids must be an integer array, got dtype float32"),
    (np.zeros(3, np.int64), r"input_ids must have shape \(batch, sequence\), got shape \(3,\)"),
    (np.full((1, 2), 17), r"input_ids holds token id 17, outside \[0, vocab_size=17\)"),  # the model's own rule
])
def test_bad_prompt(model, prompt, message):
    with pytest.raises(ValueError, match=message):
        generate(model, prompt, max_new_tokens=2)


def test_a_temperature_that_overflows_float32_samples_greedily(model):
    """logits / 1e-40 overflows float32: the old code drew token 0 at every position (a flat image)."""
    greedy = generate(model, sos(model, 3), max_new_tokens=12)
    for temperature in (1e-40, 1e-45, 5e-324):  # a float32 denormal, the smallest one, 0 in float32
        cold = generate(model, sos(model, 3), max_new_tokens=12, do_sample=True, temperature=temperature, seed=1)
        np.testing.assert_array_equal(cold, greedy)
    assert len(np.unique(greedy[:, 1:])) > 1  # the test has power: greedy is not token 0 everywhere


def test_options_object_is_the_keywords(model):
    """generation_config= carries the same options as keywords; keywords replace its fields."""
    options = GenerationConfig(do_sample=True, top_k=4, temperature=0.7, max_new_tokens=9)
    a = generate(model, sos(model, 2), generation_config=options, seed=3)
    b = generate(model, sos(model, 2), do_sample=True, top_k=4, temperature=0.7, max_new_tokens=9, seed=3)
    np.testing.assert_array_equal(a, b)
    c = generate(model, sos(model, 2), generation_config=options, do_sample=False)
    np.testing.assert_array_equal(c, generate(model, sos(model, 2), max_new_tokens=9))
    assert options.top_k == 4 and isinstance(GenerationConfig(top_k=np.int64(3), do_sample=True).top_k, int)
    with pytest.raises(ValueError, match="generation_config must be a GenerationConfig"):
        generate(model, sos(model, 1), generation_config={"do_sample": True})


def test_options_are_checked_when_made():
    with pytest.raises(OptionError, match=r"temperature must be > 0 and finite \(when sampling\), got -1") as e:
        GenerationConfig(do_sample=True, temperature=-1)
    assert (e.value.name, e.value.rule, e.value.value) == ("temperature", "> 0 and finite", -1)  # the CLI's words
    assert GenerationConfig(temperature=-1).temperature == -1  # ignored (unchecked) when greedy, as transformers
    with pytest.raises(OptionError, match="seed must be a non-negative integer"):
        as_generator(-1)


def test_a_new_sampling_rule_is_one_function_and_one_field(model):
    """The extension point: a processor function and a GenerationConfig field naming it; nothing else."""
    def ban(scores, token):  # the function: scores [N, V] -> scores [N, V]
        return np.where(np.arange(scores.shape[-1]) == token, -np.inf, scores).astype(np.float32)

    @dataclass(frozen=True)
    class WithBan(GenerationConfig):
        ban_token: int | None = rule(ban, None, TOKEN)  # the field

    plain = generate(model, sos(model, 4), max_new_tokens=20, do_sample=True, seed=0)
    common = int(np.bincount(plain[:, 1:].ravel()).argmax())
    banned = generate(model, sos(model, 4), generation_config=WithBan(do_sample=True, max_new_tokens=20,
                                                                       ban_token=common), seed=0)
    assert common not in banned[:, 1:] and (banned[:, 1:] != plain[:, 1:]).any()


def test_progress_bar_is_on_screen_before_the_prompts_forward(model, capsys, monkeypatch):
    """generate(progress=True) shows its bar before the first forward (the prompt, where kernels compile),
    counts tokens (rows x new positions) and clears itself at the end."""
    seen = []
    real_call = type(model).__call__

    def call(self, *args, **kwargs):
        if not seen:
            seen.append(capsys.readouterr().err)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "__call__", call)
    prompt = np.full((3, 1), model.config.vocab_size - 1)
    model.generate(prompt, max_new_tokens=5, do_sample=True, seed=0, progress=True)
    assert "sampling:   0%" in seen[0] and "0/15" in seen[0], seen
    assert capsys.readouterr().err.endswith("\r"), "a finished bar clears its line"


def test_a_progress_bar_spans_several_calls(model, capsys):
    from minigpt_pixels.generation import progress_bar

    prompt = np.full((2, 1), model.config.vocab_size - 1)
    with progress_bar(2 * 3 + 2 * 4) as bar:
        model.generate(prompt, max_new_tokens=3, do_sample=True, seed=0, progress=bar)
        assert bar.n == 6 and not bar.disable
        model.generate(prompt, max_new_tokens=4, do_sample=True, seed=0, progress=bar)
        assert bar.n == 14
