"""`glimpse eval alignment`: retrieval and noun-phrase alignment of an alignment bundle.

The bundle's image and text graphs run through the service's own pipeline
(service.pipelines.alignment), and the vectors they give are measured as the task's
validation measures the PyTorch model (training.metrics.alignment).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from service.pipelines.alignment import AlignmentModel as AlignmentPipeline
from training.data.images import load_images
from training.evaluate import record_metrics
from training.metrics.alignment import ValidationSet, evaluate_vectors


def evaluate_bundle(path: str | Path, data: str | Path, *, split: str = "test",
                    betas: tuple[float, ...] = (0.0, 1.0, 4.0), batch_size: int = 250,
                    limit: int | None = None) -> dict:
    """Retrieval and alignment of an exported bundle through the service's pipeline."""
    model = AlignmentPipeline.from_bundle(path)
    dataset = ValidationSet.load(Path(data), None, split, limit=limit)
    t0 = time.perf_counter()
    parts = []
    for start in range(0, len(dataset.images), batch_size):
        chunk = load_images(Path(data), dataset.images[start:start + batch_size],
                            model.image_size).float().div_(255).numpy()
        parts.append(model.encode_images(chunk))
    boxes, mask, regions = (np.concatenate([p[k] for p in parts])
                            for k in ("boxes", "region_mask", "region_vectors"))
    dataset.boxes = boxes
    # Reference words the bundle does not know count as <unk> here instead of refusing.
    ids = [model.words.encode(" ".join(t)).ids[:model.max_words] for t in dataset.token_lists]
    words, lengths = zip(*(model.encode_texts(ids[s:s + batch_size])
                           for s in range(0, len(ids), batch_size)), strict=True)
    words, lengths = np.concatenate(words), np.concatenate(lengths)
    encode_seconds = time.perf_counter() - t0
    result = evaluate_vectors(dataset, regions, mask, words, lengths, betas)
    return {"bundle": str(path), "split": split, "n_images": len(dataset.images),
            "n_captions": len(ids), **result["retrieval"], "alignment": result["alignment"],
            "noun_phrases": result["noun_phrases"], "proposal_bound": result["proposal_bound"],
            "encode_seconds": round(encode_seconds, 1)}


def eval_alignment(args: argparse.Namespace) -> int:
    """`glimpse eval alignment`: prints the metrics; --write-manifest records them."""
    metrics = evaluate_bundle(args.path, args.data, split=args.split, betas=tuple(args.betas),
                              limit=args.limit)
    if args.write_manifest:
        record_metrics(args.path, metrics, at=(metrics["split"],))
    print(json.dumps(metrics, indent=2))
    return 0
