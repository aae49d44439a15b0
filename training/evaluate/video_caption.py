"""`glimpse eval video-caption`: description metrics of a bundle through the service's pipeline.

Every clip file of a split is decoded, sampled, encoded and described with beam
search exactly as /v1/videos/captions does it
(`service.pipelines.video_caption.VideoCaptionModel`). Reported per split: semantic
exactness and coverage (the clip grammar's checker, training.metrics.semantic: a
description is exact when every statement names an object of the clip with that
object's activity) and the n-gram metrics against the five references (BLEU,
ROUGE-L, CIDEr-D).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from service.pipelines.video_caption import VideoCaptionModel
from training.data.clips import load_clips, read_clip
from training.data.readers import load_msrvtt
from training.evaluate import record_metrics
from training.metrics.captions import caption_metrics
from training.metrics.semantic import clip_semantic_scores


def describe_split(model: VideoCaptionModel, dataset_dir: Path, split: str, *,
                   beam_size: int, batch_size: int = 32, limit: int | None = None,
                   progress: bool = True) -> tuple[dict[int, str], dict[int, list[str]], float]:
    """{clip id: description}, {clip id: references} of a split, and the pipeline's seconds."""
    videos = [v for v in load_msrvtt(dataset_dir / "videodatainfo.json")
              if v.split == split][:limit]
    if not videos:
        raise ValueError(f"{dataset_dir}: split {split!r} has no clips")
    params = model.search_params(beam_size=beam_size)
    results: dict[int, str] = {}
    seconds = 0.0
    for start in tqdm(range(0, len(videos), batch_size), disable=not progress,
                      desc=f"{split} beam {beam_size}", unit="batch"):
        chunk = videos[start:start + batch_size]
        requests = [model.request(read_clip(dataset_dir / v.url), params) for v in chunk]
        t0 = time.perf_counter()
        answers = model.run_batch(requests)
        seconds += time.perf_counter() - t0
        results.update({v.id: a.captions[0].text for v, a in zip(chunk, answers, strict=True)})
    return results, {v.id: list(v.captions) for v in videos}, seconds


def evaluate_video_caption(path: str | Path, dataset_dir: str | Path, split: str = "test", *,
                           beam_size: int = 5, batch_size: int = 32, limit: int | None = None,
                           progress: bool = True) -> dict:
    """Metrics of the bundle's descriptions of a split (see the module docstring)."""
    model = VideoCaptionModel.from_bundle(path)
    dataset_dir = Path(dataset_dir)
    results, references, seconds = describe_split(model, dataset_dir, split,
                                                  beam_size=beam_size, batch_size=batch_size,
                                                  limit=limit, progress=progress)
    metrics = caption_metrics(results, references, meteor=False)
    metrics.pop("meteor_note", None)
    clips = load_clips(dataset_dir)
    semantic = clip_semantic_scores(results, {k: clips[k] for k in results})
    metrics.update({"semantic_exactness": semantic["semantic_exactness"],
                    "coverage": semantic["coverage"], "bundle": model.bundle.key,
                    "split": split, "beam_size": beam_size, "n_clips": len(results),
                    "clips_per_second": round(len(results) / seconds, 1),
                    "examples": [results[k] for k in list(results)[:3]]})
    return metrics


def eval_video_caption(args: argparse.Namespace) -> int:
    """`glimpse eval video-caption`: prints the metrics of each split; --write-manifest
    records them under metrics[split]["beam<K>"]."""
    out = {}
    for split in args.splits:
        metrics = evaluate_video_caption(args.path, args.data, split, beam_size=args.beam_size,
                                         batch_size=args.batch_size, limit=args.limit)
        if args.write_manifest:
            record_metrics(args.path, {k: v for k, v in metrics.items() if k != "examples"},
                           at=(split, f"beam{args.beam_size}"))
        out[split] = metrics
    print(json.dumps(out, indent=2))
    return 0
