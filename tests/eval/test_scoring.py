"""Scoring predictions files: the kind and metric chosen from columns and name (or forced), tables worked by hand
for multiple choice (vanilla and circular), yes/no and open questions, and bad pairings of data and predictions."""

from __future__ import annotations

import pytest
from PIL import Image

from internvl.errors import ConfigError, DataError
from internvl.eval.choice import circularize
from internvl.eval.scoring import ScoreOptions, infer_kind, infer_metric, is_circular, score
from internvl.eval.tsv import encode_image, read_benchmark, write_tsv

IMG = encode_image(Image.new("RGB", (8, 8), "red"))


def bench(tmp_path, name, rows, columns=None):
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    rows = [{"image": IMG, **r} if "image" not in r else r for r in rows]
    if "image" not in columns:
        columns = ["image", *columns]
    return read_benchmark(write_tsv(tmp_path / f"{name}.tsv", columns, rows))


def by_name(result):
    return {(r["level"], r["name"]): r for r in result.table}


def mcq_rows():
    return [{"index": str(i), "question": "Which animal?", "A": "cat", "B": "dog", "C": "bird", "answer": a,
             "category": c, "l2-category": "animals"} for i, (a, c) in enumerate([("B", "pets"), ("A", "pets"),
                                                                                  ("C", "wild")])]


def test_kind_metric_and_circularity_from_columns_and_name(tmp_path):
    assert infer_kind(bench(tmp_path, "Anything", mcq_rows())) == "mcq"
    yn = [{"index": "1", "question": "Is it?", "answer": "yes"}, {"index": "2", "question": "Is it?", "answer": "No"}]
    assert infer_kind(bench(tmp_path, "Custom", yn)) == "yorn"  # every answer is yes or no
    assert infer_kind(bench(tmp_path, "MME", [{"index": "1", "question": "Q", "answer": "x"}])) == "yorn"  # by name
    open_rows = [{"index": "1", "question": "What?", "answer": "red"}]
    assert infer_kind(bench(tmp_path, "Custom2", open_rows)) == "vqa"
    assert is_circular(bench(tmp_path, "MMBench_DEV_EN", mcq_rows()))
    assert not is_circular(bench(tmp_path, "X", mcq_rows()))
    assert is_circular(bench(tmp_path, "Shapes_circular", mcq_rows()))
    for name, metric in [("TextVQA_VAL", "vqa"), ("ChartQA_TEST", "relaxed"), ("OCRVQA_TEST", "exact"),
                         ("GQA", "exact"), ("DocVQA_VAL", "anls"), ("InfoVQA_VAL", "anls"), ("Mine", "exact")]:
        assert infer_metric(bench(tmp_path, name, open_rows)) == metric, name
    lists = [{"index": "1", "question": "What?", "answer": str(["red"] * 10)}]
    assert infer_metric(bench(tmp_path, "Mine2", lists)) == "vqa"  # several human answers: VQA accuracy
    with pytest.raises(ConfigError, match="--kind"):
        ScoreOptions(kind="essay")
    with pytest.raises(ConfigError, match="--metric"):
        ScoreOptions(metric="bleu")


def test_multiple_choice_vanilla(tmp_path):
    b = bench(tmp_path, "Plain", mcq_rows())
    result = score(b, {"0": "B", "1": "It is a cat.", "2": "no idea"})
    assert [r["extracted"] for r in result.records] == ["B", "A", ""]
    assert [r["score"] for r in result.records] == [1.0, 1.0, 0.0]
    t = by_name(result)
    assert t[("overall", "Overall")]["acc"] == pytest.approx(200 / 3)
    assert t[("category", "pets")]["acc"] == 100.0 and t[("category", "wild")]["acc"] == 0.0
    assert result.undecided == 1 and result.kind == "mcq" and result.rating == "mcq"
    assert result.headline == {"name": "Overall", "metric": "acc", "value": pytest.approx(200 / 3)}


def test_multiple_choice_circular(tmp_path):
    rows = circularize(mcq_rows()[:2])  # two questions, three rotations each
    b = bench(tmp_path, "Animals_circular", rows)
    texts = {"0": "dog", "1": "cat"}
    preds = {r["index"]: texts[r["g_index"]] for r in rows}  # always the right animal
    preds["2000001"] = "dog"  # question 1 fails in its last rotation
    result = score(b, preds)
    t = by_name(result)
    assert result.rating == "circular" and result.scored == 6
    assert t[("overall", "Overall")]["n"] == 2 and t[("overall", "Overall")]["acc"] == 50.0
    # the same file scored without circular grouping: 5 of 6 rows right
    flat = score(b, preds, ScoreOptions(kind="mcq"))
    assert flat.rating == "circular"  # the name decides
    assert score(bench(tmp_path, "Animals", rows), preds).table[0]["acc"] == pytest.approx(500 / 6)
    assert score(bench(tmp_path, "Animals2", rows), preds, ScoreOptions(circular=True)).table[0]["acc"] == 50.0


