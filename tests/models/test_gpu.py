"""CUDA path: the same checkpoint in bf16 on the GPU agrees with fp32 on the CPU (skipped without CUDA).

Tolerance: bf16 keeps 8 mantissa bits (relative rounding 2^-9 per op), so the relative error of the whole
logit tensor is bounded at 3e-2 here; generation must run on the GPU and produce the requested length.
"""

from __future__ import annotations

import pytest
import torch

from internvl.checkpoint.loader import load_model
from internvl.generation import SamplingConfig, generate

pytestmark = pytest.mark.gpu


def test_bf16_cuda_matches_fp32_cpu(hf_checkpoint):
    _, _, path = hf_checkpoint
    cpu, _, _ = load_model(path)
    gpu, _, _ = load_model(path, dtype=torch.bfloat16, device="cuda")
    ids = torch.tensor([[11, 12] + [7] * 16 + [13, 14, 15]])
    pix = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = cpu(ids, pix).logits
        got = gpu(ids.cuda(), pix.cuda()).logits.float().cpu()
    assert ((got - want).norm() / want.norm()).item() < 3e-2
    out = generate(gpu, ids, pixel_values=pix, cfg=SamplingConfig(max_new_tokens=5))
    assert out.shape == (1, 5) and out.device.type == "cuda"
