"""Rendering shapes-world scenes to pixels.

Rendering is a pure function of a scene and a background, so a clip can be drawn
as a sequence of scenes (the same objects at new positions) over one background
made once by `make_background`.

Each object is anti-aliased by supersampling: its polygon is drawn with PIL at
`SUPERSAMPLE` times the resolution inside its own bounding box, box-filtered back
down (`Image.reduce`), and the resulting coverage in [0, 1] is alpha-composited
with the object's colour. The background is textured (neutral base tone,
low-frequency gradient and ripple, per-pixel noise) so that a model cannot
separate objects from background by a flat colour alone.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from training.data.world import COLOURS, Scene, ShapeObject

SUPERSAMPLE = 4
# PIL fills the pixels a shape's boundary passes through, so a filled polygon or
# ellipse overhangs its outline by a fraction of a pixel all round; at
# SUPERSAMPLE 4 that inflates a small object's area at 64 px by 4-6%. Outlines
# are drawn inset by this many supersampled pixels (measured), which brings
# rendered areas within ~2% of the exact ones at 64 px and ~1% at 256 px
# (tests/data/test_render.py).
_PIL_OVERHANG = 0.4
# A pixel belongs to an object's box when the object covers at least half of it.
BOX_COVERAGE = 0.5

SeedLike = int | Sequence[int] | np.random.Generator

# Outline of every shape with circumscribed radius 1, centred on the origin,
# "up" being -y as in image coordinates. `None` marks the circle (drawn as an
# ellipse). Rotation by ShapeObject.rotation is applied when drawing.
_CROSS_HALF_WIDTH = 0.3
_CROSS_ARM = math.sqrt(1.0 - _CROSS_HALF_WIDTH**2)  # arm corners lie on the unit circle
_DIAMOND_HALF_WIDTH = 0.62  # a rhombus, so a rotated square is never mistaken for it
_STAR_INNER_RADIUS = 0.45


def _regular_polygon(n: int, phase_deg: float, radius: float = 1.0) -> list[tuple[float, float]]:
    return [
        (radius * math.cos(math.radians(phase_deg + 360.0 * k / n)),
         radius * math.sin(math.radians(phase_deg + 360.0 * k / n)))
        for k in range(n)
    ]


def _star() -> list[tuple[float, float]]:
    outer = _regular_polygon(5, -90.0)
    inner = _regular_polygon(5, -90.0 + 36.0, _STAR_INNER_RADIUS)
    return [p for pair in zip(outer, inner, strict=True) for p in pair]


def _cross() -> list[tuple[float, float]]:
    w, a = _CROSS_HALF_WIDTH, _CROSS_ARM
    return [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
            (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]


UNIT_OUTLINES: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,
    "square": _regular_polygon(4, 45.0),
    "triangle": _regular_polygon(3, -90.0),
    "diamond": [(0.0, -1.0), (_DIAMOND_HALF_WIDTH, 0.0), (0.0, 1.0), (-_DIAMOND_HALF_WIDTH, 0.0)],
    "star": _star(),
    "hexagon": _regular_polygon(6, -90.0),
    "cross": _cross(),
}


@cache
def unit_area(shape: str) -> float:
    """Area of `shape` with circumscribed radius 1 (shoelace formula; pi for the circle)."""
    outline = UNIT_OUTLINES[shape]
    if outline is None:
        return math.pi
    xs, ys = zip(*outline, strict=True)
    n = len(outline)
    return 0.5 * abs(sum(xs[k] * ys[(k + 1) % n] - xs[(k + 1) % n] * ys[k] for k in range(n)))


def object_area(obj: ShapeObject) -> float:
    """Exact area of the object's outline, as a fraction of the image area."""
    return unit_area(obj.shape) * obj.radius**2


