"""Video input: the official frame sampling and a PyAV decoder, giving pixel values per frame. Spec sections 3-4.

`get_index` is the model cards' sampler (the centers of `num_segments` equal segments of the clip or of a
time bound); `load_video` replaces their decord reader with PyAV and tiles each sampled frame like an
image (one tile per frame by default). PyAV is optional (`pip install internvl[video]`) and imported only
when a video is read. The prompt numbers frames `Frame-1: <image>` ... (`video_prompt`).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..errors import ImageLoadError, InternVLError
from .image import to_pixel_values
from .prompt import IMAGE_PLACEHOLDER
from .tiling import dynamic_preprocess


def get_index(bound: tuple[float, float] | None, fps: float, max_frame: int, first_idx: int = 0,
              num_segments: int = 32) -> np.ndarray:
    """Frame indices to sample, exactly as the official `get_index`.

    Args:
        bound: (start, end) in seconds, or None for the whole clip.
        fps: Frames per second of the video.
        max_frame: Index of the last frame (frame count - 1).
        first_idx: Lowest index allowed.
        num_segments: Number of frames to sample.

    Returns:
        int64 array (num_segments,): the frame at the middle of each equal segment (indices repeat when
        the clip has fewer frames than segments).
    """
    start, end = bound if bound else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array([int(start_idx + (seg_size / 2) + np.round(seg_size * i)) for i in range(num_segments)])


def _import_av():
    try:
        import av
    except ImportError:
        raise InternVLError("reading video needs PyAV: pip install internvl[video]") from None
    return av


def _probe(av, path: str) -> tuple[int, float]:
    """(frame count, average fps) of the first video stream, counting by decoding when the header has none."""
    with av.open(path) as container:
        if not container.streams.video:
            raise ImageLoadError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        count = stream.frames or sum(1 for _ in container.decode(stream))
    return count, float(rate) if rate else 0.0


def _decode(av, path: str, wanted: list[int]) -> tuple[dict[int, Image.Image], int]:
    """Decode once from the start, keeping only the wanted frames (a clip never sits in memory whole).

    Returns the kept frames by index and how many frames were decoded.
    """
    keep, last, frames, seen = set(wanted), max(wanted), {}, 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            seen = index + 1
            if index in keep:
                frames[index] = frame.to_image()  # RGB, like decord's asnumpy()
            if index >= last:
                break
    return frames, seen


def read_frames(path: str | os.PathLike, bound: tuple[float, float] | None = None, num_segments: int = 32
                ) -> list[Image.Image]:
    """Decode the `num_segments` frames `get_index` picks, in order, as RGB images.

    Raises:
        InternVLError: PyAV is not installed.
        ImageLoadError: The file is missing, not a video, or has no decodable frames.
    """
    av = _import_av()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageLoadError(f"{path}: no such file")
    try:
        count, fps = _probe(av, path)
        for _ in range(2):  # a second pass only when the header over-counts the frames
            if count < 1:
                raise ImageLoadError(f"{path}: the video has no decodable frames")
            if fps <= 0 and bound:
                raise ImageLoadError(f"{path}: the video has no frame rate, so a time bound cannot be used")
            wanted = get_index(bound, fps or 1.0, count - 1, first_idx=0, num_segments=num_segments).tolist()
            if min(wanted) < 0 or max(wanted) >= count:
                raise ImageLoadError(f"{path}: bound {bound} s lies outside the video ({count} frames at "
                                     f"{fps:g} fps)")
            frames, seen = _decode(av, path, wanted)
            if len(frames) == len(set(wanted)):
                return [frames[i] for i in wanted]
            count = seen  # resample among the frames that really exist
    except av.error.FFmpegError as e:
        raise ImageLoadError(f"{path}: not a readable video ({e})") from None
    raise ImageLoadError(f"{path}: the header declares more frames than can be decoded")


def load_video(path: str | os.PathLike, bound: tuple[float, float] | None = None, input_size: int = 448,
               max_num: int = 1, num_segments: int = 32) -> tuple[torch.Tensor, list[int]]:
    """Sample, tile and normalize video frames: the official quick start's `load_video`.

    Args:
        path: The video file.
        bound: (start, end) in seconds, or None for the whole clip.
        input_size: Side of a tile.
        max_num: Most tiles per frame (1 in the official examples: one tile per frame).
        num_segments: Number of frames to sample.

    Returns:
        (pixel_values (sum of tiles, 3, input_size, input_size), tiles per frame), ready for
        `chat(..., num_patches_list=...)` with `video_prompt(len(num_patches_list))`.
    """
    per_frame = [dynamic_preprocess(frame, image_size=input_size, use_thumbnail=True, max_num=max_num)
                 for frame in read_frames(path, bound, num_segments)]
    pixel_values = to_pixel_values([tile for tiles in per_frame for tile in tiles], input_size)
    return pixel_values, [len(tiles) for tiles in per_frame]


def video_prompt(num_frames: int) -> str:
    """'Frame-1: <image>\\nFrame-2: <image>\\n...', the official prefix put before a video question."""
    return "".join(f"Frame-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(num_frames))
