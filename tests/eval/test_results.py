"""Reports: summary.json, the per-category CSV, the printed table, the PNG chart, and several runs compared."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from internvl.cli import main
from internvl.errors import DataError
from internvl.eval.results import COLORS, compare, format_summary, load_summary, write_reports


def summary(label, mcq_acc, pets_acc, yn_f1):
    mcq = {"kind": "mcq", "rating": "mcq", "rows": 4, "scored": 4, "headline": {"name": "Overall", "metric": "acc",
                                                                               "value": mcq_acc},
           "chart_metric": "acc", "notes": ["a note"],
           "table": [{"level": "overall", "name": "Overall", "n": 4, "acc": mcq_acc},
                     {"level": "l2-category", "name": "animals", "n": 4, "acc": mcq_acc},
                     {"level": "category", "name": "pets", "n": 2, "acc": pets_acc}]}
    pope = {"kind": "yorn", "rating": "pope", "rows": 2, "scored": 2, "chart_metric": "F1",
            "headline": {"name": "Overall", "metric": "F1", "value": yn_f1},
            "table": [{"level": "overall", "name": "Overall", "n": 2, "F1": yn_f1, "acc": 50.0, "precision": 100.0,
                       "recall": 50.0, "yes_ratio": 25.0}]}
    return {"label": label, "datasets": {"Pets": mcq, "POPE": pope}}


def test_reports(tmp_path):
    s = summary("run-a", 75.0, 50.0, 66.6667)
    paths = write_reports(s, tmp_path)
    assert [p.name for p in paths] == ["summary.json", "categories.csv", "scores.png"]
    assert json.loads((tmp_path / "summary.json").read_text()) == s
    with open(tmp_path / "categories.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["dataset", "level", "name", "n", "acc", "F1", "precision", "recall", "yes_ratio"]
    assert [(r["dataset"], r["name"], r["acc"]) for r in rows] == [
        ("Pets", "Overall", "75.0"), ("Pets", "animals", "75.0"), ("Pets", "pets", "50.0"), ("POPE", "Overall", "50.0")]
    assert rows[3]["F1"] == "66.6667" and rows[0]["F1"] == ""
    with Image.open(tmp_path / "scores.png") as chart:
        assert chart.height > 4 * 20
        assert COLORS[0] in {c for _, c in chart.convert("RGB").getcolors(10**6)}
    text = format_summary(s)
    assert "Pets (mcq, 4 of 4 rows scored): Overall acc 75.00" in text
    assert "POPE (pope, 2 of 2 rows scored): Overall F1 66.67" in text
    assert "l2-category animals" in text and "note: a note" in text


def test_compare_puts_runs_side_by_side(tmp_path):
    a, b = summary("a", 75.0, 50.0, 66.0), summary("b", 25.0, 100.0, 10.0)
    b["datasets"]["Pets"]["table"].append({"level": "category", "name": "wild", "n": 2, "acc": 0.0})
    labels, series, table = compare([("a", a), ("b", b)])
    assert labels == ["Pets", "  animals (l2)", "  pets", "  wild", "POPE"]  # a dataset's lines stay together
    assert series == [("a", [75.0, 75.0, 50.0, None, 66.0]), ("b", [25.0, 25.0, 100.0, 0.0, 10.0])]
    assert table.splitlines()[1].split() == ["Pets", "75.00", "25.00"]
    for label, s in (("a", a), ("b", b)):
        write_reports(s, tmp_path / label)
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.png")]) == 0
    with Image.open(tmp_path / "c.png") as chart:
        colors = {c for _, c in chart.convert("RGB").getcolors(10**6)}
        assert COLORS[0] in colors and COLORS[1] in colors


def test_compare_errors(tmp_path, capsys):
    with pytest.raises(DataError, match="no such file"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(DataError, match="not an evaluation summary"):
        load_summary(tmp_path)
    assert main(["eval", "compare", str(tmp_path / "nothing")]) == 2
    assert "error:" in capsys.readouterr().err
