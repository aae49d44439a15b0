"""The retrieval pipeline: images and sentences into one joint space, and exact search.

`RetrievalModel` serves /v1/embeddings, /v1/retrieval/images and
/v1/retrieval/captions, and is what `glimpse index` and `glimpse eval retrieval`
use offline, so galleries and published recall come from the same code as the
answers. A batch mixes image and text queries: images go through
`image_encoder` together, sentences through `text_encoder` together, and the
queries that search a gallery are scored against it with one matrix product.

Graph contract (written by the retrieval exporter of training): `image_encoder` maps `image`
[batch, 3, S, S] and `text_encoder` maps `tokens` [batch, T] int64 with `lengths`
[batch] int64 to a unit-length `embedding` [batch, E]; scores are dot products,
i.e. cosine similarities. The manifest's `inference` section holds E
(`embedding_dim`), T (`text_length`) and `galleries`, e.g.

    "galleries": {"images":   {"embeddings": "gallery_images",
                               "entries": "gallery_images_entries"},
                  "captions": {"embeddings": "gallery_captions",
                               "entries": "gallery_captions_entries"}}

whose values are keys of `files`: an [N, E] float32 .npy file and a JSON file of
columns (`{"ids": [...], "files": [...]}` for images, `{"texts": [...],
"image_ids": [...]}` for captions), one entry per row. A gallery's optional `index`
(`{"kind": "hnsw", "file": "gallery_images_index", "params": {...}}`) says how it is
searched (service/indexes.py): `exact` when absent, else an approximate index whose
file is listed in `files` with its sha256 like every other file of the bundle.

Paging: a search asks for `top_k` hits after the first `offset`; the index is searched
for the best offset + top_k (at most MAX_SEARCH_DEPTH), so a page is exactly that slice
of a longer answer. Queries of a batch that ask for different depths are searched
apart, so that no answer depends on the batch it was in.

Words outside the vocabulary: a sentence of which some words are unknown is
embedded with <unk> in their place (training replaces random words by <unk>, so
the token means "some word") and the answer names them; a sentence with no known
word, no word at all, or more than T words is refused with InvalidParameter (422).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from service.bundle import Bundle, BundleError, GallerySpec, RetrievalInference
from service.errors import InvalidParameter, ServiceError
from service.images import stack
from service.indexes import GalleryIndex, IndexUnavailable, index_class
from service.pipelines.base import GraphContract, ImagePipeline
from service.runtime import OnnxGraph
from service.text import WordIndex, pad_ids

IMAGE_GRAPH = "image_encoder"
TEXT_GRAPH = "text_encoder"
GalleryKind = Literal["images", "captions"]
GALLERY_COLUMNS: dict[str, tuple[str, str]] = {"images": ("ids", "files"),
                                               "captions": ("texts", "image_ids")}
MAX_TOP_K = 100  # hits in one answer
MAX_SEARCH_DEPTH = 1000  # offset + top_k: how deep paging may reach


class NoGallery(ServiceError):
    """The model can embed but holds no gallery of the kind a search needs."""

    status, error_type = 409, "no_gallery"


@dataclass(frozen=True)
class TextQuery:
    ids: tuple[int, ...]
    unknown: tuple[str, ...] = ()  # words embedded as <unk>


@dataclass(frozen=True)
class Query:
    """One request: an image ([3, S, S] float32) or a sentence, and what it searches."""

    image: np.ndarray | None = None
    text: TextQuery | None = None
    search: GalleryKind | None = None
    top_k: int = 5
    offset: int = 0  # hits skipped before the top_k returned (paging)

    @property
    def depth(self) -> int:
        return self.offset + self.top_k


@dataclass
class Hit:
    index: int  # row of the gallery
    score: float  # cosine similarity
    entry: dict[str, Any]  # {"id", "file"} (images) or {"text", "image_id"} (captions)


@dataclass
class QueryResult:
    embedding: np.ndarray  # [E] float32, unit length
    hits: list[Hit] = field(default_factory=list)


@dataclass
class Gallery:
    """Unit-length embeddings [N, E], one entry per row, and the index that searches them.

    With an approximate index, `embeddings` is a memory map of the .npy file (read only
    where the index re-scores rows); exact search holds it in memory.
    """

    embeddings: np.ndarray
    entries: list[dict[str, Any]]
    index: GalleryIndex

    def __len__(self) -> int:
        return len(self.entries)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores [n, min(k, N)] of the best matches of each query, best first
        (an approximate index pads a row it could not fill with -1)."""
        return self.index.search(queries, k)


