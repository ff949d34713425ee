"""transformers' GenerationTesterMixin checks (tests/generation/test_utils.py) as ImageGPTModelTest runs
them, with its override (`_check_scores`: one (batch, vocab_size - 1) array per new token, the LM head
having no SOS row), on our generate(), compared token for token with transformers' generate on the same
random weights. Prompts as upstream's _get_input_ids_and_config: 2 rows of the tester's ids, cut to half
length, 3 new tokens; beam settings as upstream's _get_beam_kwargs (2 beams, length_penalty 2.0).

Ported (14 checks): greedy_generate, greedy_generate_dict_outputs, greedy_generate_dict_outputs_use_cache,
sample_generate, sample_generate_dict_output, beam_search_generate, beam_search_generate_dict_output,
beam_search_generate_dict_outputs_use_cache, generate_without_input_ids (refused, naming input_ids; there is
no bos_token_id to start from), left_padding_compatibility, past_key_values_format (skipped upstream for
ImageGPT: "Model inputs don't fit test pattern"; ours fits it), inherits_generation_mixin (can_generate),
and beam_sample_generate / ..._dict_output as a refusal naming the arguments.

Not applicable, refused by name when asked for (about 25 upstream tests, counted from the stored copy of
tests/generation/test_utils.py, which is older than 5.24's; the 5.24 file is not in transformers' sdist): assisted decoding and prompt lookup
(assistant_model, prompt_lookup_num_tokens), DoLa (dola_layers), contrastive search (penalty_alpha),
constrained and group beam search (constraints, num_beam_groups), static / quantized caches and
torch.compile (cache_implementation, compile_config), logits_to_keep, inputs_embeds prompts,
continuing from a given cache (past_key_values), model-parallel and low-memory beam search,
flash-attention position_ids packing: decoding strategies and torch machinery this package does not
implement. Sampling itself cannot match torch's random stream: sampled checks compare shapes,
determinism under a seed, and each step's scores with transformers' warpers applied to transformers'
logits.
"""

import numpy as np
import pytest

from minigpt_pixels.generation import generate

from .conftest import report
from .hf_tester import TESTER, inputs, pair, run_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.live
V = TESTER["vocab_size"] - 1  # the LM head's outputs


@pytest.fixture(scope="module")
def models():
    return pair("ImageGPTForCausalImageModeling", seed=4)


@pytest.fixture(scope="module")
def prompt():
    ids, _, _ = inputs(seed=5)
    return ids[:2, : TESTER["seq_length"] // 2]  # [2, 3]


def hf_generate(hf, prompt, **kw):
    with torch.no_grad():
        out = hf.generate(torch.tensor(prompt), attention_mask=torch.tensor(kw.pop("attention_mask", np.ones_like(prompt))),
                          pad_token_id=0, **kw)
    return out


def check_scores(scores, batch, new_tokens):
    """upstream's ImageGPT _check_scores: a tuple of one (batch, vocab_size - 1) array per new token."""
    assert isinstance(scores, tuple) and len(scores) == new_tokens
    assert [s.shape for s in scores] == [(batch, V)] * new_tokens


def compare_scores(name, ours, theirs, tol=1e-4):
    for a, b in zip(ours, theirs):
        b = b.numpy() if hasattr(b, "numpy") else b
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b), err_msg=f"{name}: filtered tokens differ")
        report(name, np.where(np.isfinite(a), a, 0), np.where(np.isfinite(b), b, 0), tol)


def test_greedy_generate(models, prompt):
    hf, ours = models
    out = generate(ours, prompt, max_length=prompt.shape[1] + 3)
    assert out.shape == (2, prompt.shape[1] + 3)
    np.testing.assert_array_equal(out, hf_generate(hf, prompt, max_length=prompt.shape[1] + 3, do_sample=False).numpy())


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generate_dict_outputs(models, prompt, use_cache):
    hf, ours = models
    kw = dict(max_new_tokens=3, output_scores=True, output_logits=True, return_dict_in_generate=True)
    out = generate(ours, prompt, use_cache=use_cache, **kw)
    theirs = hf_generate(hf, prompt, do_sample=False, use_cache=use_cache, **kw)
    np.testing.assert_array_equal(out.sequences, theirs.sequences.numpy())
    check_scores(out.scores, 2, 3)
    check_scores(out.logits, 2, 3)
    compare_scores("generate greedy scores", out.scores, theirs.scores)
    compare_scores("generate greedy logits", out.logits, theirs.logits)
    assert out["sequences"] is out.sequences and out[0] is out.sequences  # a ModelOutput-like record


