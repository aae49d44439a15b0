"""What a caption bundle gets wrong on a split of the shapes world, read through the
service's runtime (the captions users get):

- inexact captions by the number of objects in the scene;
- for each false clause, why it is false: a noun phrase that names no object because
  of its colour, size or shape (the phrase would be true with that one attribute
  dropped), its count, or more than one attribute ("attributes"); or, with both phrases
  true, the relation; captions outside the grammar are "unparsed";
- for attention models, where the attention is when the caption writes a colour or a
  shape word: the weight on the grid cell of each object's centre (the cell the
  pre-trained encoder describes the object in), the share of words whose most attended
  object has the colour or shape written, and the weight on that object's centre.

    python scripts/caption_errors.py model_repository/caption-sat/8 --data data/shapes15k \\
        --split test --beam-size 3

prints one JSON object (and writes it with --out).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from service.pipelines.caption import CaptionModel, CaptionRequest
from training.data.language import (
    NounPhrase,
    clause_is_true,
    matching_objects,
    parse_caption,
)
from training.data.readers import load_captions
from training.data.shapes import load_scenes
from training.data.world import COLOURS, SHAPES, Scene


def phrase_error(np_: NounPhrase, scene: Scene) -> str | None:
    """Why a noun phrase is false of the scene (None when it is true)."""
    matches = matching_objects(np_, scene)
    if (len(matches) >= 1) if np_.count is None else (len(matches) == np_.count):
        return None
    if np_.count is not None and matches:
        return "count"
    for attribute in ("colour", "size", "shape"):
        if getattr(np_, attribute) is None:
            continue
        relaxed = replace(np_, count=None, **{attribute: None})
        if attribute == "shape":  # any shape: the colour and size say which object
            if any(relaxed.colour in (None, o.colour) and relaxed.size in (None, o.size)
                   for o in scene.objects):
                return "shape"
        elif matching_objects(relaxed, scene):
            return attribute
    return "attributes"


def caption_errors(text: str, scene: Scene) -> list[str]:
    """One reason per false clause of the caption ([] when the caption is exact)."""
    caption = parse_caption(text)
    if caption is None:
        return ["unparsed"]
    reasons = []
    for clause in caption.clauses:
        if clause_is_true(clause, scene):
            continue
        errors = [e for e in map(lambda np_: phrase_error(np_, scene), clause.noun_phrases())
                  if e is not None]
        reasons.extend(errors or ["relation"])
    return reasons


def centre_cell(obj, rows: int, cols: int) -> int:
    return min(int(obj.y * rows), rows - 1) * cols + min(int(obj.x * cols), cols - 1)


def attention_at_words(words: list[str], attention: np.ndarray, scene: Scene,
                       tally: dict[str, list[tuple[float, float, bool]]]) -> None:
    """Adds (weight on all centres, weight on the most attended centre, whether that
    object has the attribute written) for each colour and shape word."""
    rows, cols = attention.shape[1:]
    cells = [centre_cell(o, rows, cols) for o in scene.objects]
    for word, alpha in zip(words, attention.reshape(len(words), -1), strict=False):
        kind = "colour" if word in COLOURS else "shape" if word in SHAPES else None
        if kind is None or not cells:
            continue
        on_centres = alpha[cells]
        top = int(np.argmax(on_centres))
        tally[kind].append((float(on_centres.sum()), float(on_centres[top]),
                            getattr(scene.objects[top], kind) == word))


def analyse(bundle: Path, data: Path, split: str, beam_size: int | None,
            limit: int | None) -> dict:
    model = CaptionModel.from_bundle(bundle)
    scenes = load_scenes(data)
    images = load_captions(data, split)[:limit]
    with_attention = model.has_attention
    params = model.params(beam_size=beam_size, return_attention=with_attention)
    inexact, total, reasons = Counter(), Counter(), Counter()
    tally: dict[str, list] = {"colour": [], "shape": []}
    for start in range(0, len(images), 64):
        chunk = images[start:start + 64]
        answers = model.caption_batch([CaptionRequest(model.as_array(data / im.path), params)
                                       for im in chunk])
        for im, answer in zip(chunk, answers, strict=True):
            scene, caption = scenes[im.imgid], answer.captions[0]
            n = len(scene.objects)
            total[n] += 1
            errors = caption_errors(caption.text, scene)
            if errors:
                inexact[n] += 1
                reasons.update(errors)
            if with_attention and caption.attention is not None:
                attention_at_words(caption.words, caption.attention, scene, tally)
    result = {"bundle": model.bundle.key, "split": split,
              "beam_size": params.beam_size, "images": sum(total.values()),
              "inexact_by_objects": {str(n): f"{inexact[n]}/{total[n]}" for n in sorted(total)},
              "false_clauses_by_reason": dict(reasons.most_common())}
    for kind, rows in tally.items():
        if rows:
            on_centres, on_top, right = map(np.array, zip(*rows, strict=True))
            result[f"attention_at_{kind}_words"] = {
                "words": len(rows), "on_object_centres": round(float(on_centres.mean()), 3),
                "on_most_attended_centre": round(float(on_top.mean()), 3),
                f"most_attended_object_has_the_{kind}": round(float(right.mean()), 3)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, help="caption bundle (model_repository/NAME/VERSION)")
    p.add_argument("--data", type=Path, required=True, help="a shapes-world dataset")
    p.add_argument("--split", default="test")
    p.add_argument("--beam-size", type=int, default=None, help="default: the bundle's")
    p.add_argument("--limit", type=int, default=None, help="the first N images only")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args()
    result = analyse(args.bundle, args.data, args.split, args.beam_size, args.limit)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
