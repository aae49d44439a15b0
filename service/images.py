"""Untrusted upload bytes -> RGB image -> the encoder's float32 NCHW input.

Decoding rules (docs/service.md repeats them for users):
- anything Pillow cannot open or decode is 415; more pixels than `max_pixels` is 413,
  checked from the header before any pixel is decoded (decompression bombs);
- the EXIF orientation is applied; an animated image contributes its first frame;
- transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited on
  white; 16-bit and 32-bit integer greyscale (I;16*, I) is scaled from 0..65535 to
  0..255; float greyscale (F) is read as 0..1 when every value lies in it, otherwise
  as 0..255 (clipped); CMYK, YCbCr, 1-bit and palette images use Pillow's conversion.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidParameter, PayloadTooLarge, UnsupportedMediaType

ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
INT_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
WHITE = (255, 255, 255, 255)


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open `data` lazily and check its pixel count before decoding any pixel."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UnsupportedMediaType("the upload is not an image in a format glimpse "
                                   "reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)") from None
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise PayloadTooLarge(f"image is {image.width}x{image.height} = {pixels} pixels; "
                              f"the limit is {max_pixels}")
    return image


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an upload to an upright RGB image (first frame of an animation)."""
    image = open_image(data, max_pixels=max_pixels)
    try:
        image.seek(0)
        image.load()
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
        raise UnsupportedMediaType(f"the image data cannot be decoded: {exc}") from None
    return to_rgb(upright(image))


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; an unreadable tag leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # malformed EXIF must not reject an otherwise good image
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (rules in the module docstring)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in INT_GREY_MODES:
        return _grey_to_rgb(np.asarray(image).astype(np.float64) * (255.0 / 65535.0))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        in_unit_range = values.size > 0 and values.min() >= 0.0 and values.max() <= 1.0
        return _grey_to_rgb(values * 255.0 if in_unit_range else values)
    if mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise UnsupportedMediaType(f"images of mode {mode} are not supported: {exc}") from None


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def to_array(image: Image.Image, size: int,
             pixel_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """RGB image -> float32 [3, size, size], bilinear resize, values in `pixel_range`."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    low, high = pixel_range
    values = np.asarray(image, dtype=np.float32) * np.float32((high - low) / 255.0) + low
    return np.ascontiguousarray(values.transpose(2, 0, 1))


def stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image [3, S, S] arrays -> one float32 batch [B, 3, S, S]."""
    return np.stack(arrays).astype(np.float32, copy=False)


def offline_rgb(image: bytes | str | Path | Image.Image) -> Image.Image:
    """An RGB image of bytes, a file path or a PIL image, decoded as uploads are (offline
    callers: the only pixel limit is Pillow's own)."""
    if isinstance(image, str | Path):
        image = Path(image).read_bytes()
    if isinstance(image, bytes):
        image = decode_image(image, max_pixels=Image.MAX_IMAGE_PIXELS or 1 << 30)
    return to_rgb(image)


def image_input(image: bytes | str | Path | Image.Image | np.ndarray, size: int,
                pixel_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A graph's `image` input [3, size, size] of an image given as bytes, a path, a PIL
    image, or an array already of that shape (InvalidParameter otherwise)."""
    if not isinstance(image, np.ndarray):
        return to_array(offline_rgb(image), size, pixel_range)
    if image.shape != (3, size, size):
        raise InvalidParameter(f"image array must have shape {(3, size, size)}, "
                               f"got {image.shape}")
    return image.astype(np.float32, copy=False)
