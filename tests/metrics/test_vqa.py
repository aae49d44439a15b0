import pytest

from training.data.readers import VQAQuestion
from training.metrics.vqa import (
    answer_accuracy,
    normalize_answer,
    process_punctuation,
    vqa_accuracy,
)


@pytest.mark.parametrize(("raw", "normal"), [
    ("Two.", "2"),
    ("the cat", "cat"),
    ("dont", "don't"),
    ("A Lot", "lot"),
    ("None", "0"),
    ("Yes!", "yes"),
    ("  red\n", "red"),
    ("2.5", "2.5"),  # a period followed by a digit stays
    ("3,000", "3000"),  # with a digit,digit comma every mark is deleted
    ("black/white", "black white"),  # a mark between letters becomes a space
    ("black / white", "black white"),  # a mark next to a space is deleted
    ("it's", "it's"),  # apostrophes are not in vqaEval.py's punctuation list
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_process_punctuation_keeps_case_and_articles():
    # "(" and ")" touch a space, so they are deleted; "," touches none, so it becomes a space.
    assert process_punctuation("The (big) dog.") == "The big dog"
    assert process_punctuation("A red,blue ball") == "A red blue ball"


OTHER = ["3", "4", "3", "1", "5", "3", "4", "3"]  # eight answers that are not 2


def test_two_of_ten_humans():
    # Humans: "2" twice, eight other answers. Leaving out one of the two "2"s
    # (2 of the 10 subsets) leaves 1 match: min(1/3, 1) = 1/3; leaving out any
    # other answer (8 subsets) leaves 2 matches: 2/3.
    # Accuracy = (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10 = 0.6.
    humans = ["2", "2"] + OTHER
    assert answer_accuracy("2", humans) == pytest.approx(0.6)
    assert answer_accuracy("two", humans) == pytest.approx(0.6)
    assert answer_accuracy("Two.", humans) == pytest.approx(0.6)


def test_human_answers_are_normalised_like_the_prediction():
    # Humans wrote "two" and "Two." (the other eight say something else); by
    # default both sides are normalised, so "2" matches both: 0.6 as above.
    humans = ["two", "Two."] + OTHER
    assert answer_accuracy("2", humans) == pytest.approx(0.6)
    # vqaEval.py only strips punctuation from disagreeing human answers, so
    # "two" and "Two" never equal the normalised prediction "2".
    assert answer_accuracy("2", humans, match_vqaeval=True) == 0.0
    # ... and leaves unanimous human answers untouched.
    assert answer_accuracy("Two", ["Two"] * 10, match_vqaeval=True) == 0.0
    assert answer_accuracy("2", ["2"] * 10, match_vqaeval=True) == 1.0


@pytest.mark.parametrize(("matches", "expected"), [
    (0, 0.0),
    # one match: 9 subsets keep it (1/3), one drops it (0): 9 * (1/3) / 10 = 0.3
    (1, 0.3),
    # three matches: 3 subsets keep 2 (2/3), 7 keep 3 (1): (2 + 7) / 10 = 0.9
    (3, 0.9),
    # four or more: every subset keeps at least 3
    (4, 1.0),
    (10, 1.0),
])
def test_min_count_over_three(matches, expected):
    humans = ["red"] * matches + ["blue"] * (10 - matches)
    assert answer_accuracy("red", humans) == pytest.approx(expected)


def test_answer_accuracy_needs_human_answers():
    with pytest.raises(ValueError, match="no human answers"):
        answer_accuracy("red", [])


def _q(qid, answers, qtype, atype):
    return VQAQuestion(question_id=qid, image_id=qid, question="?", answers=tuple(answers),
                       multiple_choice_answer=answers[0], question_type=qtype,
                       answer_type=atype)


QUESTIONS = {
    1: _q(1, ["red"] * 10, "what color", "other"),
    2: _q(2, ["2", "2"] + OTHER, "how many", "number"),
    3: _q(3, ["yes"] * 10, "is there", "yes/no"),
    4: _q(4, ["3"] * 10, "how many", "number"),
}


def test_vqa_accuracy_aggregates_in_percent():
    scores = vqa_accuracy({1: "Red", 2: "two", 3: "no", 4: "3"}, QUESTIONS)
    # Per question: 100, 60, 0, 100.
    assert scores["overall"] == pytest.approx(65.0)
    assert scores["per_question_type"] == pytest.approx(
        {"how many": 80.0, "is there": 0.0, "what color": 100.0})
    assert scores["per_answer_type"] == pytest.approx(
        {"number": 80.0, "other": 100.0, "yes/no": 0.0})
    assert scores["n_questions"] == 4


def test_vqa_accuracy_subset_and_errors():
    assert vqa_accuracy({3: "yes"}, QUESTIONS)["overall"] == 100.0
    with pytest.raises(ValueError, match=r"1 answer\(s\) for unknown question_id\(s\), e.g. \[9\]"):
        vqa_accuracy({1: "red", 9: "blue"}, QUESTIONS)
    with pytest.raises(ValueError, match="no answers"):
        vqa_accuracy({}, QUESTIONS)
    bare = {5: VQAQuestion(question_id=5, image_id=5, question="?")}
    with pytest.raises(ValueError, match="question_id 5 has no human answers"):
        vqa_accuracy({5: "red"}, bare)
