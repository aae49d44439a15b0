"""Gallery indexes: how a retrieval gallery is searched, chosen per gallery in the manifest.

A gallery's `index` (service.bundle.IndexSpec) names one of INDEX_KINDS:

- `exact` (the default): every stored vector is scored with one matrix product and the
  best k are picked by a partial sort (`top_k_search`). Right up to ~100k vectors
  (a few ms per query); it holds the float32 gallery in memory (E * 4 bytes a vector).
- `hnsw`: FAISS `IndexHNSWFlat`, a navigable small-world graph over the float32 vectors
  (inner product). Search walks the graph from an entry point keeping the `ef_search`
  best candidates; latency grows with log N. It holds the vectors plus ~2 * M neighbour
  ids each, so it trades memory for speed.
- `ivfpq`: FAISS `IndexIVFPQ`: the vectors are split into `nlist` lists by k-means, and
  each is stored as `m` bytes of product-quantisation codes. Search visits the `nprobe`
  lists nearest the query and ranks their codes; the `refine` * k best candidates are
  then re-scored exactly with the gallery's .npy, read through a memory map (only those
  rows are touched), so the scores returned are exact cosines. It holds m + 8 bytes a
  vector, a fraction of exact search's memory.

- `qdrant`: the Qdrant vector database. The bundle holds no index file: at load the
  gallery's vectors are uploaded to a collection named after the bundle, the gallery and
  its embeddings' sha256 (kept if a server already holds it with every point), and
  searched there. With `GLIMPSE_QDRANT_URL` (a server, e.g. its container image) the
  collection is an HNSW index of `hnsw_m` links, built with `ef_construct` and searched
  with `hnsw_ef`; without it, qdrant-client's embedded local mode keeps the collection
  in the process and searches it exactly (tests, small galleries).

FAISS is a maintained library (Meta's, used by most vector databases for exactly
these two index types), reads and writes its indexes as single files and releases
the GIL while searching; it is imported only when a gallery uses an approximate index,
so a service whose galleries are all exact runs without it; qdrant-client (the
`vectordb` extra) likewise only for `qdrant`.

Every kind answers `search(queries, k)` like `top_k_search`: rows and scores [n, k'] with
k' = min(k, N), best first, ties by row; an approximate index may find fewer than k' for a
query, and then pads the row with -1 (score -inf). A query's answer depends only on the
query and k, never on the other queries searched with it.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

INDEX_KINDS: dict[str, type[GalleryIndex]] = {}
BUILD_CHUNK = 20_000  # vectors added per step of the progress bar


class IndexUnavailable(RuntimeError):
    """An approximate index was asked for, and FAISS is not installed."""


QDRANT = {"url": None}  # where `qdrant` galleries live: a server URL, or None (embedded)


def use_qdrant(url: str | None) -> None:
    """Search `qdrant` galleries on the server at `url` (None: embedded local mode)."""
    QDRANT["url"] = url


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError:
        raise IndexUnavailable("approximate gallery indexes (hnsw, ivfpq) need faiss-cpu: "
                               "pip install 'glimpse[serve]'") from None
    return faiss


def top_k_search(queries: np.ndarray, gallery: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact search: scores = queries @ gallery.T, then the top k of each row.

    A partition finds the k-th best score in O(N) per query; only the rows scoring at
    least that are sorted (ties by row), so the cost beyond the matrix product does not
    grow with N log N. Every row tied with the k-th is a candidate, so which of them
    make the cut is decided by row, not by the partition: the k best do not depend on k,
    and a query batched with a larger top_k gets the hits it gets alone. (Galleries of
    templated captions hold many identical sentences, hence many exact ties.)
    """
    scores = queries @ gallery.T  # (n, N)
    n, N = scores.shape
    k = min(k, N)
    rows = np.empty((n, k), dtype=np.int64)
    for i, row_scores in enumerate(scores):
        kth_best = np.partition(row_scores, N - k)[N - k]
        candidates = np.flatnonzero(row_scores >= kth_best)
        order = np.lexsort((candidates, -row_scores[candidates]))[:k]
        rows[i] = candidates[order]
    return rows, np.take_along_axis(scores, rows, axis=1)


