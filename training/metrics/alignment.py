"""How well region-word alignment aligns: retrieval, noun-phrase grounding, segments.

Used by the alignment task's validation (training.tasks.alignment) and by `glimpse
eval alignment` on an exported bundle (training.evaluate.alignment):

- image-sentence retrieval R@1/5/10 in both directions with S_kl (Karpathy &
  Fei-Fei 2015, Eq. 8), the protocol of training.metrics.retrieval;
- alignment accuracy: the share of the captions' noun phrases whose region
  overlaps an object the phrase refers to with IoU >= 0.5. A phrase's region is
  the region the MRF assignment (service.pipelines.alignment.best_alignment, at the stated
  beta) gives to its head noun, which is also the region of the segment holding
  it. The objects a phrase refers to are the scene's objects with its attributes
  (training.data.language.matching_objects): a phrase such as "a triangle" in a
  scene of two triangles may be grounded on either. The proposal bound is the
  same share for an oracle that picks the best region of each phrase.
- segment statistics of the assignment at each beta: segments per sentence and
  words per segment (beta 0 aligns word by word, a large beta whole sentences).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.pipelines.alignment import best_alignment, runs, score_matrix
from training.data.language import PLURAL, matching_objects, parse_caption
from training.data.readers import CaptionImage, load_captions
from training.data.region_features import RegionFeatures, load_region_features
from training.data.world import SHAPES, Scene
from training.metrics.retrieval import retrieval_metrics

HEAD_NOUNS = frozenset(SHAPES) | frozenset(PLURAL.values())
IOU_THRESHOLD = 0.5


def rows_of(features: RegionFeatures, images: list[CaptionImage]) -> np.ndarray:
    """Row of each image in the feature file (KeyError names an image without features)."""
    return np.array([features.index_of(im.imgid) for im in images], dtype=np.int64)


def kept_regions(scores: np.ndarray, num_regions: np.ndarray, min_score: float) -> np.ndarray:
    """(n, R) bool: the real regions scoring at least `min_score` (never none at all)."""
    real = np.arange(scores.shape[1])[None, :] < num_regions[:, None]
    mask = real & (scores >= min_score)
    return np.where(mask.any(axis=1, keepdims=True), mask, real)


@dataclass
class ValidationSet:
    """A split's images with their region features, captions and ground-truth objects."""

    images: list[CaptionImage]
    region_features: np.ndarray  # (N, R, F)
    boxes: np.ndarray  # (N, R, 4) normalised xyxy
    scores: np.ndarray  # (N, R)
    num_regions: np.ndarray  # (N,)
    token_lists: list[list[str]]  # every caption, image by image
    caption_texts: list[str]
    img_of_caption: np.ndarray  # (C,) image index of each caption
    scenes: list[Scene]
    object_boxes: list[np.ndarray]  # per image (M, 4) normalised xyxy, scene order

    @classmethod
    def load(cls, dataset_dir: Path, features_dir: Path | None, split: str,
             limit: int | None = None) -> ValidationSet:
        """A split with its precomputed features (features_dir None: no features)."""
        images = load_captions(dataset_dir, split)[:limit]
        if not images:
            raise ValueError(f"{dataset_dir}: split {split!r} has no images")
        n, empty = len(images), np.zeros((len(images), 0), np.float32)
        feats, boxes, scores, num = np.zeros((n, 0, 0), np.float32), empty, empty, empty
        if features_dir is not None:
            rf = load_region_features(features_dir / f"{split}.npz")
            rows = rows_of(rf, images)
            feats, boxes, scores, num = (rf.features[rows], rf.boxes[rows], rf.scores[rows],
                                         rf.num_regions[rows])
        scenes, object_boxes = scene_objects(dataset_dir, [im.imgid for im in images])
        return cls(images=images, region_features=feats, boxes=boxes, scores=scores,
                   num_regions=num,
                   token_lists=[list(t) for im in images for t in im.tokens],
                   caption_texts=[c for im in images for c in im.captions],
                   img_of_caption=np.array([i for i, im in enumerate(images)
                                            for _ in im.tokens], dtype=np.int64),
                   scenes=scenes, object_boxes=object_boxes)

    def region_mask(self, min_score: float) -> np.ndarray:
        return kept_regions(self.scores, self.num_regions, min_score)


