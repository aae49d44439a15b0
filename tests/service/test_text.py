import json

import numpy as np
import pytest

from service.text import CharIndex, WordIndex, pad_ids, tokenize
from training.data.tokenizer import CharAlphabet, WordVocab
from training.data.tokenizer import tokenize as training_tokenize


def test_training_and_service_share_the_tokeniser():
    assert training_tokenize is tokenize
    assert tokenize("Is the RED circle left-of a star?") == [
        "is", "the", "red", "circle", "left", "of", "a", "star"]


def test_word_index_matches_word_vocab_and_names_unknown_words(tmp_path):
    vocab = WordVocab.build([["a", "red", "circle"], ["a", "blue", "star"]])
    vocab.save(tmp_path / "vocab.json")
    index = WordIndex.from_file(tmp_path / "vocab.json")
    text = "A red zebra, a red unicorn"
    encoded = index.encode(text)
    assert encoded.ids == vocab.encode(text)
    assert encoded.unknown == ["zebra", "unicorn"]
    assert encoded.words == ["a", "red", "zebra", "a", "red", "unicorn"]


def test_char_index_matches_char_alphabet_and_names_unknown_characters(tmp_path):
    alphabet = CharAlphabet()
    alphabet.save(tmp_path / "alphabet.json")
    index = CharIndex.from_file(tmp_path / "alphabet.json")
    encoded = index.encode("A Red star")
    assert encoded.ids == alphabet.encode("A Red star", 10)
    assert encoded.unknown == []
    assert index.encode("a red ★ é").unknown == ["★", "é"]


def test_readers_refuse_the_wrong_kind_of_file(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"type": "char", "alphabet": "ab"}))
    with pytest.raises(ValueError, match="word vocabulary"):
        WordIndex.from_file(tmp_path / "v.json")
    with pytest.raises(ValueError, match="character alphabet"):
        (tmp_path / "w.json").write_text(json.dumps({"type": "word", "tokens": []}))
        CharIndex.from_file(tmp_path / "w.json")


def test_pad_ids():
    np.testing.assert_array_equal(pad_ids([[5, 6, 7], [8]]), [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(pad_ids([[5, 6, 7]], length=2), [[5, 6]])
    assert pad_ids([[]]).shape == (1, 1)