def test_circular_without_g_index_uses_index_modulo_and_needs_integers(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "g_index"} for r in circularize(mcq_rows()[:1])]
    b = bench(tmp_path, "MMBench_X", rows)
    assert score(b, {r["index"]: "dog" for r in rows}).table[0]["acc"] == 100.0
    bad = bench(tmp_path, "MMBench_Y", [{**mcq_rows()[0], "index": "q1"}])
    with pytest.raises(DataError, match=r"row 1 \(index q1\), column 'index': circular evaluation needs integer"):
        score(bad, {"q1": "B"})


def test_a_group_is_scored_through_its_original_row(tmp_path):
    rows = circularize(mcq_rows()[:2])
    b = bench(tmp_path, "Partial_circular", rows)
    preds = {r["index"]: "dog" for r in rows if r["g_index"] == "0" and r["index"] != "0"}  # original missing
    preds.update({r["index"]: "cat" for r in rows if r["g_index"] == "1"})
    result = score(b, preds)
    assert result.table[0]["n"] == 1 and result.table[0]["acc"] == 100.0
    assert result.missing == 1 and "1 of 6 rows have no prediction" in result.notes[-1]


def test_yes_no_and_mme(tmp_path):
    rows = [{"index": str(i), "question": "Is it?", "answer": a, "category": "color", "image_path": f"img{i // 2}"}
            for i, a in enumerate(["Yes", "No", "yes", "No"])]
    b = bench(tmp_path, "MME", rows)
    result = score(b, {"0": "Yes.", "1": "no", "2": "It is yes", "3": "maybe"})
    assert [r["extracted"] for r in result.records] == ["Yes", "No", "Yes", "Unknown"]
    assert result.rating == "mme" and result.undecided == 1
    t = by_name(result)
    assert (t[("category", "color")]["acc"], t[("category", "color")]["acc+"]) == (75.0, 50.0)
    assert result.headline == {"name": "perception", "metric": "score", "value": 125.0}
    plain = score(bench(tmp_path, "Plain_YN", rows), {"0": "Yes", "1": "Yes"})
    assert plain.rating == "yorn" and plain.table[0]["acc"] == 50.0 and plain.missing == 2


def test_open_questions(tmp_path):
    rows = [{"index": "1", "question": "Color?", "answer": str(["red"] * 9 + ["dark red"])},
            {"index": "2", "question": "Count?", "answer": str(["two"] * 2 + ["3"] * 8)}]
    b = bench(tmp_path, "TextVQA_VAL", rows)
    result = score(b, {"1": "Red.", "2": "2"})
    assert [r["score"] for r in result.records] == [1.0, pytest.approx(0.6)]
    assert result.metric == "vqa" and result.table[0]["vqa"] == pytest.approx(80.0)
    forced = score(b, {"1": "red", "2": "3"}, ScoreOptions(metric="exact"))
    assert forced.metric == "exact" and forced.table[0]["exact"] == 100.0
    single = score(bench(tmp_path, "Mine", [{"index": "1", "question": "Q", "answer": "3"}]), {"1": "3"},
                   ScoreOptions(metric="vqa"))
    assert single.table[0]["vqa"] == 0.0 and "single reference" in single.notes[0]
    docs = score(bench(tmp_path, "DocVQA_VAL", [{"index": "1", "question": "Q", "answer": "hello"}]), {"1": "hallo"})
    assert docs.metric == "anls" and docs.table[0]["anls"] == pytest.approx(80.0)


def test_bad_pairings(tmp_path):
    b = bench(tmp_path, "Plain", mcq_rows())
    with pytest.raises(DataError, match=r"preds.jsonl: 1 prediction\(s\) for indexes that .*Plain.tsv does not have "
                                        r"\(first: '99'\)"):
        score(b, {"0": "A", "99": "B"}, source="preds.jsonl")
    with pytest.raises(DataError, match="no predictions"):
        score(b, {})
    no_answers = bench(tmp_path, "Test", [{"index": "1", "question": "Q"}])
    with pytest.raises(DataError, match="no 'answer' column"):
        score(no_answers, {"1": "x"})
