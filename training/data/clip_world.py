"""The shapes world in motion: activities, clips and how they are sampled.

A clip is T frames of one or two shapes-world objects over one background. Its
first object, the *actor*, performs one activity from ACTIVITIES over the whole
clip; that activity is the clip's class label. A second object, when there is
one, is a *bystander* that stays still ("still", not a class): a description
must then say which object does what, and a recogniser must find the object
that acts. An object's identity (shape, colour, size) is that of its first
visible frame; only the activity changes what is drawn.

Several activities cannot be told apart from one frame: a frame of an object
moving left is distributed exactly like a frame of one moving right (the start
is drawn so that the whole path fits, which makes the positions along the path
symmetric), and likewise up / down, grow / shrink (the radius sweeps the same
range in opposite directions), appear / vanish, and a colour change (each frame
shows one colour). Rotation, growth and (dis)appearance leave single-frame
traces (angles beyond the still world's ±15°, radii between the two sizes, a
missing object), so a single-frame model can tell those families apart but not
the direction within them.

Positions and radii are fractions of the image side, as in training.data.world,
so a clip renders at any size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from training.data.scenes import (
    DECIMALS,
    EDGE_MARGIN,
    RADIUS_JITTER,
    SEEN_COMBINATIONS,
    Combination,
    fits_inside,
    objects_overlap,
    random_centre,
    sample_object,
)
from training.data.world import (
    COLOURS,
    NOVEL_COLOUR_SHAPE,
    SHAPES,
    SIZE_RADIUS,
    SPLITS,
    Scene,
    ShapeObject,
)

# The class labels, in label order (label = index). See docs/datasets.md.
ACTIVITIES: tuple[str, ...] = (
    "move_left", "move_right", "move_up", "move_down", "grow", "shrink",
    "rotate", "change_colour", "appear", "vanish", "bounce",
)
ACTIVITY_DEFINITIONS: dict[str, str] = {
    "move_left": "the centre moves left in a straight line by 0.25-0.45 of the image side",
    "move_right": "the centre moves right in a straight line by 0.25-0.45 of the image side",
    "move_up": "the centre moves up in a straight line by 0.25-0.45 of the image side",
    "move_down": "the centre moves down in a straight line by 0.25-0.45 of the image side",
    "grow": "the radius grows linearly from a small object's to a large object's",
    "shrink": "the radius shrinks linearly from a large object's to a small object's",
    "rotate": "the object turns about its centre by 8-14 degrees per frame, either way",
    "change_colour": "the colour switches to another palette colour at one frame mid-clip",
    "appear": "the object is absent until one frame mid-clip, then present",
    "vanish": "the object is present until one frame mid-clip, then absent",
    "bounce": "the centre hops up by 0.2-0.3 of the side and falls back, once or twice",
}
# The pairs of activities whose single frames are distributed alike (see the module
# docstring): a single-frame model can only guess between the two of a pair.
SINGLE_FRAME_PAIRS: tuple[tuple[str, str], ...] = (
    ("move_left", "move_right"), ("move_up", "move_down"), ("grow", "shrink"),
    ("appear", "vanish"),
)
STILL = "still"  # what a bystander does; not a class
MOVES: dict[str, tuple[float, float]] = {  # direction (dx, dy) of each straight move
    "move_left": (-1.0, 0.0), "move_right": (1.0, 0.0),
    "move_up": (0.0, -1.0), "move_down": (0.0, 1.0),
}
# Activities that some shapes cannot perform visibly or without breaking the still
# world's held-out combinations: a circle looks the same at every angle, and a
# growing or shrinking diamond would be large for part of the clip (every large
# diamond is held out, world.NOVEL_SIZE_SHAPE).
IMPOSSIBLE_SHAPE_ACTIVITY: frozenset[tuple[str, str]] = frozenset(
    {("circle", "rotate"), ("diamond", "grow"), ("diamond", "shrink")})
# Shape-activity pairs that only the `novel` split's actors perform (one per shape,
# each a different activity), to measure compositional generalisation to motion.
NOVEL_SHAPE_ACTIVITY: frozenset[tuple[str, str]] = frozenset({
    ("circle", "move_right"), ("square", "shrink"), ("triangle", "move_down"),
    ("diamond", "appear"), ("star", "rotate"), ("hexagon", "change_colour"),
    ("cross", "grow"),
})

MIN_FRAMES, MAX_FRAMES = 4, 64
MOVE_DISTANCE = (0.25, 0.45)  # fraction of the side, over the whole clip
BOUNCE_HEIGHT = (0.20, 0.30)
BOUNCE_HOPS = (1, 2)
SPIN_PER_FRAME = (math.radians(8.0), math.radians(14.0))  # below half of every shape's
# rotational symmetry (60 degrees for the hexagon), so the turn's direction is visible
CHANGE_FRACTION = 0.25  # a colour change or (dis)appearance happens in the middle half
P_BYSTANDER = 0.5  # a clip has a second, still object
_PLACEMENT_TRIES = 60
_CLIP_TRIES = 200


@dataclass(frozen=True)
class ClipObject:
    """An object of a clip: its first-frame state and what it does.

    `start` is the object at frame 0 (for "appear", as it will look once it
    appears). The other fields parametrise `activity`; those it does not use
    keep their defaults.
    """

    start: ShapeObject
    activity: str = STILL
    distance: float = 0.0  # move_*: displacement of the centre; bounce: height of a hop
    end_radius: float = 0.0  # grow, shrink: the radius at the last frame
    spin: float = 0.0  # rotate: radians per frame (positive: clockwise on screen)
    new_colour: str | None = None  # change_colour
    change_frame: int = 0  # change_colour, appear, vanish: first frame of the new state
    hops: int = 0  # bounce

    def at(self, t: int, frames: int) -> ShapeObject | None:
        """The object as drawn in frame t of `frames`, or None when it is not visible."""
        a, s = self.activity, self.start
        u = t / (frames - 1)  # progress through the clip, 0 to 1
        if a == "appear" and t < self.change_frame or a == "vanish" and t >= self.change_frame:
            return None
        if a in MOVES:
            dx, dy = MOVES[a]
            return replace(s, x=s.x + dx * self.distance * u, y=s.y + dy * self.distance * u)
        if a in ("grow", "shrink"):
            return replace(s, radius=s.radius + (self.end_radius - s.radius) * u)
        if a == "rotate":
            return replace(s, rotation=s.rotation + self.spin * t)
        if a == "change_colour" and t >= self.change_frame:
            return replace(s, colour=self.new_colour)
        if a == "bounce":
            return replace(s, y=s.y - self.distance * abs(math.sin(math.pi * self.hops * u)))
        return s

    def identity(self) -> tuple[str, str, str]:
        """(shape, colour, size) that a description names: the first visible frame's."""
        return self.start.shape, self.start.colour, self.start.size

    def to_dict(self) -> dict:
        return {"start": asdict(self.start),
                **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "start"}}

    @classmethod
    def from_dict(cls, d: dict) -> ClipObject:
        return cls(start=ShapeObject(**d["start"]),
                   **{k: v for k, v in d.items() if k != "start"})


