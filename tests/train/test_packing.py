"""Packing: a real tiny InternVL gives the same per-sample losses packed and unpacked; attention and labels
never cross a sample boundary; positions restart; padding and skipped samples are handled."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.processing.tokenizer import byte_tokenizer
from internvl.train.data import IGNORE_INDEX, DataConfig, Sample, build_sample
from internvl.train.loss import REDUCTIONS, per_sample_losses, sft_loss
from internvl.train.packing import Batch, PackedCollator, attention_mask_from_seq_ids, collate, pack

TOK = byte_tokenizer()
PAD = TOK.pad_token_id


def conv(*texts: str) -> list[dict]:
    return [{"from": ("human", "gpt")[i % 2], "value": t} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def model() -> InternVL:
    torch.manual_seed(0)
    m = InternVL(PRESETS["tiny-random"].config).eval()
    m.init_weights(std=0.2)  # large enough that a leak across samples would move the logits visibly
    m.img_context_token_id = TOK.convert_tokens_to_ids("<IMG_CONTEXT>")
    return m


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    root = tmp_path_factory.mktemp("imgs")
    Image.new("RGB", (200, 100), (220, 40, 40)).save(root / "a.png")
    Image.effect_noise((96, 96), 60).convert("RGB").save(root / "b.png")
    cfg = DataConfig.from_model(PRESETS["tiny-random"].config, max_dynamic_patch=2, system_message="S")
    records = [
        {"image": "a.png", "conversations": conv("What?", "A red box, wide.")},
        {"conversations": conv("2+2?", "4", "and 3+3?", "6, of course")},
        {"image": ["b.png", "a.png"], "conversations": conv("Image-1: <image>\nImage-2: <image>\nDiff?", "Noise")},
        {"image": "b.png", "conversations": conv("<image>\nNoisy?", "Yes")},
        {"conversations": conv("Say hi", "hi there, how are you today?")},
    ]
    return [build_sample(r, TOK, cfg, str(root), f"s.jsonl:{i + 1}") for i, r in enumerate(records)]


def run(model: InternVL, batch: Batch) -> torch.Tensor:
    """Logits through the pieces `InternVL.forward` is made of, with the packed mask and positions."""
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.pixel_values)
        hidden = model.language_model(embeds, batch.position_ids, attention_mask_from_seq_ids(batch.seq_ids))
        return model.language_model.logits(hidden)


def losses_in_input_order(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    table = per_sample_losses(logits, batch.labels, batch.seq_ids)
    return torch.stack([table[r, s] for r, s in batch.slots])


def test_packed_and_unpacked_batches_give_the_same_losses(model, samples):
    plain = collate(samples, PAD)
    packed = pack(samples, max_tokens=180, pad_id=PAD)
    per_row = [int(packed.seq_ids[r].max()) + 1 for r in range(packed.input_ids.shape[0])]
    assert max(per_row) > 1 and len(per_row) < len(samples)  # the test really packed
    assert packed.input_ids.shape[1] <= 180 and plain.input_ids.shape[0] == len(samples)
    placed = sorted(range(len(samples)), key=lambda i: packed.slots[i])  # tiles follow placement order
    assert placed != sorted(placed)  # ... which here differs from the input order
    assert torch.equal(packed.pixel_values, torch.cat([samples[i].pixel_values for i in placed
                                                       if samples[i].pixel_values is not None]))
    plain_logits, packed_logits = run(model, plain), run(model, packed)
    a, b = losses_in_input_order(plain, plain_logits), losses_in_input_order(packed, packed_logits)
    assert torch.isfinite(a).all() and a.std() > 0
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    for reduction in REDUCTIONS:
        p, q = collate(samples, PAD, reduction), pack(samples, 180, PAD, reduction)
        torch.testing.assert_close(sft_loss(packed_logits, q.labels, q.loss_weight),
                                   sft_loss(plain_logits, p.labels, p.loss_weight), atol=1e-5, rtol=1e-5)


def test_nothing_crosses_a_sample_boundary(model, samples):
    packed = pack(samples, max_tokens=180, pad_id=PAD)
    row = next(r for r in range(packed.input_ids.shape[0]) if packed.seq_ids[r].max() >= 1)
    first, second = packed.seq_ids[row] == 0, packed.seq_ids[row] == 1
    # changing the second sample's text changes its logits but not the first sample's
    changed = Batch(**{**packed.__dict__, "input_ids": packed.input_ids.clone()})
    text = second & (packed.input_ids[row] < 256)
    changed.input_ids[row, text] = (changed.input_ids[row, text] + 1) % 256
    before, after = run(model, packed), run(model, changed)
    torch.testing.assert_close(after[row, first], before[row, first], atol=0, rtol=0)
    assert not torch.allclose(after[row, second], before[row, second])
    # each sample's labels are its own (first one ignored), positions restart, first tokens carry no weight
    for i, (r, s) in enumerate(packed.slots):
        span = packed.seq_ids[r] == s
        assert torch.equal(packed.input_ids[r, span], samples[i].input_ids)
        assert torch.equal(packed.labels[r, span][1:], samples[i].labels[1:])
        assert packed.labels[r, span][0] == IGNORE_INDEX and packed.loss_weight[r, span][0] == 0
        assert torch.equal(packed.position_ids[r, span], torch.arange(int(span.sum())))
    pad = packed.seq_ids < 0
    assert (packed.labels[pad] == IGNORE_INDEX).all() and (packed.loss_weight[pad] == 0).all()
    assert (packed.input_ids[pad] == PAD).all()


def test_attention_mask_is_block_diagonal_causal():
    seq = torch.tensor([[0, 0, 1, 1, 1, -1]])
    m = attention_mask_from_seq_ids(seq)[0, 0].int()
    want = torch.tensor([[1, 0, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0],
                         [0, 0, 1, 0, 0, 0],
                         [0, 0, 1, 1, 0, 0],
                         [0, 0, 1, 1, 1, 0],
                         [0, 0, 0, 0, 0, 1]])
    assert torch.equal(m, want) and attention_mask_from_seq_ids(seq).shape == (1, 1, 6, 6)


def test_oversized_sample_gets_its_own_row_and_first_fit_fills_gaps(samples):
    lens = [len(s.input_ids) for s in samples]
    budget = sorted(lens)[-2]  # the longest sample does not fit
    batch = pack(samples, budget, PAD)
    longest = lens.index(max(lens))
    r, s = batch.slots[longest]
    assert s == 0 and int(batch.seq_ids[r].max()) == 0 and batch.input_ids.shape[1] == max(lens)
    for row in range(batch.input_ids.shape[0]):
        if row != r:
            assert int((batch.seq_ids[row] >= 0).sum()) <= budget
    assert batch.num_samples == len(samples) and batch.num_tokens == sum(lens)
    assert sorted(batch.slots) == sorted(set(batch.slots))


def test_collator_drops_skipped_samples_and_moves(samples):
    batch = PackedCollator(PAD, "sample")([samples[1], None, samples[4]])
    assert batch.num_samples == 2 and batch.num_skipped == 1 and batch.pixel_values is None
    assert batch.sources == ["s.jsonl:2", "s.jsonl:5"]
    empty = PackedCollator(PAD, max_tokens=64)([None, None])
    assert empty.num_samples == 0 and empty.num_skipped == 2 and empty.input_ids.shape == (1, 1)
    logits = torch.randn(1, 1, 8, requires_grad=True)
    loss = sft_loss(logits, empty.labels, empty.loss_weight)
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None
    moved = PackedCollator(PAD)(samples[:1]).to("cpu", torch.bfloat16)
    assert moved.pixel_values.dtype == torch.bfloat16 and moved.loss_weight.dtype == torch.float32
    assert moved.input_ids.dtype == torch.long
