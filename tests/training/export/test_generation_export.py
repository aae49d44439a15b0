"""Export of text-to-image runs: graphs, parity with PyTorch, manifest, refusal, words."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.stackgan import StackGanConfig, StageIGenerator, StageIIGenerator
from models.text_encoder import CharCnnRnn, TextEncoderConfig
from service.bundle import load_bundle
from training.export import exporter_for
from training.export.generation import (
    GenerationModels,
    check_generation_parity,
    training_words,
    write_generation_bundle,
)

_spec = importlib.util.spec_from_file_location(
    "tiny_generation", Path(__file__).parents[2] / "service" / "tiny_generation.py")
tiny_generation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_generation)

MAX_LENGTH, EMBED_DIM = 16, 8
CAPTIONS = {"images": [
    {"split": "train", "sentences": [{"tokens": ["a", "red", "circle"]},
                                     {"tokens": ["a", "large", "red", "square"]}]},
    {"split": "val", "sentences": [{"tokens": ["a", "blue", "star"]}]},
]}


def stackgan_models() -> GenerationModels:
    """The real char-CNN-RNN and StackGAN Stage-II classes, tiny and random."""
    torch.manual_seed(0)
    text = CharCnnRnn(TextEncoderConfig(max_length=MAX_LENGTH, char_dim=4, conv_channels=(6, 8),
                                        rnn_size=8, embed_dim=EMBED_DIM)).eval()
    cfg = StackGanConfig(embed_dim=EMBED_DIM, z_dim=4, c_dim=3, ngf=4, num_residual=1)
    generator = StageIIGenerator(cfg, StageIGenerator(cfg))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is exercised
        for name, buf in generator.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    models = tiny_generation.tiny_models()
    models.text_encoder, models.generator = text, generator.eval()
    models.variant, models.max_length, models.embed_dim = "stackgan-2", MAX_LENGTH, EMBED_DIM
    models.noise_dim, models.image_size = generator.noise_dim, generator.image_size
    return models


def fake_run(path: Path, model_config: dict) -> Path:
    ckpt = path / "checkpoints" / "best"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"model": model_config}))
    (ckpt / "model.safetensors").write_bytes(b"")
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """`glimpse export`'s path for a generation run, the training loaders stubbed with the
    tiny models (their checkpoints are not what is under test)."""
    root = tmp_path_factory.mktemp("t2i")
    data = root / "data"
    data.mkdir()
    (data / "captions.json").write_text(json.dumps(CAPTIONS))
    fake_run(root / "text", {"task": "text-encoder", "task_config": {"data": str(data)}})
    gan_run = fake_run(root / "gan", {"task": "generation", "variant": "stackgan-2"})
    models = stackgan_models()
    info = {"variant": "stackgan-2", "noise_dim": models.noise_dim, "embed_dim": EMBED_DIM,
            "image_size": models.image_size, "text_encoder_run": "text"}  # relative to root
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("training.export.generation.load_generator",
                   lambda run: (models.generator, info))
        mp.setattr("training.export.generation.load_text_encoder",
                   lambda run: (models.text_encoder, models.alphabet,
                                {"max_length": MAX_LENGTH, "embed_dim": EMBED_DIM}))
        bundle = exporter_for(gan_run)(gan_run, root / "repo", "stackgan", None)
    return models, bundle


def test_bundle_layout_and_manifest(exported) -> None:
    models, bundle = exported
    assert bundle.parts[-2:] == ("stackgan", "1")
    manifest = load_bundle(bundle).manifest  # validates and checks every sha256
    assert (manifest.task, manifest.architecture) == ("generation", "stackgan-2")
    enc, gen = manifest.graphs["text_encoder"], manifest.graphs["generator"]
    assert [(t.name, t.dtype, t.shape) for t in enc.inputs] == [
        ("chars", "int64", ["batch", MAX_LENGTH])]
    assert [(t.name, t.shape) for t in enc.outputs] == [("embedding", ["batch", EMBED_DIM])]
    assert [(t.name, t.shape) for t in gen.inputs] == [
        ("embedding", ["batch", EMBED_DIM]), ("noise", ["batch", 4 + 3 + 3])]
    assert [(t.name, t.dtype, t.shape) for t in gen.outputs] == [
        ("image", "float32", ["batch", 3, 128, 128])]
    assert manifest.inference == {"noise_dim": 10, "max_prompt_length": MAX_LENGTH,
                                  "image_size": 128, "embed_dim": EMBED_DIM,
                                  "vocabulary": "vocab"}
    assert manifest.preprocessing.tokenizer.model_dump() == {"type": "char", "file": "alphabet"}
    alphabet = json.loads((bundle / "alphabet.json").read_text())
    assert alphabet["alphabet"] == models.alphabet.alphabet
    # Training-split words only, by descending count: "star" is in val alone.
    vocab = json.loads((bundle / "vocab.json").read_text())["tokens"]
    assert vocab[4:] == ["a", "red", "circle", "large", "square"]
    training = manifest.training
    assert training["text_encoder"]["run"].endswith("text")
    assert max(training["parity_max_abs_diff"].values()) < 1e-4


def test_graphs_match_pytorch_at_another_batch_size(exported) -> None:
    models, bundle = exported
    rng = np.random.default_rng(3)
    chars = rng.integers(0, len(models.alphabet), (7, MAX_LENGTH)).astype(np.int64)
    chars[:, 10:] = 0
    text = ort.InferenceSession(str(bundle / "text_encoder.onnx"))
    (embedding,) = text.run(None, {"chars": chars})
    noise = rng.standard_normal((7, models.noise_dim)).astype(np.float32)
    gen = ort.InferenceSession(str(bundle / "generator.onnx"))
    (image,) = gen.run(None, {"embedding": embedding, "noise": noise})
    with torch.no_grad():
        want_embedding = models.text_encoder(torch.from_numpy(chars)).numpy()
        want = models.generator.sample(torch.from_numpy(embedding), torch.from_numpy(noise))
    np.testing.assert_allclose(embedding, want_embedding, atol=1e-4)
    np.testing.assert_allclose(image, ((want + 1) / 2).clamp(0, 1).numpy(), atol=1e-4)
    assert image.shape == (7, 3, 128, 128) and image.min() >= 0.0 and image.max() <= 1.0


def test_parity_check_catches_a_model_that_differs_from_its_graphs(exported) -> None:
    models, bundle = exported
    with torch.no_grad():
        models.generator.up[-1][0].bias.add_(0.5)
    try:
        with pytest.raises(RuntimeError, match="generator.image"):
            check_generation_parity(models, bundle)
    finally:
        with torch.no_grad():
            models.generator.up[-1][0].bias.sub_(0.5)


def test_export_refuses_to_write_a_bundle_that_fails_parity(
        exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The graphs of the exported bundle, written for a model whose output layer differs.
    _, bundle = exported
    models = stackgan_models()
    with torch.no_grad():
        models.generator.up[-1][0].bias.add_(0.5)

    def copy_graphs(_models: GenerationModels, out_dir: Path) -> None:
        for file in ("text_encoder.onnx", "generator.onnx"):
            shutil.copy(bundle / file, out_dir / file)

    monkeypatch.setattr("training.export.generation.export_generation_graphs", copy_graphs)
    with pytest.raises(RuntimeError, match="disagree on {'generator.image'"):
        write_generation_bundle(models, tmp_path, "stackgan", 1)
    assert list((tmp_path / "stackgan").iterdir()) == []  # nor its temporary directory


def test_export_refuses_a_run_of_another_task(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "cap", {"task": "caption"})
    from training.export.generation import export_generation

    with pytest.raises(ValueError, match="not a text-to-image run"):
        export_generation(run, tmp_path / "repo", "x")


def test_training_words_prefer_a_recorded_vocabulary(tmp_path: Path) -> None:
    vocab = {"type": "word", "tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "b", "a"]}
    (tmp_path / "captions.json").write_text(json.dumps(CAPTIONS))
    assert training_words([{"model": {"data": {"dir": str(tmp_path)}}},
                           {"model": {"vocab": vocab}}]) == ["b", "a"]
    assert training_words([{"model": {"data": {"dir": str(tmp_path / "missing")}}}]) is None
