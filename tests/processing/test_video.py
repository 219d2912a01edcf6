"""Video: frame indices equal the model card's `get_index`; PyAV decoding returns the sampled frames in order."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from PIL import Image

from internvl.errors import ImageLoadError, InternVLError
from internvl.processing.tiling import target_grid
from internvl.processing.video import get_index, load_video, read_frames, video_prompt


def ref_get_index(bound, fps, max_frame, first_idx=0, num_segments=32):
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array([int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)])


@pytest.mark.parametrize("bound, fps, max_frame, first_idx, n", [
    (None, 30.0, 299, 0, 8), (None, 24.0, 19, 0, 32), (None, 29.97, 1000, 0, 32), ((1.0, 3.5), 25.0, 500, 0, 16),
    ((0, 100), 10.0, 50, 0, 4), ((2.5, 2.6), 30.0, 900, 0, 8), (None, 1.0, 0, 0, 5), (None, 30.0, 99, 10, 7),
    ((0.0, 1.0), 59.94, 5000, 0, 1)])
def test_get_index_matches_reference(bound, fps, max_frame, first_idx, n):
    got = get_index(bound, fps, max_frame, first_idx=first_idx, num_segments=n)
    want = ref_get_index(bound, fps, max_frame, first_idx=first_idx, num_segments=n)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_video_prompt():
    assert video_prompt(3) == "Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\n"
    assert video_prompt(0) == ""


# 20 frames, 4 of each color, at 10 fps
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 48), COLORS[i // 4]))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def mean_colors(pixels):
    """De-normalize (N, 3, H, W) pixel values to each tile's mean RGB in 0..255."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return (pixels.double().mean(dim=(2, 3)).numpy() * std + mean) * 255


def test_load_video_samples_frames_in_order(clip):
    pixels, patches = load_video(clip, input_size=28, num_segments=5)
    assert patches == [1] * 5 and pixels.shape == (5, 3, 28, 28)
    # the official sampler picks one frame from each 4-frame color block, so the colors come in order
    assert get_index(None, 10.0, 19, num_segments=5).tolist() == [1, 5, 9, 12, 16]
    for got, want in zip(mean_colors(pixels), COLORS):
        assert np.abs(got - np.array(want)).max() < 12, (got, want)


def test_load_video_bound_and_repeats(clip):
    # bound 0.8 s .. 1.2 s at 10 fps: frames 8..12, colors 2 and 3
    frames = read_frames(clip, bound=(0.8, 1.2), num_segments=4)
    want = get_index((0.8, 1.2), 10.0, 19, num_segments=4)
    assert len(frames) == 4
    for frame, index in zip(frames, want):
        assert np.abs(np.asarray(frame).mean((0, 1)) - COLORS[index // 4]).max() < 12
    # more segments than frames: indices repeat, order kept
    pixels, patches = load_video(clip, input_size=14, num_segments=32)
    assert pixels.shape[0] == 32 and sum(patches) == 32


def test_load_video_tiles_frames(clip):
    pixels, patches = load_video(clip, input_size=16, max_num=6, num_segments=2)
    # 64x48 (4:3) with <= 6 tiles: 3x2 (1.5) is the closest grid, so 6 tiles + a thumbnail per frame
    assert target_grid(64, 48, 1, 6, 16) == (3, 2)
    per_frame = 7
    assert patches == [per_frame, per_frame] and pixels.shape == (2 * per_frame, 3, 16, 16)


def test_bad_video_files(tmp_path, clip):
    with pytest.raises(ImageLoadError, match=r"missing\.mp4: no such file"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"definitely not a video" * 10)
    with pytest.raises(ImageLoadError, match=r"bad\.mp4: not a readable video"):
        load_video(tmp_path / "bad.mp4")
    with pytest.raises(ImageLoadError, match="lies outside the video"):
        read_frames(clip, bound=(50.0, 60.0), num_segments=4)


def test_missing_pyav_says_how_to_install(monkeypatch, clip):
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(InternVLError, match=r"pip install internvl\[video\]"):
        load_video(clip)


def test_header_that_over_counts_frames_is_resampled(monkeypatch, clip):
    import internvl.processing.video as video
    real_probe = video._probe
    monkeypatch.setattr(video, "_probe", lambda av, path: (40, real_probe(av, path)[1]))  # 20 frames really
    frames = read_frames(clip, num_segments=5)
    monkeypatch.undo()
    assert [np.asarray(f).tobytes() for f in frames] == [np.asarray(f).tobytes() for f in read_frames(clip, None, 5)]
