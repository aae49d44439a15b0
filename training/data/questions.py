"""Visual questions about a shapes-world scene, with VQA v2 style answers.

One question of each type in QUESTION_TYPES is asked per scene where the scene
allows it (a spatial question needs two objects that can each be named
unambiguously). Questions follow VQA v2's balancing where it can be done per
image: yes/no types flip a fair coin for the answer before choosing what to ask
about, a false "is there ..." target is truly absent, and no question names the
attribute it asks for. Objects are referred to with the fewest attributes that
single them out ("the circle", "the small circle", "the red circle").
Every answer is recomputed from the scene, so the data can be trusted exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from training.data.language import PLURAL
from training.data.world import (
    COLOURS,
    NOVEL_COLOUR_SHAPE,
    NOVEL_SIZE_SHAPE,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    relation,
)

NUM_ANSWERS = 10  # annotators per question in VQA v2
ANSWER_TYPES: dict[str, str] = {
    "colour": "other",
    "shape": "other",
    "count": "number",
    "exists": "yes/no",
    "size": "other",
    "spatial": "yes/no",
    "position": "other",
}
QUESTION_TYPES: tuple[str, ...] = tuple(ANSWER_TYPES)

# An answer other than the canonical one may be given by up to this many of the
# ten annotators: a surface variant that VQA normalisation maps back ("Two.",
# "two", "a circle") or, for sizes, a synonym that it does not ("big").
MAX_DISSENTING = 2
SIZE_ANSWER_SYNONYMS: dict[str, tuple[str, ...]] = {"small": ("little",), "large": ("big",)}
RELATION_QUESTION_PHRASE: dict[str, str] = {
    "left": "to the left of", "right": "to the right of", "above": "above", "below": "below",
}

Attributes = tuple[str, ...]  # names of ShapeObject fields: "size", "colour", "shape"
Asked = tuple[str, str]  # (question, canonical answer)

# Descriptions tried in order when naming one object; none may hold the attribute asked for.
COLOUR_REFERENCES: tuple[Attributes, ...] = (("shape",), ("size", "shape"))
SHAPE_REFERENCES: tuple[Attributes, ...] = (("colour",), ("size", "colour"))
SIZE_REFERENCES: tuple[Attributes, ...] = (("colour", "shape"),)
SPATIAL_REFERENCES: tuple[Attributes, ...] = (("colour", "shape"), ("size", "colour", "shape"))
COUNT_PATTERNS: tuple[Attributes, ...] = ((), ("colour",), ("shape",), ("size",),
                                          ("colour", "shape"))
EXISTS_PATTERNS: tuple[Attributes, ...] = (("colour", "shape"), ("size", "colour", "shape"),
                                           ("shape",))
_VALUES: dict[str, Sequence[str]] = {"size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                 "eight", "nine", "ten")


def generate_questions(scene: Scene, rng: np.random.Generator) -> list[dict]:
    """At most one question of each type in QUESTION_TYPES, in that order.

    Each is {"question", "question_type", "answer_type", "answers" (10 strings),
    "multiple_choice_answer" (the canonical answer)}.
    """
    entries = []
    for question_type, ask in _ASKERS.items():
        asked = ask(scene, rng)
        if asked is None:
            continue
        question, answer = asked
        entries.append({
            "question": question,
            "question_type": question_type,
            "answer_type": ANSWER_TYPES[question_type],
            "answers": annotator_answers(answer, rng),
            "multiple_choice_answer": answer,
        })
    return entries


# --- referring to objects ----------------------------------------------------

def _values(obj: ShapeObject, attributes: Attributes) -> tuple[str, ...]:
    return tuple(getattr(obj, a) for a in attributes)


def _count(scene: Scene, attributes: Attributes, values: tuple[str, ...]) -> int:
    return sum(_values(o, attributes) == values for o in scene.objects)


def _reference(scene: Scene, k: int, patterns: Sequence[Attributes]) -> Attributes | None:
    """The first pattern whose values single out object `k`, or None if none does."""
    obj = scene.objects[k]
    for pattern in patterns:
        if _count(scene, pattern, _values(obj, pattern)) == 1:
            return pattern
    return None


def _phrase(values: dict[str, str], noun: str = "object", plural: bool = False) -> str:
    """"small red circle", "red object", "circles": size, colour, then shape (or `noun`)."""
    shape = values.get("shape")
    if shape is not None:
        head = PLURAL[shape] if plural else shape
    else:
        head = noun + "s" if plural else noun
    return " ".join([*(values[a] for a in ("size", "colour") if a in values), head])


def _the(obj: ShapeObject, attributes: Attributes) -> str:
    return "the " + _phrase(dict(zip(attributes, _values(obj, attributes), strict=True)))


def _identifiable(scene: Scene, patterns: Sequence[Attributes]) -> list[tuple[int, Attributes]]:
    found = ((k, _reference(scene, k, patterns)) for k in range(len(scene.objects)))
    return [(k, p) for k, p in found if p is not None]


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


# --- the question types ------------------------------------------------------

def _ask_colour(scene: Scene, rng: np.random.Generator) -> Asked | None:
    candidates = _identifiable(scene, COLOUR_REFERENCES)
    if not candidates:
        return None
    k, pattern = _pick(rng, candidates)
    template = _pick(rng, ("what color is {}?", "what is the color of {}?"))
    return template.format(_the(scene.objects[k], pattern)), scene.objects[k].colour


def _ask_shape(scene: Scene, rng: np.random.Generator) -> Asked | None:
    candidates = _identifiable(scene, SHAPE_REFERENCES)
    if not candidates:
        return None
    k, pattern = _pick(rng, candidates)
    return f"what shape is {_the(scene.objects[k], pattern)}?", scene.objects[k].shape


def _ask_count(scene: Scene, rng: np.random.Generator) -> Asked | None:
    """How many objects share some values ("red shapes", "circles"; none: every object).

    Values are taken from the scene's objects, so the count is at least 1, and the
    answer is drawn first, uniformly among the counts the scene offers, so that
    "1" does not dominate as it would with a random pattern.
    """
    by_count: dict[int, list[tuple[Attributes, tuple[str, ...]]]] = {}
    targets = {(p, _values(o, p)) for p in COUNT_PATTERNS for o in scene.objects}
    for pattern, values in sorted(targets):
        by_count.setdefault(_count(scene, pattern, values), []).append((pattern, values))
    if not by_count:
        return None
    answer = _pick(rng, sorted(by_count))
    pattern, values = _pick(rng, by_count[answer])
    noun = _pick(rng, ("object", "shape"))
    phrase = _phrase(dict(zip(pattern, values, strict=True)), noun=noun, plural=True)
    return f"how many {phrase} are there?", str(answer)


def _absent_values(scene: Scene, pattern: Attributes) -> list[tuple[str, ...]]:
    """Value combinations of `pattern` that no object has, held-out (novel) combinations
    excluded so that questions about them appear only where those objects do."""
    absent = []
    for values in itertools.product(*(_VALUES[a] for a in pattern)):
        named = dict(zip(pattern, values, strict=True))
        novel = ((named.get("colour"), named.get("shape")) in NOVEL_COLOUR_SHAPE
                 or (named.get("size"), named.get("shape")) in NOVEL_SIZE_SHAPE)
        if not novel and _count(scene, pattern, values) == 0:
            absent.append(values)
    return absent


def _ask_exists(scene: Scene, rng: np.random.Generator) -> Asked | None:
    """"is there a green triangle?": the answer is drawn first (fair coin), then a target that
    is present (from a random object) or absent (uniform over absent combinations)."""
    present = rng.random() < 0.5
    if present and not scene.objects:
        return None
    first = int(rng.integers(len(EXISTS_PATTERNS)))
    patterns = EXISTS_PATTERNS[first:] + EXISTS_PATTERNS[:first]
    for pattern in patterns:
        if present:
            values = _values(_pick(rng, scene.objects), pattern)
        else:
            absent = _absent_values(scene, pattern)
            if not absent:
                continue
            values = _pick(rng, absent)
        phrase = _phrase(dict(zip(pattern, values, strict=True)))
        article = "an" if phrase[0] in "aeiou" else "a"
        return f"is there {article} {phrase}?", "yes" if present else "no"
    return None


def _ask_size(scene: Scene, rng: np.random.Generator) -> Asked | None:
    """The answer size is drawn first among those the candidates have, so small and large are
    asked about as evenly as the scene allows."""
    candidates = _identifiable(scene, SIZE_REFERENCES)
    if not candidates:
        return None
    size = _pick(rng, sorted({scene.objects[k].size for k, _ in candidates}))
    k, pattern = _pick(rng, [(k, p) for k, p in candidates if scene.objects[k].size == size])
    template = _pick(rng, ("what size is {}?", "is {} small or large?"))
    return template.format(_the(scene.objects[k], pattern)), size


def _identifiable_pairs(scene: Scene) -> list[tuple[int, str, int, str]]:
    """(a, reference to a, b, reference to b) for ordered pairs of nameable objects."""
    named = [(k, _the(scene.objects[k], p)) for k, p in _identifiable(scene, SPATIAL_REFERENCES)]
    return [(a, ra, b, rb) for (a, ra), (b, rb) in itertools.permutations(named, 2)]


def _ask_spatial(scene: Scene, rng: np.random.Generator) -> Asked | None:
    """"is the red circle to the left of the blue square?": fair coin for the answer; a "no"
    asks about one of the three relations that do not hold."""
    pairs = _identifiable_pairs(scene)
    if not pairs:
        return None
    answer_yes = rng.random() < 0.5
    a, ref_a, b, ref_b = _pick(rng, pairs)
    actual = relation(scene.objects[a], scene.objects[b])
    asked = actual if answer_yes else _pick(rng, [r for r in RELATIONS if r != actual])
    question = f"is {ref_a} {RELATION_QUESTION_PHRASE[asked]} {ref_b}?"
    return question, "yes" if answer_yes else "no"


def _ask_position(scene: Scene, rng: np.random.Generator) -> Asked | None:
    """"where is the red circle relative to the blue square?" -> left/right/above/below; the
    answer is drawn first, uniformly among the relations that some pair has."""
    pairs = _identifiable_pairs(scene)
    if not pairs:
        return None
    by_relation: dict[str, list] = {}
    for pair in pairs:
        by_relation.setdefault(relation(scene.objects[pair[0]], scene.objects[pair[2]]),
                               []).append(pair)
    answer = _pick(rng, sorted(by_relation))
    _, ref_a, _, ref_b = _pick(rng, by_relation[answer])
    return f"where is {ref_a} relative to {ref_b}?", answer


_ASKERS: dict[str, Callable[[Scene, np.random.Generator], Asked | None]] = {
    "colour": _ask_colour,
    "shape": _ask_shape,
    "count": _ask_count,
    "exists": _ask_exists,
    "size": _ask_size,
    "spatial": _ask_spatial,
    "position": _ask_position,
}


# --- annotator answers -------------------------------------------------------

def answer_variants(answer: str) -> list[str]:
    """Surface forms of `answer` that VQA answer normalisation maps back to it
    (case, a final period, number words for digits, an article before a noun)."""
    variants = [answer.capitalize(), answer + "."]
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        word = NUMBER_WORDS[int(answer)]
        variants += [word, word.capitalize()]
    if answer in SHAPES:
        variants.append(f"a {answer}")
    return [v for v in variants if v != answer]


def annotator_answers(answer: str, rng: np.random.Generator) -> list[str]:
    """Ten answers as VQA v2 annotators would give them: at least eight exactly `answer`,
    the others surface variants of it or (for sizes) a synonym."""
    answers = [answer] * NUM_ANSWERS
    dissenting = int(rng.integers(MAX_DISSENTING + 1))
    others = answer_variants(answer) + list(SIZE_ANSWER_SYNONYMS.get(answer, ()))
    for slot in rng.choice(NUM_ANSWERS, size=dissenting, replace=False):
        answers[int(slot)] = _pick(rng, others)
    return answers
