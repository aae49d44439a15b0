"""Retrieval end to end on a tiny shapes world: train, export, index, evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle import load_bundle
from service.pipelines.retrieval import RetrievalModel
from training.checkpoint import checkpoint_dir
from training.cli import main as glimpse
from training.data.readers import load_captions
from training.data.shapes import generate_shapes_world
from training.export.retrieval import check_vse_parity, load_vse_model
from training.metrics.retrieval import retrieval_metrics
from training.tasks import retrieval as retrieval_task
from training.tasks.retrieval import VSETask, VSETaskConfig, encode_sentences

SIZE = 32
TINY = {"max_length": 8, "image_size": SIZE,
        "model": {"word_dim": 8, "embed_dim": 16,
                  "encoder": {"out_dim": 8, "channels": [4, 8, 8]}},
        "trainer": {"batch_size": 8, "progress": False, "warmup_steps": 2, "log_every": 1}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_shapes_world(out, {"train": 24, "val": 6, "test": 6}, size=SIZE, seed=3,
                          workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def run_dir(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vse_run")
    config = root / "config.json"
    config.write_text(json.dumps(TINY))
    out = root / "run"
    assert glimpse(["train", "retrieval", "--config", str(config), "--data", str(world),
                    "--out", str(out), "--epochs", "2", "--layer-norm", "--loss", "sum",
                    "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def bundle(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    assert glimpse(["export", str(run_dir), "--repository", str(repository),
                    "--name", "retrieval-test"]) == 0
    return repository / "retrieval-test" / "1"


def test_training_evaluates_recall_every_epoch(run_dir: Path):
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["step"] for h in history] == [3, 6]  # 24 images / batch 8
    for h in history:
        assert 0 <= h["i2t_r1"] <= h["i2t_r5"] <= h["i2t_r10"] <= 100
        assert h["rsum"] == pytest.approx(sum(h[f"{d}_r{k}"] for d in ("i2t", "t2i")
                                              for k in (1, 5, 10)))
    config = json.loads((checkpoint_dir(run_dir) / "config.json").read_text())["model"]
    assert config["task"] == "retrieval"
    assert config["vse"]["layer_norm"] is True and config["vse"]["loss"] == "sum"


def test_image_features_are_cached_and_reused(world: Path, run_dir: Path, monkeypatch):
    assert (run_dir / retrieval_task.FEATURE_CACHE).exists()
    cfg = VSETaskConfig.from_dict({**TINY, "data": str(world)})

    def recompute(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(retrieval_task, "compute_features", recompute)
    task = VSETask(cfg, cache_dir=run_dir)
    assert task.features["train"].shape == (24, 16)
    assert task.features["val"].shape == (6, 16)


def test_a_batch_holds_each_image_once_with_one_of_its_sentences(world: Path, tmp_path: Path):
    cfg = VSETaskConfig.from_dict({**TINY, "data": str(world), "unk_rate": 0.0})
    task = VSETask(cfg, cache_dir=tmp_path)
    indices = torch.tensor([5, 0, 17, 3])
    features, tokens, lengths, image_ids = task.batch(indices, torch.device("cpu"))
    assert image_ids.tolist() == [5, 0, 17, 3]
    torch.testing.assert_close(features, task.features["train"][indices])
    s = task.train_sentences
    for row, image in enumerate(indices.tolist()):
        own = s.tokens[s.image == image]
        assert any(torch.equal(tokens[row, :lengths[row]], sent[:lengths[row]]) for sent in own)
        assert (tokens[row, lengths[row]:] == 0).all()
    cfg.unk_rate = 1.0
    _, tokens, lengths, _ = VSETask(cfg, cache_dir=tmp_path).batch(indices, torch.device("cpu"))
    words = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    assert (tokens[words] == 3).all() and (tokens[~words] == 0).all()


def test_export_writes_two_graphs_with_symbolic_batch(bundle: Path):
    manifest = load_bundle(bundle).manifest
    assert manifest.task == "retrieval" and manifest.architecture == "vse-ln"
    image, text = manifest.graphs["image_encoder"], manifest.graphs["text_encoder"]
    assert [(t.name, t.shape) for t in image.inputs] == [("image", ["batch", 3, SIZE, SIZE])]
    assert [(t.name, t.dtype, t.shape) for t in text.inputs] == [
        ("tokens", "int64", ["batch", 8]), ("lengths", "int64", ["batch"])]
    assert image.outputs[0].shape == text.outputs[0].shape == ["batch", 16]
    assert manifest.inference["embedding_dim"] == 16 and manifest.inference["text_length"] == 8
    parity = manifest.training["parity_max_abs_diff"]
    assert set(parity) == {"image_encoder", "text_encoder"}
    assert max(parity.values()) < 1e-4


def test_parity_check_refuses_graphs_that_differ_from_the_model(run_dir: Path, bundle: Path):
    model, _, _ = load_vse_model(checkpoint_dir(run_dir))
    with torch.no_grad():  # a random change: LN would cancel a constant shift of W_hh h
        model.gru.weight_hh.add_(0.1 * torch.randn_like(model.gru.weight_hh))
    with pytest.raises(RuntimeError, match="text_encoder"):
        check_vse_parity(model, bundle, SIZE, 8)


def test_bundle_embeds_sentences_as_the_model_does(world: Path, run_dir: Path, bundle: Path):
    model, vocab, _ = load_vse_model(checkpoint_dir(run_dir))
    images = load_captions(world, "test")
    sentences = encode_sentences(vocab, images, 8)
    served = RetrievalModel.from_bundle(bundle)
    onnx_text = served.embed_texts([row[:n].tolist() for row, n in
                                    zip(sentences.tokens, sentences.lengths, strict=True)])
    with torch.no_grad():
        torch_text = model.embed_text(sentences.tokens, sentences.lengths).numpy()
    np.testing.assert_allclose(onnx_text, torch_text, atol=1e-5)


def test_index_then_evaluate_through_the_bundle(world: Path, run_dir: Path, bundle: Path,
                                                tmp_path: Path):
    assert glimpse(["index", str(bundle), "--data", str(world), "--split", "test"]) == 0
    served = RetrievalModel.from_bundle(bundle)
    images, captions = served.galleries["images"], served.galleries["captions"]
    test = load_captions(world, "test")
    assert [e["id"] for e in images.entries] == [im.imgid for im in test]
    assert [e["file"] for e in images.entries] == [im.path for im in test]
    assert len(captions) == sum(len(im.captions) for im in test)
    assert captions.entries[0] == {"text": test[0].captions[0], "image_id": test[0].imgid}

    assert glimpse(["eval", "retrieval", str(bundle), "--data", str(world),
                    "--write-manifest"]) == 0
    recorded = load_bundle(bundle).manifest.metrics["test"]
    owner = np.array([i for i, im in enumerate(test) for _ in im.captions])
    expected = retrieval_metrics(images.embeddings @ captions.embeddings.T, owner)
    assert recorded["rsum"] == pytest.approx(round(expected["rsum"], 2))
    assert recorded["images"] == 6 and recorded["sentences"] == len(captions)

    folder = tmp_path / "photos"
    folder.mkdir()
    for im in test[:3]:
        shutil.copy(world / im.path, folder / Path(im.path).name)
    assert glimpse(["index", str(bundle), "--images", str(folder)]) == 0
    served = RetrievalModel.from_bundle(bundle)
    assert set(served.galleries) == {"images"}
    np.testing.assert_allclose(served.galleries["images"].embeddings, images.embeddings[:3],
                               atol=1e-6)
