"""VisualPRM step scoring: splitting/merging against golden cases, the prompt, and the step scores against
transformers' native InternVL (the oracle) on the same random weights, fp32, atol 1e-5.

The oracle side renders the PRM conversation by hand (the chatml strings typed out here, not our template
code), finds each `+` placeholder as the official code does (the token subsequence of
`<|im_start|>assistant\\n+<|im_end|>\\n`), and reads softmax over the logits of `+` and `-` one position before.
"""

from __future__ import annotations

import pytest
import torch

from internvl.chat import from_pretrained
from internvl.errors import ConfigError, ImageTokenMismatchError
from internvl.processing.tokenizer import byte_tokenizer
from internvl.tts import prm
from internvl.tts.prm import PRM_SYSTEM_PROMPT, aggregate, rank, score_steps, select_best_response, split_response

TOL = dict(atol=1e-5, rtol=0)
PER_TILE = 16  # (64 / 8)^2 * 0.5^2 image tokens per tile


# ------------------------------------------------------------------------------------------ splitting
@pytest.mark.parametrize("response, max_steps, steps", [
    ("a\n\nb\n\nc", None, ["a", "b", "c"]),
    ("a\n\nb\n\nc", 3, ["a", "b", "c"]),
    ("a\n\nb\n\nc", 5, ["a", "b", "c"]),  # fewer parts than max_steps: unchanged
    ("a\n\nb\n\nc", 2, ["a\n\nb", "c"]),  # ceil(3 / 2) = 2 parts per step
    ("a\n\nb\n\nc\n\nd\n\ne", 2, ["a\n\nb\n\nc", "d\n\ne"]),  # ceil(5 / 2) = 3
    ("a\n\nb\n\nc\n\nd\n\ne", 3, ["a\n\nb", "c\n\nd", "e"]),  # ceil(5 / 3) = 2
    ("1\n\n2\n\n3\n\n4\n\n5\n\n6\n\n7", 4, ["1\n\n2", "3\n\n4", "5\n\n6", "7"]),
    ("a\n\nb\n\nc", 1, ["a\n\nb\n\nc"]),  # one step: the whole response (ORM)
    ("one step only", None, ["one step only"]),
    ("a\nb\n\n\nc", None, ["a\nb", "\nc"]),  # single newlines stay inside a step; a third one starts the next
    ("", None, [""]),
    ("a\n\n", None, ["a", ""]),
])
def test_split_response_golden(response, max_steps, steps):
    assert split_response(response, max_steps=max_steps) == steps
    assert "\n\n".join(steps) == response


def test_split_response_rejects_zero_steps():
    with pytest.raises(ConfigError, match="max_steps"):
        split_response("a\n\nb", max_steps=0)


def test_aggregations_and_stable_ranking():
    s = [0.2, 0.9, 0.4]
    assert aggregate(s) == pytest.approx(0.5)
    assert (aggregate(s, "min"), aggregate(s, "last"), aggregate(s, "sum")) == (0.2, 0.4, pytest.approx(1.5))
    with pytest.raises(ConfigError, match="aggregation"):
        aggregate(s, "max")
    assert rank([0.5, 0.9, 0.5, 0.9, 0.1]) == [1, 3, 0, 2, 4]  # ties keep input order


