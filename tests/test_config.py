"""Config dataclasses: official and -hf config.json round trips, unknown keys warn by name, bad values raise."""

from __future__ import annotations

import logging

import pytest

from internvl.config import InternVLConfig, LLMConfig, VisionConfig
from internvl.errors import ConfigError

# An official config.json in the shape transformers 4.37 wrote it (generic keys included), InternVL2-1B-like.
OFFICIAL = {
    "_commit_hash": None, "architectures": ["InternVLChatModel"], "auto_map": {"AutoConfig": "x"},
    "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": 448, "hidden_size": 896,
    "llm_config": {
        "_name_or_path": "Qwen/Qwen2-0.5B-Instruct", "add_cross_attention": False,
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
        "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 151655, "rope_scaling": None,
    },
    "max_dynamic_patch": 12, "min_dynamic_patch": 1, "model_type": "internvl_chat", "pad2square": False,
    "ps_version": "v2", "select_layer": -1, "template": "Hermes-2", "torch_dtype": "bfloat16",
    "use_backbone_lora": 0, "use_llm_lora": 0, "use_thumbnail": True,
    "vision_config": {
        "architectures": ["InternVisionModel"], "attention_dropout": 0.0, "drop_path_rate": 0.0, "dropout": 0.0,
        "hidden_act": "gelu", "hidden_size": 1024, "image_size": 448, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-06, "model_type": "intern_vit_6b",
        "norm_type": "layer_norm", "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 24,
        "patch_size": 14, "qk_normalization": False, "qkv_bias": True, "use_flash_attn": True,
    },
}


def test_official_config_reads_every_field_without_warnings(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = InternVLConfig.from_official(OFFICIAL)
    assert not caplog.records, [r.message for r in caplog.records]
    assert cfg.template == "Hermes-2" and cfg.ps_version == "v2" and cfg.num_image_token == 256
    assert cfg.vision.num_hidden_layers == 24 and cfg.vision.qkv_bias and not cfg.vision.qk_normalization
    llm = cfg.llm
    assert (llm.architecture, llm.vocab_size, llm.num_key_value_heads) == ("Qwen2ForCausalLM", 151655, 2)
    assert llm.attention_bias and not llm.attention_out_bias and llm.rope_theta == 1e6


def test_official_round_trip():
    cfg = InternVLConfig.from_official(OFFICIAL)
    assert InternVLConfig.from_official(cfg.to_official()) == cfg


def test_hf_round_trip_and_cross_layout():
    cfg = InternVLConfig.from_official(OFFICIAL).replace(image_token_id=151667)
    back = InternVLConfig.from_hf(cfg.to_hf(), template="Hermes-2", force_image_size=448)
    assert back == cfg


def test_missing_ps_version_means_v1():
    d = {k: v for k, v in OFFICIAL.items() if k != "ps_version"}
    assert InternVLConfig.from_official(d).ps_version == "v1"


def test_unknown_keys_warn_by_name(caplog):
    d = dict(OFFICIAL, brand_new_knob=3)
    d["llm_config"] = dict(OFFICIAL["llm_config"], mystery_flag=True)
    with caplog.at_level(logging.WARNING):
        InternVLConfig.from_official(d)
    text = " ".join(r.message for r in caplog.records)
    assert "brand_new_knob" in text and "mystery_flag" in text


@pytest.mark.parametrize("bad, match", [
    (dict(ps_version="v3"), "ps_version"),
    (dict(downsample_ratio=0.3), "downsample_ratio"),
    (dict(min_dynamic_patch=5, max_dynamic_patch=2), "min_dynamic_patch"),
    (dict(select_layer=-40), "select_layer"),
])
def test_bad_values_raise(bad, match):
    with pytest.raises(ConfigError, match=match):
        InternVLConfig(**bad)


def test_bad_sub_configs_raise():
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        LLMConfig(num_attention_heads=14, num_key_value_heads=4)
    with pytest.raises(ConfigError, match="unsupported LLM architecture"):
        LLMConfig(architecture="MambaForCausalLM")
    with pytest.raises(ConfigError, match="norm_type"):
        VisionConfig(norm_type="batch_norm")
    with pytest.raises(ConfigError, match="llm_config"):
        InternVLConfig.from_official({"vision_config": {}})


def test_v1_pixel_shuffle_cannot_be_written_as_hf():
    cfg = InternVLConfig(ps_version="v1", image_token_id=1)
    with pytest.raises(ConfigError, match="ps_version"):
        cfg.to_hf()


def test_system_message_is_read_and_written():
    cfg = InternVLConfig.from_official(dict(OFFICIAL, system_message="Be terse."))
    assert cfg.system_message == "Be terse."
    assert cfg.to_official()["system_message"] == "Be terse."
    assert "system_message" not in InternVLConfig.from_official(OFFICIAL).to_official()
