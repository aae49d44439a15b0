"""Tiny random-weight video bundles, exported by the real exporters, and clips to send them.

`build_activity_bundle` writes an activity bundle of an LRCN RGB stream and a
single-frame motion stream (fused 0.6 / 0.4); `build_video_caption_bundle` an
LSTM encoder-decoder or mean-pool describer over a small word list. The clips are
short random animations written as APNG, GIF, WebP, MP4 or WebM.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.encoder import EncoderConfig
from models.lrcn import (
    ActivityConfig,
    ActivityRecognizer,
    VideoCaptionConfig,
    build_video_caption_model,
)
from training.data.tokenizer import WordVocab
from training.export.activity import Stream, write_activity_bundle
from training.export.video_caption import write_video_caption_bundle

SIZE, FRAMES = 16, 5
CLASSES = ["move_left", "move_right", "grow", "shrink"]
WORDS = ["a", "the", "red", "blue", "circle", "square", "moves", "left", "right", "grows",
         "while", "stays", "still"]
ENCODER = EncoderConfig(out_dim=8, channels=(4, 8, 8))


def build_activity_bundle(repository: Path, name: str = "activity-tiny", version: int = 1,
                          *, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    rgb = ActivityRecognizer(ActivityConfig(num_classes=len(CLASSES), input="rgb",
                                            hidden_dim=6, frame_grid=2, frame_embed_dim=5,
                                            encoder=ENCODER)).eval()
    motion = ActivityRecognizer(ActivityConfig(num_classes=len(CLASSES), input="motion",
                                               temporal="single-frame", frame_grid=2,
                                               encoder=ENCODER)).eval()
    motion.encoder.load_state_dict(rgb.encoder.state_dict())
    # Sharper scores than random init gives, so that labels differ clearly between clips.
    with torch.no_grad():
        rgb.head.weight.mul_(8.0)
        motion.head.weight.mul_(8.0)
    return write_activity_bundle([Stream(rgb, 0.6), Stream(motion, 0.4)], repository, name,
                                 version, image_size=SIZE, frames=FRAMES, class_names=CLASSES,
                                 training={"tiny": True})


def build_video_caption_bundle(repository: Path, name: str = "video-caption-tiny",
                               version: int = 1, *, arch: str = "lstm-encoder",
                               feed_encoding: bool = False, frame_diff: bool = False,
                               seed: int = 0) -> Path:
    torch.manual_seed(seed)
    vocab = WordVocab(WORDS)
    model = build_video_caption_model(VideoCaptionConfig(
        arch=arch, vocab_size=len(vocab), embed_dim=6, hidden_dim=8, frame_grid=2,
        frame_embed_dim=6, frame_norm="batch" if frame_diff else True,
        feed_encoding=feed_encoding, frame_diff=frame_diff, encoder=ENCODER)).eval()
    return write_video_caption_bundle(model, vocab, repository, name, version,
                                      image_size=SIZE, frames=FRAMES, max_length=8,
                                      training={"tiny": True})


def clip_frames(seed: int, frames: int = 7, size: int = 20) -> list[Image.Image]:
    """A square that moves over a random background, one RGB image per frame."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    colour = rng.integers(0, 255, 3, dtype=np.uint8)
    out = []
    for t in range(frames):
        image = background.copy()
        x = (seed + 2 * t) % (size - 6)
        image[6:12, x:x + 6] = colour
        out.append(Image.fromarray(image))
    return out


def encode_animation(images: list[Image.Image], fmt: str, duration_ms: int = 100) -> bytes:
    """APNG ("PNG"), GIF or WebP (lossless) bytes of the frames."""
    buf = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" else {}
    images[0].save(buf, format=fmt, save_all=True, append_images=images[1:],
                   duration=duration_ms, loop=0, **options)
    return buf.getvalue()


def encode_video(images: list[Image.Image], container: str, fps: int = 10) -> bytes:
    """An MP4 (H.264, else MPEG-4 part 2) or WebM (VP9, else VP8) of the frames, with PyAV."""
    import av

    buf = io.BytesIO()
    codecs = {"mp4": ("libx264", "h264", "mpeg4"), "webm": ("libvpx-vp9", "libvpx")}[container]
    codec = next(c for c in codecs if c in av.codecs_available)
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = images[0].size
        stream.pix_fmt = "yuv420p"
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
