"""transformers' own ImageGPT model tests (tests/models/imagegpt/test_modeling_imagegpt.py: ImageGPTModelTest
and the ModelTesterMixin checks of tests/test_modeling_common.py it inherits), run on our three classes
with upstream's ImageGPTModelTester sizes (batch 14, 7 positions, vocabulary 99, width 32, 2 layers, 4
heads, MLP 37, gelu), and compared with transformers on the same random weights.

Ported: 27 upstream tests. ImageGPTModelTest's own 5: test_imagegpt_model, test_imagegpt_causal_lm,
test_imagegpt_image_classification, test_conv1d_weights_respect_initializer_range, test_forward_signature
(here also: the whole argument order equals transformers'). The mixin's 22: test_save_load,
test_from_pretrained_no_checkpoint, test_determinism, test_batching_equivalence,
test_model_forward_default_config_values, test_attention_outputs, test_hidden_states_output,
test_model_outputs_equivalence, test_inputs_embeds, test_inputs_embeds_matches_input_ids, test_problem_types,
test_load_with_mismatched_shapes (the base model with a new vocab_size; upstream runs it only for sequence
classifiers), test_can_load_ignoring_mismatched_shapes, test_model_get_set_embeddings (on the weight arrays),
test_model_main_input_name, test_model_base_model_prefix, test_base_model_prefix_loads_base_weights,
test_can_use_safetensors, test_load_save_without_tied_weights, test_model_is_small, test_bc_cache_name_forward
(cache= and past_key_values=; we do not warn about the old name, which stays ours too),
test_causal_lm_loss_honors_shift_labels (shift_labels refused by name: transformers' ImageGPT ignores it and
upstream skips the check for it). Besides them, checks of what a transformers user types: labels=input_ids with
SOS first, use_cache following config.use_cache with a cache that holds only what was computed and grows,
return_dict=False and config.return_dict, config overrides and subfolder= in from_pretrained, unsupported
arguments refused by name, classification labels whose shape does not fit the problem type refused.
(test_past_key_values_format, skipped upstream, is ported in tests/test_hf_generation.py.)

Not applicable: 104 - the other 102 of test_modeling_common.py's 124 tests, and 2 of ImageGPTModelTest's.
- attention implementations (28): flash_attn_* (16), sdpa_* (4), eager_matches_* (2), flex_attention,
  sliding_window_mask, attn_implementation_composite_models, can_set_attention_dynamically* (2),
  config_attn_implementation_setter: torch attention kernels; ours is one eager attention.
- torch training machinery (11): gradient checkpointing (3, peft included), enable_input_require_grads (2),
  training_gradient_checkpointing* (3), retain_grad_hidden_states_attentions, torch_compile_for_training,
  test_training (its body only checks the tester flag; our backward is checked against torch in
  tests/test_backward.py).
- torch storage, devices and dtypes (24): meta device and device context managers (4), init of missing weights
  and buffers (2), all_tensors_are_parameter_or_buffer, keep_in_fp32 (3), load_contiguous_weights,
  save_load_keys_to_ignore_on_save, torch_save_load, cpu/disk offload (3), model_parallelism, tp_plan,
  tied_weights_are_sharded_together, reverse_loading_mapping, can_load_from_already_mapped_keys,
  bc_torch_dtype, kernels_can_load_without_crashing, internal_model_config_and_subconfig_are_same.
- torch output-capture hooks (3): capture_outputs_decorator, format_of_can_record_outputs,
  can_capture_specific_layers_hidden_states.
- tied and resized embeddings (10): tied_weights_keys, model_weights_reload_no_missing_tied_weights, resize_*
  (8): ImageGPT's LM head has no SOS row and is never tied; nn.Embedding resizing is not offered.
- other architectures (23): encoder_decoder_loss_no_double_shift, multimodal_outputs_are_returned,
  get_{text,image,audio,video}_features_* (14), MoE router logits (2), RoPE (4), feed_forward_chunking
  (ImageGPT does not chunk).
- tester bookkeeping or skipped upstream for ImageGPT (3): num_layers_is_small (a check on the test's own
  config), generation_tester_mixin_inheritance, correct_missing_keys (test_missing_keys = False).
- ImageGPTModelTest's test_model_from_pretrained and test_inference_causal_lm_head: hub weights
  (openai/imagegpt-small).

Deliberate difference: save_pretrained writes no generation_config.json (upstream's test_save_load expects
one for a model that can generate); transformers loads the directory without it, and generate's settings
here are its arguments.
"""

