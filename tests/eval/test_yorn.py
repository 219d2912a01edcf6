"""Yes/No extraction and the MME / POPE / HallusionBench ratings: tables worked by hand from
docs/mpo-prm-eval.md 3.5, and VLMEvalKit's ratings re-typed here (without pandas) on random data."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest

from internvl.errors import DataError
from internvl.eval.yorn import (canonical_answer, default_rating, extract_yes_no, hallusion_rating, mme_rating,
                                pope_rating)


@pytest.mark.parametrize("text, said", [
    ("Yes", "Yes"), ("yes.", "Yes"), ("YES!", "Yes"), ("No, there isn't.", "No"), ("no-one is there", "No"),
    ("Yes and no", "Unknown"), ("Yesterday", "Unknown"), ("I don't know", "Unknown"), ("", "Unknown"),
    ("The answer is yes", "Yes"), ("(no)", "No"), ("nope", "Unknown"),
])
def test_extract_yes_no(text, said):
    assert extract_yes_no(text) == said


def test_canonical_answer():
    assert [canonical_answer(a) for a in ("yes", " YES ", "No", "maybe")] == ["Yes", "Yes", "No", "maybe"]


def rec(score, **kw):
    return {"score": float(score), **kw}


def by_name(table):
    return {(r["level"], r["name"]): r for r in table}


def test_mme_as_worked_by_hand():
    records = [rec(1, category="color", image_key="1"), rec(1, category="color", image_key="1"),
               rec(1, category="color", image_key="2"), rec(0, category="color", image_key="2"),
               rec(0, category="OCR", image_key="3"), rec(0, category="OCR", image_key="3"),
               rec(1, category="OCR", image_key="4"), rec(1, category="OCR", image_key="4"),
               rec(1, category="code_reasoning", image_key="5"), rec(1, category="code_reasoning", image_key="5")]
    t = by_name(mme_rating(records))
    assert t[("category", "color")] == {"level": "category", "name": "color", "n": 4, "acc": 75.0, "acc+": 50.0,
                                            "score": 125.0}
    assert (t[("category", "OCR")]["acc"], t[("category", "OCR")]["acc+"]) == (50.0, 50.0)
    assert t[("category", "code_reasoning")]["score"] == 200.0
    assert t[("overall", "perception")]["score"] == 225.0 and t[("overall", "perception")]["categories"] == 2
    assert t[("overall", "reasoning")]["score"] == 200.0
    assert t[("overall", "Overall")]["acc"] == 70.0


def test_pope_as_worked_by_hand():
    records = [rec(1, answer="Yes", extracted="Yes", category="adversarial"),
               rec(0, answer="Yes", extracted="No", category="adversarial"),
               rec(0, answer="No", extracted="Yes", category="adversarial,popular"),  # in both, and twice overall
               rec(1, answer="No", extracted="No", category="popular"),
               rec(0, answer="No", extracted="Unknown", category="popular")]
    t = by_name(pope_rating(records))
    overall = t[("overall", "Overall")]
    assert overall["n"] == 6
    assert overall["precision"] == pytest.approx(100 / 3) and overall["recall"] == 50.0
    assert overall["F1"] == pytest.approx(40.0) and overall["acc"] == pytest.approx(100 / 3)
    assert overall["yes_ratio"] == 50.0
    assert t[("category", "adversarial")]["F1"] == pytest.approx(50.0)
    assert t[("category", "popular")]["F1"] == 0.0 and t[("category", "popular")]["acc"] == pytest.approx(100 / 3)


def test_hallusion_as_worked_by_hand():
    def h(index, score, l2):
        return rec(score, index=index, **{"l2-category": l2, "category": "VS" if index.startswith("VS") else "VD"},
                   where=f"row of {index}")
    records = [h("VS_chart_x_0_0_0", 1, "chart"), h("VS_chart_x_0_0_1", 0, "chart"), h("VS_chart_x_0_1_0", 1, "chart"),
               h("VS_chart_x_0_1_1", 1, "chart"), h("VD_map_x_1_0_0", 1, "map")]
    t = by_name(hallusion_rating(records))
    overall = t[("overall", "Overall")]
    assert overall["aAcc"] == 80.0
    assert overall["fAcc"] == pytest.approx(200 / 3)  # figures (chart,0,0) fail; (chart,0,1) and (map,1,0) pass
    assert overall["qAcc"] == pytest.approx(200 / 3)  # questions (chart,0,1) fail
    assert t[("category", "VS")]["fAcc"] == 50.0 and t[("l2-category", "map")]["qAcc"] == 100.0
    with pytest.raises(DataError, match="row of 12.*column 'index'.*six"):
        hallusion_rating([rec(1, index="12", where="row of 12")])


def test_default_rating():
    records = [rec(1, extracted="Yes", category="a", split="dev"), rec(0, extracted="No", category="b", split="dev"),
               rec(1, extracted="Yes", category="b", split="dev", **{"l2-category": "x"})]
    t = by_name(default_rating(records))
    assert t[("overall", "Overall")]["acc"] == pytest.approx(200 / 3)
    assert t[("overall", "Overall")]["yes_ratio"] == pytest.approx(200 / 3)
    assert t[("category", "b")]["acc"] == 50.0 and t[("l2-category", "x")]["n"] == 1
    assert t[("split", "dev")]["n"] == 3


# --------------------------------------------------------------- VLMEvalKit's ratings, re-typed (no pandas)
def ref_mme(records):
    stats = defaultdict(dict)
    for item in records:
        stats[item["category"]].setdefault(item["image_key"], []).append(item["score"])

    def acc(key, mode="normal"):
        values = []
        for val in stats[key].values():
            if mode == "normal":
                values.extend(val)
            else:
                values.append(val[0] * val[1])
        return np.mean(values) * 100
    return {k: acc(k) + acc(k, "plus") for k in stats}


def ref_pope(records):
    def f1(rows):
        y_true = np.array([1 if r["answer"] == "Yes" else 0 for r in rows])
        y_pred = np.array([1 if r["extracted"] == "Yes" else 0 for r in rows])
        tp = sum((y_true == 1) & (y_pred == 1))
        fp = sum((y_true == 0) & (y_pred == 1))
        fn = sum((y_true == 1) & (y_pred == 0))
        precision = tp / (tp + fp) if (tp + fp) != 0 else 0
        recall = tp / (tp + fn) if (tp + fn) != 0 else 0
        f = 2 * (precision * recall) / (precision + recall) if (precision + recall) != 0 else 0
        return f * 100, np.mean([r["score"] for r in rows]) * 100, precision * 100, recall * 100
    data = [dict(r, category=c) for r in records for c in r["category"].split(",")]
    out = {"Overall": f1(data)}
    for c in set(r["category"] for r in data):
        out[c] = f1([r for r in data if r["category"] == c])
    return out


def ref_hallusion(records):
    def fracc(rows, part):
        res = defaultdict(list)
        for line in rows:
            res[f"{line['l2-category']}_{line['index'].split('_')[3]}_{line['index'].split('_')[part]}"].append(
                line["score"])
        return np.mean([np.all(x) for x in res.values()]) * 100
    out = {"Overall": (np.mean([r["score"] for r in records]) * 100, fracc(records, 4), fracc(records, 5))}
    for key in ("category", "l2-category"):
        for c in set(r[key] for r in records):
            sub = [r for r in records if r[key] == c]
            out[c] = (np.mean([r["score"] for r in sub]) * 100, fracc(sub, 4), fracc(sub, 5))
    return out


def assert_tables_equal(ours, ref):
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key] == pytest.approx(tuple(float(v) for v in ref[key])), key


def test_ratings_match_the_reimplemented_official_ones():
    rng = random.Random(4)
    for _ in range(40):
        mme = [rec(rng.random() < 0.6, category=c, image_key=f"{c}{i}") for c in ("color", "OCR", "scene", "count")
               for i in range(rng.randint(1, 6)) for _ in range(2)]
        ours = {r["name"]: r["score"] for r in mme_rating(mme) if r["level"] == "category"}
        assert ours == pytest.approx(ref_mme(mme))
        pope = []
        for _ in range(rng.randint(5, 40)):
            answer = rng.choice(["Yes", "No"])
            said = rng.choice(["Yes", "No", "Unknown"])
            pope.append(rec(answer == said, answer=answer, extracted=said,
                            category=",".join(rng.sample(["adversarial", "popular", "random"], rng.randint(1, 2)))))
        ours = {r["name"]: (r["F1"], r["acc"], r["precision"], r["recall"]) for r in pope_rating(pope)}
        assert_tables_equal(ours, ref_pope(pope))
        hb = [rec(rng.random() < 0.7, index=f"VS_x_y_{rng.randint(0, 3)}_{rng.randint(0, 2)}_{rng.randint(0, 2)}",
                  category=rng.choice(["VS", "VD"]), where="", **{"l2-category": rng.choice(["chart", "map"])})
              for _ in range(rng.randint(3, 30))]
        ours = {r["name"]: (r["aAcc"], r["fAcc"], r["qAcc"]) for r in hallusion_rating(hb)}
        assert_tables_equal(ours, ref_hallusion(hb))
