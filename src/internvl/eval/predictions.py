"""Predictions on disk: the incremental log `eval run` appends to, and reading any predictions file.

The log (`predictions.jsonl`) gets one JSON line per finished row, flushed at once, so a run killed at any
moment (kill -9 included) keeps every answer it completed; the next run reads the log and generates only
the rows it lacks. A line cut short by the kill is dropped (the file is truncated back to its last
complete line) and that row is generated again. A row whose generation failed is logged with an `error`
and retried by the next run.

`read_predictions` takes our log, or VLMEvalKit's predictions file (TSV, CSV or XLSX with `index` and
`prediction` columns), and returns index -> prediction.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from ..errors import DataError
from .tsv import index_key, read_rows


class PredictionLog:
    """Append-only JSONL of {"index", "prediction", ...} records, one per finished row."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = None

    def load(self) -> dict[str, dict]:
        """index -> record of every complete line; drops (and truncates away) a torn last line."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # the process died in the middle of writing this line
            with open(self.path, "r+b") as f:
                f.truncate(end)
        records: dict[str, dict] = {}
        for number, line in enumerate(raw[:end].decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = index_key(rec["index"])
                str(rec["prediction"])
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{self.path}: line {number} is not a prediction record "
                                f"({{\"index\": ..., \"prediction\": ...}}): {line[:80]!r}") from None
            records[key] = rec
        return records

    def append(self, index: str, prediction: str, **extra: object) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        line = json.dumps({"index": index, "prediction": prediction, **extra}, ensure_ascii=False) + "\n"
        self._file.write(line)
        self._file.flush()  # in the OS now: survives the process being killed

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_predictions(path: str | os.PathLike) -> dict[str, str]:
    """index -> prediction from our `predictions.jsonl` or a VLMEvalKit predictions file (.tsv/.csv/.xlsx).

    Raises:
        DataError: Unknown extension, no `index` / `prediction` column, a duplicate index.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        if not path.exists():
            raise DataError(f"{path}: no such file")
        return {k: "" if r.get("error") else str(r["prediction"]) for k, r in PredictionLog(path).load().items()}
    if suffix == ".tsv":
        columns, rows = read_rows(path)
    elif suffix == ".csv":
        columns, rows = _read_csv(path)
    elif suffix == ".xlsx":
        columns, rows = _read_xlsx(path)
    else:
        raise DataError(f"{path}: predictions must be .jsonl (internvl eval run), or .tsv, .csv or .xlsx with "
                        "'index' and 'prediction' columns (VLMEvalKit)")
    for needed in ("index", "prediction"):
        if needed not in columns:
            raise DataError(f"{path}: missing column {needed!r} (the columns are {', '.join(columns)})")
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for number, cells in rows:
        key = index_key(cells["index"])
        if key in out:
            raise DataError(f"{path}: row {number}, column 'index': {key!r} again (first in row {first[key]})")
        out[key], first[key] = cells["prediction"], number
    return out


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            records = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not records:
        raise DataError(f"{path}: empty file")
    header = [c.strip().lower() for c in records[0]]
    return header, [(n, dict(zip(header, cells))) for n, cells in enumerate(records[1:], 1) if cells]


def _read_xlsx(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        import openpyxl
    except ImportError:
        raise DataError(f"{path}: reading .xlsx needs openpyxl (pip install openpyxl, or pip install "
                        "'internvl[eval]'); VLMEvalKit writes .tsv instead with PRED_FORMAT=tsv") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile, XML and its own errors on a bad file
        raise DataError(f"{path}: not a readable .xlsx file ({type(e).__name__}: {e})") from None
    try:
        values = list(book.worksheets[0].iter_rows(values_only=True))
    finally:
        book.close()
    if not values:
        raise DataError(f"{path}: empty sheet")
    header = [str(c).strip().lower() if c is not None else "" for c in values[0]]

    return header, [(n, {h: "" if v is None else str(v) for h, v in zip(header, row)})
                    for n, row in enumerate(values[1:], 1) if any(v is not None for v in row)]
