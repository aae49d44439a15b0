import numpy as np
import pytest

from training.data.language import generate_captions
from training.data.world import SIZE_RADIUS, Scene, ShapeObject
from training.metrics.semantic import semantic_scores


def obj(shape: str, colour: str, size: str, x: float, y: float) -> ShapeObject:
    return ShapeObject(shape, colour, size, x, y, SIZE_RADIUS[size])


# Red circle left of blue square; green star below both.
THREE = Scene([obj("circle", "red", "large", 0.2, 0.3), obj("square", "blue", "small", 0.7, 0.35),
               obj("star", "green", "small", 0.5, 0.8)])
# Two red circles side by side.
TWO = Scene([obj("circle", "red", "small", 0.2, 0.5), obj("circle", "red", "large", 0.75, 0.6)])
SCENES = {1: THREE, 2: TWO, 3: THREE, 4: TWO}


@pytest.mark.parametrize("captions, exactness, coverage", [
    ({1: "a red circle to the left of a blue square and a green star"}, 1.0, 1.0),
    ({1: "a red circle to the left of a blue square"}, 1.0, 2 / 3),
    ({1: "a red circle to the right of a blue square"}, 0.0, 2 / 3),
    ({1: "a red circle to the"}, 0.0, 0.0),
    # exact and complete; exact, half; false (wrong count), all covered; unparseable
    ({1: "a star below a square, a circle", 2: "a small circle", 3: "two stars, a circle, a square",
      4: "circles everywhere"}, 2 / 4, (1 + 1 / 2 + 1 + 0) / 4),
    ({2: "two red circles", 4: "a big red circle to the right of a tiny red circle"}, 1.0, 1.0),
])
def test_scores_on_hand_made_examples(captions, exactness, coverage):
    scores = semantic_scores(captions, SCENES)
    assert scores["semantic_exactness"] == pytest.approx(exactness)
    assert scores["coverage"] == pytest.approx(coverage)
    assert scores["n"] == len(captions)


def test_scene_dicts_are_read_like_scenes():
    captions = {1: "a red circle above a green star", 2: "a red circle"}
    dicts = {k: s.to_dict() for k, s in SCENES.items()}
    assert semantic_scores(captions, dicts) == semantic_scores(captions, SCENES) == {
        "semantic_exactness": 1.0, "coverage": pytest.approx((2 / 3 + 1 / 2) / 2), "n": 2}


def test_reference_captions_score_one():
    rng = np.random.default_rng(0)
    captions = {k: generate_captions(SCENES[k], rng, n=1)[0] for k in SCENES}
    assert semantic_scores(captions, SCENES) == {"semantic_exactness": 1.0, "coverage": 1.0,
                                                 "n": 4}


def test_a_caption_without_a_scene_is_an_error():
    with pytest.raises(KeyError, match="no scene"):
        semantic_scores({1: "a red circle", 9: "a red circle"}, SCENES)
    with pytest.raises(ValueError, match="no captions"):
        semantic_scores({}, SCENES)