def load_gallery(bundle: Bundle, kind: str, spec: GallerySpec, dim: int) -> Gallery:
    """Read one gallery named by the manifest, and its index (BundleError says what is
    wrong)."""
    files = bundle.manifest.files
    keyed = [("embeddings", spec.embeddings), ("entries", spec.entries)]
    if spec.index.file is not None:
        keyed.append(("index", spec.index.file))
    for role, key in keyed:
        if key not in files:
            raise BundleError(bundle.path, f"gallery {kind!r}: {role} {key!r} is "
                              "not an entry of `files`")
    emb_file, entries_file = files[spec.embeddings].file, files[spec.entries].file
    exact = spec.index.kind == "exact"
    try:
        embeddings = np.load(bundle.path / emb_file, allow_pickle=False,
                             mmap_mode=None if exact else "r")
        columns = json.loads((bundle.path / entries_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(bundle.path, f"unreadable gallery: {exc}", emb_file) from None
    if embeddings.dtype != np.float32 or embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise BundleError(bundle.path, f"expected float32 [N, {dim}], got {embeddings.dtype} "
                          f"{list(embeddings.shape)}", emb_file)
    names = GALLERY_COLUMNS[kind]
    if not isinstance(columns, dict) or any(
            not isinstance(columns.get(n), list) or len(columns[n]) != len(embeddings)
            for n in names):
        raise BundleError(bundle.path, f"expected lists {list(names)} of {len(embeddings)} "
                          "entries", entries_file)
    keys = ("id", "file") if kind == "images" else ("text", "image_id")
    entries = [dict(zip(keys, values, strict=True))
               for values in zip(*(columns[n] for n in names), strict=True)]
    return Gallery(embeddings, entries, load_index(bundle, kind, spec, embeddings))


def load_index(bundle: Bundle, kind: str, spec: GallerySpec, embeddings: np.ndarray
               ) -> GalleryIndex:
    """The gallery's index as the manifest describes it (BundleError if it cannot be read,
    is not the gallery's, or FAISS is missing for an approximate one)."""
    index_file = bundle.manifest.files[spec.index.file].file if spec.index.file else None
    cls = index_class(spec.index.kind)
    try:
        params = cls.resolve_params(spec.index.params, len(embeddings), embeddings.shape[1])
        content = bundle.manifest.files[spec.embeddings].sha256[:12]
        index = cls.load(embeddings, bundle.path / index_file if index_file else None, params,
                         name=f"glimpse-{bundle.manifest.name}-{bundle.manifest.version}-"
                              f"{kind}-{content}")
    except (ValueError, IndexUnavailable) as exc:
        raise BundleError(bundle.path, f"gallery {kind!r}: {exc}", index_file) from None
    if len(index) != len(embeddings):
        raise BundleError(bundle.path, f"gallery {kind!r}: the index holds {len(index)} "
                          f"vectors, the gallery {len(embeddings)}", index_file)
    return index


class RetrievalModel(ImagePipeline[Query, QueryResult], task="retrieval"):
    """An image graph and a text graph into one joint space, with optional galleries."""

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        super().__init__(bundle, graphs)
        self.image_graph = graphs[IMAGE_GRAPH]
        self.text_graph = graphs[TEXT_GRAPH]
        inference = bundle.manifest.inference_as(RetrievalInference)
        self.dimensions = inference.embedding_dim
        self.text_length = inference.text_length
        self.words = self.read_file(self.tokenizer_file("word"), WordIndex.from_file)
        self.galleries: dict[str, Gallery] = {
            kind: load_gallery(bundle, kind, spec, self.dimensions)
            for kind, spec in inference.galleries.items()}

    def contract(self) -> dict[str, GraphContract]:
        return {IMAGE_GRAPH: GraphContract(inputs=frozenset({"image"}),
                                           outputs=frozenset({"embedding"})),
                TEXT_GRAPH: GraphContract(inputs=frozenset({"tokens", "lengths"}),
                                          outputs=frozenset({"embedding"}))}

    # ------------------------------------------------------------------ requests

    load_image = ImagePipeline.as_array  # the name `glimpse index` and evaluation know

    def text_query(self, text: str) -> TextQuery:
        """Ids of a sentence; InvalidParameter if it has no known word or too many words."""
        encoded = self.words.encode(text)
        if not encoded.words:
            raise InvalidParameter("text: no words (after lowercasing and removing "
                                   "punctuation)")
        if len(encoded.ids) > self.text_length:
            raise InvalidParameter(f"text: {len(encoded.ids)} words; model "
                                   f"{self.bundle.key} reads at most {self.text_length}")
        if len(encoded.unknown) == len(set(encoded.words)):
            raise InvalidParameter(f"text: no word is in the vocabulary of {self.bundle.key} "
                                   f"(unknown: {', '.join(encoded.unknown)})")
        return TextQuery(tuple(encoded.ids), tuple(encoded.unknown))

    def check_search(self, kind: GalleryKind, top_k: int, offset: int = 0) -> None:
        """NoGallery (409) without a gallery of `kind`, InvalidParameter for a bad top_k or
        offset."""
        if kind not in self.galleries:
            raise NoGallery(f"model {self.bundle.key} has no {kind} gallery; build one with "
                            f"`glimpse index {self.bundle.path} --data DIR` "
                            + ("or `--images FOLDER`" if kind == "images" else ""))
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidParameter(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        if offset < 0:
            raise InvalidParameter(f"offset must be at least 0, got {offset}")
        if offset + top_k > MAX_SEARCH_DEPTH:
            raise InvalidParameter(f"offset + top_k must be at most {MAX_SEARCH_DEPTH}, got "
                                   f"{offset} + {top_k}")

    # ------------------------------------------------------------------ inference

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """[n, E] embeddings of [3, S, S] image arrays."""
        if not images:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return self.image_graph.run({"image": stack(images)})["embedding"]

    def embed_texts(self, sentences: Sequence[Sequence[int]]) -> np.ndarray:
        """[n, E] embeddings of id sequences of 1..T ids each."""
        if not sentences:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        tokens = pad_ids(sentences, length=self.text_length, pad_id=0)
        lengths = np.array([len(s) for s in sentences], dtype=np.int64)
        return self.text_graph.run({"tokens": tokens, "lengths": lengths})["embedding"]

    def run_batch(self, queries: Sequence[Query]) -> list[QueryResult]:
        """Embed every query (images and texts each in one graph run), then search."""
        embeddings = np.zeros((len(queries), self.dimensions), dtype=np.float32)
        is_image = [q.image is not None for q in queries]
        picked = [i for i, flag in enumerate(is_image) if flag]
        embeddings[picked] = self.embed_images([queries[i].image for i in picked])
        picked = [i for i, flag in enumerate(is_image) if not flag]
        embeddings[picked] = self.embed_texts([queries[i].text.ids for i in picked])
        results = [QueryResult(embedding=e) for e in embeddings]
        for kind in GALLERY_COLUMNS:
            for depth in sorted({q.depth for q in queries if q.search == kind}):
                picked = [i for i, q in enumerate(queries)
                          if q.search == kind and q.depth == depth]
                for i in picked:
                    self.check_search(kind, queries[i].top_k, queries[i].offset)
                gallery = self.galleries[kind]
                rows, scores = gallery.search(embeddings[picked], depth)
                for n, i in enumerate(picked):
                    page = slice(queries[i].offset, depth)
                    results[i].hits = [Hit(int(r), float(s), gallery.entries[r])
                                       for r, s in zip(rows[n, page], scores[n, page],
                                                       strict=True) if r >= 0]
        return results

    def warm_up_batches(self, size: int) -> list[list[Query]]:
        """Both graphs, and every gallery."""
        image, text = self.blank_image(), TextQuery((self.words.UNK_ID,))
        return [[Query(image=image, search="captions" if "captions" in self.galleries
                       else None)] * size,
                [Query(text=text, search="images" if "images" in self.galleries
                       else None)] * size]
