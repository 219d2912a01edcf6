"""Loss reductions: token / sample / square weights and the weighted loss equal values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from internvl.errors import ConfigError
from internvl.train.loss import len2weight, per_sample_losses, sft_loss, token_weights

I = -100  # noqa: E741  (IGNORE_INDEX, short so the tables below stay readable)

# Row 0 packs two samples: A (positions 0-4, 3 supervised labels) and B (5-7, 1 supervised label), then pad.
# Row 1 holds one sample C (positions 0-6, 2 supervised labels), then 2 padding tokens.
LABELS = torch.tensor([[I, I, 2, 0, 1, I, I, 3, I],
                       [I, I, I, 1, 1, I, I, I, I]])
SEQ = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, -1],
                    [0, 0, 0, 0, 0, 0, 0, -1, -1]])


def test_token_weights_by_hand():
    sup = (LABELS != I).float()
    x_tok = torch.tensor([[3, 3, 3, 3, 3, 1, 1, 1, 0], [2, 2, 2, 2, 2, 2, 2, 0, 0]], dtype=torch.float)
    assert torch.equal(token_weights(LABELS, SEQ, "token"), sup)
    torch.testing.assert_close(token_weights(LABELS, SEQ, "sample"), sup / x_tok.clamp_min(1))
    w = token_weights(LABELS, SEQ, "square")
    assert w[0, 2] == pytest.approx(1 / math.sqrt(3)) and w[0, 7] == 1 and w[1, 3] == pytest.approx(1 / math.sqrt(2))
    assert (w[LABELS == I] == 0).all()
    # a label under padding (seq id -1) is never weighted
    assert token_weights(torch.tensor([[I, 5]]), torch.tensor([[0, -1]]), "token").sum() == 0


def test_len2weight_is_the_official_table():
    x = torch.tensor([0, 1, 4, 9])
    assert len2weight(x, "token").tolist() == [0, 1, 1, 1]
    assert len2weight(x, "sample").tolist() == pytest.approx([0, 1, 1 / 4, 1 / 9])
    assert len2weight(x, "square").tolist() == pytest.approx([0, 1, 1 / 2, 1 / 3])
    with pytest.raises(ConfigError, match="unknown loss reduction 'mean'"):
        len2weight(x, "mean")


def logits_and_ce() -> tuple[torch.Tensor, dict[tuple[int, int], float]]:
    """Random logits (B, T, 4) and, by hand (math.log / math.exp), the CE of each supervised target."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    ce = {}
    for b in range(2):
        for t in range(1, 9):
            y = int(LABELS[b, t])
            if y != I:  # predicted from position t - 1
                row = logits[b, t - 1].tolist()
                ce[(b, t)] = math.log(sum(math.exp(v) for v in row)) - row[y]
    return logits.float(), ce


def test_reductions_match_hand_computed_values():
    logits, ce = logits_and_ce()
    groups = {"A": [(0, 2), (0, 3), (0, 4)], "B": [(0, 7)], "C": [(1, 3), (1, 4)]}
    mean = {k: sum(ce[p] for p in ps) / len(ps) for k, ps in groups.items()}
    n = {k: len(ps) for k, ps in groups.items()}
    want = {
        "token": sum(ce.values()) / len(ce),
        "sample": sum(mean.values()) / 3,
        "square": sum(math.sqrt(n[k]) * mean[k] for k in groups) / sum(math.sqrt(n[k]) for k in groups),
    }
    for reduction, value in want.items():
        got = sft_loss(logits, LABELS, token_weights(LABELS, SEQ, reduction))
        assert got.dtype == torch.float32 and got.item() == pytest.approx(value, rel=1e-5), reduction
    table = per_sample_losses(logits, LABELS, SEQ)
    assert table.shape == (2, 2) and math.isnan(table[1, 1])
    assert [table[0, 0].item(), table[0, 1].item(), table[1, 0].item()] == pytest.approx(
        [mean["A"], mean["B"], mean["C"]], rel=1e-5)


def test_weight_total_makes_accumulation_equal_one_batch():
    logits, _ = logits_and_ce()
    w = token_weights(LABELS, SEQ, "square")
    whole = sft_loss(logits, LABELS, w)
    total = w[:, 1:].sum()
    parts = sum(sft_loss(logits[i:i + 1], LABELS[i:i + 1], w[i:i + 1], weight_total=total) for i in range(2))
    torch.testing.assert_close(parts, whole)
    # each micro-batch on its own normalizes by its own weights, which is a different number
    assert not torch.isclose(sum(sft_loss(logits[i:i + 1], LABELS[i:i + 1], w[i:i + 1]) for i in range(2)) / 2, whole)


def test_gradients_flow_only_through_weighted_targets():
    logits, _ = logits_and_ce()
    logits.requires_grad_(True)
    sft_loss(logits, LABELS, token_weights(LABELS, SEQ, "sample")).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched[:, :-1], LABELS[:, 1:] != I) and not touched[:, -1].any()
