"""Monte Carlo step labels (VisualPRM400K's recipe): the bookkeeping against a scripted policy, the official PRM
conversation format, and the tiny PRM data builder end to end on a random tiny model (its JSONL trains as
official SFT data whose only supervised tokens are the `+` / `-` answers)."""

from __future__ import annotations

import json

import pytest
import torch

from internvl.checkpoint.loader import save_checkpoint
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.tiny import prm_data
from internvl.tiny.tokenizer import train_tokenizer
from internvl.train.data import SFTDataset
from internvl.train.records import IGNORE_INDEX, DataConfig
from internvl.tts import mc
from internvl.tts.prm import PRM_SYSTEM_PROMPT, prm_conversation


class _Tok:
    """Each distinct text becomes one id, so the scripted policy can tell prompts apart."""

    def __init__(self):
        self.texts: list[str] = []

    def __call__(self, text, return_tensors=None):
        if text not in self.texts:
            self.texts.append(text)
        return {"input_ids": [self.texts.index(text)]}


def test_step_scores_bookkeeping(monkeypatch):
    """Continuations are scripted per prefix; a prefix shared by two responses is sampled once."""
    script = {"Q|a": ["\n\nb\n\nAnswer: 1", "\n\nAnswer: 2", "\n\nx\n\nAnswer: 1", "\n\nAnswer: 3"],
              "Q|a\n\nb": ["\n\nAnswer: 1"] * 4,
              "Q|c": ["\n\nAnswer: 2"] * 4}
    calls, tok = [], _Tok()

    def fake_run_groups(engine, groups, window=None, strip=True):
        assert strip is False  # continuations keep their leading separator
        out = []
        for ids, pixels, params in groups:
            prompt = tok.texts[ids[0]]
            calls.append(prompt)
            assert len(params) == 4 and len({p.seed for p in params}) == 4
            out.append(script[prompt])
        return out

    monkeypatch.setattr(mc, "run_groups", fake_run_groups)
    problem = mc.Problem("Q|", None, lambda r: r.endswith("Answer: 1"))
    responses = [["a\n\nb\n\nAnswer: 1", "a\n\nb\n\nAnswer: 2", "c\n\nAnswer: 1", "Answer: 1"]]
    scored = mc.step_scores(None, tok, [problem], responses, mc.MCConfig(mc=4))
    assert sorted(calls) == ["Q|a", "Q|a\n\nb", "Q|c"]  # 'a' and 'a\n\nb' sampled once for both responses
    first, second, third, fourth = scored[0]
    assert [s["score"] for s in first] == [0.5, 1.0, 1.0]
    assert [s["score"] for s in second] == [0.5, 1.0, 0.0]  # the last step: the response's own correctness
    assert [s["score"] for s in third] == [0.0, 1.0]
    assert [s["score"] for s in fourth] == [1.0]
    assert first[0] == {"step": "a", "score": 0.5, "num_mc_correct": 2, "num_mc_total": 4}
    assert second[-1]["num_mc_total"] == 1
    assert [s["step"] for s in first] == ["a", "b", "Answer: 1"]


def test_prm_conversation_is_the_official_format():
    conv = prm_conversation("<image>\nHow many?", ["3 objects", "Answer: 2"], [0.25, 0.0])
    assert conv == [{"from": "system", "value": PRM_SYSTEM_PROMPT},
                    {"from": "human", "value": "### Question:\n<image>\nHow many?\n\n### Solution Process:\n3 objects"},
                    {"from": "gpt", "value": "+"},
                    {"from": "human", "value": "Answer: 2"},
                    {"from": "gpt", "value": "-"}]
    assert prm_conversation("q", ["a"], [0.5], threshold=0.5)[-1]["value"] == "-"  # + only above the threshold
    with pytest.raises(Exception, match="2 steps but 1 scores"):
        prm_conversation("q", ["a", "b"], [1.0])


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    torch.manual_seed(0)
    model = InternVL(PRESETS["tiny"].config)
    model.init_weights()
    path = save_checkpoint(model, tmp_path_factory.mktemp("mc") / "policy", "official")
    train_tokenizer().save_pretrained(path)
    return path


def test_tiny_prm_data_end_to_end(policy, tmp_path):
    stats = prm_data.build(str(policy), tmp_path, n=3, seed=7, responses=2, words=1, mc=2, max_batch=8,
                           dtype="fp32")
    assert stats["records"] == 3 * (2 + 1) and 0 <= stats["plus_share"] <= 1
    rows = [json.loads(line) for line in open(tmp_path / "mc_scores.jsonl")]
    records = [json.loads(line) for line in open(tmp_path / "prm.jsonl")]
    assert len(rows) == len(records) == 9
    for row, record in zip(rows, records):
        labels = [c["value"] for c in record["conversations"] if c["from"] == "gpt"]
        assert labels == ["+" if s["score"] > 0 else "-" for s in row["steps_with_score"]]
        assert record["conversations"][0] == {"from": "system", "value": PRM_SYSTEM_PROMPT}
        assert record["conversations"][1]["value"].startswith(f"### Question:\n{row['question']}\n\n### Solution")
    tok = train_tokenizer()
    ds = SFTDataset(tmp_path / "prm_meta.json", tok, DataConfig(template="internvl2_5", image_size=96,
                                                                 num_image_token=16, max_dynamic_patch=6))
    for i, record in enumerate(records):
        sample = ds[i]
        supervised = tok.decode(sample.input_ids[sample.labels != IGNORE_INDEX].tolist())
        labels = [c["value"] for c in record["conversations"] if c["from"] == "gpt"]
        assert supervised == "".join(f"{x}<|im_end|>" for x in labels)
        assert PRM_SYSTEM_PROMPT in tok.decode(sample.input_ids.tolist())


def test_responses_with_an_empty_step_are_left_out_and_counted(policy, tmp_path, monkeypatch):
    """A sampled 'a\\n\\n\\n\\nb' splits into an empty step: an empty human turn that the SFT loader refuses.
    The builder drops such responses (counted in stats) and the rest still loads as training data."""
    def fake_sample(engine, tokenizer, problems, k, cfg, seed_offset=0):
        return [["3 objects\n\n\n\nAnswer: 2", "3 objects\n\nAnswer: 2"][:k] for _ in problems]

    def fake_scores(engine, tokenizer, problems, responses, cfg):
        return [[[{"step": s, "score": 1.0, "num_mc_correct": 1, "num_mc_total": 1} for s in r.split("\n\n")]
                 for r in per] for per in responses]
    monkeypatch.setattr(prm_data, "sample_responses", fake_sample)
    monkeypatch.setattr(prm_data, "step_scores", fake_scores)
    stats = prm_data.build(str(policy), tmp_path, n=2, seed=7, responses=2, words=0, mc=1, max_batch=8, dtype="fp32")
    assert stats["skipped_empty_step"] == 2 and stats["records"] == 2
    records = [json.loads(line) for line in open(tmp_path / "prm.jsonl")]
    assert all(c["value"].strip() for r in records for c in r["conversations"])
    ds = SFTDataset(tmp_path / "prm_meta.json", train_tokenizer(),
                    DataConfig(template="internvl2_5", image_size=96, num_image_token=16, max_dynamic_patch=6))
    assert all(ds[i].input_ids.numel() for i in range(len(records)))
