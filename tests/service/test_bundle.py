"""Bundle format: manifest validation, sha256 checks, discovery, sessions and providers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from pydantic import ValidationError
from tiny_bundle import TOP_K, build_caption_bundle

from service.bundle import (
    INFERENCE_SECTIONS,
    BundleError,
    Manifest,
    describe_graph,
    discover,
    file_sha256,
    inference_section,
    load_bundle,
    validation_problems,
    write_manifest,
)
from service.pipelines.caption import CaptionModel
from service.runtime import CPU, CUDA, choose_providers, load_graphs, warm_batch_sizes

COMMITTED = Path(__file__).parents[2] / "model_repository"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return build_caption_bundle(tmp_path / "repo", "caption-tiny", 1)


def read(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_built_bundle_loads_with_its_manifest(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    m = loaded.manifest
    assert loaded.key == "caption-tiny/1"
    assert (m.task, m.architecture, m.decoding.top_k) == ("caption", "sat-soft", TOP_K)
    assert m.graphs["encoder"].input_names() == ["image"]
    assert m.graphs["encoder"].inputs[0].shape == ["batch", 3, 16, 16]
    assert m.graphs["decoder_step"].output_names() == ["log_probs", "token_ids", "h_out",
                                                       "c_out", "alpha"]
    assert m.graphs["decoder_step"].outputs[1].dtype == "int64"
    assert loaded.file("vocab") == bundle / "vocab.json"


def test_write_manifest_round_trips(bundle: Path, tmp_path: Path) -> None:
    manifest = load_bundle(bundle).manifest
    path = write_manifest(tmp_path, manifest)
    assert Manifest.model_validate_json(path.read_text()) == manifest


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"glimpse")
    assert file_sha256(path) == hashlib.sha256(b"glimpse").hexdigest()


def test_describe_graph_reports_symbolic_batch(bundle: Path) -> None:
    spec = describe_graph(bundle, "decoder_step.onnx")
    assert spec.sha256 == file_sha256(bundle / "decoder_step.onnx")
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs[:2]] == [
        ("tokens", "int64", ["n"]), ("parents", "int64", ["n"])]


def test_tampered_graph_is_refused_naming_bundle_and_file(bundle: Path) -> None:
    with open(bundle / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError) as err:
        load_bundle(bundle)
    assert err.value.file == "encoder.onnx"
    assert "sha256 mismatch" in str(err.value)
    assert "caption-tiny/1/encoder.onnx" in str(err.value)


def test_missing_file_is_refused(bundle: Path) -> None:
    (bundle / "vocab.json").unlink()
    with pytest.raises(BundleError, match="vocab.json: file is missing"):
        load_bundle(bundle)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(name="Caption_SAT"), "name: String should match pattern"),
    (lambda m: m.update(version=0), "version: Input should be greater than or equal to 1"),
    (lambda m: m.update(task="poetry"), "task: Input should be"),
    (lambda m: m["graphs"].pop("decoder_step"), "needs graphs ['decoder_step']"),
    (lambda m: m.pop("decoding"), "needs a `decoding` section"),
    (lambda m: m["decoding"].update(beam="3"), "decoding.beam: Extra inputs are not permitted"),
    (lambda m: m["decoding"]["attention"].update(output="weights"),
     "attention output 'weights' is not an output of decoder_step"),
    (lambda m: m["graphs"]["encoder"].update(sha256="abc"), "graphs.encoder.sha256"),
    (lambda m: m.update(inference={"beam_size": 3}),
     "inference: Value error, caption bundle: beam_size: Extra inputs are not permitted"),
])
def test_invalid_manifest_is_refused_with_the_reason(bundle: Path, edit, message: str) -> None:
    manifest = read(bundle)
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle)
    assert message in str(err.value)
    assert err.value.file == "manifest.json"


def test_committed_manifests_validate_with_their_typed_sections() -> None:
    bundles, errors = discover(COMMITTED)
    assert errors == [] and len(bundles) == len(list(COMMITTED.glob("*/*/manifest.json")))
    assert {b.manifest.task for b in bundles} == set(INFERENCE_SECTIONS)
    for b in bundles:
        typed = inference_section(b.manifest.task, b.manifest.architecture)
        section = b.manifest.inference_as(typed)
        assert section.model_dump(exclude_unset=True) == b.manifest.inference


def served_version(name: str) -> Path:
    """The directory of the committed model's highest version (the one the service serves)."""
    return max((p for p in (COMMITTED / name).iterdir() if p.name.isdigit()),
               key=lambda p: int(p.name))


