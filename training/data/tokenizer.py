"""Caption tokenisation, the word vocabulary and the character alphabet.

`tokenize` is the one caption pre-processing used everywhere in glimpse: when a
vocabulary is built, when a caption is encoded for training, and when generated
and reference captions are scored (see training/metrics/captions.py). It
follows Karpathy's neuraltalk2 `prepro` (lowercase, drop punctuation, split on
whitespace), which is also what coco-caption's PTB tokenizer + punctuation
removal amounts to for ordinary captions.

`WordVocab` maps words to ids for word-level decoders; its JSON file is the
`vocab.json` of a model bundle, which the service reads without importing this
module. `CharAlphabet` is the character alphabet of the char-CNN-RNN text
encoder (Reed et al. 2016, after Zhang et al. 2015).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from service.text import tokenize

logger = logging.getLogger(__name__)

# The tokeniser itself lives in the service (the lowest layer), which splits request
# text with it; training re-exports it so both sides share one definition.

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)


class WordVocab:
    """Word <-> id mapping with `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3.

    Words follow the specials ordered by training count (descending), ties
    alphabetically, so the same captions always give the same ids.
    """

    def __init__(self, words: Sequence[str], *, min_count: int = 1) -> None:
        tokens = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        if len(set(tokens)) != len(tokens):
            raise ValueError("WordVocab: duplicate words in the vocabulary")
        self.tokens: list[str] = tokens
        self.min_count = min_count
        self._index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], *, min_count: int = 1,
              max_size: int | None = None) -> WordVocab:
        """Build from the training split's tokenised captions only.

        Words seen fewer than `min_count` times become `<unk>`; `max_size`
        caps the vocabulary length (specials included).
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(t.lower() for tokens in token_lists for t in tokens)
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        words = sorted((w for w, c in counts.items() if c >= min_count),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            if max_size < len(SPECIAL_TOKENS):
                raise ValueError(f"max_size must be >= {len(SPECIAL_TOKENS)}, got {max_size}")
            words = words[: max_size - len(SPECIAL_TOKENS)]
        return cls(words, min_count=min_count)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def token_id(self, word: str) -> int:
        return self._index.get(word, self.unk_id)

    def encode(self, text: str | Sequence[str], *, add_bos: bool = False,
               add_eos: bool = False) -> list[int]:
        """Ids of a caption (raw text is tokenised first; tokens are lowercased)."""
        tokens = tokenize(text) if isinstance(text, str) else [t.lower() for t in text]
        ids = [self.token_id(t) for t in tokens]
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first `<eos>`, without special tokens."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} outside the vocabulary of {len(self.tokens)}")
            if i >= len(SPECIAL_TOKENS):
                words.append(self.tokens[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {
            "type": "word",
            "tokens": self.tokens,
            "min_count": self.min_count,
            "lowercase": True,
            "pad_id": self.pad_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "unk_id": self.unk_id,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "vocabulary") -> WordVocab:
        if d.get("type") != "word":
            raise ValueError(f"{source}: type is {d.get('type')!r}, expected 'word'")
        tokens = d.get("tokens")
        if not isinstance(tokens, list) or tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"{source}: 'tokens' must be a list starting with {SPECIAL_TOKENS}")
        return cls(tokens[len(SPECIAL_TOKENS):], min_count=int(d.get("min_count", 1)))

    @classmethod
    def load(cls, path: str | Path) -> WordVocab:
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), source=path.name)


# Reed et al.'s char-CNN-RNN text encoder reads characters from Zhang et al.'s
# (2015, Sec. 2.2) alphabet with the space added: a 70-position string that
# lists '-' twice. glimpse keeps each character once: 26 letters, 10 digits,
# 32 punctuation marks and the space, 69 in all.
REED_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz0123456789"
    "-,;.!?:'\"/\\|_@#$%^&*~`+=<>()[]{} "
)

UnknownPolicy = Literal["error", "replace"]


class CharAlphabet:
    """Character <-> id mapping: 0 pads, 1..len(alphabet) are the characters,
    and `unk_id` = len(alphabet) + 1 stands for characters outside it."""

    def __init__(self, alphabet: str = REED_ALPHABET, *, lowercase: bool = True) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("CharAlphabet: the alphabet repeats a character")
        self.alphabet = alphabet
        self.lowercase = lowercase
        self._index = {ch: i + 1 for i, ch in enumerate(alphabet)}
        self.replaced: Counter[str] = Counter()

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return len(self.alphabet) + 1

    def __len__(self) -> int:
        """Number of ids: padding, the characters and the unknown id."""
        return len(self.alphabet) + 2

    def _normalise(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of `text` outside the alphabet, in order of appearance."""
        return list(dict.fromkeys(ch for ch in self._normalise(text) if ch not in self._index))

    def encode(self, text: str, max_length: int, *,
               on_unknown: UnknownPolicy = "error") -> list[int]:
        """Ids of `text`, truncated or right-padded with 0 to `max_length`.

        on_unknown="error" raises ValueError naming the characters outside the
        alphabet; "replace" maps them to `unk_id`, counts them in
        `self.replaced` and logs each new one once.
        """
        if on_unknown not in ("error", "replace"):
            raise ValueError(f"on_unknown must be 'error' or 'replace', got {on_unknown!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        unknown = self.unknown_characters(text)
        if unknown and on_unknown == "error":
            raise ValueError(f"characters outside the alphabet: {unknown!r} in {text!r}")
        text = self._normalise(text)
        self._report_replaced(text, unknown)
        ids = [self._index.get(ch, self.unk_id) for ch in text[:max_length]]
        return ids + [self.pad_id] * (max_length - len(ids))

    def _report_replaced(self, text: str, unknown: list[str]) -> None:
        for ch in unknown:
            if ch not in self.replaced:
                logger.warning("replacing character %r (U+%04X) outside the alphabet, first in %r",
                               ch, ord(ch), text)
        self.replaced.update(ch for ch in text if ch in unknown)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` without padding; the unknown id reads as U+FFFD."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.pad_id:
                continue
            out.append("\ufffd" if i == self.unk_id else self.alphabet[i - 1])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"type": "char", "alphabet": self.alphabet, "lowercase": self.lowercase,
                "pad_id": self.pad_id, "unk_id": self.unk_id}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharAlphabet:
        path = Path(path)
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("type") != "char" or not isinstance(d.get("alphabet"), str):
            raise ValueError(f"{path.name}: not a character alphabet (type 'char' with a string "
                             "'alphabet')")
        return cls(d["alphabet"], lowercase=bool(d.get("lowercase", True)))
