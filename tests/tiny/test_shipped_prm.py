"""The shipped tiny PRM (`internvl/tiny/prm/`): small, official layout, VisualPRM's system prompt, the default
`--prm` of chat and eval; it learned to judge, weakly (right step-wise answers score above the same answers
with a wrong final step more often than chance); `chat --best-of` with every default works."""

from __future__ import annotations

import json

import pytest
import torch

from internvl.chat import from_pretrained
from internvl.cli import build_parser, main
from internvl.processing.image import load_question_images
from internvl.tiny import DEFAULT_PRM, EXAMPLES_DIR, PRM_DIR, steps
from internvl.tiny.world import SHAPES, split_seeds, make_example
from internvl.tts.prm import PRM_SYSTEM_PROMPT, aggregate


@pytest.fixture(scope="module")
def prm():
    return from_pretrained(PRM_DIR, dtype=torch.float32)


def test_shipped_prm_is_small_official_and_the_default():
    assert DEFAULT_PRM == str(PRM_DIR)
    config = json.loads((PRM_DIR / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"] and config["system_message"] == PRM_SYSTEM_PROMPT
    size = sum(f.stat().st_size for f in PRM_DIR.iterdir())
    assert size <= 16 * 2**20, f"the shipped PRM is {size / 2**20:.1f} MiB"
    card = (PRM_DIR / "README.md").read_text()
    assert "## Best-of-N on 500 held-out questions" in card and (PRM_DIR / "best_of_n.png").exists()
    parser = build_parser()
    assert parser.parse_args(["chat"]).prm == DEFAULT_PRM
    assert parser.parse_args(["eval", "shapes"]).prm == DEFAULT_PRM


def _wrong(answer: str, qtype: str) -> str:
    if answer.isdigit():
        return str((int(answer) + 1) % 7)
    if answer in ("yes", "no"):
        return "no" if answer == "yes" else "yes"
    if answer in SHAPES:
        return SHAPES[(SHAPES.index(answer) + 1) % 3]
    return {"red": "blue", "blue": "green", "green": "yellow", "yellow": "red"}[answer]


def test_right_answers_score_above_wrong_ones(prm):
    """The same reference steps ending in the right and in a wrong answer: the right one must win clearly more
    often than chance. The shipped PRM wins 99 of these 140 pairs (71%); a PRM at chance reaches the 80 asked
    with probability about 5%. (It judges weakly: see the README's Test-time scaling section.)"""
    model, tok = prm
    wins, n = 0, 140
    for seed in split_seeds("heldout", n, seed=5000):
        ex = make_example(seed)
        tiles = load_question_images(ex.images(), model.config)
        right = steps.step_answer(ex)
        wrong = right.rsplit("Answer: ", 1)[0] + f"Answer: {_wrong(ex.answer, ex.qtype)}"
        scores = model.score_steps(tok, steps.step_question(ex), [right, wrong], torch.cat(tiles),
                                   [t.shape[0] for t in tiles])
        wins += aggregate(scores[0]) > aggregate(scores[1])
    assert wins >= 80, f"the right answer scored higher in only {wins} of {n} pairs"


def test_chat_best_of_with_the_defaults(capsys):
    image = str(EXAMPLES_DIR / "shapes-1.png")
    assert main(["chat", "--image", image, "--best-of", "4", "--max-new-tokens", "8",
                 "How many objects are there?"]) == 0
    assert capsys.readouterr().out.strip()
