"""`glimpse eval activity`: activity accuracy of a bundle through the service's pipeline.

Every clip file of a split is decoded, sampled and classified exactly as
/v1/videos/activities does it (`service.pipelines.activity.ActivityModel`), so the
published numbers are the numbers users get. Reported per split:

- accuracy: the clip's label is the top class of the fused distribution;
- accuracy of each stream alone (a fusion bundle's RGB and motion streams, from the
  same run), per class accuracy and the confusion matrix;
- pair accuracy on the activities one frame cannot tell apart (clip_world.SINGLE_FRAME_PAIRS:
  left / right, up / down, grow / shrink, appear / vanish): over the clips of a pair,
  how often the right one of the two scores higher. Chance is 0.5, which is where a
  single-frame model must sit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from service.pipelines.activity import ActivityModel
from training.data.clip_world import SINGLE_FRAME_PAIRS
from training.data.clips import read_clip
from training.data.readers import load_activity_split
from training.evaluate import record_metrics


def split_probs(model: ActivityModel, dataset_dir: Path, split: str, *, batch_size: int = 32,
                limit: int | None = None, progress: bool = True
                ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, float]:
    """Fused (N, C) and per-stream clip distributions of a split's clips, their labels, and
    the seconds spent in the pipeline."""
    videos = load_activity_split(dataset_dir / "splits", split)[:limit]
    if not videos:
        raise ValueError(f"{dataset_dir}: split {split!r} has no clips")
    fused, streams, seconds = [], {}, 0.0
    for start in tqdm(range(0, len(videos), batch_size), disable=not progress,
                      desc=f"{split}", unit="batch"):
        chunk = videos[start:start + batch_size]
        requests = [model.request(read_clip(dataset_dir / "clips" / v.path), top_k=1)
                    for v in chunk]
        t0 = time.perf_counter()
        results = model.run_batch(requests)
        seconds += time.perf_counter() - t0
        fused += [r.probs for r in results]
        for r in results:
            for name, probs in r.stream_probs.items():
                streams.setdefault(name, []).append(probs)
    labels = np.array([v.label for v in videos])
    return (np.stack(fused), {k: np.stack(v) for k, v in streams.items()}, labels, seconds)


def pair_accuracy(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """For each single-frame pair (a, b): over clips labelled a or b, the share whose own
    class scores higher than the other; and their mean."""
    out = {}
    for a, b in SINGLE_FRAME_PAIRS:
        if a not in classes or b not in classes:
            continue
        ia, ib = classes.index(a), classes.index(b)
        rows = np.isin(labels, [ia, ib])
        if not rows.any():
            continue
        own = np.where(labels[rows] == ia, probs[rows, ia], probs[rows, ib])
        other = np.where(labels[rows] == ia, probs[rows, ib], probs[rows, ia])
        out[f"{a}/{b}"] = float((own > other).mean())
    if out:
        out["mean"] = float(np.mean(list(out.values())))
    return out


def activity_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {name: float(confusion[i, i] / confusion[i].sum())
                 for i, name in enumerate(classes) if confusion[i].sum()}
    return {"accuracy": float((predicted == labels).mean()), "per_class": per_class,
            "single_frame_pairs": pair_accuracy(probs, labels, classes),
            "confusion": confusion.tolist()}


def evaluate_activity(path: str | Path, dataset_dir: str | Path, split: str = "test", *,
                      batch_size: int = 32, limit: int | None = None,
                      progress: bool = True) -> dict:
    """Metrics of the bundle on a split (see the module docstring)."""
    model = ActivityModel.from_bundle(path)
    fused, streams, labels, seconds = split_probs(model, Path(dataset_dir), split,
                                                  batch_size=batch_size, limit=limit,
                                                  progress=progress)
    metrics = activity_metrics(fused, labels, model.classes)
    if len(streams) > 1:
        metrics["streams"] = {name: {k: v for k, v in activity_metrics(p, labels, model.classes)
                                     .items() if k != "confusion"}
                              for name, p in streams.items()}
    metrics.update({"bundle": model.bundle.key, "split": split, "n_clips": int(len(labels)),
                    "classes": model.classes,
                    "clips_per_second": round(len(labels) / seconds, 1)})
    return metrics


def eval_activity(args: argparse.Namespace) -> int:
    """`glimpse eval activity`: prints the metrics of each split; --write-manifest records
    them under metrics[split]."""
    out = {}
    for split in args.splits:
        metrics = evaluate_activity(args.path, args.data, split, batch_size=args.batch_size,
                                    limit=args.limit)
        if args.write_manifest:
            record_metrics(args.path, {k: v for k, v in metrics.items() if k != "classes"},
                           at=(split,))
        out[split] = metrics
    print(json.dumps(out, indent=2))
    return 0