def warped(hf, sequences, prompt_length, temperature, top_k, top_p):
    """transformers' sampling scores for given sequences: its warpers on its logits at each new token."""
    from transformers.generation import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k),
                                   TopPLogitsWarper(top_p)])
    logits = run_hf(hf, input_ids=sequences[:, :-1]).logits  # [N, L - 1, V]
    return [warpers(torch.tensor(sequences[:, :t]), logits[:, t - 1].clone()).numpy()
            for t in range(prompt_length, sequences.shape[1])]


@pytest.mark.parametrize("num_return_sequences", [1, 2])
def test_sample_generate_dict_output(models, prompt, num_return_sequences):
    hf, ours = models
    warp = dict(top_k=10, top_p=0.7, temperature=0.7)  # upstream's _get_warper_and_kwargs
    kw = dict(do_sample=True, max_new_tokens=3, num_return_sequences=num_return_sequences, output_scores=True,
              return_dict_in_generate=True, **warp)
    out = generate(ours, prompt, seed=0, **kw)
    again = generate(ours, prompt, seed=0, **kw)
    np.testing.assert_array_equal(out.sequences, again.sequences)  # a seed decides the draw
    assert out.sequences.shape == (2 * num_return_sequences, prompt.shape[1] + 3)
    np.testing.assert_array_equal(out.sequences[:, :3], np.repeat(prompt, num_return_sequences, axis=0))
    check_scores(out.scores, 2 * num_return_sequences, 3)
    compare_scores("generate sampling scores", out.scores, warped(hf, out.sequences, prompt.shape[1], **warp))
    theirs = hf_generate(hf, prompt, **kw)  # transformers' shapes, for the same call
    assert theirs.sequences.shape == out.sequences.shape and len(theirs.scores) == len(out.scores)


@pytest.mark.parametrize("num_return_sequences", [1, 2])
@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_generate_dict_output(models, prompt, num_return_sequences, use_cache):
    hf, ours = models
    kw = dict(num_beams=2, length_penalty=2.0, early_stopping=False, num_return_sequences=num_return_sequences,
              max_new_tokens=3, output_scores=True, return_dict_in_generate=True, use_cache=use_cache)
    out = generate(ours, prompt, **kw)
    theirs = hf_generate(hf, prompt, do_sample=False, **kw)
    np.testing.assert_array_equal(out.sequences, theirs.sequences.numpy())
    check_scores(out.scores, 2 * 2, 3)  # one row per beam
    compare_scores("beam search scores", out.scores, theirs.scores)
    report("beam search sequences_scores", out.sequences_scores, theirs.sequences_scores.numpy(), 1e-5)
    plain = generate(ours, prompt, **{k: v for k, v in kw.items() if k not in ("output_scores", "return_dict_in_generate")})
    np.testing.assert_array_equal(plain, out.sequences)


def test_beam_search_longer_with_left_padding(models):
    """More beams than tokens to choose early, over a longer run, with left-padded prompts of two lengths."""
    hf, ours = models
    ids, _, _ = inputs(seed=6, batch=3, length=6)
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    mask[2, :1] = 0
    ids = np.where(mask == 1, ids, 0)
    kw = dict(num_beams=4, num_return_sequences=3, max_new_tokens=12)
    np.testing.assert_array_equal(generate(ours, ids, attention_mask=mask, **kw),
                                  hf_generate(hf, ids, attention_mask=mask, do_sample=False, **kw).numpy())


@pytest.mark.parametrize("kw, message", [
    (dict(num_beams=2, do_sample=True), "beam sampling"),
    (dict(num_beams=0), "num_beams must be an integer >= 1, got 0"),
    (dict(num_return_sequences=2), r"num_return_sequences \(2\) must be at most num_beams \(1\)"),
])
def test_beam_sample_generate_refused(models, prompt, kw, message):
    with pytest.raises(ValueError, match=message):
        generate(models[1], prompt, max_new_tokens=3, **kw)


def test_generate_without_input_ids(models):
    with pytest.raises(ValueError, match="generate\\(\\) needs input_ids"):
        models[1].generate(max_new_tokens=3)


