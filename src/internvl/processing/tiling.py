"""Dynamic high-resolution tiling: one image -> a grid of square tiles (+ a thumbnail). Spec section 4.

This is the official `dynamic_preprocess` of the InternVL model cards, reproduced exactly: the same
candidate grids in the same order, the same closest-aspect-ratio rule with its tie break, the same PIL
resizes and the same row-by-row crops, so the tiles are pixel-identical. It does not normalize pixels
(that is `image.py`) and does not open files.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache

from PIL import Image

from ..errors import ConfigError


def per_image_tile_budget(max_num: int, num_images: int) -> int:
    """Most tiles per image when `num_images` images share one sample: `max(1, max_num // num_images)`, the
    official fine-tuning rule for multi-image samples (inference code elsewhere gives each image `max_num`)."""
    return max(1, max_num // max(1, num_images))


@lru_cache(maxsize=64)
def candidate_grids(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) grids with `min_num <= cols * rows <= max_num`, smallest area first.

    Built like the official code (a set, then a stable sort by area) on purpose: grids of equal area keep
    the set's iteration order, and the tie rule of `target_grid` depends on which of them comes later.

    Args:
        min_num: Fewest tiles allowed.
        max_num: Most tiles allowed.

    Returns:
        The candidate grids as (cols, rows) pairs.
    """
    grids = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if min_num <= i * j <= max_num)
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def target_grid(width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = 448
                ) -> tuple[int, int]:
    """The (cols, rows) grid an image of this size is tiled into (the official `find_closest_aspect_ratio`).

    The grid whose aspect ratio is closest to the image's wins. On an exact tie the later (larger) grid
    replaces the current best only when the image has more than half the pixels that grid would hold, so
    a small image is not blown up to many tiles.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        min_num: Fewest tiles allowed.
        max_num: Most tiles allowed.
        image_size: Side of one square tile.

    Returns:
        (cols, rows); the image is resized to (image_size * cols, image_size * rows).
    """
    _check(width, height, min_num, max_num)
    aspect_ratio = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_num, max_num):
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def dynamic_preprocess(image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 448,
                       use_thumbnail: bool = False) -> list[Image.Image]:
    """Cut an image into `image_size` square tiles, row by row, plus a thumbnail last when asked.

    Args:
        image: The image (RGB in the official pipeline; other modes are resized with PIL's default filter
            for that mode, exactly as the official code does).
        min_num: Fewest tiles allowed.
        max_num: Most tiles allowed.
        image_size: Side of one square tile.
        use_thumbnail: Append the whole image resized to one tile, when the grid has more than one tile.

    Returns:
        cols * rows tiles (left to right, top to bottom), then the thumbnail if any.
    """
    cols, rows = target_grid(image.width, image.height, min_num, max_num, image_size)
    # No explicit filter: PIL's default (bicubic for RGB) is what the official code gets.
    # The thumbnail is resized in another thread while this one resizes the grid (Pillow releases the GIL
    # while it resamples): the same two Pillow calls as the official code, so the same pixels, in less time.
    thumbnail = None
    if use_thumbnail and cols * rows != 1:
        thumbnail = _pool().submit(image.resize, (image_size, image_size))
    resized = image.resize((image_size * cols, image_size * rows))
    tiles = [resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
             for r in range(rows) for c in range(cols)]
    if thumbnail is not None:
        # Last, after the tiles: the checkpoints were trained with the global view in this position.
        tiles.append(thumbnail.result())
    return tiles


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1), thread_name_prefix="internvl-thumbnail")


# A forked child (a DataLoader worker) inherits the cached executor but not its threads, so its first submit
# would wait forever: give each child a fresh pool.
os.register_at_fork(after_in_child=_pool.cache_clear)


def _check(width: int, height: int, min_num: int, max_num: int) -> None:
    # The official code silently falls back to one tile on an empty candidate list; say what is wrong.
    if not 1 <= min_num <= max_num:
        raise ConfigError(f"tile counts need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    if width < 1 or height < 1:
        raise ConfigError(f"cannot tile an image of {width}x{height} pixels")
