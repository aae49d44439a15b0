"""Untrusted uploads: every Pillow mode to RGB, EXIF, animations, bombs, non-images."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import PayloadTooLarge, UnsupportedMediaType
from service.images import decode_image, to_array, to_rgb

BIG = 1 << 24


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def pixel(data: bytes, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    image = decode_image(data, max_pixels=BIG)
    assert image.mode == "RGB"
    return image.getpixel(xy)


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((1, 1), (0, 0, 255, 255))  # opaque blue
    image.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black
    data = encode(image)
    assert pixel(data, (0, 0)) == (255, 255, 255)
    assert pixel(data, (1, 1)) == (0, 0, 255)
    assert pixel(data, (2, 2)) == (127, 127, 127)


def test_la_and_palette_transparency_use_white() -> None:
    assert pixel(encode(Image.new("LA", (2, 2), (0, 0)))) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    data = encode(palette, transparency=0)
    assert pixel(data, (0, 0)) == (255, 255, 255)
    assert pixel(data, (1, 0)) == (200, 100, 50)


def test_cmyk_jpeg_and_greyscale_modes() -> None:
    assert pixel(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100)) \
        == pytest.approx((255, 0, 0), abs=3)
    assert pixel(encode(Image.new("L", (2, 2), 77))) == (77, 77, 77)
    assert pixel(encode(Image.new("1", (2, 2), 1))) == (255, 255, 255)


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.array([[0, 32896], [65535, 257]], dtype=np.uint16))
    assert image.mode.startswith("I;16")
    data = encode(image)
    assert pixel(data, (0, 0)) == (0, 0, 0)
    assert pixel(data, (1, 0)) == (128, 128, 128)
    assert pixel(data, (0, 1)) == (255, 255, 255)
    assert pixel(data, (1, 1)) == (1, 1, 1)


def test_32_bit_integer_and_float_greyscale() -> None:
    as_int = to_rgb(Image.fromarray(np.array([[65535, 70000, -5]], dtype=np.int32)))
    assert [as_int.getpixel((x, 0)) for x in range(3)] == [(255,) * 3, (255,) * 3, (0,) * 3]
    unit = to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)))
    assert [unit.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide = to_rgb(Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32)))
    assert [wide.getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (32, 16), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 8, 8))  # red top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree clockwise turn
    upright = decode_image(encode(image, "JPEG", exif=exif, quality=95), max_pixels=BIG)
    assert upright.size == (16, 32)
    assert upright.getpixel((12, 3))[0] > 200  # the red corner is now top right
    assert upright.getpixel((3, 3))[0] < 50


def test_animated_image_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert pixel(data) == (255, 0, 0)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    data = encode(Image.new("L", (300, 200)))
    assert decode_image(data, max_pixels=60_000).size == (300, 200)
    with pytest.raises(PayloadTooLarge, match="300x200"):
        decode_image(data, max_pixels=59_999)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none (a bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5_000, 100_000])  # over our limit; over Pillow's too
def test_decompression_bomb_header_is_refused(side: int) -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(png_header_only(side, side), max_pixels=BIG)


@pytest.mark.parametrize("data", [b"", b"hello world", b"%PDF-1.4 not an image",
                                  b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_non_images_are_unsupported_media(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        decode_image(data, max_pixels=BIG)


def test_truncated_image_is_unsupported_media() -> None:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                    dtype=np.uint8)))
    with pytest.raises(UnsupportedMediaType):
        decode_image(data[: len(data) // 2], max_pixels=BIG)


def test_to_array_resizes_and_scales_to_nchw() -> None:
    image = Image.new("RGB", (32, 16), (255, 0, 51))
    arr = to_array(image, 8)
    assert arr.shape == (3, 8, 8) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, 3, 3], [1.0, 0.0, 0.2], atol=1e-6)
    np.testing.assert_allclose(to_array(image, 8, (-1.0, 1.0))[:, 0, 0], [1.0, -1.0, -0.6],
                               atol=1e-6)
