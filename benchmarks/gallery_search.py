"""Exact gallery search: how its latency grows with the gallery, at batch 1 and 16.

The service's own search (`service.pipelines.retrieval.top_k_search`: one matrix product
of the query embeddings with the gallery, then argpartition top-k) over
galleries of random unit vectors of the bundle's width E. The matrix product is
timed apart from the top-k selection, so the table says which one grows. Writes
benchmarks/results/gallery_search.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gallery_search.py \
        --bundle model_repository/retrieval-vse/2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from service.pipelines.retrieval import top_k_search

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
    p.add_argument("--out", type=Path, default=RESULTS / "gallery_search")
    args = p.parse_args()

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


if __name__ == "__main__":
    main()
