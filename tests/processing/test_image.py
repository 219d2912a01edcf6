"""Image loading and normalization: equal to the torchvision-style reference, clear errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import internvl.processing.image as image_module
from internvl.errors import ImageLoadError
from internvl.processing.image import IMAGENET_MEAN, IMAGENET_STD, load_image, open_image, to_pixel_values
from internvl.processing.tiling import dynamic_preprocess


def reference_float64(tiles, size):
    """build_transform written out: RGB, PIL bicubic resize, /255, normalize; float64, then cast."""
    out = []
    for t in tiles:
        x = np.asarray(t.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255
        out.append(((x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).to(torch.float32)


def reference_torchvision_ops(tiles, size):
    """ToTensor + Normalize with the same float32 torch ops torchvision runs (for a bit-exact check)."""
    out = []
    for t in tiles:
        x = torch.from_numpy(np.array(t.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)))
        x = x.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        mean, std = torch.as_tensor(IMAGENET_MEAN), torch.as_tensor(IMAGENET_STD)
        out.append(x.sub_(mean[:, None, None]).div_(std[:, None, None]))
    return torch.stack(out)


def random_image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("w, h, max_num", [(700, 300, 12), (50, 40, 6), (2000, 90, 40), (30, 30, 1)])
def test_pixel_values_match_reference(tmp_path, w, h, max_num):
    img = random_image(w, h, seed=w)
    img.save(tmp_path / "x.png")
    got = load_image(tmp_path / "x.png", input_size=56, max_num=max_num)
    tiles = dynamic_preprocess(img, max_num=max_num, image_size=56, use_thumbnail=True)
    assert got.shape == (len(tiles), 3, 56, 56) and got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got, reference_float64(tiles, 56), atol=1e-6, rtol=0)
    assert torch.equal(got, reference_torchvision_ops(tiles, 56))


def test_to_pixel_values_resizes_and_converts_odd_tiles():
    tiles = [random_image(40, 20, seed=1), random_image(33, 33, seed=2, mode="L"), random_image(16, 16, seed=3)]
    got = to_pixel_values(tiles, 16)
    assert got.shape == (3, 3, 16, 16)
    torch.testing.assert_close(got, reference_float64(tiles, 16), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least one tile"):
        to_pixel_values([], 16)


def test_load_image_shape_counts_the_thumbnail():
    img = random_image(896, 448)  # 2x1 grid -> 2 tiles + thumbnail
    assert load_image(img).shape == (3, 3, 448, 448)
    assert load_image(img, use_thumbnail=False).shape == (2, 3, 448, 448)
    assert load_image(random_image(448, 448)).shape == (1, 3, 448, 448)  # one tile: no thumbnail


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16", "1"])
def test_modes_convert_to_rgb_like_pil_convert(tmp_path, mode):
    img = random_image(12, 10).convert(mode)
    assert open_image(img).mode == "RGB"
    if mode in ("RGBA", "LA", "L", "P", "1"):  # modes PNG can store: round-trip through a file
        img.save(tmp_path / "m.png")
        got = open_image(tmp_path / "m.png")
        assert np.array_equal(np.asarray(got), np.asarray(Image.open(tmp_path / "m.png").convert("RGB")))


def test_alpha_is_dropped_not_composited():
    # upstream does Image.open(...).convert('RGB'): a fully transparent red pixel stays red
    assert open_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 0, 0)


def test_bytes_and_file_objects(tmp_path):
    img = random_image(30, 20)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    want = load_image(img, input_size=28)
    assert torch.equal(load_image(buf.getvalue(), input_size=28), want)
    buf.seek(0)
    assert torch.equal(load_image(buf, input_size=28), want)


def test_bad_inputs_name_the_path_and_reason(tmp_path):
    with pytest.raises(ImageLoadError, match=r"nope\.png: no such file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageLoadError, match=r"bad\.png: "):
        load_image(tmp_path / "bad.png")
    (tmp_path / "text.jpg").write_text("hello, not a picture")
    with pytest.raises(ImageLoadError, match=r"text\.jpg: not an image file"):
        load_image(str(tmp_path / "text.jpg"))
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="<2 bytes>"):
        open_image(b"\x00\x01")


def test_truncated_file_is_an_error(tmp_path):
    random_image(64, 64).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg: cannot read the image \(.*truncated"):
        load_image(tmp_path / "cut.jpg")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(image_module, "MAX_PIXELS", 100_000)
    with pytest.raises(ImageLoadError, match=r"big\.png: 400x300 = 120,000 pixels exceeds .*decompression-bomb"):
        load_image(tmp_path / "big.png")
    monkeypatch.setattr(image_module, "MAX_PIXELS", 120_000)
    assert load_image(tmp_path / "big.png", max_num=1).shape == (1, 3, 448, 448)