import inspect
import json
import warnings

import numpy as np
import pytest

from minigpt_pixels.cache import KVCache
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.model import (ImageGPTForCausalImageModeling, ImageGPTForImageClassification, ImageGPTModel,
                                  ModelInputError, WeightsError)

from .conftest import report
from .hf_tester import ALL_CLASSES, OURS, TESTER, inputs, our_config, pair, run_hf, tensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.live
B, T, V = TESTER["batch_size"], TESTER["seq_length"], TESTER["vocab_size"]
TOL = 1e-4
_PAIRS = {}


def models(cls_name):
    if cls_name not in _PAIRS:
        _PAIRS[cls_name] = pair(cls_name, seed=len(_PAIRS) + 1)
    return _PAIRS[cls_name]


def prepare(cls_name, labels=False):
    """upstream's _prepare_for_class: input_ids and token_type_ids; labels if asked (zeros of shape
    (batch,) for the classifier, as ImageGPTModelTest adds them; input_ids for the LM)."""
    ids, token_type_ids, _ = inputs()
    kw = {"input_ids": ids, "token_type_ids": token_type_ids}
    if labels and cls_name == "ImageGPTForImageClassification":
        kw["labels"] = np.zeros(B, np.int64)
    elif labels and cls_name == "ImageGPTForCausalImageModeling":
        kw["labels"] = ids
    return kw


# ---- ImageGPTModelTest's own checks ------------------------------------------------------------------
def test_imagegpt_model():
    hf, ours = models("ImageGPTModel")
    ids, token_type_ids, _ = inputs()
    ours(ids, token_type_ids=token_type_ids)
    result = ours(ids, token_type_ids=token_type_ids)
    report("hf-port base last_hidden_state", result.last_hidden_state,
           run_hf(hf, input_ids=ids, token_type_ids=token_type_ids).last_hidden_state.numpy(), TOL)
    result = ours(ids)
    assert result.last_hidden_state.shape == (B, T, TESTER["hidden_size"])
    assert len(result.past_key_values) == ours.config.n_layer


def test_imagegpt_causal_lm():
    hf, ours = models("ImageGPTForCausalImageModeling")
    ids, token_type_ids, _ = inputs()
    labels = np.random.default_rng(1).integers(0, V - 1, (B, T))
    result = ours(ids, token_type_ids=token_type_ids, labels=labels)
    theirs = run_hf(hf, input_ids=ids, token_type_ids=token_type_ids, labels=labels)
    assert result.loss.shape == ()
    assert result.logits.shape == (B, T, V - 1)  # no tied embeddings: the head has no SOS row
    report("hf-port causal logits", result.logits, theirs.logits.numpy(), TOL)
    report("hf-port causal loss", result.loss, theirs.loss.numpy(), TOL)


def test_labels_equal_input_ids_with_sos_first():
    """The canonical call: labels=input_ids, SOS at position 0. The shifted loss never reads labels[:, 0]."""
    hf, ours = models("ImageGPTForCausalImageModeling")
    ids, _, _ = inputs(seed=2)
    ids[:, 0] = V - 1  # SOS
    out = ours(ids, labels=ids)
    report("hf-port loss with labels=input_ids (SOS first)", out.loss,
           run_hf(hf, input_ids=ids, labels=ids).loss.numpy(), 1e-5)
    bad = ids.copy()
    bad[3, 4] = V - 1  # SOS as a target the loss reads
    with pytest.raises(ModelInputError, match=r"labels holds 98 at \[3, 4\]"):
        ours(ids, labels=bad)


def test_imagegpt_image_classification():
    config = our_config()
    config.num_labels = TESTER["num_labels"]  # upstream sets it on the config, then builds the model
    assert ImageGPTForImageClassification(config).params["score.weight"].shape == (3, TESTER["hidden_size"])
    hf, ours = pair("ImageGPTForImageClassification", seed=9, num_labels=TESTER["num_labels"])
    ids, token_type_ids, mask = inputs()
    labels = np.random.default_rng(2).integers(0, 2, B)  # upstream: type_sequence_label_size = 2
    result = ours(ids, attention_mask=mask, token_type_ids=token_type_ids, labels=labels)
    assert result.logits.shape == (B, TESTER["num_labels"])
    theirs = run_hf(hf, input_ids=ids, attention_mask=mask, token_type_ids=token_type_ids, labels=labels)
    report("hf-port classifier logits", result.logits, theirs.logits.numpy(), TOL)
    report("hf-port classifier loss", result.loss, theirs.loss.numpy(), TOL)


