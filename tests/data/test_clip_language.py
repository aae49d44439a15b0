import numpy as np
import pytest

from training.data.clip_language import (
    ACTIVITY_PHRASES,
    COLOUR_CHANGE_VERBS,
    Description,
    Statement,
    coverage,
    describe,
    generate_descriptions,
    is_exact,
    parse_description,
)
from training.data.clip_world import ACTIVITIES, STILL, Clip, ClipObject, sample_clip
from training.data.language import NounPhrase, caption_tokens
from training.data.world import SIZE_RADIUS, SPLITS, ShapeObject


def obj(shape, colour, size, x, y, **activity) -> ClipObject:
    return ClipObject(ShapeObject(shape, colour, size, x, y, SIZE_RADIUS[size]), **activity)


# A small red circle moves left while a large blue star stays still.
MOVING = Clip((obj("circle", "red", "small", 0.7, 0.3, activity="move_left", distance=0.3),
               obj("star", "blue", "large", 0.4, 0.75)), 16)
# A red square turns green while a red circle grows.
CHANGING = Clip((obj("square", "red", "small", 0.3, 0.3, activity="change_colour",
                     new_colour="green", change_frame=8),
                 obj("circle", "red", "small", 0.7, 0.7, activity="grow", end_radius=0.16)), 16)


def test_every_activity_has_phrases_and_their_words_are_disjoint_from_noun_phrases():
    assert set(ACTIVITY_PHRASES) == (set(ACTIVITIES) - {"change_colour"}) | {STILL}
    noun_words = {"a", "an", "the", "small", "little", "tiny", "large", "big", "huge",
                  "red", "blue", "circle", "square", "star"}
    for phrase in [p for ps in ACTIVITY_PHRASES.values() for p in ps] + list(COLOUR_CHANGE_VERBS):
        assert phrase.split()[0] not in noun_words, phrase


@pytest.mark.parametrize("text, statements", [
    ("the small red circle moves to the left while the blue star stays still",
     [("circle", "red", "small", "move_left", None), ("star", "blue", None, STILL, None)]),
    ("In this clip a red square turns green, and a tiny circle gets bigger.",
     [("square", "red", None, "change_colour", "green"),
      ("circle", None, "small", "grow", None)]),
    ("here an orange hexagon turns around",
     [("hexagon", "orange", None, "rotate", None)]),
    ("a star changes colour to white and the huge cross goes away",
     [("star", None, None, "change_colour", "white"), ("cross", None, "large", "vanish", None)]),
])
def test_parse_description(text, statements):
    parsed = parse_description(text)
    assert parsed == Description(tuple(
        Statement(NounPhrase(shape, colour, size), activity, new_colour)
        for shape, colour, size, activity, new_colour in statements))
    # Without punctuation it reads the same.
    assert parse_description(" ".join(w for w in caption_tokens(text) if w != ",")) == parsed


@pytest.mark.parametrize("text", [
    "", "the red circle", "moves to the left", "the red circle moves",
    "the red circle turns", "the red circle turns small", "the red circle moves left while",
    "the red circle moves left the blue star stays still", "two circles move left",
    "the red circle moves left, the star stays still", "the red circle to the left of a star",
    "a red circle moves left quickly",
])
def test_text_outside_the_grammar_does_not_parse(text):
    assert parse_description(text) is None
    assert not is_exact(text, MOVING) and coverage(text, MOVING) == 0.0


@pytest.mark.parametrize("text, exact, covered", [
    ("the small red circle moves to the left while the blue star stays still", True, 1.0),
    ("a red circle slides to the left", True, 0.5),
    ("a red circle slides left", False, 0.0),  # not a phrase of the grammar
    ("a circle goes left and a star stays put", True, 1.0),
    ("the red circle moves to the right while the blue star stays still", False, 1.0),
    ("the blue star moves left and the red circle stays still", False, 1.0),  # swapped roles
    ("the large red circle moves left", False, 0.0),  # no large red circle
    ("a red circle moves left and a red circle moves left", True, 0.5),
    ("in the video a star keeps still", True, 0.5),
])
def test_exactness_and_coverage_of_a_moving_clip(text, exact, covered):
    assert is_exact(text, MOVING) == exact
    assert coverage(text, MOVING) == covered


@pytest.mark.parametrize("text, exact", [
    ("a red square turns green while a red circle grows", True),
    ("a red square turns blue while a red circle grows", False),  # wrong new colour
    ("a green square stays still", False),  # named by its first colour
    ("the small red circle grows", True),  # named by its first size
    ("the large red circle grows", False),
    ("a red circle turns green", False),
])
def test_objects_are_named_by_their_first_frame(text, exact):
    assert is_exact(text, CHANGING) == exact


@pytest.mark.parametrize("split", SPLITS)
def test_references_are_exact_complete_and_name_each_object_alone(split):
    for k in range(60):
        clip = sample_clip(np.random.default_rng([3, k]), split, 12)
        texts = generate_descriptions(clip, np.random.default_rng(k))
        assert len(set(texts)) == 5
        for text in texts:
            assert is_exact(text, clip) and coverage(text, clip) == 1.0, text
            assert len(text.split()) <= 22
        # Every noun phrase matches one object of the clip.
        for statement in describe(clip, np.random.default_rng(k)).statements:
            matches = [o for o in clip.objects if statement.subject.matches(o.start)]
            assert len(matches) == 1


def test_plain_text_reads_back():
    description = describe(CHANGING, np.random.default_rng(0))
    assert parse_description(description.text()) == description
    assert {s.activity for s in description.statements} == {"change_colour", "grow"}


def test_references_vary_their_wording():
    texts = [t for k in range(40) for t in generate_descriptions(
        sample_clip(np.random.default_rng([8, k]), "train", 16), np.random.default_rng(k))]
    words = {w for t in texts for w in caption_tokens(t)}
    for expected in ("the", "a", "while", "and", ",", "in", "here", "small", "big"):
        assert expected in words
