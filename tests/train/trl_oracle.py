"""The independent oracle for the MPO loss: TRL 0.28's own `DPOTrainer` code (the last TRL line that still has
bco_pair's running reward shift and `rpo_alpha`, docs section 1.7), run on our model's logits.

TRL 0.28 imports beside transformers 5.x except for one thing: transformers 5 made `_is_package_available`
return a tuple, which TRL's `is_*_available()` helpers hand on, so `if is_weave_available():` is always true and
imports a package that is not installed. `import_trl` turns those helpers back into booleans first.

`oracle(...)` is a `DPOTrainer` made without `__init__` (which would need a HF model, datasets and an
Accelerator), holding exactly the attributes its `concatenated_forward`, `dpo_loss` and
`get_batch_loss_metrics` read. `trl_batch` converts a `PreferenceBatch`'s pairs to TRL's format (left-padded
prompt, right-padded completions = the scored tokens, pixel values of the pairs), and `HFStyle` gives our
`InternVL` the `model(input_ids, attention_mask=..., pixel_values=...) -> .logits` call TRL makes.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from internvl.models.internvl import InternVL
from internvl.train.data import IGNORE_INDEX
from internvl.train.mpo_data import PreferencePair


def import_trl():
    import trl
    import trl.import_utils as iu
    for name in dir(iu):
        f = getattr(iu, name)
        if name.startswith("is_") and name.endswith("_available") and callable(f):
            try:
                value = f()
            except Exception:  # helpers that need arguments or check versions: leave them
                continue
            if isinstance(value, tuple):
                setattr(iu, name, lambda v=bool(value[0]): v)
    from trl.trainer.dpo_trainer import DPOTrainer, FDivergenceType
    from trl.trainer.utils import RunningMoments
    return trl, DPOTrainer, FDivergenceType, RunningMoments


def oracle(loss_types: list[str], loss_weights: list[float] | None, beta: float, rpo_alpha: float | None,
           pad_id: int):
    trl, DPOTrainer, FDivergenceType, RunningMoments = import_trl()
    assert trl.__version__ == "0.28.0", trl.__version__
    t = DPOTrainer.__new__(DPOTrainer)
    accelerator = SimpleNamespace(device=torch.device("cpu"), use_distributed=False, gather_for_metrics=lambda x: x)
    args = SimpleNamespace(rpo_alpha=rpo_alpha, ld_alpha=None, use_liger_kernel=False)
    t.__dict__.update(accelerator=accelerator, args=args, loss_type=loss_types, loss_weights=loss_weights, beta=beta,
                      label_smoothing=0.0, reference_free=False, f_divergence_type=FDivergenceType.REVERSE_KL,
                      f_divergence_params=None, is_encoder_decoder=False, aux_loss_enabled=False, pad_token_id=pad_id,
                      max_length=None, truncation_mode="keep_end", use_logits_to_keep=False, padding_free=False,
                      use_weighting=False)
    if "bco_pair" in loss_types:
        t.running = RunningMoments(accelerator)
    return t


class HFStyle(nn.Module):
    def __init__(self, model: InternVL) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, pixel_values=None, **_):
        return SimpleNamespace(logits=InternVL.forward(self.model, input_ids, pixel_values,
                                                       attention_mask=attention_mask).logits)


def _split(ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, completion): the completion is the scored span (the response and its end token)."""
    scored = (labels != IGNORE_INDEX).nonzero().flatten()
    first, last = int(scored[0]), int(scored[-1])
    assert bool((labels[first:last + 1] != IGNORE_INDEX).all())  # one contiguous span
    return ids[:first], ids[first:last + 1]


def trl_batch(pairs: list[PreferencePair], pad_id: int) -> dict:
    prompts, chosen, rejected = [], [], []
    for pair in pairs:
        p, c = _split(pair.chosen.input_ids, pair.chosen.labels)
        p2, r = _split(pair.rejected.input_ids, pair.rejected.labels)
        assert torch.equal(p, p2)
        prompts.append(p), chosen.append(c), rejected.append(r)

    def pad(rows, left: bool):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, sl], mask[i, sl] = r, 1
        return ids, mask

    batch = {}
    for key, rows, left in (("prompt", prompts, True), ("chosen", chosen, False), ("rejected", rejected, False)):
        batch[f"{key}_input_ids"], batch[f"{key}_attention_mask"] = pad(rows, left)
    pixels = [p.chosen.pixel_values for p in pairs if p.chosen.pixel_values is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    return batch


def oracle_step(t, policy: InternVL, reference: InternVL, pairs: list[PreferencePair], pad_id: int):
    """TRL's (loss, metrics) of one micro-batch: the reference log-probs from TRL's `concatenated_forward` on the
    reference model (as its `compute_ref_log_probs`), then `get_batch_loss_metrics` on the policy."""
    batch = trl_batch(pairs, pad_id)
    with torch.no_grad():
        ref = t.concatenated_forward(HFStyle(reference), batch, is_ref_model=True)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref["chosen_logps"], ref["rejected_logps"]
    return t.get_batch_loss_metrics(HFStyle(policy), batch)
