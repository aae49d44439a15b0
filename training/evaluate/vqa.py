"""`glimpse eval vqa-bundle`: VQA accuracy of an exported bundle, through the service runtime.

Each image is decoded, resized and run through vqa.onnx by `service.pipelines.vqa.VqaModel`,
exactly as /v1/vqa does, and the best answer is scored with the VQA accuracy of
training.metrics.vqa, overall and per question type. A question with words outside
the bundle's vocabulary would be refused by the service; here it counts as wrong
and is reported in `refused`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from service.errors import InvalidParameter
from service.pipelines.vqa import VqaModel, VqaRequest
from training.data.readers import VQAQuestion, load_captions, load_vqa_split
from training.evaluate import record_metrics
from training.metrics.vqa import vqa_accuracy


def answer_split(model: VqaModel, dataset_dir: Path, questions: list[VQAQuestion], *,
                 split: str, batch_size: int = 64, progress: bool = True
                 ) -> tuple[dict[int, str], int, float]:
    """{question_id: best answer}, the number of refused questions, and graph seconds."""
    paths = {im.imgid: dataset_dir / im.path for im in load_captions(dataset_dir, split)}
    images: dict[int, np.ndarray] = {}
    params = model.params(top_k=1)
    answers: dict[int, str] = {}
    refused, seconds = 0, 0.0
    for start in tqdm(range(0, len(questions), batch_size), disable=not progress,
                      desc=f"vqa {split}", unit="batch"):
        requests, ids = [], []
        for q in questions[start:start + batch_size]:
            try:
                encoded = model.encode_question(q.question)
            except InvalidParameter:
                refused += 1
                answers[q.question_id] = ""
                continue
            if q.image_id not in images:
                images[q.image_id] = model.as_array(paths[q.image_id])
            requests.append(VqaRequest(images[q.image_id], encoded, params))
            ids.append(q.question_id)
        t0 = time.perf_counter()
        results = model.run_batch(requests)
        seconds += time.perf_counter() - t0
        answers.update({qid: r.answers[0].answer for qid, r in zip(ids, results, strict=True)})
    return answers, refused, seconds


def evaluate_vqa_bundle(path: str | Path, dataset_dir: str | Path, *, split: str = "test",
                        batch_size: int = 64, limit: int | None = None,
                        progress: bool = True) -> dict:
    """VQA accuracy (percent) overall, per question type and per answer type on a split."""
    model = VqaModel.from_bundle(path)
    dataset_dir = Path(dataset_dir)
    questions = load_vqa_split(dataset_dir, split)[:limit]
    if not questions:
        raise ValueError(f"{dataset_dir}: split {split!r} has no questions")
    answers, refused, seconds = answer_split(model, dataset_dir, questions, split=split,
                                             batch_size=batch_size, progress=progress)
    metrics = vqa_accuracy(answers, {q.question_id: q for q in questions})
    metrics.update({"bundle": model.bundle.key, "split": split, "refused": refused,
                    "questions_per_second": round((len(answers) - refused) / seconds, 1)})
    return metrics


def markdown_table(rows: list[dict]) -> str:
    """One row per split: overall accuracy, then each question type."""
    types = sorted({t for m in rows for t in m["per_question_type"]})
    lines = ["| bundle | split | questions | overall | " + " | ".join(types) + " |",
             "|---|---|---|---|" + "---|" * len(types)]
    for m in rows:
        cells = [f"{m['per_question_type'].get(t, float('nan')):.1f}" for t in types]
        lines.append(f"| {m['bundle']} | {m['split']} | {m['n_questions']} | "
                     f"{m['overall']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_vqa_bundle(args: argparse.Namespace) -> int:
    """`glimpse eval vqa-bundle`: prints the metrics of each split; --write-manifest records
    them under metrics[split]."""
    rows = []
    for split in args.splits:
        metrics = evaluate_vqa_bundle(args.path, args.data, split=split,
                                      batch_size=args.batch_size, limit=args.limit)
        if args.write_manifest:
            record_metrics(args.path, metrics, at=(split,))
        rows.append(metrics)
    print(json.dumps(rows, indent=2))
    print(markdown_table(rows))
    return 0
