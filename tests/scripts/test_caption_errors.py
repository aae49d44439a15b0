"""scripts/caption_errors.py: why a caption is not exact, and where the attention was."""

import numpy as np

from tests.script_modules import load_script
from training.data.world import Scene, ShapeObject

errors = load_script("caption_errors")

SCENE = Scene([ShapeObject("star", "yellow", "large", 0.1, 0.1, 0.1),
               ShapeObject("star", "purple", "large", 0.9, 0.1, 0.1),
               ShapeObject("square", "green", "small", 0.6, 0.6, 0.05)])


def test_each_false_clause_gets_its_reason():
    assert errors.caption_errors("a yellow star and a purple star and a green square", SCENE) == []
    assert errors.caption_errors("a green star and a purple star", SCENE) == ["colour"]
    assert errors.caption_errors("a large green square", SCENE) == ["size"]
    assert errors.caption_errors("a green circle", SCENE) == ["shape"]
    assert errors.caption_errors("a small purple circle", SCENE) == ["attributes"]
    assert errors.caption_errors("three stars", SCENE) == ["count"]
    assert errors.caption_errors("a yellow star right of a purple star", SCENE) == ["relation"]
    assert errors.caption_errors("a green star below a yellow circle", SCENE) == ["colour", "shape"]
    assert errors.caption_errors("star star green", SCENE) == ["unparsed"]


def test_attention_at_colour_and_shape_words_reads_the_centre_cells():
    tally = {"colour": [], "shape": []}
    attention = np.zeros((3, 2, 2))  # a 2 x 2 grid: the stars' centres are cells 0 and 1
    attention[0, 0, 0], attention[0, 0, 1], attention[0, 1, 1] = 0.6, 0.3, 0.1  # "purple"
    attention[1, 0, 1] = 1.0  # "star", on the purple star
    attention[2, 1, 1] = 1.0  # "and": not tallied
    errors.attention_at_words(["purple", "star", "and"], attention, SCENE, tally)
    assert tally["colour"] == [(0.6 + 0.3 + 0.1, 0.6, False)]  # the yellow star drew most
    assert tally["shape"] == [(1.0, 1.0, True)]
