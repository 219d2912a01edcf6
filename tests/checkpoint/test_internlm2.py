"""InternLM2 backbones (InternVL2-2B/8B/26B, InternVL2.5-8B/26B, InternVL-Chat-V1-5) are not in transformers.

The oracle is transformers' LLaMA: InternLM2 is LLaMA with renamed tensors and q/k/v packed per KV group
into `wqkv`. The test packs a random LLaMA-backed InternVL into the official InternLM2 layout with its own
code (rows per KV head: the group's query heads, then its key head, then its value head), loads it with
ours, and compares logits with the LLaMA original, also with dynamic-NTK RoPE past the trained length.
"""

from __future__ import annotations

import json

import pytest
import torch

from internvl.checkpoint.loader import load_model, save_checkpoint
from internvl.checkpoint.safetensors_io import TensorReader
from safetensors.torch import save_file

pytestmark = pytest.mark.parity
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16

RENAMES = {
    "model.embed_tokens.weight": "model.tok_embeddings.weight", "lm_head.weight": "output.weight",
    "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm", "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3", "mlp.down_proj": "feed_forward.w2",
}


def pack_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kv_heads: int, dim: int
              ) -> torch.Tensor:
    g = heads // kv_heads
    rows = []
    for h in range(kv_heads):
        rows += [q[(h * g + j) * dim:(h * g + j + 1) * dim] for j in range(g)]
        rows += [k[h * dim:(h + 1) * dim], v[h * dim:(h + 1) * dim]]
    return torch.cat(rows)


def to_internlm2(official_dir, out_dir, heads: int = HEADS, kv_heads: int = KV_HEADS, dim: int = HEAD_DIM) -> None:
    """Rewrite an official LLaMA-backed checkpoint as the InternLM2-backed checkpoint it is equivalent to."""
    r = TensorReader(official_dir)
    ts = {k: r.get(k) for k in r.keys()}
    out = {}
    for key, t in ts.items():
        if ".self_attn.q_proj." in key:
            base = key.replace(".self_attn.q_proj.", ".attention.wqkv.")
            out[base] = pack_wqkv(t, ts[key.replace("q_proj", "k_proj")], ts[key.replace("q_proj", "v_proj")],
                                  heads, kv_heads, dim)
            continue
        if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        for old, new in RENAMES.items():
            key = key.replace(old, new)
        out[key] = t
    out_dir.mkdir()
    save_file(out, str(out_dir / "model.safetensors"))
    cfg = json.loads((official_dir / "config.json").read_text())
    llm = cfg["llm_config"]
    llm.update(architectures=["InternLM2ForCausalLM"], model_type="internlm2", bias=False)
    for k in ("attention_bias", "mlp_bias"):
        llm.pop(k, None)
    (out_dir / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("rope", [None, {"rope_type": "dynamic", "factor": 2.0}], ids=["default", "dynamic"])
def test_internlm2_matches_llama_oracle(tmp_path, rope):
    pytest.importorskip("transformers")
    from hf_oracle import make_hf
    hf = make_hf("llama")
    if rope:
        from transformers import InternVLConfig, InternVLForConditionalGeneration
        d = hf.config.to_dict()
        d["text_config"].update(max_position_embeddings=32, rope_parameters={**rope, "rope_theta": 500000.0})
        state = hf.state_dict()
        hf = InternVLForConditionalGeneration(InternVLConfig(**d)).eval()
        hf.load_state_dict(state)
    hf.save_pretrained(tmp_path / "hf")
    ours, _, _ = load_model(tmp_path / "hf")
    save_checkpoint(ours, tmp_path / "official", "official")
    to_internlm2(tmp_path / "official", tmp_path / "internlm2")
    model, _, layout = load_model(tmp_path / "internlm2")
    assert model.config.llm.architecture == "InternLM2ForCausalLM" and layout == "official"
    ids = torch.tensor([[11, 12] + [7] * 16 + list(range(20, 60))])  # 58 tokens: past 32 for dynamic NTK
    pix = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pix).logits
        torch.testing.assert_close(model(ids, pix).logits, want, atol=1e-4, rtol=1e-4)
    # and writing it back gives the packed InternLM2 tensors bit for bit
    save_checkpoint(model, tmp_path / "again", "official")
    a, b = TensorReader(tmp_path / "internlm2"), TensorReader(tmp_path / "again")
    assert sorted(a.keys()) == sorted(b.keys())
    assert all(torch.equal(a.get(k), b.get(k)) for k in a.keys())
