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
import operator
from collections.abc import Callable, Sequence
from functools import cache

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
# (question, canonical answer, the objects the question names in the order it names them:
# indices into the scene's objects; empty for questions about a kind of object, such as
# counts and "is there ...?")
Asked = tuple[str, str, tuple[int, ...]]

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
    "multiple_choice_answer" (the canonical answer), "objects" (indices of the scene
    objects the question names, in the order it names them)}.
    """
    facts = _SceneFacts(scene)
    entries = []
    for question_type, ask in _ASKERS.items():
        asked = ask(facts, rng)
        if asked is None:
            continue
        question, answer, named = asked
        entries.append({
            "question": question,
            "question_type": question_type,
            "answer_type": ANSWER_TYPES[question_type],
            "answers": annotator_answers(answer, rng),
            "multiple_choice_answer": answer,
            "objects": list(named),
        })
    return entries


# --- referring to objects ----------------------------------------------------

def _values(obj: ShapeObject, attributes: Attributes) -> tuple[str, ...]:
    return tuple(getattr(obj, a) for a in attributes)


@cache
def _values_getter(attributes: Attributes) -> Callable[[ShapeObject], tuple[str, ...]]:
    """`lambda obj: _values(obj, attributes)`, without a Python loop per object."""
    if len(attributes) > 1:
        return operator.attrgetter(*attributes)
    if attributes:
        get = operator.attrgetter(attributes[0])
        return lambda obj: (get(obj),)
    return lambda obj: ()


class _SceneFacts:
    """The lookups every question type makes about one scene, each computed once: the
    objects' values of an attribute pattern, how many objects share them, and which
    objects can be named unambiguously."""

    def __init__(self, scene: Scene) -> None:
        self.objects = scene.objects
        self._values: dict[Attributes, list[tuple[str, ...]]] = {}
        self._counts: dict[Attributes, dict[tuple[str, ...], int]] = {}
        self._identifiable: dict[tuple[Attributes, ...], list[tuple[int, Attributes]]] = {}
        self._pairs: list[tuple[int, str, int, str]] | None = None

    def values(self, pattern: Attributes) -> list[tuple[str, ...]]:
        """Each object's values of `pattern`, in object order."""
        values = self._values.get(pattern)
        if values is None:
            values = self._values[pattern] = list(map(_values_getter(pattern), self.objects))
            counts: dict[tuple[str, ...], int] = {}
            for v in values:
                counts[v] = counts.get(v, 0) + 1
            self._counts[pattern] = counts
        return values

    def counts(self, pattern: Attributes) -> dict[tuple[str, ...], int]:
        """How many objects have each combination of values of `pattern` that some object has."""
        self.values(pattern)
        return self._counts[pattern]

    def identifiable(self, patterns: tuple[Attributes, ...]) -> list[tuple[int, Attributes]]:
        """(object, first pattern whose values single it out) for every object that one
        of `patterns` singles out."""
        found = self._identifiable.get(patterns)
        if found is None:
            tables = [(p, self.values(p), self._counts[p]) for p in patterns]
            found = self._identifiable[patterns] = []
            for k in range(len(self.objects)):
                for pattern, values, counts in tables:
                    if counts[values[k]] == 1:
                        found.append((k, pattern))
                        break
        return found

    def the(self, k: int, attributes: Attributes) -> str:
        return _the_phrase(attributes, self.values(attributes)[k])

    def identifiable_pairs(self) -> list[tuple[int, str, int, str]]:
        """(a, reference to a, b, reference to b) for ordered pairs of nameable objects."""
        if self._pairs is None:
            named = [(k, self.the(k, p)) for k, p in self.identifiable(SPATIAL_REFERENCES)]
            self._pairs = [(a, ra, b, rb)
                           for (a, ra), (b, rb) in itertools.permutations(named, 2)]
        return self._pairs


@cache
def _phrase_of(attributes: Attributes, values: tuple[str, ...], noun: str = "object",
               plural: bool = False) -> str:
    return _phrase(dict(zip(attributes, values, strict=True)), noun=noun, plural=plural)


@cache
def _the_phrase(attributes: Attributes, values: tuple[str, ...]) -> str:
    return "the " + _phrase_of(attributes, values)


def _phrase(values: dict[str, str], noun: str = "object", plural: bool = False) -> str:
    """"small red circle", "red object", "circles": size, colour, then shape (or `noun`)."""
    shape = values.get("shape")
    if shape is not None:
        head = PLURAL[shape] if plural else shape
    else:
        head = noun + "s" if plural else noun
    return " ".join([*(values[a] for a in ("size", "colour") if a in values), head])


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


# --- the question types ------------------------------------------------------

def _ask_colour(facts: _SceneFacts, rng: np.random.Generator) -> Asked | None:
    candidates = facts.identifiable(COLOUR_REFERENCES)
    if not candidates:
        return None
    k, pattern = _pick(rng, candidates)
    template = _pick(rng, ("what color is {}?", "what is the color of {}?"))
    return template.format(facts.the(k, pattern)), facts.objects[k].colour, (k,)


def _ask_shape(facts: _SceneFacts, rng: np.random.Generator) -> Asked | None:
    candidates = facts.identifiable(SHAPE_REFERENCES)
    if not candidates:
        return None
    k, pattern = _pick(rng, candidates)
    return f"what shape is {facts.the(k, pattern)}?", facts.objects[k].shape, (k,)


