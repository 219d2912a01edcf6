"""GPT-OSS backbone (InternVL3.5-GPT-OSS-20B-A4B) against transformers' native GptOss inside its InternVL.

Tiny random config (4 layers: sliding window 32 / full alternating, 4 experts top-2, YaRN without truncation),
every weight random (sinks, biases and norms included). fp32 logits within 1e-4 for prompts shorter and much
longer than the window and a left-padded batch; 30 greedy tokens through the engine (ring KV cache for the
sliding layers) crossing the window equal transformers' generate.
"""

from __future__ import annotations

import pytest
import torch

from internvl.checkpoint.loader import load_model
from internvl.engine.engine import Engine
from internvl.engine.sampling import SamplingParams
from internvl.generation import SamplingConfig, generate

pytestmark = pytest.mark.parity
TOL = dict(atol=1e-4, rtol=1e-4)
IMG, PER_TILE, WINDOW = 7, 16, 32


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    pytest.importorskip("transformers")
    from hf_oracle import make_hf_gpt_oss
    hf = make_hf_gpt_oss(window=WINDOW)
    path = tmp_path_factory.mktemp("gpt_oss")
    hf.save_pretrained(path)
    ours, _, layout = load_model(path)
    assert layout == "hf" and ours.config.llm.is_gpt_oss and ours.config.template == "internvl3_5_gpt_oss"
    return hf, ours


def prompt(n_text: int, seed: int, tiles: int = 1) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [11, 12] + [IMG] * (PER_TILE * tiles) + torch.randint(10, 160, (n_text,), generator=g).tolist()


def test_sinks_and_biases_are_nonzero(pair):
    """The weights exercise every GPT-OSS-specific term (a zero sink or bias would hide a mapping bug)."""
    _, ours = pair
    layer = ours.language_model.layers[0]
    for t in (layer.self_attn.sinks, layer.self_attn.q_proj.bias, layer.self_attn.o_proj.bias, layer.mlp.router.bias,
              layer.mlp.experts.gate_up_proj_bias, layer.mlp.experts.down_proj_bias):
        assert t.abs().min() > 0
    assert [ours.config.llm.window(i) for i in range(4)] == [WINDOW, None, WINDOW, None]


@pytest.mark.parametrize("n_text", [6, 150], ids=["shorter-than-window", "5x-window"])
def test_logits_match_transformers(pair, n_text):
    hf, ours = pair
    ids = torch.tensor([prompt(n_text, seed=n_text)])
    pix = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pix).logits
        got = ours(ids, pix).logits
    torch.testing.assert_close(got, want, **TOL)


def test_left_padded_batch_matches_transformers(pair):
    hf, ours = pair
    a, b = torch.tensor(prompt(60, seed=2)), torch.tensor(prompt(9, seed=3))
    pad = len(a) - len(b)
    ids = torch.stack([a, torch.cat([torch.zeros(pad, dtype=torch.long), b])])
    mask = torch.stack([torch.ones(len(a), dtype=torch.long), (torch.arange(len(a)) >= pad).long()])
    pix = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pix, attention_mask=mask, position_ids=position_ids).logits
        got = ours(ids, pix, attention_mask=mask).logits
        alone = ours(b[None], pix[1:]).logits[0]
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], **TOL)
    torch.testing.assert_close(got[1, pad:], alone, **TOL)


def test_greedy_through_the_engine_crosses_the_window_like_transformers(pair):
    """A prompt shorter than the window, 30 greedy tokens past it: engine (ring cache), plain loop, transformers."""
    hf, ours = pair
    ids = prompt(6, seed=5)
    assert len(ids) < WINDOW < len(ids) + 30
    pix = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = hf.generate(input_ids=torch.tensor([ids]), pixel_values=pix, max_new_tokens=30, do_sample=False,
                           eos_token_id=None, pad_token_id=0, min_new_tokens=30)[0, len(ids):].tolist()
    (seq,) = Engine(ours, max_batch=2).generate([(ids, pix, SamplingParams(max_new_tokens=30))])
    assert seq.output_ids == want
    plain = generate(ours, torch.tensor([ids]), pixel_values=pix, cfg=SamplingConfig(max_new_tokens=30))
    assert plain[0].tolist() == want


