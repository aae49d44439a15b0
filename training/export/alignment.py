"""Export of the visual-semantic alignment model: an image graph and a text graph.

    model_repository/NAME/VERSION/
        manifest.json   task "alignment", inference {"beta", "max_words", "min_region_score"}
        image.onnx      image [batch, 3, S, S] in [0, 1] -> boxes [batch, R, 4],
                        region_scores [batch, R], region_vectors [batch, R, D]
                        (the frozen RegionNet, then v_i = W_m f_i + b_m, Eq. 1)
        text.onnx       tokens [batch, T] int64, lengths [batch] int64
                        -> word_vectors [batch, T, D] (the BRNN, Eq. 2-6)
        vocab.json

T is fixed at export: torch.export specialises the time dimension of nn.RNN, so
sentences are padded to the model's `max_words` (the service refuses longer ones).
ONNX Runtime is compared with PyTorch on fresh random inputs and a bundle that
disagrees is not written (service/alignment.py reads these graphs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.alignment import AlignmentConfig, AlignmentModel
from service.bundle import describe_graph, write_manifest
from service.pipelines.alignment import IMAGE_OUTPUTS, TEXT_INPUTS, TEXT_OUTPUTS
from training.checkpoint import load_weights
from training.data.tokenizer import WordVocab
from training.export.bundle import (
    created_now,
    file_entry,
    image_preprocessing,
    next_version,
    staged_bundle,
)
from training.export.onnx import DEFAULT_OPSET, cpu_session, onnx_export, require_parity
from training.runs import load_region_net, run_checkpoint

IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"


class ImageGraph(nn.Module):
    """image (B, 3, S, S) -> boxes (B, R, 4), region_scores (B, R), region_vectors (B, R, D)."""

    def __init__(self, region_net: nn.Module, model: AlignmentModel) -> None:
        super().__init__()
        self.region_net = region_net
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, features = self.region_net(image)
        return boxes, scores, self.model.regions(features)


class TextGraph(nn.Module):
    """tokens (B, T), lengths (B,) -> word_vectors (B, T, D)."""

    def __init__(self, model: AlignmentModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.words(tokens, lengths)


def export_alignment_graphs(model: AlignmentModel, region_net: nn.Module, out_dir: Path, *,
                            image_size: int, max_words: int,
                            opset: int = DEFAULT_OPSET) -> None:
    """Write image.onnx and text.onnx under out_dir (both models in eval mode)."""
    model.eval()
    region_net.eval()
    batch = torch.export.Dim("batch")
    image = torch.rand(2, 3, image_size, image_size)  # batch > 1: not specialised to 1
    onnx_export(ImageGraph(region_net, model).eval(), (image,), out_dir / IMAGE_FILE,
                 ("image",), IMAGE_OUTPUTS, {"image": {0: batch}}, opset)
    tokens = torch.randint(4, model.config.vocab_size, (3, max_words))
    lengths = torch.tensor([max_words, max(1, max_words // 2), 1])
    onnx_export(TextGraph(model).eval(), (tokens, lengths), out_dir / TEXT_FILE,
                 TEXT_INPUTS, TEXT_OUTPUTS, {"tokens": {0: batch}, "lengths": {0: batch}},
                 opset)


def check_parity(model: AlignmentModel, region_net: nn.Module, bundle_dir: Path, *,
                 image_size: int, max_words: int, seed: int = 0,
                 atol: float = 1e-4) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| of every output on fresh random inputs (raises above atol).

    Word vectors are compared at real words only; padded positions are undefined.
    Boxes and region vectors are compared where the proposals agree, so a near-tie
    between two heatmap peaks cannot fail an otherwise equal graph.
    """
    rng = np.random.default_rng(seed)
    image_s, text_s = cpu_session(bundle_dir / IMAGE_FILE), cpu_session(bundle_dir / TEXT_FILE)
    images = rng.random((3, 3, image_size, image_size), dtype=np.float32)
    ort_image = dict(zip(IMAGE_OUTPUTS, image_s.run(list(IMAGE_OUTPUTS), {"image": images}),
                         strict=True))
    n = 5
    lengths = rng.integers(1, max_words + 1, n).astype(np.int64)
    tokens = rng.integers(4, model.config.vocab_size, (n, max_words)).astype(np.int64)
    tokens[np.arange(max_words)[None, :] >= lengths[:, None]] = model.config.pad_id
    ort_words = text_s.run(list(TEXT_OUTPUTS), {"tokens": tokens, "lengths": lengths})[0]
    with torch.no_grad():
        pt_image = ImageGraph(region_net, model)(torch.from_numpy(images))
        pt_words = TextGraph(model)(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()
    same = np.abs(ort_image["boxes"] - pt_image[0].numpy()).max(-1) < 1e-3  # (B, R)
    diffs = {"image.proposals_mismatch": float(1.0 - same.mean())}
    for name, t in zip(IMAGE_OUTPUTS, pt_image, strict=True):
        diffs[f"image.{name}"] = float(np.abs(ort_image[name] - t.numpy())[same].max())
    real = np.arange(max_words)[None, :] < lengths[:, None]
    diffs["text.word_vectors"] = float(np.abs(ort_words - pt_words)[real].max())
    return require_parity(diffs, atol, {"image.proposals_mismatch": 0.05})


def write_alignment_bundle(model: AlignmentModel, region_net: nn.Module, vocab: WordVocab,
                           bundle: Path, *, image_size: int, max_words: int, beta: float,
                           min_region_score: float = 0.0, training: dict | None = None,
                           metrics: dict | None = None) -> Path:
    """Export, check parity and write the bundle directory `bundle` (NAME/VERSION)."""
    with staged_bundle(bundle.parent.parent, bundle.parent.name, int(bundle.name)) as (tmp, _):
        export_alignment_graphs(model, region_net, tmp, image_size=image_size,
                                max_words=max_words)
        vocab.save(tmp / "vocab.json")
        parity = check_parity(model, region_net, tmp, image_size=image_size,
                              max_words=max_words)
        encoder = region_net.config.encoder
        manifest = {
            "name": bundle.parent.name, "version": int(bundle.name), "task": "alignment",
            "architecture": "brnn-regions",
            "created": created_now(),
            "graphs": {"image": describe_graph(tmp, IMAGE_FILE).model_dump(),
                       "text": describe_graph(tmp, TEXT_FILE).model_dump()},
            "files": {"vocab": file_entry(tmp, "vocab.json")},
            "preprocessing": image_preprocessing(image_size, encoder.mean, encoder.std,
                                                 tokenizer={"type": "word", "file": "vocab"}),
            "inference": {"beta": float(beta), "max_words": int(max_words),
                          "min_region_score": float(min_region_score)},
            "training": {**(training or {}), "parity_max_abs_diff": parity},
            "metrics": metrics or {},
        }
        write_manifest(tmp, manifest)
    return bundle


def load_alignment_run(ckpt: Path) -> tuple[AlignmentModel, WordVocab, dict]:
    """The trained model (eval mode), its vocabulary and the checkpoint's config."""
    ckpt, config = run_checkpoint(ckpt, "alignment", "an alignment")
    model_cfg = config["model"]
    model = AlignmentModel(AlignmentConfig.from_dict(model_cfg["alignment"]))
    load_weights(model, ckpt)
    return model.eval(), WordVocab.from_dict(model_cfg["vocab"]), config


def export_alignment(run_dir: Path, repository: Path, name: str,
                     version: int | None = None) -> Path:
    """`glimpse export` of an alignment run (EXPORTERS["alignment"])."""
    ckpt, _ = run_checkpoint(run_dir, "alignment", "an alignment")
    model, vocab, config = load_alignment_run(ckpt)
    model_cfg = config["model"]
    region_net = load_region_net(model_cfg["regions_run"])
    version = version or next_version(repository, name)
    task_cfg = model_cfg.get("task_config", {})
    training = {"config": {"alignment": model_cfg["alignment"], "task": task_cfg,
                           "trainer": config.get("trainer", {})},
                "dataset": model_cfg.get("data", {}), "checkpoint": str(ckpt),
                "regions_run": model_cfg["regions_run"]}
    return write_alignment_bundle(
        model, region_net, vocab, repository / name / str(version),
        image_size=int(model_cfg["image_size"]), max_words=int(model_cfg["max_words"]),
        beta=float(model_cfg["beta"]), min_region_score=float(model_cfg["min_region_score"]),
        training=training)