def test_conv1d_weights_respect_initializer_range():
    config = our_config(initializer_range=0.0)
    model = ImageGPTModel(config)
    conv1d = [v for k, v in model.params.items() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))]
    assert conv1d and all(np.all(w == 0) for w in conv1d)


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_forward_signature_and_main_input_name(cls_name):
    ours = list(inspect.signature(OURS[cls_name].forward).parameters)[1:]
    assert ours[0] == "input_ids" == OURS[cls_name].main_input_name
    theirs = [p for p in inspect.signature(getattr(transformers, cls_name).forward).parameters][1:]
    assert ours == theirs  # the same order, so positional calls mean the same


# ---- ModelTesterMixin ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_save_load(cls_name, tmp_path):
    _, model = models(cls_name)
    first = model(**prepare(cls_name))[0]
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists()
    assert not (tmp_path / "generation_config.json").exists()  # upstream: one iff can_generate(); see the top
    again = OURS[cls_name].from_pretrained(tmp_path)
    second = again(**prepare(cls_name))[0]
    again.save_pretrained(tmp_path / "twice")
    OURS[cls_name].from_pretrained(tmp_path / "twice")
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_from_pretrained_no_checkpoint(cls_name):
    _, model = models(cls_name)
    new = OURS[cls_name].from_pretrained(None, config=model.config, state_dict=model.params)
    assert new.params.keys() == model.params.keys()
    for k in model.params:
        np.testing.assert_array_equal(new.params[k], model.params[k])


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_determinism(cls_name):
    _, model = models(cls_name)
    first, second = model(**prepare(cls_name))[0], model(**prepare(cls_name))[0]
    assert np.max(np.abs(first - second)) <= 1e-5


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_batching_equivalence(cls_name):
    _, model = models(cls_name)
    config = ImageGPTConfig.from_dict(model.config.to_dict())
    config.output_hidden_states = True
    model = OURS[cls_name](config, params=model.params)
    batched = model(**prepare(cls_name))
    row = model(**{k: v[:1] for k, v in prepare(cls_name).items()})
    for key in row.keys():
        if key in ("cache", "loss"):
            continue
        for a, b in zip(tensors([batched[key]]), tensors([row[key]])):
            assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
            np.testing.assert_allclose(a[tuple(slice(0, n) for n in b.shape)], b, atol=1e-5, rtol=1e-5, err_msg=key)


def test_model_forward_default_config_values():
    d = our_config().to_dict()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id", "sep_token_id", "tie_word_embeddings"):
        d.pop(key, None)
    config = ImageGPTConfig.from_dict(d)
    config.pad_token_id = config.eos_token_id = config.bos_token_id = config.sep_token_id = 0
    ImageGPTModel(config)(**prepare("ImageGPTModel"))


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_attention_outputs(cls_name):
    hf, model = models(cls_name)
    kw = prepare(cls_name)
    outputs = model(**kw, output_attentions=True, output_hidden_states=False)
    assert len(outputs.attentions) == TESTER["num_hidden_layers"]
    theirs = run_hf(hf, **kw, output_attentions=True)
    for a, b in zip(outputs.attentions, theirs.attentions):
        report("hf-port attentions", a, b.numpy(), TOL)
    config = ImageGPTConfig.from_dict(model.config.to_dict())
    config.output_attentions = True  # via the config
    by_config = OURS[cls_name](config, params=model.params)
    outputs = by_config(**kw)
    assert len(outputs.attentions) == TESTER["num_hidden_layers"]
    assert list(outputs.attentions[0].shape[-3:]) == [TESTER["num_attention_heads"], T, T]
    out_len = len(outputs)
    assert out_len == len(theirs)
    outputs = by_config(**kw, output_hidden_states=True)
    assert len(outputs) == out_len + 1  # hidden states added; attentions stay last
    assert outputs.to_tuple()[-1] is outputs.attentions


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_hidden_states_output(cls_name):
    hf, model = models(cls_name)
    kw = prepare(cls_name)
    theirs = run_hf(hf, **kw, output_hidden_states=True).hidden_states
    for outputs in (model(**kw, output_hidden_states=True),
                    OURS[cls_name](ImageGPTConfig.from_dict({**model.config.to_dict(), "output_hidden_states": True}),
                                   params=model.params)(**kw)):
        assert len(outputs.hidden_states) == TESTER["num_hidden_layers"] + 1
        assert list(outputs.hidden_states[0].shape[-2:]) == [T, TESTER["hidden_size"]]
        for a, b in zip(outputs.hidden_states, theirs):
            report("hf-port hidden_states", a, b.numpy(), TOL)


