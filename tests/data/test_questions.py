import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.data.questions import (
    ANSWER_TYPES,
    QUESTION_TYPES,
    annotator_answers,
    answer_variants,
    generate_questions,
)
from training.data.world import (
    COLOURS,
    NOVEL_COLOUR_SHAPE,
    NOVEL_SIZE_SHAPE,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    relation,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_language import SCENE, obj, random_scene  # noqa: E402

_PLURALS = {("crosses" if s == "cross" else s + "s"): s for s in SHAPES}
_NUMBERS = {w: str(n) for n, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
_RELATION_PHRASES = {"to the left of": "left", "to the right of": "right",
                     "above": "above", "below": "below"}


def vqa_normalise(answer: str) -> str:
    """The parts of the VQA v2 evaluation's answer normalisation that apply here."""
    words = re.sub(r"[^\w\s]", "", answer.lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in ("a", "an", "the"))


def described(description: str) -> dict[str, str]:
    """Attributes named by "small red circle", "red object", "circles", "objects"."""
    attributes = {}
    for word in description.split():
        if word in SIZES:
            attributes["size"] = word
        elif word in COLOURS:
            attributes["colour"] = word
        elif word in SHAPES or word in _PLURALS:
            attributes["shape"] = _PLURALS.get(word, word)
        else:
            assert word in ("object", "objects", "shape", "shapes"), description
    return attributes


def matches(scene: Scene, description: str) -> list[int]:
    attributes = described(description)
    return [k for k, o in enumerate(scene.objects)
            if all(getattr(o, a) == v for a, v in attributes.items())]


def the(scene: Scene, description: str) -> int:
    found = matches(scene, description)
    assert len(found) == 1, f"{description!r} does not single out one object"
    return found[0]


_REL = "|".join(_RELATION_PHRASES)
# question type -> (pattern, answer computed from the scene and the pattern's groups)
RECOMPUTE = {
    "colour": (r"what (?:color is|is the color of) the ([a-z ]+)\?",
               lambda s, d: s.objects[the(s, d)].colour),
    "shape": (r"what shape is the ([a-z ]+)\?", lambda s, d: s.objects[the(s, d)].shape),
    "count": (r"how many ([a-z ]+) are there\?", lambda s, d: str(len(matches(s, d)))),
    "exists": (r"is there an? ([a-z ]+)\?", lambda s, d: "yes" if matches(s, d) else "no"),
    "size": (r"(?:what size is the ([a-z ]+)\?|is the ([a-z ]+) small or large\?)",
             lambda s, d1, d2: s.objects[the(s, d1 or d2)].size),
    "spatial": (rf"is the ([a-z ]+?) ({_REL}) the ([a-z ]+)\?",
                lambda s, a, r, b: "yes" if relation(s.objects[the(s, a)], s.objects[the(s, b)])
                == _RELATION_PHRASES[r] else "no"),
    "position": (r"where is the ([a-z ]+) relative to the ([a-z ]+)\?",
                 lambda s, a, b: relation(s.objects[the(s, a)], s.objects[the(s, b)])),
}


def recompute(scene: Scene, question_type: str, question: str) -> str:
    pattern, answer = RECOMPUTE[question_type]
    match = re.fullmatch(pattern, question)
    assert match, question
    return answer(scene, *match.groups())


def _many(seed: int, n: int) -> list[tuple[Scene, list[dict]]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        scene = random_scene(rng, alike=k % 3 == 0)
        out.append((scene, generate_questions(scene, rng)))
    return out


MANY = _many(0, 600)


def test_answers_agree_with_the_scene():
    checked = Counter()
    for scene, questions in MANY:
        for q in questions:
            assert recompute(scene, q["question_type"], q["question"]) == (
                q["multiple_choice_answer"]), (q, scene)
            checked[q["question_type"]] += 1
    assert set(checked) == set(QUESTION_TYPES) and min(checked.values()) > 200


def test_entries_have_the_vqa_fields_and_ten_answers():
    for _, questions in MANY[:100]:
        for q in questions:
            assert set(q) == {"question", "question_type", "answer_type", "answers",
                              "multiple_choice_answer", "objects"}
            assert q["answer_type"] == ANSWER_TYPES[q["question_type"]]
            answers, canonical = q["answers"], q["multiple_choice_answer"]
            assert len(answers) == 10 and answers.count(canonical) >= 8
            assert all(vqa_normalise(a) == canonical or a in ("big", "little") for a in answers)
            if q["answer_type"] == "number":
                assert canonical.isdigit()
            if q["answer_type"] == "yes/no":
                assert canonical in ("yes", "no")


# The noun phrases of each question type that name objects, in the order they name them.
NAMED_PHRASES = {
    "colour": r"what (?:color is|is the color of) the ([a-z ]+)\?",
    "shape": r"what shape is the ([a-z ]+)\?",
    "size": r"(?:what size is|is) the ([a-z ]+?)(?: small or large)?\?",
    "spatial": rf"is the ([a-z ]+?) (?:{_REL}) the ([a-z ]+)\?",
    "position": r"where is the ([a-z ]+) relative to the ([a-z ]+)\?",
}


def test_objects_are_the_ones_each_question_names_in_order():
    named = Counter()
    for scene, questions in MANY:
        for q in questions:
            pattern = NAMED_PHRASES.get(q["question_type"])
            if pattern is None:  # counts and "is there ...?" ask about a kind, not an object
                assert q["objects"] == [], q
                continue
            phrases = re.fullmatch(pattern, q["question"]).groups()
            assert q["objects"] == [the(scene, p) for p in phrases], (q, scene)
            named[len(q["objects"])] += 1
    assert named[1] > 500 and named[2] > 500


def test_questions_do_not_name_what_they_ask_for():
    for _, questions in MANY:
        for q in questions:
            if q["question_type"] in ("colour", "shape", "size"):
                assert q["multiple_choice_answer"] not in q["question"].replace(
                    "small or large", "").split(), q


def test_one_question_per_type_when_the_scene_allows():
    def all_distinct(scene: Scene) -> bool:
        k = len(scene.objects)
        return k >= 2 and len({o.colour for o in scene.objects}) == len(
            {o.shape for o in scene.objects}) == k

    full = [qs for scene, qs in MANY if all_distinct(scene)]
    assert len(full) > 100
    for questions in full:
        assert [q["question_type"] for q in questions] == list(QUESTION_TYPES)
    single = generate_questions(Scene(SCENE.objects[:1]), np.random.default_rng(0))
    assert [q["question_type"] for q in single] == ["colour", "shape", "count", "exists", "size"]


@pytest.mark.parametrize("question_type", ["exists", "spatial"])
def test_yes_no_answers_are_balanced(question_type):
    answers = [q["multiple_choice_answer"] for _, qs in MANY for q in qs
               if q["question_type"] == question_type]
    assert len(answers) > 300
    assert abs(answers.count("yes") / len(answers) - 0.5) < 0.06


def test_other_answers_cover_their_range():
    by_type = {t: Counter() for t in QUESTION_TYPES}
    for _, questions in MANY:
        for q in questions:
            by_type[q["question_type"]][q["multiple_choice_answer"]] += 1
    assert set(by_type["position"]) == set(RELATIONS)
    assert min(by_type["position"].values()) > 0.15 * sum(by_type["position"].values())
    assert set(by_type["size"]) == set(SIZES)
    assert set(by_type["shape"]) == set(SHAPES) and set(by_type["colour"]) == set(COLOURS)
    assert {"1", "2", "3", "4"} <= set(by_type["count"])


def test_absent_targets_are_never_held_out_combinations():
    for _, questions in MANY:
        for q in questions:
            if q["question_type"] == "exists" and q["multiple_choice_answer"] == "no":
                d = described(re.fullmatch(r"is there an? ([a-z ]+)\?", q["question"])[1])
                assert (d.get("colour"), d.get("shape")) not in NOVEL_COLOUR_SHAPE
                assert (d.get("size"), d.get("shape")) not in NOVEL_SIZE_SHAPE


def test_objects_that_cannot_be_singled_out_are_not_asked_about():
    twins = Scene([obj("circle", "red", "small", 0.2, 0.2),
                   obj("circle", "red", "small", 0.8, 0.3)])
    questions = generate_questions(twins, np.random.default_rng(0))
    assert [q["question_type"] for q in questions] == ["count", "exists"]


def test_generation_is_deterministic_given_the_rng():
    scene = MANY[5][0]
    first = generate_questions(scene, np.random.default_rng(3))
    assert generate_questions(scene, np.random.default_rng(3)) == first
    assert any(generate_questions(scene, np.random.default_rng(s)) != first for s in range(4, 8))


@pytest.mark.parametrize("answer, variants", [
    ("2", {"2.", "two", "Two"}),
    ("yes", {"Yes", "yes."}),
    ("circle", {"Circle", "circle.", "a circle"}),
    ("left", {"Left", "left."}),
])
def test_answer_variants_normalise_to_the_answer(answer, variants):
    assert set(answer_variants(answer)) == variants
    assert {vqa_normalise(v) for v in variants} == {answer}


def test_annotators_disagree_rarely_and_only_in_form_or_size_synonym():
    rng = np.random.default_rng(0)
    sets = [annotator_answers("large", rng) for _ in range(200)]
    assert all(a.count("large") >= 8 for a in sets)
    assert {a for s in sets for a in s} == {"large", "Large", "large.", "big"}


def _annotator_answers_by_choice(answer: str, rng: np.random.Generator) -> list[str]:
    """annotator_answers as first defined: the slots from rng.choice, whatever their number."""
    answers = [answer] * 10
    dissenting = int(rng.integers(3))
    others = answer_variants(answer) + {"small": ["little"], "large": ["big"]}.get(answer, [])
    for slot in rng.choice(10, size=dissenting, replace=False):
        answers[int(slot)] = others[int(rng.integers(len(others)))]
    return answers


@pytest.mark.parametrize("answer", ["2", "yes", "circle", "large"])
def test_annotator_answers_draw_what_rng_choice_draws(answer):
    """Worlds already generated must not change: same answers and same generator state."""
    for seed in range(300):
        rng, reference = np.random.default_rng([seed, 3]), np.random.default_rng([seed, 3])
        if seed % 2:  # leave half a 64-bit draw buffered, as an earlier 32-bit draw does
            rng.integers(5), reference.integers(5)
        assert annotator_answers(answer, rng) == _annotator_answers_by_choice(answer, reference)
        assert rng.bit_generator.state == reference.bit_generator.state
