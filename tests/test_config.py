import json

import pytest

from minigpt_pixels.config import ConfigError, ImageGPTConfig


def test_defaults_match_transformers():
    c = ImageGPTConfig()
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head) == (513, 1024, 512, 24, 8)
    assert c.activation_function == "quick_gelu" and c.sos_token_id == 512 and c.inner_dim == 2048
    assert c.tie_word_embeddings is False and c.layer_norm_epsilon == 1e-5


def test_defaults_equal_transformers_class_defaults():
    transformers = pytest.importorskip("transformers")
    theirs = transformers.ImageGPTConfig().to_dict()
    ours = ImageGPTConfig().to_dict()
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
                "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                "add_cross_attention", "tie_word_embeddings"):
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize("preset, sizes", [("igpt_s", (24, 512, 8)), ("igpt_m", (36, 1024, 8)),
                                           ("igpt_l", (48, 1536, 16))])
def test_presets_follow_the_paper_not_segformer(preset, sizes):
    c = getattr(ImageGPTConfig, preset)()
    assert (c.n_layer, c.n_embd, c.n_head) == sizes


def test_json_round_trip_keeps_unknown_keys(tmp_path):
    c = ImageGPTConfig(n_embd=64, n_head=4, n_layer=2, num_labels=3, extra={"torch_dtype": "float32"})
    c.save_pretrained(tmp_path, architectures=["ImageGPTForImageClassification"])
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["model_type"] == "imagegpt" and d["torch_dtype"] == "float32" and d["id2label"]["2"] == "LABEL_2"
    back = ImageGPTConfig.from_pretrained(tmp_path)
    assert back.n_embd == 64 and back.num_labels == 3 and back.id2label[2] == "LABEL_2"


def test_reads_a_transformers_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.ImageGPTConfig(n_embd=48, n_head=6, n_layer=1, num_labels=5).save_pretrained(tmp_path)
    c = ImageGPTConfig.from_pretrained(tmp_path)
    assert (c.n_embd, c.n_head, c.n_layer, c.num_labels) == (48, 6, 1, 5)


@pytest.mark.parametrize("kw, message", [
    (dict(n_embd=100, n_head=8), "n_embd (100) must be divisible by n_head (8)"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(vocab_size=-3), "vocab_size must be a positive integer"),
    (dict(activation_function="swish"), "unknown activation_function 'swish'"),
    (dict(n_inner=0), "n_inner must be a positive integer"),
    (dict(layer_norm_epsilon=0), "layer_norm_epsilon must be positive"),
    (dict(attn_pdrop=1.5), "attn_pdrop must be in [0, 1)"),
])
def test_bad_config_is_named(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ImageGPTConfig(**kw)


def test_bad_config_file_names_the_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"n_embd": 10, "n_head": 3}))
    with pytest.raises(ConfigError, match=str(p).replace("\\", "\\\\") + r".*n_embd \(10\)"):
        ImageGPTConfig.from_pretrained(tmp_path)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config"):
        ImageGPTConfig.from_pretrained(tmp_path)
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        ImageGPTConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        ImageGPTConfig.from_pretrained(tmp_path / "missing")
