"""Every preset builds (on the meta device) to exactly its recorded parameter count, and at real width with
truncated depth gives the oracle's logits.

Real-width check: 1 vision layer and 1-2 LLM layers with every real hidden width, head count, head_dim,
KV-head count, RoPE setting, norm, bias flag, qk-norm and pixel-shuffle version. Where that truncated model
would exceed BUDGET parameters (CI time and memory), the vocabulary is cut to 4096 rows, the MLP widths to
1024 and MoE layers to 8 experts of width 256 (top-k stays real): those sizes only scale matrices whose
shapes the exact parameter-count test already pins, while the attention geometry the oracle must agree on
stays real. Presets whose truncated configs coincide are compared once.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from internvl.checkpoint.loader import build_model, load_model
from internvl.config import HF_MODEL_TYPES, InternVLConfig
from internvl.errors import UnknownPresetError
from internvl.presets import PRESETS, get_preset

OFFICIAL = [n for n in PRESETS if not n.startswith("tiny")]
BUILDABLE = list(PRESETS)
BUDGET = 150_000_000  # parameters per copy of the truncated model


def test_unknown_preset_lists_known_names():
    with pytest.raises(UnknownPresetError, match="tiny-random"):
        get_preset("InternVL9-1T")


@pytest.mark.parametrize("name", BUILDABLE)
def test_parameter_count(name):
    model = build_model(PRESETS[name].config)
    assert sum(p.numel() for p in model.parameters()) == PRESETS[name].params


@pytest.mark.parametrize("name", [n for n in OFFICIAL if PRESETS[n].published])  # Flash cards state no size
def test_published_size_agrees(name):
    """The recorded exact count rounds to the size the model card publishes (e.g. '938M', '8.08B')."""
    preset = PRESETS[name]
    m = re.fullmatch(r"([\d.]+)([MB])", preset.published)
    assert m, f"{name}: published size {preset.published!r}"
    value = float(m.group(1)) * (1e6 if m.group(2) == "M" else 1e9)
    digits = len(m.group(1).replace(".", "").lstrip("0"))
    assert abs(preset.params - value) <= 0.5 * 10 ** (len(str(int(value))) - digits) * 1.01, preset.params


def truncated(cfg: InternVLConfig) -> InternVLConfig:
    llm = dataclasses.replace(cfg.llm, num_hidden_layers=2 if cfg.llm.num_experts == 0 else 1)
    vision = dataclasses.replace(cfg.vision, num_hidden_layers=1)
    out = cfg.replace(vision=vision, llm=llm, select_layer=-1 if cfg.select_layer == -1 else 0)
    if sum(p.numel() for p in build_model(out).parameters()) > BUDGET:
        llm = dataclasses.replace(llm, num_hidden_layers=1, vocab_size=4096, intermediate_size=1024,
                                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
        if llm.num_experts:
            llm = dataclasses.replace(llm, num_experts=8, moe_intermediate_size=256)
        out = out.replace(llm=llm, vision=dataclasses.replace(vision, intermediate_size=1024))
    return out


# one oracle comparison per distinct truncated config
CASES: dict[str, tuple[InternVLConfig, list[str]]] = {}
for _name in OFFICIAL:
    if _name in BUILDABLE and not PRESETS[_name].config.has_vir:  # Flash: the base preset's LLM and ViT, no -hf form
        _cfg = truncated(PRESETS[_name].config)
        CASES.setdefault(repr(_cfg), (_cfg, []))[1].append(_name)


def oracle_config(cfg: InternVLConfig) -> dict:
    """The transformers config for our config; InternLM2 runs as the LLaMA it is equivalent to."""
    d = cfg.replace(image_token_id=5).to_hf() if cfg.llm.architecture in HF_MODEL_TYPES else None
    if d is None:  # InternLM2
        llm = dataclasses.replace(cfg.llm, architecture="LlamaForCausalLM")
        d = cfg.replace(llm=llm, image_token_id=5).to_hf()
    return d


@pytest.mark.parity
@pytest.mark.parametrize("cfg", [c for c, _ in CASES.values()], ids=["+".join(n) for _, n in CASES.values()])
def test_real_width_truncated_depth_matches_oracle(cfg, tmp_path):
    pytest.importorskip("transformers")
    from transformers import InternVLConfig as HFConfig
    from transformers import InternVLForConditionalGeneration

    from hf_oracle import randomize
    if cfg.ps_version == "v1":
        pytest.skip("ps_version v1 has no -hf form; v1 is checked against v2 in test_internvl_parity")
    d = oracle_config(cfg)
    d.pop("architectures"), d.pop("model_type")
    hf = InternVLForConditionalGeneration(HFConfig(**d)).eval()
    randomize(hf, std=0.02)
    hf.save_pretrained(tmp_path / "hf")
    del hf
    ours, _, _ = load_model(tmp_path / "hf")
    if cfg.llm.architecture == "InternLM2ForCausalLM":
        from checkpoint.test_internlm2 import to_internlm2  # the test's own packing, not ours
        from internvl.checkpoint.loader import save_checkpoint
        save_checkpoint(ours, tmp_path / "official", "official")
        to_internlm2(tmp_path / "official", tmp_path / "internlm2", cfg.llm.num_attention_heads,
                     cfg.llm.num_key_value_heads, cfg.llm.dim_per_head)
        ours, _, _ = load_model(tmp_path / "internlm2")
        assert ours.config.llm.architecture == "InternLM2ForCausalLM"
    hf = InternVLForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    n = cfg.num_image_token
    ids = torch.tensor([[11, 12] + [5] * n + [13, 14, 15, 16]])
    pix = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pix).logits
        got = ours(ids, pix).logits
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
