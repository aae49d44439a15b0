"""`glimpse eval retrieval`: recall of a retrieval bundle on a dataset split.

A split's images and all of their sentences are embedded through the bundle
with the service's own pipeline, as `glimpse index` embeds a gallery
(training.index), and ranked against each other (training.metrics.retrieval).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from service.pipelines.retrieval import RetrievalModel
from training.evaluate import record_metrics
from training.index import embed_split
from training.metrics.retrieval import retrieval_metrics


def evaluate_retrieval(bundle_dir: str | Path, dataset_dir: str | Path, split: str = "test",
                       *, batch_size: int = 64, progress: bool = True) -> dict:
    """R@1/5/10, median and mean rank of both directions and rsum on a split's images
    and all of their sentences (training.metrics.retrieval), through the bundle."""
    model = RetrievalModel.from_bundle(bundle_dir)
    started = time.perf_counter()
    images, image_emb, sentence_emb = embed_split(model, Path(dataset_dir), split,
                                                  batch_size=batch_size, progress=progress)
    image_of_sentence = np.array([i for i, im in enumerate(images) for _ in im.captions])
    metrics = retrieval_metrics(image_emb @ sentence_emb.T, image_of_sentence)
    return {**{k: round(v, 2) for k, v in metrics.items()}, "bundle": model.bundle.key,
            "split": split, "images": len(images), "sentences": len(sentence_emb),
            "seconds": round(time.perf_counter() - started, 1)}


def eval_retrieval(args: argparse.Namespace) -> int:
    """`glimpse eval retrieval`: prints the metrics; --write-manifest records them (without
    the timing) under metrics[split]."""
    result = evaluate_retrieval(args.path, args.data, args.split, batch_size=args.batch_size)
    if args.write_manifest:
        record_metrics(args.path, {k: v for k, v in result.items() if k != "seconds"},
                       at=(result["split"],))
    print(json.dumps(result, indent=2))
    return 0
