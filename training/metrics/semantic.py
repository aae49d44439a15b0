"""Semantic scores of generated captions against the scenes they describe.

n-gram metrics (BLEU, CIDEr) reward captions that look like the references; in
the shapes world we can also check what a caption says. Both scores read the
caption with the grammar of training.data.language:

- semantic exactness: share of captions that parse and are entirely true of
  their scene (every phrase and every relation holds);
- coverage: mean share of each scene's objects that its caption mentions
  (maximum matching of mentions to objects with the stated attributes); a
  caption outside the grammar covers nothing.

Reference captions score 1 on both by construction.

`clip_semantic_scores` does the same for descriptions of clips, read with the
grammar of training.data.clip_language: a description is exact when every
statement names an object of the clip (by its first-frame attributes) together
with that object's activity; coverage is the share of the clip's objects it
mentions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from training.data.clip_language import (
    description_coverage,
    description_is_exact,
    parse_description,
)
from training.data.clip_world import Clip
from training.data.language import caption_coverage, caption_is_exact, parse_caption
from training.data.world import Scene


def semantic_scores(captions: Mapping[int, str],
                    scenes: Mapping[int, Scene | dict]) -> dict[str, float | int]:
    """{"semantic_exactness", "coverage", "n"} over the captions, keyed by image id.

    `scenes` may hold Scene objects or their `to_dict()` form and may hold more
    images than `captions`; every captioned image must have a scene.
    """
    return _mean_scores(captions, scenes, Scene.from_dict, parse_caption, caption_is_exact,
                        caption_coverage, what="captions", truth="scene", item="captioned image")


def clip_semantic_scores(descriptions: Mapping[int, str],
                         clips: Mapping[int, Clip | dict]) -> dict[str, float | int]:
    """{"semantic_exactness", "coverage", "n"} over clip descriptions, keyed by clip id.

    `clips` may hold Clip objects or their `to_dict()` form and may hold more clips
    than `descriptions`; every described clip must be there.
    """
    return _mean_scores(descriptions, clips, Clip.from_dict, parse_description,
                        description_is_exact, description_coverage,
                        what="descriptions", truth="clip", item="described clip")


def _mean_scores(texts: Mapping[int, str], truths: Mapping[int, object],
                 from_dict: Callable[[dict], object], parse: Callable[[str], object | None],
                 exact_of: Callable[[object, object], bool],
                 coverage_of: Callable[[object, object], float],
                 *, what: str, truth: str, item: str) -> dict[str, float | int]:
    """Mean exactness and coverage of the parsed `texts` against their ground truth
    (text outside the grammar scores 0 on both)."""
    if not texts:
        raise ValueError(f"no {what} to score")
    missing = [key for key in texts if key not in truths]
    if missing:
        raise KeyError(f"no {truth} for {len(missing)} {item}(s), e.g. {missing[:5]}")
    exact = covered = 0.0
    for key, text in texts.items():
        ground_truth = truths[key]
        if isinstance(ground_truth, dict):
            ground_truth = from_dict(ground_truth)
        parsed = parse(text)
        if parsed is not None:
            exact += exact_of(parsed, ground_truth)
            covered += coverage_of(parsed, ground_truth)
    n = len(texts)
    return {"semantic_exactness": exact / n, "coverage": covered / n, "n": n}
