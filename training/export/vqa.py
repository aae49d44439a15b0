"""Export of a VQA run: one ONNX graph with the frozen region detector inside.

    model_repository/NAME/VERSION/
        manifest.json  task "vqa"; inference {"answers": "answers", "max_question_length"}
        vqa.onnx       image [batch, 3, S, S] in [0, 1], question [batch, T] int64
                       (right-padded word ids), question_length [batch] int64
                       -> answer_scores [batch, A] (sigmoid scores s), attention
                          [batch, R] (alpha, mean over glimpses), boxes [batch, R, 4]
                          (normalised x0, y0, x1, y1)
        vocab.json     question words (WordVocab JSON)
        answers.json   {"type": "answers", "answers": [...]}: row a of answer_scores

Training reads region features precomputed by the detector of `regions_run`; the
graph recomputes them from the image with that same detector, so the service
takes a plain image. The export is followed by a parity check of ONNX Runtime
against PyTorch on fresh random inputs and refuses to write a bundle that fails it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.regions import RegionNet
from models.vqa import UpDownVqa, VqaConfig
from service.bundle import describe_graph, write_manifest
from training.checkpoint import load_weights
from training.data.tokenizer import WordVocab
from training.export.bundle import created_now, file_entry, image_preprocessing, staged_bundle
from training.export.onnx import DEFAULT_OPSET, cpu_session, onnx_export, require_parity
from training.runs import load_region_net, run_checkpoint

GRAPH_FILE = "vqa.onnx"
INPUTS = ("image", "question", "question_length")
OUTPUTS = ("answer_scores", "attention", "boxes")


class VqaGraph(nn.Module):
    """Region detector + top-down VQA model: the contract of vqa.onnx."""

    def __init__(self, regions: RegionNet, vqa: UpDownVqa) -> None:
        super().__init__()
        self.regions = regions
        self.vqa = vqa

    def forward(self, image: torch.Tensor, question: torch.Tensor,
                question_length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, features = self.regions(image)  # (B, R, 4), (B, R), (B, R, F)
        logits, attention, _ = self.vqa(features, boxes, scores, question, question_length)
        return torch.sigmoid(logits), attention, boxes


def load_vqa_run(ckpt: Path) -> tuple[UpDownVqa, WordVocab, list[str], dict]:
    """The trained model (eval mode), its question vocabulary, answers and config."""
    ckpt, config = run_checkpoint(ckpt, "vqa", "a VQA")
    model_cfg = config["model"]
    model = UpDownVqa(VqaConfig.from_dict(model_cfg["vqa"]))
    load_weights(model, ckpt)
    model.eval()
    return model, WordVocab.from_dict(model_cfg["vocab"]), list(model_cfg["answers"]), config


def export_vqa_graph(graph: VqaGraph, path: Path, image_size: int,
                     opset: int = DEFAULT_OPSET) -> None:
    """Write vqa.onnx with symbolic batch and question length."""
    graph.eval()
    # Example sizes above 1, so that torch.export specialises neither dimension.
    vocab_size = graph.vqa.config.vocab_size
    image = torch.rand(2, 3, image_size, image_size)
    question = torch.randint(4, vocab_size, (2, 5)) if vocab_size > 4 else torch.zeros(
        2, 5, dtype=torch.long)
    length = torch.tensor([5, 3])
    batch, words = torch.export.Dim("batch"), torch.export.Dim("words")
    dynamic = {"image": {0: batch}, "question": {0: batch, 1: words},
               "question_length": {0: batch}}
    onnx_export(graph, (image, question, length), path, INPUTS, OUTPUTS, dynamic, opset)


def check_parity(graph: VqaGraph, path: Path, image_size: int, *, seed: int = 0,
                 atol: float = 1e-4) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| of each output on fresh random inputs of new sizes."""
    rng = np.random.default_rng(seed)
    session = cpu_session(path)
    batch, words = 3, 7
    feeds = {
        "image": rng.random((batch, 3, image_size, image_size), dtype=np.float32),
        "question": rng.integers(0, graph.vqa.config.vocab_size, (batch, words)),
        "question_length": np.array([words, 1, 4], dtype=np.int64),
    }
    got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds), strict=True))
    with torch.no_grad():
        want = graph(*(torch.from_numpy(feeds[name]) for name in INPUTS))
    return require_parity({name: float(np.abs(got[name] - w.numpy()).max())
                           for name, w in zip(OUTPUTS, want, strict=True)}, atol)


def write_vqa_bundle(graph: VqaGraph, repository: Path, name: str, version: int | None, *,
                     image_size: int, vocab: WordVocab, answers: list[str],
                     max_question_length: int, training: dict) -> Path:
    """Export, check and describe everything of bundle repository/name/version."""
    with staged_bundle(repository, name, version) as (tmp, version):
        export_vqa_graph(graph, tmp / GRAPH_FILE, image_size)
        parity = check_parity(graph, tmp / GRAPH_FILE, image_size)
        vocab.save(tmp / "vocab.json")
        (tmp / "answers.json").write_text(json.dumps({"type": "answers", "answers": answers},
                                                     indent=1) + "\n")
        encoder = graph.regions.config.encoder
        manifest = {
            "name": name, "version": version, "task": "vqa",
            "architecture": vqa_architecture(graph.vqa.config),
            "created": created_now(),
            "graphs": {"vqa": describe_graph(tmp, GRAPH_FILE).model_dump()},
            "files": {key: file_entry(tmp, f"{key}.json") for key in ("vocab", "answers")},
            "preprocessing": image_preprocessing(image_size, encoder.mean, encoder.std,
                                                 tokenizer={"type": "word", "file": "vocab"}),
            "inference": {"answers": "answers", "max_question_length": max_question_length},
            "training": {**training, "parity_max_abs_diff": parity},
            "metrics": {},
        }
        write_manifest(tmp, manifest)
    return Path(repository) / name / str(version)


def export_vqa(run_dir: Path, repository: Path, name: str, version: int | None = None
               ) -> Path:
    """`glimpse export` of a `glimpse train vqa` run (EXPORTERS["vqa"])."""
    ckpt, _ = run_checkpoint(run_dir, "vqa", "a VQA")
    model, vocab, answers, config = load_vqa_run(ckpt)
    model_cfg = config["model"]
    regions = load_region_net(model_cfg["regions_run"])
    _, regions_config = run_checkpoint(model_cfg["regions_run"], "regions", "a region")
    image_size = int(regions_config["model"]["image_size"])
    training = {"config": {"vqa": model_cfg["vqa"], "trainer": config.get("trainer", {}),
                           "task": model_cfg.get("task_config", {})},
                "dataset": model_cfg.get("data", {}), "regions_run": model_cfg["regions_run"],
                "checkpoint": str(ckpt)}
    graph = VqaGraph(regions, model).eval()
    return write_vqa_bundle(graph, Path(repository), name, version,
                            image_size=image_size, vocab=vocab,
                            answers=answers,
                            max_question_length=int(model_cfg["max_question_length"]),
                            training=training)


def vqa_architecture(config: VqaConfig) -> str:
    """The manifest's architecture: glimpses, then the branches beyond the paper's model
    ("updown-g2-rn-geo-count": two glimpses, relation network, glimpse geometry, counting)."""
    branches = [("rn", config.relations), ("geo", config.glimpse_geometry),
                ("count", config.counting)]
    return "-".join([f"updown-g{config.glimpses}", *(name for name, on in branches if on)])
