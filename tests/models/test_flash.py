"""InternVL3.5-Flash (ViR) against a reference re-typed here from the documented official computation
(`docs`: internvl35.md section 1.3, the remote code's `extract_feature_flash`, `generate_flash` and
`compress_visual_tokens_in_sentence`), on random weights in fp32.

The reference is written from the formulas, not from our modules: multi-head attention from the
`in_proj` / `out_proj` tensors, the pooling quirk (attn1/norm1 once, then attn2/norm2 three times), the gating
blocks, both projectors, the official pixel shuffle, the quantile + absolute-threshold decision, and the
official token deletion (runs of `<IMG_CONTEXT>` cut into blocks, each compressed block keeping its first
quarter) followed by a forward with dense positions. Router probabilities, per-tile decisions, the kept
tokens and the logits after compression must equal ours to 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from internvl.checkpoint.loader import load_model, save_checkpoint
from internvl.config import InternVLConfig, VisionConfig
from internvl.engine.engine import Engine
from internvl.engine.sampling import SamplingParams
from internvl.errors import ConfigError, ImageTokenMismatchError
from internvl.models.flash import compress_prompt, route
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS

CTX, IMG_START, IMG_END = 5, 6, 7
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def one_thread():
    """fp32 at 1e-5 compares two orders of the same sums: with several threads oneDNN splits the reductions of
    a batch of 7 tiles differently from a batch of 1, which moves the router's probabilities by ~5e-5."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# 8x8 patch grid (16 tokens per tile, 4 compressed) and 12x12 (36 and 9, the tiny model with patch 8)
GRIDS = {"grid8": dict(image_size=112, patch_size=14), "grid12": dict(image_size=96, patch_size=8)}


def flash_model(grid: str = "grid8", relative: float = 0.25, absolute: float = 0.0, seed: int = 0,
                ps_version: str = "v2") -> InternVL:
    base = PRESETS["tiny-random"].config
    vision = VisionConfig(**{**{k: getattr(base.vision, k) for k in ("hidden_size", "num_hidden_layers",
                                                                      "num_attention_heads", "intermediate_size")},
                             **GRIDS[grid]})
    cfg = base.replace(vision=vision, image_token_id=CTX, flash_mode=True, flash_relative_threshold=relative,
                       flash_absolute_threshold=absolute, ps_version=ps_version)
    torch.manual_seed(seed)
    model = InternVL(cfg)
    model.init_weights(std=0.3)
    return model.eval()


def tiles(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the reference, re-typed from the docs

def ref_pixel_shuffle(x: torch.Tensor, scale: float) -> torch.Tensor:
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3)
    x = x.reshape(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3)  # ps_version v2


def ref_mha(query, kv, p: dict, prefix: str, heads: int = 16) -> torch.Tensor:
    d = query.shape[-1]
    hd = d // heads
    wq, wk, wv = p[prefix + "in_proj_weight"].split(d)
    bq, bk, bv = p[prefix + "in_proj_bias"].split(d)
    q, k, v = query @ wq.T + bq, kv @ wk.T + bk, kv @ wv.T + bv
    b = q.shape[0]
    q, k, v = (t.reshape(b, -1, heads, hd).transpose(1, 2) for t in (q, k, v))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (att @ v).transpose(1, 2).reshape(b, -1, d)
    return out @ p[prefix + "out_proj.weight"].T + p[prefix + "out_proj.bias"]


def ref_ln(x, p: dict, prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], p[prefix + "weight"], p[prefix + "bias"], eps=1e-5)


def ref_linear(x, p: dict, prefix: str) -> torch.Tensor:
    return x @ p[prefix + "weight"].T + p[prefix + "bias"]


def ref_router_probs(vit_tokens: torch.Tensor, p: dict) -> torch.Tensor:
    """(T, L, V) ViT tokens -> (T, 2): pooling (with the attn2 reuse) then gating, softmax."""
    q = p["pooling_before_gating.query_token"][None].expand(vit_tokens.shape[0], -1, -1)
    out = ref_ln(ref_mha(q, vit_tokens, p, "pooling_before_gating.attn1."), p, "pooling_before_gating.norm1.")
    for _ in range(3):
        out = ref_ln(ref_mha(out, vit_tokens, p, "pooling_before_gating.attn2."), p, "pooling_before_gating.norm2.")
    x = out[:, 0]
    for i in range(1, 5):
        b = f"gating.block{i}."
        h = ref_linear(F.gelu(ref_linear(x, p, b + "0.")), p, b + "3.")
        x = x + ref_ln(h, p, b + "5.")
    logits = ref_linear(ref_ln(x, p, "gating.gate.0."), p, "gating.gate.1.")
    return torch.softmax(logits, dim=-1)


