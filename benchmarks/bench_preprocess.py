"""Preprocessing throughput: our `load_image` vs the InternVL model-card pipeline, for a 12-tile image.

    python -m benchmarks.bench_preprocess [--repeat N] [--wait-quiet SECONDS]

The reference is the quick-start pipeline of the InternVL model cards: `Image.open(...).convert('RGB')`,
`dynamic_preprocess` (closest-aspect-ratio grid, PIL resize, row-major crops, thumbnail last) and the
torchvision `build_transform` applied tile by tile, then `torch.stack`. torchvision is not installed, so its
three steps are written out here exactly as torchvision executes them on a PIL image:
  Resize((448, 448), BICUBIC)  returns the image untouched when it already has that size, else PIL bicubic
  ToTensor()                   np.array copy -> (H, W, C) uint8 tensor -> permute(2, 0, 1).contiguous() ->
                               float32 / 255
  Normalize(mean, std)         clone, then sub_(mean[:, None, None]).div_(std[:, None, None])
The input is a 1344x1008 photo-like JPEG (a 4x3 grid: 12 tiles + thumbnail = 13 tiles), timed from the file
(decode included) and from an already decoded PIL image. Results: benchmarks/results/preprocess.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common as C  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
WIDTH, HEIGHT = 1344, 1008
TARGET = 3.0


# ---------------------------------------------------------------- the model-card pipeline (reference)

def ref_grid(width: int, height: int, min_num: int, max_num: int, image_size: int) -> tuple[int, int]:
    """Closest aspect ratio among all grids with min_num..max_num tiles (ties: the later grid wins when the
    image has more than half the pixels the grid would hold), candidates ordered by tile count."""
    candidates = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
                         for j in range(1, n + 1) if min_num <= i * j <= max_num}, key=lambda r: r[0] * r[1])
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidates:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def ref_dynamic_preprocess(image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 448,
                           use_thumbnail: bool = True) -> list[Image.Image]:
    cols, rows = ref_grid(image.width, image.height, min_num, max_num, image_size)
    resized = image.resize((image_size * cols, image_size * rows))
    tiles = []
    for i in range(cols * rows):
        x, y = (i % cols) * image_size, (i // cols) * image_size
        tiles.append(resized.crop((x, y, x + image_size, y + image_size)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def ref_transform(tile: Image.Image, input_size: int = 448) -> torch.Tensor:
    """torchvision's Lambda(convert RGB) + Resize(bicubic) + ToTensor + Normalize, as executed on PIL input."""
    if tile.mode != "RGB":
        tile = tile.convert("RGB")
    if tile.size != (input_size, input_size):
        tile = tile.resize((input_size, input_size), Image.Resampling.BICUBIC)
    t = torch.from_numpy(np.array(tile, np.uint8, copy=True))
    t = t.view(tile.size[1], tile.size[0], 3).permute(2, 0, 1).contiguous()
    t = t.to(dtype=torch.get_default_dtype()).div(255)
    mean = torch.as_tensor(MEAN, dtype=t.dtype).view(-1, 1, 1)
    std = torch.as_tensor(STD, dtype=t.dtype).view(-1, 1, 1)
    return t.clone().sub_(mean).div_(std)


def ref_load_image(image, input_size: int = 448, max_num: int = 12) -> torch.Tensor:
    img = image.convert("RGB") if isinstance(image, Image.Image) else Image.open(image).convert("RGB")
    tiles = ref_dynamic_preprocess(img, image_size=input_size, use_thumbnail=True, max_num=max_num)
    return torch.stack([ref_transform(t, input_size) for t in tiles])


# ---------------------------------------------------------------- input

