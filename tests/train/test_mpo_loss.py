"""The MPO loss against TRL 0.28's DPOTrainer (`trl_oracle.py`), on the same model weights and pairs: the loss, the
reward metrics, the SFT term and bco_pair's running shift delta, micro-batch after micro-batch (delta evolves), for a
micro-batch mixing image and text-only pairs, an all-text one and an all-image one, padded and packed; the gradients
of a step with gradient accumulation; every loss type alone. fp32, atol 1e-5 (only the order of the sums differs)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from synthetic import make_pairs
from trl_oracle import import_trl, oracle, oracle_step

from internvl.presets import PRESETS
from internvl.processing.tokenizer import byte_tokenizer
from internvl.train.data import DataConfig
from internvl.train.distributed import DistInfo
from internvl.train.mpo import MPOObjective
from internvl.train.mpo_data import PreferenceCollator, PreferenceDataset
from internvl.train.mpo_loss import MPOLossConfig, RunningMean
from internvl.train.trainer import SFTInternVL

pytestmark = pytest.mark.parity
ATOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A policy that differs from its reference (so rho != 0), and 9 pairs: 2, 5 and 8 are text-only."""
    tok = byte_tokenizer()
    cfg = PRESETS["tiny-random"].config.replace(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    torch.manual_seed(0)
    reference = SFTInternVL(cfg)
    reference.init_weights()
    reference.img_context_token_id = cfg.image_token_id
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    meta = make_pairs(tmp_path_factory.mktemp("pairs"), n=9, text_every=3)
    ds = PreferenceDataset(meta, tok, DataConfig.from_model(cfg, max_dynamic_patch=2))
    pairs = [ds[i] for i in range(len(ds))]
    assert sum(p.chosen.pixel_values is None for p in pairs) == 3
    return policy.eval(), reference.eval(), pairs, tok.pad_token_id


# mixed image + text, all text-only, all image
MICRO_BATCHES = [[0, 1, 2], [5, 8], [3, 4, 6, 7]]


def ours(policy, reference, pairs, pad_id, cfg: MPOLossConfig, packed: bool = False):
    """Our loss and metrics per micro-batch, and delta after each."""
    objective = MPOObjective(cfg, DistInfo(), reference=reference)
    collate = PreferenceCollator(pad_id, 700 if packed else None)
    results = []
    for idx in MICRO_BATCHES:
        batch = collate([pairs[i] for i in idx])
        if packed:
            assert batch.batch.input_ids.shape[0] < 2 * len(idx)  # really packed
        loss = objective(policy, batch, torch.tensor(1.0))
        sums = {k: float(v) for k, v in objective.step_statistics().items()}
        results.append((loss, objective.metrics(sums), objective.running.mean))
    return results


def theirs(policy, reference, pairs, pad_id, types, weights, beta, rpo_alpha):
    t = oracle(types, weights, beta, rpo_alpha, pad_id)
    out = []
    for idx in MICRO_BATCHES:
        loss, metrics = oracle_step(t, policy, reference, [pairs[i] for i in idx], pad_id)
        out.append((loss, metrics, t.running.mean if hasattr(t, "running") else None))
    return out


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_default_mpo_loss_and_metrics_equal_trl(setup, packed):
    policy, reference, pairs, pad = setup
    mine = ours(policy, reference, pairs, pad, MPOLossConfig(), packed)
    trl = theirs(policy, reference, pairs, pad, ["sigmoid", "bco_pair"], [0.8, 0.2], 0.1, 1.0)
    deltas = []
    for (loss, m, delta), (t_loss, t_m, t_delta) in zip(mine, trl):
        assert loss.item() == pytest.approx(t_loss.item(), abs=ATOL)
        for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                    "logps/rejected"):
            assert m[key] == pytest.approx(t_m[key], abs=ATOL, rel=1e-6), key  # log-probs reach -100: relative
        assert m["loss_sft"] == pytest.approx(t_m["nll_loss"], abs=ATOL)
        assert delta == pytest.approx(t_delta, abs=1e-6) and m["bco_delta"] == delta
        # the total is the documented combination of the parts
        assert loss.item() == pytest.approx(0.8 * m["loss_sigmoid"] + 0.2 * m["loss_bco_pair"] + m["loss_sft"],
                                            abs=ATOL)
        deltas.append(delta)
    assert len({round(d, 6) for d in deltas}) == 3 and all(abs(d) > 1e-3 for d in deltas)  # delta really moves


