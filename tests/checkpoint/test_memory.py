"""Loading builds the model on the meta device and assigns tensors as they are read: no second full copy."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from internvl.checkpoint.loader import load_model
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model, _, _ = load_model(sys.argv[1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print((after - before) * 1024 / size)
""")


@pytest.mark.slow
def test_peak_memory_of_loading_stays_near_one_model(tmp_path):
    import torch

    from internvl.checkpoint.loader import save_checkpoint
    from internvl.config import InternVLConfig, LLMConfig, VisionConfig
    from internvl.models.internvl import InternVL
    cfg = InternVLConfig(vision=VisionConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=512, image_size=112),
                         llm=LLMConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                                       num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2))
    model = InternVL(cfg)  # ~ 0.6 GB of fp32 weights
    save_checkpoint(model, tmp_path / "m", "official", max_shard_bytes=200 * 2**20)
    del model
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "m")], capture_output=True, text=True,
                         check=True)
    ratio = float(out.stdout.strip().splitlines()[-1])
    # one model's worth of weights plus one tensor in flight; two full copies would be >= 2.0
    assert ratio < 1.5, ratio
