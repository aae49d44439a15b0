"""Sampling shapes-world scenes.

A scene holds 1-4 objects (a narrower range on request) whose attributes come
from the combinations its split allows: train, val and test never contain a held-out combination
(world.NOVEL_COLOUR_SHAPE, world.NOVEL_SIZE_SHAPE); every `novel` scene contains
at least one. Placement is by rejection so that every fact the generator states
about a scene is unambiguous:

- every object lies fully inside the image;
- circumscribed circles overlap by at most `OVERLAP_TOLERANCE` of their radii;
- for every pair, |dx| and |dy| differ by at least `RELATION_MARGIN`, so the
  dominant-axis relation (world.relation) is clear to the eye;
- the largest object (by area) is at least `AREA_MARGIN` times larger than the
  runner-up and also has the largest radius, so "largest" means the same thing
  by area, by radius and by size word.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np

from training.data.render import object_area
from training.data.world import COLOURS, SHAPES, SIZE_RADIUS, SIZES, SPLITS, Scene, ShapeObject

MIN_OBJECTS = 1
MAX_OBJECTS = 4
RADIUS_JITTER = 0.10  # radius = SIZE_RADIUS[size] * U(1 - j, 1 + j)
MAX_ROTATION = math.radians(15.0)  # small, so a square never reads as a diamond
EDGE_MARGIN = 0.01  # gap between an object's circumscribed circle and the image edge
OVERLAP_TOLERANCE = 0.10  # centres at least (1 - t) * (r_i + r_j) apart
RELATION_MARGIN = 0.05  # | |dx| - |dy| | of every pair, fraction of the side
AREA_MARGIN = 1.10  # largest area / second largest area
DECIMALS = 4  # coordinates are stored rounded, so a reloaded scene is the sampled one

_PLACEMENT_TRIES = 60
_SCENE_TRIES = 500

Combination = tuple[str, str, str]  # (shape, colour, size)


def _is_novel(combo: Combination) -> bool:
    shape, colour, size = combo
    return ShapeObject(shape, colour, size, 0.0, 0.0, 0.0).is_novel()


ALL_COMBINATIONS: tuple[Combination, ...] = tuple(itertools.product(SHAPES, COLOURS, SIZES))
NOVEL_COMBINATIONS: tuple[Combination, ...] = tuple(c for c in ALL_COMBINATIONS if _is_novel(c))
SEEN_COMBINATIONS: tuple[Combination, ...] = tuple(
    c for c in ALL_COMBINATIONS if not _is_novel(c))


def sample_combinations(rng: np.random.Generator, split: str, n: int) -> list[Combination]:
    """Attributes of `n` objects for `split`.

    train/val/test draw from the seen combinations only. A novel scene places one
    held-out combination at a random position and draws the others from all
    combinations.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if split != "novel":
        return [SEEN_COMBINATIONS[k] for k in rng.integers(len(SEEN_COMBINATIONS), size=n)]
    combos = [ALL_COMBINATIONS[k] for k in rng.integers(len(ALL_COMBINATIONS), size=n)]
    combos[int(rng.integers(n))] = NOVEL_COMBINATIONS[int(rng.integers(len(NOVEL_COMBINATIONS)))]
    return combos


def largest_object(scene: Scene) -> int:
    """Index of the object with the largest area."""
    areas = [object_area(o) for o in scene.objects]
    return int(np.argmax(areas))


def _largest_is_clear(objects: list[ShapeObject]) -> bool:
    if len(objects) < 2:
        return True
    areas = sorted((object_area(o), o.radius) for o in objects)
    (second_area, _), (top_area, top_radius) = areas[-2], areas[-1]
    return (top_area >= AREA_MARGIN * second_area
            and all(o.radius <= top_radius for o in objects))


def fits_inside(obj: ShapeObject) -> bool:
    """Whether the circumscribed circle lies inside the image, EDGE_MARGIN from every edge."""
    lo, hi = obj.radius + EDGE_MARGIN, 1.0 - obj.radius - EDGE_MARGIN
    return lo <= obj.x <= hi and lo <= obj.y <= hi


