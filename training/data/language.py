"""The shapes world's caption language: a small grammar, its generator and its parser.

A caption is a sequence of clauses; each clause names one noun phrase, or two
noun phrases and the spatial relation between them:

    caption   ::= clause (separator clause)*
    separator ::= [","|";"] ["and"]          (may be empty: punctuation is optional)
    clause    ::= [opener] np [relation np]
    np        ::= determiner [size] [colour] shape

Every word class is closed and the classes are disjoint where it matters (a noun
phrase always ends with a shape noun, and what may follow a shape noun - a
relation phrase, a separator, an opener or a determiner - never starts with a
shape, size or colour word), so a caption has at most one parse even after a
tokeniser has removed its punctuation. This lets the semantic metrics read a
model's tokenised output as well as the reference captions.

Meaning: a singular noun phrase ("a red circle", "one red circle") says that at
least one object has the stated attributes; a counted one ("two red circles")
says that exactly that many objects have them. Omitted attributes are
unconstrained. A relation clause uses world.relation (dominant axis); see
`clause_is_true` for the quantifiers. `is_exact` and `coverage` are the two
measures reported by training.metrics.semantic; docs/datasets.md defines them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from training.data.world import COLOURS, SHAPES, Scene, ShapeObject, relation

MAX_WORDS = 22  # reference captions are shortened (sizes dropped, opener left out) to fit

SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
}
RELATION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "on the left of", "left of"),
    "right": ("to the right of", "on the right of", "right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
# Openers carry no meaning. "there is" / "there are" agree with the noun phrase
# they introduce; the others introduce either.
OPENERS: tuple[str, ...] = (
    "there is", "there are", "a picture of", "an image of", "a photo of",
    "this image shows", "the image shows", "this picture shows", "we can see",
)
SINGULAR_DETERMINERS: tuple[str, ...] = ("a", "an", "one")
COUNT_WORDS: dict[str, int] = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
}
NUMBER_WORD: dict[int, str] = {n: w for w, n in COUNT_WORDS.items()}
MAX_COUNT = max(COUNT_WORDS.values())
PLURAL: dict[str, str] = {s: s + "es" if s.endswith(("s", "x")) else s + "s" for s in SHAPES}


@dataclass(frozen=True)
class NounPhrase:
    """A determiner with optional size and colour and a shape noun.

    `count` is None for a singular phrase ("a", "an", "one": at least one object
    matches) and the number for a counted one ("two": exactly two objects match).
    """

    shape: str
    colour: str | None = None
    size: str | None = None
    count: int | None = None

    def matches(self, obj: ShapeObject) -> bool:
        return (obj.shape == self.shape
                and self.colour in (None, obj.colour)
                and self.size in (None, obj.size))

    def text(self) -> str:
        """The phrase in its plainest surface form ("a small red circle", "two stars")."""
        words = [w for w in (self.size, self.colour) if w is not None]
        if self.count is None:
            words.append(self.shape)
            return " ".join([indefinite_article(words[0]), *words])
        return " ".join([NUMBER_WORD[self.count], *words, PLURAL[self.shape]])


@dataclass(frozen=True)
class Clause:
    """`subject` alone, or `subject` standing in `relation` to `landmark`."""

    subject: NounPhrase
    relation: str | None = None
    landmark: NounPhrase | None = None

    def noun_phrases(self) -> tuple[NounPhrase, ...]:
        return (self.subject,) if self.landmark is None else (self.subject, self.landmark)

    def text(self) -> str:
        if self.landmark is None:
            return self.subject.text()
        phrase = RELATION_SYNONYMS[self.relation][0]
        return f"{self.subject.text()} {phrase} {self.landmark.text()}"


@dataclass(frozen=True)
class Caption:
    clauses: tuple[Clause, ...]

    def noun_phrases(self) -> list[NounPhrase]:
        return [np_ for clause in self.clauses for np_ in clause.noun_phrases()]

    def text(self) -> str:
        """The caption in its plainest surface form; `parse_caption` reads it back."""
        return _join([c.text() for c in self.clauses], _list_separators(len(self.clauses)))


# --- parsing -----------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+|[,;]")
_SEPARATOR_MARKS = (",", ";")


def caption_tokens(text: str) -> list[str]:
    """Lowercase words, plus "," and ";" (which may separate clauses); other marks are dropped."""
    return _TOKEN.findall(text.lower())


def phrase_table(phrases: dict[str, str]) -> list[tuple[tuple[str, ...], str]]:
    """(tokens, value) pairs, longest first, so "on the left of" wins over shorter prefixes."""
    table = [(tuple(p.split()), v) for p, v in phrases.items()]
    return sorted(table, key=lambda item: -len(item[0]))


_OPENER_TABLE = phrase_table({o: o for o in OPENERS})
_RELATION_TABLE = phrase_table(
    {p: rel for rel, phrases in RELATION_SYNONYMS.items() for p in phrases})
_SIZE_WORDS = {w: size for size, words in SIZE_SYNONYMS.items() for w in words}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURAL.items()}}


def match_phrase(tokens: Sequence[str], i: int,
                  table: list[tuple[tuple[str, ...], str]]) -> tuple[str, int] | None:
    for phrase, value in table:
        if tuple(tokens[i:i + len(phrase)]) == phrase:
            return value, i + len(phrase)
    return None


def parse_noun_phrase(tokens: Sequence[str], i: int, *,
                      singular: Collection[str] = SINGULAR_DETERMINERS,
                      counted: bool = True) -> tuple[NounPhrase, int] | None:
    """The noun phrase starting at tokens[i] and the index after it, or None.

    `singular` are the determiners of a singular phrase; `counted` allows count
    words ("two red circles"). The clip grammar (training.data.clip_language)
    adds "the" and has no counts.
    """
    if i >= len(tokens):
        return None
    if tokens[i] in singular:
        count = None
    elif counted and tokens[i] in COUNT_WORDS:
        count = COUNT_WORDS[tokens[i]]
    else:
        return None
    i += 1
    size = colour = None
    if i < len(tokens) and tokens[i] in _SIZE_WORDS:
        size, i = _SIZE_WORDS[tokens[i]], i + 1
    if i < len(tokens) and tokens[i] in COLOURS:
        colour, i = tokens[i], i + 1
    if i >= len(tokens) or tokens[i] not in _SHAPE_WORDS:
        return None
    # Number agreement is not enforced: the determiner alone decides singular vs counted.
    return NounPhrase(_SHAPE_WORDS[tokens[i]], colour, size, count), i + 1


def _parse_clause(tokens: Sequence[str], i: int) -> tuple[Clause, int] | None:
    opener = match_phrase(tokens, i, _OPENER_TABLE)
    if opener is not None:
        i = opener[1]
    subject = parse_noun_phrase(tokens, i)
    if subject is None:
        return None
    np_, i = subject
    rel = match_phrase(tokens, i, _RELATION_TABLE)
    if rel is None:
        return Clause(np_), i
    landmark = parse_noun_phrase(tokens, rel[1])
    if landmark is None:
        return None
    return Clause(np_, rel[0], landmark[0]), landmark[1]


def _skip_separator(tokens: Sequence[str], i: int) -> int:
    if i < len(tokens) and tokens[i] in _SEPARATOR_MARKS:
        i += 1
    if i < len(tokens) and tokens[i] == "and":
        i += 1
    return i


def parse_caption(text: str) -> Caption | None:
    """The caption's clauses, or None when `text` is not in the grammar."""
    tokens = caption_tokens(text)
    clauses: list[Clause] = []
    i = 0
    while True:
        parsed = _parse_clause(tokens, i)
        if parsed is None:
            return None
        clause, i = parsed
        clauses.append(clause)
        if i == len(tokens):
            return Caption(tuple(clauses))
        i = _skip_separator(tokens, i)


