"""VQA accuracy (Antol et al. 2015; Goyal et al. 2017), as the VQA API's vqaEval.py computes it.

An answer is correct in proportion to how many humans gave it:
acc(a) = min(#humans that said a / 3, 1), averaged over the ten leave-one-out
subsets of the ten human answers (each subset: nine answers). With ten
answers, one matching human gives 0.3, two 0.6, three 0.9, four or more 1.0.

Answers are compared after vqaEval.py's normalisation: `process_punctuation`
then `process_digit_article` (lowercase, number words to digits, articles
dropped, missing apostrophes restored in contractions).

vqaEval.py normalises the predicted answer fully but the human answers only
through `process_punctuation`, and only when the ten disagree, because the
released VQA v2 answers were normalised when collected. glimpse normalises
both sides the same way by default, so human answers written "two" or "Two."
(as the shapes world's simulated annotators write them) match a predicted "2";
`match_vqaeval=True` reproduces vqaEval.py's asymmetric treatment exactly.

Accuracies are reported in percent (0-100), as the VQA evaluation server and
papers report them; they are not rounded.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

from training.data.readers import VQAQuestion

# vqaEval.py's tables, verbatim (its contractions map keys include a few
# spellings that already carry an apostrophe; they map to themselves or to
# the canonical form).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)
# vqaEval.py writes "(?!<=\d)(\.)(?!\d)": the first group is a negative
# lookahead, not the intended lookbehind, so a period is removed unless a digit
# follows it ("2.5" keeps its point, "3." loses it). Kept as is for fidelity.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """vqaEval.py's processPunctuation: a mark next to a space (or any mark in
    text with a digit,digit comma) is deleted, otherwise replaced by a space;
    then periods not followed by a digit are deleted."""
    out = text
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def process_digit_article(text: str) -> str:
    """vqaEval.py's processDigitArticle: lowercase, number words to digits,
    articles dropped, contractions given their apostrophe."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The normal form answers are compared in: "Two." -> "2", "the cat" -> "cat"."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def answer_accuracy(prediction: str, human_answers: Sequence[str], *,
                    match_vqaeval: bool = False) -> float:
    """Accuracy of one predicted answer in [0, 1]: the mean over the
    leave-one-out subsets of min(#matching human answers in the subset / 3, 1)."""
    if not human_answers:
        raise ValueError("no human answers to compare with")
    predicted = normalize_answer(prediction)
    if not match_vqaeval:
        humans = [normalize_answer(a) for a in human_answers]
    elif len(set(human_answers)) > 1:
        humans = [process_punctuation(a) for a in human_answers]
    else:
        humans = list(human_answers)
    matches = sum(a == predicted for a in humans)
    # Leaving out a matching answer leaves matches - 1 in the subset, any other leaves matches.
    per_subset = [min((matches - (a == predicted)) / 3, 1.0) for a in humans]
    return sum(per_subset) / len(per_subset)


def vqa_accuracy(predictions: Mapping[int, str], questions: Mapping[int, VQAQuestion], *,
                 match_vqaeval: bool = False) -> dict:
    """Accuracy in percent over the predicted questions: overall, per question
    type and per answer type.

    predictions: question_id -> answer; every id must be an annotated question.
    """
    if not predictions:
        raise ValueError("no answers to score")
    unknown = sorted(set(predictions) - set(questions))
    if unknown:
        raise ValueError(f"{len(unknown)} answer(s) for unknown question_id(s), "
                         f"e.g. {unknown[:5]}")
    by_question_type: dict[str, list[float]] = defaultdict(list)
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    overall = []
    for qid in sorted(predictions):
        q = questions[qid]
        if not q.annotated:
            raise ValueError(f"question_id {qid} has no human answers (no annotations loaded?)")
        acc = 100.0 * answer_accuracy(predictions[qid], q.answers, match_vqaeval=match_vqaeval)
        overall.append(acc)
        by_question_type[q.question_type or "unknown"].append(acc)
        by_answer_type[q.answer_type or "unknown"].append(acc)
    return {
        "overall": _mean(overall),
        "per_question_type": {k: _mean(v) for k, v in sorted(by_question_type.items())},
        "per_answer_type": {k: _mean(v) for k, v in sorted(by_answer_type.items())},
        "n_questions": len(overall),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
