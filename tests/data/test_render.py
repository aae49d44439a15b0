import io
import math

import numpy as np
import pytest
from PIL import Image

from training.data.render import (
    BOX_COVERAGE,
    UNIT_OUTLINES,
    encode_png,
    make_background,
    object_area,
    object_mask,
    render_scene,
    render_scene_with_coverage,
    unit_area,
)
from training.data.world import COLOURS, SHAPES, Scene, ShapeObject


def _obj(shape="circle", colour="red", x=0.5, y=0.5, radius=0.16, rotation=0.0, size="large"):
    return ShapeObject(shape, colour, size, x, y, radius, rotation)


def test_unit_areas_match_geometry():
    assert unit_area("circle") == pytest.approx(math.pi)
    assert unit_area("square") == pytest.approx(2.0)
    assert unit_area("triangle") == pytest.approx(3 * math.sqrt(3) / 4)
    assert unit_area("hexagon") == pytest.approx(3 * math.sqrt(3) / 2)
    assert unit_area("diamond") == pytest.approx(2 * 0.62)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s != "circle"])
def test_outlines_are_inscribed_in_the_unit_circle(shape):
    norms = [math.hypot(x, y) for x, y in UNIT_OUTLINES[shape]]
    assert max(norms) == pytest.approx(1.0)


@pytest.mark.parametrize(("image_size", "tolerance"), [(64, 0.03), (256, 0.01)])
@pytest.mark.parametrize("shape", SHAPES)
def test_rendered_mask_area_matches_exact_area(shape, image_size, tolerance):
    for radius, size in ((0.085, "small"), (0.16, "large")):
        obj = _obj(shape, x=0.51, y=0.47, radius=radius, rotation=0.2, size=size)
        (x0, y0), mask = object_mask(obj, image_size)
        rendered = np.asarray(mask, dtype=np.float64).sum() / 255.0
        assert rendered == pytest.approx(object_area(obj) * image_size**2, rel=tolerance)
        assert (x0, y0) == (math.floor((0.51 - radius) * image_size),
                            math.floor((0.47 - radius) * image_size))


def test_background_is_a_textured_function_of_its_seed():
    a, b, c = make_background(64, 7), make_background(64, 7), make_background(64, 8)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0
    # Textured, not flat: per-pixel noise and a gradient, but a neutral mid/dark tone.
    assert a.std() > 2.0
    assert np.abs(np.diff(a.astype(int), axis=1)).mean() > 1.0
    assert 20 < a.mean() < 150


def test_backgrounds_stay_darker_than_white_objects():
    brightest = max(make_background(64, seed).max() for seed in range(50))
    assert brightest < min(COLOURS["white"]) - 60


def test_objects_are_painted_in_their_colour_over_an_untouched_background():
    background = make_background(64, 3)
    scene = Scene([_obj("circle", "blue", x=0.3, y=0.3), _obj("square", "yellow", x=0.75, y=0.75,
                                                               radius=0.1, size="small")])
    image = render_scene(scene, 64, background)
    assert tuple(image[19, 19]) == COLOURS["blue"]  # centre of the circle
    assert tuple(image[48, 48]) == COLOURS["yellow"]
    # Far from both objects the pixels are exactly the background's.
    np.testing.assert_array_equal(image[:4, 60:], background[:4, 60:])
    np.testing.assert_array_equal(image[60:, :4], background[60:, :4])
    # Anti-aliased: the circle's edge has pixels between background and colour.
    _, [circle, _] = render_scene_with_coverage(scene, 64, background)
    partial = (circle.alpha > 0.05) & (circle.alpha < 0.95)
    assert partial.sum() >= 20