def photo_like(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Image.Image:
    """Smooth colour regions, some mid-frequency structure and sensor-like noise: compresses and resizes
    like a photograph rather than like white noise."""
    rng = np.random.default_rng(seed)
    layers = []
    for cells, amp in ((6, 90.0), (24, 35.0), (96, 12.0)):
        small = rng.uniform(-amp, amp, (max(cells * height // width, 2), cells, 3))
        base = np.clip(small + 128, 0, 255).astype(np.uint8)
        big = np.asarray(Image.fromarray(base, "RGB").resize((width, height), Image.Resampling.BICUBIC),
                         dtype=np.float32) - 128
        layers.append(big)
    img = 128 + sum(layers) + rng.normal(0, 4.0, (height, width, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="wait up to this long for other processes to leave the CPUs idle (and re-measure once "
                         "if they did not)")
    args = ap.parse_args(argv)
    C.setup()
    from internvl.processing.image import load_image

    info = C.machine_info()
    r: dict = {"machine": info, "threads": C.THREADS, "image": f"{WIDTH}x{HEIGHT} JPEG q90",
               "contention_start": C.cpu_contention()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        photo_like().save(path, quality=90)
        decoded = Image.open(path).convert("RGB")
        r["jpeg_bytes"] = path.stat().st_size
        ours_px, ref_px = load_image(path), ref_load_image(path)
        r["tiles"] = int(ours_px.shape[0])
        r["identical"] = bool(torch.equal(ours_px, ref_px))
        r["max_abs_diff"] = float((ours_px - ref_px).abs().max())
        C.log(f"preprocess: {r['tiles']} tiles, {args.repeat} interleaved runs each, from file and from PIL")
        def timings() -> dict:
            return {"from_file": C.measure_pair({"ours": lambda: load_image(path),
                                                 "ref": lambda: ref_load_image(path)}, warmup=2, repeat=args.repeat),
                    "from_pil": C.measure_pair({"ours": lambda: load_image(decoded),
                                                "ref": lambda: ref_load_image(decoded)}, warmup=2, repeat=args.repeat)}

        r.update(C.run_section(timings, wait=args.wait_quiet))
        # where our time goes: opening/decoding vs tiling (PIL resize + crops) vs normalisation
        from internvl.processing.image import open_image, to_pixel_values
        from internvl.processing.tiling import dynamic_preprocess
        tiles = dynamic_preprocess(decoded, max_num=12, use_thumbnail=True)
        r["ours_breakdown"] = {
            "open_decode": C.measure(lambda: open_image(path), warmup=1, repeat=7)["median_s"],
            "tiling": C.measure(lambda: dynamic_preprocess(decoded, max_num=12, use_thumbnail=True),
                                warmup=1, repeat=7)["median_s"],
            "normalize": C.measure(lambda: to_pixel_values(tiles), warmup=1, repeat=7)["median_s"],
            "ref_normalize_per_tile_loop": C.measure(lambda: torch.stack([ref_transform(t) for t in tiles]),
                                                     warmup=1, repeat=7)["median_s"],
        }
    for key in ("from_file", "from_pil"):
        m = r[key]
        m["speedup"] = m["ref"]["median_s"] / m["ours"]["median_s"]
        m["ours_images_per_s"] = 1 / m["ours"]["median_s"]
        m["ref_images_per_s"] = 1 / m["ref"]["median_s"]
    r["target"] = TARGET
    r["target_met"] = r["from_file"]["speedup"] >= TARGET
    return C.finish("preprocess", r, report)


def report(r: dict) -> str:
    rows = []
    for key, label in (("from_file", "JPEG file -> pixel values [ms]"), ("from_pil", "PIL image -> pixel values [ms]")):
        m = r[key]
        rows.append([label, m["ours"]["median_s"] * 1e3, m["ref"]["median_s"] * 1e3, m["speedup"],
                     TARGET if key == "from_file" else None, m["ours"]["min_s"] * 1e3, m["ref"]["min_s"] * 1e3])
    b = r["ours_breakdown"]
    out = C.table(f"preprocessing, {r['image']}, {r['tiles']} tiles (median; speedup = how many times faster "
                  f"ours is; other processes used {r['other_load']:.0%} of the CPUs meanwhile)",
                  ["measurement", "ours", "model card", "speedup", "target", "ours best", "ref best"], rows)
    out += (f"\nours: decode {b['open_decode'] * 1e3:.1f} ms, tiling {b['tiling'] * 1e3:.1f} ms, normalize "
            f"{b['normalize'] * 1e3:.1f} ms (reference per-tile normalize {b['ref_normalize_per_tile_loop'] * 1e3:.1f} ms)"
            f"\nsanity: pixel values identical to the reference: {r['identical']} (max |diff| {r['max_abs_diff']:.3g})")
    return out


if __name__ == "__main__":
    main()
