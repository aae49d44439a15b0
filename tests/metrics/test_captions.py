import math
import shutil

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from training.metrics import captions
from training.metrics.captions import caption_metrics, meteor_status

REFERENCES = {
    1: ["A red circle to the left of a blue square.", "a big red circle and a blue square"],
    2: ["Two green stars.", "there are two green stars"],
    3: ["a small white hexagon above a cyan cross", "a white hexagon over a cross"],
}
RESULTS = {1: "a red circle left of a square", 2: "two green stars", 3: "a white cross"}


def test_identical_caption_scores_one():
    scores = caption_metrics({1: "a red circle above a star"},
                             {1: ["A red circle above a star.", "a big circle"]}, meteor=False)
    for n in range(1, 5):
        assert scores[f"bleu_{n}"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert scores["n_images"] == 1


def test_bleu_by_hand():
    # "a red circle" vs "a red square": unigram precision 2/3, bigram 1/2, same
    # length (no brevity penalty): BLEU-1 = 2/3, BLEU-2 = sqrt(2/3 * 1/2).
    scores = caption_metrics({7: "a red circle"}, {7: ["a red square"]}, meteor=False)
    assert scores["bleu_1"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["bleu_2"] == pytest.approx(math.sqrt(1 / 3), abs=1e-6)
    assert scores["bleu_3"] < 1e-4  # no matching trigram
    # "a red" vs "a red circle": all unigrams match, brevity penalty exp(1 - 3/2).
    short = caption_metrics({7: "a red"}, {7: ["a red circle"]}, meteor=False)
    assert short["bleu_1"] == pytest.approx(math.exp(-0.5), abs=1e-6)


def test_same_as_direct_pycocoevalcap_on_tokenised_text():
    gts = {
        1: ["a red circle to the left of a blue square", "a big red circle and a blue square"],
        2: ["two green stars", "there are two green stars"],
        3: ["a small white hexagon above a cyan cross", "a white hexagon over a cross"],
    }
    res = {1: ["a red circle left of a square"], 2: ["two green stars"], 3: ["a white cross"]}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = caption_metrics(RESULTS, REFERENCES, meteor=False)
    assert [scores[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(bleu, abs=1e-12)
    assert scores["rouge_l"] == pytest.approx(rouge, abs=1e-12)
    assert scores["cider_d"] == pytest.approx(cider, abs=1e-12)
    assert 0 < scores["cider_d"] < 10


def test_case_and_punctuation_do_not_change_scores():
    shouted = {k: v.upper() + "!" for k, v in RESULTS.items()}
    assert (caption_metrics(shouted, REFERENCES, meteor=False)
            == caption_metrics(RESULTS, REFERENCES, meteor=False))


def test_cider_d_behaviour():
    # IDF is log(#images / document frequency) over the evaluated references:
    # with one image every n-gram has IDF log(1/1) = 0, so CIDEr-D is 0.
    assert caption_metrics({1: "a red circle"}, {1: ["a red circle"]},
                           meteor=False)["cider_d"] == 0.0
    # Two images with disjoint words, each candidate equal to its reference:
    # cosine 1 for n = 1..4, no length penalty, times 10.
    refs = {1: ["a big red circle"], 2: ["two small blue squares"]}
    perfect = caption_metrics({1: "a big red circle", 2: "two small blue squares"}, refs,
                              meteor=False)
    assert perfect["cider_d"] == pytest.approx(10.0)
    # A three-word caption has no 4-gram: that term is 0 and the mean over
    # n = 1..4 drops to 3/4 even for an exact match.
    assert caption_metrics({1: "a red circle", 2: "two blue squares"},
                           {1: ["a red circle"], 2: ["two blue squares"]},
                           meteor=False)["cider_d"] == pytest.approx(7.5)
    # CIDEr-D clips candidate counts at the reference's: repeating a word
    # cannot raise the score above the plain caption's.
    repeated = caption_metrics({1: "a big red red red circle", 2: "two small blue squares"},
                               refs, meteor=False)
    assert repeated["cider_d"] < perfect["cider_d"]


def test_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="no captions"):
        caption_metrics({}, {}, meteor=False)
    with pytest.raises(ValueError, match=r"1 image\(s\) without references \(e.g. \[9\]\)"):
        caption_metrics({1: "a", 9: "b"}, {1: ["a"]}, meteor=False)
    with pytest.raises(ValueError, match="image 1 has no reference captions"):
        caption_metrics({1: "a"}, {1: []}, meteor=False)


def test_meteor_disabled_or_unavailable(monkeypatch):
    off = caption_metrics(RESULTS, REFERENCES, meteor=False)
    assert off["meteor"] is None and off["meteor_note"] == "METEOR skipped: disabled"
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    assert meteor_status() == (False, "METEOR skipped: no 'java' on PATH "
                                      "(METEOR 1.5 is a Java program)")
    auto = caption_metrics(RESULTS, REFERENCES)
    assert auto["meteor"] is None and "no 'java' on PATH" in auto["meteor_note"]
    assert auto["bleu_4"] == off["bleu_4"]
    with pytest.raises(RuntimeError, match="no 'java'"):
        caption_metrics(RESULTS, REFERENCES, meteor=True)


def test_meteor_runs_with_java():
    # Java is a requirement of the test suite (README, "Set-up"; CI and docker/Dockerfile
    # install it): without it this fails, saying so, rather than skipping METEOR unseen.
    assert shutil.which("java") is not None, (
        "METEOR needs Java: install a JRE (e.g. apt-get install default-jre-headless, as "
        "docker/Dockerfile does)")
    assert meteor_status() == (True, None)
    scores = caption_metrics({1: "a red circle", 2: "two green stars"},
                             {1: ["a red circle", "a big circle"], 2: ["a blue square"]})
    assert "meteor_note" not in scores
    # Corpus METEOR pools the match statistics: image 1 matches a reference
    # exactly (3 of 3 words, one chunk), image 2 matches none of its 3 words.
    assert scores["meteor"] == pytest.approx(0.5, abs=1e-6)