def ref_features(vit_tokens: torch.Tensor, p: dict, ratio: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, L, V) -> the 256-token branch (mlp1) and the 64-token branch (mlp2) as the official code runs them."""
    t, n, c = vit_tokens.shape
    side = int(n ** 0.5)
    grid = vit_tokens.reshape(t, side, side, c)
    x = ref_pixel_shuffle(grid, ratio)
    x = x.reshape(t, -1, x.shape[-1])
    full = ref_linear(F.gelu(ref_linear(ref_ln(x, p, "mlp1.0."), p, "mlp1.1.")), p, "mlp1.3.")
    y = ref_pixel_shuffle(grid, ratio ** 2)
    y = y.reshape(t, -1, y.shape[-1])
    y = F.gelu(ref_linear(ref_ln(y, p, "mlp2.0."), p, "mlp2.1."))
    y = F.gelu(ref_linear(y, p, "mlp2.4."))
    small = ref_linear(y, p, "mlp2.7.")
    return full, small


def ref_compress(embeds: torch.Tensor, ids: torch.Tensor, flags: list[bool], per_tile: int):
    """The official deletion: find the <IMG_CONTEXT> runs, cut each into blocks of `per_tile`, and drop
    slots [start + per_tile/4, start + per_tile) of every compressed block."""
    selected = (ids == CTX).int()
    diff = torch.diff(torch.cat([torch.tensor([0]), selected, torch.tensor([0])]))
    starts, ends = (diff == 1).nonzero()[:, 0].tolist(), (diff == -1).nonzero()[:, 0].tolist()
    keep = torch.ones(len(ids), dtype=torch.bool)
    k = 0
    for s, e in zip(starts, ends):
        assert (e - s) % per_tile == 0
        for b in range((e - s) // per_tile):
            if flags[k]:
                keep[s + b * per_tile + per_tile // 4: s + (b + 1) * per_tile] = False
            k += 1
    return embeds[keep], ids[keep]


def reference(model: InternVL, ids: list[int], pixel_values: torch.Tensor):
    """-> (probs, decisions, kept ids, logits) of the documented official generate_flash prefill."""
    p = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = model.config
    with torch.no_grad():
        vit = model.vision_model(pixel_values)[:, 1:]  # the ViT itself is checked against transformers elsewhere
        probs = ref_router_probs(vit, p)
        full, small = ref_features(vit, p, cfg.downsample_ratio)
        rel = torch.quantile(probs[:, 0].float(), cfg.flash_relative_threshold)
        flags = ((probs[:, 0] > rel) & (probs[:, 0] >= cfg.flash_absolute_threshold)).tolist()
        vit_embeds = torch.cat([small[i] if f else full[i] for i, f in enumerate(flags)])
        ids_t = torch.tensor(ids)
        embeds, kept = ref_compress(model.language_model.embed_tokens(ids_t), ids_t, flags, cfg.num_image_token)
        embeds = embeds.clone()
        embeds[kept == CTX] = vit_embeds
        positions = torch.arange(len(kept))[None]  # a fresh all-ones attention mask: dense positions
        logits = model.language_model.logits(model.language_model(embeds[None], positions))
    return probs, flags, kept.tolist(), logits[0]


def prompt(per_tile: int, *images: int) -> list[int]:
    ids = [1, 2]
    for i, n in enumerate(images):
        ids += [IMG_START] + [CTX] * (per_tile * n) + [IMG_END, 20 + i]
    return ids + [30, 31, 32]


# ---------------------------------------------------------------- parity

@pytest.mark.parity
@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("relative,absolute", [(0.25, 0.0), (0.0, 0.0), (0.5, 0.3), (0.1, 0.9)])
def test_flash_prefill_matches_official_computation(grid, relative, absolute):
    model = flash_model(grid, relative, absolute)
    n = model.num_image_token
    pv = tiles(7, model.config.image_size, seed=1)
    ids = prompt(n, 3, 4)  # two images: 3 + 4 tiles, routed together as one request
    want_probs, want_flags, want_ids, want_logits = reference(model, ids, pv)

    with torch.no_grad():
        feats = model.encode_images(pv)
        got_ids = compress_prompt(ids, feats.compressed.tolist(), CTX, n)
        got_logits = model(torch.tensor([got_ids]), image_features=feats.tokens).logits[0]
    torch.testing.assert_close(feats.probs, want_probs, **TOL)
    assert feats.compressed.tolist() == want_flags
    assert got_ids == want_ids
    assert feats.tokens.shape[0] == sum(n // 4 if f else n for f in want_flags)
    torch.testing.assert_close(got_logits, want_logits, **TOL)
    if (relative, absolute) == (0.25, 0.0):
        assert 0 < sum(want_flags) < len(want_flags), "the case meant to mix both branches routes all one way"


@pytest.mark.parity
def test_engine_greedy_equals_reference_decode():
    """Prefill and decode through the engine = greedy decoding over the reference's compressed prompt."""
    model = flash_model()
    n = model.num_image_token
    pv = tiles(5, model.config.image_size, seed=2)
    ids = prompt(n, 5)
    _, flags, kept, _ = reference(model, ids, pv)
    assert any(flags) and not all(flags)
    p = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.no_grad():
        vit = model.vision_model(pv)[:, 1:]
        full, small = ref_features(vit, p)
        embeds = model.language_model.embed_tokens(torch.tensor(kept)).clone()
        embeds[torch.tensor(kept) == CTX] = torch.cat([small[i] if f else full[i] for i, f in enumerate(flags)])
        want = []
        for _ in range(8):
            hidden = model.language_model(embeds[None], torch.arange(embeds.shape[0])[None])
            tok = int(model.language_model.logits(hidden[0, -1]).argmax())
            want.append(tok)
            embeds = torch.cat([embeds, model.language_model.embed_tokens(torch.tensor([tok]))])
    seq = Engine(model, max_batch=2).generate([(ids, pv, SamplingParams(max_new_tokens=8))])[0]
    assert seq.output_ids == want
    assert seq.prompt_ids == kept and seq.image_tokens == sum(n // 4 if f else n for f in flags)
    assert seq.compressed_tiles == sum(flags)


def test_pooling_quirk_attn3_attn4_unused():
    """attn3, attn4, norm3 and norm4 are loaded but never run; attn2 runs (three times)."""
    model = flash_model()
    pv = tiles(3, model.config.image_size, seed=3)
    with torch.no_grad():
        before = model.encode_images(pv).probs
        for name in ("attn3", "attn4", "norm3", "norm4"):
            for t in getattr(model.pooling_before_gating, name).parameters():
                t.add_(1.0)
        assert torch.equal(model.encode_images(pv).probs, before)
        w = model.pooling_before_gating.attn2.out_proj.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
        assert not torch.allclose(model.encode_images(pv).probs, before)


# ---------------------------------------------------------------- routing rules

def test_single_tile_never_compressed():
    """A one-tile request is never compressed, whatever its score: the decision is a strict `>` against a
    quantile of the request's own tiles."""
    model = flash_model(relative=0.0, absolute=0.0)
    for seed in range(6):
        feats = model.encode_images(tiles(1, model.config.image_size, seed))
        assert feats.compressed.tolist() == [False]
        assert feats.tokens.shape[0] == model.num_image_token
    for p in (0.0, 0.5, 1.0):
        assert route(torch.tensor([p]), 0.0, 0.0).tolist() == [False]
    # and through the engine, in a batch beside a multi-tile request that is compressed
    pv1, pv5 = tiles(1, 112, 4), tiles(5, 112, 5)
    n = model.num_image_token
    seqs = Engine(model, max_batch=4).generate([(prompt(n, 1), pv1, SamplingParams(max_new_tokens=2)),
                                                (prompt(n, 5), pv5, SamplingParams(max_new_tokens=2))])
    assert seqs[0].compressed_tiles == 0 and seqs[0].image_tokens == n
    assert seqs[1].compressed_tiles == 4  # all but the lowest-scored tile


def test_route_lowest_quantile_keeps_full_tokens():
    probs = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.95])
    assert route(probs, 0.0, 0.0).tolist() == [True, False, True, True, True]
    assert route(probs, 0.5, 0.0).tolist() == [True, False, False, False, True]
    assert route(probs, 0.0, 0.85).tolist() == [True, False, False, False, True]


