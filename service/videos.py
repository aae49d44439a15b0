"""Untrusted clip uploads -> the T frames a video model reads, float32 (T, 3, S, S).

A clip arrives as one file or as its frames:
- an animated GIF, APNG or WebP, read with Pillow (recognised by its first bytes);
- an MP4, WebM or another container FFmpeg reads, decoded with PyAV (the `av` package of
  the serve extra); only the first video stream is read;
- several still images in order (the repeated multipart part `frames`, or JSON `frames`),
  each decoded as /v1/captions decodes an image.

Rules (docs/service.md repeats them for users):
- 415: not a clip in a format glimpse reads, or data that cannot be decoded;
- 413: more frames than `max_frames`, a frame of more pixels than `max_pixels` (checked
  from the header before that frame is decoded), or a clip longer than `max_seconds`
  (from the container's durations, before decoding where the container says);
- 422: no frame at all (MIN_FRAMES); a still image is a clip of one frame.
Every frame is converted to RGB as an image is (transparency on white) and resized to
S x S as soon as it is decoded, so a long clip holds only small frames. The clip is
then sampled to the model's T frames evenly over its length (`sample_indices`); a clip
of fewer than T frames repeats some.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from service.errors import InvalidParameter, PayloadTooLarge, UnsupportedMediaType
from service.images import decode_image, open_image, to_rgb

# A still image is a clip of one frame, held still: the OpenAPI document cannot say how
# many frames a clip file holds, so the server takes every clip it can decode.
MIN_FRAMES = 1
# First bytes of the formats Pillow reads as animations; anything else goes to PyAV.
PILLOW_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")
FORMATS = "an animated GIF, APNG or WebP, an MP4 or WebM, or its frames as images"


@dataclass(frozen=True)
class VideoLimits:
    """What one clip may hold (GLIMPSE_MAX_VIDEO_FRAMES, _MAX_VIDEO_SECONDS, _MAX_IMAGE_PIXELS)."""

    max_frames: int
    max_seconds: float
    max_pixels: int


def is_pillow_animation(data: bytes) -> bool:
    return data.startswith(PILLOW_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def small_frame(image: Image.Image, size: int) -> np.ndarray:
    """An RGB frame resized to size x size as uint8 (size, size, 3)."""
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


class FrameCounter:
    """Counts frames and seconds as they are decoded, refusing a clip past the limits."""

    def __init__(self, limits: VideoLimits) -> None:
        self.limits = limits
        self.frames = 0
        self.seconds = 0.0

    def add(self, seconds: float = 0.0) -> None:
        self.frames += 1
        self.seconds += seconds
        if self.frames > self.limits.max_frames:
            raise PayloadTooLarge(f"the clip has more than {self.limits.max_frames} frames")
        self.check_seconds(self.seconds)

    def check_seconds(self, seconds: float) -> None:
        if seconds > self.limits.max_seconds:
            raise PayloadTooLarge(f"the clip lasts {seconds:.1f} s; the limit is "
                                  f"{self.limits.max_seconds:g} s")


def pillow_frames(data: bytes, size: int, limits: VideoLimits) -> Iterator[np.ndarray]:
    """The frames of an animated GIF, APNG or WebP (a still image is one frame)."""
    image = open_image(data, max_pixels=limits.max_pixels)
    counter = FrameCounter(limits)
    if getattr(image, "n_frames", 1) > limits.max_frames:
        raise PayloadTooLarge(f"the clip has {image.n_frames} frames; the limit is "
                              f"{limits.max_frames}")
    try:
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            image.load()
            counter.add(float(image.info.get("duration") or 0.0) / 1000.0)
            yield small_frame(image, size)
    except (PayloadTooLarge, InvalidParameter):
        raise
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError, EOFError, ...
        raise UnsupportedMediaType(f"the clip cannot be decoded: {exc}") from None


def container_frames(data: bytes, size: int, limits: VideoLimits) -> Iterator[np.ndarray]:
    """The frames of the first video stream of a container FFmpeg reads (MP4, WebM, ...)."""
    try:
        import av
    except ImportError:  # pragma: no cover - av is in the serve extra
        raise UnsupportedMediaType("decoding MP4 or WebM needs PyAV (pip install av); send "
                                   "an animated GIF, APNG or WebP, or the frames") from None
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError):
        raise UnsupportedMediaType(f"the upload is not a clip glimpse reads: send {FORMATS}") \
            from None
    with container:
        if not container.streams.video:
            raise UnsupportedMediaType("the container holds no video stream")
        stream = container.streams.video[0]
        counter = FrameCounter(limits)
        check_stream(stream, container, counter, limits)
        try:
            for frame in container.decode(stream):
                counter.add()
                yield small_frame(frame.to_image(), size)
        except av.FFmpegError as exc:
            raise UnsupportedMediaType(f"the clip cannot be decoded: {exc}") from None


def check_stream(stream: Any, container: Any, counter: FrameCounter,
                 limits: VideoLimits) -> None:
    """Refuse a stream whose header says it is too large (pixels, duration, frames)."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(f"frames are {width}x{height} = {width * height} pixels; the "
                              f"limit is {limits.max_pixels}")
    if stream.duration is not None and stream.time_base is not None:
        counter.check_seconds(float(stream.duration * stream.time_base))
    elif container.duration is not None:
        counter.check_seconds(container.duration / 1_000_000)  # AV_TIME_BASE
    if stream.frames and stream.frames > limits.max_frames:
        raise PayloadTooLarge(f"the clip has {stream.frames} frames; the limit is "
                              f"{limits.max_frames}")


def decode_clip(data: bytes, size: int, limits: VideoLimits) -> np.ndarray:
    """Every frame of a clip file as uint8 (n, size, size, 3) (rules in the module docstring)."""
    if not data:
        raise UnsupportedMediaType(f"the clip is empty: send {FORMATS}")
    decode = pillow_frames if is_pillow_animation(data) else container_frames
    return checked_clip(list(decode(data, size, limits)))


def decode_frames(images: Sequence[bytes], size: int, limits: VideoLimits) -> np.ndarray:
    """A clip given as its frames, each an image file, as uint8 (n, size, size, 3)."""
    if len(images) > limits.max_frames:
        raise PayloadTooLarge(f"{len(images)} frames sent; the limit is {limits.max_frames}")
    return checked_clip([small_frame(decode_image(data, max_pixels=limits.max_pixels), size)
                         for data in images])


def checked_clip(frames: list[np.ndarray]) -> np.ndarray:
    if len(frames) < MIN_FRAMES:
        raise InvalidParameter(f"a clip needs at least {MIN_FRAMES} frames, got {len(frames)}")
    return np.stack(frames)


def sample_indices(num_frames: int, frames: int) -> np.ndarray:
    """`frames` frame indices spread evenly over a clip of `num_frames`, first and last
    included: round(i (n - 1) / (T - 1)); a shorter clip repeats frames."""
    if frames == 1:
        return np.zeros(1, dtype=np.int64)
    return np.rint(np.linspace(0, num_frames - 1, frames)).astype(np.int64)


def clip_input(frames: np.ndarray, num_frames: int,
               pixel_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """uint8 frames (n, S, S, 3) -> the model's input float32 (T, 3, S, S), T = num_frames."""
    chosen = frames[sample_indices(len(frames), num_frames)]
    low, high = pixel_range
    values = chosen.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))
