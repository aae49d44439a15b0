"""The per-caption CIDEr-D reward against pycocoevalcap's CIDEr-D."""

import sys
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from training.data.language import generate_captions
from training.data.tokenizer import tokenize
from training.metrics.cider import CiderD

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from test_language import random_scene  # noqa: E402


def corpus(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [generate_captions(random_scene(rng), rng, n=5) for _ in range(n)]


def test_equals_pycocoevalcap_given_the_same_references():
    refs = corpus(40, seed=0)
    rng = np.random.default_rng(1)
    # candidates: a reference of the image, one of another image, and truncated ones
    candidates = [refs[i][0] if i % 3 == 0 else refs[(i + 7) % 40][1] if i % 3 == 1
                  else " ".join(refs[i][2].split()[:int(rng.integers(1, 6))])
                  for i in range(40)]
    gts = {i: [" ".join(tokenize(r)) for r in refs[i]] for i in range(40)}
    res = {i: [" ".join(tokenize(c))] for i, c in enumerate(candidates)}
    mean, per_image = Cider().compute_score(gts, res)
    scorer = CiderD(refs)
    ours = [scorer.score(c, refs[i]) for i, c in enumerate(candidates)]
    np.testing.assert_allclose(ours, per_image, rtol=1e-9, atol=1e-12)
    assert np.mean(ours) == pytest.approx(mean)


def test_references_can_be_given_as_precomputed_vectors():
    refs = corpus(10, seed=2)
    scorer = CiderD(refs)
    vectors = [scorer.vector(r) for r in refs[3]]
    assert scorer.score(refs[3][1], vectors) == scorer.score(refs[3][1], refs[3])
    assert scorer.score(refs[3][1], refs[3]) > scorer.score(refs[4][1], refs[3])


def test_refuses_empty_corpora_and_reference_sets():
    with pytest.raises(ValueError, match="corpus"):
        CiderD([])
    with pytest.raises(ValueError, match="reference"):
        CiderD([["a red circle"]]).score("a red circle", [])
