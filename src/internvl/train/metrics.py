"""Training metrics: one JSON line per logged step, TensorBoard when it is installed, a PNG loss curve.

Spec section 5. Only rank 0 writes. `metrics.jsonl` is the record of the run: a resumed run first drops
the lines past its checkpoint's step (the interrupted run may have logged steps it never saved), so the file
always reads as one uninterrupted run. The loss curve is drawn with Pillow (no matplotlib); an MPO run also
gets `mpo_curves.png`, one panel per preference metric.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

METRICS_FILE, CURVE_FILE, MPO_CURVES_FILE = "metrics.jsonl", "loss_curve.png", "mpo_curves.png"
MPO_PANELS = ("loss_sigmoid", "loss_bco_pair", "loss_sft", "rewards/accuracies", "rewards/margins", "bco_delta")


class MetricsLog:
    """Appends metric rows to `output_dir/metrics.jsonl` (and TensorBoard's event files if available)."""

    def __init__(self, output_dir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = [r for r in read_metrics(self.path) if resume_step is not None and r.get("step", 0) <= resume_step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)  # a fresh run starts an empty file; a resumed one keeps its past
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                pass

    def log(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics.jsonl (an absent file has none; a torn last line from a crash is dropped)."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def draw_loss_curve(steps: list[int], losses: list[float], path: str | os.PathLike,
                    title: str = "training loss", size: tuple[int, int] = (800, 480)) -> Path:
    """Plot loss against step as a PNG: axes with round ticks, the raw curve, and a moving average."""
    _plot(steps, losses, title, size).save(path)
    return Path(path)


def _plot(steps: list[int], losses: list[float], title: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 12), title, fill="black")
    points = [(s, v) for s, v in zip(steps, losses) if v is not None and math.isfinite(v)]
    if not points:
        draw.text((left, h // 2), "no finite loss values", fill="black")
        return img
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    draw.rectangle((left, top, w - right, h - bottom), outline="black")
    for ty in _nice_ticks(y0, y1):
        _, py = to_px(x0, ty)
        draw.line((left, py, w - right, py), fill=(225, 225, 225))
        draw.text((6, py - 6), f"{ty:.4g}", fill="black")
    for tx in _nice_ticks(x0, x1):
        px, _ = to_px(tx, y0)
        draw.line((px, top, px, h - bottom), fill=(225, 225, 225))
        draw.text((px - 10, h - bottom + 6), f"{tx:g}", fill="black")
    draw.text(((w - left) // 2 + left - 12, h - 22), "step", fill="black")
    if len(points) > 1:
        draw.line([to_px(x, y) for x, y in points], fill=(120, 160, 220), width=1)
        k = max(1, len(ys) // 20)  # moving average over ~5% of the run
        smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
        draw.line([to_px(x, y) for x, y in zip(xs, smooth)], fill=(200, 40, 40), width=2)
    else:
        px, py = to_px(xs[0], ys[0])
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=(200, 40, 40))
    return img


def draw_panels(rows: list[dict], keys: list[str], path: str | os.PathLike, size: tuple[int, int] = (600, 300),
                columns: int = 2) -> Path:
    """One small curve per metric key (against step), in a grid, as one PNG."""
    cols = min(columns, len(keys))
    grid = Image.new("RGB", (size[0] * cols, size[1] * -(-len(keys) // cols)), "white")
    for i, key in enumerate(keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        panel = _plot([s for s, _ in points], [v for _, v in points], key, size)
        grid.paste(panel, ((i % cols) * size[0], (i // cols) * size[1]))
    grid.save(path)
    return Path(path)


def draw_from_metrics(output_dir: str | os.PathLike) -> Path:
    """The loss curve of `output_dir/metrics.jsonl`, saved as `output_dir/loss_curve.png`."""
    rows = [r for r in read_metrics(Path(output_dir) / METRICS_FILE) if "loss" in r]
    keys = [k for k in MPO_PANELS if any(k in r for r in rows)]
    if keys:
        draw_panels(rows, keys, Path(output_dir) / MPO_CURVES_FILE)
    return draw_loss_curve([r["step"] for r in rows], [r["loss"] for r in rows], Path(output_dir) / CURVE_FILE)
