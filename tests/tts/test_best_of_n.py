"""Best-of-N: N candidates in one engine batch equal N single requests with the same seeds; the harness's
sampling settings; answer extraction and majority vote; each strategy picks what its scores say; the CLI
(`chat --best-of`, `eval shapes --best-of`) end to end on a random tiny model, and its errors."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from internvl.chat import InternVLChatModel, from_pretrained
from internvl.checkpoint.loader import save_checkpoint
from internvl.cli import main
from internvl.engine.engine import Engine
from internvl.errors import ConfigError
from internvl.eval.runner import EvalConfig, evaluate
from internvl.presets import PRESETS
from internvl.processing.image import load_question_images
from internvl.processing.prompt import build_query
from internvl.processing.templates import get_template
from internvl.tiny import EXAMPLES_DIR
from internvl.tiny.tokenizer import train_tokenizer
from internvl.tiny.world import make_example
from internvl.tts.best_of_n import (Verifier, best_of_n, candidate_params, choose, extract_answer, majority_index,
                                    run_groups)
from internvl.tts.evaluate import pairwise_accuracy, sizes
from internvl.tts.report import format_curve
from internvl.tts.prm import score_steps

IMAGE = str(EXAMPLES_DIR / "shapes-1.png")
bon = importlib.import_module("internvl.tts.best_of_n")  # the module (the package exports the function)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = InternVLChatModel(PRESETS["tiny"].config)
    model.init_weights(std=0.2)  # large random weights: sampled candidates differ from each other
    tok = train_tokenizer()
    model._bind(tok)
    return model.float().eval(), tok


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    model, tok = tiny
    path = save_checkpoint(model, tmp_path_factory.mktemp("bon") / "tiny", "official")
    tok.save_pretrained(path)
    return path


def _prompt(model, tok, example):
    cfg = model.config
    tiles = load_question_images(example.images(), cfg, 2)
    query = build_query(get_template(cfg.template), example.prompt, None, [t.shape[0] for t in tiles],
                        cfg.num_image_token, cfg.system_message)
    return tok(query, return_tensors=None)["input_ids"], torch.cat(tiles)


def test_candidate_params_are_the_harness_settings():
    params = candidate_params(4, max_new_tokens=32, seed=10)
    assert params[0].temperature == 0 and params[0].seed is None
    assert [(p.temperature, p.top_p, p.seed) for p in params[1:]] == [(0.6, 0.95, 11), (0.6, 0.95, 12), (0.6, 0.95, 13)]
    assert {p.max_new_tokens for p in params} == {32}
    with pytest.raises(ConfigError, match="N >= 1"):
        candidate_params(0)
    with pytest.raises(ConfigError, match="temperature"):
        candidate_params(2, temperature=0)


def test_one_batch_equals_single_requests_with_the_same_seeds(tiny):
    model, tok = tiny
    ids, pixels = _prompt(model, tok, make_example(3))
    params = candidate_params(6, max_new_tokens=12, seed=100)
    engine = bon.make_engine(model, tok, max_batch=6)
    seqs = bon.submit_group(engine, ids, pixels, params)
    admitted = engine.step()  # the whole group is admitted (prefilled) in the first step, then decodes together
    assert {s.id for s in admitted} == {s.id for s in seqs}
    while engine.has_work():
        engine.step()
    together = [s.text.strip() for s in seqs]
    alone = []
    for p in params:  # a fresh engine per request, the images encoded by the engine itself
        engine = bon.make_engine(model, tok, max_batch=1)
        (seq,) = engine.generate([(ids, pixels, p)])
        alone.append(seq.text.strip())
    assert together == alone
    assert len(set(together)) > 2  # sampling really varies the candidates
    assert bon.generate_candidates(bon.make_engine(model, tok, 6), ids, pixels, params) == together


def test_run_groups_keeps_order_across_many_groups(tiny):
    model, tok = tiny
    prompts = [_prompt(model, tok, make_example(s)) for s in (1, 2, 3)]
    groups = [(ids, pix, candidate_params(3, 6, seed=7 * i)) for i, (ids, pix) in enumerate(prompts)]
    batched = run_groups(bon.make_engine(model, tok, max_batch=4), groups)
    assert batched == [bon.generate_candidates(bon.make_engine(model, tok, 3), *g) for g in groups]


@pytest.mark.parametrize("response, answer", [
    ("3 objects: red circle\n\ncircles: red circle\n\nAnswer: 1", "1"),
    ("Answer: 2\n\nAnswer: 3", "3"),  # the last one counts
    ("Final answer: B", "B"),
    ("  yes  ", "yes"),  # no marker: the whole response
    ("Answer:", ""),
])
def test_extract_answer(response, answer):
    assert extract_answer(response) == answer


def test_majority_vote_and_ties():
    assert majority_index(["Answer: 2", "Answer: 3", "Answer: 3", "Answer: 2", "Answer: 3"]) == 1
    assert majority_index(["Answer: Red.", "red", "Answer: blue"]) == 0  # normalised answers agree
    assert majority_index(["a", "b", "b", "a"]) == 0  # a tie goes to the answer seen first (the greedy one)
    with pytest.raises(ConfigError):
        majority_index([])
    assert choose("prm", ["x", "y", "z"], [0.2, 0.7, 0.7]) == 1
    with pytest.raises(ConfigError, match="strategy"):
        choose("best", ["x"], [1.0])
    with pytest.raises(ConfigError, match="one score"):
        choose("orm", ["x", "y"], [1.0])


@pytest.mark.parametrize("strategy", ["prm", "orm", "majority"])
def test_best_of_n_picks_what_its_strategy_says(tiny, strategy):
    model, tok = tiny
    example = make_example(5)
    _, pixels = _prompt(model, tok, example)
    verifier = Verifier(model, tok)  # the random model doubles as a PRM
    result = best_of_n(model, tok, pixels, example.question, n=5, strategy=strategy, verifier=verifier,
                       generation_config={"max_new_tokens": 10}, seed=3)
    assert len(result.candidates) == 5 and result.response == result.candidates[result.index]
    engine = bon.make_engine(model, tok, 5)
    query = build_query(get_template(model.config.template), example.question, None, [pixels.shape[0]],
                        model.num_image_token, model.config.system_message)
    again = bon.generate_candidates(engine, tok(query, return_tensors=None)["input_ids"], pixels,
                                    candidate_params(5, 10, seed=3))
    assert result.candidates == again  # the same greedy + seeded candidates
    if strategy == "majority":
        assert result.scores is None and result.index == majority_index(result.answers)
    else:
        steps = score_steps(model, tok, "<image>\n" + example.question, result.candidates, pixels,
                            max_steps=1 if strategy == "orm" else None)
        expect = [s[-1] if strategy == "orm" else sum(s) / len(s) for s in steps]
        assert result.scores == pytest.approx(expect, abs=1e-6)
        assert result.index == max(range(5), key=lambda i: (expect[i], -i))


def test_best_of_n_errors(tiny):
    model, tok = tiny
    _, pixels = _prompt(model, tok, make_example(5))
    with pytest.raises(ConfigError, match="strategy"):
        best_of_n(model, tok, pixels, "Q?", n=2, strategy="vote")
    big = Verifier(model, tok)
    big.model = type("M", (), {"config": model.config.replace(force_image_size=192)})()
    with pytest.raises(ConfigError, match="prm_pixel_values"):
        best_of_n(model, tok, pixels, "Q?", n=2, verifier=big, generation_config={"max_new_tokens": 2})


def test_eval_best_of_n_curve_uses_prefixes_of_the_same_candidates(tiny, tmp_path):
    model, tok = tiny
    verifier = Verifier(model, tok)
    from internvl.tts.evaluate import evaluate_best_of_n
    cfg = EvalConfig(n=7, seed=2, max_tiles=1, max_new_tokens=4, best_of=4, out=str(tmp_path / "b4"))
    four = evaluate_best_of_n(cfg, model, tok, verifier)
    cfg2 = EvalConfig(n=7, seed=2, max_tiles=1, max_new_tokens=4, best_of=2, out=str(tmp_path / "b2"))
    two = evaluate_best_of_n(cfg2, model, tok, verifier)
    assert four["curve"]["n"] == [1, 2, 4] and two["curve"]["n"] == [1, 2]
    rows4 = [json.loads(line) for line in open(tmp_path / "b4" / "candidates.jsonl")]
    rows2 = [json.loads(line) for line in open(tmp_path / "b2" / "candidates.jsonl")]
    assert [r["candidates"][:2] for r in rows4] == [r["candidates"] for r in rows2]
    for k in ("prm", "orm", "majority", "pass"):
        assert four["curve"][k][:2] == pytest.approx(two["curve"][k])
    # the curve is what the recorded scores say
    for i, n in enumerate(four["curve"]["n"]):
        best = [max(range(n), key=lambda j: (r["prm_scores"][j], -j)) for r in rows4]
        assert four["curve"]["prm"][i] == pytest.approx(sum(r["correct"][b] for r, b in zip(rows4, best)) / 7)
        assert four["curve"]["pass"][i] == pytest.approx(sum(any(r["correct"][:n]) for r in rows4) / 7)
    assert four["curve"]["prm"][0] == four["curve"]["majority"][0] == four["greedy_accuracy"]
    assert (tmp_path / "b4" / "best_of_n.png").stat().st_size > 1000
    assert sizes(16) == [1, 2, 4, 8, 16] and sizes(6) == [1, 2, 4, 6] and sizes(1) == [1]
    assert four["verifier_pairwise"]["prm"] == pairwise_accuracy(rows4, "prm_scores")
    p = four["verifier_pairwise"]["prm"]
    if p["pairs"]:  # random weights: some samples may have no right (or no wrong) candidate at all
        assert f"of {p['pairs']} pairs" in format_curve(four)


def test_pairwise_accuracy_counts_within_sample_pairs_only():
    records = [  # sample 1: the right one scores higher; sample 2: lower, and a tie
        {"correct": [True, False, False], "prm_scores": [0.9, 0.5, 0.1]},
        {"correct": [False, True, False], "prm_scores": [0.8, 0.2, 0.2]},
        {"correct": [True, True], "prm_scores": [0.1, 0.2]},  # no wrong candidate: no pair
        {"correct": [False], "prm_scores": []},
    ]
    # 2 of the 4 pairs win outright, one loses, one ties (half)
    assert pairwise_accuracy(records, "prm_scores") == {"pairs": 4, "accuracy": 2.5 / 4}
    assert pairwise_accuracy(records, "orm_scores") == {"pairs": 0, "accuracy": None}
    text = format_curve({"curve": {"n": [1], "majority": [0.5]}, "per_category": {}, "best_of": 1,
                         "verifier_pairwise": {"prm": {"pairs": 4, "accuracy": 0.625}}})
    assert "62.5% of 4 pairs" in text


def test_cli_chat_and_eval_best_of(checkpoint, tmp_path, capsys):
    args = ["chat", "--model", str(checkpoint), "--prm", str(checkpoint), "--image", IMAGE, "--max-new-tokens", "6",
            "--best-of", "3", "--dtype", "fp32"]
    assert main(args + ["How many objects are there?"]) == 0
    printed = capsys.readouterr().out.strip()
    model, tok = from_pretrained(checkpoint, dtype=torch.float32)
    tiles = load_question_images([IMAGE], model.config)
    want = best_of_n(model, tok, torch.cat(tiles), "How many objects are there?", n=3, verifier=Verifier(model, tok),
                     generation_config={"max_new_tokens": 6})
    assert printed == want.response
    assert main(args[:-2] + ["--best-of", "3", "--strategy", "majority", "Is there a red circle?"]) == 0
    out = tmp_path / "ev"
    assert main(["eval", "shapes", "--model", str(checkpoint), "--prm", str(checkpoint), "--n", "7", "--best-of", "2",
                 "--max-tiles", "1", "--max-new-tokens", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "majority" in text and "pass" in text and (out / "best_of_n.png").exists()
    assert json.loads((out / "summary.json").read_text())["curve"]["n"] == [1, 2]


def test_cli_best_of_errors_are_one_line(checkpoint, tmp_path, capsys):
    base = ["chat", "--model", str(checkpoint), "--image", IMAGE, "--dtype", "fp32"]
    with pytest.raises(SystemExit) as stop:  # argparse's own one-line usage error
        main(base + ["--best-of", "0", "Q?"])
    assert stop.value.code == 2
    assert "argument --best-of: must be >= 1, got 0" in capsys.readouterr().err
    assert main(base + ["--best-of", "2", "--prm", str(tmp_path / "missing"), "Q?"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing" in err and "\n" not in err
    assert main(["chat", "--model", str(checkpoint), "--best-of", "2", "--strategy", "majority",
                 "--video", IMAGE, "Q?"]) == 2
    assert "video" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["eval", "shapes", "--model", str(checkpoint), "--best-of", "0", "--n", "1"])
    assert stop.value.code == 2 and "argument --best-of: must be >= 1" in capsys.readouterr().err


def test_a_missing_default_prm_says_how_to_get_one(tmp_path, monkeypatch):
    import internvl.tiny as tiny_pkg
    monkeypatch.setattr(tiny_pkg, "PRM_DIR", tmp_path / "prm")
    with pytest.raises(ConfigError, match="make tiny-prm"):
        Verifier.load(str(tmp_path / "prm"))
