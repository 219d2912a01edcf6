"""Tied LM heads as each layout's own code decides them (the -hf top-level vs text_config disagreement).

transformers 5 ties an `InternVLForConditionalGeneration` by its top-level `tie_word_embeddings` (default True)
and saves no `lm_head.weight` then, even when `text_config.tie_word_embeddings` is false; a saved head that
differs from the embeddings unties it again. The official remote code copies `llm_config`'s flag to the top.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from internvl.checkpoint.loader import load_model

pytestmark = pytest.mark.parity
IDS = torch.tensor([[11, 12] + [7] * 16 + list(range(20, 30))])


def _keys(path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def _logits(model, hf_like: bool = False):
    pix = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=IDS, pixel_values=pix).logits if hf_like else model(IDS, pix).logits


@pytest.mark.parametrize("family", ["qwen2", "gpt_oss"])
def test_top_level_tie_wins_over_text_config(tmp_path, family):
    """The issue's case: saved by transformers 5 with text_config tie false, top-level tie true (its default)."""
    pytest.importorskip("transformers")
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from hf_oracle import VISION, gpt_oss_text_config, randomize, text_config
    tc = gpt_oss_text_config() if family == "gpt_oss" else {**text_config(family), "tie_word_embeddings": False}
    hf = InternVLForConditionalGeneration(InternVLConfig(vision_config=VISION, text_config=tc, image_token_id=7)).eval()
    randomize(hf)
    hf.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["tie_word_embeddings"] is True and saved["text_config"]["tie_word_embeddings"] is False
    assert not any(k.endswith("lm_head.weight") for k in _keys(tmp_path))
    ours, _, _ = load_model(tmp_path)
    assert ours.config.llm.tie_word_embeddings and ours.language_model.lm_head is None
    torch.testing.assert_close(_logits(ours), _logits(hf, True), atol=1e-4, rtol=1e-4)
    reloaded = InternVLForConditionalGeneration.from_pretrained(tmp_path).eval()  # transformers reads it the same way
    torch.testing.assert_close(_logits(ours), _logits(reloaded, True), atol=1e-4, rtol=1e-4)


def test_a_saved_head_that_differs_unties_like_transformers(tmp_path):
    """Top-level tie true but the file has its own lm_head.weight: transformers keeps the head (no tie)."""
    pytest.importorskip("transformers")
    from transformers import InternVLForConditionalGeneration

    from hf_oracle import make_hf
    make_hf("qwen2").save_pretrained(tmp_path)  # untied: lm_head.weight saved
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    reloaded = InternVLForConditionalGeneration.from_pretrained(tmp_path).eval()
    ours, _, _ = load_model(tmp_path)
    assert not ours.config.llm.tie_word_embeddings
    torch.testing.assert_close(_logits(ours), _logits(reloaded, True), atol=1e-4, rtol=1e-4)


def test_no_head_and_only_text_config_tied_is_tied(tmp_path):
    """A transformers 4.x save decided by text_config (tie true) but top-level false and no lm_head.weight: the
    file can only mean tied (transformers 5 would leave a random head)."""
    pytest.importorskip("transformers")
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from hf_oracle import VISION, randomize, text_config
    hf = InternVLForConditionalGeneration(InternVLConfig(vision_config=VISION, text_config=text_config("qwen2"),
                                                         image_token_id=7)).eval()
    randomize(hf)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"], cfg["text_config"]["tie_word_embeddings"] = False, True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours, _, _ = load_model(tmp_path)
    assert ours.config.llm.tie_word_embeddings
    torch.testing.assert_close(_logits(ours), _logits(hf, True), atol=1e-4, rtol=1e-4)


def test_no_head_and_no_tie_anywhere_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from hf_oracle import make_hf
    from internvl.errors import CheckpointError
    make_hf("qwen2").save_pretrained(tmp_path)  # tie false at both levels
    state = load_file(tmp_path / "model.safetensors")
    del state[next(k for k in state if k.endswith("lm_head.weight"))]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing: language_model.lm_head.weight"):
        load_model(tmp_path)


def test_official_layout_follows_llm_config(tmp_path):
    """Official configs: llm_config's flag decides; a contradicting top-level key changes nothing."""
    from internvl.checkpoint.loader import build_model, save_checkpoint
    from internvl.presets import PRESETS
    model = build_model(PRESETS["tiny-random"].config.replace(
        llm=PRESETS["tiny-random"].config.llm.__class__(**{**PRESETS["tiny-random"].config.llm.__dict__,
                                                          "tie_word_embeddings": False})))
    model.to_empty(device="cpu")
    model.init_weights()
    model.language_model.rotary.reset_buffers()
    save_checkpoint(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours, _, _ = load_model(tmp_path)
    assert not ours.config.llm.tie_word_embeddings
    torch.testing.assert_close(ours.language_model.lm_head.weight, model.language_model.lm_head.weight)
