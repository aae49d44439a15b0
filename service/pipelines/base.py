"""What every served task shares: a pipeline built from a bundle's graphs.

A pipeline is the batch function the service queues requests for (`run_batch`) and the
object evaluation uses offline (`from_bundle(path)`), so that both give the same
answer. The base class loads the bundle, checks that the bundle is of the pipeline's
task and that its graphs have the inputs and outputs the pipeline feeds and reads
(`contract`), and warms the graphs at the batch sizes the queue will form.

A task module subclasses `Pipeline` (or `ImagePipeline`, when its requests carry an
image) naming its task, which registers it:

    class VqaModel(ImagePipeline[VqaRequest, VqaResult], task="vqa"): ...

and the service loads a bundle with the pipeline `pipeline_for(bundle.manifest)` names.
An architecture that its task's pipeline cannot run registers its own, under both:

    class DalleModel(TextToImage, task="generation", architecture="dalle"): ...

A pipeline also says how the service queues its requests (`batcher`): batches of
whole requests by default, a running decode batch for step-level batching.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

import numpy as np
from PIL import Image

from service.batching import Batcher, BatchObserver, QueueDriver
from service.bundle import Bundle, BundleError, Manifest, load_bundle
from service.domain import DOMAIN_FILE_KEY, DomainScore, DomainStatistics
from service.errors import InvalidParameter
from service.images import image_input, to_array
from service.runtime import OnnxGraph, load_graphs
from service.settings import ResolvedModelSettings

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")
T = TypeVar("T")
ImageInput = bytes | str | Path | Image.Image | np.ndarray

# Seeds of sampled requests are integers that a JSON number holds exactly in every client
# language (JavaScript's Number.MAX_SAFE_INTEGER), and that the OpenAPI document's
# `maximum`, a JSON number too, states exactly.
MAX_SEED = 2**53 - 1


@dataclass(frozen=True)
class GraphContract:
    """Tensor names a pipeline feeds to one graph and reads from it."""

    inputs: frozenset[str] = frozenset()
    outputs: frozenset[str] = frozenset()


# task -> its pipeline class, filled as the task modules are imported (service.pipelines)
PIPELINES: dict[str, type[Pipeline[Any, Any]]] = {}
# (task, architecture) -> the pipeline of the bundles of an architecture that has its own
ARCHITECTURE_PIPELINES: dict[tuple[str, str], type[Pipeline[Any, Any]]] = {}


def pipeline_for(manifest: Manifest) -> type[Pipeline[Any, Any]] | None:
    """The pipeline that serves a bundle: its architecture's, else its task's (None if
    this version of glimpse serves neither)."""
    return (ARCHITECTURE_PIPELINES.get((manifest.task, manifest.architecture))
            or PIPELINES.get(manifest.task))


class Pipeline(ABC, Generic[RequestT, ResultT]):
    """The graphs of one bundle of `task`, and the batch function that runs them."""

    task: ClassVar[str]
    architecture: ClassVar[str | None] = None  # set for an architecture's own pipeline

    def __init_subclass__(cls, *, task: str | None = None, architecture: str | None = None,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if task is None:
            if architecture is not None:
                raise TypeError(f"{cls.__name__}: an architecture's pipeline names its task")
            return
        if architecture is not None:
            key = (task, architecture)
            if key in ARCHITECTURE_PIPELINES:
                raise TypeError(f"architecture {architecture!r} of task {task!r} already has "
                                f"a pipeline: {ARCHITECTURE_PIPELINES[key].__name__}")
            cls.task, cls.architecture = task, architecture
            ARCHITECTURE_PIPELINES[key] = cls
            return
        if task in PIPELINES:
            raise TypeError(f"task {task!r} already has a pipeline: {PIPELINES[task].__name__}")
        cls.task = task
        PIPELINES[task] = cls

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        if bundle.manifest.task != self.task:
            raise BundleError(bundle.path, f"task {bundle.manifest.task!r} is not a "
                              f"{self.task} bundle")
        if self.architecture is not None and bundle.manifest.architecture != self.architecture:
            raise BundleError(bundle.path, f"architecture {bundle.manifest.architecture!r} is "
                              f"not served by {type(self).__name__} ({self.architecture})")
        self.bundle = bundle
        self.graphs = dict(graphs)
        self._check_contract(graphs)

    @classmethod
    def from_bundle(cls, bundle: str | Path | Bundle, *, device: str = "auto",
                    providers: Sequence[str] | None = None,
                    intra_op_threads: int | None = None,
                    **runtime: Any) -> Self:
        """Load a bundle (a directory, or one already loaded) for offline use, validated
        as the service validates it; `runtime` goes to `load_graphs` (`cuda_options`,
        `batch_buckets`, `max_batch_size`)."""
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        return cls(bundle, load_graphs(bundle, device=device, providers=providers,
                                       intra_op_threads=intra_op_threads, **runtime))

    # ------------------------------------------------------------------ graphs

    @abstractmethod
    def contract(self) -> dict[str, GraphContract]:
        """Graph key of the manifest -> the names this pipeline feeds and reads."""

    def _check_contract(self, graphs: Mapping[str, OnnxGraph]) -> None:
        needs = self.contract()
        if missing := [key for key in needs if key not in graphs]:
            raise BundleError(self.bundle.path, f"a {self.task} bundle needs graphs {missing}")
        for key, need in needs.items():
            graph = graphs[key]
            for kind, needed, present in (("inputs", need.inputs, graph.input_names),
                                          ("outputs", need.outputs, graph.output_names)):
                if lacking := sorted(needed - set(present)):
                    raise BundleError(self.bundle.path, f"{key} {kind} lack {lacking}")

    # ------------------------------------------------------------------ files

    def read_file(self, key: object, read: Callable[[Path], T]) -> T:
        """`read` of the file the manifest records under `key` in `files` (BundleError
        naming the file when it is not listed or cannot be read)."""
        files = self.bundle.manifest.files
        if not isinstance(key, str) or key not in files:
            raise BundleError(self.bundle.path, f"the manifest names no file {key!r} in `files`")
        try:
            return read(self.bundle.file(key))
        except (ValueError, OSError) as exc:
            raise BundleError(self.bundle.path, str(exc), files[key].file) from None

    def tokenizer_file(self, kind: Literal["word", "char"]) -> str:
        """Key in `files` of the bundle's tokenizer, which must be of `kind`."""
        tokenizer = self.bundle.manifest.preprocessing.tokenizer
        if tokenizer is None or tokenizer.type != kind:
            raise BundleError(self.bundle.path, f"a {self.task} bundle needs "
                              f"preprocessing.tokenizer of type {kind!r}")
        return tokenizer.file

    # ------------------------------------------------------------------ inference

    @abstractmethod
    def run_batch(self, requests: Sequence[RequestT]) -> list[ResultT]:
        """One result per request, each the one the request would get alone."""

    @abstractmethod
    def warm_up_batches(self, size: int) -> list[list[RequestT]]:
        """Batches of `size` requests that run every graph, for `warm_up`."""

    def batcher(self, settings: ResolvedModelSettings,
                observer: BatchObserver | None = None) -> QueueDriver[RequestT, ResultT]:
        """The queue the service runs this model's requests through: a dynamic batcher of
        whole requests (`run_batch`); step-level decoders return a `StepBatcher`."""
        return Batcher(self.bundle.key, self.run_batch, max_batch_size=settings.max_batch_size,
                       max_queue_delay_s=settings.max_queue_delay_ms / 1000,
                       max_queue_size=settings.max_queue_size,
                       timeout_s=settings.request_timeout_s, observer=observer,
                       idle_dispatch=settings.idle_dispatch)

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run each batch size once so that first requests do not pay for allocation,
        then each graph at the batch buckets these batches did not reach."""
        for size in batch_sizes:
            for batch in self.warm_up_batches(size):
                self.run_batch(batch)
        for graph in self.graphs.values():
            graph.warm_buckets()

    def defaults(self) -> dict[str, Any]:
        """Request parameters this model defaults to (GET /v1/models): the numeric settings
        of the manifest's `inference` section."""
        return {key: value for key, value in self.bundle.manifest.inference.items()
                if isinstance(value, int | float | bool)}