def rank_candidates(rows: np.ndarray, scores: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each query's candidates (-1: none), best first, ties by row."""
    n = len(rows)
    out_rows = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    for i in range(n):
        found = rows[i] >= 0
        r, s = rows[i][found], scores[i][found]
        order = np.lexsort((r, -s))[:k]
        out_rows[i, :len(order)], out_scores[i, :len(order)] = r[order], s[order]
    return out_rows, out_scores


class GalleryIndex(ABC):
    """One way of searching a gallery's unit vectors; subclasses register a `kind` (a
    shared base of several kinds passes none)."""

    kind: ClassVar[str]
    defaults: ClassVar[dict[str, int]] = {}
    needs_file: ClassVar[bool] = True

    def __init_subclass__(cls, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.kind = kind
            INDEX_KINDS[kind] = cls

    def __init__(self, count: int, params: dict[str, int]) -> None:
        self.count = count
        self.params = params

    def __len__(self) -> int:
        return self.count

    @classmethod
    def resolve_params(cls, given: Mapping[str, int], count: int, dim: int) -> dict[str, int]:
        """The parameters to build with: the defaults, overridden by `given`, fitted to the
        gallery (N vectors of width E). ValueError names an unknown or invalid parameter."""
        unknown = sorted(set(given) - set(cls.defaults))
        if unknown:
            raise ValueError(f"index {cls.kind!r} has no parameter {', '.join(unknown)} "
                             f"(it takes {', '.join(sorted(cls.defaults)) or 'none'})")
        params = {**cls.defaults, **given}
        for name, value in params.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"index {cls.kind!r}: {name} must be a positive integer, "
                                 f"got {value!r}")
        return params

    @classmethod
    def build(cls, embeddings: np.ndarray, params: dict[str, int], path: Path, *,
              progress: bool = True) -> None:
        """Write the index of `embeddings` [N, E] (unit rows) to `path` (the kinds that
        keep a file; `needs_file`)."""
        raise TypeError(f"index {cls.kind!r} keeps no file to build")

    @classmethod
    @abstractmethod
    def load(cls, embeddings: np.ndarray, path: Path | None, params: dict[str, int], *,
             name: str = "gallery") -> GalleryIndex:
        """The index over `embeddings` (memory-mapped for the approximate kinds); `name`
        identifies the gallery and its content (a vector database's collection)."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) [Q, k] of each query's best k, ties ranked by row."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes the index holds in memory (the memory-mapped gallery not counted)."""


class ExactIndex(GalleryIndex, kind="exact"):
    needs_file = False

    def __init__(self, embeddings: np.ndarray) -> None:
        super().__init__(len(embeddings), {})
        self.embeddings = np.ascontiguousarray(embeddings)  # read into memory

    @classmethod
    def load(cls, embeddings: np.ndarray, path: Path | None, params: dict[str, int], *,
             name: str = "gallery") -> ExactIndex:
        return cls(embeddings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return top_k_search(queries, self.embeddings, k)

    def memory_bytes(self) -> int:
        return int(self.embeddings.nbytes)


class FaissIndex(GalleryIndex):
    """What the FAISS kinds share: the file, the search, the memory held."""

    def __init__(self, index: Any, params: dict[str, int]) -> None:
        super().__init__(int(index.ntotal), params)
        self.index = index

    @classmethod
    def write(cls, index: Any, path: Path) -> None:
        faiss_module().write_index(index, str(path))

    @classmethod
    def read(cls, path: Path) -> Any:
        faiss = faiss_module()
        try:
            return faiss.read_index(str(path))
        except RuntimeError as exc:  # FAISS's own message names what it could not parse
            raise ValueError(f"not a readable FAISS index: {str(exc).splitlines()[0]}") from None

    @staticmethod
    def add_in_chunks(index: Any, embeddings: np.ndarray, progress: bool, desc: str) -> None:
        for start in tqdm(range(0, len(embeddings), BUILD_CHUNK), disable=not progress,
                          desc=desc, unit="chunk"):
            index.add(np.ascontiguousarray(embeddings[start:start + BUILD_CHUNK],
                                           dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.count)
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k,
                                         params=self.search_parameters(k))
        return rank_candidates(rows, scores, k)

    @abstractmethod
    def search_parameters(self, k: int) -> Any:
        """The FAISS search parameters of this kind for a search of depth k."""

    def memory_bytes(self) -> int:
        return int(faiss_module().serialize_index(self.index).nbytes)



class HnswIndex(FaissIndex, kind="hnsw"):
    """FAISS IndexHNSWFlat over inner products. M: neighbours per node (memory and recall
    grow with it); ef_construction: candidates kept while linking a node (build time);
    ef_search: candidates kept while searching (latency and recall; at least k)."""

    defaults: ClassVar[dict[str, int]] = {"M": 32, "ef_construction": 100, "ef_search": 128}

    @classmethod
    def build(cls, embeddings: np.ndarray, params: dict[str, int], path: Path, *,
              progress: bool = True) -> None:
        faiss = faiss_module()
        index = faiss.IndexHNSWFlat(embeddings.shape[1], params["M"],
                                    faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        cls.add_in_chunks(index, embeddings, progress, "hnsw")
        cls.write(index, path)

    @classmethod
    def load(cls, embeddings: np.ndarray, path: Path | None, params: dict[str, int], *,
             name: str = "gallery") -> HnswIndex:
        return cls(cls.read(path), params)

    def search_parameters(self, k: int) -> Any:
        return faiss_module().SearchParametersHNSW(efSearch=max(self.params["ef_search"], k))


class IvfPqIndex(FaissIndex, kind="ivfpq"):
    """FAISS IndexIVFPQ over inner products, re-scored exactly. nlist: k-means lists
    (default ~sqrt(N), a power of 2); m: code bytes a vector (divides E); nbits: bits per code
    (8 unless the gallery is too small to train 256 centroids); nprobe: lists searched;
    refine: candidates re-scored exactly, as a multiple of k (1: none)."""

    defaults: ClassVar[dict[str, int]] = {"nlist": 0, "m": 0, "nbits": 8, "nprobe": 64,
                                          "refine": 10}

    @classmethod
    def resolve_params(cls, given: Mapping[str, int], count: int, dim: int) -> dict[str, int]:
        auto = {"nlist": 2 ** round(math.log2(math.sqrt(max(count, 1)))), "m": dim // 4}
        params = super().resolve_params({**auto, **given}, count, dim)
        if dim % params["m"]:
            raise ValueError(f"index 'ivfpq': m = {params['m']} does not divide E = {dim}")
        # k-means wants ~39 training vectors per centroid; fewer lists on a small gallery
        params["nlist"] = max(1, min(params["nlist"], count // 39))
        params["nbits"] = max(1, min(params["nbits"], int(math.log2(max(count, 2)))))
        params["nprobe"] = min(params["nprobe"], params["nlist"])
        return params

    @classmethod
    def build(cls, embeddings: np.ndarray, params: dict[str, int], path: Path, *,
              progress: bool = True) -> None:
        faiss = faiss_module()
        dim = embeddings.shape[1]
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], params["nbits"],
                                 faiss.METRIC_INNER_PRODUCT)
        # k-means and the PQ codebooks learn from a sample: 64 vectors per list is plenty
        sample = max(params["nlist"] * 64, 2 ** params["nbits"] * 64)
        rows = np.random.default_rng(0).permutation(len(embeddings))[:sample]
        if progress:
            log.info("ivfpq: training on %s vectors", f"{len(rows):,}")
        index.train(np.ascontiguousarray(embeddings[np.sort(rows)], dtype=np.float32))
        cls.add_in_chunks(index, embeddings, progress, "ivfpq")
        cls.write(index, path)

    @classmethod
    def load(cls, embeddings: np.ndarray, path: Path | None, params: dict[str, int], *,
             name: str = "gallery") -> IvfPqIndex:
        return cls(cls.read(path), params, embeddings)

    def __init__(self, index: Any, params: dict[str, int], embeddings: np.ndarray) -> None:
        super().__init__(index, params)
        self.embeddings = embeddings  # memory-mapped: only the re-scored rows are read

    def search_parameters(self, k: int) -> Any:
        return faiss_module().SearchParametersIVF(nprobe=self.params["nprobe"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.count)
        depth = min(k * self.params["refine"], self.count)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self.index.search(queries, depth, params=self.search_parameters(depth))
        if self.params["refine"] > 1:
            for i, query in enumerate(queries):
                found = rows[i] >= 0
                picked = rows[i][found]
                order = np.argsort(picked)  # rows in file order: fewer pages touched
                exact = np.empty(len(picked), dtype=np.float32)
                exact[order] = self.embeddings[picked[order]] @ query
                scores[i][found] = exact
        return rank_candidates(rows, scores, k)


class QdrantIndex(GalleryIndex, kind="qdrant"):
    """A Qdrant collection of the gallery's vectors (dot product), point id = gallery row.
    hnsw_m, ef_construct: the server's HNSW graph; hnsw_ef: candidates kept while
    searching (at least k). The embedded local mode searches exactly and ignores them."""

    defaults: ClassVar[dict[str, int]] = {"hnsw_m": 16, "ef_construct": 100, "hnsw_ef": 128}
    needs_file = False
    upload_batch = 1024

    def __init__(self, client: Any, collection: str, count: int, params: dict[str, int],
                 embedded: bool) -> None:
        super().__init__(count, params)
        self.client, self.collection, self.embedded = client, collection, embedded

    @staticmethod
    def client_module() -> Any:
        try:
            import qdrant_client
        except ImportError:
            raise IndexUnavailable("qdrant galleries need qdrant-client: "
                                   "pip install 'glimpse[vectordb]'") from None
        return qdrant_client

    @classmethod
    def load(cls, embeddings: np.ndarray, path: Path | None, params: dict[str, int], *,
             name: str = "gallery") -> QdrantIndex:
        qdrant_client = cls.client_module()
        models = qdrant_client.models
        url = QDRANT["url"]
        try:
            client = (qdrant_client.QdrantClient(url=url) if url
                      else qdrant_client.QdrantClient(location=":memory:"))
            if (client.collection_exists(name)
                    and client.count(name, exact=True).count == len(embeddings)):
                return cls(client, name, len(embeddings), params, embedded=not url)
            if client.collection_exists(name):
                client.delete_collection(name)
            client.create_collection(
                name, vectors_config=models.VectorParams(size=embeddings.shape[1],
                                                         distance=models.Distance.DOT),
                hnsw_config=models.HnswConfigDiff(m=params["hnsw_m"],
                                                  ef_construct=params["ef_construct"]))
            for start in range(0, len(embeddings), cls.upload_batch):
                block = np.asarray(embeddings[start:start + cls.upload_batch])
                client.upsert(name, points=models.Batch(
                    ids=list(range(start, start + len(block))), vectors=block.tolist()),
                    wait=True)
        except Exception as exc:  # the client's own errors: connection, server answers
            raise ValueError(f"qdrant at {url or 'embedded local mode'}: {exc}") from None
        return cls(client, name, len(embeddings), params, embedded=not url)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        models = self.client_module().models
        k = min(k, self.count)
        params = (None if self.embedded
                  else models.SearchParams(hnsw_ef=max(self.params["hnsw_ef"], k)))
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for i, query in enumerate(queries):
            points = self.client.query_points(self.collection, query=query.tolist(), limit=k,
                                              search_params=params, with_payload=False).points
            rows[i, :len(points)] = [p.id for p in points]
            scores[i, :len(points)] = [p.score for p in points]
        return rank_candidates(rows, scores, k)

    def memory_bytes(self) -> int:
        return 0  # held by the server (or, embedded, by qdrant-client's own structures)


def index_class(kind: str) -> type[GalleryIndex]:
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r} (one of {', '.join(INDEX_KINDS)})")
    return INDEX_KINDS[kind]
