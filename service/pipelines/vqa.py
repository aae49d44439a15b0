"""The VQA pipeline: image + question -> vqa.onnx -> ranked answers (and attention).

`VqaModel` is what the service batches behind /v1/vqa and what evaluation uses
offline (`VqaModel.from_bundle(path).answer(image, "what color is the circle?")`),
so both give the same answer. A batch of (image, question) pairs is one graph run:
images are stacked, questions right-padded to the longest one and their lengths
passed along, so each answer equals the one its request would get alone.

Graph contract (the VQA exporter of training writes it): `vqa.onnx` takes image
[batch, 3, S, S] in the manifest's pixel range, question [batch, T] int64 word ids
and question_length [batch] int64, and returns answer_scores [batch, A] (sigmoid
scores, Anderson et al. 2018, §3.3), attention [batch, R] (the top-down weights
over the regions) and boxes [batch, R, 4] (normalised x0, y0, x1, y1).

Questions are split with the training tokeniser. A question with a word the model
never saw in training is refused (InvalidParameter naming the words): mapped to
<unk> it would still get a confident answer, to a question nobody asked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Bundle, VqaInference
from service.errors import InvalidParameter
from service.images import stack
from service.pipelines.base import GraphContract, ImageInput, ImagePipeline
from service.runtime import OnnxGraph
from service.text import WordIndex, pad_ids

GRAPH = "vqa"
INPUTS = ("image", "question", "question_length")
OUTPUTS = ("answer_scores", "attention", "boxes")
MAX_TOP_K = 20
DEFAULT_TOP_K = 3


@dataclass(frozen=True)
class VqaParams:
    top_k: int = DEFAULT_TOP_K
    return_attention: bool = False


@dataclass(frozen=True)
class VqaRequest:
    image: np.ndarray  # float32 [3, S, S], see service.images.to_array
    question: tuple[int, ...]  # word ids, 1..max_question_length of them
    params: VqaParams = VqaParams()


@dataclass(frozen=True)
class Answer:
    answer: str
    score: float  # sigmoid score in [0, 1]; several answers may score high


@dataclass(frozen=True)
class RegionWeight:
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1
    weight: float

    def box_in_pixels(self, width: int, height: int) -> list[float]:
        """The box in pixels of an image of width x height."""
        x0, y0, x1, y1 = self.box
        return [x0 * width, y0 * height, x1 * width, y1 * height]


@dataclass(frozen=True)
class VqaResult:
    answers: list[Answer]
    attention: list[RegionWeight] | None = None


def read_answers(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    answers = data.get("answers") if isinstance(data, dict) else None
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str)
                                                               for a in answers):
        raise ValueError(f"{path.name}: expected {{'answers': [non-empty list of strings]}}")
    return answers


class VqaModel(ImagePipeline[VqaRequest, VqaResult], task="vqa"):
    """One vqa.onnx graph with its question vocabulary and answer list."""

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        super().__init__(bundle, graphs)
        self.graph = graphs[GRAPH]
        inference = bundle.manifest.inference_as(VqaInference)
        self.words = self.read_file(self.tokenizer_file("word"), WordIndex.from_file)
        self.answers: list[str] = self.read_file(inference.answers, read_answers)
        self.max_question_length = inference.max_question_length

    def contract(self) -> dict[str, GraphContract]:
        return {GRAPH: GraphContract(inputs=frozenset(INPUTS), outputs=frozenset(OUTPUTS))}

    # ------------------------------------------------------------------ requests

    def encode_question(self, text: str) -> tuple[int, ...]:
        """Word ids of a question; InvalidParameter if empty, too long or with unknown words."""
        encoded = self.words.encode(text)
        if not encoded.ids:
            raise InvalidParameter("question: has no words")
        if encoded.unknown:
            raise InvalidParameter(f"question: {', '.join(map(repr, encoded.unknown))} "
                                   f"{'is' if len(encoded.unknown) == 1 else 'are'} not in the "
                                   f"vocabulary of model {self.bundle.key}")
        if len(encoded.ids) > self.max_question_length:
            raise InvalidParameter(f"question: {len(encoded.ids)} words; model "
                                   f"{self.bundle.key} reads at most {self.max_question_length}")
        return tuple(encoded.ids)

    def params(self, *, top_k: int | None = None, return_attention: bool = False) -> VqaParams:
        """Answer parameters with defaults; InvalidParameter names a bad one."""
        k = DEFAULT_TOP_K if top_k is None else top_k
        limit = min(MAX_TOP_K, len(self.answers))
        if not 1 <= k <= limit:
            raise InvalidParameter(f"top_k must be between 1 and {limit}, got {k}")
        return VqaParams(top_k=k, return_attention=return_attention)

    def request(self, image: ImageInput, question: str, *, top_k: int | None = None,
                return_attention: bool = False) -> VqaRequest:
        return VqaRequest(self.as_array(image), self.encode_question(question),
                          self.params(top_k=top_k, return_attention=return_attention))

    def answer(self, image: ImageInput, question: str, **params: Any) -> VqaResult:
        """Answer one question about one image offline (the service's answer for it)."""
        return self.run_batch([self.request(image, question, **params)])[0]

    # ------------------------------------------------------------------ inference

    def run_batch(self, requests: Sequence[VqaRequest]) -> list[VqaResult]:
        """Every (image, question) pair of the batch in one graph run."""
        if not requests:
            return []
        feeds = {
            "image": stack([r.image for r in requests]),
            "question": pad_ids([r.question for r in requests], pad_id=0),
            "question_length": np.array([len(r.question) for r in requests], dtype=np.int64),
        }
        out = self.graph.run(feeds, list(OUTPUTS))
        return [self._result(r.params, out["answer_scores"][i], out["attention"][i],
                             out["boxes"][i]) for i, r in enumerate(requests)]

    def _result(self, params: VqaParams, scores: np.ndarray, attention: np.ndarray,
                boxes: np.ndarray) -> VqaResult:
        # Stable sort on -score: equal scores keep the answer list's (frequency) order.
        best = np.argsort(-scores, kind="stable")[:params.top_k]
        answers = [Answer(self.answers[i], float(scores[i])) for i in best]
        regions = None
        if params.return_attention:
            regions = [RegionWeight(tuple(float(x) for x in box), float(w))
                       for box, w in zip(boxes, attention, strict=True)]
        return VqaResult(answers, regions)

    def warm_up_batches(self, size: int) -> list[list[VqaRequest]]:
        word = min(len(self.words) - 1, WordIndex.UNK_ID + 1)
        request = VqaRequest(self.blank_image(), (word,) * min(2, self.max_question_length),
                             VqaParams(top_k=1, return_attention=True))
        return [[request] * size]