@dataclass(frozen=True)
class Clip:
    """`frames` frames of `objects`; objects[0] is the actor, objects[1] (if any) is still."""

    objects: tuple[ClipObject, ...]
    frames: int

    @property
    def activity(self) -> str:
        return self.objects[0].activity

    @property
    def label(self) -> int:
        return ACTIVITIES.index(self.activity)

    def states(self, t: int) -> list[ShapeObject | None]:
        """Every object at frame t (None where not visible), in object order."""
        return [o.at(t, self.frames) for o in self.objects]

    def scene(self, t: int) -> Scene:
        """Frame t as a still scene of the visible objects, to render."""
        return Scene([s for s in self.states(t) if s is not None])

    def to_dict(self) -> dict:
        return {"frames": self.frames, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> Clip:
        return cls(objects=tuple(ClipObject.from_dict(o) for o in d["objects"]),
                   frames=d["frames"])


def check_frames(frames: int) -> None:
    if not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise ValueError(f"--frames must be between {MIN_FRAMES} and {MAX_FRAMES}, got {frames}")


# --- which shapes do what --------------------------------------------------------

def can_perform(shape: str, activity: str, split: str) -> bool:
    """Whether an actor of `shape` may perform `activity` in `split`."""
    if (shape, activity) in IMPOSSIBLE_SHAPE_ACTIVITY:
        return False
    return ((shape, activity) in NOVEL_SHAPE_ACTIVITY) == (split == "novel")


ACTOR_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    split: tuple((s, a) for a in ACTIVITIES for s in SHAPES if can_perform(s, a, split))
    for split in SPLITS
}


def actor_combinations(shape: str, activity: str) -> list[Combination]:
    """The seen (shape, colour, size) combinations an actor of `shape` may have for
    `activity`: a growing object starts small and a shrinking one large."""
    start_size = {"grow": "small", "shrink": "large"}.get(activity)
    return [c for c in SEEN_COMBINATIONS
            if c[0] == shape and start_size in (None, c[2])]


def new_colours(shape: str, colour: str) -> list[str]:
    """Colours a `colour` `shape` may change to: any other, except held-out pairs."""
    return [c for c in COLOURS if c != colour and (c, shape) not in NOVEL_COLOUR_SHAPE]


# --- sampling ----------------------------------------------------------------------

def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return round(float(rng.uniform(*bounds)), DECIMALS)


def _change_frame(rng: np.random.Generator, frames: int) -> int:
    """A frame k in [a, T - a], a = round(T / 4): k and T - k are alike, so an appearing
    object (visible for T - k frames) is visible as often as a vanishing one (k frames)."""
    lo = max(1, round(CHANGE_FRACTION * frames))
    return int(rng.integers(lo, frames - lo + 1))


