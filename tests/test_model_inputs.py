"""Bad inputs and bad checkpoints get clear errors that name the problem."""

import json
import shutil

import numpy as np
import pytest

from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.model import (ImageGPTForCausalImageModeling, ImageGPTForImageClassification, ImageGPTModel,
                                  KVCache, ModelInputError, WeightsError)
from minigpt_pixels.weights import load_state_dict, save_file

from .conftest import GOLDEN_DIR

CFG = dict(vocab_size=17, n_positions=16, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def model():
    return ImageGPTForCausalImageModeling(ImageGPTConfig(**CFG), seed=0)


@pytest.mark.parametrize("ids, message", [
    (np.zeros((2, 17), np.int64), "more than n_positions 16"),
    (np.full((1, 4), 17), "token id 17, outside \\[0, vocab_size=17\\)"),
    (np.full((1, 4), -1), "token id -1"),
    (np.zeros(5, np.int64), "shape \\(batch, sequence\\).*ids\\[None\\]"),
    (np.zeros((1, 2, 3), np.int64), "shape \\(batch, sequence\\)"),
    (np.zeros((1, 4), np.float32), "integer array, got dtype float32"),
    (np.zeros((1, 0), np.int64), "empty"),
])
def test_bad_input_ids(model, ids, message):
    with pytest.raises(ModelInputError, match=message):
        model(ids)


def test_other_bad_inputs(model):
    ids = np.zeros((2, 5), np.int64)
    with pytest.raises(ModelInputError, match="attention_mask has shape \\(2, 4\\)"):
        model(ids, attention_mask=np.ones((2, 4)))
    with pytest.raises(ModelInputError, match="position_ids holds 16"):
        model(ids, position_ids=np.full((2, 5), 16))
    with pytest.raises(ModelInputError, match="labels holds 16"):
        model(ids, labels=np.full((2, 5), 16))  # SOS is never a target
    with pytest.raises(ModelInputError, match="exactly one of input_ids and inputs_embeds"):
        model()
    with pytest.raises(ModelInputError, match="add_cross_attention=False"):
        model(ids, encoder_hidden_states=np.zeros((2, 3, 32), np.float32))
    with pytest.raises(ModelInputError, match="past_key_values holds batch 3"):
        model(ids, past_key_values=KVCache(model.config, 3), use_cache=True)


def test_cache_overflow_is_named(model):
    cache = KVCache(model.config, 1)
    model(np.zeros((1, 10), np.int64), past_key_values=cache, use_cache=True)
    with pytest.raises(ModelInputError, match="sequence length 17 \\(cached 10 \\+ new 7\\) exceeds n_positions 16"):
        model(np.zeros((1, 7), np.int64), past_key_values=cache, use_cache=True)


def test_inputs_embeds_equal_ids(model):
    ids = np.array([[16, 3, 5, 7]])
    emb = model.params["transformer.wte.weight"][ids]
    np.testing.assert_allclose(model(inputs_embeds=emb).logits, model(ids).logits, atol=1e-6)


def test_from_pretrained_file_or_directory_and_prefixes(tmp_path):
    src = GOLDEN_DIR / "models" / "causal_small"
    a = ImageGPTForCausalImageModeling.from_pretrained(src)
    b = ImageGPTForCausalImageModeling.from_pretrained(src / "model.safetensors")
    with pytest.warns(UserWarning, match="ignoring lm_head.weight"):
        base = ImageGPTModel.from_pretrained(src)  # strips "transformer.", drops the LM head
    assert set(base.params) == {k[len("transformer."):] for k in a.params if k.startswith("transformer.")}
    ids = np.array([[16, 1, 2, 3]])
    np.testing.assert_array_equal(a(ids).logits, b(ids).logits)
    # a checkpoint saved without the prefix loads into the head model too
    d = tmp_path / "noprefix"
    d.mkdir()
    shutil.copy(src / "config.json", d)
    save_file({k.removeprefix("transformer."): v for k, v in load_state_dict(src).items()}, d / "model.safetensors")
    np.testing.assert_array_equal(ImageGPTForCausalImageModeling.from_pretrained(d)(ids).logits, a(ids).logits)


def test_classifier_from_causal_checkpoint_initialises_the_head():
    with pytest.warns(UserWarning, match="score.weight not in the checkpoint; newly initialised"), \
            pytest.warns(UserWarning, match="ignoring lm_head.weight"):
        clf = ImageGPTForImageClassification.from_pretrained(GOLDEN_DIR / "models" / "causal_small", seed=0)
    assert clf.params["score.weight"].shape == (2, 32)


def _broken_copy(tmp_path, edit):
    src = GOLDEN_DIR / "models" / "causal_small"
    d = tmp_path / "broken"
    shutil.copytree(src, d)
    tensors = dict(load_state_dict(d))
    tensors = {k: np.array(v) for k, v in tensors.items()}
    config = json.loads((d / "config.json").read_text())
    edit(tensors, config)
    save_file(tensors, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda t, c: t.pop("transformer.h.1.mlp.c_fc.bias"), "missing tensor\\(s\\) transformer.h.1.mlp.c_fc.bias"),
    (lambda t, c: t.update({"transformer.h.9.ln_1.weight": np.ones(32, np.float32)}),
     "unexpected tensor\\(s\\) transformer.h.9.ln_1.weight"),
    (lambda t, c: t.update({"transformer.wpe.weight": np.zeros((8, 32), np.float32)}),
     "'transformer.wpe.weight' has shape \\(8, 32\\), but config.json implies \\(24, 32\\)"),
    (lambda t, c: c.update(n_embd=30), "n_embd \\(30\\) must be divisible by n_head \\(4\\)"),
    (lambda t, c: c.update(n_layer=3), "missing tensor\\(s\\) transformer.h.2"),
])
def test_bad_checkpoints_are_named(tmp_path, edit, message):
    d = _broken_copy(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as e:
        ImageGPTForCausalImageModeling.from_pretrained(d)
    assert str(d) in str(e.value)


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        ImageGPTForCausalImageModeling.from_pretrained("/nonexistent/model")


def test_weights_error_is_a_value_error():
    assert issubclass(WeightsError, ValueError) and issubclass(ModelInputError, ValueError)


# ---- issue 23: careless calls and hostile files, each named -------------------------------------------
def _saved(tmp_path, name="m"):
    directory = tmp_path / name
    ImageGPTForCausalImageModeling(ImageGPTConfig(**CFG), seed=0).save_pretrained(directory)
    return directory


def test_config_nested_too_deep_names_the_file(tmp_path):
    directory = _saved(tmp_path)
    (directory / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    for load in (ImageGPTConfig.from_pretrained, ImageGPTForCausalImageModeling.from_pretrained):
        with pytest.raises(ValueError, match=r"config\.json: cannot read config: JSON nested too deeply"):
            load(directory)


def test_config_nested_too_deep_named_by_the_cli(tmp_path, capsys):
    from minigpt_pixels import DEFAULT_MODEL, sample

    directory = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, directory)
    (directory / "config.json").write_text("{\"a\": " * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--model", str(directory), "--out", str(tmp_path / "out.png"), "--num-samples", "1"])
    assert exit_info.value.code == 2
    assert f"{directory / 'config.json'}: cannot read config: JSON nested too deeply" in capsys.readouterr().err


def test_config_json_that_is_a_folder_is_named_once(tmp_path):
    directory = _saved(tmp_path)
    (directory / "config.json").unlink()
    (directory / "config.json").mkdir()
    for where in (directory, directory / "config.json"):
        with pytest.raises(ValueError, match=r"m/config\.json is a directory, not a config file") as e:
            ImageGPTForCausalImageModeling.from_pretrained(where)
        assert "config.json/config.json" not in str(e.value)


def test_from_pretrained_on_the_config_file_says_so(tmp_path):
    directory = _saved(tmp_path)
    with pytest.raises(ValueError, match=r"config\.json is a config file, not a model; pass the folder"):
        ImageGPTForCausalImageModeling.from_pretrained(directory / "config.json")


def test_save_pretrained_into_a_file_is_refused_naming_it(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"mine")
    with pytest.raises(ValueError, match=r"weights\.bin is a file, not a directory"):
        ImageGPTForCausalImageModeling(ImageGPTConfig(**CFG), seed=0).save_pretrained(target)
    assert target.read_bytes() == b"mine"


@pytest.mark.parametrize("kwargs, message", [
    (dict(inputs_embeds=np.zeros((2, 0, 32), np.float32)), r"inputs_embeds is empty \(shape \(2, 0, 32\)\)"),
    (dict(inputs_embeds=np.zeros((0, 3, 32), np.float32)), r"inputs_embeds is empty"),
    (dict(input_ids=[[1, 2, 3], [1, 2]]), r"input_ids is ragged: every row must have the same length"),
    (dict(input_ids=[[1, 2], [3, 4]], attention_mask=[[1, 1], [1]]), r"attention_mask is ragged"),
    (dict(input_ids=[[1, 2], [3, 4]], attention_mask=[[1, 2], [1, 1]]), r"attention_mask must hold only 0"),
])
def test_empty_and_ragged_inputs_name_the_argument(model, kwargs, message):
    with pytest.raises(ModelInputError, match=message):
        model(**kwargs)


def test_check_prompt_is_the_rule_model_calls_use():
    """inputs.check_prompt, the prompt check generate shares: the same refusals as model(...)."""
    from minigpt_pixels.inputs import check_prompt

    config = ImageGPTConfig(**CFG)
    ids, mask = check_prompt(config, [[16, 3, 4]], [[0, 1, 1]])
    assert ids.shape == (1, 3) and mask.tolist() == [[0, 1, 1]]
    assert check_prompt(config, [[16]])[1] is None
    for bad_ids, bad_mask, message in (([[16, 3], [16]], None, "input_ids is ragged"),
                                       ([[16, 3]], [[2, 1]], "attention_mask must hold only 0"),
                                       ([[16, 17]], None, "token id 17"),
                                       ([[16, 3]], [[1, 1, 1]], r"attention_mask has shape \(1, 3\)")):
        with pytest.raises(ModelInputError, match=message):
            check_prompt(config, bad_ids, bad_mask)
        with pytest.raises(ModelInputError, match=message):
            ImageGPTForCausalImageModeling(config, seed=0)(bad_ids, attention_mask=bad_mask)
