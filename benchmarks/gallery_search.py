"""Exact gallery search: how its latency grows with the gallery, at batch 1 and 16.

The service's own search (`service.indexes.top_k_search`: one matrix product
of the query embeddings with the gallery, then argpartition top-k) over
galleries of random unit vectors of the bundle's width E. The matrix product is
timed apart from the top-k selection, so the table says which one grows. Writes
benchmarks/results/gallery_search.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gallery_search.py \
        --bundle model_repository/retrieval-vse/2

With `--indexes`, it compares the approximate indexes of `service.indexes` with exact
search instead (recall@10, single-query p50, memory, build time) and writes
benchmarks/results/gallery_index.{json,md}:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/gallery_search.py \
        --bundle model_repository/retrieval-vse/2 --sizes 1000000 \
        --indexes hnsw ivfpq --data model random
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from service.indexes import ExactIndex, index_class, top_k_search

RESULTS = Path(__file__).parent / "results"


def unit_vectors(n: int, dim: int, rng: np.random.Generator, chunk: int = 100_000
                 ) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(gallery: np.ndarray, batch: int, k: int, repeats: int,
            rng: np.random.Generator) -> dict:
    queries = unit_vectors(batch, gallery.shape[1], rng)
    search = best_of(lambda: top_k_search(queries, gallery, k), repeats)
    product = best_of(lambda: queries @ gallery.T, repeats)
    return {"gallery": len(gallery), "batch": batch, "top_k": k,
            "search_ms": round(search * 1e3, 3), "matmul_ms": round(product * 1e3, 3),
            "per_query_ms": round(search * 1e3 / batch, 3),
            "gallery_mb": round(gallery.nbytes / 2**20, 1)}


def markdown(rows: list[dict], setup: dict) -> str:
    lines = [f"# Exact gallery search (CPU, {setup['threads']} BLAS thread(s))", "",
             f"Random unit vectors, E = {setup['dim']}, top-{setup['top_k']}, best of "
             f"{setup['repeats']}; {setup['machine']}, numpy {setup['numpy']}.", "",
             "| gallery | MB | batch | search ms | of which matmul ms | ms per query |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['gallery']:,} | {r['gallery_mb']} | {r['batch']} | {r['search_ms']} | "
              f"{r['matmul_ms']} | {r['per_query_ms']} |" for r in rows]
    lines += ["", "Growth of the search time from one gallery size to the next:", ""]
    for batch in sorted({r["batch"] for r in rows}):
        sized = [r for r in rows if r["batch"] == batch]
        steps = [f"{b['gallery'] / a['gallery']:g}x gallery -> "
                 f"{b['search_ms'] / a['search_ms']:.1f}x time"
                 for a, b in zip(sized, sized[1:], strict=False)]
        lines.append(f"- batch {batch}: " + "; ".join(steps))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, help="take E from this retrieval bundle")
    p.add_argument("--dim", type=int, default=128, help="E when no bundle is given")
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None,
                   help="default: results/gallery_search, or results/gallery_index")
    p.add_argument("--indexes", nargs="+", choices=["hnsw", "ivfpq", "qdrant"], default=None,
                   help="compare these approximate indexes with exact search")
    p.add_argument("--data", nargs="+", choices=["random", "model"], default=["random"],
                   help="with --indexes: the vector distributions (model needs --bundle)")
    p.add_argument("--queries", type=int, default=200, help="with --indexes")
    p.add_argument("--hnsw", default='{"M": 32, "ef_construction": 100}',
                   help="JSON build parameters of hnsw")
    p.add_argument("--ivfpq", default='{"m": 32}', help="JSON build parameters of ivfpq")
    p.add_argument("--qdrant", default="{}", help="JSON parameters of qdrant")
    p.add_argument("--sweep-hnsw", default='[{"ef_search": 32}, {"ef_search": 64}, '
                   '{"ef_search": 128}, {"ef_search": 256}, {"ef_search": 512}]',
                   help="JSON list of search parameters tried on one hnsw build")
    p.add_argument("--sweep-ivfpq", default='[{"nprobe": 8, "refine": 10}, '
                   '{"nprobe": 16, "refine": 10}, {"nprobe": 32, "refine": 10}, '
                   '{"nprobe": 64, "refine": 10}, {"nprobe": 128, "refine": 10}, '
                   '{"nprobe": 32, "refine": 1}]',
                   help="JSON list of search parameters tried on one ivfpq build")
    args = p.parse_args()
    if args.indexes:
        compare_indexes(args)
        return
    args.out = args.out or RESULTS / "gallery_search"

    dim = args.dim
    if args.bundle:
        manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
        dim = int(manifest["inference"]["embedding_dim"])
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        gallery = unit_vectors(size, dim, rng)
        for batch in args.batches:
            rows.append(measure(gallery, batch, args.top_k, args.repeats, rng))
            print(json.dumps(rows[-1]))
        del gallery
    setup = {"dim": dim, "top_k": args.top_k, "repeats": args.repeats,
             "threads": os.environ.get("OMP_NUM_THREADS", "default"),
             "machine": platform.machine(), "numpy": np.__version__,
             "bundle": args.bundle}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows},
                                                        indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, setup))


# ---------------------------------------------------------------------------- indexes
# Approximate gallery indexes against exact search: recall@10, latency, memory, build time.
#
# `python benchmarks/gallery_search.py --indexes ...` runs this comparison (see there). For
# each gallery size and each vector distribution, it builds every index kind of
# `service.indexes` with the parameters given, searches 200 held-out queries one at a time,
# and reports recall@10 against the exact top 10, the median single-query latency, the
# memory the index holds (the index file, which FAISS reads whole; exact: the float32
# matrix) and the build time. Each search parameter of a kind is swept on one build.
#
# Distributions: `random`, unit vectors drawn uniformly on the sphere (the worst case for
# every approximate index: all distances nearly equal, no structure to exploit); `model`,
# unit vectors drawn from a Gaussian with the mean and covariance of a retrieval bundle's own
# gallery embeddings (images and sentences together), which have ~14 effective dimensions
# out of 128, like the embeddings the service actually searches.

RECALL_AT = 10


def model_like(n: int, dim: int, bundle: Path, rng: np.random.Generator,
               chunk: int = 100_000) -> np.ndarray:
    """Unit vectors shaped like the bundle's gallery embeddings (same mean and covariance)."""
    stored = np.concatenate([np.load(f) for f in sorted(bundle.glob("gallery_*.npy"))])
    mean, cov = stored.mean(0), np.cov(stored, rowvar=False)
    root = np.linalg.cholesky(cov + 1e-6 * np.eye(dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32) @ root.T
        block += mean
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    return np.concatenate([top_k_search(queries[i:i + 20], gallery, k)[0]
                           for i in range(0, len(queries), 20)])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1]
                          for f, t in zip(found, truth, strict=True)]))


