"""How far an image lies from the images a model was trained on (the `domain` score).

A model trained on the shapes world answers a photograph as confidently as a scene it
knows; the score tells the user when not to trust that answer. It is the Mahalanobis
distance of a few statistics of the model's own input tensor (the image as the model
sees it, after its preprocessing) from their distribution over the model's validation
images:

    d(x) = sqrt((f(x) - mu)^T P (f(x) - mu))

with mu and P (the inverse of the covariance, shrunk towards its diagonal's mean) fitted
on validation images, and a threshold at the 99th percentile of their distances: about
1 in-domain image in 100 is flagged.

Why these statistics and not the encoder's features: on the committed bundles, the
Mahalanobis distance of the (spatially pooled) encoder outputs separates shapes-world
test images from the scikit-image photographs with AUROC 0.46 to 0.95 (the encoders,
trained on flat-coloured scenes, map photographs into the range of their features),
while the input statistics below separate them with AUROC 1.000 on every bundle
(benchmarks/results/domain_auroc.md). What sets the shapes world apart is plain in its
pixels: a flat background, few colours, sharp edges.

The statistics live in the bundle as `domain.json`, listed under `files["domain"]` in the
manifest; a bundle without it reports no domain score. `fit_domain` builds them from
validation images (scripts/calibrate_domain.py does it for a bundle).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DOMAIN_FILE_KEY = "domain"  # key of the statistics in a manifest's `files`
FEATURE = "input-statistics-v1"
STATISTICS = ("background", "colours", "colour_entropy", "flat", "gradient", "soft_edges",
              "saturation", "saturation_spread")
QUANTILE = 0.99
SHRINKAGE = 0.01
LEVELS = 8  # per channel, for the colour histogram
FLAT = 2 / 255  # a neighbour difference below this is flat
SOFT = 0.1  # and below this (not flat) a soft edge


def image_statistics(image: np.ndarray, pixel_range: tuple[float, float] = (0.0, 1.0)
                     ) -> np.ndarray:
    """The `STATISTICS` of one graph input [3, S, S] whose values lie in `pixel_range`."""
    low, high = pixel_range
    x = np.clip((np.asarray(image, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    levels = np.minimum((x * LEVELS).astype(np.int64), LEVELS - 1)
    bins = (levels[0] * LEVELS + levels[1]) * LEVELS + levels[2]
    histogram = np.bincount(bins.ravel(), minlength=LEVELS**3) / bins.size
    present = histogram[histogram > 0]
    steps = np.concatenate([np.abs(np.diff(x, axis=2)).mean(0).ravel(),
                            np.abs(np.diff(x, axis=1)).mean(0).ravel()])
    saturation = x.max(0) - x.min(0)
    return np.array([
        histogram.max(),  # the share of the most common colour: the background
        (histogram > 0.005).mean(),
        -(present * np.log(present)).sum(),
        (steps < FLAT).mean(),
        steps.mean(),
        ((steps >= FLAT) & (steps < SOFT)).mean(),
        saturation.mean(),
        saturation.std(),
    ])


@dataclass(frozen=True)
class DomainScore:
    score: float  # the distance d(x)
    threshold: float  # distances above it are out of domain

    @property
    def in_domain(self) -> bool:
        return self.score <= self.threshold


@dataclass(frozen=True)
class DomainStatistics:
    """mu, P and the threshold of one model, and how they were calibrated."""

    mean: np.ndarray  # [F]
    precision: np.ndarray  # [F, F]
    threshold: float
    calibration: dict[str, Any]

    def distance(self, features: np.ndarray) -> np.ndarray:
        """d of each row of `features` [n, F] (or of one [F] vector)."""
        d = np.atleast_2d(features) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def score(self, image: np.ndarray, pixel_range: tuple[float, float] = (0.0, 1.0)
              ) -> DomainScore:
        """The domain score of one graph input [3, S, S]."""
        distance = float(self.distance(image_statistics(image, pixel_range))[0])
        return DomainScore(score=round(distance, 4), threshold=round(self.threshold, 4))

    # ------------------------------------------------------------------ file

    def to_json(self) -> dict[str, Any]:
        return {"feature": FEATURE, "statistics": list(STATISTICS),
                "mean": self.mean.tolist(), "precision": self.precision.tolist(),
                "threshold": self.threshold, "calibration": self.calibration}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_file(cls, path: Path) -> DomainStatistics:
        """Read `domain.json` (ValueError naming what is wrong)."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("feature") != FEATURE:
            raise ValueError(f"{path.name}: expected domain statistics of feature {FEATURE!r}")
        mean = np.asarray(data["mean"], dtype=np.float64)
        precision = np.asarray(data["precision"], dtype=np.float64)
        n = len(STATISTICS)
        if mean.shape != (n,) or precision.shape != (n, n):
            raise ValueError(f"{path.name}: expected mean [{n}] and precision [{n}, {n}], got "
                             f"{list(mean.shape)} and {list(precision.shape)}")
        return cls(mean=mean, precision=precision, threshold=float(data["threshold"]),
                   calibration=dict(data.get("calibration", {})))


def fit_domain(images: Sequence[np.ndarray], pixel_range: tuple[float, float] = (0.0, 1.0),
               *, quantile: float = QUANTILE, **calibration: Any) -> DomainStatistics:
    """Statistics fitted on validation graph inputs [3, S, S]; the threshold is the
    `quantile` of their distances. `calibration` records where the images came from."""
    features = np.stack([image_statistics(image, pixel_range) for image in images])
    mean = features.mean(axis=0)
    covariance = np.cov(features - mean, rowvar=False)
    size = covariance.shape[0]
    covariance = ((1 - SHRINKAGE) * covariance
                  + SHRINKAGE * np.trace(covariance) / size * np.eye(size))
    fitted = DomainStatistics(mean=mean, precision=np.linalg.inv(covariance), threshold=0.0,
                              calibration={})
    threshold = float(np.quantile(fitted.distance(features), quantile))
    return DomainStatistics(mean=mean, precision=fitted.precision, threshold=threshold,
                            calibration={"images": len(images), "quantile": quantile,
                                         **calibration})
