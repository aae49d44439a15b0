"""The text-to-image pipelines' shared parts, and the GAN pipeline: prompt -> characters ->
text encoder -> generator -> PNGs.

Every generation bundle is served behind /v1/images/generations by a `TextToImage`
pipeline: `GenerationModel` below for the GANs (the task's pipeline), `DalleModel`
(service/pipelines/dalle.py) for architecture "dalle". Both take a prompt, n and a seed
and answer a `GenerationResult`; token-sampling models also read `SamplingOptions`.

`GenerationModel` is what the service batches behind /v1/images/generations and what
evaluation uses offline (`GenerationModel.from_bundle(path).generate(prompts, n, seed)`),
so both draw the same images. The generator G(z, phi(t)) of Reed et al. 2016 (Eq. 1
conditions G on the text embedding phi(t)) is sampled with z ~ N(0, I) drawn by
`numpy.random.default_rng(seed)`: a request's images depend only on its prompt, n and
seed, never on the other requests of its batch.

Graph contract (bundle written by the generation exporter of training):
    text_encoder  chars [batch, T] int64, 0 pads -> embedding [batch, E]
    generator     embedding [batch, E], noise [batch, Z] -> image [batch, 3, S, S] in [0, 1]
with T = inference.max_prompt_length, Z = inference.noise_dim, S = inference.image_size.

Batching: the queue's max_batch_size counts requests, as for every model; one request
of n images is one entry. A batch's images are drawn in generator runs of at most
`MAX_IMAGES_PER_RUN`. The text encoder runs once per distinct prompt, alone: its
kernels round differently at batch size 1 than at 2 and more (2.9e-8 on the committed
gan-int-cls), which flips a grey level of some pixels, so a prompt embedded in a batch
of others would not get the image it gets alone. Embeddings are cached per prompt,
which also spares the encoder the prompts people repeat. The generator's rows are
computed independently of each other at every batch size (tests/service/
test_generation_api.py checks byte-identical PNGs alone and mixed).
"""

from __future__ import annotations

import io
import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from service.bundle import Bundle, GenerationInference
from service.errors import InvalidParameter
from service.pipelines.base import GraphContract, Pipeline, request_seed
from service.runtime import OnnxGraph
from service.text import CharIndex, WordIndex, pad_ids

MAX_IMAGES_PER_REQUEST = 16
MAX_IMAGES_PER_RUN = 64
MAX_PNG_SIZE = 512
EMBEDDING_CACHE_SIZE = 1024  # prompts whose text embedding is kept


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling settings of one request; None leaves the model's default (its manifest's
    `inference`)."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    candidates: int | None = None  # samples drawn per returned image, reranked

    def given(self) -> list[str]:
        """Names of the settings the request sets."""
        return [name for name, value in vars(self).items() if value is not None]


class TextToImage(Pipeline[Any, "GenerationResult"]):
    """A pipeline of /v1/images/generations: prompt, n, seed (and sampling) -> images."""

    task = "generation"
    # Whether the model draws tokens and so takes SamplingOptions (a GAN draws from noise).
    takes_sampling: ClassVar[bool] = False
    # Longest prompt in characters, where the model has such a limit.
    max_prompt_length: int | None = None

    @abstractmethod
    def request(self, prompt: str, n: int = 1, seed: int | None = None,
                options: SamplingOptions | None = None, size: int | None = None) -> Any:
        """A validated request (InvalidParameter names what is wrong); without a seed one
        is drawn at random and returned with the images, as PNGs resized to `size` (the
        model's own size when None)."""

    @abstractmethod
    def generate(self, prompts: Sequence[str], n: int = 1, seed: int = 0) -> np.ndarray:
        """uint8 [len(prompts) * n, S, S, 3], prompt-major: each prompt's n images are
        those /v1/images/generations returns for it, n and seed."""


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: the prompt's character ids and the images to draw."""

    prompt: str
    chars: tuple[int, ...]  # alphabet ids of the prompt, unpadded
    n: int
    seed: int
    size: int | None = None  # side of the PNGs; None: the model's own image size


@dataclass
class GenerationResult:
    images: np.ndarray  # uint8 [n, S, S, 3]
    seed: int
    pngs: list[bytes]