# --- meaning -----------------------------------------------------------------

def matching_objects(np_: NounPhrase, scene: Scene) -> list[int]:
    """Indices of the scene's objects that have the phrase's attributes."""
    return [k for k, obj in enumerate(scene.objects) if np_.matches(obj)]


def _np_is_true(np_: NounPhrase, matches: Sequence[int]) -> bool:
    return len(matches) >= 1 if np_.count is None else len(matches) == np_.count


def _related(matches: Sequence[int], np_: NounPhrase, test: Callable[[int], bool]) -> bool:
    """Singular phrases are existential, counted phrases universal over their matches."""
    quantifier = any if np_.count is None else all
    return quantifier(test(k) for k in matches)


def _referents(matches: Sequence[int], other: NounPhrase,
               other_matches: Sequence[int]) -> list[int]:
    """Objects that may fill one role of a relation: a counted phrase on the other side
    refers to all of its matches, so those cannot fill this role too."""
    if other.count is None:
        return list(matches)
    return [k for k in matches if k not in other_matches]


def clause_is_true(clause: Clause, scene: Scene) -> bool:
    """Whether the clause holds in the scene.

    "A REL B" holds when both phrases hold on their own and Q_A a: Q_B b != a:
    relation(a, b) == REL, where Q is "some" for a singular phrase and "every"
    for a counted one ("two circles below a square": each circle is below some
    square). A counted phrase refers to all of its matches, none of which may
    fill the other role ("a circle left of two circles" needs three circles).
    """
    subject, landmark = clause.subject, clause.landmark
    subjects = matching_objects(subject, scene)
    if not _np_is_true(subject, subjects):
        return False
    if landmark is None:
        return True
    landmarks = matching_objects(landmark, scene)
    if not _np_is_true(landmark, landmarks):
        return False
    subject_pool = _referents(subjects, landmark, landmarks)
    landmark_pool = _referents(landmarks, subject, subjects)
    if ((subject.count is not None and len(subject_pool) < len(subjects))
            or (landmark.count is not None and len(landmark_pool) < len(landmarks))):
        return False
    objs = scene.objects

    def holds_for(a: int) -> bool:
        others = [b for b in landmark_pool if b != a]
        return bool(others) and _related(
            others, landmark, lambda b: relation(objs[a], objs[b]) == clause.relation)

    return _related(subject_pool, subject, holds_for)