def request_seed(seed: int | None) -> int:
    """The seed a sampled request is drawn with: its own (checked), or a random one."""
    if seed is None:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidParameter(f"seed: must be between 0 and {MAX_SEED}, got {seed}")
    return seed


class ImagePipeline(Pipeline[RequestT, ResultT]):
    """A pipeline whose requests carry an image, resized and scaled as the manifest's
    `preprocessing` says before it becomes a graph's `image` input [3, S, S]."""

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        super().__init__(bundle, graphs)
        preprocessing = bundle.manifest.preprocessing
        if preprocessing.image_size is None:
            raise BundleError(bundle.path, f"a {self.task} bundle needs "
                              "preprocessing.image_size")
        self.image_size = preprocessing.image_size
        self.pixel_range = preprocessing.pixel_range
        self.domain = (self.read_file(DOMAIN_FILE_KEY, DomainStatistics.from_file)
                       if DOMAIN_FILE_KEY in bundle.manifest.files else None)

    def domain_score(self, image: np.ndarray) -> DomainScore | None:
        """How far a graph input [3, S, S] lies from the model's training images (None for
        a bundle without domain statistics: service/domain.py)."""
        return None if self.domain is None else self.domain.score(image, self.pixel_range)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The graph input [3, S, S] of a decoded RGB image."""
        return to_array(image, self.image_size, self.pixel_range)

    def as_array(self, image: ImageInput) -> np.ndarray:
        """The graph input [3, S, S] of an image given as bytes, a file path, a PIL image or
        an array of that shape (offline callers)."""
        return image_input(image, self.image_size, self.pixel_range)

    def blank_image(self) -> np.ndarray:
        """An all-zero graph input, for warm-up."""
        return np.zeros((3, self.image_size, self.image_size), dtype=np.float32)
