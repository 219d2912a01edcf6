"""InternVL grounding markup: `<ref>phrase</ref><box>[[x1, y1, x2, y2], ...]</box>` with boxes in 0-1000."""

from __future__ import annotations

import pytest

from internvl.errors import DataError
from internvl.processing.grounding import Region, format_region, normalize_box, parse_regions


def test_parse_several_phrases_and_boxes_in_order():
    text = ("<ref>red circle</ref><box>[[10, 20, 110, 220]]</box>\n"
            "<ref>the cats</ref><box>[[0, 0, 500, 500], [500,500,1000,1000]]</box> and more text")
    assert parse_regions(text) == [Region("red circle", 10, 20, 110, 220), Region("the cats", 0, 0, 500, 500),
                                   Region("the cats", 500, 500, 1000, 1000)]
    assert Region("x", 100, 200, 300, 600).center == (0.2, 0.4)


def test_ref_and_box_in_different_turns_still_pair():
    # a referring question in the human turn, the box in the answer (joined with a newline by the reader)
    assert parse_regions("Where is <ref>the dog</ref>\n<box>[[1, 2, 3, 4]]</box>") == [Region("the dog", 1, 2, 3, 4)]


def test_format_round_trips_and_normalizes_pixels():
    box = normalize_box((64, 48, 128, 96), 640, 480)
    assert box == (100, 100, 200, 200)
    assert parse_regions(format_region("blue square", [box, (0, 0, 10, 10)])) == [
        Region("blue square", 100, 100, 200, 200), Region("blue square", 0, 0, 10, 10)]


@pytest.mark.parametrize("text, problem", [
    ("<ref>a</ref><box>[[10, 20, 5, 30]]</box>", "0 <= x1 < x2"),
    ("<ref>a</ref><box>[[0, 0, 1001, 30]]</box>", "0 <= x1 < x2 <= 1000"),
    ("<ref>a</ref><box>[[0, 0, 10]]</box>", "malformed box list"),
    ("<ref>a</ref><box>[[0, 0, 10, 10], oops]</box>", "malformed box list"),
    ("<ref> </ref><box>[[0, 0, 10, 10]]</box>", "empty phrase"),
])
def test_bad_markup_is_a_clear_error(text, problem):
    with pytest.raises(DataError, match=problem) as e:
        parse_regions(text, "f.jsonl:3")
    assert str(e.value).startswith("f.jsonl:3: ")
