"""The caption pipeline: preprocess -> encoder graph -> batched decoding -> text.

`CaptionModel` is what the service batches behind /v1/captions and what evaluation
and tests use offline (`CaptionModel.from_bundle(path).caption(image)`), so both give
the same answer. A batch mixes requests with different decoding methods, beam sizes,
lengths and caption counts: beam-search requests are decoded together by
`service.decoding.beam_search`, sampled ones together by `service.decoding.sample`,
and each request gets its solo answer. A sampled request draws from its own seed, so
the same image and seed give the same captions whatever else is in the batch.

Graph contract (names recorded in the manifest's `decoding` section): the encoder
maps `image` to every name in `decoding.state` and `decoding.context`; the step
graph takes `tokens`, `parents`, the state names and the context names and returns
`log_probs`, `token_ids`, `<state>_out` for each state name and, for attention
models, the weights named by `decoding.attention.output` (alpha of Eq. 5 of Xu et
al. 2015, one row per word).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from service.bundle import Bundle, Decoding
from service.decoding import MAX_BEAM_SIZE, Hypothesis, StepFn, StepOutput, beam_search, sample
from service.errors import InvalidParameter
from service.images import stack
from service.pipelines.base import (
    GraphContract,
    ImageInput,
    ImagePipeline,
    request_seed,
)
from service.runtime import OnnxGraph
from service.text import WordIndex

MAX_LENGTH = 100
MAX_CAPTIONS = MAX_BEAM_SIZE  # sampled captions per request, as many as a beam returns
MAX_TEMPERATURE = 10.0  # far past the point where the draws are near uniform
ATTENTION = "alpha"  # name of the attention weights among a hypothesis' extras
SPECIAL_IDS = range(4)  # <pad>, <bos>, <eos>, <unk> of training/data/tokenizer.py
DecodingMethod = Literal["beam", "sample"]


class Vocabulary(WordIndex):
    """Ids <-> words of a bundle's vocab.json (the WordVocab JSON of training)."""

    def kept(self, ids: Sequence[int]) -> list[int]:
        """Positions of the ids that are words (not <pad>, <bos>, <eos> or <unk>)."""
        for i in ids:
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} outside the vocabulary of {len(self.tokens)}")
        return [pos for pos, i in enumerate(ids) if i not in SPECIAL_IDS]


@dataclass(frozen=True)
class SearchParams:
    """Beam-search parameters of one request, defaults filled in and validated."""

    beam_size: int
    max_length: int
    length_penalty: float
    num_captions: int = 1
    return_attention: bool = False


@dataclass(frozen=True)
class SampleParams:
    """Sampling parameters of one request, defaults filled in and validated."""

    max_length: int
    seed: int
    temperature: float = 1.0
    top_k: int = 0  # 0: every candidate the step graph returns
    top_p: float = 1.0
    num_captions: int = 1
    return_attention: bool = False


@dataclass(frozen=True)
class CaptionRequest:
    image: np.ndarray  # float32 [3, S, S], see service.images.to_array
    params: SearchParams | SampleParams


@dataclass
class Caption:
    text: str
    log_prob: float  # sum of token log-probabilities, eos included when finished
    score: float  # the ranking key: log_prob / GNMT length penalty (sampled: log_prob)
    tokens: list[int]
    words: list[str]
    attention: np.ndarray | None = None  # [len(words), grid_h, grid_w]


@dataclass
class CaptionResult:
    captions: list[Caption] = field(default_factory=list)


def refuse_unused(method: DecodingMethod, **given: object) -> None:
    """InvalidParameter naming a parameter of the other decoding method, rather than
    silently ignoring it."""
    for name, value in given.items():
        if value is not None:
            other = "sample" if method == "beam" else "beam"
            raise InvalidParameter(f"{name} applies to decoding '{other}' only; this request "
                                   f"decodes with '{method}'")



