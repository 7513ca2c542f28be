"""Video I/O with PyAV: containers and codecs, uniform sampling by timestamp, resize, seeking, clear errors.

Every test video shows its own frame index (index_frame), so which frame was read is checked exactly.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from detach_framework.data.video import (
    VideoError,
    VideoReader,
    describe_video,
    index_frame,
    probe_video,
    read_index,
    uniform_frame_times,
    write_video,
)

CASES = [  # (codec, container, fps, (height, width))
    ("mjpeg", "avi", 10.0, (48, 64)),
    ("mpeg4", "avi", 25.0, (60, 80)),
    ("libx264", "mp4", 30000 / 1001, (64, 96)),
]


def _video(path, frames, fps, size, codec="mjpeg", gop=None):
    images = np.stack([index_frame(k, *size) for k in range(frames)])
    return write_video(path, images, fps, codec, gop=gop)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {
        codec: (_video(root / f"v_{codec}.{ext}", 120, fps, size, codec, gop=12), fps, size)
        for codec, ext, fps, size in CASES
    }


def test_uniform_frame_times_are_slot_centres():
    np.testing.assert_allclose(uniform_frame_times(10.0, 2.0, 4), [10.25, 10.75, 11.25, 11.75])


@pytest.mark.parametrize("codec", [c[0] for c in CASES])
def test_probe_reports_fps_size_and_length(videos, codec):
    path, fps, (h, w) = videos[codec]
    info = probe_video(path)
    assert info.fps == pytest.approx(fps, rel=1e-4)
    assert (info.height, info.width) == (h, w)
    assert info.frames == 120
    assert info.duration == pytest.approx(120 / fps, abs=1.5 / fps)


@pytest.mark.parametrize("codec", [c[0] for c in CASES])
def test_frames_by_timestamp_in_any_order_and_resized(videos, codec):
    path, fps, (h, w) = videos[codec]
    reader = VideoReader(path)
    times = np.array([2.31, 0.0, 1.05, 3.5, 0.52])  # unsorted on purpose
    frames = reader.read(times, 32)
    assert frames.shape == (5, 3, 32, 32) and frames.dtype == np.uint8
    # The frame shown at t is the last one starting at or before t: floor(t * fps).
    assert [read_index(f) for f in frames] == [int(np.floor(t * fps + 1e-9)) for t in times]
    native = reader.read([1.0])
    assert native.shape == (1, 3, h, w)
    assert reader.read([1.0], (24, 40)).shape == (1, 3, 24, 40)


def test_window_sampling_reads_uniform_frames(videos):
    path, fps, _ = videos["mjpeg"]
    times = uniform_frame_times(4.0, 2.0, 5)  # 4.2, 4.6, 5.0, 5.4, 5.8 s at 10 fps
    got = [read_index(f) for f in VideoReader(path).read(times, 16)]
    assert got == [42, 46, 50, 54, 58]


def test_seeking_decodes_only_near_the_window(tmp_path):
    path = _video(tmp_path / "long.mp4", 600, 25.0, (32, 32), "libx264", gop=10)
    reader = VideoReader(path)
    frames = reader.read(uniform_frame_times(22.0, 1.0, 4), 16)  # near the end of a 24 s file
    assert [read_index(f) for f in frames] == [(550 + k) % 256 for k in (3, 9, 15, 21)]
    assert reader.decoded_frames < 40  # a keyframe interval plus the window, not 550 frames
    reader.read([1.0], 16)  # and backwards again
    assert reader.decoded_frames < 80


def test_edges_first_frame_before_start_last_frame_for_one_period(videos):
    path, fps, _ = videos["mjpeg"]
    reader = VideoReader(path)
    assert read_index(reader.read([-0.05])[0]) == 0
    assert read_index(reader.read([11.95])[0]) == 119  # the last frame is shown until 12.0 s
    with pytest.raises(VideoError, match=r"v_mjpeg\.avi: the video ends at 11\.900 s but a frame at 12\.500 s"):
        reader.read([12.5])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(VideoError, match="video file not found: .*nothing.mp4"):
        VideoReader(tmp_path / "nothing.mp4")


def test_garbage_file_is_named(tmp_path):
    path = tmp_path / "garbage.avi"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 20)
    with pytest.raises(VideoError, match=r"garbage\.avi: not a readable video"):
        VideoReader(path)


def test_truncated_mp4_is_named(videos, tmp_path):
    data = videos["libx264"][0].read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is lost with the end of the file
    with pytest.raises(VideoError, match=r"cut\.mp4: not a readable video \(corrupt or truncated\?\)"):
        VideoReader(path)


def test_truncated_avi_fails_when_read_past_the_cut(videos, tmp_path):
    data = videos["mjpeg"][0].read_bytes()
    path = tmp_path / "cut.avi"
    path.write_bytes(data[: len(data) // 2])
    reader = VideoReader(path)
    assert read_index(reader.read([1.0])[0]) == 10  # the first half still reads
    with pytest.raises(VideoError, match=r"cut\.avi: "):
        reader.read([11.0])


# An .avi whose RIFF header is overwritten still "opens" in FFmpeg as a bare stream at a made-up 25 fps with no
# duration; a training used to drop every window of it as "outside the video" and `data inspect` said "25 fps 0.0 s".
DAMAGED_HEADER = {
    "mjpeg": r"damaged header \(it reads only as a bare 'mjpeg' stream without timestamps",
    "mpeg4": r"damaged header \(it reads only as a bare 'm4v' stream without timestamps",
    "libx264": r"not a readable video \(corrupt or truncated\?\): Invalid data",  # mp4 never opens without it
}


@pytest.mark.parametrize("codec", [c[0] for c in CASES])
@pytest.mark.parametrize(
    "junk",
    [bytes(64), np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes()],
    ids=["zeros_64", "junk_4096"],
)
def test_damaged_header_is_named_not_read_at_a_default_rate(videos, tmp_path, codec, junk):
    original = videos[codec][0]
    path = tmp_path / f"damaged{original.suffix}"
    path.write_bytes(junk + original.read_bytes()[len(junk) :])
    expected = f"{re.escape(str(path))}: {DAMAGED_HEADER[codec]}"
    with pytest.raises(VideoError, match=expected):
        probe_video(path)
    with pytest.raises(VideoError, match=expected):
        VideoReader(path)
    facts, damage = describe_video(path)
    assert facts == "damaged" and damage.startswith(f"video {path}: ") and "damaged" in damage
    assert "\n" not in damage and str(path) not in damage.removeprefix(f"video {path}: ")  # FFmpeg's repeat cut


def test_header_that_counts_no_frames_is_named(videos, tmp_path):
    data = bytearray(videos["mjpeg"][0].read_bytes())
    total_frames = data.index(b"avih") + 8 + 16  # AVIMAINHEADER.dwTotalFrames
    stream_length = data.index(b"strh") + 8 + 32  # AVISTREAMHEADER.dwLength
    for offset in (total_frames, stream_length):
        data[offset : offset + 4] = bytes(4)
    path = tmp_path / "no_frames.avi"
    path.write_bytes(bytes(data))
    reason = "damaged header (the 'avi' container reports no frames or no duration)"
    with pytest.raises(VideoError, match=re.escape(f"{path}: {reason}")):
        VideoReader(path)
    assert describe_video(path) == ("damaged", f"video {path}: {reason}")


def test_describe_video_of_a_readable_file(videos):
    assert describe_video(videos["mjpeg"][0]) == ("10 fps 64x48 12.0 s", None)


def test_corrupt_bytes_inside_a_file_are_named(videos, tmp_path):
    data = bytearray(videos["mjpeg"][0].read_bytes())
    start = len(data) // 3
    data[start : start + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path = tmp_path / "damaged.avi"
    path.write_bytes(bytes(data))
    reader = VideoReader(path)
    with pytest.raises(VideoError, match=r"damaged\.avi: "):
        reader.read(np.linspace(0.0, 11.8, 60))


def test_reader_pickles_without_its_open_container(videos):
    reader = VideoReader(videos["mjpeg"][0])
    reader.read([1.0])
    clone = pickle.loads(pickle.dumps(reader))  # DataLoader workers started with spawn
    assert read_index(clone.read([2.0])[0]) == 20