def caption_is_exact(caption: Caption, scene: Scene) -> bool:
    return all(clause_is_true(c, scene) for c in caption.clauses)


def maximum_matching(edges: Sequence[Sequence[int]]) -> int:
    """Size of a maximum bipartite matching (Kuhn's augmenting paths); edges[slot] = objects."""
    owner: dict[int, int] = {}

    def augment(slot: int, seen: set[int]) -> bool:
        for obj in edges[slot]:
            if obj not in seen:
                seen.add(obj)
                if obj not in owner or augment(owner[obj], seen):
                    owner[obj] = slot
                    return True
        return False

    return sum(augment(slot, set()) for slot in range(len(edges)))


def caption_coverage(caption: Caption, scene: Scene) -> float:
    """Share of the scene's objects the caption mentions.

    Each singular phrase is one mention and a phrase counted k is k mentions; a
    mention can stand for any one object with its attributes, and the mentions
    are assigned to objects by a maximum bipartite matching, so two mentions of
    "a red circle" cover two red circles but one mention covers only one. An
    empty scene has nothing left unmentioned (coverage 1).
    """
    if not scene.objects:
        return 1.0
    edges = [matching_objects(np_, scene)
             for np_ in caption.noun_phrases() for _ in range(np_.count or 1)]
    return maximum_matching(edges) / len(scene.objects)


def is_exact(text: str, scene: Scene) -> bool:
    """True when `text` parses and every clause of it is true of `scene`."""
    caption = parse_caption(text)
    return caption is not None and caption_is_exact(caption, scene)


def coverage(text: str, scene: Scene) -> float:
    """`caption_coverage` of the parsed text; 0 for text outside the grammar."""
    caption = parse_caption(text)
    return 0.0 if caption is None else caption_coverage(caption, scene)


# --- generation --------------------------------------------------------------

P_SIZE = 0.5  # a mention states the object's size
P_COLOUR = 0.9  # a mention states the object's colour
P_ALL_LIST = 0.3  # a scene of several objects is described as a plain list
P_LIST_FIRST = 0.3  # list items come before the relation clauses
P_OPENER = 0.6  # the caption starts with an opener
P_THERE_AFTER_RELATION = 0.3  # "... and there is a green star"
P_SEMICOLON = 0.2  # a relation clause is followed by "; " rather than ", " / " and "
P_ONE = 0.1  # "one" rather than "a"/"an"
_ATTEMPTS_PER_CAPTION = 10  # draws per wanted caption when avoiding duplicates