# ------------------------------------------------------------------------------------- the oracle
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random InternVL saved by transformers (-hf layout) with the byte tokenizer beside it."""
    pytest.importorskip("transformers")
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from hf_oracle import VISION, randomize, text_config
    tok = byte_tokenizer()
    image_token = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    tc = text_config("qwen2") | dict(vocab_size=tok.vocab_size, max_position_embeddings=4096)
    cfg = InternVLConfig(vision_config=VISION, text_config=tc, image_token_id=image_token, tie_word_embeddings=False)
    hf = InternVLForConditionalGeneration(cfg).eval()
    randomize(hf)
    path = tmp_path_factory.mktemp("prm_hf")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return hf, path


@pytest.fixture(scope="module")
def ours(checkpoint):
    model, tok = from_pretrained(checkpoint[1], dtype=torch.float32)
    return model, tok


def _by_hand(question: str, steps: list[str], tiles: list[int]) -> str:
    """The scoring prompt typed out: system, first turn with question + image + step 0, '+' after each step."""
    images = "".join("<img>" + "<IMG_CONTEXT>" * (PER_TILE * n) + "</img>" for n in tiles)
    text = f"<|im_start|>system\n{PRM_SYSTEM_PROMPT}<|im_end|>\n"
    for i, step in enumerate(steps):
        turn = f"### Question:\n{images}\n{question}\n\n### Solution Process:\n{step}" if i == 0 else step
        text += f"<|im_start|>user\n{turn}<|im_end|>\n<|im_start|>assistant\n+<|im_end|>\n"
    return text


def _oracle_scores(hf, tok, text: str, pixel_values: torch.Tensor | None) -> list[float]:
    ids = tok.encode(text)
    pattern = tok.encode("<|im_start|>assistant\n+<|im_end|>\n")
    head = len(tok.encode("<|im_start|>assistant\n"))
    where = [i + head - 1 for i in range(len(ids) - len(pattern) + 1) if ids[i:i + len(pattern)] == pattern]
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([ids]), pixel_values=pixel_values).logits[0]
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    return logits[where][:, [plus, minus]].softmax(-1)[:, 0].tolist()


RESPONSES = ["There are 3 circles.\n\nTwo are red.\n\nAnswer: 2",
             "I count the shapes.\n\nAnswer: 5",
             "Step one\n\nStep two\n\nStep three\n\nStep four\n\nStep five\n\nAnswer: 1"]


@pytest.mark.parity
@pytest.mark.parametrize("max_steps", [None, 2, 1], ids=["all-steps", "merged-to-2", "orm"])
def test_step_scores_match_transformers(checkpoint, ours, max_steps):
    hf, _ = checkpoint
    model, tok = ours
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    question = "How many red circles are there?"
    got = score_steps(model, tok, question, RESPONSES, pixels, batch_size=2, max_steps=max_steps)
    for response, scores in zip(RESPONSES, got):
        steps = split_response(response, max_steps=max_steps)
        want = _oracle_scores(hf, tok, _by_hand(question, steps, [3]), pixels)
        assert len(scores) == len(steps)
        torch.testing.assert_close(torch.tensor(scores, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                                   **TOL)
    # the image matters
    other = score_steps(model, tok, question, RESPONSES[:1], torch.zeros_like(pixels), max_steps=max_steps)
    assert max(abs(a - b) for a, b in zip(other[0], got[0])) > 1e-4


@pytest.mark.parity
def test_two_images_and_text_only_match_transformers(checkpoint, ours):
    hf, _ = checkpoint
    model, tok = ours
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    question = "Image-1: <image>\nImage-2: <image>\nWhich has more?"
    got = score_steps(model, tok, question, RESPONSES[:2], pixels, num_patches_list=[1, 2])
    for response, scores in zip(RESPONSES[:2], got):
        block = lambda n: "<img>" + "<IMG_CONTEXT>" * (PER_TILE * n) + "</img>"  # noqa: E731
        hand = _by_hand("", split_response(response), []).replace(
            "### Question:\n\n", f"### Question:\nImage-1: {block(1)}\nImage-2: {block(2)}\nWhich has more?")
        torch.testing.assert_close(torch.tensor(scores, dtype=torch.float64),
                                   torch.tensor(_oracle_scores(hf, tok, hand, pixels), dtype=torch.float64), **TOL)
    got = score_steps(model, tok, "What is 2 + 2?", RESPONSES)
    for response, scores in zip(RESPONSES, got):
        hand = _by_hand("", split_response(response), []).replace("### Question:\n\n", "### Question:\nWhat is 2 + 2?")
        torch.testing.assert_close(torch.tensor(scores, dtype=torch.float64),
                                   torch.tensor(_oracle_scores(hf, tok, hand, None), dtype=torch.float64), **TOL)


def test_batched_scores_equal_one_response_at_a_time(ours):
    model, tok = ours
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    together = score_steps(model, tok, "Q?", RESPONSES, pixels, batch_size=8)
    alone = [score_steps(model, tok, "Q?", [r], pixels)[0] for r in RESPONSES]
    for a, b in zip(together, alone):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-6, rtol=0)
    # identical responses share their whole prompt: still one score per step
    same = score_steps(model, tok, "Q?", [RESPONSES[0]] * 3, pixels)
    assert same[0] == pytest.approx(same[2], abs=1e-6) and len(same[0]) == 3


def test_select_best_response_sorts_by_mean_and_keeps_ties_in_order(ours):
    model, tok = ours
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    responses = [RESPONSES[1], RESPONSES[0], RESPONSES[1], RESPONSES[2], RESPONSES[0]]
    ranked, scores = select_best_response(model, tok, "Q?", responses, pixels, return_scores=True)
    steps = score_steps(model, tok, "Q?", responses, pixels)
    means = [sum(s) / len(s) for s in steps]
    order = sorted(range(5), key=lambda i: -means[i])
    assert ranked == [responses[i] for i in order]
    assert scores == pytest.approx(sorted(means, reverse=True))
    # duplicates score (almost) alike; the stable sort keeps the first copy ahead of the second
    first = {r: i for i, r in reversed(list(enumerate(responses)))}
    assert [first[r] for r in ranked] == sorted([first[r] for r in ranked], key=lambda i: -means[i])
    # the official method name on the model, and the min aggregation changes the order only by score
    assert model.select_best_response(tok, "Q?", responses, pixels) == ranked
    by_min = model.select_best_response(tok, "Q?", responses, pixels, aggregation="min")
    mins = [min(s) for s in steps]
    assert by_min == [responses[i] for i in sorted(range(5), key=lambda i: -mins[i])]


def test_exact_ties_keep_input_order(ours, monkeypatch):
    model, tok = ours
    monkeypatch.setattr(prm, "score_steps", lambda *a, **k: [[0.5], [0.7, 0.3], [0.5], [0.9]])
    ranked = prm.select_best_response(model, tok, "Q?", ["a", "b", "c", "d"], None)
    assert ranked == ["d", "a", "b", "c"]  # a, b and c all score 0.5: input order


def test_bad_input_is_named(ours):
    model, tok = ours
    pixels = torch.randn(2, 3, 64, 64)
    with pytest.raises(ImageTokenMismatchError, match="2 tiles"):
        score_steps(model, tok, "Q?", ["a"], pixels, num_patches_list=[1])
    with pytest.raises(ImageTokenMismatchError, match="placeholder"):
        score_steps(model, tok, "Image-1: <image>\nQ?", ["a"], pixels, num_patches_list=[1, 1])
    with pytest.raises(ConfigError, match="max_steps"):
        score_steps(model, tok, "Q?", ["a"], pixels, max_steps=0)
    assert score_steps(model, tok, "Q?", [], pixels) == []
