"""GPT-OSS experts stored as MXFP4 blocks + scales: dequantized on load exactly as transformers' own
dequantizer does, and a checkpoint holding them gives transformers' logits for the dequantized weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from internvl.checkpoint.loader import load_model
from internvl.checkpoint.transforms import mxfp4_dequantize

pytestmark = pytest.mark.parity


def random_packed(e: int, rows: int, cols: int, seed: int, scale_range=(0, 256)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random MXFP4 for an (e, rows, cols) dense tensor: blocks (e, rows, cols/32, 16), scales (e, rows, cols/32)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (e, rows, cols // 32, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(*scale_range, (e, rows, cols // 32), dtype=torch.uint8, generator=g)
    return blocks, scales


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dequantize_equals_transformers(dtype):
    pytest.importorskip("transformers")
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    for seed, scale_range in enumerate([(0, 256), (117, 137)]):  # the whole E8M0 range, then typical scales
        blocks, scales = random_packed(3, 40, 96, seed, scale_range)
        want = convert_moe_packed_tensors(blocks.clone(), scales.clone(), dtype=dtype)
        got = mxfp4_dequantize(blocks, scales, dtype)
        assert got.shape == want.shape == (3, 96, 40)
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


def test_bad_pairing_is_a_clear_error():
    blocks, scales = random_packed(2, 4, 64, 0)
    with pytest.raises(ValueError, match="do not pair up"):
        mxfp4_dequantize(blocks, scales[:, :, :1])


def test_checkpoint_with_mxfp4_experts_loads(tmp_path):
    """Replace the dense experts of a saved -hf GPT-OSS checkpoint by MXFP4; we dequantize on load and give
    the logits transformers gives with the dequantized experts."""
    pytest.importorskip("transformers")
    from hf_oracle import make_hf_gpt_oss
    hf = make_hf_gpt_oss(window=8)
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for i in range(hf.config.text_config.num_hidden_layers):
        experts = f"language_model.model.layers.{i}.mlp.experts."
        for j, proj in enumerate(("gate_up_proj", "down_proj")):
            dense = state.pop(experts + proj)  # (E, in, out): the packed rows are the outputs
            blocks, scales = random_packed(dense.shape[0], dense.shape[2], dense.shape[1], 10 * i + j, (120, 130))
            state[experts + proj + "_blocks"], state[experts + proj + "_scales"] = blocks, scales
            hf_experts = hf.model.language_model.layers[i].mlp.experts
            with torch.no_grad():
                getattr(hf_experts, proj).copy_(mxfp4_dequantize(blocks, scales).float())
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours, _, _ = load_model(tmp_path)
    got_experts = ours.language_model.layers[1].mlp.experts
    assert got_experts.gate_up_proj.dtype == torch.float32  # the checkpoint's dtype, not bf16
    torch.testing.assert_close(got_experts.down_proj, hf.model.language_model.layers[1].mlp.experts.down_proj,
                               atol=0, rtol=0)
    ids = torch.tensor([[11, 12] + [7] * 16 + list(range(20, 40))])
    pix = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, pix).logits, hf(input_ids=ids, pixel_values=pix).logits,
                                   atol=1e-4, rtol=1e-4)
