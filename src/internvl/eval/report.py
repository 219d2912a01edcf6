"""How an evaluation summary is shown: a text table (printed by the CLI) and a PNG bar chart (Pillow only).

Both read the summary dict `runner.evaluate` returns: overall and per-category accuracy, and the blind
baseline's when it was run.
"""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont

MODEL_COLOR, BLIND_COLOR = (52, 101, 164), (170, 170, 170)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font) -> None:
    """Draw `text` word by word with a third of an em between words: Pillow's default font advances a space by
    as little as one pixel at small sizes ("accuracyon 500 held-outsamples")."""
    x, y = xy
    gap = max(font.getlength(" "), getattr(font, "size", 10) / 3)  # a bitmap font (no FreeType) has no size
    for word in text.split(" "):
        draw.text((x, y), word, fill="black", font=font)
        x += font.getlength(word) + gap


def _rows(summary: dict) -> list[tuple[str, int, float, float | None]]:
    """(label, n, accuracy, blind accuracy or None) per category, then overall."""
    blind = summary.get("blind")
    rows = [(c, v["n"], v["accuracy"], blind["per_category"][c]["accuracy"] if blind else None)
            for c, v in summary["per_category"].items()]
    rows.append(("overall", summary["n"], summary["accuracy"], blind["accuracy"] if blind else None))
    return rows


def format_table(summary: dict) -> str:
    """Accuracy per category and overall, with the blind baseline and the gain over it when present."""
    has_blind = "blind" in summary
    lines = [f"{'type':<16}{'n':>6}{'accuracy':>10}" + (f"{'blind':>9}{'gain':>9}" if has_blind else "")]
    for label, n, acc, blind in _rows(summary):
        line = f"{label:<16}{n:>6}{acc:>10.1%}"
        if blind is not None:
            line += f"{blind:>9.1%}{(acc - blind) * 100:>+8.1f}p"
        lines.append(line)
    return "\n".join(lines)


def bar_chart(summary: dict, path: str | os.PathLike, width: int = 760, height: int = 360) -> None:
    """Grouped bars (model, and blind when present) per category and overall, accuracy 0-100%."""
    rows = _rows(summary)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, title = ImageFont.load_default(size=11), ImageFont.load_default(size=14)
    left, right, top, bottom = 48, 12, 36, 64
    plot_h = height - top - bottom
    _text(draw, (left, 10), f"{summary['task']}: accuracy on {summary['n']} held-out samples", title)
    for pct in range(0, 101, 25):  # horizontal grid with percentage labels
        y = top + plot_h * (1 - pct / 100)
        draw.line((left, y, width - right, y), fill=(225, 225, 225))
        _text(draw, (6, y - 6), f"{pct}%", font)
    slot = (width - left - right) / len(rows)
    has_blind = rows[0][3] is not None
    bar = slot * (0.36 if has_blind else 0.6)
    for i, (label, _, acc, blind) in enumerate(rows):
        x = left + i * slot + slot * 0.12
        for value, color in [(acc, MODEL_COLOR)] + ([(blind, BLIND_COLOR)] if has_blind else []):
            y = top + plot_h * (1 - value)
            draw.rectangle((x, y, x + bar, top + plot_h), fill=color)
            _text(draw, (x, y - 13), f"{value * 100:.0f}", font)
            x += bar + 2
        _text(draw, (left + i * slot + 4, top + plot_h + 6 + 13 * (i % 2)), label, font)
    legend_y = height - 22
    draw.rectangle((left, legend_y, left + 12, legend_y + 12), fill=MODEL_COLOR)
    _text(draw, (left + 18, legend_y), "model", font)
    if has_blind:
        draw.rectangle((left + 80, legend_y, left + 92, legend_y + 12), fill=BLIND_COLOR)
        _text(draw, (left + 98, legend_y), "blind (blank images)", font)
    img.save(path)
