"""Image-sentence retrieval metrics: R@K, median and mean rank, rsum.

The protocol of Karpathy & Fei-Fei (2015) and Kiros et al. (2014): with
`sims[i, j]` the score of image i against caption j and several captions per
image (5 in COCO and Flickr),

- image -> text: the rank of an image is the rank of its best-ranked correct
  caption among all captions;
- text -> image: the rank of a caption is the rank of its image among all images.

Ranks start at 1. Ties count against the model: a wrong item scored equal to
the correct one is ranked before it, so a constant similarity matrix gets the
worst ranks, not the best. R@K is the percentage of queries ranked <= K (as the
literature reports it), and rsum adds the six R@{1,5,10} of both directions.
"""

from __future__ import annotations

import numpy as np


def _check(sims: np.ndarray, img_of_caption: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(sims, dtype=np.float64)
    img_of_caption = np.asarray(img_of_caption)
    if sims.ndim != 2:
        raise ValueError(f"sims must be 2-D [n_images, n_captions], got shape {sims.shape}")
    n_images, n_captions = sims.shape
    if n_images == 0 or n_captions == 0:
        raise ValueError(f"sims is empty (shape {sims.shape})")
    if img_of_caption.shape != (n_captions,):
        raise ValueError(f"img_of_caption must have shape ({n_captions},), "
                         f"got {img_of_caption.shape}")
    if not np.issubdtype(img_of_caption.dtype, np.integer):
        raise ValueError("img_of_caption must hold integer image indices")
    if img_of_caption.min() < 0 or img_of_caption.max() >= n_images:
        raise ValueError(f"img_of_caption must index images 0..{n_images - 1}")
    if np.isnan(sims).any():
        raise ValueError("sims contains NaN")
    without = np.setdiff1d(np.arange(n_images), img_of_caption)
    if without.size:
        raise ValueError(f"{without.size} image(s) have no caption, e.g. {without[:5].tolist()}")
    return sims, img_of_caption


def image_to_text_ranks(sims: np.ndarray, img_of_caption: np.ndarray) -> np.ndarray:
    """Rank (1-based) of each image's best-ranked correct caption, shape [n_images]."""
    sims, img_of_caption = _check(sims, img_of_caption)
    correct = img_of_caption[None, :] == np.arange(sims.shape[0])[:, None]  # (I, C)
    best_correct = np.where(correct, sims, -np.inf).max(axis=1)  # (I,)
    return 1 + ((sims >= best_correct[:, None]) & ~correct).sum(axis=1)


def text_to_image_ranks(sims: np.ndarray, img_of_caption: np.ndarray) -> np.ndarray:
    """Rank (1-based) of each caption's image among all images, shape [n_captions]."""
    sims, img_of_caption = _check(sims, img_of_caption)
    own = sims[img_of_caption, np.arange(sims.shape[1])]  # (C,)
    # Counts the caption's own image once (equal to itself), plus every other >= it.
    return (sims >= own[None, :]).sum(axis=0)


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks <= k)) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(np.median(ranks))
    out[f"{prefix}_meanr"] = float(np.mean(ranks))
    return out


def retrieval_metrics(sims: np.ndarray, img_of_caption: np.ndarray) -> dict[str, float]:
    """i2t_r1/5/10, i2t_medr, i2t_meanr, the same for t2i, and rsum.

    sims: [n_images, n_captions] scores; img_of_caption[j] is the index of the
    image caption j describes. Every image needs at least one caption.
    """
    scores = _summary(image_to_text_ranks(sims, img_of_caption), "i2t")
    scores |= _summary(text_to_image_ranks(sims, img_of_caption), "t2i")
    scores["rsum"] = sum(scores[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return scores
