"""InternVL's grounding markup: `<ref>phrase</ref><box>[[x1, y1, x2, y2], ...]</box>`. Spec section 3.

Boxes are integers in [0, 1000], the image's width and height each mapped to 0-1000 (the official
convention), so a box does not depend on the resolution the image is stored at. One phrase may carry several
boxes (`<box>[[...], [...]]</box>`, "the cats"). Used by the region-text pre-training stage
(`train/region_align.py`) to read its data and by the tiny world to write it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DataError

REF_START, REF_END, BOX_START, BOX_END = "<ref>", "</ref>", "<box>", "</box>"
BOX_SCALE = 1000
_GROUNDED = re.compile(r"<ref>(.*?)</ref>\s*<box>(.*?)</box>", re.S)
_BOX = re.compile(r"\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")


@dataclass(frozen=True)
class Region:
    """One box of a phrase, in the 0-1000 normalized coordinates of its image."""

    phrase: str
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def center(self) -> tuple[float, float]:
        """The box center as fractions of the image's width and height."""
        return (self.x1 + self.x2) / (2 * BOX_SCALE), (self.y1 + self.y2) / (2 * BOX_SCALE)


def normalize_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """A pixel box (left, top, right, bottom) -> integers in [0, 1000], as the official data is written."""
    x1, y1, x2, y2 = box
    return (round(x1 / width * BOX_SCALE), round(y1 / height * BOX_SCALE),
            round(x2 / width * BOX_SCALE), round(y2 / height * BOX_SCALE))


def format_region(phrase: str, boxes: list[tuple[int, int, int, int]]) -> str:
    """`<ref>phrase</ref><box>[[x1, y1, x2, y2], ...]</box>` for already-normalized boxes."""
    inner = ", ".join(f"[{x1}, {y1}, {x2}, {y2}]" for x1, y1, x2, y2 in boxes)
    return f"{REF_START}{phrase}{REF_END}{BOX_START}[{inner}]{BOX_END}"


def parse_regions(text: str, where: str = "text") -> list[Region]:
    """Every (phrase, box) of a text's grounding markup, in order of appearance.

    Raises:
        DataError: A `<box>` holds no box or a malformed one, or a coordinate lies outside 0-1000 or the box
            is empty (x2 <= x1 or y2 <= y1); the message starts with `where`.
    """
    regions = []
    for match in _GROUNDED.finditer(text):
        phrase, inner = match.group(1).strip(), match.group(2)
        boxes = _BOX.findall(inner)
        if not phrase:
            raise DataError(f"{where}: empty phrase in {match.group(0)!r}")
        if not boxes or _BOX.sub("", inner).strip(" ,[]\n\t"):
            raise DataError(f"{where}: malformed box list {inner!r} for {phrase!r}; expected [[x1, y1, x2, y2], ...]")
        for box in boxes:
            x1, y1, x2, y2 = (int(v) for v in box)
            if not (0 <= x1 < x2 <= BOX_SCALE and 0 <= y1 < y2 <= BOX_SCALE):
                raise DataError(f"{where}: box {[x1, y1, x2, y2]} of {phrase!r} must satisfy "
                                f"0 <= x1 < x2 <= {BOX_SCALE} and 0 <= y1 < y2 <= {BOX_SCALE}")
            regions.append(Region(phrase, x1, y1, x2, y2))
    return regions
