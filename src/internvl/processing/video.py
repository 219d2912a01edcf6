"""Video input: the official frame sampling (`get_index`) and decoding with PyAV (spec section 4).

Frames are sampled at the centers of `num_segments` equal segments of the (optionally bounded) clip; each
frame is tiled like an image (usually `max_num=1`: one tile per frame) and the prompt numbers them
`Frame-1: <image>` ... PyAV is an optional dependency (`pip install internvl[video]`).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import ImageLoadError, InternVLError
from .image import to_pixel_values
from .prompt import multi_image_prompt
from .tiling import dynamic_preprocess


def get_index(bound: tuple[float, float] | None, fps: float, max_frame: int, first_idx: int = 0,
              num_segments: int = 32) -> np.ndarray:
    """Indices of the frames to keep: segment centers within [bound[0], bound[1]] seconds (or the whole clip)."""
    start, end = bound if bound else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array([int(start_idx + seg_size / 2 + np.round(seg_size * i)) for i in range(num_segments)])


def _decode_frames(path: str, num_segments: int, bound: tuple[float, float] | None) -> list:
    try:
        import av
    except ImportError:
        raise InternVLError("video input needs PyAV: pip install 'internvl[video]'") from None
    if not os.path.exists(path):
        raise ImageLoadError(f"{path}: no such file")
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 1)
            total = stream.frames
            if total > 0:  # the container knows its length: decode once, keep only the sampled frames
                wanted = get_index(bound, fps, total - 1, num_segments=num_segments).tolist()
                keep = set(wanted)
                kept = {i: f.to_image() for i, f in enumerate(container.decode(stream)) if i in keep}
                if all(i in kept for i in wanted):
                    return [kept[i] for i in wanted]
                container.seek(0)  # the header's frame count was wrong: fall back to counting
            frames = [f.to_image() for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise ImageLoadError(f"{path}: not a readable video ({e})") from None
    if not frames:
        raise ImageLoadError(f"{path}: the video has no frames")
    return [frames[i] for i in get_index(bound, fps, len(frames) - 1, num_segments=num_segments)]


def load_video(path: str | os.PathLike, bound: tuple[float, float] | None = None, input_size: int = 448,
               max_num: int = 1, num_segments: int = 32) -> tuple[torch.Tensor, list[int]]:
    """Sample, tile and normalize frames -> (pixel_values (sum tiles, 3, S, S), tiles per frame)."""
    tiles_per_frame = [dynamic_preprocess(f.convert("RGB"), max_num=max_num, image_size=input_size,
                                          use_thumbnail=True)
                       for f in _decode_frames(os.fspath(path), num_segments, bound)]
    pixel_values = to_pixel_values([t for tiles in tiles_per_frame for t in tiles], input_size)
    return pixel_values, [len(t) for t in tiles_per_frame]


def video_prompt(num_frames: int) -> str:
    """'Frame-1: <image>\\nFrame-2: <image>\\n...' to put before the question."""
    return multi_image_prompt(num_frames, label="Frame")
