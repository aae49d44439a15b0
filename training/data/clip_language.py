"""The language of clip descriptions: a small grammar, its generator and its parser.

A description says what each object of a clip does, one statement per object:

    description ::= [opener] statement (connective statement)*
    connective  ::= [","] ("while" | "and")
    statement   ::= np verb_phrase
    np          ::= determiner [size] [colour] shape      determiner: a | an | the
    verb_phrase ::= an activity phrase ("moves to the left", "grows", ...)
                  | colour_verb colour                     ("turns blue")

Noun phrases are the still world's (training.data.language) with "the" added
and no counts; a noun phrase names the object as it first appears (a growing
circle is "the small circle", a circle that turns blue is "the red circle").
What follows a shape noun (a verb phrase) never starts with a determiner,
size, colour or shape word, and what follows a verb phrase (a connective or the
end) never continues one, so a description has at most one parse, with or
without its punctuation.

Meaning: a statement is true of a clip when some object with the noun phrase's
attributes performs the stated activity (for a colour change, to the stated
colour); "stays still" is true of a still object only. `is_exact` and
`coverage` are the two measures of training.metrics.semantic for clips;
docs/datasets.md defines them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.data.clip_world import STILL, Clip, ClipObject
from training.data.language import (
    SIZE_SYNONYMS,
    NounPhrase,
    caption_tokens,
    indefinite_article,
    match_phrase,
    maximum_matching,
    parse_noun_phrase,
    phrase_table,
)
from training.data.world import COLOURS

# Synonyms of each activity, canonical first. A colour change is a verb from
# COLOUR_CHANGE_VERBS followed by the new colour.
ACTIVITY_PHRASES: dict[str, tuple[str, ...]] = {
    "move_left": ("moves to the left", "moves left", "slides to the left", "goes left"),
    "move_right": ("moves to the right", "moves right", "slides to the right", "goes right"),
    "move_up": ("moves up", "goes up", "slides up", "rises"),
    "move_down": ("moves down", "goes down", "slides down", "sinks"),
    "grow": ("grows", "gets bigger", "expands"),
    "shrink": ("shrinks", "gets smaller", "contracts"),
    "rotate": ("rotates", "spins", "turns around"),
    "appear": ("appears", "shows up", "pops up"),
    "vanish": ("vanishes", "disappears", "goes away"),
    "bounce": ("bounces", "jumps", "hops"),
    STILL: ("stays still", "stays put", "keeps still"),
}
COLOUR_CHANGE_VERBS: tuple[str, ...] = ("turns", "becomes", "changes colour to")
DETERMINERS: tuple[str, ...] = ("a", "an", "the")
OPENERS: tuple[str, ...] = ("in this clip", "in this video", "in the video", "here")
CONNECTIVES: tuple[str, ...] = ("while", "and")


@dataclass(frozen=True)
class Statement:
    """`subject` performs `activity` (one of ACTIVITIES, or STILL); `new_colour` is the
    colour a "change_colour" statement says it turns."""

    subject: NounPhrase
    activity: str
    new_colour: str | None = None

    def text(self) -> str:
        """The statement in its plainest surface form ("a red circle turns blue")."""
        if self.activity == "change_colour":
            verb = f"{COLOUR_CHANGE_VERBS[0]} {self.new_colour}"
        else:
            verb = ACTIVITY_PHRASES[self.activity][0]
        return f"{self.subject.text()} {verb}"

    def is_true_of(self, obj: ClipObject) -> bool:
        return (self.subject.matches(obj.start) and obj.activity == self.activity
                and (self.activity != "change_colour" or obj.new_colour == self.new_colour))


@dataclass(frozen=True)
class Description:
    statements: tuple[Statement, ...]

    def text(self) -> str:
        return " while ".join(s.text() for s in self.statements)


# --- parsing -----------------------------------------------------------------------

_OPENER_TABLE = phrase_table({o: o for o in OPENERS})
_ACTIVITY_TABLE = phrase_table(
    {p: activity for activity, phrases in ACTIVITY_PHRASES.items() for p in phrases})
_COLOUR_VERB_TABLE = phrase_table({v: v for v in COLOUR_CHANGE_VERBS})


def _parse_verb_phrase(tokens: Sequence[str], i: int
                       ) -> tuple[str, str | None, int] | None:
    """(activity, new colour or None, index after) of the verb phrase at tokens[i]."""
    fixed = match_phrase(tokens, i, _ACTIVITY_TABLE)
    if fixed is not None:
        return fixed[0], None, fixed[1]
    verb = match_phrase(tokens, i, _COLOUR_VERB_TABLE)
    if verb is None or verb[1] >= len(tokens) or tokens[verb[1]] not in COLOURS:
        return None
    return "change_colour", tokens[verb[1]], verb[1] + 1


def _parse_statement(tokens: Sequence[str], i: int) -> tuple[Statement, int] | None:
    subject = parse_noun_phrase(tokens, i, singular=DETERMINERS, counted=False)
    if subject is None:
        return None
    verb = _parse_verb_phrase(tokens, subject[1])
    if verb is None:
        return None
    activity, new_colour, i = verb
    return Statement(subject[0], activity, new_colour), i


def parse_description(text: str) -> Description | None:
    """The description's statements, or None when `text` is not in the grammar."""
    tokens = caption_tokens(text)
    opener = match_phrase(tokens, 0, _OPENER_TABLE)
    i = 0 if opener is None else opener[1]
    statements: list[Statement] = []
    while True:
        parsed = _parse_statement(tokens, i)
        if parsed is None:
            return None
        statement, i = parsed
        statements.append(statement)
        if i == len(tokens):
            return Description(tuple(statements))
        if tokens[i] == ",":
            i += 1
        if i == len(tokens) or tokens[i] not in CONNECTIVES:
            return None
        i += 1


