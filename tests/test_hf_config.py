"""transformers' ConfigTester (tests/test_configuration_common.py), run on our ImageGPTConfig, as
tests/models/imagegpt/test_modeling_imagegpt.py runs it (`ConfigTester(self, ImageGPTConfig, n_embd=37)`),
plus the config behaviour its ModelTesterMixin relies on. Where transformers is installed, each
check also compares with transformers' own ImageGPTConfig.

Ported: 8 of ConfigTester's 10 checks - common_properties, to_json_string, to_json_file,
from_and_save_pretrained (with its OSError for a missing path), from_and_save_pretrained_subfolder,
with_num_labels, config_arguments_init (5.24's generic PretrainedConfig keywords), can_be_init_without_params -
each also against transformers' ImageGPTConfig where it says more; and checks the model tests rely on:
aliases settable, overrides in from_pretrained, config.json errors naming the file and field.

Not applicable (2):
- create_and_test_config_from_and_save_pretrained_composite and ..._from_pretrained_custom_kwargs:
  both only act on composite configs (sub-configs); ImageGPTConfig has none, so upstream they return
  at once. (Overrides as keywords are tested below all the same.)

Deliberate difference: upstream builds ImageGPTConfig(n_embd=37), which transformers accepts until a
model is built from it (37 is not divisible by the 8 heads). Ours refuses it at once, naming both
numbers, so these checks use n_embd=40.
"""

import json

import numpy as np
import pytest

from minigpt_pixels.config import ConfigError, ImageGPTConfig

INPUTS = {"n_embd": 40}  # upstream: 37 (see above)

# transformers 5.24's generic PretrainedConfig keywords (tests/utils/test_configuration_utils.py's
# config_common_kwargs, less the generation parameters 5.x no longer keeps in a model config), each at
# a value that is not its default
COMMON_KWARGS = {
    "return_dict": False, "output_hidden_states": True, "output_attentions": True, "dtype": "float16",
    "chunk_size_feed_forward": 5, "architectures": ["ImageGPTModel"], "id2label": {0: "label"},
    "label2id": {"label": 0}, "problem_type": "regression", "tie_word_embeddings": False,
    "add_cross_attention": True, "bos_token_id": 6, "pad_token_id": 7, "eos_token_id": 8, "sep_token_id": 9,
    "decoder_start_token_id": 10, "is_decoder": True, "cross_attention_hidden_size": 128,
    "finetuning_task": "translation", "tokenizer_class": "BertTokenizerFast", "prefix": "prefix",
    "task_specific_params": {"translation": "some_params"},
}


def test_config_common_properties():
    config = ImageGPTConfig(**INPUTS)
    for prop in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
        assert hasattr(config, prop), prop


def test_config_to_json_string():
    obj = json.loads(ImageGPTConfig(**INPUTS).to_json_string())
    for key, value in INPUTS.items():
        assert obj[key] == value


def test_config_to_json_file(tmp_path):
    first = ImageGPTConfig(**INPUTS)
    first.to_json_file(tmp_path / "config.json")
    assert ImageGPTConfig.from_json_file(tmp_path / "config.json").to_dict() == first.to_dict()


def test_config_from_and_save_pretrained(tmp_path):
    first = ImageGPTConfig(**INPUTS)
    first.save_pretrained(tmp_path)
    assert ImageGPTConfig.from_pretrained(tmp_path).to_dict() == first.to_dict()
    with pytest.raises(OSError):
        ImageGPTConfig.from_pretrained(f".{tmp_path}")


def test_config_from_and_save_pretrained_subfolder(tmp_path):
    first = ImageGPTConfig(**INPUTS)
    first.save_pretrained(tmp_path / "test")
    assert ImageGPTConfig.from_pretrained(tmp_path, subfolder="test").to_dict() == first.to_dict()
    with pytest.raises(OSError):
        ImageGPTConfig.from_pretrained(tmp_path)  # the config is in the subfolder, not here


def test_config_with_num_labels():
    config = ImageGPTConfig(**INPUTS, num_labels=5)
    assert len(config.id2label) == 5 and len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == 3 and len(config.label2id) == 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


def test_config_with_num_labels_like_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours, theirs = ImageGPTConfig(**INPUTS, num_labels=5), transformers.ImageGPTConfig(**INPUTS, num_labels=5)
    ours.num_labels = theirs.num_labels = 3
    assert ours.id2label == theirs.id2label and ours.label2id == theirs.label2id
    ours.save_pretrained(tmp_path)  # a config changed after creation still loads, in ours and in transformers
    assert ImageGPTConfig.from_pretrained(tmp_path).num_labels == 3
    assert transformers.ImageGPTConfig.from_pretrained(tmp_path).num_labels == 3