def test_batch_with_different_routings_equals_requests_alone():
    """Requests whose tiles route differently (none, some, all but one compressed) batched together in
    the engine, with continuous batching (more requests than slots), give the tokens each gives alone."""
    model = flash_model(relative=0.3, absolute=0.0)
    n = model.num_image_token
    requests = [(prompt(n, 1), tiles(1, 112, 10)), (prompt(n, 3), tiles(3, 112, 11)),
                ([40, 41, 42], None), (prompt(n, 2, 4), tiles(6, 112, 12)), (prompt(n, 5), tiles(5, 112, 13))]
    params = SamplingParams(max_new_tokens=6)
    alone = [Engine(model, max_batch=1).generate([(ids, pv, params)])[0] for ids, pv in requests]
    together = Engine(model, max_batch=3, prefill_budget=10_000).generate([(ids, pv, params) for ids, pv in requests])
    assert [s.output_ids for s in together] == [s.output_ids for s in alone]
    assert [s.image_tokens for s in together] == [s.image_tokens for s in alone]
    compressed = [s.compressed_tiles for s in alone]
    assert compressed[0] == 0 and compressed[1] > 0 and len(set(compressed)) >= 3


def test_vir_modes():
    model = flash_model()
    n = model.num_image_token
    pv = tiles(4, 112, 20)
    ids = prompt(n, 4)
    off = Engine(model, vir="off").generate([(ids, pv, SamplingParams(max_new_tokens=4))])[0]
    always = Engine(model, vir="always").generate([(ids, pv, SamplingParams(max_new_tokens=4))])[0]
    assert off.image_tokens == 4 * n and off.compressed_tiles == 0
    assert always.image_tokens == n and always.compressed_tiles == 4
    # off is the plain InternVL path: the same tokens as the model without the Flash modules
    plain = InternVL(model.config.replace(flash_mode=None)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith(("mlp2", "pooling_before_gating", "gating"))})
    base = Engine(plain).generate([(ids, pv, SamplingParams(max_new_tokens=4))])[0]
    assert base.output_ids == off.output_ids
    # a single tile is compressed only when asked to be
    one = Engine(model, vir="always").generate([(prompt(n, 1), tiles(1, 112, 21), SamplingParams(max_new_tokens=1))])
    assert one[0].compressed_tiles == 1
    with pytest.raises(ConfigError, match="always needs"):
        Engine(plain, vir="always")
    with pytest.raises(ConfigError, match="vir must be"):
        Engine(model, vir="sometimes")
    # flash_mode false: the modules are there, auto does not route
    quiet = InternVL(model.config.replace(flash_mode=False)).eval()
    quiet.load_state_dict(model.state_dict())
    assert Engine(quiet).generate([(ids, pv, SamplingParams(max_new_tokens=4))])[0].output_ids == off.output_ids