@pytest.mark.parametrize("extra", [{}, {"output_hidden_states": True}, {"output_attentions": True},
                                   {"output_hidden_states": True, "output_attentions": True}])
@pytest.mark.parametrize("labels", [False, True])
@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_model_outputs_equivalence(cls_name, labels, extra):
    hf, model = models(cls_name)
    kw = prepare(cls_name, labels=labels)
    as_tuple = model(**kw, return_dict=False, **extra)
    as_dict = model(**kw, return_dict=True, **extra).to_tuple()
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict)
    for a, b in zip(tensors(as_tuple), tensors(as_dict)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    theirs = run_hf(hf, **kw, return_dict=False, **extra)  # transformers' tuple: the same entries in order
    assert len(theirs) == len(as_tuple)
    for a, b in zip(tensors(as_tuple), tensors(theirs)):
        report("hf-port tuple outputs", a, b, TOL)


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_inputs_embeds(cls_name):
    _, model = models(cls_name)
    kw = prepare(cls_name)
    wte = model.get_input_embeddings()
    model(inputs_embeds=wte[kw.pop("input_ids")], **kw)[0]


def test_inputs_embeds_matches_input_ids():
    _, model = models("ImageGPTModel")
    kw = prepare("ImageGPTModel")
    ids = kw.pop("input_ids")
    embeds = model.get_input_embeddings()[ids]
    np.testing.assert_allclose(model(inputs_embeds=embeds, **kw)[0], model(input_ids=ids, **kw)[0], atol=1e-6)


@pytest.mark.parametrize("problem_type, num_labels, dtype", [("multi_label_classification", 2, np.float32),
                                                             ("regression", 1, np.float32),
                                                             ("single_label_classification", 2, np.int64),
                                                             ("single_label_classification", 1, np.int64)])
def test_problem_types(problem_type, num_labels, dtype):
    hf, model = models("ImageGPTForImageClassification")
    config = ImageGPTConfig.from_dict(model.config.to_dict())
    config.problem_type, config.num_labels = problem_type, num_labels  # set afterwards, as transformers' test does
    params = {**model.params, "score.weight": np.random.default_rng(3).normal(0, 0.3, (num_labels, 32))
              .astype(np.float32)}
    ours = ImageGPTForImageClassification(config, params=params)
    labels = np.zeros(B, np.int64) if problem_type != "regression" else np.random.default_rng(4).normal(size=B)
    if num_labels > 1 and problem_type == "multi_label_classification":
        labels = np.repeat(labels[:, None], num_labels, axis=1)
    labels = labels.astype(dtype)
    hf.config.problem_type, hf.config.num_labels = problem_type, num_labels
    hf.score = torch.nn.Linear(32, num_labels, bias=False)
    with torch.no_grad():
        hf.score.weight.copy_(torch.tensor(params["score.weight"]))
    theirs = run_hf(hf, **prepare("ImageGPTForImageClassification"), labels=labels).loss.numpy()
    report(f"hf-port {problem_type} loss", ours(**prepare("ImageGPTForImageClassification"), labels=labels).loss,
           theirs, TOL)
    _PAIRS.pop("ImageGPTForImageClassification")  # hf was changed: the next test builds a fresh pair


@pytest.mark.parametrize("problem_type, num_labels, labels, message", [
    ("multi_label_classification", 2, np.zeros(B, np.float32), r"labels of shape \(14,\) do not fit"),
    ("regression", 2, np.zeros(B, np.float32), r"labels of shape \(14,\) do not fit"),
    ("single_label_classification", 2, np.zeros((B, 2), np.int64), r"labels of shape \(14, 2\) do not fit"),
    ("regression", 1, np.zeros((B, 2), np.float32), r"labels of shape \(14, 2\) do not fit"),
])
def test_classification_labels_must_fit_the_problem_type(problem_type, num_labels, labels, message):
    config = our_config(problem_type=problem_type, num_labels=num_labels)
    with pytest.raises(ModelInputError, match=message):
        ImageGPTForImageClassification(config)(**prepare("ImageGPTModel"), labels=labels)


def test_single_label_with_one_label_like_transformers():
    """transformers refuses the pair when a config is made, and a model takes it when the fields are set
    afterwards (a one-class cross-entropy, 0 for label 0): both as here."""
    with pytest.raises(ValueError, match="single_label_classification"):
        transformers.ImageGPTConfig(num_labels=1, problem_type="single_label_classification")
    with pytest.raises(ValueError, match="single_label_classification"):
        our_config(num_labels=1, problem_type="single_label_classification")
    config = our_config()
    config.problem_type, config.num_labels = "single_label_classification", 1
    out = ImageGPTForImageClassification(config, seed=0)(**prepare("ImageGPTModel"), labels=np.zeros(B, np.int64))
    assert out.logits.shape == (B, 1) and out.loss == 0
    with pytest.raises(ModelInputError, match=r"labels must be in \[0, num_labels=1\)"):
        ImageGPTForImageClassification(config, seed=0)(**prepare("ImageGPTModel"), labels=np.ones(B, np.int64))


def test_can_load_ignoring_mismatched_shapes(tmp_path):
    config = our_config(initializer_range=1e-10, num_labels=3)
    model = ImageGPTForImageClassification(config, seed=0)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="score.weight"):  # RuntimeError, as transformers raises
        ImageGPTForImageClassification.from_pretrained(tmp_path, num_labels=42)
    with pytest.warns(UserWarning, match=r"score.weight.*\(3, 32\).*\(42, 32\).*newly initialised"):
        new = ImageGPTForImageClassification.from_pretrained(tmp_path, num_labels=42, ignore_mismatched_sizes=True)
    assert new.config.num_labels == 42 and new.params["score.weight"].shape == (42, 32)
    assert abs(new.params["score.weight"].mean()) <= 1e-1
    for k, v in model.params.items():
        if k != "score.weight":
            np.testing.assert_array_equal(new.params[k], v)
    assert new(**prepare("ImageGPTModel")).logits.shape[1] == 42
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.ImageGPTForImageClassification.from_pretrained(tmp_path, num_labels=42,
                                                                              ignore_mismatched_sizes=True)
    assert tuple(theirs.score.weight.shape) == new.params["score.weight"].shape