def checked_max_length(decoding: Decoding, max_length: int | None) -> int:
    """`max_length`, or the bundle's default; InvalidParameter outside 1..MAX_LENGTH."""
    length = decoding.max_length if max_length is None else max_length
    if not 1 <= length <= MAX_LENGTH:
        raise InvalidParameter(f"max_length must be between 1 and {MAX_LENGTH}, got {length}")
    return length


def beam_search_params(decoding: Decoding, *, beam_size: int | None = None,
                       max_length: int | None = None, length_penalty: float | None = None,
                       num_captions: int = 1) -> SearchParams:
    """Beam-search parameters with a bundle's defaults (its `decoding` section), for
    every decoder that runs the service's beam search; InvalidParameter names a bad one."""
    beam = decoding.beam_size if beam_size is None else beam_size
    max_beam = min(MAX_BEAM_SIZE, decoding.top_k)
    if not 1 <= beam <= max_beam:
        raise InvalidParameter(f"beam_size must be between 1 and {max_beam}, got {beam}")
    penalty = decoding.length_penalty if length_penalty is None else length_penalty
    if not (np.isfinite(penalty) and penalty >= 0):
        raise InvalidParameter(f"length_penalty must be >= 0, got {penalty}")
    if not 1 <= num_captions <= beam:
        raise InvalidParameter(f"num_captions must be between 1 and beam_size ({beam}), "
                               f"got {num_captions}")
    return SearchParams(beam_size=beam, max_length=checked_max_length(decoding, max_length),
                        length_penalty=float(penalty), num_captions=num_captions)