def test_left_padding_compatibility(models):
    """upstream: the next-token logits of a left-padded batch equal the unpadded ones; and the tokens equal
    transformers' for the same padded batch."""
    hf, ours = models
    ids, _, _ = inputs(seed=7, batch=2, length=5)
    pad = np.zeros((2, 3), np.int64)
    padded, mask = np.concatenate([pad, ids], axis=1), np.concatenate([pad, np.ones_like(ids)], axis=1)
    plain = generate(ours, ids, max_new_tokens=1, output_logits=True, return_dict_in_generate=True).logits[0]
    left = generate(ours, padded, attention_mask=mask, max_new_tokens=1, output_logits=True,
                    return_dict_in_generate=True).logits[0]
    report("left padding next-token logits", left, plain, 1e-5)
    ragged = mask.copy()
    ragged[1, 3:5] = 0  # rows of different lengths
    np.testing.assert_array_equal(
        generate(ours, padded, attention_mask=ragged, max_new_tokens=6),
        hf_generate(hf, padded, attention_mask=ragged, do_sample=False, max_new_tokens=6).numpy())


def test_past_key_values_format(models, prompt):
    cfg = models[1].config
    out = models[1](prompt, use_cache=True)
    cache = out.past_key_values
    assert len(cache) == cfg.n_layer and cache.get_seq_length() == prompt.shape[1]
    head_dim = cfg.n_embd // cfg.n_head
    for layer in range(cfg.n_layer):
        keys, values = cache[layer]
        assert keys.shape == values.shape == (prompt.shape[0], cfg.n_head, prompt.shape[1], head_dim)


def test_inherits_generation_mixin(models):
    from minigpt_pixels.model import ImageGPTForImageClassification, ImageGPTModel

    assert models[1].can_generate()
    assert not ImageGPTModel(models[1].config).can_generate()
    assert not ImageGPTForImageClassification(models[1].config).can_generate()


def test_numpy_scalars_accepted(models, prompt):
    ours = models[1]
    a = generate(ours, prompt, max_new_tokens=np.int64(3), do_sample=True, temperature=np.float32(0.8),
                 top_k=np.int64(5), top_p=np.float64(0.9), seed=np.int64(1), num_beams=np.int32(1))
    b = generate(ours, prompt, max_new_tokens=3, do_sample=True, temperature=0.8, top_k=5, top_p=0.9, seed=1)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw, message", [
    (dict(do_sample="yes"), "do_sample must be True or False, got 'yes'"),
    (dict(output_scores=1), "output_scores must be True or False, got 1"),
    (dict(max_new_tokens=2.5), r"max_new_tokens must be an integer >= 1 \(or None\), got 2.5"),
    (dict(max_new_tokens=0), r"max_new_tokens must be an integer >= 1 \(or None\), got 0"),
    (dict(do_sample=True, temperature="hot"), "temperature must be > 0"),
    (dict(do_sample=True, top_k=2.5), "top_k must be an integer >= 1"),
    (dict(seed="x"), "seed must be a non-negative integer"),
    (dict(seed=-1), r"seed must be a non-negative integer \(or an np.random.Generator, or None\), got -1"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(repetition_penalty=1.2), r"repetition_penalty=1.2 is not supported \(only 1.0\)"),
    (dict(assistant_model=object()), "does not know or support: assistant_model"),
    (dict(penalty_alpha=0.6), "does not know or support: penalty_alpha"),
    (dict(inputs_embeds=np.zeros((2, 3, 32))), "does not know or support: inputs_embeds"),
    (dict(attention_mask=np.ones((2, 2))), r"attention_mask has shape \(2, 2\), expected \(2, 3\)"),
    (dict(attention_mask=np.array([[1, 1, 0], [1, 1, 1]])), "pad on the left"),
    (dict(attention_mask=np.full((2, 3), 2)), "only 0 \\(padding\\) and 1"),
])
def test_bad_generate_arguments_are_named(models, prompt, kw, message):
    with pytest.raises(ValueError, match=message):
        generate(models[1], prompt, **{"max_new_tokens": 3, **kw})


def test_a_palette_that_does_not_fit_the_model_is_refused(models):
    from minigpt_pixels.generation import sample_images
    from minigpt_pixels.processor import ImageGPTImageProcessor

    processor = ImageGPTImageProcessor(clusters=np.zeros((16, 3)), size=2)  # 16 colours; the model predicts 98
    with pytest.raises(ValueError, match=r"palette has 16 colours but the model predicts vocab_size - 1 = 98"):
        sample_images(models[1], processor, 1, seed=0)