def _draw_actor(rng: np.random.Generator, split: str, frames: int) -> ClipObject:
    """An actor of `split` with its activity's parameters, at an arbitrary position."""
    pairs = ACTOR_PAIRS[split]
    if split == "novel":
        shape, activity = pairs[int(rng.integers(len(pairs)))]
    else:  # balanced classes: the activity first, then a shape that may perform it
        activity = ACTIVITIES[int(rng.integers(len(ACTIVITIES)))]
        shapes = [s for s, a in pairs if a == activity]
        shape = shapes[int(rng.integers(len(shapes)))]
    combos = actor_combinations(shape, activity)
    start = sample_object(rng, combos[int(rng.integers(len(combos)))])
    actor = ClipObject(start, activity)
    if activity in MOVES:
        return replace(actor, distance=_uniform(rng, MOVE_DISTANCE))
    if activity in ("grow", "shrink"):
        end_size = "large" if activity == "grow" else "small"  # jittered as sample_object does
        end_radius = SIZE_RADIUS[end_size] * (1 + RADIUS_JITTER * (2 * rng.random() - 1))
        return replace(actor, end_radius=round(end_radius, DECIMALS))
    if activity == "rotate":
        sign = 1.0 if rng.random() < 0.5 else -1.0
        return replace(actor, spin=round(sign * float(rng.uniform(*SPIN_PER_FRAME)), DECIMALS))
    if activity == "change_colour":
        options = new_colours(shape, start.colour)
        return replace(actor, new_colour=options[int(rng.integers(len(options)))],
                       change_frame=_change_frame(rng, frames))
    if activity in ("appear", "vanish"):
        return replace(actor, change_frame=_change_frame(rng, frames))
    if activity == "bounce":
        return replace(actor, distance=_uniform(rng, BOUNCE_HEIGHT),
                       hops=int(rng.integers(BOUNCE_HOPS[0], BOUNCE_HOPS[1] + 1)))
    raise ValueError(f"unknown activity {activity!r}")


def path_extent(obj: ClipObject, frames: int) -> tuple[float, float, float, float, float]:
    """(min dx, max dx, min dy, max dy, max radius) of the object's path, relative to its start."""
    states = [s for t in range(frames) if (s := obj.at(t, frames)) is not None]
    dxs = [s.x - obj.start.x for s in states]
    dys = [s.y - obj.start.y for s in states]
    return min(dxs), max(dxs), min(dys), max(dys), max(s.radius for s in states)


def _place_actor(rng: np.random.Generator, actor: ClipObject, frames: int) -> ClipObject:
    """The actor with its start drawn uniformly among those whose whole path fits inside."""
    dx0, dx1, dy0, dy1, r = path_extent(actor, frames)
    lo, hi = r + EDGE_MARGIN, 1.0 - r - EDGE_MARGIN
    x = round(float(rng.uniform(lo - dx0, hi - dx1)), DECIMALS)
    y = round(float(rng.uniform(lo - dy0, hi - dy1)), DECIMALS)
    return replace(actor, start=replace(actor.start, x=x, y=y))


def _draw_bystander(rng: np.random.Generator, actor: ClipObject) -> ClipObject:
    """A still object that a description can tell from the actor: its (shape, colour)
    is neither the actor's first nor, after a colour change, its last."""
    taken = {(actor.start.shape, actor.start.colour), (actor.start.shape, actor.new_colour)}
    combos = [c for c in SEEN_COMBINATIONS if (c[0], c[1]) not in taken]
    return ClipObject(sample_object(rng, combos[int(rng.integers(len(combos)))]))


def clip_problems(clip: Clip) -> list[str]:
    """Every rule the clip breaks (empty for a valid clip): each object lies inside the
    image and the objects do not overlap, in every frame (an absent object counts
    where it would be, so that it never appears on top of another)."""
    problems = []
    for t in range(clip.frames):
        states = [o.at(t, clip.frames) or o.start for o in clip.objects]
        problems += [f"frame {t}: object {i} not inside the image"
                     for i, s in enumerate(states) if not fits_inside(s)]
        if len(states) == 2 and objects_overlap(*states):
            problems.append(f"frame {t}: objects 0 and 1 overlap")
    return problems


def _with_bystander(rng: np.random.Generator, actor: ClipObject,
                    frames: int) -> Clip | None:
    """The actor and a bystander placed by rejection; None if none fits beside its path."""
    bystander = _draw_bystander(rng, actor)
    for _ in range(_PLACEMENT_TRIES):
        clip = Clip((actor, bystander), frames)
        if not clip_problems(clip):
            return clip
        x, y = random_centre(rng, bystander.start.radius)
        bystander = ClipObject(replace(bystander.start, x=x, y=y))
    return None


def sample_clip(rng: np.random.Generator, split: str, frames: int) -> Clip:
    """A valid clip of `split`: an actor whose (shape, activity) the split allows and,
    with probability P_BYSTANDER, a still bystander."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    check_frames(frames)
    actor = _place_actor(rng, _draw_actor(rng, split, frames), frames)
    if rng.random() >= P_BYSTANDER:
        return Clip((actor,), frames)
    for _ in range(_CLIP_TRIES):
        clip = _with_bystander(rng, actor, frames)
        if clip is not None:
            return clip
        actor = _place_actor(rng, actor, frames)
    raise RuntimeError(f"could not place a bystander in {_CLIP_TRIES} tries")