def objects_overlap(a: ShapeObject, b: ShapeObject) -> bool:
    """Whether the circumscribed circles overlap by more than OVERLAP_TOLERANCE of their radii."""
    return math.hypot(a.x - b.x, a.y - b.y) < (1.0 - OVERLAP_TOLERANCE) * (a.radius + b.radius)


def _pair_problem(a: ShapeObject, b: ShapeObject) -> str | None:
    if objects_overlap(a, b):
        return "overlap"
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    if abs(dx - dy) < RELATION_MARGIN:
        return "ambiguous relation"
    return None


def scene_problems(scene: Scene) -> list[str]:
    """Every placement rule the scene breaks (empty for a valid scene)."""
    problems = [f"object {i} not inside the image"
                for i, o in enumerate(scene.objects) if not fits_inside(o)]
    for (i, a), (j, b) in itertools.combinations(enumerate(scene.objects), 2):
        problem = _pair_problem(a, b)
        if problem:
            problems.append(f"objects {i} and {j}: {problem}")
    if not _largest_is_clear(scene.objects):
        problems.append("largest object not clear")
    if not MIN_OBJECTS <= len(scene.objects) <= MAX_OBJECTS:
        problems.append(f"{len(scene.objects)} objects")
    return problems


def random_centre(rng: np.random.Generator, radius: float) -> tuple[float, float]:
    """A centre (x, y) drawn uniformly where a circle of `radius` fits inside."""
    lo = radius + EDGE_MARGIN
    x, y = rng.uniform(lo, 1.0 - lo, size=2).tolist()
    return round(x, DECIMALS), round(y, DECIMALS)


def sample_object(rng: np.random.Generator, combo: Combination) -> ShapeObject:
    """One object with jittered radius and rotation, centred anywhere it fits inside."""
    shape, colour, size = combo
    u, v = rng.random(2).tolist()
    radius = round(SIZE_RADIUS[size] * (1 + RADIUS_JITTER * (2 * u - 1)), DECIMALS)
    rotation = 0.0 if shape == "circle" else round(MAX_ROTATION * (2 * v - 1), DECIMALS)
    x, y = random_centre(rng, radius)
    return ShapeObject(shape, colour, size, x, y, radius, rotation)


def _place(rng: np.random.Generator, combos: list[Combination]) -> list[ShapeObject] | None:
    """Objects for `combos` placed by rejection, largest first; None if they do not fit."""
    drafts = [sample_object(rng, c) for c in combos]
    if not _largest_is_clear(drafts):
        return None
    placed: dict[int, ShapeObject] = {}
    for k in sorted(range(len(drafts)), key=lambda k: -drafts[k].radius):
        obj = drafts[k]
        for _ in range(_PLACEMENT_TRIES):
            if fits_inside(obj) and all(_pair_problem(obj, p) is None for p in placed.values()):
                placed[k] = obj
                break
            obj = replace(obj, **dict(zip("xy", random_centre(rng, obj.radius), strict=True)))
        else:
            return None
    return [placed[k] for k in range(len(drafts))]


def check_object_range(min_objects: int, max_objects: int) -> None:
    """Raise ValueError unless MIN_OBJECTS <= min_objects <= max_objects <= MAX_OBJECTS."""
    if not MIN_OBJECTS <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"objects per image must satisfy {MIN_OBJECTS} <= min <= max <= "
                         f"{MAX_OBJECTS}, got min {min_objects} and max {max_objects}")


def sample_scene(rng: np.random.Generator, split: str, *, min_objects: int = MIN_OBJECTS,
                 max_objects: int = MAX_OBJECTS) -> Scene:
    """A valid scene for `split`: the number of objects is uniform in
    min_objects..max_objects (1..4 by default)."""
    check_object_range(min_objects, max_objects)
    n = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(_SCENE_TRIES):
        objects = _place(rng, sample_combinations(rng, split, n))
        if objects is not None:
            return Scene(objects)
    raise RuntimeError(f"could not place {n} objects in {_SCENE_TRIES} tries")