class CaptionModel(ImagePipeline[CaptionRequest, CaptionResult], task="caption"):
    """An encoder graph and a step graph, decoded with beam search or sampling.

    Between decoder steps the recurrent state stays where the session computes it (GPU
    memory under CUDA; on CPU the same code with CPU OrtValues): only the top-k ids and
    log-probabilities, and the attention weights when asked for, come to the host.
    `state_on_device = False` copies it through NumPy at every step instead.
    """

    state_on_device = True

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        decoding = bundle.manifest.decoding
        assert decoding is not None  # a caption manifest has one (Manifest validation)
        self.decoding: Decoding = decoding
        super().__init__(bundle, graphs)
        self.encoder = graphs["encoder"]
        self.decoder = graphs["decoder_step"]
        self.vocab = self.read_file(self.tokenizer_file("word"), Vocabulary.from_file)

    def contract(self) -> dict[str, GraphContract]:
        d = self.decoding
        return {
            "encoder": GraphContract(inputs=frozenset({"image"}),
                                     outputs=frozenset({*d.state, *d.context})),
            "decoder_step": GraphContract(
                inputs=frozenset({"tokens", "parents", *d.state, *d.context}),
                outputs=frozenset({"log_probs", "token_ids", *(f"{s}_out" for s in d.state)})),
        }

    @property
    def has_attention(self) -> bool:
        return self.decoding.attention is not None

    def defaults(self) -> dict[str, Any]:
        d = self.decoding
        return {"beam_size": d.beam_size, "max_length": d.max_length,
                "length_penalty": d.length_penalty, "attention": d.attention is not None}

    # ------------------------------------------------------------------ requests

    def params(self, *, decoding: DecodingMethod = "beam", max_length: int | None = None,
               num_captions: int = 1, return_attention: bool = False,
               beam_size: int | None = None, length_penalty: float | None = None,
               temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None
               ) -> SearchParams | SampleParams:
        """Decoding parameters with the bundle's defaults; InvalidParameter names a bad one.

        Beam search ("beam") reads beam_size and length_penalty; sampling ("sample")
        reads temperature, top_k, top_p and seed (omitted: a random seed, recorded in the
        result's parameters). A parameter of the other method is refused.
        """
        if decoding == "beam":
            refuse_unused("beam", temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
            return self.search_params(beam_size=beam_size, max_length=max_length,
                                      length_penalty=length_penalty, num_captions=num_captions,
                                      return_attention=return_attention)
        if decoding == "sample":
            refuse_unused("sample", beam_size=beam_size, length_penalty=length_penalty)
            return self.sample_params(max_length=max_length, temperature=temperature,
                                      top_k=top_k, top_p=top_p, seed=seed,
                                      num_captions=num_captions,
                                      return_attention=return_attention)
        raise InvalidParameter(f"decoding must be 'beam' or 'sample', got {decoding!r}")

    def search_params(self, *, beam_size: int | None = None, max_length: int | None = None,
                      length_penalty: float | None = None, num_captions: int = 1,
                      return_attention: bool = False) -> SearchParams:
        """Beam-search parameters with the bundle's defaults."""
        params = beam_search_params(self.decoding, beam_size=beam_size, max_length=max_length,
                                    length_penalty=length_penalty, num_captions=num_captions)
        return replace(params, return_attention=self._attention(return_attention))

    def sample_params(self, *, max_length: int | None = None, temperature: float | None = None,
                      top_k: int | None = None, top_p: float | None = None,
                      seed: int | None = None, num_captions: int = 1,
                      return_attention: bool = False) -> SampleParams:
        """Sampling parameters: temperature 1, every candidate (top_k 0, top_p 1) unless
        given; without a seed one is drawn at random."""
        t = 1.0 if temperature is None else temperature
        if not (np.isfinite(t) and 0 < t <= MAX_TEMPERATURE):
            raise InvalidParameter(f"temperature must be > 0 and <= {MAX_TEMPERATURE:g}, "
                                   f"got {t}")
        k = 0 if top_k is None else top_k
        graph_k = self.decoding.top_k
        if not 0 <= k <= graph_k:
            raise InvalidParameter(f"top_k must be between 0 and {graph_k} (the candidates "
                                   f"the step graph returns; 0 keeps them all), got {k}")
        p = 1.0 if top_p is None else top_p
        if not (np.isfinite(p) and 0 < p <= 1):
            raise InvalidParameter(f"top_p must be > 0 and <= 1, got {p}")
        if not 1 <= num_captions <= MAX_CAPTIONS:
            raise InvalidParameter(f"num_captions must be between 1 and {MAX_CAPTIONS}, "
                                   f"got {num_captions}")
        return SampleParams(max_length=self._max_length(max_length), seed=request_seed(seed),
                            temperature=float(t), top_k=k, top_p=float(p),
                            num_captions=num_captions,
                            return_attention=self._attention(return_attention))

    def _max_length(self, max_length: int | None) -> int:
        return checked_max_length(self.decoding, max_length)

    def _attention(self, return_attention: bool) -> bool:
        if return_attention and not self.has_attention:
            raise InvalidParameter(f"return_attention: model {self.bundle.key} "
                                   f"({self.bundle.manifest.architecture}) has no attention")
        return return_attention

    def caption(self, image: ImageInput, **params: Any) -> CaptionResult:
        """Caption one image offline: bytes, a file path, a PIL image or a [3, S, S] array.

        `params` are those of `params()`; the answer equals the service's for that image.
        """
        request = CaptionRequest(self.as_array(image), self.params(**params))
        return self.caption_batch([request])[0]

    # ------------------------------------------------------------------ inference

    def caption_batch(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        """Encode all images at once, then decode the beam-search requests as one batch and
        the sampled ones as another."""
        if not requests:
            return []
        encoded = self.encoder.run({"image": stack([r.image for r in requests])})
        step = self._step_fn(any(r.params.return_attention for r in requests))
        searched = {i: r.params for i, r in enumerate(requests)
                    if isinstance(r.params, SearchParams)}
        sampled = {i: r.params for i, r in enumerate(requests)
                   if isinstance(r.params, SampleParams)}
        found: dict[int, list[Hypothesis]] = {}
        if searched:
            rows = _rows(encoded, list(searched), len(requests))
            found.update(zip(searched, self._beam_search(step, rows, list(searched.values())),
                             strict=True))
        if sampled:
            rows = _rows(encoded, list(sampled), len(requests))
            found.update(zip(sampled, self._sample(step, rows, list(sampled.values())),
                             strict=True))
        return [CaptionResult([self._caption(h, r.params.return_attention) for h in found[i]])
                for i, r in enumerate(requests)]

    def run_batch(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        return self.caption_batch(requests)

    def _beam_search(self, step: StepFn, encoded: Mapping[str, np.ndarray],
                     params: Sequence[SearchParams]) -> list[list[Hypothesis]]:
        d = self.decoding
        return beam_search(
            step, {name: encoded[name] for name in d.state},
            {name: encoded[name] for name in d.context},
            bos_id=d.bos_id, eos_id=d.eos_id, top_k=d.top_k,
            beam_size=np.array([p.beam_size for p in params]),
            max_length=np.array([p.max_length for p in params]),
            length_penalty=np.array([p.length_penalty for p in params]),
            num_return=np.array([p.num_captions for p in params]),
        )

    def _sample(self, step: StepFn, encoded: Mapping[str, np.ndarray],
                params: Sequence[SampleParams]) -> list[list[Hypothesis]]:
        d = self.decoding
        return sample(
            step, {name: encoded[name] for name in d.state},
            {name: encoded[name] for name in d.context},
            bos_id=d.bos_id, eos_id=d.eos_id, graph_top_k=d.top_k,
            max_length=np.array([p.max_length for p in params]),
            temperature=np.array([p.temperature for p in params]),
            top_k=np.array([p.top_k for p in params]),
            top_p=np.array([p.top_p for p in params]),
            num_samples=np.array([p.num_captions for p in params]),
            seed=[p.seed for p in params],  # one generator per request: batch-independent
        )

    def _step_fn(self, with_attention: bool) -> StepFn:
        d = self.decoding
        attention = d.attention.output if (with_attention and d.attention) else None
        outputs = ["log_probs", "token_ids", *(f"{s}_out" for s in d.state)]
        if attention:
            outputs.append(attention)

        kept = {f"{s}_out" for s in d.state} if self.state_on_device else set()

        def step(tokens: np.ndarray, parents: np.ndarray, state: Mapping[str, np.ndarray],
                 context: Mapping[str, np.ndarray]) -> StepOutput:
            feeds = {"tokens": tokens, "parents": parents, **state, **context}
            if self.state_on_device:
                out = self.decoder.run_bound(feeds, outputs, keep=kept)
            else:
                out = self.decoder.run(feeds, outputs)
            return StepOutput(log_probs=out["log_probs"], token_ids=out["token_ids"],
                              state={s: out[f"{s}_out"] for s in d.state},
                              extras={ATTENTION: out[attention]} if attention else {})

        return step

    def _caption(self, hyp: Hypothesis, with_attention: bool) -> Caption:
        kept = self.vocab.kept(hyp.tokens)
        words = [self.vocab.tokens[hyp.tokens[pos]] for pos in kept]
        attention = None
        if with_attention and self.decoding.attention is not None:
            grid = self.decoding.attention.grid
            # Row j of alpha was emitted with word j; the eos row (if any) is dropped.
            attention = hyp.extras[ATTENTION][kept].reshape(len(kept), *grid)
        return Caption(text=" ".join(words), log_prob=hyp.log_prob, score=hyp.score,
                       tokens=list(hyp.tokens), words=words, attention=attention)

    def warm_up_batches(self, size: int) -> list[list[CaptionRequest]]:
        params = self.search_params(max_length=min(2, self.decoding.max_length),
                                    return_attention=self.has_attention)
        return [[CaptionRequest(self.blank_image(), params)] * size]


def _rows(encoded: Mapping[str, np.ndarray], rows: list[int], n: int) -> Mapping[str, np.ndarray]:
    """The encoder outputs of the requests at `rows` (all of them: no copy)."""
    if len(rows) == n:
        return encoded
    return {name: value[rows] for name, value in encoded.items()}

