"""record_metrics: every evaluator's way of writing a bundle's metrics into its manifest."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from service.bundle import BundleError, load_bundle
from training.evaluate import record_metrics

_spec = importlib.util.spec_from_file_location(
    "tiny_bundle", Path(__file__).parents[2] / "service" / "tiny_bundle.py")
tiny_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_bundle)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle.build_caption_bundle(tmp_path / "repo")  # metrics {"test": {"bleu4": 0}}


def test_metrics_go_where_asked_and_the_bundle_stays_valid(bundle):
    graphs = {p.name: p.read_bytes() for p in bundle.glob("*.onnx")}
    record_metrics(bundle, {"bundle": "caption-tiny/1", "split": "novel", "cider_d": 0.5,
                            "beam_size": 2}, at=("novel", "beam2"))
    record_metrics(bundle, {"split": "val", "overall": 61.0}, at=("val",))
    manifest = load_bundle(bundle).manifest  # validates and checks every sha256
    assert manifest.metrics == {"test": {"bleu4": 0.0},
                                "novel": {"beam2": {"cider_d": 0.5, "beam_size": 2}},
                                "val": {"overall": 61.0}}
    assert {p.name: p.read_bytes() for p in bundle.glob("*.onnx")} == graphs


def test_recording_again_replaces_only_its_own_place(bundle):
    record_metrics(bundle, {"cider_d": 0.5}, at=("novel", "beam2"))
    record_metrics(bundle, {"cider_d": 0.7}, at=("novel", "beam3"))
    record_metrics(bundle, {"cider_d": 0.6}, at=("novel", "beam2"))
    assert load_bundle(bundle).manifest.metrics["novel"] == {"beam2": {"cider_d": 0.6},
                                                             "beam3": {"cider_d": 0.7}}


def test_a_bundle_whose_files_changed_is_refused_untouched(bundle):
    (bundle / "vocab.json").write_text(json.dumps({"type": "word", "tokens": ["x"]}))
    before = (bundle / "manifest.json").read_text()
    with pytest.raises(BundleError, match="sha256"):
        record_metrics(bundle, {"cider_d": 0.5}, at=("test",))
    assert (bundle / "manifest.json").read_text() == before
    with pytest.raises(ValueError, match="place"):
        record_metrics(tiny_bundle.build_caption_bundle(bundle.parent.parent, version=2), {},
                       at=())
