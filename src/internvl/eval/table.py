"""Results tables: one row per group of questions (overall, each split, category, l2-category), in percent.

A table row is a plain dict, `{"level": ..., "name": ..., "n": ..., <metric>: <value>, ...}`, so it goes to
summary.json, the per-category CSV and the printed table unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

LEVELS = ("split", "l2-category", "category")


def pct(values: Sequence[float]) -> float:
    """Mean of 0/1 (or [0, 1]) values in percent; 0.0 for none."""
    return 100.0 * sum(values) / len(values) if values else 0.0


def groups(records: Sequence[dict], key: str) -> list[tuple[str, list[dict]]]:
    """Records by their value of `key`, sorted by value; records without one are left out."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get(key, "") != "":
            out[r[key]].append(r)
    return sorted(out.items())


def by_levels(records: Sequence[dict], metrics: Callable[[Sequence[dict]], dict],
              levels: Sequence[str] = LEVELS) -> list[dict]:
    """The 'Overall' row, then one row per value of each level column that the records carry."""
    rows = [{"level": "overall", "name": "Overall", "n": len(records), **metrics(records)}]
    for level in levels:
        rows += [{"level": level, "name": name, "n": len(group), **metrics(group)}
                 for name, group in groups(records, level)]
    return rows