def check_png_size(size: int | None) -> None:
    """InvalidParameter unless `size` (a requested PNG side) is None or in range."""
    if size is not None and not 1 <= size <= MAX_PNG_SIZE:
        raise InvalidParameter(f"size: must be between 1 and {MAX_PNG_SIZE}, got {size}")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[B, 3, S, S] floats in [0, 1] -> [B, S, S, 3] uint8 (rounded)."""
    pixels = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def encode_png(image: np.ndarray, size: int | None = None) -> bytes:
    """PNG bytes of one [S, S, 3] uint8 image, resized to size x size if given (Lanczos)."""
    picture = Image.fromarray(image, mode="RGB")
    if size is not None and size != picture.width:
        picture = picture.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def draw_noise(seed: int, n: int, noise_dim: int) -> np.ndarray:
    """z ~ N(0, I) of one request: float32 [n, noise_dim] from default_rng(seed).

    Rows are drawn in order, so the first k images of n are those of a request for k.
    """
    return np.random.default_rng(seed).standard_normal((n, noise_dim), dtype=np.float32)


class GenerationModel(TextToImage, task="generation"):
    """A char-CNN-RNN text encoder graph and a generator graph sampled with seeded noise."""

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        super().__init__(bundle, graphs)
        self.text_encoder = graphs["text_encoder"]
        self.generator = graphs["generator"]
        inference = bundle.manifest.inference_as(GenerationInference)
        self.noise_dim = inference.noise_dim
        self.max_prompt_length = inference.max_prompt_length
        self.image_size = inference.image_size
        self.alphabet = self.read_file(self.tokenizer_file("char"), CharIndex.from_file)
        self.vocabulary = (None if inference.vocabulary is None
                           else self.read_file(inference.vocabulary, WordIndex.from_file))
        # prompt character ids -> embedding; written by the batch thread only
        self._embeddings: dict[tuple[int, ...], np.ndarray] = {}

    def contract(self) -> dict[str, GraphContract]:
        return {"text_encoder": GraphContract(inputs=frozenset({"chars"}),
                                              outputs=frozenset({"embedding"})),
                "generator": GraphContract(inputs=frozenset({"embedding", "noise"}),
                                           outputs=frozenset({"image"}))}

    # ------------------------------------------------------------------ requests

    def request(self, prompt: str, n: int = 1, seed: int | None = None,
                options: SamplingOptions | None = None,
                size: int | None = None) -> GenerationRequest:
        """Validate a prompt, image count and seed (InvalidParameter names what is wrong).

        Without a seed one is drawn at random; it is returned with the images. `size` is
        the side the PNGs are resized to (the images themselves stay the model's). A GAN
        draws from noise: sampling settings are refused.
        """
        if options is not None and (given := options.given()):
            raise InvalidParameter(f"{', '.join(given)}: model {self.bundle.key} "
                                   f"({self.bundle.manifest.architecture}) draws its images "
                                   "from noise and takes no sampling settings")
        check_png_size(size)
        if not 1 <= n <= MAX_IMAGES_PER_REQUEST:
            raise InvalidParameter(f"n: must be between 1 and {MAX_IMAGES_PER_REQUEST}, got {n}")
        seed = request_seed(seed)
        text = prompt.strip()
        if not text:
            raise InvalidParameter("prompt: must not be empty")
        if not re.search("[A-Za-z0-9]", text):  # as the document says (schemas.HAS_A_WORD)
            raise InvalidParameter("prompt: has no words (no letter or digit)")
        if len(text) > self.max_prompt_length:
            raise InvalidParameter(f"prompt: {len(text)} characters, this model reads at most "
                                   f"{self.max_prompt_length}")
        encoded = self.alphabet.encode(text)
        if encoded.unknown:
            raise InvalidParameter(f"prompt: characters outside the model's alphabet: "
                                   f"{', '.join(map(repr, encoded.unknown))}")
        if self.vocabulary is not None:
            unknown = self.vocabulary.encode(text).unknown
            if unknown:
                raise InvalidParameter(f"prompt: words the model was not trained on: "
                                       f"{', '.join(map(repr, unknown))}")
        return GenerationRequest(prompt=text, chars=tuple(encoded.ids), n=n, seed=seed,
                                 size=size)

    # ------------------------------------------------------------------ inference

    def embed(self, chars: tuple[int, ...]) -> np.ndarray:
        """phi(t) [E] of one prompt's character ids, computed alone (see the module
        docstring) and cached."""
        embedding = self._embeddings.get(chars)
        if embedding is None:
            padded = pad_ids([chars], length=self.max_prompt_length)
            embedding = self.text_encoder.run({"chars": padded})["embedding"][0]
            if len(self._embeddings) >= EMBEDDING_CACHE_SIZE:
                self._embeddings.pop(next(iter(self._embeddings)))  # the oldest
            self._embeddings[chars] = embedding
        return embedding

    def _embed(self, requests: Sequence[GenerationRequest]) -> np.ndarray:
        """phi(t) of each request's prompt, [len(requests), E]."""
        return np.stack([self.embed(r.chars) for r in requests])

    def images(self, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
        """uint8 [n, S, S, 3] images of each request, drawn in batched generator runs."""
        if not requests:
            return []
        per_request = self._embed(requests)
        embedding = np.repeat(per_request, [r.n for r in requests], axis=0)
        noise = np.concatenate([draw_noise(r.seed, r.n, self.noise_dim) for r in requests])
        drawn = [self.generator.run({"embedding": embedding[i:i + MAX_IMAGES_PER_RUN],
                                     "noise": noise[i:i + MAX_IMAGES_PER_RUN]})["image"]
                 for i in range(0, len(noise), MAX_IMAGES_PER_RUN)]
        pixels = to_uint8(np.concatenate(drawn))
        bounds = np.cumsum([r.n for r in requests])[:-1]
        return np.split(pixels, bounds)

    def run_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """The batch function of the service's queue: images and their PNGs per request."""
        return [GenerationResult(images=images, seed=r.seed,
                                 pngs=[encode_png(image, r.size) for image in images])
                for r, images in zip(requests, self.images(requests), strict=True)]

    def generate(self, prompts: Sequence[str], n: int = 1, seed: int = 0) -> np.ndarray:
        """uint8 [len(prompts) * n, S, S, 3], prompt-major.

        Each prompt's n images are the ones /v1/images/generations returns for that
        prompt, n and seed (so every prompt is drawn with the same noise).
        """
        requests = [self.request(p, n, seed) for p in prompts]
        step = max(1, MAX_IMAGES_PER_RUN // n)  # requests whose images fill one run
        images = [image for start in range(0, len(requests), step)
                  for image in self.images(requests[start:start + step])]
        if not images:
            return np.empty((0, self.image_size, self.image_size, 3), np.uint8)
        return np.concatenate(images)

    def warm_up_batches(self, size: int) -> list[list[GenerationRequest]]:
        # distinct one-character prompts (their embeddings stay cached)
        letters = self.alphabet.alphabet
        return [[GenerationRequest(prompt=letters[i % len(letters)],
                                   chars=(1 + i % len(letters),), n=1, seed=i)
                 for i in range(min(size, MAX_IMAGES_PER_RUN))]]
