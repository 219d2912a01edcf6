"""Image loading and normalization: equal to the torchvision-style reference, clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from internvl.errors import ImageLoadError
from internvl.processing.image import IMAGENET_MEAN, IMAGENET_STD, load_image, open_image, to_pixel_values
from internvl.processing.tiling import dynamic_preprocess


def reference_pixels(tiles, size):
    """ToTensor + Normalize, written out in float64."""
    out = []
    for t in tiles:
        x = np.asarray(t.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
        out.append(((x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def test_pixel_values_match_reference(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (300, 700, 3), dtype=np.uint8))
    img.save(tmp_path / "x.png")
    got = load_image(tmp_path / "x.png", input_size=112, max_num=12)
    tiles = dynamic_preprocess(img, max_num=12, image_size=112, use_thumbnail=True)
    assert got.shape == (len(tiles), 3, 112, 112) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference_pixels(tiles, 112), atol=1e-6, rtol=1e-6)


def test_modes_convert_to_rgb():
    for mode in ("RGBA", "L", "P", "LA", "CMYK", "I;16"):
        img = Image.new(mode, (20, 10))
        assert open_image(img).mode == "RGB"
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert open_image(transparent).getpixel((0, 0)) == (255, 0, 0)  # alpha dropped, as the official convert


def test_bytes_and_bad_inputs(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.jpg")
    assert to_pixel_values([open_image((tmp_path / "ok.jpg").read_bytes())], 8).shape == (1, 3, 8, 8)
    with pytest.raises(ImageLoadError, match="nope.png: no such file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageLoadError, match="bad.png: not a readable image"):
        load_image(tmp_path / "bad.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageLoadError, match="text.jpg"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(ImageLoadError, match="<bytes>"):
        open_image(b"\x00\x01")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import internvl.processing.image as image_module
    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(image_module, "MAX_PIXELS", 100_000)
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        load_image(tmp_path / "big.png")
