"""Dynamic high-resolution tiling, exactly as the official `dynamic_preprocess` (spec section 4).

An image is resized to the grid of `image_size` tiles whose aspect ratio is closest to its own, among all
grids with `min_num <= cols * rows <= max_num`, then cut row by row; a thumbnail of the whole image is
appended last when there is more than one tile, so the model also sees the global view.
"""

from __future__ import annotations

from functools import lru_cache

from PIL import Image


@lru_cache(maxsize=64)
def candidate_grids(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) with min_num <= cols*rows <= max_num, by area.

    Built like the official code (a set, then a stable sort by area) so that grids of equal area come in
    the same order, which the tie rule below depends on.
    """
    grids = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                if min_num <= i * j <= max_num)
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def target_grid(width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = 448
                ) -> tuple[int, int]:
    """The (cols, rows) grid for an image of this size.

    Closest aspect ratio wins; on a tie the later (larger) grid wins only if the image has more than half
    the pixels that grid would hold, so small images are not blown up.
    """
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_num, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def dynamic_preprocess(image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 448,
                       use_thumbnail: bool = False) -> list[Image.Image]:
    """Cut an image into `image_size` tiles (row by row), plus a thumbnail when asked and tiles > 1."""
    if max_num < min_num or min_num < 1:
        raise ValueError(f"need 1 <= min_num ({min_num}) <= max_num ({max_num})")
    cols, rows = target_grid(image.width, image.height, min_num, max_num, image_size)
    resized = image.resize((image_size * cols, image_size * rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return tiles
