"""`glimpse eval bundle`: score an exported bundle through the service's own runtime.

Images go through the same decoding, resizing, encoder graph and beam search as
an HTTP request does (`service.pipelines.caption.CaptionModel`), so the published
numbers are the numbers users get.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from service.pipelines.caption import CaptionModel, CaptionRequest
from training.data.readers import load_captions
from training.evaluate import record_metrics
from training.metrics.cli import evaluate_caption_results


def caption_split(model: CaptionModel, dataset_dir: Path, split: str, *, beam_size: int,
                  batch_size: int = 64, limit: int | None = None, progress: bool = True
                  ) -> tuple[dict[int, str], float]:
    """{imgid: caption} for a split, and the seconds spent encoding + decoding."""
    images = load_captions(dataset_dir, split)[:limit]
    if not images:
        raise ValueError(f"{dataset_dir}: split {split!r} has no images")
    params = model.params(beam_size=beam_size)
    results: dict[int, str] = {}
    seconds = 0.0
    for start in tqdm(range(0, len(images), batch_size), disable=not progress,
                      desc=f"{split} beam {beam_size}", unit="batch"):
        chunk = images[start:start + batch_size]
        requests = [CaptionRequest(model.as_array(dataset_dir / im.path), params)
                    for im in chunk]
        t0 = time.perf_counter()
        answers = model.caption_batch(requests)
        seconds += time.perf_counter() - t0
        for im, answer in zip(chunk, answers, strict=True):
            results[im.imgid] = answer.captions[0].text
    return results, seconds


def evaluate_bundle(path: str | Path, dataset_dir: str | Path, *, split: str = "test",
                    beam_size: int | None = None, batch_size: int = 64,
                    limit: int | None = None, progress: bool = True,
                    meteor: bool | None = False) -> dict:
    """Caption metrics of the bundle's captions for a split (meteor: see caption_metrics;
    None scores METEOR when Java is present)."""
    model = CaptionModel.from_bundle(path)
    beam = beam_size or model.decoding.beam_size
    dataset_dir = Path(dataset_dir)
    results, seconds = caption_split(model, dataset_dir, split, beam_size=beam,
                                     batch_size=batch_size, limit=limit, progress=progress)
    metrics = evaluate_caption_results(results, dataset_dir, split, meteor=meteor)
    metrics.update({"bundle": model.bundle.key, "split": split, "beam_size": beam,
                    "images_per_second": round(len(results) / seconds, 1)})
    return metrics


def eval_bundle(args: argparse.Namespace) -> int:
    """`glimpse eval bundle`: prints the metrics; --write-manifest records them under
    metrics[split]["beam<K>"]."""
    metrics = evaluate_bundle(args.path, args.data, split=args.split, beam_size=args.beam_size,
                              batch_size=args.batch_size, limit=args.limit, meteor=args.meteor)
    if args.write_manifest:
        record_metrics(args.path, metrics, at=(metrics["split"], f"beam{metrics['beam_size']}"))
    print(json.dumps(metrics, indent=2))
    return 0