def single_query_ms(index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Median latency of one-query searches, and what they found."""
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        rows, _ = index.search(q[None], k)
        times.append(time.perf_counter() - start)
        found.append(rows[0])
    return float(np.median(times) * 1e3), np.stack(found)


def compare(gallery: np.ndarray, queries: np.ndarray, kinds: dict[str, dict],
            sweeps: dict[str, list[dict]], workdir: Path) -> list[dict]:
    """One row per (kind, search parameters): recall@10, p50 ms, memory MB, build s."""
    truth = exact_top(queries, gallery, RECALL_AT)
    exact = ExactIndex(gallery)
    exact_ms, found = single_query_ms(exact, queries, RECALL_AT)
    base = {"gallery": len(gallery), "exact_p50_ms": round(exact_ms, 3),
            "exact_mb": round(gallery.nbytes / 2**20, 1)}
    rows = [{**base, "kind": "exact", "params": {}, "recall_at_10": recall(found, truth),
             "p50_ms": round(exact_ms, 3), "memory_mb": base["exact_mb"], "build_s": 0.0}]
    print(json.dumps(rows[-1]), flush=True)
    for kind, given in kinds.items():
        cls = index_class(kind)
        params = cls.resolve_params(given, len(gallery), gallery.shape[1])
        path = workdir / f"bench.{kind}.faiss"
        start = time.perf_counter()
        if cls.needs_file:
            cls.build(gallery, params, path)
        index = cls.load(gallery, path, params, name=f"bench-{len(gallery)}")
        build_s = time.perf_counter() - start  # qdrant: the upload into its collection
        # what the process holds: the index file, which FAISS reads whole (qdrant: not
        # measured; embedded, it is qdrant-client's own copy of the vectors)
        memory_mb = path.stat().st_size / 2**20 if cls.needs_file else None
        for override in sweeps.get(kind) or [{}]:
            index.params = {**params, **override}
            ms, found = single_query_ms(index, queries, RECALL_AT)
            rows.append({**base, "kind": kind, "params": dict(index.params),
                         "recall_at_10": round(recall(found, truth), 4), "p50_ms": round(ms, 3),
                         "speedup": round(exact_ms / ms, 1),
                         "memory_mb": None if memory_mb is None else round(memory_mb, 1),
                         "memory_ratio": (None if memory_mb is None
                                          else round(memory_mb / base["exact_mb"], 3)),
                         "build_s": round(build_s, 1)})
            print(json.dumps(rows[-1]), flush=True)
        del index
        path.unlink(missing_ok=True)
    return rows


def index_markdown(rows: list[dict], setup: dict) -> str:
    lines = ["# Gallery indexes against exact search", "",
             f"E = {setup['dim']}, recall@{RECALL_AT} of {setup['queries']} held-out queries "
             f"against the exact top {RECALL_AT}, p50 of one-query searches; "
             f"{setup['machine']}, {setup['cpus']} CPUs, FAISS {setup['faiss']}, "
             f"{setup['threads']} thread(s).", "",
             "| vectors | gallery | kind | parameters | recall@10 | p50 ms | vs exact | "
             "memory MB | of exact | build s |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['data']} | {r['gallery']:,} | {r['kind']} | {params} | "
                     f"{r['recall_at_10']:.3f} | {r['p50_ms']} | {r.get('speedup', 1.0)}x | "
                     f"{r['memory_mb'] or '–'} | {r.get('memory_ratio', 1.0) or '–'} | "
                     f"{r['build_s']} |")
    return "\n".join(lines) + "\n"


def compare_indexes(args: argparse.Namespace) -> None:
    import tempfile

    import faiss

    dim = args.dim
    if args.bundle:
        manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
        dim = int(manifest["inference"]["embedding_dim"])
    kinds = {kind: json.loads(getattr(args, kind)) for kind in args.indexes}
    sweeps = {kind: json.loads(getattr(args, f"sweep_{kind}", "[{}]")) for kind in args.indexes}
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for data in args.data:
            for size in args.sizes:
                rng = np.random.default_rng(0)
                if data == "model":
                    if not args.bundle:
                        raise SystemExit("--data model needs --bundle")
                    vectors = model_like(size + args.queries, dim, Path(args.bundle), rng)
                else:
                    vectors = unit_vectors(size + args.queries, dim, rng)
                gallery, queries = vectors[:size], vectors[size:]
                for row in compare(gallery, queries, kinds, sweeps, Path(workdir)):
                    rows.append({"data": data, **row})
                del vectors, gallery
    setup = {"dim": dim, "queries": args.queries, "machine": platform.machine(),
             "cpus": os.cpu_count(), "faiss": faiss.__version__,
             "threads": os.environ.get("OMP_NUM_THREADS", "default"),
             "bundle": args.bundle, "build": kinds}
    out = args.out or RESULTS / "gallery_index"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows},
                                                   indent=2) + "\n")
    out.with_suffix(".md").write_text(index_markdown(rows, setup))


if __name__ == "__main__":
    main()