# --- meaning -----------------------------------------------------------------------

def description_is_exact(description: Description, clip: Clip) -> bool:
    """Every statement is true of some object of the clip."""
    return all(any(s.is_true_of(o) for o in clip.objects) for s in description.statements)


def description_coverage(description: Description, clip: Clip) -> float:
    """Share of the clip's objects the description mentions: statements are matched to
    objects with their noun phrase's attributes (a maximum bipartite matching, so one
    statement covers one object), whether or not the activity is right."""
    edges = [[k for k, o in enumerate(clip.objects) if s.subject.matches(o.start)]
             for s in description.statements]
    return maximum_matching(edges) / len(clip.objects)


def is_exact(text: str, clip: Clip) -> bool:
    description = parse_description(text)
    return description is not None and description_is_exact(description, clip)


def coverage(text: str, clip: Clip) -> float:
    """`description_coverage` of the parsed text; 0 for text outside the grammar."""
    description = parse_description(text)
    return 0.0 if description is None else description_coverage(description, clip)


# --- generation --------------------------------------------------------------------

P_SIZE = 0.5  # a mention states the object's size
P_COLOUR = 0.9  # ... and its colour (always when needed to tell the objects apart)
P_THE = 0.5  # "the" rather than "a" / "an"
P_OPENER = 0.3
P_COMMA = 0.3  # ", while" rather than " while"
SIZE_WORD_WEIGHTS = (0.6, 0.2, 0.2)  # the plain size word most of the time, as for scenes
_ATTEMPTS_PER_DESCRIPTION = 10


def generate_descriptions(clip: Clip, rng: np.random.Generator, n: int = 5) -> list[str]:
    """`n` reference descriptions of `clip`, each true of it, with one statement per
    object; distinct whenever the clip allows `n` distinct descriptions."""
    texts: list[str] = []
    for _ in range(n * _ATTEMPTS_PER_DESCRIPTION):
        if len(texts) == n:
            break
        text = _one_description(clip, rng)
        if text not in texts:
            texts.append(text)
    while len(texts) < n:
        texts.append(_one_description(clip, rng))
    return texts


def describe(clip: Clip, rng: np.random.Generator) -> Description:
    """What a description says: each object's activity, in random order, every object
    named so that its noun phrase matches no other object of the clip."""
    order = rng.permutation(len(clip.objects)).tolist()
    return Description(tuple(
        Statement(_mention(clip, k, rng), clip.objects[k].activity, clip.objects[k].new_colour)
        for k in order))


def _mention(clip: Clip, k: int, rng: np.random.Generator) -> NounPhrase:
    shape, colour, size = clip.objects[k].identity()
    keep_colour, keep_size = rng.random() < P_COLOUR, rng.random() < P_SIZE
    phrase = NounPhrase(shape, colour if keep_colour else None, size if keep_size else None)
    others = [o.start for j, o in enumerate(clip.objects) if j != k]
    if any(phrase.matches(o) for o in others):  # bystanders differ in shape or colour
        phrase = NounPhrase(shape, colour, phrase.size)
    return phrase


def _one_description(clip: Clip, rng: np.random.Generator) -> str:
    description = describe(clip, rng)
    parts = [_render_statement(s, rng) for s in description.statements]
    text = parts[0]
    for part in parts[1:]:
        comma = "," if rng.random() < P_COMMA else ""
        text += f"{comma} {_choice(rng, CONNECTIVES)} {part}"
    if rng.random() < P_OPENER:
        text = f"{_choice(rng, OPENERS)} {text}"
    return text


def _render_statement(statement: Statement, rng: np.random.Generator) -> str:
    np_ = statement.subject
    words = []
    if np_.size is not None:
        synonyms = SIZE_SYNONYMS[np_.size]
        words.append(synonyms[int(rng.choice(len(synonyms), p=SIZE_WORD_WEIGHTS))])
    if np_.colour is not None:
        words.append(np_.colour)
    words.append(np_.shape)
    determiner = "the" if rng.random() < P_THE else indefinite_article(words[0])
    if statement.activity == "change_colour":
        verb = f"{_choice(rng, COLOUR_CHANGE_VERBS)} {statement.new_colour}"
    else:
        verb = _choice(rng, ACTIVITY_PHRASES[statement.activity])
    return " ".join([determiner, *words, verb])


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]

