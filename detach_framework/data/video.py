"""Video I/O with PyAV: any container and codec FFmpeg reads, any fps and resolution.

`VideoReader.read(times, size)` returns the frames shown at the given times (seconds from the first
frame): it seeks to the keyframe before the earliest time and decodes forward only as far as the latest,
so a window never costs a decode of the whole file. A corrupt or truncated file raises `VideoError`
naming the file, and so does one whose header is damaged: FFmpeg then often still "opens" it as a bare
stream with made-up timestamps at a default 25 fps and no duration, which would silently misplace or drop
every window.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

try:
    import av
except ImportError:  # PyAV is needed only to read or write video files, not to import datasets
    av = None
import numpy as np

from detach_framework.errors import UserError

# A time this close after a frame's timestamp still shows that frame (float rounding of pts * time_base).
_TIME_EPS = 1e-6
# FFmpeg's AVFMT_NOTIMESTAMPS (a stable ABI value; not every PyAV version names it): the demuxer of a bare
# elementary stream, which is what an .avi whose RIFF header is overwritten is probed as (an .mp4 never opens).
_AVFMT_NOTIMESTAMPS = 0x0080


class VideoError(UserError):
    """A video file cannot be opened or decoded, or ends before a requested time."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    width: int
    height: int
    duration: float  # seconds, from the first frame to the end of the last one (container metadata)
    frames: int  # from metadata, or estimated from duration x fps
    codec: str


def uniform_frame_times(start: float, window_seconds: float, frames: int) -> np.ndarray:
    """N frame times spread uniformly over [start, start + window): the centres of N equal slots."""
    return start + (np.arange(frames) + 0.5) * window_seconds / frames


def _require_pyav() -> None:
    if av is None:
        raise UserError("reading or writing video files needs PyAV: pip install av")


def _open(path: Path) -> av.container.InputContainer:
    _require_pyav()
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as exc:  # its str() repeats the path and an errno: keep FFmpeg's reason only
        raise VideoError(f"{path}: not a readable video (corrupt or truncated?): {exc.strerror}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a readable video (corrupt or truncated?): {exc}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: holds no video stream")
    return container


