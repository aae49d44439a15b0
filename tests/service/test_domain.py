"""The domain score: its statistics, its calibration, and what the committed bundles say.

The committed image bundles carry domain statistics calibrated on shapes-world
validation images; they must tell shapes-world test images (fresh ones) from the
photographs that ship with scikit-image (AUROC >= 0.99), and every image endpoint
reports the score.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.bundle import load_bundle
from service.domain import DomainStatistics, fit_domain, image_statistics
from service.pipelines.caption import CaptionModel
from service.settings import Settings

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / "model_repository"
# Every committed bundle that reads an image (the generators read text only).
# The bundles that answer for an image (a clip's frames are no single image, and the
# video endpoints report no domain score: their bundles carry no statistics).
IMAGE_BUNDLES = sorted(f"{path.parent.parent.name}/{path.parent.name}"
                       for path in COMMITTED.glob("*/*/manifest.json")
                       if json.loads(path.read_text())["task"] not in
                       ("generation", "activity", "video-caption"))

_spec = importlib.util.spec_from_file_location("domain_auroc",
                                               ROOT / "benchmarks" / "domain_auroc.py")
domain_auroc = importlib.util.module_from_spec(_spec)
sys.modules["domain_auroc"] = domain_auroc
_spec.loader.exec_module(domain_auroc)


def flat_scene(seed: int, size: int = 64) -> np.ndarray:
    """A flat background with a square of another colour, as a [3, S, S] graph input."""
    rng = np.random.default_rng(seed)
    x = np.ones((3, size, size)) * rng.uniform(0.2, 0.6, (3, 1, 1))
    top, left = rng.integers(0, size - 16, 2)
    x[:, top:top + 16, left:left + 16] = rng.uniform(0, 1, (3, 1, 1))
    return x.astype(np.float32)


def test_statistics_read_the_image_in_its_pixel_range() -> None:
    scene = flat_scene(0)
    assert image_statistics(scene).shape == (8,)
    np.testing.assert_allclose(image_statistics(scene * 2 - 1, (-1.0, 1.0)),
                               image_statistics(scene), atol=1e-6)
    background, _, _, flat, *_ = image_statistics(scene)
    assert background > 0.9 and flat > 0.9  # a flat scene is mostly one colour
    noise = np.random.default_rng(1).uniform(0, 1, (3, 64, 64))
    assert image_statistics(noise)[0] < 0.05 and image_statistics(noise)[3] < 0.05


def test_threshold_is_the_quantile_of_the_calibration_distances(tmp_path: Path) -> None:
    scenes = [flat_scene(seed) for seed in range(200)]
    statistics = fit_domain(scenes, quantile=0.9, split="val")
    distances = statistics.distance(np.stack([image_statistics(s) for s in scenes]))
    assert np.mean(distances > statistics.threshold) == pytest.approx(0.1, abs=0.01)
    assert statistics.calibration == {"images": 200, "quantile": 0.9, "split": "val"}
    statistics.write(tmp_path / "domain.json")
    again = DomainStatistics.from_file(tmp_path / "domain.json")
    np.testing.assert_allclose(again.precision, statistics.precision)
    noise = np.random.default_rng(2).uniform(0, 1, (3, 64, 64))
    assert not again.score(noise).in_domain and again.score(scenes[0]).score >= 0


def test_a_malformed_statistics_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "domain.json").write_text(json.dumps({"feature": "something-else"}))
    with pytest.raises(ValueError, match="expected domain statistics"):
        DomainStatistics.from_file(tmp_path / "domain.json")


def test_a_bundle_without_statistics_reports_no_domain(repository: Path) -> None:
    model = CaptionModel.from_bundle(repository / "caption-tiny" / "1")
    assert model.domain is None and model.domain_score(model.blank_image()) is None


@pytest.mark.parametrize("key", IMAGE_BUNDLES)
def test_committed_bundles_carry_their_statistics(key: str) -> None:
    bundle = load_bundle(COMMITTED / key)
    assert bundle.manifest.files["domain"].file == "domain.json"
    statistics = DomainStatistics.from_file(bundle.file("domain"))
    assert statistics.calibration["images"] == 500 and statistics.calibration["split"] == "val"


def test_committed_bundles_tell_the_shapes_world_from_photographs() -> None:
    """AUROC >= 0.99 on fresh test images (the calibration used the val split)."""
    test = domain_auroc.shapes_images("test", 200)
    photos = domain_auroc.photographs()
    assert len(photos) == 20
    for key in IMAGE_BUNDLES:
        inside = domain_auroc.domain_scores(COMMITTED / key, test)
        outside = domain_auroc.domain_scores(COMMITTED / key, photos)
        assert domain_auroc.auroc(inside, outside) >= 0.99, key


def test_auroc_counts_ties_half() -> None:
    assert domain_auroc.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert domain_auroc.auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert domain_auroc.auroc(np.array([2.0, 3.0]), np.array([0.0])) == 0.0


@pytest.fixture(scope="module")
def committed() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=COMMITTED))) as client:
        yield client


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(("path", "fields"), [
    ("/v1/captions", {}), ("/v1/vqa", {"question": "what color is the square?"}),
    ("/v1/alignments", {"sentence": "a red square"}), ("/v1/retrieval/captions", {}),
    ("/v1/embeddings", {}),
])
def test_every_image_endpoint_reports_the_domain(committed: TestClient, path: str,
                                                 fields: dict) -> None:
    scene = png(domain_auroc.shapes_images("test", 1)[0])
    photo = png(domain_auroc.photographs()[0])  # the astronaut
    inside = committed.post(path, files={"file": scene}, data=fields).json()["domain"]
    outside = committed.post(path, files={"file": photo}, data=fields).json()["domain"]
    assert inside["in_domain"] is True and inside["score"] <= inside["threshold"]
    assert outside["in_domain"] is False and outside["score"] > outside["threshold"]