def _ask_count(facts: _SceneFacts, rng: np.random.Generator) -> Asked | None:
    """How many objects share some values ("red shapes", "circles"; none: every object).

    Values are taken from the scene's objects, so the count is at least 1, and the
    answer is drawn first, uniformly among the counts the scene offers, so that
    "1" does not dominate as it would with a random pattern.
    """
    by_count: dict[int, list[tuple[Attributes, tuple[str, ...]]]] = {}
    counts = {p: facts.counts(p) for p in COUNT_PATTERNS}
    for pattern, values in sorted((p, v) for p in COUNT_PATTERNS for v in counts[p]):
        by_count.setdefault(counts[pattern][values], []).append((pattern, values))
    if not by_count:
        return None
    answer = _pick(rng, sorted(by_count))
    pattern, values = _pick(rng, by_count[answer])
    noun = _pick(rng, ("object", "shape"))
    return f"how many {_phrase_of(pattern, values, noun, True)} are there?", str(answer), ()


@cache
def _nameable_values(pattern: Attributes) -> tuple[tuple[str, ...], ...]:
    """Every value combination of `pattern` except held-out (novel) ones, in product order."""
    nameable = []
    for values in itertools.product(*(_VALUES[a] for a in pattern)):
        named = dict(zip(pattern, values, strict=True))
        novel = ((named.get("colour"), named.get("shape")) in NOVEL_COLOUR_SHAPE
                 or (named.get("size"), named.get("shape")) in NOVEL_SIZE_SHAPE)
        if not novel:
            nameable.append(values)
    return tuple(nameable)


def _absent_values(facts: _SceneFacts, pattern: Attributes) -> list[tuple[str, ...]]:
    """Value combinations of `pattern` that no object has, held-out (novel) combinations
    excluded so that questions about them appear only where those objects do."""
    present = set(facts.values(pattern))
    return [values for values in _nameable_values(pattern) if values not in present]


def _ask_exists(facts: _SceneFacts, rng: np.random.Generator) -> Asked | None:
    """"is there a green triangle?": the answer is drawn first (fair coin), then a target that
    is present (from a random object) or absent (uniform over absent combinations)."""
    present = rng.random() < 0.5
    if present and not facts.objects:
        return None
    first = int(rng.integers(len(EXISTS_PATTERNS)))
    patterns = EXISTS_PATTERNS[first:] + EXISTS_PATTERNS[:first]
    for pattern in patterns:
        if present:
            values = _pick(rng, facts.values(pattern))
        else:
            absent = _absent_values(facts, pattern)
            if not absent:
                continue
            values = _pick(rng, absent)
        phrase = _phrase_of(pattern, values)
        article = "an" if phrase[0] in "aeiou" else "a"
        return f"is there {article} {phrase}?", "yes" if present else "no", ()
    return None


def _ask_size(facts: _SceneFacts, rng: np.random.Generator) -> Asked | None:
    """The answer size is drawn first among those the candidates have, so small and large are
    asked about as evenly as the scene allows."""
    candidates = facts.identifiable(SIZE_REFERENCES)
    if not candidates:
        return None
    objs = facts.objects
    size = _pick(rng, sorted({objs[k].size for k, _ in candidates}))
    k, pattern = _pick(rng, [(k, p) for k, p in candidates if objs[k].size == size])
    template = _pick(rng, ("what size is {}?", "is {} small or large?"))
    return template.format(facts.the(k, pattern)), size, (k,)


def _ask_spatial(facts: _SceneFacts, rng: np.random.Generator) -> Asked | None:
    """"is the red circle to the left of the blue square?": fair coin for the answer; a "no"
    asks about one of the three relations that do not hold."""
    pairs = facts.identifiable_pairs()
    if not pairs:
        return None
    answer_yes = rng.random() < 0.5
    a, ref_a, b, ref_b = _pick(rng, pairs)
    actual = relation(facts.objects[a], facts.objects[b])
    asked = actual if answer_yes else _pick(rng, _OTHER_RELATIONS[actual])
    question = f"is {ref_a} {RELATION_QUESTION_PHRASE[asked]} {ref_b}?"
    return question, "yes" if answer_yes else "no", (a, b)


def _ask_position(facts: _SceneFacts, rng: np.random.Generator) -> Asked | None:
    """"where is the red circle relative to the blue square?" -> left/right/above/below; the
    answer is drawn first, uniformly among the relations that some pair has."""
    pairs = facts.identifiable_pairs()
    if not pairs:
        return None
    objs = facts.objects
    by_relation: dict[str, list] = {}
    for pair in pairs:
        by_relation.setdefault(relation(objs[pair[0]], objs[pair[2]]), []).append(pair)
    answer = _pick(rng, sorted(by_relation))
    a, ref_a, b, ref_b = _pick(rng, by_relation[answer])
    return f"where is {ref_a} relative to {ref_b}?", answer, (a, b)


_OTHER_RELATIONS: dict[str, tuple[str, ...]] = {
    actual: tuple(r for r in RELATIONS if r != actual) for actual in RELATIONS}

_ASKERS: dict[str, Callable[[_SceneFacts, np.random.Generator], Asked | None]] = {
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
    if dissenting == 0:
        return answers
    others = _dissenting_answers(answer)
    for slot in _answer_slots(rng, dissenting):
        answers[slot] = _pick(rng, others)
    return answers


@cache
def _dissenting_answers(answer: str) -> tuple[str, ...]:
    return (*answer_variants(answer), *SIZE_ANSWER_SYNONYMS.get(answer, ()))


def _answer_slots(rng: np.random.Generator, k: int) -> list[int]:
    """`k` >= 1 distinct answer slots: the values, and the draws, of
    rng.choice(NUM_ANSWERS, size=k, replace=False), whose one-slot case (Floyd's algorithm
    with a single step) is one rng.integers(NUM_ANSWERS) at a fraction of the cost."""
    if k == 1:
        return [int(rng.integers(NUM_ANSWERS))]
    return rng.choice(NUM_ANSWERS, size=k, replace=False).tolist()
