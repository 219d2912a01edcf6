"""Image input: open any image as RGB, tile it, and normalize the tiles to pixel values. Spec section 4.

The drop-in for the official `load_image` / `build_transform` (torchvision `Resize(bicubic)` + `ToTensor`
+ `Normalize(ImageNet)`), written with PIL + numpy + torch only. torchvision's PIL path resizes with PIL's
own bicubic filter and then computes `(x / 255 - mean) / std` in float32; this module does the same float32
operations once over all tiles (channels-first copy first, so each in-place op streams through contiguous
memory), which is bit-identical. Tiling itself is `tiling.py`.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from ..errors import ImageLoadError
from .tiling import dynamic_preprocess, per_image_tile_budget

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Refuse images above Pillow's own hard decompression-bomb limit (it only warns at half of this).
MAX_PIXELS = 2 * 89_478_485

ImageInput = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image


_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)


def _describe(image: ImageInput) -> str:
    if isinstance(image, (bytes, bytearray)):
        return f"<{len(image)} bytes>"
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return str(getattr(image, "name", "<file object>"))


def open_image(image: ImageInput) -> Image.Image:
    """Open an image as RGB, like the official `Image.open(path).convert('RGB')`.

    Alpha is dropped, not composited, and EXIF orientation is not applied, both as upstream does, so the
    pixels match the checkpoints' training and the official pipeline.

    Args:
        image: A path, raw encoded bytes, a binary file object, or a PIL image.

    Returns:
        A fully decoded RGB image.

    Raises:
        ImageLoadError: The file is missing, not an image, corrupt or truncated, or larger than
            `MAX_PIXELS` (a decompression-bomb guard); the message names the input and the reason.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    name = _describe(image)
    source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
    if isinstance(image, (str, os.PathLike)):
        _check_regular_file(image, name)
    try:
        with warnings.catch_warnings():
            # Pillow warns between its two limits; the explicit check below is the one rule we apply.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:  # reads the header only
                if img.width * img.height > MAX_PIXELS:
                    raise ImageLoadError(
                        f"{name}: {img.width}x{img.height} = {img.width * img.height:,} pixels exceeds the "
                        f"{MAX_PIXELS:,}-pixel limit (decompression-bomb guard; raise "
                        "internvl.processing.image.MAX_PIXELS if the file is trusted)")
                img.load()
                return img.convert("RGB")
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(f"{name}: is a directory, not an image file") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file (Pillow cannot identify its format)") from None
    except Exception as e:  # decoders raise many types (OSError, SyntaxError, struct.error, ...) on bad data
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise ImageLoadError(f"{name}: cannot read the image ({reason})") from None


def _check_regular_file(path: str | os.PathLike, name: str) -> None:
    """Opening a FIFO blocks until something writes to it, and a device may never end: refuse both."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: no such file") from None
    except OSError as e:
        raise ImageLoadError(f"{name}: cannot read the image ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise ImageLoadError(f"{name}: is a directory, not an image file")
    if not stat.S_ISREG(mode):
        raise ImageLoadError(f"{name}: is {'a FIFO' if stat.S_ISFIFO(mode) else 'a device or socket'}, not a "
                             "regular file")


def to_pixel_values(tiles: list[Image.Image], input_size: int = 448) -> torch.Tensor:
    """Normalize tiles into the pixel values the vision encoder takes (the official `build_transform`).

    Args:
        tiles: Images, usually from `dynamic_preprocess`; any that is not `input_size` square is resized
            with PIL bicubic, as torchvision's `Resize` on a PIL image does.
        input_size: Side of a tile in pixels.

    Returns:
        float32 tensor (N, 3, input_size, input_size), ImageNet-normalized.
    """
    if not tiles:
        raise ValueError("to_pixel_values needs at least one tile")
    size = (input_size, input_size)
    arrays = []
    for tile in tiles:
        if tile.mode != "RGB":
            tile = tile.convert("RGB")  # build_transform converts before it resizes
        if tile.size != size:
            tile = tile.resize(size, Image.Resampling.BICUBIC)
        arrays.append(np.asarray(tile))
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    # the same float32 steps as ToTensor (x / 255) then Normalize ((x - mean) / std)
    return pixels.float().div_(255).sub_(_MEAN).div_(_STD)


def load_image(image: ImageInput, input_size: int = 448, max_num: int = 12, min_num: int = 1,
               use_thumbnail: bool = True) -> torch.Tensor:
    """Open, tile and normalize one image: the official quick start's `load_image`.

    Args:
        image: A path, raw encoded bytes, a binary file object, or a PIL image.
        input_size: Side of a tile (the model's `force_image_size`, 448 for released checkpoints).
        max_num: Most tiles (`max_dynamic_patch`).
        min_num: Fewest tiles (`min_dynamic_patch`).
        use_thumbnail: Append a thumbnail tile when there is more than one tile.

    Returns:
        float32 tensor (N, 3, input_size, input_size): the tiles row by row, then the thumbnail.

    Raises:
        ImageLoadError: The image cannot be read (see `open_image`).
    """
    tiles = dynamic_preprocess(open_image(image), min_num=min_num, max_num=max_num, image_size=input_size,
                               use_thumbnail=use_thumbnail)
    return to_pixel_values(tiles, input_size)


def load_question_images(images: list[ImageInput], config, max_tiles: int | None = None) -> list[torch.Tensor]:
    """Tiles of each image of one question, as the model was fine-tuned: the images share the tile budget
    (`max_tiles`, default the config's `max_dynamic_patch`; see `per_image_tile_budget`), and without dynamic
    tiling each image is one tile. `config` is the model's `InternVLConfig`."""
    max_num = (max_tiles or config.max_dynamic_patch) if config.dynamic_image_size else 1
    per_image = per_image_tile_budget(max_num, len(images))
    return [load_image(img, config.image_size, max_num=per_image, min_num=min(config.min_dynamic_patch, per_image),
                       use_thumbnail=config.use_thumbnail) for img in images]