def _stream_facts(path: Path, stream: av.video.stream.VideoStream, container) -> tuple[float, float, int, int]:
    """(fps, duration seconds, frame count, start pts) from metadata only: nothing is decoded."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError(f"{path}: the video stream declares no frame rate")
    fps = float(rate)
    fmt = container.format
    if int(fmt.flags) & _AVFMT_NOTIMESTAMPS:
        raise VideoError(
            f"{path}: damaged header (it reads only as a bare '{fmt.name}' stream without timestamps, at an "
            f"assumed {fps:g} fps); restore the file, or remux a raw stream into .mp4 or .avi"
        )
    start = int(stream.start_time or 0)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = float(container.duration) / av.time_base
    else:
        duration = stream.frames / fps if stream.frames else 0.0
    frames = int(stream.frames) if stream.frames else int(round(duration * fps))
    if not duration > 0 or frames < 1:  # `not >` also catches NaN
        raise VideoError(f"{path}: damaged header (the '{fmt.name}' container reports no frames or no duration)")
    return fps, duration, frames, start


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, size, duration and codec from the container's metadata (no decoding)."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps, duration, frames, _ = _stream_facts(path, stream, container)
        return VideoInfo(path, fps, stream.width, stream.height, duration, frames, stream.codec_context.name)
    finally:
        container.close()


def describe_video(path: str | Path) -> tuple[str, str | None]:
    """For `data inspect`: (facts such as '10 fps 64x48 16.6 s', None) for a file training can read, or
    ('damaged', one line naming the file and why) for one it would refuse."""
    path = Path(path)
    try:
        info = probe_video(path)
    except VideoError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        return "damaged", f"video {path}: {reason if reason.startswith('damaged') else f'damaged ({reason})'}"
    return f"{info.fps:g} fps {info.width}x{info.height} {info.duration:.1f} s", None


class VideoReader:
    """Frames at arbitrary times from one file. The container opens lazily, once per process (a
    DataLoader worker re-opens its own), and is never pickled."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._container = None
        self._pid = -1
        self.decoded_frames = 0  # frames decoded so far by this process (tests check seeking with it)
        self.info = probe_video(self.path)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_container"], state["_pid"] = None, -1
        return state

    def close(self) -> None:
        if self._container is not None and self._pid == os.getpid():
            self._container.close()
        self._container, self._pid = None, -1

    def _stream(self):
        if self._container is None or self._pid != os.getpid():
            self._container, self._pid = _open(self.path), os.getpid()  # a forked copy is left alone
        return self._container, self._container.streams.video[0]

    def read(self, times: Sequence[float] | np.ndarray, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """uint8 [T, 3, H, W]: for each time (seconds from the first frame), the frame shown then, i.e. the
        last frame starting at or before it; times before the first frame get the first frame. `size` is a
        square side or (height, width); None keeps the file's resolution."""
        times = np.asarray(times, np.float64)
        if times.ndim != 1 or len(times) == 0:
            raise ValueError("times must be a non-empty 1-D sequence")
        height, width = (size, size) if isinstance(size, int) else (size or (self.info.height, self.info.width))
        try:
            return self._read(times, int(height), int(width))
        except av.FFmpegError as exc:
            self.close()  # the decoder may be in a bad state: start afresh next time
            raise VideoError(f"{self.path}: decoding failed near {times.min():.3f} s (corrupt file?): {exc}") from None

    def _read(self, times: np.ndarray, height: int, width: int) -> np.ndarray:
        container, stream = self._stream()
        fps, _, _, start = _stream_facts(self.path, stream, container)
        tb = stream.time_base
        order = np.argsort(times, kind="stable")
        first = max(float(times[order[0]]), 0.0)
        picked = self._decode(container, stream, order, times, int(first / tb) + start, start)
        if picked is None:  # the seek landed after the first time (coarse index): decode from the start
            picked = self._decode(container, stream, order, times, start, start)
        frames, last_time = picked
        if frames is None or any(f is None for f in frames):
            missing = [float(times[i]) for i, f in enumerate(frames or [None] * len(times)) if f is None]
            raise VideoError(
                f"{self.path}: the video ends at {last_time:.3f} s but a frame at {max(missing):.3f} s was "
                f"requested (metadata says {self.info.duration:.3f} s at {fps:g} fps): truncated file?"
            )
        cache: dict[int, np.ndarray] = {}
        out = np.empty((len(times), 3, height, width), np.uint8)
        for i, frame in enumerate(frames):
            key = id(frame)
            if key not in cache:
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
                cache[key] = rgb.transpose(2, 0, 1)
            out[i] = cache[key]
        return out

    def _decode(self, container, stream, order: np.ndarray, times: np.ndarray, seek_pts: int, start: int):
        """Decode from the keyframe at or before seek_pts. Returns (frames per time, last frame time), or
        None when the first decoded frame comes after a requested time that the file covers."""
        container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
        tb = stream.time_base
        frames: list = [None] * len(times)
        k = 0  # next position in `order` to assign
        previous = None
        last_time = -np.inf
        for frame in container.decode(stream):
            self.decoded_frames += 1
            pts = frame.pts if frame.pts is not None else frame.dts
            t = float((pts - start) * tb) if pts is not None else last_time + 1.0 / float(stream.average_rate or 1)
            if previous is None and t > max(float(times[order[0]]), 0.0) + _TIME_EPS and seek_pts > start:
                return None
            while k < len(order) and times[order[k]] + _TIME_EPS < t:
                frames[order[k]] = previous if previous is not None else frame
                k += 1
            previous, last_time = frame, t
            if k == len(order):
                break
        if k < len(order) and previous is not None:
            # Past the last frame: it is still on screen for one frame period, beyond that the file ended.
            period = 1.0 / float(stream.average_rate or stream.guessed_rate or 1)
            while k < len(order) and times[order[k]] < last_time + period - _TIME_EPS:
                frames[order[k]] = previous
                k += 1
        return frames, last_time


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    codec: str = "mjpeg",
    *,
    gop: int | None = None,
    quality: int | None = None,
) -> Path:
    """Write uint8 RGB frames [T, H, W, 3] with PyAV (fixtures and exports): codec 'mjpeg' (avi), 'mpeg4',
    'libx264'/'h264' (mp4, even sizes). `gop` sets the keyframe interval."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    _require_pyav()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec in ("libx264", "h264"):
            stream.options = {"crf": str(quality if quality is not None else 12), "preset": "ultrafast"}
        elif quality is not None:
            stream.codec_context.qmax = quality
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


# ---- a test pattern: frames that carry their own index (fixtures check which frame was read) ---------

PATTERN_BITS = 8


def index_frame(index: int, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: bit b of `index` (mod 256) as a bright or dark vertical stripe b, compression-proof."""
    stripe = np.arange(width) * PATTERN_BITS // width  # proportional, so any resize keeps the stripes
    bits = (int(index) % (1 << PATTERN_BITS) >> stripe) & 1
    row = np.where(bits == 1, 220, 30).astype(np.uint8)
    return np.broadcast_to(row[None, :, None], (height, width, 3)).copy()


def read_index(frame: np.ndarray) -> int:
    """Inverse of index_frame on a decoded frame [3, H, W] or [H, W, 3] of any size."""
    image = frame if frame.shape[-1] == 3 else frame.transpose(1, 2, 0)
    column = image.astype(np.float64).mean(axis=(0, 2))
    width = len(column)
    centres = ((np.arange(PATTERN_BITS) + 0.5) * width / PATTERN_BITS).astype(int)
    return int(sum(1 << b for b, c in enumerate(centres) if column[c] > 125))
