import json
import logging
import random
import sys
import unicodedata

import pytest

from training.data.tokenizer import REED_ALPHABET, CharAlphabet, WordVocab, tokenize


@pytest.mark.parametrize(("text", "tokens"), [
    ("A Red circle.", ["a", "red", "circle"]),
    ("  two  BLUE squares ,and a star!  ", ["two", "blue", "squares", "and", "a", "star"]),
    ("Don't stop; it\u2019s the man's hat", ["dont", "stop", "its", "the", "mans", "hat"]),
    ("black-footed albatross (adult)", ["black", "footed", "albatross", "adult"]),
    ("red,blue", ["red", "blue"]),
    ("", []),
    ("...", []),
])
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


CAPTIONS = [
    ["a", "red", "circle"],
    ["a", "blue", "circle"],
    ["two", "red", "squares"],
    ["a", "Red", "star"],
]


def test_build_orders_by_count_then_alphabetically():
    vocab = WordVocab.build(CAPTIONS)
    # counts: a 3, red 3, circle 2, then blue/squares/star/two once each.
    assert vocab.tokens == ["<pad>", "<bos>", "<eos>", "<unk>",
                            "a", "red", "circle", "blue", "squares", "star", "two"]
    assert len(vocab) == 11
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)


def test_build_min_count_and_max_size():
    assert WordVocab.build(CAPTIONS, min_count=2).tokens[4:] == ["a", "red", "circle"]
    assert WordVocab.build(CAPTIONS, max_size=6).tokens[4:] == ["a", "red"]
    with pytest.raises(ValueError, match="min_count"):
        WordVocab.build(CAPTIONS, min_count=0)


def test_build_ignores_special_tokens_in_text():
    vocab = WordVocab.build([["<unk>", "a", "<eos>"]])
    assert vocab.tokens == ["<pad>", "<bos>", "<eos>", "<unk>", "a"]


def test_encode_decode_round_trip():
    vocab = WordVocab.build(CAPTIONS)
    ids = vocab.encode("A red circle, two squares.", add_bos=True, add_eos=True)
    assert ids == [1, 4, 5, 6, 10, 8, 2]
    assert vocab.decode(ids) == "a red circle two squares"
    assert vocab.encode(["A", "purple", "star"]) == [4, 3, 9]


def test_decode_stops_at_eos_and_drops_specials():
    vocab = WordVocab.build(CAPTIONS)
    assert vocab.decode([1, 4, 3, 6, 2, 5, 5, 0]) == "a circle"
    assert vocab.decode([4, 5, 0, 0]) == "a red"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.decode([4, 99])


def test_save_load_json(tmp_path):
    vocab = WordVocab.build(CAPTIONS, min_count=1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text())
    assert data["type"] == "word"
    assert data["tokens"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert data["lowercase"] is True
    assert data["min_count"] == 1
    loaded = WordVocab.load(path)
    assert loaded.tokens == vocab.tokens
    assert loaded.encode("two red stars") == vocab.encode("two red stars")


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"type": "word", "tokens": ["a", "b"]}))
    with pytest.raises(ValueError, match="vocab.json: 'tokens' must be a list starting with"):
        WordVocab.load(path)
    path.write_text(json.dumps({"type": "char", "alphabet": "abc"}))
    with pytest.raises(ValueError, match="expected 'word'"):
        WordVocab.load(path)


def test_reed_alphabet():
    assert len(REED_ALPHABET) == 69
    alphabet = CharAlphabet()
    assert len(alphabet) == 71  # padding + 69 characters + unknown
    assert alphabet.unk_id == 70


def test_char_encode_pads_truncates_and_lowercases():
    alphabet = CharAlphabet()
    assert alphabet.encode("Ab c", 6) == [1, 2, 69, 3, 0, 0]
    assert alphabet.encode("abcdef", 3) == [1, 2, 3]
    assert alphabet.decode(alphabet.encode("this bird: red-ish!", 30)) == "this bird: red-ish!"


def test_char_unknown_error_names_characters():
    alphabet = CharAlphabet()
    with pytest.raises(ValueError, match=r"\['é', '\\t'\]"):
        alphabet.encode("a café\there", 20)


def test_char_unknown_replace_reports(caplog):
    alphabet = CharAlphabet()
    with caplog.at_level(logging.WARNING, logger="training.data.tokenizer"):
        ids = alphabet.encode("caf\u00e9 \u00e9t\u00e9", 10, on_unknown="replace")
        alphabet.encode("\u00e9", 2, on_unknown="replace")
    assert ids == [3, 1, 6, 70, 69, 70, 20, 70, 0, 0]
    assert alphabet.replaced == {"\u00e9": 4}
    assert alphabet.decode(ids) == "caf\ufffd \ufffdt\ufffd"
    warnings = [r for r in caplog.records if "outside the alphabet" in r.getMessage()]
    assert len(warnings) == 1  # once per new character, not once per occurrence
    with pytest.raises(ValueError, match="on_unknown"):
        alphabet.encode("a", 3, on_unknown="drop")


def test_char_save_load(tmp_path):
    alphabet = CharAlphabet("abc ", lowercase=False)
    path = tmp_path / "alphabet.json"
    alphabet.save(path)
    assert json.loads(path.read_text()) == {"type": "char", "alphabet": "abc ", "lowercase": False,
                                            "pad_id": 0, "unk_id": 5}
    loaded = CharAlphabet.load(path)
    assert loaded.encode("cab A", 6, on_unknown="replace") == [3, 1, 2, 4, 5, 0]


def _tokenize_by_character(text: str) -> list[str]:
    """The definition `tokenize` implements, one character at a time."""
    chars = []
    for ch in text.lower():
        if ch in "'\u2019\u2018`\u00b4":
            continue
        chars.append(" " if unicodedata.category(ch)[0] in "PS" else ch)
    return "".join(chars).split()


def test_tokenize_matches_its_definition_on_every_code_point():
    code_points = "".join(chr(c) for c in range(sys.maxunicode + 1))
    for start in range(0, len(code_points), 4096):
        chunk = code_points[start:start + 4096]
        assert tokenize(chunk) == _tokenize_by_character(chunk), hex(start)


def test_tokenize_matches_its_definition_on_random_text():
    rng = random.Random(0)
    common = "aZ \t\n\u00a0\u3000,.;:!?'`\u00b4\u2019\u2018-_$\u00df\u0130\u03a3\U0001f600"
    for _ in range(5000):
        text = "".join(rng.choice(common) if rng.random() < 0.7 else chr(rng.randrange(0x110000))
                       for _ in range(rng.randint(0, 30)))
        assert tokenize(text) == _tokenize_by_character(text), repr(text)