@pytest.mark.parametrize("name, edit, message", [
    ("align-brnn", lambda i: i.pop("max_words"),
     "inference: Value error, alignment bundle: max_words: Field required"),
    ("align-brnn", lambda i: i.update(beta=-1.0),
     "beta: Input should be greater than or equal to 0"),
    ("retrieval-vse", lambda i: i["galleries"].update(videos={"embeddings": "x",
                                                                "entries": "y"}),
     "galleries.videos.[key]: Input should be 'images' or 'captions'"),
    ("retrieval-vse", lambda i: i["galleries"]["images"].pop("entries"),
     "galleries.images.entries: Field required"),
    ("vqa-updown", lambda i: i.update(answer_list="answers"),
     "answer_list: Extra inputs are not permitted"),
    ("gan-int-cls", lambda i: i.update(noise_dim="many"),
     "noise_dim: Input should be a valid integer"),
])
def test_inference_section_is_validated_as_its_task_says(name: str, edit, message: str) -> None:
    manifest = json.loads((served_version(name) / "manifest.json").read_text())
    edit(manifest["inference"])
    with pytest.raises(ValidationError) as err:
        Manifest.model_validate(manifest)
    assert message in validation_problems(err.value)


def test_manifest_must_match_its_directory(bundle: Path) -> None:
    moved = bundle.parent / "3"
    shutil.copytree(bundle, moved)
    with pytest.raises(BundleError, match="manifest says caption-tiny/1, directory is "
                                          "caption-tiny/3"):
        load_bundle(moved)


def test_file_outside_the_bundle_is_refused(bundle: Path) -> None:
    manifest = read(bundle)
    manifest["files"]["vocab"]["file"] = "../../../etc/passwd"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle)


def test_discover_returns_good_bundles_and_errors_for_bad_ones(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    build_caption_bundle(repo, "caption-a", 1)
    build_caption_bundle(repo, "caption-a", 10, seed=3)
    build_caption_bundle(repo, "caption-b", 2, seed=4)
    (repo / "caption-b" / "2" / "vocab.json").write_text("{}")
    (repo / "caption-a" / "not-a-version").mkdir()
    bundles, errors = discover(repo)
    assert [b.key for b in bundles] == ["caption-a/1", "caption-a/10"]
    assert len(errors) == 1 and "caption-b/2/vocab.json" in str(errors[0])
    assert discover(tmp_path / "absent")[1][0].reason == \
        "model repository directory does not exist"


def test_graph_names_must_match_the_manifest(bundle: Path) -> None:
    model = onnx.load(bundle / "encoder.onnx")
    model.graph.output[0].name = "features"
    for node in model.graph.node:
        node.output[:] = ["features" if o == "context" else o for o in node.output]
        node.input[:] = ["features" if i == "context" else i for i in node.input]
    onnx.save(model, bundle / "encoder.onnx")
    manifest = read(bundle)
    manifest["graphs"]["encoder"]["sha256"] = file_sha256(bundle / "encoder.onnx")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="graph outputs are .*'features'.* manifest says"):
        load_graphs(load_bundle(bundle), device="cpu")


def test_caption_contract_is_checked_against_the_graphs(bundle: Path) -> None:
    manifest = read(bundle)
    manifest["decoding"]["state"] = ["h", "c", "m"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_bundle(bundle)
    with pytest.raises(BundleError, match=r"encoder outputs lack \['m'\]"):
        CaptionModel(loaded, load_graphs(loaded, device="cpu"))


def test_sessions_run_on_cpu(bundle: Path) -> None:
    graphs = load_graphs(load_bundle(bundle), device="cpu", intra_op_threads=1)
    assert graphs["encoder"].providers == [CPU]
    out = graphs["encoder"].run({"image": np.zeros((2, 3, 16, 16), np.float32)})
    assert out["context"].shape == (2, 16, 8) and out["h"].shape == (2, 32)


def test_provider_choice() -> None:
    with_cuda = [CUDA, CPU]
    assert choose_providers("auto", available=with_cuda) == [CUDA, CPU]
    assert choose_providers("auto", available=[CPU]) == [CPU]
    assert choose_providers("cpu", available=with_cuda) == [CPU]
    assert choose_providers("cuda:1", available=with_cuda) == [(CUDA, {"device_id": 1}), CPU]
    assert choose_providers("auto", [CPU], available=with_cuda) == [CPU]
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        choose_providers("cuda", available=[CPU])
    with pytest.raises(ValueError, match="not available"):
        choose_providers("auto", ["TensorrtExecutionProvider"], available=with_cuda)


def test_cuda_on_a_cpu_only_runtime_is_a_bundle_error(bundle: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with pytest.raises(BundleError, match="needs CUDAExecutionProvider"):
        load_graphs(load_bundle(bundle), device="cuda")


def test_warm_batch_sizes() -> None:
    assert warm_batch_sizes(1) == [1]
    assert warm_batch_sizes(8) == [1, 2, 4, 8]
    assert warm_batch_sizes(12) == [1, 2, 4, 8, 12]