def test_compress_prompt_checks_runs():
    n = 16
    with pytest.raises(ImageTokenMismatchError, match="whole number"):
        compress_prompt([1] + [CTX] * 20 + [2], [True, False], CTX, n)
    with pytest.raises(ImageTokenMismatchError, match="routing decisions"):
        compress_prompt([1] + [CTX] * 32 + [2], [True], CTX, n)
    assert compress_prompt([1] + [CTX] * 32 + [2], [False, True], CTX, n) == [1] + [CTX] * 20 + [2]


# ---------------------------------------------------------------- config and checkpoint layout

def test_flash_checkpoint_keys_round_trip(tmp_path):
    from safetensors import safe_open
    model = flash_model()
    path = save_checkpoint(model, tmp_path / "flash", "official")
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for key in ("mlp2.0.weight", "mlp2.1.weight", "mlp2.4.bias", "mlp2.7.weight", "gating.block1.0.weight",
                "gating.block4.3.bias", "gating.block2.5.weight", "gating.gate.0.weight", "gating.gate.1.bias",
                "pooling_before_gating.query_token", "pooling_before_gating.attn1.in_proj_weight",
                "pooling_before_gating.attn4.in_proj_bias", "pooling_before_gating.attn3.out_proj.weight",
                "pooling_before_gating.norm4.bias"):
        assert key in keys, key
    loaded, _, _ = load_model(path)
    assert loaded.config.flash_mode is True and loaded.config.flash_relative_threshold == 0.25
    pv = tiles(3, 112, 30)
    with torch.no_grad():
        a, b = model.encode_images(pv), loaded.encode_images(pv)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.compressed, b.compressed)
    with pytest.raises(ConfigError, match="Flash"):
        model.config.to_hf()


def test_flash_config_rules():
    d = flash_model().config.to_official()
    assert d["flash_mode"] is True and d["flash_absolute_threshold"] == 0.0
    assert InternVLConfig.from_official(d) == flash_model().config
    with pytest.raises(ConfigError, match="flash_relative_threshold"):
        InternVLConfig.from_official({k: v for k, v in d.items() if k != "flash_relative_threshold"})
    with pytest.raises(ConfigError, match="true or false"):
        InternVLConfig.from_official({**d, "flash_mode": "yes"})
    with pytest.raises(ConfigError, match="divisible by 4"):  # a 6x6 grid: 3x3 after the first shuffle
        InternVLConfig.from_official({**d, "force_image_size": 84})
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        InternVLConfig.from_official({**d, "flash_absolute_threshold": 1.5})
    plain = {k: v for k, v in d.items() if not k.startswith("flash")}
    assert not InternVLConfig.from_official(plain).has_vir
