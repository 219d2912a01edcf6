"""Stage 0, region-text alignment: targets land on the token cell of each box center in the right tile and in
the thumbnail, the loss is the documented cross-entropy, and `internvl train --stage 0` trains the ViT, the
projector and the token embeddings only, learning to name the objects of the tiny world."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from internvl.errors import ConfigError, DataError
from internvl.models.projector import pixel_shuffle
from internvl.processing.grounding import Region
from internvl.tiny.dataset import export
from internvl.train.args import TrainConfig
from internvl.train.metrics import read_metrics
from internvl.train.region_align import (IGNORED, LOGIT_SCALE, NONE, POSITIVE_WEIGHT, RegionCollator,
                                         region_logits, region_loss, region_targets)
from internvl.train.trainer import prepare_model, train


def test_targets_mark_the_center_cell_in_its_tile_and_the_thumbnail():
    # a 3x2 grid of tiles, 4x4 tokens per tile; box center at (0.5, 0.75) of the image:
    # tile column 1, row 1 (index 4), at (0.5, 0.5) inside it -> token row 2, col 2; thumbnail token row 3, col 2
    regions = [Region("red circle", 400, 600, 600, 900)]
    t = region_targets(regions, cols=3, rows=2, thumbnail=True, side=4)
    assert t.shape == (7, 16)
    assert t[4, 2 * 4 + 2] == 0 and t[6, 3 * 4 + 2] == 0
    assert int((t == 0).sum()) == 2 and int((t == NONE).sum()) == 7 * 16 - 2
    # one tile: no thumbnail view
    assert region_targets(regions, 1, 1, True, 4).shape == (1, 16)
    # pixel shuffle v1 keeps the grid transposed: the cell index swaps row and column
    v1 = region_targets([Region("x", 0, 400, 300, 600)], 1, 1, False, 4, ps_version="v1")
    assert v1[0, 0 * 4 + 2] == 0  # center (0.15, 0.5): column 0, row 2 -> index col * side + row


def test_target_cells_follow_pixel_shuffle_token_order():
    # token k of a v2 tile covers patch rows 2*(k // side) .. +1 and columns 2*(k % side) .. +1
    side, patches = 4, 8
    grid = torch.arange(patches * patches, dtype=torch.float32).reshape(1, patches, patches, 1)
    tokens = pixel_shuffle(grid, 0.5, "v2").reshape(side * side, 4)
    for k in range(side * side):
        r, c = divmod(k, side)
        assert set(tokens[k].tolist()) == {(2 * r + i) * patches + 2 * c + j for i in (0, 1) for j in (0, 1)}
    # a box centered in patch (5, 2) -> token row 2, col 1 -> index 9
    center = Region("x", int(2.5 / 8 * 1000) - 10, int(5.5 / 8 * 1000) - 10, int(2.5 / 8 * 1000) + 10,
                    int(5.5 / 8 * 1000) + 10)
    assert region_targets([center], 1, 1, False, side)[0].tolist().index(0) == 9


def test_two_centers_in_one_cell_are_ignored_there():
    regions = [Region("a", 0, 0, 100, 100), Region("b", 100, 100, 200, 200)]
    t = region_targets(regions, 1, 1, False, 4)
    assert t[0, 0] == IGNORED and int((t >= 0).sum()) == 0


def test_loss_is_weighted_cross_entropy_against_nothing_at_zero():
    torch.manual_seed(0)
    tokens, phrases = torch.randn(2, 4, 8), torch.randn(3, 8)
    logits = region_logits(tokens, phrases)
    assert logits.shape == (2, 4, 4) and torch.all(logits[..., 0] == 0)
    assert torch.allclose(logits[0, 1, 2], LOGIT_SCALE * F.cosine_similarity(tokens[0, 1], phrases[1], dim=0))
    targets = torch.tensor([[0, NONE, IGNORED, 2], [NONE, NONE, 1, NONE]])
    weight = torch.where(targets >= 0, POSITIVE_WEIGHT, (targets == NONE).float())
    total = weight.sum()
    loss = region_loss(logits, targets, weight, total)
    by_hand = 0.0
    for i in range(2):
        for j in range(4):
            if targets[i, j] != IGNORED:
                ce = -torch.log_softmax(logits[i, j], -1)[targets[i, j] + 1]
                by_hand += float(weight[i, j] * ce)
    assert math.isclose(float(loss), by_hand / float(total), rel_tol=1e-6)


class _Tok:
    pad_token_id = 0

    def encode(self, text):
        return [ord(c) % 50 + 1 for c in text.split()[-1]]


def test_collator_shares_one_phrase_table():
    from internvl.train.region_align import RegionSample
    a = RegionSample(torch.zeros(1, 3, 4, 4), torch.tensor([[0, 1, NONE, IGNORED]]), ["blue", "red"], "a:1")
    b = RegionSample(torch.zeros(2, 3, 4, 4), torch.tensor([[0, NONE, NONE, NONE], [NONE, 1, 0, NONE]]),
                     ["red", "zz"], "b:1")
    batch = RegionCollator(_Tok())([a, None, b])
    assert batch.num_samples == 2 and batch.num_skipped == 1 and batch.pixel_values.shape[0] == 3
    # table order: blue, red, zz
    assert batch.targets.tolist() == [[0, 1, NONE, IGNORED], [1, NONE, NONE, NONE], [NONE, 2, 1, NONE]]
    assert batch.token_weight[0].tolist() == [POSITIVE_WEIGHT, POSITIVE_WEIGHT, 1.0, 0.0]
    assert batch.phrase_ids.shape[0] == 3 and batch.phrase_mask.sum(1).tolist() == [4, 3, 2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    export(root, 48, seed=0, ground=True)
    return root


def test_exported_grounding_records_parse(world):
    line = json.loads((world / "shapes_train_ground.jsonl").read_text().splitlines()[0])
    assert line["conversations"][1]["value"].startswith("<ref>")
    assert json.loads((world / "shapes_train_ground_meta.json").read_text()).keys() == {"shapes_train_ground"}


def _cfg(world, tmp_path, **kw):
    from internvl.tiny.tokenizer import save_tokenizer
    tok = save_tokenizer(tmp_path / "tok")
    return TrainConfig(model="tiny", tokenizer=str(tok), stage="0",
                       meta_path=str(world / "shapes_train_ground_meta.json"),
                       output_dir=str(tmp_path / "run"), per_device_batch_size=8, lr=1e-3, progress=False,
                       save_steps=0, warmup_ratio=0.1, **kw)


def test_stage0_trains_vision_projector_and_embeddings_only(world, tmp_path):
    model, *_ = prepare_model(_cfg(world, tmp_path), None)
    trains = {n.split(".")[0] + ("" if not n.startswith("language_model") else "." + n.split(".")[1])
              for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {"vision_model", "mlp1", "language_model.embed_tokens"}


def test_stage0_learns_and_saves_a_chat_loadable_checkpoint(world, tmp_path):
    result = train(_cfg(world, tmp_path, max_steps=30))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 30 and all(r["tokens"] > 0 for r in rows)
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    from internvl.chat import from_pretrained
    model, tok = from_pretrained(result["checkpoint"])
    assert model.config.image_size == 96


def test_stage0_needs_grounding_records(tmp_path, world):
    cfg = _cfg(world, tmp_path, max_steps=2)
    cfg.meta_path = str(world / "shapes_train_meta.json")  # questions, no <ref>/<box>
    with pytest.raises(DataError, match="no <ref>phrase</ref><box>"):
        train(cfg)


def test_stage0_refuses_lora(world, tmp_path):
    with pytest.raises(ConfigError, match="--stage 0"):
        _cfg(world, tmp_path, use_llm_lora=4)
