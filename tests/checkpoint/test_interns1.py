"""Intern-S1 / Intern-S1-mini: the `interns1` layout (`model.vision_tower.*`, `model.multi_modal_projector.*`,
`model.language_model.*` with a Qwen3 or Qwen3-MoE text config, `lm_head.weight`) written by this test from
transformers' InternVL -hf modules (the same modules), loaded by us: equal logits. Plus its base tokenizer."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from safetensors.torch import save_file

from internvl.checkpoint.loader import INTERNS1, load_model

pytestmark = pytest.mark.parity


def save_interns1(hf, directory) -> None:
    """What an Intern-S1 hub checkpoint holds: the HF module names, Qwen3-MoE experts one by one, and the
    remote-code config (model_type interns1 / interns1_vision, a transformers-4.x top-level tie default)."""
    state = {}
    for name, t in hf.state_dict().items():
        m = re.fullmatch(r"(model\.language_model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)", name)
        if m is None:
            state[name] = t.contiguous()
            continue
        for e, w in enumerate(t):  # transformers 5 keeps experts fused in memory; the hub files do not
            if m.group(2) == "down_proj":
                state[f"{m.group(1)}.{e}.down_proj.weight"] = w.contiguous()
            else:
                gate, up = w.chunk(2, dim=0)
                state[f"{m.group(1)}.{e}.gate_proj.weight"] = gate.contiguous()
                state[f"{m.group(1)}.{e}.up_proj.weight"] = up.contiguous()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    cfg = hf.config.to_dict()
    cfg.update(model_type="interns1", architectures=["InternS1ForConditionalGeneration"], tie_word_embeddings=True,
               auto_map={"AutoConfig": "configuration_interns1.InternS1Config"})
    cfg["vision_config"]["model_type"] = "interns1_vision"
    text = cfg["text_config"]
    text["architectures"] = [{"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}[text["model_type"]]]
    (directory / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_interns1_layout_loads_with_transformers_logits(tmp_path, family):
    pytest.importorskip("transformers")
    from hf_oracle import make_hf
    hf = make_hf(family)
    save_interns1(hf, tmp_path)
    ours, _, layout = load_model(tmp_path)
    assert layout == INTERNS1 and ours.config.template == "interns1"
    assert ours.config.llm.architecture == {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}[family]
    assert not ours.config.llm.tie_word_embeddings  # its own lm_head.weight, unlike the embeddings
    ids = torch.tensor([[11, 12] + [7] * 32 + list(range(20, 30))])
    pix = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, pix).logits, hf(input_ids=ids, pixel_values=pix).logits,
                                   atol=1e-4, rtol=1e-4)


def test_interns1_is_read_not_written(tmp_path):
    from internvl.checkpoint.loader import build_model, save_checkpoint
    from internvl.errors import ConfigError
    from internvl.presets import PRESETS
    with pytest.raises(ConfigError, match="Intern-S1 checkpoints are read, not written"):
        save_checkpoint(build_model(PRESETS["tiny-random"].config), tmp_path / "x", layout=INTERNS1)


def test_base_tokenizer_without_the_scientific_sub_tokenizers(tmp_path, caplog):
    """Intern-S1's tokenizer directory: Qwen2 BPE files + added tokens + SentencePiece models for SMILES / IUPAC /
    FASTA. The base BPE loads, image tokens stay whole, and the unused sub-tokenizers are named in a warning."""
    from tokenizers import pre_tokenizers

    from internvl.processing.tokenizer import Tokenizer
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["Ġt"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\n")
    added = {str(300 + i): {"content": t, "special": True} for i, t in
             enumerate(["<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<SMILES>", "</SMILES>"])}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added, "eos_token": "<|im_end|>",
                                                                "tokenizer_class": "InternS1Tokenizer"}))
    for name in ("tokenizer_SMILES.model", "tokenizer_FASTA.model"):
        (tmp_path / name).write_bytes(b"\x00")
    with caplog.at_level(logging.WARNING):
        tok = Tokenizer.from_pretrained(tmp_path)
    assert "tokenizer_SMILES.model, tokenizer_FASTA.model not used" in caplog.text
    ids = tok("<SMILES>CCO</SMILES> t<IMG_CONTEXT><IMG_CONTEXT>", return_tensors=None)["input_ids"]
    assert ids[0] == 304 and ids[-2:] == [303, 303] and vocab["Ġt"] in ids
    assert tok.decode(ids) == "<SMILES>CCO</SMILES> t<IMG_CONTEXT><IMG_CONTEXT>"
