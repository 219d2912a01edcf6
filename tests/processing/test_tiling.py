"""Tiling equals the model card's `dynamic_preprocess`, re-typed here from the seed README as the reference."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from internvl.processing.tiling import dynamic_preprocess, target_grid


def ref_closest(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff, best_ratio, area = float("inf"), (1, 1), width * height
    for ratio in target_ratios:
        ratio_diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if ratio_diff < best_ratio_diff:
            best_ratio_diff, best_ratio = ratio_diff, ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def ref_ratio(w, h, min_num, max_num, image_size):
    ratios = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                 if min_num <= i * j <= max_num)
    ratios = sorted(ratios, key=lambda x: x[0] * x[1])
    return ref_closest(w / h, ratios, w, h, image_size)


def ref_dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    ratio = ref_ratio(*image.size, min_num, max_num, image_size)
    tw, th = image_size * ratio[0], image_size * ratio[1]
    resized = image.resize((tw, th))
    out = []
    for i in range(ratio[0] * ratio[1]):
        box = ((i % (tw // image_size)) * image_size, (i // (tw // image_size)) * image_size,
               ((i % (tw // image_size)) + 1) * image_size, ((i // (tw // image_size)) + 1) * image_size)
        out.append(resized.crop(box))
    if use_thumbnail and len(out) != 1:
        out.append(image.resize((image_size, image_size)))
    return out, ratio


def sizes(n: int = 220, seed: int = 0):
    rng = random.Random(seed)
    fixed = [(1, 1), (1, 500), (3000, 20), (2, 3), (448, 448), (896, 448), (449, 448), (5, 2000), (1344, 896)]
    return fixed + [(rng.randint(1, 2500), rng.randint(1, 2500)) if rng.random() < 0.7 else
                    (rng.randint(1, 64), rng.randint(1, 3000)) for _ in range(n - len(fixed))]


@pytest.mark.parametrize("max_num", [1, 6, 12, 40])
def test_grid_matches_reference_on_random_sizes(max_num):
    for w, h in sizes():
        assert target_grid(w, h, 1, max_num, 448) == ref_ratio(w, h, 1, max_num, 448), (w, h, max_num)


def test_tiles_are_pixel_identical_to_reference():
    rng = np.random.default_rng(0)
    for w, h in sizes(40, seed=1):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for max_num, thumb in ((6, True), (12, False)):
            want, _ = ref_dynamic_preprocess(img, max_num=max_num, image_size=28, use_thumbnail=thumb)
            got = dynamic_preprocess(img, max_num=max_num, image_size=28, use_thumbnail=thumb)
            assert len(got) == len(want)
            for a, b in zip(got, want):
                assert np.array_equal(np.asarray(a), np.asarray(b)), (w, h)


def test_min_num_and_thumbnail_rules():
    img = Image.new("RGB", (100, 100))
    assert len(dynamic_preprocess(img, max_num=12, use_thumbnail=True)) == 1  # one tile: no thumbnail
    tiles = dynamic_preprocess(img, min_num=4, max_num=4, image_size=56, use_thumbnail=True)
    assert len(tiles) == 5 and all(t.size == (56, 56) for t in tiles)
    with pytest.raises(ValueError, match="min_num"):
        dynamic_preprocess(img, min_num=3, max_num=2)