def test_load_with_mismatched_shapes(tmp_path):
    ImageGPTModel(our_config(), seed=0).save_pretrained(tmp_path)
    with pytest.raises(WeightsError, match="wte.weight"):
        ImageGPTModel.from_pretrained(tmp_path, vocab_size=10)
    with pytest.warns(UserWarning, match="wte.weight"):
        new = ImageGPTModel.from_pretrained(tmp_path, vocab_size=10, ignore_mismatched_sizes=True)
    new(np.random.default_rng(0).integers(0, 10, (2, 8)))


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_model_get_set_embeddings(cls_name):
    _, model = models(cls_name)
    model = OURS[cls_name](model.config, params=dict(model.params))
    wte = model.get_input_embeddings()
    assert wte.shape == (V, 32) and wte is model.params[model.prefix + "wte.weight"]
    new = np.ones_like(wte)
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new
    with pytest.raises(ModelInputError, match=r"wte.weight has shape \(10, 10\)"):
        model.set_input_embeddings(np.ones((10, 10), np.float32))
    head = model.get_output_embeddings()
    assert (head is model.params["lm_head.weight"]) if cls_name == "ImageGPTForCausalImageModeling" else head is None


def test_model_base_model_prefix():
    _, model = models("ImageGPTForCausalImageModeling")
    assert model.base_model_prefix == "transformer" and model.base_model is not model
    ids = prepare("ImageGPTModel")["input_ids"]
    report("base_model of the LM", model.base_model(ids).last_hidden_state,
           model(ids, output_hidden_states=True).hidden_states[-1], 0)


def test_base_model_prefix_loads_base_weights(tmp_path):
    base = ImageGPTModel(our_config(), seed=5)
    base.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="score.weight"):
        model, info = ImageGPTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"score.weight"}
    for k, v in base.params.items():
        np.testing.assert_array_equal(model.params["transformer." + k], v)


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_can_use_safetensors_and_without_tied_weights(cls_name, tmp_path):
    model = OURS[cls_name](our_config(tie_word_embeddings=False), seed=6)
    model.save_pretrained(tmp_path)
    reloaded, info = OURS[cls_name].from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    for k, v in model.params.items():
        np.testing.assert_array_equal(reloaded.params[k], v)


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_model_is_small(cls_name):
    _, model = models(cls_name)
    assert model.num_parameters() < 1_000_000 and model.num_parameters() == model.num_parameters


