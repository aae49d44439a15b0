"""Text input of the service: the caption tokeniser and the vocabularies of a bundle.

`tokenize` is the one text pre-processing of glimpse (training.data.tokenizer
re-exports it), so a question, a query or a sentence to align is split exactly as
the training captions were. `WordIndex` and `CharIndex` read a bundle's
`vocab.json` (WordVocab JSON) and alphabet file (CharAlphabet JSON) and turn request
text into ids, naming the words or characters they do not know so that routers can
answer 422 with a useful message instead of silently mapping them to <unk>.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Apostrophes join their word ("don't" -> "dont", "man's" -> "mans") as in
# neuraltalk2; every other punctuation mark separates words, so "red,blue" and
# "black-footed" do not fuse into one token.
_APOSTROPHES = frozenset("'\u2019\u2018`\u00b4")


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith(("P", "S"))


class _TokenTranslation(dict):
    """`str.translate` table of `tokenize`: apostrophes are deleted, other punctuation marks
    and symbols (Unicode categories P* and S*) become a space, every other character stays.

    Entries are made the first time a character is looked up, so the table holds only the
    characters seen so far instead of all 1.1 million code points.
    """

    def __missing__(self, code_point: int) -> str | None:
        ch = chr(code_point)
        if ch in _APOSTROPHES:
            replacement = None
        elif _is_punctuation(ch):
            replacement = " "
        else:
            replacement = ch
        self[code_point] = replacement
        return replacement


_TOKEN_TRANSLATION = _TokenTranslation()


def tokenize(text: str) -> list[str]:
    """Lowercase `text`, remove punctuation and split it into words.

    >>> tokenize("A Red circle, left of the big-blue square.")
    ['a', 'red', 'circle', 'left', 'of', 'the', 'big', 'blue', 'square']
    """
    return text.lower().translate(_TOKEN_TRANSLATION).split()


@dataclass(frozen=True)
class EncodedText:
    ids: list[int]
    words: list[str]  # the tokens the ids stand for (word vocabularies) or the characters
    unknown: list[str]  # distinct out-of-vocabulary words or characters, in order


class WordIndex:
    """Words -> ids of a WordVocab JSON (<pad>=0, <bos>=1, <eos>=2, <unk>=3)."""

    PAD_ID = 0
    BOS_ID = 1
    UNK_ID = 3

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = list(tokens)
        self._index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def from_file(cls, path: str | Path) -> WordIndex:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("type") != "word" or not isinstance(data.get("tokens"), list):
            raise ValueError(f"{path}: expected a word vocabulary with a 'tokens' list")
        return cls(data["tokens"])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> EncodedText:
        words = tokenize(text)
        ids = [self._index.get(w, self.UNK_ID) for w in words]
        unknown = list(dict.fromkeys(w for w, i in zip(words, ids, strict=True)
                                     if i == self.UNK_ID))
        return EncodedText(ids=ids, words=words, unknown=unknown)


class CharIndex:
    """Characters -> ids of a CharAlphabet JSON: 0 pads, 1..n are the characters."""

    def __init__(self, alphabet: str, *, lowercase: bool = True) -> None:
        self.alphabet = alphabet
        self.lowercase = lowercase
        self._index = {ch: i + 1 for i, ch in enumerate(alphabet)}
        self.unk_id = len(alphabet) + 1

    @classmethod
    def from_file(cls, path: str | Path) -> CharIndex:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("type") != "char" or not isinstance(data.get("alphabet"), str):
            raise ValueError(f"{path}: expected a character alphabet with an 'alphabet' string")
        return cls(data["alphabet"], lowercase=bool(data.get("lowercase", True)))

    def encode(self, text: str) -> EncodedText:
        chars = list(text.lower() if self.lowercase else text)
        ids = [self._index.get(ch, self.unk_id) for ch in chars]
        unknown = list(dict.fromkeys(ch for ch in chars if ch not in self._index))
        return EncodedText(ids=ids, words=chars, unknown=unknown)


def pad_ids(rows: Sequence[Sequence[int]], *, length: int | None = None,
            pad_id: int = 0) -> np.ndarray:
    """int64 [len(rows), length] right-padded with `pad_id` (length: the longest row)."""
    width = max((len(r) for r in rows), default=0) if length is None else length
    out = np.full((len(rows), max(width, 1)), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        row = list(row)[:width]
        out[i, :len(row)] = row
    return out
