"""Does the domain score tell the shapes world from photographs? AUROC per image bundle.

In-domain: shapes-world test images (the `test` split of the default recipe's world,
which no calibration saw). Out-of-domain: the photographs that ship with scikit-image
(`skimage.data`, no download). For each bundle of the repository with domain
statistics, the AUROC of its domain score (the probability that a photograph scores
above a test image), and the share of each set past the threshold. For comparison,
the same Mahalanobis distance on the bundle's own encoder outputs (spatially pooled,
fitted on the same validation images), the feature the service does not use.

    python benchmarks/domain_auroc.py            # about 1 minute on 2 cores

Writes benchmarks/results/domain_auroc.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.bundle import bundle_dirs, load_bundle
from service.domain import DOMAIN_FILE_KEY, DomainStatistics, image_statistics
from service.images import to_array
from service.runtime import load_graphs

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
# scikit-image's sample photographs (its drawings, such as the checkerboard, and its
# 25x25 face crops are left out: "natural photos" is the claim measured)
PHOTOGRAPHS = ("astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins",
               "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
               "microaneurysms", "moon", "page", "retina", "rocket", "text")


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an outside image > score of an inside one), ties counted half."""
    scores = np.concatenate([inside, outside])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def shapes_images(split: str, count: int, seed: int = 0) -> list[Image.Image]:
    """`count` images of a split of the shapes world generated with `seed`."""
    from training.data.shapes import generate_shapes_world

    out = Path(tempfile.mkdtemp(prefix="glimpse-shapes-"))
    generate_shapes_world(out, {split: count}, seed=seed, workers=1, progress=False)
    return [Image.open(f).convert("RGB") for f in sorted((out / "images" / split).glob("*.png"))]


def photographs() -> list[Image.Image]:
    """scikit-image's sample photographs as RGB images (greyscale ones repeated)."""
    import skimage.data

    images = []
    for name in PHOTOGRAPHS:
        pixels = np.asarray(getattr(skimage.data, name)())
        images.append(Image.fromarray(pixels.astype(np.uint8)).convert("RGB"))
    left, right, _ = skimage.data.stereo_motorcycle()
    return images + [Image.fromarray(left).convert("RGB"), Image.fromarray(right).convert("RGB")]


def domain_scores(bundle_dir: Path, images: list[Image.Image]) -> np.ndarray:
    bundle = load_bundle(bundle_dir)
    statistics = DomainStatistics.from_file(bundle.file(DOMAIN_FILE_KEY))
    pre = bundle.manifest.preprocessing
    features = np.stack([image_statistics(to_array(im, pre.image_size, pre.pixel_range),
                                          pre.pixel_range) for im in images])
    return statistics.distance(features)


def encoder_scores(bundle_dir: Path, val: list[Image.Image],
                   sets: list[list[Image.Image]]) -> list[np.ndarray] | None:
    """The same distance on the bundle's image-only graph outputs, pooled over positions;
    None when no graph takes the image alone (VQA's graph also takes the question)."""
    bundle = load_bundle(bundle_dir)
    graphs = load_graphs(bundle, device="cpu")
    graph = next((g for g in graphs.values() if g.input_names == ["image"]), None)
    if graph is None:
        return None
    pre = bundle.manifest.preprocessing

    def features(images: list[Image.Image]) -> np.ndarray:
        batch = np.stack([to_array(im, pre.image_size, pre.pixel_range) for im in images])
        out = graph.run({"image": batch})
        return np.concatenate([v.mean(axis=1) if v.ndim == 3 else v.reshape(len(v), -1)
                               for v in out.values()], axis=1).astype(np.float64)

    fitted = fit_domain_vectors(features(val))
    return [fitted.distance(features(images)) for images in sets]


def fit_domain_vectors(features: np.ndarray) -> DomainStatistics:
    mean = features.mean(axis=0)
    covariance = np.cov(features - mean, rowvar=False)
    size = covariance.shape[0]
    covariance = 0.99 * covariance + 0.01 * np.trace(covariance) / size * np.eye(size)
    return DomainStatistics(mean, np.linalg.inv(covariance), 0.0, {})


def measure(repository: Path, num_test: int) -> dict[str, Any]:
    test = shapes_images("test", num_test)
    photos = photographs()
    val = shapes_images("val", 500)
    rows = []
    for bundle_dir in bundle_dirs(repository):
        bundle = load_bundle(bundle_dir)
        if DOMAIN_FILE_KEY not in bundle.manifest.files:
            continue
        statistics = DomainStatistics.from_file(bundle.file(DOMAIN_FILE_KEY))
        inside, outside = domain_scores(bundle_dir, test), domain_scores(bundle_dir, photos)
        encoder = encoder_scores(bundle_dir, val, [test, photos])
        rows.append({
            "bundle": bundle.key, "auroc": auroc(inside, outside),
            "test_flagged": float((inside > statistics.threshold).mean()),
            "photographs_flagged": float((outside > statistics.threshold).mean()),
            "threshold": statistics.threshold,
            "encoder_auroc": None if encoder is None else auroc(*encoder),
        })
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "test_images": len(test), "photographs": len(photos), "bundles": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"In-domain: {result['test_images']} shapes-world test images; out-of-domain: "
             f"{result['photographs']} scikit-image photographs. Threshold: the 99th "
             "percentile of 500 validation images' distances.", "",
             "| bundle | AUROC (domain score) | test images flagged | photographs flagged "
             "| AUROC of the encoder's features |", "|---|---|---|---|---|"]
    for r in result["bundles"]:
        encoder = "–" if r["encoder_auroc"] is None else f"{r['encoder_auroc']:.3f}"
        lines.append(f"| {r['bundle']} | {r['auroc']:.3f} | {r['test_flagged']:.1%} | "
                     f"{r['photographs_flagged']:.0%} | {encoder} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--out", default="domain_auroc")
    args = p.parse_args()
    result = measure(args.repository, args.num_test)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
