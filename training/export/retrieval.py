"""Export of a retrieval run (models/vse.py): two graphs into one joint space.

    image_encoder.onnx  image [batch, 3, S, S] in [0, 1] -> embedding [batch, E]
    text_encoder.onnx   tokens [batch, T] int64 (right-padded with <pad>),
                        lengths [batch] int64 (1..T) -> embedding [batch, E]
    vocab.json          the WordVocab the tokens index

Both embeddings have unit length, so a dot product is the cosine similarity the
model was trained with. The sentence GRU is unrolled over a fixed T (the run's
`max_length`): the service pads every query to T words and refuses longer ones.
The manifest's `inference` section records E, T and, once `glimpse index` has run,
the gallery files. Export is followed by a parity check against PyTorch on fresh
random inputs and refuses to write a bundle that fails it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.vse import VSE, VSEConfig
from service.bundle import describe_graph, write_manifest
from training.checkpoint import load_weights
from training.data.tokenizer import WordVocab
from training.export.bundle import created_now, file_entry, image_preprocessing, staged_bundle
from training.export.onnx import DEFAULT_OPSET, cpu_session, onnx_export, require_parity
from training.runs import run_checkpoint

IMAGE_GRAPH = "image_encoder"
TEXT_GRAPH = "text_encoder"


class ImageGraph(nn.Module):
    """image (B, 3, S, S) in [0, 1] -> embedding (B, E)."""

    def __init__(self, model: VSE) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.embed_images(image)


class TextGraph(nn.Module):
    """tokens (B, T), lengths (B,) -> embedding (B, E)."""

    def __init__(self, model: VSE) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Indexing the table rather than calling nn.Embedding keeps the exporter from
        # naming an inner tensor "embedding", the name of the graph's output.
        words = self.model.word_embedding.weight[tokens]  # (B, T, W)
        return self.model.encode_words(words, lengths)


def load_vse_model(ckpt: Path) -> tuple[VSE, WordVocab, dict]:
    """The trained model (eval mode), its vocabulary and the checkpoint's config."""
    ckpt, config = run_checkpoint(ckpt, "retrieval", "a retrieval")
    model_cfg = config["model"]
    model = VSE(VSEConfig.from_dict(model_cfg["vse"]))
    load_weights(model, ckpt)
    model.eval()
    return model, WordVocab.from_dict(model_cfg["vocab"]), config


def random_text(vocab_size: int, batch: int, length: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded random sentences of random lengths 1..length (pad id 0)."""
    lengths = rng.integers(1, length + 1, batch).astype(np.int64)
    tokens = rng.integers(4, vocab_size, (batch, length)).astype(np.int64)
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths


def export_vse_graphs(model: VSE, out_dir: Path, *, image_size: int, text_length: int,
                      opset: int = DEFAULT_OPSET) -> None:
    """Write image_encoder.onnx and text_encoder.onnx (symbolic batch) under out_dir."""
    was_training = model.training
    model.eval()
    batch = torch.export.Dim("batch")
    try:
        images = torch.rand(2, 3, image_size, image_size)
        onnx_export(ImageGraph(model).eval(), (images,), out_dir / f"{IMAGE_GRAPH}.onnx",
                     ("image",), ("embedding",), {"image": {0: batch}}, opset)
        tokens, lengths = random_text(model.config.vocab_size, 3, text_length,
                                      np.random.default_rng(0))
        onnx_export(TextGraph(model).eval(),
                     (torch.from_numpy(tokens), torch.from_numpy(lengths)),
                     out_dir / f"{TEXT_GRAPH}.onnx", ("tokens", "lengths"), ("embedding",),
                     {"tokens": {0: batch}, "lengths": {0: batch}}, opset)
    finally:
        model.train(was_training)


def check_vse_parity(model: VSE, bundle_dir: Path, image_size: int, text_length: int, *,
                     seed: int = 0, atol: float = 1e-4) -> dict[str, float]:
    """Max |ONNX Runtime − PyTorch| of both graphs on fresh random inputs (batch 5)."""
    rng = np.random.default_rng(seed)
    images = rng.random((5, 3, image_size, image_size), dtype=np.float32)
    tokens, lengths = random_text(model.config.vocab_size, 5, text_length, rng)
    sessions = {g: cpu_session(bundle_dir / f"{g}.onnx") for g in (IMAGE_GRAPH, TEXT_GRAPH)}
    ort_image = sessions[IMAGE_GRAPH].run(None, {"image": images})[0]
    ort_text = sessions[TEXT_GRAPH].run(None, {"tokens": tokens, "lengths": lengths})[0]
    with torch.no_grad():
        pt_image = ImageGraph(model)(torch.from_numpy(images)).numpy()
        pt_text = TextGraph(model)(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()
    return require_parity({IMAGE_GRAPH: float(np.abs(ort_image - pt_image).max()),
                           TEXT_GRAPH: float(np.abs(ort_text - pt_text).max())}, atol)


def architecture(config: VSEConfig) -> str:
    """"vse" (sum of hinges) or "vse++" (max violation), "-ln" with the layer-normalised GRU."""
    return ("vse++" if config.loss == "max" else "vse") + ("-ln" if config.layer_norm else "")


def export_retrieval(run_dir: Path, repository: Path, name: str, version: int | None = None
                     ) -> Path:
    """Export a retrieval run to repository/name/version (a bundle without gallery)."""
    ckpt, _ = run_checkpoint(run_dir, "retrieval", "a retrieval")
    model, vocab, config = load_vse_model(ckpt)
    model_cfg = config["model"]
    image_size, text_length = int(model_cfg["image_size"]), int(model_cfg["max_length"])
    with staged_bundle(repository, name, version) as (tmp, version):
        export_vse_graphs(model, tmp, image_size=image_size, text_length=text_length)
        vocab.save(tmp / "vocab.json")
        parity = check_vse_parity(model, tmp, image_size, text_length)
        vse = model.config
        manifest = {
            "name": name, "version": version, "task": "retrieval",
            "architecture": architecture(vse),
            "created": created_now(),
            "graphs": {g: describe_graph(tmp, f"{g}.onnx").model_dump()
                       for g in (IMAGE_GRAPH, TEXT_GRAPH)},
            "files": {"vocab": file_entry(tmp, "vocab.json")},
            "preprocessing": image_preprocessing(image_size, vse.encoder.mean, vse.encoder.std,
                                                 tokenizer={"type": "word", "file": "vocab"}),
            "inference": {"embedding_dim": vse.embed_dim, "text_length": text_length,
                          "similarity": "cosine", "galleries": {}},
            "training": {"config": {"vse": vse.to_dict(), "trainer": config.get("trainer", {}),
                                    "task": model_cfg.get("task_config", {})},
                         "dataset": model_cfg.get("data", {}),
                         "checkpoint": str(ckpt), "parity_max_abs_diff": parity},
            "metrics": {},
        }
        write_manifest(tmp, manifest)
    return Path(repository) / name / str(version)