def test_trl_mpo_spelling_with_an_sft_loss_type_is_the_same_loss(setup):
    """TRL >= 0.20 writes MPO as loss_type [sigmoid, bco_pair, sft], weights [0.8, 0.2, 1.0], no rpo_alpha."""
    policy, reference, pairs, pad = setup
    spelled = MPOLossConfig(("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0), 0.1, None)
    mine = ours(policy, reference, pairs, pad, spelled)
    trl = theirs(policy, reference, pairs, pad, ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], 0.1, None)
    default = ours(policy, reference, pairs, pad, MPOLossConfig())
    for (loss, _, delta), (t_loss, _, t_delta), (d_loss, _, _) in zip(mine, trl, default):
        assert loss.item() == pytest.approx(t_loss.item(), abs=ATOL)
        assert loss.item() == pytest.approx(d_loss.item(), abs=ATOL)
        assert delta == pytest.approx(t_delta, abs=1e-6)


@pytest.mark.parametrize("loss_type,rpo_alpha", [("sigmoid", None), ("bco_pair", None), ("ipo", None),
                                                 ("hinge", 0.5), ("sigmoid", 2.0)])
def test_each_loss_type_alone_equals_trl(setup, loss_type, rpo_alpha):
    policy, reference, pairs, pad = setup
    beta = 0.3 if loss_type == "ipo" else 0.1
    mine = ours(policy, reference, pairs, pad, MPOLossConfig((loss_type,), (1.0,), beta, rpo_alpha))
    trl = theirs(policy, reference, pairs, pad, [loss_type], None, beta, rpo_alpha)
    for (loss, m, _), (t_loss, t_m, _) in zip(mine, trl):
        assert loss.item() == pytest.approx(t_loss.item(), abs=ATOL)
        assert m["rewards/margins"] == pytest.approx(t_m["rewards/margins"], abs=ATOL)
        if rpo_alpha is None:
            assert m[f"loss_{loss_type}"] == pytest.approx(loss.item(), abs=ATOL)


def test_gradients_of_an_accumulated_step_equal_trl(setup):
    """Two micro-batches accumulated: ours divides each micro-batch loss by the number of micro-batches (the
    trainer's weight_total); HF's Trainer divides by the accumulation steps. The gradients must agree."""
    policy, reference, pairs, pad = setup
    mine, theirs_model = copy.deepcopy(policy), copy.deepcopy(policy)
    objective = MPOObjective(MPOLossConfig(), DistInfo(), reference=reference)
    collate = PreferenceCollator(pad)
    micro = [MICRO_BATCHES[0], MICRO_BATCHES[2]]
    batches = [collate([pairs[i] for i in idx]) for idx in micro]
    total = torch.stack([objective.weight(b) for b in batches]).sum()
    assert float(total) == 2
    for b in batches:
        objective(mine, b, total).backward()
    t = oracle(["sigmoid", "bco_pair"], [0.8, 0.2], 0.1, 1.0, pad)
    for idx in micro:
        loss, _ = oracle_step(t, theirs_model, reference, [pairs[i] for i in idx], pad)
        (loss / len(micro)).backward()
    grads = {n: p.grad for n, p in theirs_model.named_parameters()}
    checked = 0
    for n, p in mine.named_parameters():
        if grads[n] is None:
            assert p.grad is None or not p.grad.any(), n
            continue
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)
        checked += int(grads[n].abs().max() > 0)
    assert checked > 20  # the vision tower, projector and LLM all received gradient
    assert objective.running.mean == pytest.approx(t.running.mean, abs=1e-6)


def test_running_mean_is_trls_running_moments():
    _, _, _, RunningMoments = import_trl()
    from types import SimpleNamespace
    theirs_ = RunningMoments(SimpleNamespace(use_distributed=False))
    mine = RunningMean()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn((), generator=g) * 0.3 + 0.1
        theirs_.update(x)
        assert mine.update(float(x), 1.0) == pytest.approx(theirs_.mean, abs=1e-6)


def test_policy_equal_to_reference_gives_ln2_and_2ln2(setup):
    _, reference, pairs, pad = setup
    objective = MPOObjective(MPOLossConfig(), DistInfo(), reference=reference)
    loss = objective(reference, PreferenceCollator(pad)(pairs[:4]), torch.tensor(1.0))
    m = objective.metrics({k: float(v) for k, v in objective.step_statistics().items()})
    assert m["loss_sigmoid"] == pytest.approx(math.log(2), abs=1e-5)
    assert m["loss_bco_pair"] == pytest.approx(2 * math.log(2), abs=1e-5)
    assert loss.item() == pytest.approx(0.8 * math.log(2) + 0.4 * math.log(2) + m["loss_sft"], abs=1e-5)
    assert m["rewards/margins"] == 0 and m["bco_delta"] == 0


def test_bad_loss_settings_are_clear_errors():
    from internvl.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown loss type"):
        MPOLossConfig.parse("sigmoid,dpo", None, 0.1, 1.0)
    with pytest.raises(ConfigError, match="2 value\\(s\\) for 3 loss type"):
        MPOLossConfig.parse("sigmoid,bco_pair,hinge", "0.5,0.5", 0.1, 1.0)
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        MPOLossConfig.parse("sigmoid", "heavy", 0.1, 1.0)
    with pytest.raises(ConfigError, match="beta"):
        MPOLossConfig.parse("sigmoid", None, 0.0, 1.0)
    assert MPOLossConfig.parse("sigmoid,bco_pair", None, 0.1, 1.0).loss_weights == (0.8, 0.2)
    assert MPOLossConfig.parse("sigmoid,hinge", None, 0.1, None).loss_weights == (1.0, 1.0)


def test_tiles_go_through_the_vit_once_unless_it_is_random(setup):
    """A pair's tiles serve its chosen and rejected sequences: encoded once when the ViT is deterministic (same
    logits as encoding every copy), once per sequence as the official code does when drop path is on."""
    policy, _, pairs, pad = setup
    model = copy.deepcopy(policy)
    batch = PreferenceCollator(pad)([pairs[i] for i in (0, 1, 3)])
    seen = []
    model.vision_model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    objective = MPOObjective(MPOLossConfig(), DistInfo(), reference_table=torch.zeros(9, 2))
    once = objective._forward(model, batch, torch.device("cpu"))[0]
    unique = batch.batch.pixel_values.shape[0]
    assert seen == [unique] and len(batch.tile_index) == 2 * unique
    twice = objective._forward(model.train(), batch, torch.device("cpu"))[0]  # train mode, no drop path yet
    assert seen[-1] == unique
    torch.testing.assert_close(once, twice, atol=1e-5, rtol=0)
    for layer in model.vision_model.encoder.layers:
        layer.drop_path = 0.1
    objective._forward(model, batch, torch.device("cpu"))
    assert seen[-1] == 2 * unique
