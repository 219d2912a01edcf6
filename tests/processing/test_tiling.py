"""Tiling equals the model card's `dynamic_preprocess`, re-typed below from the seed README as the reference."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from internvl.errors import ConfigError
from internvl.processing.tiling import candidate_grids, dynamic_preprocess, target_grid


# ---- reference: the official algorithm, PIL only ----
def ref_find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def ref_dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    ratio = ref_find_closest_aspect_ratio(aspect_ratio, target_ratios, orig_width, orig_height, image_size)
    target_width, target_height = image_size * ratio[0], image_size * ratio[1]
    blocks = ratio[0] * ratio[1]
    resized_img = image.resize((target_width, target_height))
    processed = []
    for i in range(blocks):
        box = ((i % (target_width // image_size)) * image_size,
               (i // (target_width // image_size)) * image_size,
               ((i % (target_width // image_size)) + 1) * image_size,
               ((i // (target_width // image_size)) + 1) * image_size)
        processed.append(resized_img.crop(box))
    if use_thumbnail and len(processed) != 1:
        processed.append(image.resize((image_size, image_size)))
    return processed, ratio


FIXED = [(1, 1), (1, 500), (500, 1), (3000, 20), (20, 3000), (2, 3), (3, 2), (448, 448), (896, 448),
         (449, 448), (5, 2000), (1344, 896), (448 * 3, 448 * 4), (1000, 1001), (640, 480), (1920, 1080)]


def sizes(n: int, seed: int) -> list[tuple[int, int]]:
    """The fixed extremes, then seeded random sizes: mostly ordinary, some very thin, some tiny."""
    rng = random.Random(seed)
    out = list(FIXED)
    while len(out) < n:
        kind = rng.random()
        if kind < 0.6:
            out.append((rng.randint(1, 4000), rng.randint(1, 4000)))
        elif kind < 0.8:
            thin = (rng.randint(1, 40), rng.randint(100, 5000))
            out.append(thin if rng.random() < 0.5 else thin[::-1])
        else:
            out.append((rng.randint(1, 12), rng.randint(1, 12)))
    return out


class _Size:
    """Stands in for a PIL image in the reference's grid search, which only reads `.size` before resizing."""

    def __init__(self, w, h):
        self.size = (w, h)

    def resize(self, size):
        return _Size(*size)

    def crop(self, box):
        return None


@pytest.mark.parametrize("min_num, max_num", [(1, 1), (1, 6), (1, 12), (1, 40), (2, 6), (3, 12)])
def test_grid_matches_reference_on_random_sizes(min_num, max_num):
    seen = set()
    for w, h in sizes(250, seed=max_num):
        _, want = ref_dynamic_preprocess(_Size(w, h), min_num=min_num, max_num=max_num)
        assert target_grid(w, h, min_num, max_num, 448) == want, (w, h, min_num, max_num)
        seen.add(want)
    assert len(seen) >= min(max_num, 5)  # not vacuous: many different grids were chosen


def test_tie_rule_prefers_the_later_grid_only_for_large_images():
    # 2:1 and 4:2 have the same ratio; the larger grid wins only above half its pixel area.
    assert target_grid(896, 448, 1, 12, 448) == (2, 1)
    assert target_grid(1800, 900, 1, 12, 448) == (4, 2)
    # min_num = max_num = 2: (1, 2) and (2, 1) tie for a 5:4 image, set order and area decide
    want = ref_dynamic_preprocess(_Size(500, 400), min_num=2, max_num=2)[1]
    assert target_grid(500, 400, 2, 2, 448) == want


@pytest.mark.parametrize("max_num, thumb", [(1, True), (6, True), (12, False), (40, True)])
def test_tiles_are_pixel_identical_to_reference(max_num, thumb):
    rng = np.random.default_rng(max_num)
    for w, h in sizes(24, seed=100 + max_num):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want, ratio = ref_dynamic_preprocess(img, max_num=max_num, image_size=16, use_thumbnail=thumb)
        got = dynamic_preprocess(img, max_num=max_num, image_size=16, use_thumbnail=thumb)
        assert len(got) == len(want) == ratio[0] * ratio[1] + (thumb and len(want) > 1)
        for a, b in zip(got, want):
            assert a.size == (16, 16) and np.array_equal(np.asarray(a), np.asarray(b)), (w, h)


def test_tiles_come_row_by_row_and_thumbnail_last():
    # a 2x2-tile image whose quadrants are solid colors: tiles must come TL, TR, BL, BR, then the thumbnail
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    img = Image.new("RGB", (64, 64))
    for k, c in enumerate(colors):
        img.paste(c, ((k % 2) * 32, (k // 2) * 32, (k % 2) * 32 + 32, (k // 2) * 32 + 32))
    tiles = dynamic_preprocess(img, max_num=4, image_size=32, use_thumbnail=True)
    assert len(tiles) == 5
    for tile, c in zip(tiles, colors):
        assert tile.getpixel((16, 16)) == c
    assert np.array_equal(np.asarray(tiles[4]), np.asarray(img.resize((32, 32))))


def test_thumbnail_only_with_more_than_one_tile_and_min_num():
    img = Image.new("RGB", (100, 100))
    assert len(dynamic_preprocess(img, max_num=12, use_thumbnail=True)) == 1
    tiles = dynamic_preprocess(img, min_num=4, max_num=4, image_size=56, use_thumbnail=True)
    assert len(tiles) == 5 and all(t.size == (56, 56) for t in tiles)


def test_candidates_are_cached_and_sorted_by_area():
    grids = candidate_grids(1, 12)
    assert candidate_grids(1, 12) is grids
    assert [a * b for a, b in grids] == sorted(a * b for a, b in grids)
    assert len(grids) == sum(1 for i in range(1, 13) for j in range(1, 13) if i * j <= 12)


def test_bad_tile_counts_raise():
    with pytest.raises(ConfigError, match="min_num=3, max_num=2"):
        dynamic_preprocess(Image.new("RGB", (8, 8)), min_num=3, max_num=2)
    with pytest.raises(ValueError, match="min_num=0"):
        target_grid(8, 8, 0, 4)
