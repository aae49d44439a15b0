"""`glimpse eval captions` and `glimpse eval vqa`: score result files against a dataset split.

    glimpse eval captions RESULTS.json --dataset DIR --split test
        RESULTS.json: COCO results format, [{"image_id": imgid, "caption": "..."}],
        image ids being the imgid of DIR/captions.json.
    glimpse eval vqa RESULTS.json --dataset DIR --split test
        RESULTS.json: VQA results format, [{"question_id": id, "answer": "..."}],
        scored against DIR/vqa/<split>_questions.json and _annotations.json.

Each prints one JSON object of metrics on stdout. The library functions
`evaluate_caption_results` and `evaluate_vqa_results` compute the same numbers
for training and bundle evaluation code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.data.readers import load_captions, load_vqa_split
from training.metrics.captions import caption_metrics
from training.metrics.vqa import vqa_accuracy

CaptionResults = Sequence[Mapping[str, Any]] | Mapping[int, str]
AnswerResults = Sequence[Mapping[str, Any]] | Mapping[int, str]


def _results_by_id(results: Sequence[Mapping[str, Any]] | Mapping[int, str], id_key: str,
                   text_key: str) -> dict[int, str]:
    """{id: text} from a COCO/VQA results list, rejecting malformed or repeated entries."""
    if isinstance(results, Mapping):
        results = [{id_key: k, text_key: v} for k, v in results.items()]
    if not isinstance(results, Sequence) or isinstance(results, str):
        raise ValueError(f'results must be a list of {{"{id_key}", "{text_key}"}} objects')
    if not results:
        raise ValueError("results are empty")
    by_id: dict[int, str] = {}
    for i, item in enumerate(results):
        if not isinstance(item, Mapping):
            raise ValueError(f"results[{i}] is not an object")
        for key, kind in ((id_key, int), (text_key, str)):
            if key not in item:
                raise ValueError(f"results[{i}] has no '{key}'")
            if not isinstance(item[key], kind) or isinstance(item[key], bool):
                raise ValueError(f"results[{i}].{key} must be {kind.__name__}, "
                                 f"got {type(item[key]).__name__}")
        if item[id_key] in by_id:
            raise ValueError(f"results[{i}] repeats {id_key} {item[id_key]} "
                             "(one result per id)")
        by_id[item[id_key]] = item[text_key]
    return by_id


def _unknown_ids_error(unknown: list[int], kind: str, split: str,
                       split_of: Mapping[int, str]) -> ValueError:
    where = [f"{i} (in split '{split_of[i]}')" if i in split_of else str(i) for i in unknown[:5]]
    return ValueError(f"{len(unknown)} {kind} not in split '{split}': {', '.join(where)}"
                      + (", ..." if len(unknown) > 5 else ""))


def evaluate_caption_results(results: CaptionResults, dataset_dir: str | Path,
                             split: str = "test", *, meteor: bool | None = None) -> dict:
    """Caption metrics of `results` (COCO results list, or {imgid: caption})
    against the references of DIR/captions.json's `split`.

    Adds semantic exactness and coverage when DIR/scenes.json exists (the
    shapes world), and n_images (scored) / n_split_images (in the split); the
    results may cover part of the split (e.g. `glimpse eval bundle --limit`).
    """
    dataset_dir = Path(dataset_dir)
    captions = _results_by_id(results, "image_id", "caption")
    all_images = load_captions(dataset_dir)
    in_split = {im.imgid: im for im in all_images if im.split == split}
    if not in_split:
        raise ValueError(f"{dataset_dir / 'captions.json'} has no images in split '{split}'")
    unknown = sorted(set(captions) - set(in_split))
    if unknown:
        split_of = {im.imgid: im.split for im in all_images}
        raise _unknown_ids_error(unknown, "image_id(s)", split, split_of)
    references = {i: list(in_split[i].captions) for i in captions}
    scores = caption_metrics(captions, references, meteor=meteor)
    scores.pop("n_images")
    if (dataset_dir / "scenes.json").is_file():
        scores |= _semantic(captions, dataset_dir)
    scores["n_images"] = len(captions)
    scores["n_split_images"] = len(in_split)
    return scores


def _semantic(captions: dict[int, str], dataset_dir: Path) -> dict:
    """Semantic exactness and coverage against the shapes world's scenes, overall and by
    the number of objects in the scene ("by_objects": {"1": {...}, ...})."""
    from training.data.shapes import load_scenes
    from training.metrics.semantic import semantic_scores

    scenes = load_scenes(dataset_dir)
    missing = sorted(set(captions) - set(scenes))
    if missing:
        raise ValueError(f"scenes.json has no scene for image_id(s) {missing[:5]}")
    semantic = semantic_scores(captions, {i: scenes[i] for i in captions})
    groups: dict[int, dict[int, str]] = {}
    for i, caption in captions.items():
        groups.setdefault(len(scenes[i].objects), {})[i] = caption
    return {"semantic_exactness": semantic["semantic_exactness"],
            "coverage": semantic["coverage"],
            "by_objects": {str(n): semantic_scores(group, {i: scenes[i] for i in group})
                           for n, group in sorted(groups.items())}}


def evaluate_vqa_results(results: AnswerResults, dataset_dir: str | Path,
                         split: str = "test", *, match_vqaeval: bool = False) -> dict:
    """VQA accuracy (percent) of `results` (VQA results list, or {question_id:
    answer}) against DIR/vqa/<split>_annotations.json: overall, per question
    type, per answer type, n_questions (scored) and n_split_questions."""
    answers = _results_by_id(results, "question_id", "answer")
    questions = {q.question_id: q for q in load_vqa_split(dataset_dir, split)}
    if not any(q.annotated for q in questions.values()):
        raise ValueError(f"split '{split}' of {dataset_dir} has no annotations to score against")
    unknown = sorted(set(answers) - set(questions))
    if unknown:
        raise _unknown_ids_error(unknown, "question_id(s)", split, {})
    scores = vqa_accuracy(answers, questions, match_vqaeval=match_vqaeval)
    scores["n_split_questions"] = len(questions)
    return scores


def _read_results(path: str, fields: str) -> list:
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(results, list):
        raise ValueError(f"{path}: expected a JSON list of {fields} objects")
    return results


def _print_scores(command: str, score: Callable[[], dict]) -> int:
    """Print the scores as JSON (0), or the error on stderr (2)."""
    try:
        scores = score()
    except (OSError, ValueError, RuntimeError) as e:
        print(f"glimpse {command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=2))
    return 0


def eval_captions(args: argparse.Namespace) -> int:
    """`glimpse eval captions`."""
    return _print_scores("eval captions", lambda: evaluate_caption_results(
        _read_results(args.results, '{"image_id", "caption"}'), args.dataset, args.split,
        meteor=getattr(args, "meteor", None)))


def eval_vqa(args: argparse.Namespace) -> int:
    """`glimpse eval vqa`."""
    return _print_scores("eval vqa", lambda: evaluate_vqa_results(
        _read_results(args.results, '{"question_id", "answer"}'), args.dataset, args.split))