def generate_captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """`n` reference captions of `scene`, each entirely true of it and mentioning every object.

    Captions differ in sentence template, synonyms and omitted attributes; they
    are distinct whenever the scene allows `n` distinct captions.
    """
    if not scene.objects:
        raise ValueError("a scene needs at least one object to be described")
    captions: list[str] = []
    for _ in range(n * _ATTEMPTS_PER_CAPTION):
        if len(captions) == n:
            break
        text = _one_caption(scene, rng)
        if text not in captions:
            captions.append(text)
    while len(captions) < n:
        captions.append(_one_caption(scene, rng))
    return captions


def _one_caption(scene: Scene, rng: np.random.Generator) -> str:
    plan = _plan(scene, rng)
    text = _render(plan, rng, opener=True)
    if _word_count(text) > MAX_WORDS:
        plan = Caption(tuple(_without_singular_sizes(c) for c in plan.clauses))
        text = _render(plan, rng, opener=True)
    if _word_count(text) > MAX_WORDS:
        text = _render(plan, rng, opener=False)
    return text


def _word_count(text: str) -> int:
    """Words of a generated caption: its words are joined by single spaces, and "," and ";"
    follow a word directly, so every space-separated piece holds exactly one word."""
    return len(text.split())


def _plan(scene: Scene, rng: np.random.Generator) -> Caption:
    """What a caption says: relation clauses over disjoint pairs, then the rest as a list."""
    objs = scene.objects
    order = rng.permutation(len(objs)).tolist()
    n_relations = _relation_clause_count(len(objs), rng)
    relations = [
        Clause(_mention(objs[a], rng), relation(objs[a], objs[b]), _mention(objs[b], rng))
        for a, b in zip(order[0:2 * n_relations:2], order[1:2 * n_relations:2], strict=True)
    ]
    keep_size, keep_colour = rng.random() < P_SIZE, rng.random() < P_COLOUR
    items = [Clause(np_) for np_ in
             _list_phrases(scene, order[2 * n_relations:], keep_size, keep_colour)]
    clauses = items + relations if rng.random() < P_LIST_FIRST else relations + items
    return Caption(tuple(clauses))


def _relation_clause_count(n_objects: int, rng: np.random.Generator) -> int:
    if n_objects < 2 or rng.random() < P_ALL_LIST:
        return 0
    if n_objects < 4:
        return 1
    return int(rng.integers(1, 3))


def _mention(obj: ShapeObject, rng: np.random.Generator) -> NounPhrase:
    """A singular phrase true of `obj`, with its size and colour each sometimes left out."""
    return NounPhrase(obj.shape,
                      obj.colour if rng.random() < P_COLOUR else None,
                      obj.size if rng.random() < P_SIZE else None)


def _list_phrases(scene: Scene, indices: Sequence[int], keep_size: bool,
                  keep_colour: bool) -> list[NounPhrase]:
    """Phrases for the objects `indices`, alike objects grouped under a count.

    A group is counted only when its members are all the scene's objects with
    the stated attributes (otherwise "two red circles" would be false); a group
    that fails this is described again with every attribute, and objects that
    still cannot be counted are listed one by one.
    """
    objs = scene.objects
    groups: dict[tuple, list[int]] = {}
    for k in indices:
        o = objs[k]
        key = (o.shape, o.colour if keep_colour else None, o.size if keep_size else None)
        groups.setdefault(key, []).append(k)
    phrases: list[NounPhrase] = []
    for (shape, colour, size), members in groups.items():
        counted = NounPhrase(shape, colour, size, len(members))
        if len(members) == 1:
            phrases.append(NounPhrase(shape, colour, size))
        elif len(members) <= MAX_COUNT and matching_objects(counted, scene) == sorted(members):
            phrases.append(counted)
        elif keep_size and keep_colour:
            phrases.extend(NounPhrase(shape, colour, size) for _ in members)
        else:
            phrases.extend(_list_phrases(scene, members, True, True))
    return phrases


