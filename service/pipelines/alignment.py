"""Region-word alignment (Karpathy & Fei-Fei 2015): scores, the MRF and its exact solution.

An alignment bundle holds two graphs:

    image.onnx  image [batch, 3, S, S] in [0, 1] -> boxes [batch, R, 4] (normalised xyxy),
                region_scores [batch, R], region_vectors [batch, R, D]   (v_i, Eq. 1)
    text.onnx   tokens [batch, T] int64, lengths [batch] int64
                -> word_vectors [batch, T, D]                             (s_t, Eq. 2-6)

T is fixed at export (`inference.max_words`); sentences are right-padded to it.
Regions scoring below `inference.min_region_score` are left out, as in training.

Every word t and region i have the affinity v_i^T s_t; the image-sentence score
is S_kl = sum_t max_i v_i^T s_t (Eq. 8). To align contiguous snippets of the
sentence to regions, Sec. 3.2 of the paper puts a chain MRF over the latent
assignments a_t in {1..R}:

    E(a) = sum_t psi_U(a_t) + sum_t psi_B(a_t, a_{t+1})
    psi_U(a_t = i) = v_i^T s_t,   psi_B(a_t, a_{t+1}) = beta * 1[a_t = a_{t+1}]

whose best assignment `best_alignment` finds exactly by dynamic programming
(Viterbi) in O(T R). beta = 0 aligns every word on its own; a large beta
aligns the whole sentence to one region. Segments are the maximal runs of
equal a_t.

`AlignmentModel` is what the service batches behind /v1/alignments and what
evaluation uses offline, so both give the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from service.bundle import AlignmentInference, Bundle
from service.errors import InvalidParameter
from service.images import offline_rgb, stack
from service.pipelines.base import GraphContract, ImagePipeline
from service.runtime import OnnxGraph
from service.text import EncodedText, WordIndex, pad_ids

IMAGE_GRAPH = "image"
TEXT_GRAPH = "text"
IMAGE_OUTPUTS = ("boxes", "region_scores", "region_vectors")
TEXT_INPUTS = ("tokens", "lengths")
TEXT_OUTPUTS = ("word_vectors",)


# ---------------------------------------------------------------------------- the MRF


def alignment_energy(unary: np.ndarray, assignment: Sequence[int], beta: float) -> float:
    """E(a) of one assignment: unary [T, R] affinities plus beta for each repeated region."""
    a = np.asarray(assignment)
    energy = float(unary[np.arange(len(a)), a].sum())
    return energy + beta * float((a[1:] == a[:-1]).sum())


def best_alignment(unary: np.ndarray, beta: float) -> tuple[np.ndarray, float]:
    """The assignment a [T] (region per word) maximising E(a), and E(a).

    Viterbi over the chain: best[t, i] is the highest energy of a_1..a_t with
    a_t = i, best[t, i] = psi_U(t, i) + max(best[t-1, i] + beta, max_j best[t-1, j]).
    Ties keep the previous region, then take the lowest index.
    """
    T, R = unary.shape
    if T == 0 or R == 0:
        raise ValueError(f"alignment needs at least one word and one region, got {unary.shape}")
    best = unary[0].astype(np.float64)
    back = np.zeros((T, R), dtype=np.int64)
    regions = np.arange(R)
    for t in range(1, T):
        switch_from = int(best.argmax())
        stay = best + beta
        keep = stay >= best[switch_from]
        back[t] = np.where(keep, regions, switch_from)
        best = np.where(keep, stay, best[switch_from]) + unary[t]
    assignment = np.empty(T, dtype=np.int64)
    assignment[-1] = int(best.argmax())
    for t in range(T - 1, 0, -1):
        assignment[t - 1] = back[t, assignment[t]]
    return assignment, float(best.max())


def runs(assignment: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal values as (start, end, value), end exclusive."""
    out: list[tuple[int, int, int]] = []
    start = 0
    for t in range(1, len(assignment) + 1):
        if t == len(assignment) or assignment[t] != assignment[start]:
            out.append((start, t, int(assignment[start])))
            start = t
    return out


def sentence_score(unary: np.ndarray) -> float:
    """S_kl = sum_t max_i v_i^T s_t (Eq. 8) from the [T, R] affinities."""
    return float(unary.max(axis=1).sum())


def score_matrix(region_vectors: np.ndarray, region_mask: np.ndarray, word_vectors: np.ndarray,
                 lengths: np.ndarray, *, images_per_chunk: int = 64) -> np.ndarray:
    """S_kl (Eq. 8) of every image k against every sentence l: [K, L] float32.

    region_vectors [K, R, D] with region_mask [K, R]; word_vectors [L, T, D] with
    lengths [L]. Images are taken in chunks to bound the [L*T, chunk*R] product.
    """
    K, R, D = region_vectors.shape
    L, T, _ = word_vectors.shape
    words = word_vectors.reshape(L * T, D)
    word_ok = np.arange(T)[None, :] < np.asarray(lengths)[:, None]  # [L, T]
    out = np.empty((K, L), dtype=np.float32)
    for start in range(0, K, images_per_chunk):
        regions = region_vectors[start:start + images_per_chunk]  # [k, R, D]
        k = len(regions)
        dots = (words @ regions.reshape(k * R, D).T).reshape(L, T, k, R)
        dots = np.where(region_mask[start:start + k][None, None], dots, -np.inf)
        best = np.where(word_ok[..., None], dots.max(axis=-1), 0.0)  # [L, T, k]
        out[start:start + k] = best.sum(axis=1).T
    return out


# ---------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class AlignmentRequest:
    image: np.ndarray  # float32 [3, S, S], see service.images.to_array
    image_size: tuple[int, int]  # (width, height) of the image as sent, for pixel boxes
    text: EncodedText  # the sentence's words and ids
    beta: float