def test_a_clip_reuses_one_background_and_only_moved_pixels_change():
    background = make_background(64, 11)
    first = Scene([_obj("star", "cyan", x=0.3, y=0.5)])
    second = Scene([_obj("star", "cyan", x=0.6, y=0.5)])
    a, b = render_scene(first, 64, background), render_scene(second, 64, background)
    changed_columns = np.flatnonzero((a != b).any(axis=(0, 2)))
    assert changed_columns.min() >= math.floor((0.3 - 0.16) * 64)
    assert changed_columns.max() < math.ceil((0.6 + 0.16) * 64)
    np.testing.assert_array_equal(a[:20], b[:20])  # above both positions


def test_rendering_from_a_seed_is_deterministic():
    scene = Scene([_obj("hexagon", "purple")])
    np.testing.assert_array_equal(render_scene(scene, 64, 5),
                                  render_scene(scene, 64, np.random.default_rng(5)))


def test_box_of_an_axis_aligned_square_is_its_side():
    # Half side r / sqrt(2) = 16 px at 256 px; the box holds pixels covered at least half.
    obj = _obj("square", x=0.5, y=0.5, radius=16 * math.sqrt(2) / 256)
    _, [coverage] = render_scene_with_coverage(Scene([obj]), 256, 0)
    assert coverage.box() == [112, 112, 32, 32]
    assert coverage.area == pytest.approx(32 * 32, rel=0.01)


def test_visible_coverage_accounts_for_occlusion():
    lower = _obj("circle", "red", x=0.4, y=0.5)
    upper = _obj("square", "green", x=0.6, y=0.5)
    _, [hidden, top] = render_scene_with_coverage(Scene([lower, upper]), 128, 0)
    _, [alone] = render_scene_with_coverage(Scene([lower]), 128, 0)
    assert hidden.area < alone.area - 100
    assert top.area == pytest.approx(object_area(upper) * 128**2, rel=0.02)
    total = hidden.full(128) + top.full(128)
    assert total.max() <= 1.0 + 1e-6
    # The lower object's box ends where the upper one starts covering it.
    assert hidden.box()[0] + hidden.box()[2] < alone.box()[0] + alone.box()[2]
    assert BOX_COVERAGE == 0.5


def test_wrong_background_shape_is_refused():
    with pytest.raises(ValueError, match="expected \\(64, 64, 3\\)"):
        render_scene(Scene([_obj()]), 64, np.zeros((32, 32, 3), np.uint8))


def test_png_round_trips_and_is_deterministic():
    image = render_scene(Scene([_obj("cross", "orange", rotation=0.1)]), 64, 9)
    data = encode_png(image)
    assert data == encode_png(image.copy())
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(decoded, image)
    with pytest.raises(ValueError):
        encode_png(image[..., 0])


def _background_by_definition(size: int, seed: int) -> np.ndarray:
    """make_background written plainly: worlds already generated must keep their pixels."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(35.0, 110.0) + rng.uniform(-6.0, 6.0, size=3)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    angle = rng.uniform(0.0, 2.0 * math.pi)
    gradient = rng.uniform(10.0, 30.0) * (xx * math.cos(angle) + yy * math.sin(angle))
    fx, fy = (float(f) for f in rng.uniform(0.5, 2.0, size=2))
    ripple = rng.uniform(2.0, 7.0) * np.sin(
        2.0 * math.pi * (fx * xx + fy * yy) + rng.uniform(0.0, 2.0 * math.pi))
    noise_scale = rng.uniform(0.6, 1.3)
    raw = np.frombuffer(rng.bytes(size * size * 3), dtype=np.uint8).reshape(size, size, 3)
    pixels = ((raw & 15).astype(np.float32) - 7.5) * noise_scale
    pixels += (gradient + ripple)[:, :, None]
    pixels += base.astype(np.float32)
    return np.clip(pixels, 0.0, 255.0).astype(np.uint8)


@pytest.mark.parametrize("size", [32, 64, 97, 128])
def test_background_pixels_follow_their_definition(size):
    for seed in range(40):
        np.testing.assert_array_equal(make_background(size, seed),
                                      _background_by_definition(size, seed))
