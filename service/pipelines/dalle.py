"""The DALL-E pipeline: prompt -> words -> transformer with a KV cache -> dVAE decoder ->
reranker -> PNGs.

`DalleModel` serves /v1/images/generations for bundles of architecture "dalle" and is
what evaluation uses offline (`DalleModel.from_bundle(path).generate(prompts, n, seed)`).
A request draws n images; with `candidates` c > 1 each image is the best of c samples
by the bundle's reranker, a text-image joint embedding (Ramesh et al. 2021, Sec. 2.5:
"we rerank the samples ... using a pretrained contrastive model"). Each sample is one
*row*: the transformer samples its G*G image codes one at a time, and the dVAE decoder
turns them into pixels.

Sampling is reproducible per row: the codes of candidate j of image i are drawn by
inverting the cumulative distribution (temperature, top-k, top-p; service.decoding's
`draw_tokens`) at uniforms from `numpy.random.default_rng([seed, i, j])`. So a request's
images depend on its prompt, seed and settings only, never on the other rows decoding
beside it; image i is the same for any n, and its candidates for c include those for
any smaller c (candidate 0 is the image drawn with c = 1).

Graph contract (bundle written by training/export/dalle.py):
    prefill       tokens [batch, L] int64 (<bos>, word ids, 0 pads)
                  -> logits [batch, K], present [batch, 2 * layers, heads, T, hs]
    decoder_step  token [batch] int64 (an image code), position [batch] int64 (its position
                  in the sequence, L <= p < T - 1), past -> logits [batch, K] (of the code
                  at p + 1), kv [batch, 2 * layers, heads, hs] (the token's keys/values,
                  which `DalleModel.step` writes into `past` at p, in place)
                  or, in bundles exported before `kv`, present (a copy of past with the
                  token's keys/values at p, which replaces it)
    dvae_decoder  codes [batch, G, G] int64 -> image [batch, 3, S, S] in [0, 1]
    reranker (optional, named by `inference.reranker`): an image graph (image ->
    embedding [batch, E]) and a text graph (tokens [batch, T'], lengths [batch] ->
    embedding), unit-length embeddings as retrieval bundles have.

Batching is step-level (service/step_batching.py): the service's decode batch holds
rows of many requests; rows join after a prefill (once per distinct prompt among the
joining rows) and leave when their last code is drawn, and a request is answered when
its last row has left. `max_batch_size` counts rows. `run_batch` decodes requests as one
static batch, the same computation, for warm-up and offline use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.batching import BatchObserver
from service.bundle import Bundle, BundleError, DalleInference, Manifest, RerankerSpec
from service.decoding import draw_tokens
from service.errors import InvalidParameter
from service.pipelines.base import GraphContract, request_seed
from service.pipelines.generation import (
    MAX_IMAGES_PER_REQUEST,
    MAX_IMAGES_PER_RUN,
    GenerationResult,
    SamplingOptions,
    TextToImage,
    check_png_size,
    encode_png,
    to_uint8,
)
from service.runtime import OnnxGraph
from service.settings import ResolvedModelSettings
from service.step_batching import Row, StepBatcher, StepScheduler
from service.text import WordIndex, pad_ids

PREFILL_GRAPH = "prefill"
STEP_GRAPH = "decoder_step"
DVAE_DECODER_GRAPH = "dvae_decoder"
MAX_CANDIDATES = 16
MAX_ROWS_PER_REQUEST = 64  # n * candidates: the samples one request may draw
MAX_TEMPERATURE = 10.0


@dataclass(frozen=True, eq=False)
class DalleRequest:
    """A validated request: the prompt's tokens, the images to draw and how."""

    prompt: str
    tokens: tuple[int, ...]  # <bos> and the prompt's word ids, unpadded
    n: int
    seed: int
    candidates: int
    temperature: float
    top_k: int
    top_p: float
    uniforms: np.ndarray  # float64 [n * candidates, G*G]: one draw per row and code
    rerank_tokens: tuple[int, ...] | None  # the prompt in the reranker's vocabulary
    size: int | None = None  # side of the PNGs; None: the model's own image size

    @property
    def rows(self) -> int:
        return self.n * self.candidates


def row_uniforms(seed: int, n: int, candidates: int, length: int) -> np.ndarray:
    """float64 [n * candidates, length]: row i * candidates + j from default_rng([seed, i, j])."""
    return np.stack([np.random.default_rng([seed, i, j]).random(length)
                     for i in range(n) for j in range(candidates)])