def test_config_arguments_init():
    config = ImageGPTConfig(**COMMON_KWARGS)
    wrong = [(k, getattr(config, k), v) for k, v in COMMON_KWARGS.items() if getattr(config, k) != v]
    assert not wrong, wrong


def test_config_arguments_init_like_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.ImageGPTConfig(**COMMON_KWARGS)
    ours = ImageGPTConfig(**COMMON_KWARGS)
    for key in COMMON_KWARGS:
        if key != "dtype":  # transformers turns "float16" into torch.float16
            assert getattr(ours, key) == getattr(theirs, key), key
    ours.save_pretrained(tmp_path)
    back = transformers.ImageGPTConfig.from_pretrained(tmp_path)
    assert back.output_attentions and back.return_dict is False and back.is_decoder and back.sep_token_id == 9


def test_config_can_be_init_without_params(recwarn):
    assert ImageGPTConfig() is not None and ImageGPTConfig(**INPUTS) is not None
    assert not recwarn.list  # upstream: nothing logged


@pytest.mark.parametrize("alias, field, value", [("hidden_size", "n_embd", 64), ("num_attention_heads", "n_head", 4),
                                                 ("num_hidden_layers", "n_layer", 3),
                                                 ("max_position_embeddings", "n_positions", 64)])
def test_aliases_readable_settable_and_keywords(alias, field, value):
    config = ImageGPTConfig(**{alias: value})
    assert getattr(config, field) == value == getattr(config, alias)
    config = ImageGPTConfig()
    setattr(config, alias, value)
    assert getattr(config, field) == value
    with pytest.raises(ConfigError, match=f"pass {field} or its alias {alias}, not both"):
        ImageGPTConfig(**{alias: value, field: value})


def test_defaults_and_to_dict_agree_with_transformers():
    transformers = pytest.importorskip("transformers")
    theirs = transformers.ImageGPTConfig().to_dict()
    ours = ImageGPTConfig().to_dict()
    for key in ours:
        if key in theirs:
            assert ours[key] == theirs[key] or key == "id2label", key  # id2label: JSON string keys in ours
    assert {k for k in ("output_attentions", "output_hidden_states", "return_dict", "use_cache")} <= set(ours)


def test_from_pretrained_overrides_and_unknown_keys(tmp_path):
    ImageGPTConfig(**INPUTS).save_pretrained(tmp_path)
    config = ImageGPTConfig.from_pretrained(tmp_path, n_layer=3, num_labels=4, output_hidden_states=True)
    assert (config.n_layer, config.num_labels, config.output_hidden_states, config.n_embd) == (3, 4, True, 40)
    with pytest.raises(ConfigError, match="n_layers is not an ImageGPTConfig field"):
        ImageGPTConfig.from_pretrained(tmp_path, n_layers=3)
    config, unused = ImageGPTConfig.from_pretrained(tmp_path, foo=1, return_unused_kwargs=True)
    assert unused == {"foo": 1}
    with pytest.raises(ConfigError, match="revision='v2' is not supported: nothing is downloaded"):
        ImageGPTConfig.from_pretrained(tmp_path, revision="v2")


@pytest.mark.parametrize("content, message", [
    ({"use_cache": "false"}, "use_cache must be true or false, got 'false'"),
    ({"scale_attn_weights": 0}, "scale_attn_weights must be true or false, got 0"),
    ({"id2label": ["a", "b"]}, "id2label must be a JSON object"),
    ({"id2label": {"x": "a"}}, "id2label must map integer ids to names"),
    ({"num_labels": 1, "problem_type": "single_label_classification"}, 'problem_type="single_label_classification" needs'),
    ({"problem_type": "ranking"}, "unknown problem_type 'ranking'"),
    ({"is_encoder_decoder": True}, "is_encoder_decoder=True is not supported"),
])
def test_config_json_errors_name_the_file_and_field(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=str(path).replace("\\", "\\\\") + ": " + message.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[")):
        ImageGPTConfig.from_pretrained(tmp_path)


def test_numpy_scalars_are_numbers():
    config = ImageGPTConfig(n_embd=np.int64(64), n_head=np.int32(4), layer_norm_epsilon=np.float32(1e-5),
                            use_cache=np.bool_(False))
    assert config.n_embd == 64 and type(config.n_embd) is int and config.use_cache is False
    json.loads(config.to_json_string())  # still JSON