@pytest.mark.parametrize("cls_name", ALL_CLASSES)
def test_bc_cache_name_forward(cls_name):
    _, model = models(cls_name)
    kw = prepare(cls_name)
    old = model(**kw, use_cache=True, past_key_values=KVCache(model.config, B))
    new = model(**kw, use_cache=True, cache=KVCache(model.config, B))
    assert old.cache is not None and new.cache is not None and old.past_key_values is old.cache
    assert old.cache.get_seq_length() == new.cache.get_seq_length() == T
    with pytest.raises(ModelInputError, match="pass cache or past_key_values, not both"):
        model(**kw, cache=KVCache(model.config, B), past_key_values=KVCache(model.config, B))


def test_causal_lm_loss_honors_shift_labels():
    _, model = models("ImageGPTForCausalImageModeling")
    kw = prepare("ImageGPTForCausalImageModeling", labels=True)
    with pytest.raises(ModelInputError, match="shift_labels is not supported"):
        model(**kw, shift_labels=kw["labels"][:, 1:])


# ---- what a transformers user types ----------------------------------------------------------------
def test_use_cache_follows_config_and_the_cache_grows():
    hf, model = models("ImageGPTForCausalImageModeling")
    ids = prepare("ImageGPTModel")["input_ids"]
    out = model(ids[:, :4])
    cache = out.cache
    assert isinstance(cache, KVCache) and len(cache) == model.config.n_layer and cache.get_seq_length() == 4
    assert all(k.shape[2] == 4 for k, _ in cache)  # only what was computed, not n_positions per layer
    step = model(ids[:, 4:5], cache=cache)
    assert step.cache is cache and cache.get_seq_length() == 5
    report("hf-port decode step after a forward's cache", step.logits[:, 0], model(ids[:, :5]).logits[:, 4], 1e-5)
    assert model(ids, use_cache=False).cache is None
    config = ImageGPTConfig.from_dict(model.config.to_dict(), use_cache=False)
    assert ImageGPTForCausalImageModeling(config, params=model.params)(ids).cache is None
    assert len(model(ids)) == len(run_hf(hf, input_ids=ids))  # logits and the cache, in both


def test_return_dict_false_follows_config():
    hf, model = models("ImageGPTForCausalImageModeling")
    kw = prepare("ImageGPTForCausalImageModeling", labels=True)
    config = ImageGPTConfig.from_dict(model.config.to_dict(), return_dict=False)
    out = ImageGPTForCausalImageModeling(config, params=model.params)(**kw)
    assert isinstance(out, tuple) and len(out) == 3  # loss, logits, cache
    report("hf-port tuple loss", out[0], run_hf(hf, **kw).loss.numpy(), TOL)


@pytest.mark.parametrize("name, value", [("shift_labels", None), ("logits_to_keep", 1), ("head_mask", None),
                                         ("cache_position", None), ("num_items_in_batch", 3), ("foo", 1)])
def test_unsupported_forward_arguments_are_named(name, value):
    _, model = models("ImageGPTForCausalImageModeling")
    with pytest.raises(ModelInputError, match=f"{name} is not supported"):
        model(**prepare("ImageGPTModel"), **{name: value})


def test_from_pretrained_overrides_subfolder_and_missing(tmp_path):
    model = ImageGPTForCausalImageModeling(our_config(), seed=7)
    model.save_pretrained(tmp_path / "sub")
    loaded = ImageGPTForCausalImageModeling.from_pretrained(tmp_path, subfolder="sub", output_hidden_states=True)
    assert loaded.config.output_hidden_states and loaded(prepare("ImageGPTModel")["input_ids"]).hidden_states
    with pytest.raises(OSError):
        ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="revision='v2' is not supported"):
        ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "sub", revision="v2")
    with pytest.raises(ValueError, match="n_layers is not an ImageGPTConfig field"):
        ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "sub", n_layers=3)
    with pytest.raises(ValueError, match="device_map is not supported"):
        ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "sub", device_map="auto")
    assert json.loads((tmp_path / "sub" / "config.json").read_text())["architectures"] == \
        ["ImageGPTForCausalImageModeling"]
