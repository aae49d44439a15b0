import numpy as np
import pytest

from training.data.clip_language import generate_descriptions
from training.data.clip_world import Clip, ClipObject
from training.data.language import generate_captions
from training.data.world import SIZE_RADIUS, Scene, ShapeObject
from training.metrics.semantic import clip_semantic_scores, semantic_scores


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


# --- clips ------------------------------------------------------------------------

# 1: a small red circle moves left beside a still blue star; 2: a green square vanishes.
CLIPS = {
    1: Clip((ClipObject(obj("circle", "red", "small", 0.7, 0.3), "move_left", distance=0.3),
             ClipObject(obj("star", "blue", "large", 0.4, 0.75))), 16),
    2: Clip((ClipObject(obj("square", "green", "small", 0.5, 0.5), "vanish", change_frame=8),),
            16),
}


@pytest.mark.parametrize("descriptions, exactness, coverage", [
    ({1: "the red circle moves to the left while the blue star stays still",
      2: "a green square disappears"}, 1.0, 1.0),
    ({1: "a circle moves left", 2: "a green square appears"}, 0.5, (1 / 2 + 1) / 2),
    ({1: "the blue star moves left and the red circle stays still"}, 0.0, 1.0),
    ({1: "a red circle moves left while", 2: "the green square vanishes"}, 0.5, 0.5),
])
def test_clip_scores_on_hand_made_examples(descriptions, exactness, coverage):
    scores = clip_semantic_scores(descriptions, CLIPS)
    assert scores["semantic_exactness"] == pytest.approx(exactness)
    assert scores["coverage"] == pytest.approx(coverage)
    assert scores["n"] == len(descriptions)
    dicts = {k: c.to_dict() for k, c in CLIPS.items()}
    assert clip_semantic_scores(descriptions, dicts) == scores


def test_reference_descriptions_score_one():
    rng = np.random.default_rng(0)
    descriptions = {k: generate_descriptions(CLIPS[k], rng, n=1)[0] for k in CLIPS}
    assert clip_semantic_scores(descriptions, CLIPS) == {
        "semantic_exactness": 1.0, "coverage": 1.0, "n": 2}


def test_a_description_without_a_clip_is_an_error():
    with pytest.raises(KeyError, match="no clip for 1 described clip"):
        clip_semantic_scores({1: "a red circle moves left", 5: "a star grows"}, CLIPS)
    with pytest.raises(ValueError, match="no descriptions"):
        clip_semantic_scores({}, CLIPS)
