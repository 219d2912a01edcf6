"""Reports of benchmark runs: summary.json, a per-category CSV, the printed table, PNG charts (Pillow).

A run's summary is `{"model", "label", "datasets": {name: DatasetScore.to_json() + run counts}, ...}`.
Charts are horizontal bars, one line per table row (dataset overall, then its splits and categories), so
any number of categories and long names fit; `compare` draws several runs side by side on the same lines.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import DataError

COLORS = [(52, 101, 164), (204, 102, 0), (78, 154, 6), (164, 0, 0), (117, 80, 123), (193, 125, 17),
          (46, 52, 54), (0, 128, 128)]
BASE_COLUMNS = ["dataset", "level", "name", "n"]


def table_rows(summary: dict) -> list[dict]:
    """Every table row of every dataset, with its dataset name in front."""
    return [{"dataset": name, **row} for name, ds in summary["datasets"].items() for row in ds["table"]]


def write_csv(summary: dict, path: str | os.PathLike) -> Path:
    """One line per (dataset, level, name): n and every metric (columns in order of first appearance)."""
    rows = table_rows(summary)
    columns = list(BASE_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    return Path(path)


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def format_summary(summary: dict) -> str:
    """The printed report: per dataset a header line, then its table."""
    blocks = []
    for name, ds in summary["datasets"].items():
        head = ds["headline"]
        kind = ds["rating"] if ds["rating"] != ds["kind"] else ds["kind"]
        line = (f"{name} ({kind}, {ds['scored']} of {ds['rows']} rows scored): "
                f"{head['name']} {head['metric']} {head['value']:.2f}")
        metrics = [k for row in ds["table"] for k in row if k not in ("level", "name", "n")]
        metrics = list(dict.fromkeys(metrics))
        width = max([len(r["name"]) for r in ds["table"]] + [8]) + 2
        lines = [line, f"  {'':<12}{'':<{width}}{'n':>7}" + "".join(f"{m:>11}" for m in metrics)]
        for row in ds["table"]:
            level = "" if row["level"] == "overall" else row["level"]
            lines.append(f"  {level:<12}{row['name']:<{width}}{row['n']:>7}"
                         + "".join(f"{_fmt(row[m]) if m in row else '':>11}" for m in metrics))
        lines += [f"  note: {n}" for n in ds.get("notes", [])]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def line_label(dataset: str, row: dict) -> str:
    """A table row's label in charts: the dataset for its overall row, indented names for its groups."""
    level, name = row["level"], row["name"]
    if level == "overall":
        return dataset if name == "Overall" else f"{dataset} {name}"
    return f"  {name}" if level == "category" else f"  {name} ({'l2' if level == 'l2-category' else level})"


def chart_lines(summary: dict) -> list[tuple[str, float | None]]:
    """(label, value in percent) per table row, using each dataset's chart metric."""
    return [(line_label(name, row), row.get(ds["chart_metric"]))
            for name, ds in summary["datasets"].items() for row in ds["table"]]


def bar_chart(labels: list[str], series: list[tuple[str, list[float | None]]], title: str,
              path: str | os.PathLike) -> Path:
    """Horizontal grouped bars in percent: one line per label, one bar per series (legend on top)."""
    font = ImageFont.load_default()
    bar, gap = 12, 8
    label_w = max([len(s) for s in labels] + [10]) * 6 + 16
    plot_w = 520
    line_h = bar * len(series) + gap
    top = 40 + 16 * ((len(series) + 3) // 4)
    width, height = label_w + plot_w + 60, top + line_h * len(labels) + 30
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill="black", font=font)
    for i, (name, _) in enumerate(series):
        x, y = 10 + (i % 4) * 200, 24 + 16 * (i // 4)
        draw.rectangle((x, y, x + 10, y + 10), fill=COLORS[i % len(COLORS)])
        draw.text((x + 16, y - 1), name[:30], fill="black", font=font)
    for pct in range(0, 101, 25):
        x = label_w + plot_w * pct / 100
        draw.line((x, top - 4, x, height - 24), fill=(225, 225, 225))
        draw.text((x - 8, height - 20), f"{pct}%", fill="black", font=font)
    for j, label in enumerate(labels):
        y0 = top + j * line_h
        draw.text((8, y0 + (line_h - gap) / 2 - 6), label, fill="black", font=font)
        for i, (_, values) in enumerate(series):
            value = values[j]
            if value is None:
                continue
            y = y0 + i * bar
            draw.rectangle((label_w, y, label_w + plot_w * max(0.0, min(value, 100.0)) / 100, y + bar - 2),
                           fill=COLORS[i % len(COLORS)])
            draw.text((label_w + plot_w * max(0.0, min(value, 100.0)) / 100 + 4, y), f"{value:.1f}",
                      fill="black", font=font)
    img.save(path)
    return Path(path)


def write_reports(summary: dict, out: str | os.PathLike) -> list[Path]:
    """summary.json, categories.csv and scores.png in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = chart_lines(summary)
    bar_chart([label for label, _ in lines], [(summary.get("label", "model"), [v for _, v in lines])],
              f"{summary.get('label', 'model')}: scores in percent", out / "scores.png")
    return [out / "summary.json", write_csv(summary, out / "categories.csv"), out / "scores.png"]


# ---------------------------------------------------------------------------------------------- compare
def load_summary(directory: str | os.PathLike) -> dict:
    path = Path(directory)
    path = path if path.suffix == ".json" else path / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (compare takes directories written by internvl eval run or "
                        "eval score --out)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable summary ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("datasets"), dict):
        raise DataError(f"{path}: not an evaluation summary (no 'datasets')")
    return summary


def compare(summaries: list[tuple[str, dict]]) -> tuple[list[str], list[tuple[str, list[float | None]]], str]:
    """(line labels, one series per run, the printed table) for runs given as (label, summary)."""
    keys: list[tuple[str, str, str]] = []
    labels: dict[tuple[str, str, str], str] = {}
    values: list[dict[tuple[str, str, str], float | None]] = []
    for _, summary in summaries:
        mine = {}
        for name, ds in summary["datasets"].items():
            for row in ds["table"]:
                key = (name, row["level"], row["name"])
                if key not in labels:
                    keys.append(key)
                    labels[key] = line_label(name, row)
                mine[key] = row.get(ds["chart_metric"])
        values.append(mine)
    first: dict[str, int] = {}
    for k in keys:
        first.setdefault(k[0], len(first))
    keys.sort(key=lambda k: first[k[0]])  # stable: a dataset's rows stay together, in first-seen order
    series = [(label, [v.get(k) for k in keys]) for (label, _), v in zip(summaries, values)]
    width = max([len(labels[k]) for k in keys] + [8]) + 2
    header = f"{'':<{width}}" + "".join(f"{label[:14]:>16}" for label, _ in summaries)
    lines = [header] + [f"{labels[k]:<{width}}" + "".join(
        f"{'' if s[1][i] is None else f'{s[1][i]:.2f}':>16}" for s in series) for i, k in enumerate(keys)]
    return [labels[k] for k in keys], series, "\n".join(lines)
