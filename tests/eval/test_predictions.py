"""Predictions files: the incremental log survives a torn last line; VLMEvalKit's TSV / CSV / XLSX files read
back as index -> prediction."""

from __future__ import annotations

import json

import openpyxl
import pytest

from internvl.errors import DataError
from internvl.eval.predictions import PredictionLog, read_predictions
from internvl.eval.tsv import write_tsv


def test_log_appends_and_reloads(tmp_path):
    path = tmp_path / "d" / "predictions.jsonl"
    with PredictionLog(path) as log:
        log.append("1", "yes")
        log.append("2", "", error="index 2: broken image")
    with PredictionLog(path) as log:  # a second run appends to the same file
        log.append("3", "línea\ncon salto")
    records = PredictionLog(path).load()
    assert list(records) == ["1", "2", "3"] and records["3"]["prediction"] == "línea\ncon salto"
    assert read_predictions(path) == {"1": "yes", "2": "", "3": "línea\ncon salto"}  # a failed row scores as empty


def test_log_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"index": "1", "prediction": "a"}) + "\n" + '{"index": "2", "predi')
    log = PredictionLog(path)
    assert list(log.load()) == ["1"]
    assert path.read_text().endswith("}\n")  # truncated back to the last complete line
    log.append("2", "b")
    log.close()
    assert list(PredictionLog(path).load()) == ["1", "2"]


def test_log_rejects_a_corrupt_line_in_the_middle(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"index": "1", "prediction": "a"}\nnot json\n{"index": "2", "prediction": "b"}\n')
    with pytest.raises(DataError, match="line 2 is not a prediction record"):
        PredictionLog(path).load()


def test_vlmevalkit_files(tmp_path):
    write_tsv(tmp_path / "p.tsv", ["index", "question", "prediction"],
              [{"index": 1, "question": "q", "prediction": "A"}, {"index": 2, "question": "q", "prediction": ""}])
    assert read_predictions(tmp_path / "p.tsv") == {"1": "A", "2": ""}
    (tmp_path / "p.csv").write_text("Index,Prediction\n1,\"B, because\"\n2.0,C\n", encoding="utf-8")
    assert read_predictions(tmp_path / "p.csv") == {"1": "B, because", "2": "C"}
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["index", "question", "prediction"])
    sheet.append([1, "q", "A"])
    sheet.append([2.0, "q", 3])  # numbers as pandas writes them
    sheet.append([None, None, None])
    book.save(tmp_path / "p.xlsx")
    assert read_predictions(tmp_path / "p.xlsx") == {"1": "A", "2": "3"}


@pytest.mark.parametrize("name, content, message", [
    ("p.txt", "x", r"predictions must be \.jsonl"),
    ("p.tsv", "index\tanswer\n1\tA\n", "missing column 'prediction'"),
    ("p.tsv", "index\tprediction\n1\tA\n1\tB\n", r"row 2, column 'index': '1' again \(first in row 1\)"),
    ("p.xlsx", "not a zip", "not a readable .xlsx"),
    ("missing.jsonl", None, "no such file"),
])
def test_bad_prediction_files(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        read_predictions(tmp_path / name)