class Reranker:
    """A text-image joint embedding carried in the bundle: how well images match a prompt."""

    def __init__(self, image_graph: OnnxGraph, text_graph: OnnxGraph, words: WordIndex,
                 text_length: int) -> None:
        self.image_graph = image_graph
        self.text_graph = text_graph
        self.words = words
        self.text_length = text_length

    def tokens(self, prompt: str) -> tuple[int, ...]:
        """The prompt's ids; words it does not know are embedded as <unk>, as retrieval
        embeds them."""
        return tuple(self.words.encode(prompt).ids)

    def scores(self, tokens: tuple[int, ...], images: np.ndarray) -> np.ndarray:
        """Cosine similarity [R] of each image [R, 3, S, S] to the prompt."""
        text = self.text_graph.run({"tokens": pad_ids([tokens], length=self.text_length),
                                    "lengths": np.array([len(tokens)], dtype=np.int64)})
        embedded = np.concatenate([
            self.image_graph.run({"image": images[i:i + MAX_IMAGES_PER_RUN]})["embedding"]
            for i in range(0, len(images), MAX_IMAGES_PER_RUN)])
        return embedded @ text["embedding"][0]


class DalleModel(TextToImage, task="generation", architecture="dalle"):
    """Transformer prefill and step graphs, a dVAE decoder and an optional reranker."""

    takes_sampling = True

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        super().__init__(bundle, graphs)
        self.prefill_graph = graphs[PREFILL_GRAPH]
        self.step_graph = graphs[STEP_GRAPH]
        self.step_cache = step_cache(bundle.manifest)
        self.dvae_decoder = graphs[DVAE_DECODER_GRAPH]
        self.settings = bundle.manifest.inference_as(DalleInference)
        self.text_length = self.settings.text_length
        self.image_length = self.settings.grid ** 2
        self.image_size = self.settings.image_size
        self.words = self.read_file(self.tokenizer_file("word"), WordIndex.from_file)
        spec = self.settings.reranker
        self.reranker = None if spec is None else self._load_reranker(spec, graphs)

    def _load_reranker(self, spec: RerankerSpec, graphs: Mapping[str, OnnxGraph]) -> Reranker:
        if spec.text_length < self.text_length - 1:
            raise BundleError(self.bundle.path, f"the reranker reads {spec.text_length} words, "
                              f"prompts may have {self.text_length - 1}")
        image_input = next(t for t in self.bundle.manifest.graphs[spec.image_graph].inputs
                           if t.name == "image")
        if image_input.shape[2:] != [self.image_size, self.image_size]:
            raise BundleError(self.bundle.path, f"the reranker takes images of shape "
                              f"{image_input.shape}, the model draws {self.image_size} px")
        return Reranker(graphs[spec.image_graph], graphs[spec.text_graph],
                        self.read_file(spec.vocabulary, WordIndex.from_file), spec.text_length)

    def contract(self) -> dict[str, GraphContract]:
        cache = frozenset({"logits", "present"})
        step = frozenset({"logits", step_cache(self.bundle.manifest)})
        needs = {PREFILL_GRAPH: GraphContract(inputs=frozenset({"tokens"}), outputs=cache),
                 STEP_GRAPH: GraphContract(inputs=frozenset({"token", "position", "past"}),
                                           outputs=step),
                 DVAE_DECODER_GRAPH: GraphContract(inputs=frozenset({"codes"}),
                                                   outputs=frozenset({"image"}))}
        spec = self.bundle.manifest.inference_as(DalleInference).reranker
        if spec is not None:
            embedding = frozenset({"embedding"})
            needs[spec.image_graph] = GraphContract(inputs=frozenset({"image"}),
                                                    outputs=embedding)
            needs[spec.text_graph] = GraphContract(inputs=frozenset({"tokens", "lengths"}),
                                                   outputs=embedding)
        return needs

    def defaults(self) -> dict[str, Any]:
        s = self.settings
        return {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                "candidates": s.candidates}

    # ------------------------------------------------------------------ requests

    def request(self, prompt: str, n: int = 1, seed: int | None = None,
                options: SamplingOptions | None = None,
                size: int | None = None) -> DalleRequest:
        """Validate a prompt, image count, seed and sampling settings (InvalidParameter
        names what is wrong); the PNGs are resized to `size` when given."""
        check_png_size(size)
        o, s = options or SamplingOptions(), self.settings
        temperature = s.temperature if o.temperature is None else o.temperature
        top_k = s.top_k if o.top_k is None else o.top_k
        top_p = s.top_p if o.top_p is None else o.top_p
        candidates = s.candidates if o.candidates is None else o.candidates
        if not 1 <= n <= MAX_IMAGES_PER_REQUEST:
            raise InvalidParameter(f"n: must be between 1 and {MAX_IMAGES_PER_REQUEST}, got {n}")
        self._check_sampling(temperature, top_k, top_p, candidates, n)
        seed = request_seed(seed)
        text = prompt.strip()
        if not text:
            raise InvalidParameter("prompt: must not be empty")
        encoded = self.words.encode(text)
        if encoded.unknown:
            raise InvalidParameter(f"prompt: words the model was not trained on: "
                                   f"{', '.join(map(repr, encoded.unknown))}")
        if not encoded.ids:
            raise InvalidParameter("prompt: no words (after lowercasing and removing "
                                   "punctuation)")
        if len(encoded.ids) > self.text_length - 1:
            raise InvalidParameter(f"prompt: {len(encoded.ids)} words, this model reads at "
                                   f"most {self.text_length - 1}")
        rerank = self.reranker.tokens(text) if self.reranker and candidates > 1 else None
        if top_k >= self.settings.codebook_size:  # keeps every code, as 0 does; and any
            top_k = 0  # schema-valid integer, however large, then fits the batch's int64
        return DalleRequest(
            prompt=text, tokens=(WordIndex.BOS_ID, *encoded.ids), n=n, seed=seed,
            candidates=candidates, temperature=float(temperature), top_k=top_k,
            top_p=float(top_p), uniforms=row_uniforms(seed, n, candidates, self.image_length),
            rerank_tokens=rerank, size=size)

    def _check_sampling(self, temperature: float, top_k: int, top_p: float, candidates: int,
                        n: int) -> None:
        if not (math.isfinite(temperature) and 0 < temperature <= MAX_TEMPERATURE):
            raise InvalidParameter(f"temperature: must be in (0, {MAX_TEMPERATURE:g}], "
                                   f"got {temperature}")
        if top_k < 0:
            raise InvalidParameter(f"top_k: must be >= 0 (0 keeps every code), got {top_k}")
        if not (math.isfinite(top_p) and 0 < top_p <= 1):
            raise InvalidParameter(f"top_p: must be in (0, 1], got {top_p}")
        if not 1 <= candidates <= MAX_CANDIDATES:
            raise InvalidParameter(f"candidates: must be between 1 and {MAX_CANDIDATES}, "
                                   f"got {candidates}")
        if candidates > 1 and self.reranker is None:
            raise InvalidParameter(f"candidates: model {self.bundle.key} has no reranker; "
                                   "ask for candidates = 1")
        if n * candidates > MAX_ROWS_PER_REQUEST:
            raise InvalidParameter(f"n * candidates: at most {MAX_ROWS_PER_REQUEST} samples "
                                   f"per request, got {n} * {candidates}")

    # ------------------------------------------------------------------ inference

    def prefill(self, prompts: Sequence[tuple[int, ...]]) -> dict[str, np.ndarray]:
        """logits [P, K] of the first image code and the cache `present` of each prompt."""
        tokens = pad_ids(prompts, length=self.text_length, pad_id=WordIndex.PAD_ID)
        return self.prefill_graph.run({"tokens": tokens})

    def step(self, token: np.ndarray, position: np.ndarray, past: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """Feed one code per row (`token` at sequence `position`); returns the logits
        [R, K] of the next code and the cache holding this token's keys/values: `past`
        itself, written in place at each row's position (a `kv` step graph), or the new
        cache the graph returned (a `present` one)."""
        out = self.step_graph.run({"token": token, "position": position, "past": past})
        if self.step_cache == "present":
            return out["logits"], out["present"]
        past[np.arange(len(position)), :, :, position] = out["kv"]
        return out["logits"], past

    def decode_images(self, codes: np.ndarray) -> np.ndarray:
        """float32 [R, 3, S, S] in [0, 1] of code grids [R, G, G], in runs of at most
        MAX_IMAGES_PER_RUN."""
        return np.concatenate([self.dvae_decoder.run({"codes": codes[i:i + MAX_IMAGES_PER_RUN]})
                               ["image"] for i in range(0, len(codes), MAX_IMAGES_PER_RUN)])

    def finish(self, request: DalleRequest, codes: Sequence[np.ndarray]) -> GenerationResult:
        """The request's images from the codes of its rows: decoded, and with candidates,
        the reranker's best of each image's candidates."""
        grid = self.settings.grid
        images = self.decode_images(np.stack(codes).reshape(-1, grid, grid))
        if request.candidates > 1:
            assert self.reranker is not None and request.rerank_tokens is not None
            scores = self.reranker.scores(request.rerank_tokens, images)
            best = scores.reshape(request.n, request.candidates).argmax(axis=1)
            images = images.reshape(request.n, request.candidates, *images.shape[1:])
            images = images[np.arange(request.n), best]
        pixels = to_uint8(images)
        return GenerationResult(images=pixels, seed=request.seed,
                                pngs=[encode_png(image, request.size) for image in pixels])

    def decode(self, requests: Sequence[DalleRequest], *, max_rows: int | None = None
               ) -> list[GenerationResult]:
        """Each request's result, decoding at most `max_rows` rows at a time (default: all
        rows in one static batch)."""
        if not requests:
            return []
        total = sum(r.rows for r in requests)
        scheduler: StepScheduler[DalleRequest] = StepScheduler(
            max_rows=max_rows or total, max_queue_size=len(requests))
        submitted = [scheduler.submit(r, r.rows, now=0.0, timeout_s=math.inf)
                     for r in requests]
        decoder = DalleDecoder(self)
        results: dict[int, GenerationResult] = {}
        while not scheduler.empty:
            plan = scheduler.plan()
            for done in scheduler.complete(decoder.advance(plan.leaving, plan.joining)):
                results[id(done)] = self.finish(done.payload, done.ordered_outputs())
        return [results[id(s)] for s in submitted]

    def run_batch(self, requests: Sequence[DalleRequest]) -> list[GenerationResult]:
        return self.decode(requests)

    def generate(self, prompts: Sequence[str], n: int = 1, seed: int = 0,
                 options: SamplingOptions | None = None) -> np.ndarray:
        """uint8 [len(prompts) * n, S, S, 3], prompt-major: each prompt's n images are the
        ones /v1/images/generations returns for that prompt, n, seed and settings."""
        requests = [self.request(p, n, seed, options) for p in prompts]
        if not requests:
            return np.empty((0, self.image_size, self.image_size, 3), np.uint8)
        step = max(1, MAX_ROWS_PER_REQUEST // requests[0].rows)  # requests per static batch
        return np.concatenate([result.images for start in range(0, len(requests), step)
                               for result in self.decode(requests[start:start + step])])

    def warm_up_batches(self, size: int) -> list[list[DalleRequest]]:
        # One-word prompts, so that the prefill sees the batch size too; with a reranker,
        # one request of two candidates runs its graphs.
        words = [t for t in self.words.tokens if not t.startswith("<")] or ["<unk>"]
        batches = [[self._warm_request(words[i % len(words)], seed=i) for i in range(size)]]
        if self.reranker is not None:
            batches.append([self._warm_request(words[0], seed=0, candidates=2)])
        return batches

    def _warm_request(self, word: str, *, seed: int, candidates: int = 1) -> DalleRequest:
        word_id = self.words.encode(word).ids or [WordIndex.UNK_ID]
        return DalleRequest(
            prompt=word, tokens=(WordIndex.BOS_ID, *word_id[:1]), n=1, seed=seed,
            candidates=candidates, temperature=1.0, top_k=0, top_p=1.0,
            uniforms=row_uniforms(seed, 1, candidates, self.image_length),
            rerank_tokens=None if candidates == 1 else tuple(word_id[:1]))

    def batcher(self, settings: ResolvedModelSettings,
                observer: BatchObserver | None = None) -> StepBatcher[DalleRequest,
                                                                       GenerationResult]:
        """Step-level batching: `max_batch_size` rows decode together; the queue delay does
        not apply (a request joins at the next step, there is no batch to wait for)."""
        return StepBatcher(self.bundle.key, DalleDecoder(self),
                           max_batch_size=settings.max_batch_size,
                           max_queue_size=settings.max_queue_size,
                           timeout_s=settings.request_timeout_s, observer=observer)


def step_cache(manifest: Manifest) -> str:
    """What a bundle's step graph returns of the cache: "kv" (the token's keys/values)
    or "present" (the whole updated cache). A bundle without a step graph is refused
    by the contract check, which names the missing graph."""
    spec = manifest.graphs.get(STEP_GRAPH)
    return "present" if spec is not None and "present" in spec.output_names() else "kv"


class DalleDecoder:
    """The running decode batch of a `DalleModel` (a `StepDecoder`): each row's cache,
    codes and sampling settings in arrays aligned by row."""

    def __init__(self, model: DalleModel) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        n = self.model.image_length
        self.ids = np.zeros(0, np.int64)  # the scheduler's row ids
        self.past: np.ndarray | None = None  # [R, 2 * layers, heads, T, hs]
        self.codes = np.zeros((0, n), np.int64)  # drawn codes, the first `length` valid
        self.length = np.zeros(0, np.int64)
        self.uniforms = np.zeros((0, n))
        self.temperature = np.zeros(0)
        self.top_k = np.zeros(0, np.int64)
        self.top_p = np.zeros(0)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, payload: DalleRequest) -> int:
        return payload.rows

    def finish(self, payload: DalleRequest, outputs: list[Any]) -> GenerationResult:
        return self.model.finish(payload, outputs)

    def advance(self, leaving: Sequence[int], joining: Sequence[Row[DalleRequest]]
                ) -> list[tuple[int, Any]]:
        """Drop `leaving`, prefill `joining` (drawing their first code), draw one code for
        every row; returns (row id, codes [G*G]) of the rows that are complete."""
        if leaving:
            self._keep(~np.isin(self.ids, np.asarray(leaving, dtype=np.int64)))
        if joining:
            self._join(joining)
        finished = self._take_finished()
        if len(self):
            self._step()
            finished += self._take_finished()
        return finished

    def _keep(self, mask: np.ndarray) -> None:
        for name in ("ids", "codes", "length", "uniforms", "temperature", "top_k", "top_p"):
            setattr(self, name, getattr(self, name)[mask])
        self.past = None if self.past is None or not mask.any() else self.past[mask]

    def _join(self, joining: Sequence[Row[DalleRequest]]) -> None:
        requests = [row.request.payload for row in joining]
        prompts = list(dict.fromkeys(r.tokens for r in requests))
        out = self.model.prefill(prompts)
        which = np.array([prompts.index(r.tokens) for r in requests])
        uniforms = np.stack([r.uniforms[row.index] for r, row in
                             zip(requests, joining, strict=True)])
        temperature = np.array([r.temperature for r in requests])
        top_k = np.array([r.top_k for r in requests], dtype=np.int64)
        top_p = np.array([r.top_p for r in requests])
        codes = np.zeros((len(joining), self.model.image_length), np.int64)
        codes[:, 0] = draw_tokens(out["logits"][which], temperature, top_k, top_p,
                                  uniforms[:, 0])
        present = out["present"][which]
        self.past = present if self.past is None else np.concatenate([self.past, present])
        self.ids = np.concatenate([self.ids, [row.id for row in joining]]).astype(np.int64)
        self.codes = np.concatenate([self.codes, codes])
        self.length = np.concatenate([self.length, np.ones(len(joining), np.int64)])
        self.uniforms = np.concatenate([self.uniforms, uniforms])
        self.temperature = np.concatenate([self.temperature, temperature])
        self.top_k = np.concatenate([self.top_k, top_k])
        self.top_p = np.concatenate([self.top_p, top_p])

    def _step(self) -> None:
        rows = np.arange(len(self))
        position = self.model.text_length + self.length - 1
        logits, self.past = self.model.step(self.codes[rows, self.length - 1], position,
                                            self.past)
        self.codes[rows, self.length] = draw_tokens(logits, self.temperature,
                                                    self.top_k, self.top_p,
                                                    self.uniforms[rows, self.length])
        self.length += 1

    def _take_finished(self) -> list[tuple[int, Any]]:
        done = self.length == self.model.image_length
        if not done.any():
            return []
        finished = [(int(i), codes.copy()) for i, codes in
                    zip(self.ids[done], self.codes[done], strict=True)]
        self._keep(~done)
        return finished
