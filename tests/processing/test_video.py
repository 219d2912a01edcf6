"""Video: frame indices equal the model card's `get_index`; PyAV decoding returns the sampled frames in order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from internvl.errors import ImageLoadError
from internvl.processing.video import get_index, load_video, video_prompt


def ref_get_index(bound, fps, max_frame, first_idx=0, num_segments=32):
    start, end = (bound[0], bound[1]) if bound else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array([int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)])


@pytest.mark.parametrize("bound, fps, max_frame, n", [
    (None, 30.0, 299, 8), (None, 24.0, 19, 32), ((1.0, 3.5), 25.0, 500, 16), ((0, 100), 10.0, 50, 4)])
def test_get_index_matches_reference(bound, fps, max_frame, n):
    assert np.array_equal(get_index(bound, fps, max_frame, num_segments=n),
                          ref_get_index(bound, fps, max_frame, num_segments=n))


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


@pytest.fixture
def video(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):  # 4 frames of each color
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 48), COLORS[i // 4]))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def test_load_video_samples_frames_in_order(video):
    pixels, patches = load_video(video, input_size=28, num_segments=5)
    assert patches == [1] * 5 and pixels.shape == (5, 3, 28, 28)
    # de-normalize the mean color of each frame and check it is the color of its segment
    mean = np.array([0.485, 0.456, 0.406])[:, None]
    std = np.array([0.229, 0.224, 0.225])[:, None]
    rgb = (pixels.flatten(2).mean(-1).numpy().T * std + mean).T * 255
    for got, want in zip(rgb, COLORS):
        assert np.abs(got - np.array(want)).max() < 40, (got, want)
    assert video_prompt(2) == "Frame-1: <image>\nFrame-2: <image>\n"


def test_bad_video_files(tmp_path):
    pytest.importorskip("av")
    with pytest.raises(ImageLoadError, match="no such file"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"definitely not a video")
    with pytest.raises(ImageLoadError, match="bad.mp4"):
        load_video(tmp_path / "bad.mp4")
