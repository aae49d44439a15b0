"""CIDEr-D of single captions against a fixed corpus, as a training reward.

The evaluation metric (`training.metrics.captions`, pycocoevalcap's CIDEr-D) takes its
document frequencies from the references of the captions being scored. A reward for
self-critical training scores a few hundred sampled captions per step, so it takes them
once from the training references instead (as Rennie et al. 2017 do), and scores each
caption alone. The formula is pycocoevalcap's (Vedantam et al. 2015, Sec. 5): tf-idf
vectors of 1- to 4-grams, candidate counts clipped by the reference's, a Gaussian
penalty on the length difference (sigma 6), averaged over references and n, times 10.
Given the same references for the frequencies, it equals pycocoevalcap's per-image score.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from training.data.tokenizer import tokenize

MAX_N = 4
SIGMA = 6.0

Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]  # tf-idf, norms, length


def ngrams(words: Sequence[str], max_n: int = MAX_N) -> Counter:
    """Counts of every 1- to max_n-gram of the words."""
    return Counter(tuple(words[i:i + n]) for n in range(1, max_n + 1)
                   for i in range(len(words) - n + 1))


class CiderD:
    """CIDEr-D with document frequencies from a corpus of reference sets (one per image)."""

    def __init__(self, corpus: Iterable[Sequence[str]]) -> None:
        self.document_frequency: Counter = Counter()
        images = 0
        for references in corpus:
            images += 1
            self.document_frequency.update(
                {g for r in references for g in ngrams(tokenize(r))})
        if not images:
            raise ValueError("CIDEr-D needs a corpus of at least one image's references")
        self.log_images = math.log(float(images))

    def vector(self, caption: str) -> Vector:
        counts = ngrams(tokenize(caption))
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(MAX_N)]
        norm = [0.0] * MAX_N
        length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            df = math.log(max(1.0, self.document_frequency[gram]))
            vec[n][gram] = float(tf) * (self.log_images - df)
            norm[n] += vec[n][gram] ** 2
            if n == 1:
                length += tf  # pycocoevalcap's length: the number of bigrams
        return vec, [math.sqrt(x) for x in norm], length

    @staticmethod
    def similarity(hyp: Vector, ref: Vector) -> float:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        penalty = math.exp(-((lh - lr) ** 2) / (2 * SIGMA ** 2))
        total = 0.0
        for n in range(MAX_N):
            value = sum(min(w, vr[n][g]) * vr[n][g] for g, w in vh[n].items() if g in vr[n])
            if nh[n] != 0 and nr[n] != 0:
                value /= nh[n] * nr[n]
            total += value * penalty
        return total

    def score(self, caption: str, references: Sequence[str] | Sequence[Vector]) -> float:
        """CIDEr-D of one caption against its image's references (strings, or their
        `vector`s computed once)."""
        if not references:
            raise ValueError("CIDEr-D needs at least one reference caption")
        hyp = self.vector(caption)
        refs = [r if isinstance(r, tuple) else self.vector(r) for r in references]
        return 10.0 * sum(self.similarity(hyp, r) for r in refs) / len(refs) / MAX_N
