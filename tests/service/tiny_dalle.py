"""A tiny random-weight DALL-E bundle, exported by training/export/dalle.py.

The transformer (sparse attention, 2 layers) reads prompts of at most 7 words and draws
a 4x4 grid of 13 codes that a tiny dVAE decodes to 16 px images; the reranker is a tiny
joint embedding written as a retrieval bundle first (a mean-pooled conv image encoder,
a bag-of-words text encoder, both unit-length) and carried into the dalle bundle the
way the committed retrieval-vse is.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.dalle import Dalle, DalleConfig
from models.dvae import DiscreteVAE, DVAEConfig
from service.bundle import describe_graph, file_sha256, write_manifest
from training.data.tokenizer import WordVocab
from training.export.dalle import DalleModels, write_dalle_bundle
from training.export.onnx import DEFAULT_OPSET, onnx_export

WORDS = ["a", "red", "blue", "green", "circle", "square", "left", "right", "of", "above",
         "below", "small", "large", "and"]
TEXT_LENGTH, GRID, CODES, IMAGE_SIZE = 8, 4, 13, 16
RERANK_TEXT_LENGTH, RERANK_DIM = 10, 6


class TinyImageEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.proj = nn.Linear(8, RERANK_DIM)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.conv(image - 0.5)).mean(dim=(2, 3))
        return F.normalize(self.proj(pooled), dim=1)


class TinyTextEncoder(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.words = nn.Parameter(torch.randn(vocab_size, RERANK_DIM))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        inside = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]  # (B, T)
        summed = (self.words[tokens] * inside[..., None]).sum(dim=1)
        return F.normalize(summed, dim=1)


def tiny_retrieval_bundle(bundle: Path, *, seed: int = 0) -> Path:
    """A retrieval bundle at `bundle` (.../NAME/1) with the tiny joint embedding; its
    vocabulary orders the words differently from the transformer's."""
    torch.manual_seed(seed)
    bundle.mkdir(parents=True)
    vocab = WordVocab(list(reversed(WORDS)))
    vocab.save(bundle / "vocab.json")
    batch = torch.export.Dim("batch")
    onnx_export(TinyImageEncoder().eval(), (torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE),),
                bundle / "image_encoder.onnx", ("image",), ("embedding",),
                {"image": {0: batch}}, DEFAULT_OPSET)
    tokens = torch.randint(0, len(vocab), (2, RERANK_TEXT_LENGTH))
    onnx_export(TinyTextEncoder(len(vocab)).eval(), (tokens, torch.tensor([3, 5])),
                bundle / "text_encoder.onnx", ("tokens", "lengths"), ("embedding",),
                {"tokens": {0: batch}, "lengths": {0: batch}}, DEFAULT_OPSET)
    write_manifest(bundle, {
        "name": bundle.parent.name, "version": int(bundle.name), "task": "retrieval",
        "architecture": "bag-of-words", "created": datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
        "graphs": {g: describe_graph(bundle, f"{g}.onnx")
                   for g in ("image_encoder", "text_encoder")},
        "files": {"vocab": {"file": "vocab.json", "sha256": file_sha256(bundle / "vocab.json")}},
        "preprocessing": {"image_size": IMAGE_SIZE,
                          "tokenizer": {"type": "word", "file": "vocab"}},
        "inference": {"embedding_dim": RERANK_DIM, "text_length": RERANK_TEXT_LENGTH},
    })
    return bundle


def tiny_dalle_models(seed: int = 0, *, reranker: Path | None = None,
                      attention: str = "sparse") -> DalleModels:
    torch.manual_seed(seed)
    vocab = WordVocab(WORDS)
    dalle = Dalle(DalleConfig(text_vocab_size=len(vocab), text_length=TEXT_LENGTH,
                              image_vocab_size=CODES, image_grid=GRID, n_layer=2, n_head=2,
                              n_embd=16, attention=attention))
    # Logits large enough that sampling follows the model rather than drawing uniformly.
    with torch.no_grad():
        dalle.image_head.weight.mul_(50.0)
    dvae = DiscreteVAE(DVAEConfig(image_size=IMAGE_SIZE, grid=GRID, codebook_size=CODES,
                                  channels=4, max_channels=8, code_dim=4))
    return DalleModels(dalle=dalle.eval(), dvae=dvae.eval(), vocab=vocab, reranker=reranker,
                       training={"config": {"seed": seed}})


def tiny_dalle_bundle(repository: Path, name: str = "dalle-tiny", version: int = 1, *,
                      seed: int = 0, reranker: bool = True) -> Path:
    """The bundle repository/NAME/VERSION; its reranker's source bundle is written under
    repository/.sources/ (hidden, so the service does not serve it)."""
    source = None
    if reranker:
        source = tiny_retrieval_bundle(repository / ".sources" / f"{name}-rerank" / "1",
                                       seed=seed)
    return write_dalle_bundle(tiny_dalle_models(seed, reranker=source), repository, name,
                              version)


def without_reranker(bundle: Path, repository: Path, name: str) -> Path:
    """A copy of `bundle` as repository/NAME/1 with its reranker taken out (cheaper than
    exporting another bundle)."""
    copy = repository / name / "1"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    reranker = manifest["inference"].pop("reranker")
    for key in (reranker["image_graph"], reranker["text_graph"]):
        (copy / manifest["graphs"].pop(key)["file"]).unlink()
    (copy / manifest["files"].pop(reranker["vocabulary"])["file"]).unlink()
    manifest.update(name=name, version=1)
    write_manifest(copy, manifest)
    return copy