def make_background(size: int, seed: SeedLike) -> np.ndarray:
    """A textured (size, size, 3) uint8 background, a pure function of `seed`.

    A mid-to-dark neutral tone with a slight tint, a linear gradient in a random
    direction, a low-frequency ripple, and per-pixel, per-channel uniform noise
    (16 levels from random bytes, standard deviation 3-6). Its brightest pixels
    stay well below the palette's light colours.
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(35.0, 110.0) + rng.uniform(-6.0, 6.0, size=3)
    xx, yy = _unit_grid(size)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    gradient = rng.uniform(10.0, 30.0) * (xx * math.cos(angle) + yy * math.sin(angle))
    fx, fy = (float(f) for f in rng.uniform(0.5, 2.0, size=2))  # float32 arithmetic below
    ripple = rng.uniform(2.0, 7.0) * np.sin(
        2.0 * math.pi * (fx * xx + fy * yy) + rng.uniform(0.0, 2.0 * math.pi))
    noise_scale = rng.uniform(0.6, 1.3)
    # Rows of interleaved RGB, (size, size * 3): numpy broadcasts fast along long rows.
    raw = np.frombuffer(rng.bytes(size * size * 3), dtype=np.uint8).reshape(size, size * 3)
    pixels = ((raw & 15).astype(np.float32) - 7.5) * noise_scale
    pixels += _each_channel(gradient + ripple)
    pixels += base.astype(np.float32).take(_channel_of_column(size))
    np.clip(pixels, 0.0, 255.0, out=pixels)
    return pixels.astype(np.uint8).reshape(size, size, 3)


def _each_channel(values: np.ndarray) -> np.ndarray:
    """(h, w) values repeated for the 3 channels as rows of interleaved RGB, (h, w * 3);
    three strided copies are cheaper than np.repeat(values, 3, axis=1)."""
    h, w = values.shape
    out = np.empty((h, w, 3), dtype=values.dtype)
    out[..., 0] = values
    out[..., 1] = values
    out[..., 2] = values
    return out.reshape(h, w * 3)


@cache
def _channel_of_column(size: int) -> np.ndarray:
    """Channel (0, 1, 2) of each column of a (size, size * 3) row of interleaved RGB."""
    return np.tile(np.arange(3), size)


@cache
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in [-0.5, 0.5], each (size, size) float32."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    return xx, yy


def _pixel_window(obj: ShapeObject, size: int) -> tuple[int, int, int, int]:
    """Integer pixel window (x0, y0, x1, y1) holding the circumscribed circle, clipped."""
    bx0, by0, bx1, by1 = obj.box(size)
    x0, y0 = max(0, math.floor(bx0)), max(0, math.floor(by0))
    x1, y1 = min(size, math.ceil(bx1)), min(size, math.ceil(by1))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def object_mask(obj: ShapeObject, size: int) -> tuple[tuple[int, int], Image.Image]:
    """Anti-aliased coverage of one object as an 8-bit mask: ((x0, y0), mode "L" image).

    The mask covers the object's pixel window whose top-left pixel is (x0, y0);
    255 is full coverage.
    """
    x0, y0, x1, y1 = _pixel_window(obj, size)
    s = SUPERSAMPLE
    mask = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = (obj.x * size - x0) * s, (obj.y * size - y0) * s, obj.radius * size * s
    vertices = _inset_vertices(obj.shape)
    if vertices is None:
        e = _PIL_OVERHANG
        draw.ellipse((cx - r + e, cy - r + e, cx + r - e, cy + r - e), fill=255)
    else:
        cos, sin = math.cos(obj.rotation), math.sin(obj.rotation)
        points = []
        for ux, uy, ex, ey in vertices:
            px, py = r * ux + ex, r * uy + ey  # the outline at radius r, inset by _PIL_OVERHANG
            points.append((cx + px * cos - py * sin, cy + px * sin + py * cos))
        draw.polygon(points, fill=255)
    return (x0, y0), mask.reduce(s)


@cache
def _inset_vertices(shape: str) -> tuple[tuple[float, float, float, float], ...] | None:
    """(ux, uy, e * mx, e * my) per vertex of the unit outline (ux, uy), (mx, my) being its
    unit miter and e _PIL_OVERHANG; None for the circle."""
    outline = UNIT_OUTLINES[shape]
    if outline is None:
        return None
    e = _PIL_OVERHANG
    return tuple((ux, uy, e * mx, e * my)
                 for (ux, uy), (mx, my) in zip(outline, _unit_miters(shape), strict=True))


@cache
def _unit_miters(shape: str) -> list[tuple[float, float]]:
    """Per-vertex displacement that moves every edge of the outline 1 unit inwards.

    A vertex moves by d * (n1 + n2) / (1 + n1 . n2), n1 and n2 being the inward
    unit normals of its two edges (a miter join); the displacement scales with d
    and rotates with the outline, so it is computed once per shape.
    """
    points = UNIT_OUTLINES[shape]
    n = len(points)
    twice_area = sum(points[k][0] * points[(k + 1) % n][1] - points[(k + 1) % n][0] * points[k][1]
                     for k in range(n))
    turn = 1.0 if twice_area > 0 else -1.0

    def inward_normal(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        ex, ey = b[0] - a[0], b[1] - a[1]
        length = math.hypot(ex, ey)
        return -ey / length * turn, ex / length * turn

    miters = []
    for k in range(n):
        n1 = inward_normal(points[k - 1], points[k])
        n2 = inward_normal(points[k], points[(k + 1) % n])
        scale = 1.0 / (1.0 + n1[0] * n2[0] + n1[1] * n2[1])
        miters.append((scale * (n1[0] + n2[0]), scale * (n1[1] + n2[1])))
    return miters


def _as_background(background: SeedLike | np.ndarray, size: int) -> np.ndarray:
    if isinstance(background, np.ndarray):
        if background.shape != (size, size, 3):
            raise ValueError(
                f"background has shape {background.shape}, expected ({size}, {size}, 3)")
        return background
    return make_background(size, background)


@dataclass(frozen=True)
class Coverage:
    """How much of each pixel of a window one object covers, in [0, 1].

    `alpha` is a (h, w) float32 array whose top-left pixel is (x0, y0) in the image.
    """

    x0: int
    y0: int
    alpha: np.ndarray

    @property
    def area(self) -> float:
        """Rendered area in pixels: the sum of coverage."""
        return float(self.alpha.sum(dtype=np.float64))

    def box(self) -> list[int]:
        """COCO box [x, y, w, h] of the pixels covered at least `BOX_COVERAGE`.

        [0, 0, 0, 0] when no pixel is that covered.
        """
        covered = self.alpha >= BOX_COVERAGE
        rows = covered.any(axis=1).tolist()
        if True not in rows:
            return [0, 0, 0, 0]
        cols = covered.any(axis=0).tolist()
        top, left = rows.index(True), cols.index(True)
        bottom, right = len(rows) - rows[::-1].index(True), len(cols) - cols[::-1].index(True)
        return [self.x0 + left, self.y0 + top, right - left, bottom - top]

    def full(self, size: int) -> np.ndarray:
        """The coverage as a (size, size) array over the whole image."""
        out = np.zeros((size, size), dtype=np.float32)
        h, w = self.alpha.shape
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.alpha
        return out

    def occlude(self, top: Coverage) -> None:
        """Scale this coverage by the transparency of `top`, painted over it."""
        x0, y0 = max(self.x0, top.x0), max(self.y0, top.y0)
        x1 = min(self.x0 + self.alpha.shape[1], top.x0 + top.alpha.shape[1])
        y1 = min(self.y0 + self.alpha.shape[0], top.y0 + top.alpha.shape[0])
        if x0 < x1 and y0 < y1:
            self.alpha[y0 - self.y0:y1 - self.y0, x0 - self.x0:x1 - self.x0] *= (
                1.0 - top.alpha[y0 - top.y0:y1 - top.y0, x0 - top.x0:x1 - top.x0])


def render_scene_with_coverage(
    scene: Scene, size: int, background: SeedLike | np.ndarray
) -> tuple[np.ndarray, list[Coverage]]:
    """Render `scene` and return (image, visible coverage of each object).

    Objects are painted in list order, later ones over earlier ones, by
    alpha-compositing their colour through their mask; an object's visible
    coverage is its own coverage times the transparency of everything painted
    over it.
    """
    canvas = Image.fromarray(_as_background(background, size), mode="RGB")
    own = []
    for obj in scene.objects:
        (x0, y0), mask = object_mask(obj, size)
        canvas.paste(COLOURS[obj.colour], (x0, y0, x0 + mask.width, y0 + mask.height), mask)
        own.append(Coverage(x0, y0, np.asarray(mask, dtype=np.float32) / 255.0))
    visible = [Coverage(c.x0, c.y0, c.alpha.copy()) for c in own]
    for i, j in itertools.combinations(range(len(own)), 2):
        visible[i].occlude(own[j])
    return np.asarray(canvas), visible


def render_scene(scene: Scene, size: int, background: SeedLike | np.ndarray) -> np.ndarray:
    """Render `scene` as a (size, size, 3) uint8 image.

    `background` is either an image from `make_background` (reuse one across the
    frames of a clip) or a seed / Generator to make one.
    """
    return render_scene_with_coverage(scene, size, background)[0]


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """Encode a (H, W, 3) uint8 image as an 8-bit RGB PNG.

    Written here rather than by Pillow for speed (no per-row adaptive filter
    search, which buys little on noisy images) and so the bytes depend only on
    the pixels and zlib: every scanline uses filter type 0 and one IDAT chunk.
    """
    height, width, channels = image.shape
    if channels != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", header),
        _png_chunk(b"IDAT", _scanlines(image, level)),
        _png_chunk(b"IEND", b""),
    ))


def encode_apng(frames: np.ndarray, fps: int, level: int = 6) -> bytes:
    """Encode (T, H, W, 3) uint8 frames as an 8-bit RGB animated PNG (APNG) that loops.

    The first frame is the file's default image (a viewer without APNG support
    shows it); every later frame stores only the rectangle of pixels that differ
    from the frame before (blend "source" over the previous frame, dispose
    "none"), which keeps a clip of a still background little larger than one
    frame. As with `encode_png`, the bytes depend only on the pixels, `fps` and zlib.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if not 1 <= fps <= 65535:
        raise ValueError(f"fps must be between 1 and 65535, got {fps}")
    count, height, width, _ = frames.shape
    chunks = [b"\x89PNG\r\n\x1a\n",
              _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
              _png_chunk(b"acTL", struct.pack(">II", count, 0))]  # 0 plays: loop forever
    sequence = 0
    for t in range(count):
        x0, y0, x1, y1 = (0, 0, width, height) if t == 0 else _changed_box(frames[t - 1],
                                                                            frames[t])
        control = struct.pack(">IIIIIHHBB", sequence, x1 - x0, y1 - y0, x0, y0, 1, fps, 0, 0)
        chunks.append(_png_chunk(b"fcTL", control))
        data = _scanlines(frames[t, y0:y1, x0:x1], level)
        if t == 0:
            chunks.append(_png_chunk(b"IDAT", data))
            sequence += 1
        else:
            chunks.append(_png_chunk(b"fdAT", struct.pack(">I", sequence + 1) + data))
            sequence += 2
    chunks.append(_png_chunk(b"IEND", b""))
    return b"".join(chunks)


def _changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels that differ; the top-left pixel when none does
    (an APNG frame is at least 1 x 1)."""
    changed = (before != after).any(axis=-1)
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    if rows.size == 0:
        return 0, 0, 1, 1
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _scanlines(image: np.ndarray, level: int) -> bytes:
    """The zlib stream of an RGB image's scanlines, each with filter type 0."""
    height, width, _ = image.shape
    scanlines = np.zeros((height, width * 3 + 1), dtype=np.uint8)
    scanlines[:, 1:] = image.reshape(height, width * 3)
    return zlib.compress(scanlines.tobytes(), level)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
