"""V2PE: golden positions for a multi-image prompt (the official `v2pe_fix` rule), stride 1 bit-identical to
ordinary positions, and the same positions through forward, the plain loop, the engine and training."""

from __future__ import annotations

import pytest
import torch

from internvl.checkpoint.loader import build_model
from internvl.config import InternVLConfig
from internvl.engine.engine import Engine
from internvl.engine.sampling import SamplingParams
from internvl.errors import ConfigError
from internvl.generation import SamplingConfig, generate
from internvl.models.v2pe import v2pe_positions
from internvl.presets import PRESETS

IMG = 261  # <IMG_CONTEXT> of the byte-level test tokenizer
PER_TILE = 16


def test_golden_positions_for_a_multi_image_prompt():
    # text a b | image of 4 tokens | text c | image of 6 tokens | text d e
    ids = torch.tensor([1, 2] + [IMG] * 4 + [3] + [IMG] * 6 + [4, 5])
    assert v2pe_positions(ids, IMG, 0.5).tolist() == [0, 1, 1.5, 2, 2.5, 3, 4, 4.5, 5, 5.5, 6, 6.5, 7, 8, 9]
    # a span that ends between integers: the next text token goes to ceil(last) + 1
    assert v2pe_positions(ids, IMG, 0.25).tolist() == [0, 1, 1.25, 1.5, 1.75, 2, 3, 3.25, 3.5, 3.75, 4, 4.25, 4.5,
                                                       6, 7]
    assert v2pe_positions(ids, IMG, 1 / 16)[-2:].tolist() == [5, 6]
    assert torch.equal(v2pe_positions(ids, IMG, 1.0), torch.arange(len(ids), dtype=torch.float32))
    assert v2pe_positions(torch.tensor([IMG, IMG, 9]), IMG, 0.5).tolist() == [-0.5, 0, 1]  # image first, as official


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(PRESETS["tiny-random"].config.replace(image_token_id=IMG))
    m.to_empty(device="cpu")
    m.init_weights(std=0.2)
    m.language_model.rotary.reset_buffers()
    return m.eval()


def with_stride(model, stride):
    model.config = model.config.replace(v2pe_stride=stride)
    return model


def prompt(seed: int = 0) -> tuple[list[int], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(0, 255, (n,), generator=g).tolist()  # noqa: E731
    ids = text(5) + [IMG] * (2 * PER_TILE) + text(3) + [IMG] * PER_TILE + text(4)
    return ids, torch.randn(3, 3, 112, 112, generator=g)


def test_stride_one_is_bit_identical(model):
    ids, pix = prompt()
    x = torch.tensor([ids])
    with torch.no_grad():
        plain = with_stride(model, None)(x, pix).logits
        one = with_stride(model, 1.0)(x, pix).logits
        half = with_stride(model, 0.5)(x, pix).logits
    with_stride(model, None)
    assert torch.equal(one, plain)
    assert (half - plain).abs().max() > 1e-3  # the positions really reach RoPE


def test_left_padding_and_explicit_positions_agree(model):
    with_stride(model, 0.5)
    ids, pix = prompt(1)
    x = torch.tensor([[0, 0, 0] + ids])
    mask = torch.tensor([[0, 0, 0] + [1] * len(ids)])
    try:
        with torch.no_grad():
            padded = model(x, pix, attention_mask=mask).logits[0, 3:]
            alone = model(torch.tensor([ids]), pix).logits[0]
            explicit = model(torch.tensor([ids]), pix,
                             position_ids=v2pe_positions(torch.tensor(ids), IMG, 0.5)[None]).logits[0]
    finally:
        with_stride(model, None)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(alone, explicit)


def test_greedy_engine_plain_loop_and_full_recompute_agree(model):
    """Decode steps continue at the last prompt position + 1: engine, plain loop and a full forward per step."""
    with_stride(model, 0.25)
    ids, pix = prompt(2)
    try:
        plain = generate(model, torch.tensor([ids]), pixel_values=pix, cfg=SamplingConfig(max_new_tokens=12))[0].tolist()
        (seq,) = Engine(model, max_batch=2).generate([(ids, pix, SamplingParams(max_new_tokens=12))])
        full = list(ids)
        with torch.no_grad():
            for _ in range(12):
                full.append(int(model(torch.tensor([full]), pix).logits[0, -1].argmax()))
    finally:
        with_stride(model, None)
    assert IMG not in plain  # a generated <IMG_CONTEXT> would count as an image in the full recompute
    assert seq.output_ids == plain == full[len(ids):]


def test_config_round_trip_and_checks():
    cfg = PRESETS["tiny-random"].config.replace(v2pe_stride=0.125)
    official = cfg.to_official()
    assert official["v2pe_stride"] == 0.125 and "v2pe_stride" not in PRESETS["tiny-random"].config.to_official()
    assert InternVLConfig.from_official(official).v2pe_stride == 0.125
    with pytest.raises(ConfigError, match="-hf layout has no V2PE"):
        cfg.replace(image_token_id=IMG).to_hf()
    for bad in (0, -1, 2):
        with pytest.raises(ConfigError, match="v2pe_stride must be in"):
            cfg.replace(v2pe_stride=bad)
