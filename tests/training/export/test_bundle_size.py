"""What keeps bundles small: half-precision weights, and files shared between bundles."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from service.bundle import SHARED_DIR, BundleError, discover, load_bundle
from service.pipelines.caption import CaptionModel
from service.pipelines.dalle import DalleModel
from training.export.bundle import share_identical_files
from training.export.compact import compact_bundle
from training.export.dalle import write_dalle_bundle
from training.export.onnx import cpu_session, onnx_export, store_weights_as_half

_dalle_spec = importlib.util.spec_from_file_location(
    "tiny_dalle", Path(__file__).parents[2] / "service" / "tiny_dalle.py")
tiny_dalle = importlib.util.module_from_spec(_dalle_spec)
_dalle_spec.loader.exec_module(tiny_dalle)
_spec = importlib.util.spec_from_file_location(
    "tiny_bundle", Path(__file__).parents[2] / "service" / "tiny_bundle.py")
tiny_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_bundle)


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 128)
        self.b = nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def export(module: nn.Module, path: Path, *, half_weights: bool) -> None:
    batch = torch.export.Dim("batch", min=1)
    onnx_export(module, (torch.randn(2, 64),), path, ("x",), ("y",), {"x": {0: batch}},
                half_weights=half_weights)


def test_half_weights_halve_the_file_and_compute_what_the_module_computes(tmp_path):
    torch.manual_seed(0)
    module = TwoLayers().eval()
    export(module, tmp_path / "full.onnx", half_weights=False)
    export(module, tmp_path / "half.onnx", half_weights=True)  # rounds module in place
    full, half = (tmp_path / "full.onnx").stat().st_size, (tmp_path / "half.onnx").stat().st_size
    assert half < 0.6 * full
    assert module.a.weight.equal(module.a.weight.half().float())  # rounded to float16 values
    x = torch.randn(5, 64)
    (y,) = cpu_session(tmp_path / "half.onnx").run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), module(x), rtol=1e-6, atol=1e-6)
    dtypes = {i.name: i.data_type for i in onnx.load(str(tmp_path / "half.onnx")).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes.values()


def test_exact_only_keeps_weights_that_float16_cannot_hold(tmp_path):
    values = np.full((64, 32), 0.1, dtype=np.float32)  # 0.1 is no float16 value
    exact = np.full((64, 32), 0.5, dtype=np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["w", "v"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 32])],
        [onnx.numpy_helper.from_array(values, "w"), onnx.numpy_helper.from_array(exact, "v")])
    model = onnx.helper.make_model(graph)
    assert store_weights_as_half(model) == exact.size * 2
    kinds = {i.name: i.data_type for i in model.graph.initializer}
    assert kinds["w"] == onnx.TensorProto.FLOAT
    assert kinds["v__float16"] == onnx.TensorProto.FLOAT16
    onnx.save(model, tmp_path / "g.onnx")
    (y,) = cpu_session(tmp_path / "g.onnx").run(None, {})
    np.testing.assert_array_equal(y, values + exact)


def test_identical_files_are_stored_once_and_bundles_still_load(tmp_path):
    repo = tmp_path / "repo"
    tiny_bundle.build_caption_bundle(repo, "caption-a", 1, seed=0)
    tiny_bundle.build_caption_bundle(repo, "caption-b", 1, seed=0)  # same graphs
    tiny_bundle.build_caption_bundle(repo, "caption-c", 1, seed=1)  # other weights
    saved = share_identical_files(repo, min_bytes=1)
    encoder_a = repo / "caption-a" / "1" / "encoder.onnx"
    assert encoder_a.is_symlink() and (repo / "caption-b" / "1" / "encoder.onnx").is_symlink()
    assert encoder_a.resolve().parent == (repo / SHARED_DIR).resolve()
    assert not (repo / "caption-c" / "1" / "encoder.onnx").is_symlink()
    assert saved > 0
    bundles, errors = discover(repo)
    assert errors == [] and len(bundles) == 3
    image = tiny_bundle.sample_png(3)
    a = CaptionModel.from_bundle(repo / "caption-a" / "1").caption(image)
    b = CaptionModel.from_bundle(repo / "caption-b" / "1").caption(image)
    assert [c.text for c in a.captions] == [c.text for c in b.captions]
    # A bundle removed: the other keeps the shared file; both removed: the file goes.
    shared_encoder = encoder_a.resolve()
    shutil.rmtree(repo / "caption-a")
    share_identical_files(repo, min_bytes=1)
    load_bundle(repo / "caption-b" / "1")
    shutil.rmtree(repo / "caption-b")
    share_identical_files(repo, min_bytes=1)
    assert not shared_encoder.exists()
    linked = {p.resolve() for p in (repo / "caption-c" / "1").iterdir() if p.is_symlink()}
    assert {p.resolve() for p in (repo / SHARED_DIR).iterdir()} == linked  # caption-c vocab
    load_bundle(repo / "caption-c" / "1")


def test_external_weights_and_the_graphs_reading_them_stay_in_their_bundle(tmp_path):
    """Two dalle bundles of the same weights hold the same transformer.bin (ONNX external
    data): linked into the shared store, ONNX Runtime would refuse to load it."""
    repo = tmp_path / "repo"
    models = tiny_dalle.tiny_dalle_models(0)
    for version in (1, 2):
        write_dalle_bundle(models, repo, "dalle-tiny", version)
    share_identical_files(repo, min_bytes=1)
    for version in (1, 2):
        bundle = repo / "dalle-tiny" / str(version)
        for name in ("transformer.bin", "prefill.onnx", "decoder_step.onnx"):
            assert not (bundle / name).is_symlink(), name
        assert (bundle / "dvae_decoder.onnx").is_symlink()  # no external data: shared
        DalleModel.from_bundle(bundle, device="cpu")  # every graph loads


def test_a_link_out_of_the_bundle_and_the_shared_store_is_refused(tmp_path):
    repo = tmp_path / "repo"
    bundle = tiny_bundle.build_caption_bundle(repo, "caption-a", 1)
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copyfile(bundle / "vocab.json", elsewhere)
    (bundle / "vocab.json").unlink()
    (bundle / "vocab.json").symlink_to(elsewhere)
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle)


def test_compact_writes_a_new_version_with_half_weights_and_no_stale_metrics(tmp_path):
    repo = tmp_path / "repo"
    torch.manual_seed(0)
    old = tiny_bundle.build_caption_bundle(repo, "caption-a", 1)
    new = compact_bundle(old, min_elements=16)
    assert new == repo / "caption-a" / "2"
    manifest = json.loads((new / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["metrics"] == {}
    report = manifest["training"]["compacted"]
    assert report["from"] == "caption-a/1"
    assert all(g["bytes_saved"] > 0 for g in report["graphs"].values())
    assert report["graphs"]["encoder"]["max_abs_diff"]["context"] < 1e-2
    assert (new / "encoder.onnx").stat().st_size < (old / "encoder.onnx").stat().st_size
    image = tiny_bundle.sample_png(5)
    CaptionModel.from_bundle(new).caption(image)  # loads, verifies and runs