def test_ragged_engine_batch_equals_each_request_alone(pair):
    """Requests of different lengths decoding together (ragged ring positions, one prompt longer than the
    window) give the tokens each gives alone."""
    _, ours = pair
    requests = [(prompt(50, seed=7), torch.randn(1, 3, 64, 64), 8), (prompt(3, seed=8), torch.randn(1, 3, 64, 64), 16),
                ([13, 14, 15], None, 12)]
    alone = [Engine(ours, max_batch=1).generate([(ids, pix, SamplingParams(max_new_tokens=n))])[0].output_ids
             for ids, pix, n in requests]
    together = Engine(ours, max_batch=3).generate([(ids, pix, SamplingParams(max_new_tokens=n))
                                                   for ids, pix, n in requests])
    assert [s.output_ids for s in together] == alone


def test_sliding_layers_keep_only_the_window(pair):
    """The engine's cache holds `window` positions for sliding layers however long the request; full layers grow."""
    _, ours = pair
    engine = Engine(ours, max_batch=2)
    cache = engine.cache
    ring_bytes = sum(t.numel() * t.element_size() for t in list(cache.ring_k.values()) + list(cache.ring_v.values()))
    assert sorted(cache.ring_k) == [0, 2] and all(t.shape[2] == WINDOW for t in cache.ring_k.values())
    engine.generate([(prompt(200, seed=9), torch.randn(1, 3, 64, 64), SamplingParams(max_new_tokens=5))])
    assert all(t.shape[2] == WINDOW for t in cache.ring_k.values())
    assert cache.k[0] is None and cache.k[1].shape[2] >= 223  # full layers hold the whole request
    assert cache.nbytes() == ring_bytes + 2 * 2 * cache.k[1].numel() * cache.k[1].element_size()


def test_yarn_inv_freq_equals_transformers():
    pytest.importorskip("transformers")
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from internvl.models.layers import RotaryEmbedding
    from internvl.presets import PRESETS
    for truncate in (False, True):
        llm = PRESETS["InternVL3_5-GPT-OSS-20B-A4B"].config.llm
        llm = llm.__class__(**{**llm.__dict__, "rope_scaling": {**llm.rope_scaling, "truncate": truncate}})
        params = {**llm.rope_scaling, "rope_theta": llm.rope_theta}
        hf_cfg = GptOssConfig(rope_parameters=params, head_dim=64, max_position_embeddings=131072)
        want, scaling = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg)
        rope = RotaryEmbedding(llm)
        torch.testing.assert_close(rope.inv_freq, want, atol=0, rtol=0)
        assert rope.attention_scaling == pytest.approx(scaling) and scaling == pytest.approx(1.3465735902799727)


def test_official_layout_round_trip(pair, tmp_path):
    """GPT-OSS in the official layout (language_model.model.layers.*, llm_config GptOssForCausalLM) and back."""
    import json

    from internvl.checkpoint.loader import save_checkpoint
    _, ours = pair
    save_checkpoint(ours, tmp_path / "official", "official")
    llm = json.loads((tmp_path / "official" / "config.json").read_text())["llm_config"]
    assert llm["architectures"] == ["GptOssForCausalLM"] and llm["num_local_experts"] == 4
    assert llm["layer_types"][:2] == ["sliding_attention", "full_attention"] and llm["sliding_window"] == WINDOW
    back, _, layout = load_model(tmp_path / "official")
    assert layout == "official" and back.config.llm == ours.config.llm
    save_checkpoint(back, tmp_path / "hf", "hf")
    again, _, _ = load_model(tmp_path / "hf")
    ids = torch.tensor([prompt(40, seed=11)])
    pix = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ours(ids, pix).logits
        assert torch.equal(back(ids, pix).logits, want) and torch.equal(again(ids, pix).logits, want)


def test_packed_training_rows_attend_per_sample(pair):
    """Packed SFT rows (`Segments`): each sample sees only itself, with its own sinks and window."""
    from internvl.models.layers import Segments
    _, ours = pair
    a, b = torch.randint(10, 160, (50,)), torch.randint(10, 160, (20,))
    lm = ours.language_model
    with torch.no_grad():
        packed = lm(lm.embed_tokens(torch.cat([a, b])[None]), torch.cat([torch.arange(50), torch.arange(20)])[None],
                    Segments(torch.cat([torch.zeros(50), torch.ones(20)]).long()[None]))
        alone = [lm(lm.embed_tokens(x[None]), torch.arange(len(x))[None]) for x in (a, b)]
    torch.testing.assert_close(packed[0], torch.cat([alone[0][0], alone[1][0]]), atol=1e-5, rtol=1e-5)
