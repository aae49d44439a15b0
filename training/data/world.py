"""The shapes world's vocabulary and scene model.

A scene is a list of objects, each a shape of one colour and one size at a
position. Everything the generator writes (pixels, captions, questions, boxes,
relations, class labels) is a function of the scene, so every model can be
scored exactly against it. Coordinates are fractions of the image side, so one
scene renders at 64, 128 or 256 pixels alike; a video clip is a sequence of
scenes whose objects move (positions change, identities stay).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "hexagon", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
}
SIZES: tuple[str, ...] = ("small", "large")
# Radius of the shape's circumscribed circle, as a fraction of the image side.
SIZE_RADIUS: dict[str, float] = {"small": 0.085, "large": 0.16}

# Dominant-axis relations: exactly one holds for every ordered pair of objects.
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left": "right", "right": "left", "above": "below", "below": "above",
}

# Attribute combinations that appear only in the `novel` split (never in
# train, val or test), to measure compositional generalisation.
NOVEL_COLOUR_SHAPE: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("red", "star"), ("blue", "hexagon"), ("yellow", "cross")}
)
NOVEL_SIZE_SHAPE: frozenset[tuple[str, str]] = frozenset({("large", "diamond")})

SPLITS: tuple[str, ...] = ("train", "val", "test", "novel")


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, fraction of the image width (0 = left edge)
    y: float  # centre, fraction of the image height (0 = top edge)
    radius: float  # circumscribed radius, fraction of the image side
    rotation: float = 0.0  # radians

    def is_novel(self) -> bool:
        return ((self.colour, self.shape) in NOVEL_COLOUR_SHAPE
                or (self.size, self.shape) in NOVEL_SIZE_SHAPE)

    def box(self, image_size: int) -> tuple[float, float, float, float]:
        """Axis-aligned box (x0, y0, x1, y1) in pixels of the circumscribed circle."""
        r = self.radius * image_size
        cx, cy = self.x * image_size, self.y * image_size
        return (cx - r, cy - r, cx + r, cy + r)


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where `a` is relative to `b`: the axis of the larger displacement decides."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


@dataclass
class Scene:
    objects: list[ShapeObject] = field(default_factory=list)

    def relations(self) -> list[tuple[int, str, int]]:
        """Every ordered pair (i, relation of i to j, j), i != j."""
        return [(i, relation(a, b), j)
                for i, a in enumerate(self.objects)
                for j, b in enumerate(self.objects) if i != j]

    def is_novel(self) -> bool:
        return any(o.is_novel() for o in self.objects)

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(objects=[ShapeObject(**o) for o in d["objects"]])


def class_label(shape: str, colour: str) -> int:
    """Class id for class-conditioned models: shape-major over SHAPES x COLOURS."""
    return SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour)


NUM_CLASSES = len(SHAPES) * len(COLOURS)


def object_class(shape: str, colour: str, size: str) -> int:
    """Class id of a (shape, colour, size) object: shape-major, then colour, then size."""
    return (SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour)) * len(SIZES) \
        + SIZES.index(size)


NUM_OBJECT_CLASSES = len(SHAPES) * len(COLOURS) * len(SIZES)