def _without_singular_sizes(clause: Clause) -> Clause:
    def drop(np_: NounPhrase | None) -> NounPhrase | None:
        if np_ is None or np_.count is not None or np_.size is None:
            return np_
        return NounPhrase(np_.shape, np_.colour)

    return Clause(drop(clause.subject), clause.relation, drop(clause.landmark))


def _render(caption: Caption, rng: np.random.Generator, opener: bool) -> str:
    """A surface form of `caption` with synonyms, openers and separators drawn from `rng`."""
    parts: list[str] = []
    for k, clause in enumerate(caption.clauses):
        text = _render_clause(clause, rng)
        follows_relation = k > 0 and caption.clauses[k - 1].relation is not None
        if k == 0 and opener and rng.random() < P_OPENER:
            text = f"{_draw_opener(clause.subject, rng)} {text}"
        elif (follows_relation and clause.relation is None
              and rng.random() < P_THERE_AFTER_RELATION):
            text = f"{_there(clause.subject)} {text}"
        parts.append(text)
    separators = _list_separators(len(parts))
    for k, clause in enumerate(caption.clauses[:-1]):
        if clause.relation is not None and rng.random() < P_SEMICOLON:
            separators[k] = "; "
    return _join(parts, separators)


def _list_separators(n_parts: int) -> list[str]:
    """"A, B, C and D"."""
    return [", "] * (n_parts - 2) + [" and "] if n_parts > 1 else []


def _join(parts: Sequence[str], separators: Sequence[str]) -> str:
    pieces = [parts[0]]
    for sep, part in zip(separators, parts[1:], strict=True):
        pieces += [sep, part]
    return "".join(pieces)


def _there(np_: NounPhrase) -> str:
    return "there is" if np_.count is None else "there are"


_OTHER_OPENERS: tuple[str, ...] = tuple(o for o in OPENERS if not o.startswith("there"))


def _draw_opener(np_: NounPhrase, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return _there(np_)
    return _choice(rng, _OTHER_OPENERS)


def _render_clause(clause: Clause, rng: np.random.Generator) -> str:
    subject = _render_noun_phrase(clause.subject, rng)
    if clause.landmark is None:
        return subject
    phrase = _choice(rng, RELATION_SYNONYMS[clause.relation])
    return f"{subject} {phrase} {_render_noun_phrase(clause.landmark, rng)}"


def _render_noun_phrase(np_: NounPhrase, rng: np.random.Generator) -> str:
    words = []
    if np_.size is not None:
        words.append(_weighted_choice(rng, SIZE_SYNONYMS[np_.size], _SIZE_SYNONYM_CDF))
    if np_.colour is not None:
        words.append(np_.colour)
    if np_.count is not None:
        return " ".join([NUMBER_WORD[np_.count], *words, PLURAL[np_.shape]])
    words.append(np_.shape)
    determiner = "one" if rng.random() < P_ONE else indefinite_article(words[0])
    return " ".join([determiner, *words])


def indefinite_article(word: str) -> str:
    # Vowel letter = vowel sound for every word of this vocabulary ("an orange", "a huge").
    return "an" if word[0] in "aeiou" else "a"


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    """A uniform draw; rng.choice(len(options)) draws exactly this rng.integers, more slowly."""
    return options[int(rng.integers(len(options)))]


def _cumulative(p: Sequence[float]) -> tuple[float, ...]:
    """The distribution function rng.choice(len(p), p=p) computes, bit for bit."""
    cdf = np.asarray(p, dtype=np.float64).cumsum()
    cdf /= cdf[-1]
    return tuple(cdf.tolist())


# The plain size word most of the time, so every synonym stays frequent enough to learn.
_SIZE_SYNONYM_CDF = _cumulative((0.6, 0.2, 0.2))


def _weighted_choice(rng: np.random.Generator, options: Sequence[str],
                     cdf: Sequence[float]) -> str:
    """The draw of rng.choice(len(options), p=p) for cdf = _cumulative(p): one uniform
    number located in the distribution function (numpy's searchsorted, side="right")."""
    return options[bisect.bisect_right(cdf, rng.random())]