@dataclass
class Segment:
    text: str
    start: int  # first word index
    end: int  # one past the last word index
    region: int
    box: list[float]  # [x0, y0, x1, y1] in pixels of the image as sent
    score: float  # sum over the segment's words of v_i^T s_t for its region i


@dataclass
class AlignmentResult:
    score: float  # S_kl (Eq. 8)
    words: list[str]
    segments: list[Segment]
    assignment: list[int]  # region index of each word


class AlignmentModel(ImagePipeline[AlignmentRequest, AlignmentResult], task="alignment"):
    """An image graph and a text graph, scored and aligned in NumPy."""

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        super().__init__(bundle, graphs)
        self.image_graph = graphs[IMAGE_GRAPH]
        self.text_graph = graphs[TEXT_GRAPH]
        self.words = self.read_file(self.tokenizer_file("word"), WordIndex.from_file)
        inference = bundle.manifest.inference_as(AlignmentInference)
        self.max_words = inference.max_words
        self.default_beta = inference.beta
        self.min_region_score = inference.min_region_score

    def contract(self) -> dict[str, GraphContract]:
        return {IMAGE_GRAPH: GraphContract(inputs=frozenset({"image"}),
                                           outputs=frozenset(IMAGE_OUTPUTS)),
                TEXT_GRAPH: GraphContract(inputs=frozenset(TEXT_INPUTS),
                                          outputs=frozenset(TEXT_OUTPUTS))}

    # ------------------------------------------------------------------ requests

    def encode_sentence(self, sentence: str) -> EncodedText:
        """The sentence's words and ids; InvalidParameter names unknown words or bad lengths."""
        encoded = self.words.encode(sentence)
        if not encoded.words:
            raise InvalidParameter("sentence: has no words")
        if len(encoded.words) > self.max_words:
            raise InvalidParameter(f"sentence: {len(encoded.words)} words, at most "
                                   f"{self.max_words} can be aligned")
        if encoded.unknown:
            raise InvalidParameter(f"sentence: words outside the vocabulary of "
                                   f"{self.bundle.key}: {', '.join(encoded.unknown)}")
        return encoded

    def beta(self, beta: float | None) -> float:
        value = self.default_beta if beta is None else float(beta)
        if not (np.isfinite(value) and value >= 0):
            raise InvalidParameter(f"beta must be a finite number >= 0, got {beta}")
        return value

    def request(self, image: bytes | str | Path | Image.Image, sentence: str,
                beta: float | None = None) -> AlignmentRequest:
        """An offline request from an image (bytes, path or PIL image) and a sentence."""
        image = offline_rgb(image)
        return AlignmentRequest(self.preprocess(image), image.size,
                                self.encode_sentence(sentence), self.beta(beta))

    def align(self, image: bytes | str | Path | Image.Image, sentence: str,
              beta: float | None = None) -> AlignmentResult:
        """Align one sentence to one image offline; equals the service's answer."""
        return self.run_batch([self.request(image, sentence, beta)])[0]

    # ------------------------------------------------------------------ inference

    def encode_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """boxes, region_scores, region_vectors and region_mask of [n, 3, S, S] images."""
        out = self.image_graph.run({"image": images}, IMAGE_OUTPUTS)
        out["region_mask"] = out["region_scores"] >= self.min_region_score
        return out

    def encode_texts(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """word_vectors [n, T, D] and lengths [n] of tokenised sentences (each <= T words)."""
        tokens = pad_ids(ids, length=self.max_words)
        lengths = np.array([len(r) for r in ids], dtype=np.int64)
        out = self.text_graph.run({"tokens": tokens, "lengths": lengths}, TEXT_OUTPUTS)
        return out["word_vectors"], lengths

    def run_batch(self, requests: Sequence[AlignmentRequest]) -> list[AlignmentResult]:
        """Encode all images at once and all sentences at once, then align each pair."""
        if not requests:
            return []
        regions = self.encode_images(stack([r.image for r in requests]))
        words, lengths = self.encode_texts([r.text.ids for r in requests])
        return [self._align(r, regions["boxes"][k], regions["region_vectors"][k],
                            regions["region_mask"][k], words[k, :lengths[k]])
                for k, r in enumerate(requests)]

    def _align(self, request: AlignmentRequest, boxes: np.ndarray, region_vectors: np.ndarray,
               region_mask: np.ndarray, word_vectors: np.ndarray) -> AlignmentResult:
        kept = np.flatnonzero(region_mask)
        if kept.size == 0:  # a threshold above every score leaves no region: use them all
            kept = np.arange(len(region_mask))
        unary = word_vectors @ region_vectors[kept].T  # [T, R'] psi_U
        assignment, _ = best_alignment(unary, request.beta)
        width, height = request.image_size
        scale = np.array([width, height, width, height], dtype=np.float64)
        words = request.text.words
        segments = [
            Segment(text=" ".join(words[start:end]), start=start, end=end,
                    region=int(kept[i]),
                    box=[round(float(v), 2) for v in boxes[kept[i]] * scale],
                    score=float(unary[start:end, i].sum()))
            for start, end, i in runs(assignment)
        ]
        return AlignmentResult(score=sentence_score(unary), words=list(words),
                               segments=segments, assignment=[int(kept[i]) for i in assignment])

    def warm_up_batches(self, size: int) -> list[list[AlignmentRequest]]:
        word = EncodedText(ids=[len(self.words) - 1], words=["word"], unknown=[])
        request = AlignmentRequest(self.blank_image(), (self.image_size, self.image_size), word,
                                   self.default_beta)
        return [[request] * size]