def scene_objects(dataset_dir: Path, imgids: list[int]) -> tuple[list[Scene], list[np.ndarray]]:
    """Scenes and every object's visible box (normalised xyxy, scenes.json order) of imgids."""
    from training.data.shapes import load_scenes

    scenes = load_scenes(dataset_dir)
    data = json.loads((dataset_dir / "scenes.json").read_text())
    side = float(data["image_size"])
    by_id = {int(im["imgid"]): im for im in data["images"]}
    boxes = []
    for imgid in imgids:
        xywh = np.array([o["bbox"] for o in by_id[imgid]["objects"]], np.float64) / side
        boxes.append(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
    return [scenes[i] for i in imgids], boxes


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of others (M, 4)."""
    inter_w = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    inter_h = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def phrase_heads(tokens: list[str], text: str, scene: Scene) -> list[tuple[int, list[int]]]:
    """(position of the head noun, objects the phrase may refer to) of each noun phrase.

    In the shapes world's grammar a shape word is always, and only, the last word
    of a noun phrase, so the head nouns in order are the parsed phrases in order.
    Captions outside the grammar give no phrases.
    """
    caption = parse_caption(text)
    heads = [t for t, word in enumerate(tokens) if word in HEAD_NOUNS]
    if caption is None or len(heads) != len(caption.noun_phrases()):
        return []
    return [(t, matching_objects(np_, scene)) for t, np_ in zip(heads, caption.noun_phrases(),
                                                              strict=True)]


def evaluate_vectors(data: ValidationSet, region_vectors: np.ndarray, mask: np.ndarray,
                     word_vectors: np.ndarray, lengths: np.ndarray,
                     betas: tuple[float, ...]) -> dict:
    """Retrieval, alignment accuracy and segment statistics from region and word vectors."""
    sims = score_matrix(region_vectors.astype(np.float32), mask,
                        word_vectors.astype(np.float32), lengths)
    out: dict = {"retrieval": retrieval_metrics(sims, data.img_of_caption), "alignment": {}}
    hits = {b: 0 for b in betas}
    segments = {b: [] for b in betas}
    phrases = bound = 0
    for c, k in enumerate(data.img_of_caption):
        kept = np.flatnonzero(mask[k])
        unary = word_vectors[c, :lengths[c]] @ region_vectors[k, kept].T  # (T, R') psi_U
        ious = [box_iou(box, data.object_boxes[k]) for box in data.boxes[k, kept]]  # R' x (M,)
        heads = phrase_heads(data.token_lists[c][:lengths[c]], data.caption_texts[c],
                             data.scenes[k])
        grounded = [(t, refs) for t, refs in heads if refs]
        phrases += len(grounded)
        bound += sum(max(ious[r][refs].max() for r in range(len(kept))) >= IOU_THRESHOLD
                     for _, refs in grounded)
        for beta in betas:
            assignment, _ = best_alignment(unary, beta)
            segments[beta].append(len(runs(assignment)))
            hits[beta] += sum(ious[assignment[t]][refs].max() >= IOU_THRESHOLD
                              for t, refs in grounded)
    words = float(np.mean(lengths))
    for beta in betas:
        per_sentence = float(np.mean(segments[beta]))
        out["alignment"][f"beta{beta:g}"] = {
            "accuracy": hits[beta] / max(phrases, 1),
            "segments_per_sentence": per_sentence,
            "words_per_segment": words / per_sentence,
        }
    out["noun_phrases"] = phrases
    out["proposal_bound"] = bound / max(phrases, 1)
    return out


def flat_metrics(result: dict, beta: float) -> dict[str, float]:
    """Scalars for the trainer's log: R@K, rsum, accuracy at each beta, the bound, and
    `alignment_accuracy`, the accuracy at the bundle's default beta (early stopping)."""
    out = {k: v for k, v in result["retrieval"].items() if not k.endswith("meanr")}
    for key, values in result["alignment"].items():
        out[f"accuracy_{key}"] = values["accuracy"]
        out[f"words_per_segment_{key}"] = values["words_per_segment"]
    out["alignment_accuracy"] = result["alignment"][f"beta{beta:g}"]["accuracy"]
    out["proposal_bound"] = result["proposal_bound"]
    return out
