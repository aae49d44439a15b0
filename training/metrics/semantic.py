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
"""

from __future__ import annotations

from collections.abc import Mapping

from training.data.language import caption_coverage, caption_is_exact, parse_caption
from training.data.world import Scene


def semantic_scores(captions: Mapping[int, str],
                    scenes: Mapping[int, Scene | dict]) -> dict[str, float | int]:
    """{"semantic_exactness", "coverage", "n"} over the captions, keyed by image id.

    `scenes` may hold Scene objects or their `to_dict()` form and may hold more
    images than `captions`; every captioned image must have a scene.
    """
    if not captions:
        raise ValueError("no captions to score")
    missing = [image_id for image_id in captions if image_id not in scenes]
    if missing:
        raise KeyError(f"no scene for {len(missing)} captioned image(s), e.g. {missing[:5]}")
    exact = covered = 0.0
    for image_id, text in captions.items():
        scene = scenes[image_id]
        if isinstance(scene, dict):
            scene = Scene.from_dict(scene)
        caption = parse_caption(text)
        if caption is not None:
            exact += caption_is_exact(caption, scene)
            covered += caption_coverage(caption, scene)
    n = len(captions)
    return {"semantic_exactness": exact / n, "coverage": covered / n, "n": n}
