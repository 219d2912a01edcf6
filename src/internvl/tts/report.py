"""How a Best-of-N evaluation is shown: a text table (printed by the CLI) and a PNG of accuracy against N."""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont

COLORS = {"prm": (52, 101, 164), "orm": (204, 121, 35), "majority": (78, 154, 6), "pass": (170, 170, 170)}
LABELS = {"prm": "PRM (mean step score)", "orm": "ORM (whole answer)", "majority": "majority vote",
          "pass": "pass@N (a perfect verifier)"}


def _lines(summary: dict) -> list[str]:
    return [k for k in ("prm", "orm", "majority", "pass") if k in summary["curve"]]


def format_curve(summary: dict) -> str:
    """Accuracy per N and strategy, then per category at the largest N."""
    curve, keys = summary["curve"], _lines(summary)
    lines = [f"{'N':>4}" + "".join(f"{k:>10}" for k in keys)]
    for i, n in enumerate(curve["n"]):
        lines.append(f"{n:>4}" + "".join(f"{curve[k][i]:>10.1%}" for k in keys))
    strategies = [k for k in keys if k != "pass"]
    lines.append("")
    lines.append(f"{'type':<16}{'n':>5}{'greedy':>9}" + "".join(f"{s + '@' + str(summary['best_of']):>13}"
                                                              for s in strategies))
    for c, e in summary["per_category"].items():
        lines.append(f"{c:<16}{e['n']:>5}{e['greedy']:>9.1%}" + "".join(f"{e[s]:>13.1%}" for s in strategies))
    for name, p in (summary.get("verifier_pairwise") or {}).items():
        if p["accuracy"] is not None:
            lines.append(f"{name.upper()} ranks a right candidate above a wrong one of the same sample in "
                         f"{p['accuracy']:.1%} of {p['pairs']} pairs (50%: no better than chance)")
    return "\n".join(lines)


def curve_chart(summary: dict, path: str | os.PathLike, width: int = 640, height: int = 400) -> None:
    """Accuracy (0-100%) against N on a log2 axis: one line per strategy, pass@N in gray."""
    curve, keys = summary["curve"], _lines(summary)
    ns = curve["n"]
    values = [v for k in keys for v in curve[k]]
    low = max(0.0, min(values) - 0.05)
    high = min(1.0, max(values) + 0.05)
    low, high = int(low * 20) / 20, (int(high * 20 - 1e-9) + 1) / 20  # whole 5% steps
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, 190, 40, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    title = f"{summary['task']}: Best-of-N on {summary['n']} held-out samples"
    draw.text((left, 12), title, fill="black", font=font)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (plot_w * i / (len(ns) - 1) if len(ns) > 1 else plot_w / 2)
        return x, top + plot_h * (1 - (v - low) / (high - low))

    steps = round((high - low) / 0.05)
    for k in range(steps + 1):
        v = low + k * 0.05
        _, y = xy(0, v)
        draw.line((left, y, left + plot_w, y), fill=(225, 225, 225))
        draw.text((8, y - 6), f"{v * 100:.0f}%", fill="black", font=font)
    for i, n in enumerate(ns):
        x, _ = xy(i, low)
        draw.line((x, top, x, top + plot_h), fill=(240, 240, 240))
        draw.text((x - 4, top + plot_h + 8), str(n), fill="black", font=font)
    draw.text((left + plot_w / 2 - 20, height - 20), "N (candidates)", fill="black", font=font)
    for k in keys:
        points = [xy(i, v) for i, v in enumerate(curve[k])]
        if len(points) > 1:
            draw.line(points, fill=COLORS[k], width=1 if k == "pass" else 3)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLORS[k])
    for row, k in enumerate(keys):
        y = top + 10 + 18 * row
        draw.rectangle((width - right + 14, y, width - right + 26, y + 10), fill=COLORS[k])
        draw.text((width - right + 32, y - 1), LABELS[k], fill="black", font=font)
    img.save(path)
