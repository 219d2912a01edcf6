"""Image loading and normalization with PIL + numpy, the drop-in for the official `load_image` (spec section 4).

The official pipeline is torchvision's Resize(bicubic) + ToTensor + Normalize(ImageNet) on each tile; a
tile is already `input_size` square, so the resize is a no-op and what remains is /255 and the ImageNet
normalization, done here once over all tiles of an image in one vectorized numpy step.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image

from ..errors import ImageLoadError
from .tiling import dynamic_preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit (2x its warning threshold)

ImageInput = str | os.PathLike | bytes | Image.Image


def open_image(image: ImageInput) -> Image.Image:
    """Open a path, raw bytes or a PIL image as RGB; anything unreadable raises ImageLoadError naming it."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    name = "<bytes>" if isinstance(image, (bytes, bytearray)) else os.fspath(image)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            src = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else name
            with Image.open(src) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageLoadError(f"{name}: {img.width}x{img.height} pixels is larger than the "
                                         f"{MAX_PIXELS:,}-pixel limit (decompression-bomb guard)")
                # plain convert, as the official pipeline: transparency is dropped, not composited
                return img.convert("RGB")
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"{name}: image too large (decompression-bomb guard): {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{name}: not a readable image ({e})") from None


def to_pixel_values(tiles: list[Image.Image], input_size: int = 448) -> torch.Tensor:
    """Square RGB tiles -> normalized float32 tensor (N, 3, input_size, input_size)."""
    arrays = []
    for tile in tiles:
        if tile.size != (input_size, input_size):
            tile = tile.resize((input_size, input_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(tile.convert("RGB"), dtype=np.uint8))
    batch = np.stack(arrays).astype(np.float32) / 255.0  # (N, H, W, 3), same steps as ToTensor + Normalize
    batch = (batch - np.asarray(IMAGENET_MEAN, dtype=np.float32)) / np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def load_image(image: ImageInput, input_size: int = 448, max_num: int = 12, min_num: int = 1,
               use_thumbnail: bool = True) -> torch.Tensor:
    """Open, tile and normalize one image -> pixel values (tiles [+ thumbnail], 3, input_size, input_size)."""
    tiles = dynamic_preprocess(open_image(image), min_num=min_num, max_num=max_num, image_size=input_size,
                               use_thumbnail=use_thumbnail)
    return to_pixel_values(tiles, input_size)
