"""Logits, features and greedy tokens of our InternVL equal transformers' native InternVL (the oracle).

Tolerances (fp32, see docs/parity.md): atol = rtol = 1e-4. Both sides run the same math in the same
order; the slack only absorbs SDPA kernel choice and reduction-order differences.
"""

from __future__ import annotations

import pytest
import torch

from internvl.checkpoint.loader import load_model
from internvl.generation import SamplingConfig, generate
from internvl.models.projector import pixel_shuffle

pytestmark = pytest.mark.parity
TOL = dict(atol=1e-4, rtol=1e-4)
IMG = 7  # conftest.IMAGE_TOKEN_ID
PER_TILE = 16  # (64 / 8)^2 * 0.5^2


def prompt(tiles_per_image: list[int], length: int = 12, seed: int = 0) -> torch.Tensor:
    """Random text with one <img>-block of IMG tokens per image, like a rendered InternVL prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = []
    for tiles in tiles_per_image:
        ids += torch.randint(10, 160, (length,), generator=g).tolist() + [IMG] * (PER_TILE * tiles)
    ids += torch.randint(10, 160, (length,), generator=g).tolist()
    return torch.tensor([ids])


@pytest.fixture(scope="module")
def pair(hf_checkpoint):
    family, hf, path = hf_checkpoint
    ours, _, layout = load_model(path)
    assert layout == "hf"
    return family, hf, ours


@pytest.mark.parametrize("tiles", [[1], [5], [2, 3]], ids=["1tile", "5tiles", "2images"])
def test_logits_match_transformers(pair, tiles):
    _, hf, ours = pair
    ids = prompt(tiles)
    pix = torch.randn(sum(tiles), 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pix).logits
        got = ours(ids, pix).logits
    torch.testing.assert_close(got, want, **TOL)
    # the image really matters: other pixels, other logits
    with torch.no_grad():
        other = ours(ids, torch.zeros_like(pix)).logits
    assert (other - got).abs().max() > 1e-3


def test_left_padded_batch_matches_transformers(pair):
    _, hf, ours = pair
    a, b = prompt([1], 12, seed=2)[0], prompt([1], 4, seed=3)[0]
    pad = len(a) - len(b)
    ids = torch.stack([a, torch.cat([torch.zeros(pad, dtype=torch.long), b])])
    mask = torch.stack([torch.ones(len(a), dtype=torch.long), (torch.arange(len(a)) >= pad).long()])
    pix = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)  # what generate() passes for left padding
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pix, attention_mask=mask, position_ids=position_ids).logits
        got = ours(ids, pix, attention_mask=mask).logits
        alone = ours(b[None], pix[1:]).logits[0]
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], **TOL)
    torch.testing.assert_close(got[1, pad:], alone, **TOL)  # padding changes nothing


def test_greedy_tokens_match_transformers(pair):
    _, hf, ours = pair
    ids = prompt([2], seed=5)
    pix = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = hf.generate(input_ids=ids, pixel_values=pix, max_new_tokens=20, do_sample=False,
                           eos_token_id=None, pad_token_id=0, min_new_tokens=20)[:, ids.shape[1]:]
    got = generate(ours, ids, pixel_values=pix, cfg=SamplingConfig(max_new_tokens=20))
    assert got.shape == (1, 20)
    assert got.tolist() == want.tolist()


def test_vision_tower_and_projector_match(pair):
    _, hf, ours = pair
    pix = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want_vit = hf.model.vision_tower(pixel_values=pix).last_hidden_state
        got_vit = ours.vision_model(pix)
        torch.testing.assert_close(got_vit, want_vit, **TOL)
        want_feat = hf.model.get_image_features(pixel_values=pix).pooler_output
        torch.testing.assert_close(ours.extract_feature(pix), want_feat, **TOL)
        x = torch.randn(2, 16, 128)
        torch.testing.assert_close(ours.mlp1(x), hf.model.multi_modal_projector(x), **TOL)


def test_other_tile_size_interpolates_positions(pair):
    """Tiles larger than the trained size use bicubically interpolated position embeddings, like the oracle."""
    _, hf, ours = pair
    pix = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        want = hf.model.vision_tower(pixel_values=pix).last_hidden_state
        torch.testing.assert_close(ours.vision_model(pix), want, **TOL)


def test_pixel_shuffle_v2_equals_oracle_and_v1_is_its_transpose():
    pytest.importorskip("transformers")
    from transformers.models.internvl.modeling_internvl import InternVLModel
    x = torch.randn(2, 8, 8, 12)
    want = InternVLModel.pixel_shuffle(None, x, scale_factor=0.5)
    torch.testing.assert_close(pixel_shuffle(x, 0.5, "v2"), want, atol=0, rtol=0)
    torch.testing.assert_close(pixel_shuffle(x, 0.5, "v1"), want.transpose(1, 2), atol=0, rtol=0)


def test_select_layer_matches_vision_feature_layer(tmp_path):
    pytest.importorskip("transformers")
    from hf_oracle import make_hf
    hf = make_hf("qwen2", vision_feature_layer=-2)
    hf.save_pretrained(tmp_path)
    ours, _, _ = load_model(tmp_path)
    assert ours.config.select_layer == -2
    pix = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.extract_feature(pix),
                                   hf.model.get_image_features(pixel_values=pix).pooler_output, **TOL)


ROPE_VARIANTS = {
    "phi3-longrope": ("phi3", {"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
                               "long_factor": [2.0 + 0.3 * i for i in range(8)], "rope_theta": 10000.0,
                               "original_max_position_embeddings": 24}),
    "llama-llama3": ("llama", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                               "rope_theta": 500000.0}),
    "qwen2-linear": ("qwen2", {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
}


@pytest.mark.parametrize("variant", list(ROPE_VARIANTS))
def test_rope_scaling_variants_match_transformers(tmp_path, variant):
    """RoPE scaling the presets use (Phi-3-128k LongRoPE, LLaMA-3.x), short and past the original length."""
    pytest.importorskip("transformers")
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from hf_oracle import VISION, randomize, text_config
    family, rope = ROPE_VARIANTS[variant]
    tc = text_config(family)
    tc.update(rope_parameters=rope, max_position_embeddings=96)
    if family == "phi3":
        tc["original_max_position_embeddings"] = 24
    hf = InternVLForConditionalGeneration(InternVLConfig(vision_config=VISION, text_config=tc, image_token_id=IMG,
                                                         tie_word_embeddings=False)).eval()
    randomize(hf)
    hf.save_pretrained(tmp_path)
    ours, _, _ = load_model(tmp_path)
    pix = torch.randn(1, 3, 64, 64)
    for n in (4, 50):  # inside and beyond original_max_position_embeddings
        ids = torch.tensor([[11, 12] + [IMG] * PER_TILE + list(range(20, 20 + n))])
        with torch.no_grad():
            torch.testing.assert_close(ours(ids, pix).logits, hf(input_ids=ids, pixel_values=pix).logits, **TOL)


def test_image_token_count_mismatch_is_a_clear_error(pair):
    from internvl.errors import ImageTokenMismatchError
    _, _, ours = pair
    ids = prompt([2])
    with pytest.raises(ImageTokenMismatchError, match=r"32 <IMG_CONTEXT> tokens .* 16 image features"):
        ours(ids, torch.randn(1, 3, 64, 64))
    with pytest.raises(ImageTokenMismatchError, match="0 image features"):
        ours(ids)
