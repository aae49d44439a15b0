"""`glimpse export` of a video-caption run: the frame encoder, the encoder step, the decoder step.

    model_repository/NAME/VERSION/
        manifest.json        task "video-caption"; decoding as a caption bundle's;
                             inference {"frames", "feature_dim", "video_encoder"}
        frame_encoder.onnx   frames (N, 3, S, S) in [0, 1] -> features (N, F)
                             (training/export/frames.py)
        encoder_step.onnx    lstm-encoder only, one frame of the encoder LSTM:
                             features (B, F), h (B, H), c (B, H) [, prev (B, H)]
                             -> h_out, c_out [, prev_out]; its state names are
                             inference "encoder_state" (prev with frame_diff)
        decoder_step.onnx    the caption step contract (training/export/caption.py):
                             tokens (N,), parents (N,), h (M, H), c (M, H)
                             [, context (N, 1, F or H)] -> log_probs (N, K),
                             token_ids (N, K), h_out (N, H), c_out (N, H)
        vocab.json

"lstm-encoder" (LRCN's encoder-decoder): the service unrolls encoder_step over the
T frames from a zero state, and the final state starts the decoder (with
`feed_encoding`, the final h is also the decoder's context, fed beside every word). "mean-pool":
the decoder's context is the mean of the T frame features and its state starts at
zero; there is no encoder step. Either way decoding is the service's beam search
over decoder_step, exactly as for an image captioner.

The export is followed by a parity check of ONNX Runtime against PyTorch on fresh
random inputs and refuses to write a bundle that fails it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.lrcn import LSTMEncoderDecoder, VideoCaptionConfig, VideoCaptioner
from models.lrcn import build_video_caption_model as build_model
from service.bundle import describe_graph, write_manifest
from training.checkpoint import load_weights
from training.data.tokenizer import WordVocab
from training.export.bundle import created_now, file_entry, image_preprocessing, staged_bundle
from training.export.caption import STEP_FILE, StepGraph, step_input_names, step_output_names
from training.export.frames import (
    FRAME_ENCODER_FILE,
    FRAME_ENCODER_KEY,
    export_frame_encoder,
    frame_encoder_parity,
)
from training.export.onnx import DEFAULT_OPSET, cpu_session, onnx_export, require_parity
from training.runs import run_checkpoint

ENCODER_STEP_FILE = "encoder_step.onnx"
DEFAULT_TOP_K = 64
STATE = ("h", "c")


class EncoderStepGraph(nn.Module):
    """One frame of the encoder LSTM: features (B, F), h, c (B, H) -> h_out, c_out."""

    def __init__(self, model: LSTMEncoderDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = self.model.encoder_state_names
        new = self.model.encode_step(features, dict(zip(names, state, strict=True)))
        return tuple(new[name] for name in names)


def context_dim(model: VideoCaptioner) -> int:
    """Size of the decoder's context per row: F (the mean feature) or H (the encoding)."""
    return model.config.hidden_dim if isinstance(model, LSTMEncoderDecoder) else \
        model.feature_dim


def load_video_caption_run(run_dir: str | Path) -> tuple[VideoCaptioner, WordVocab, dict]:
    """The trained description model of a run (eval mode), its vocabulary and config."""
    ckpt, config = run_checkpoint(run_dir, "video-caption", "a video-caption")
    model_cfg = config["model"]
    model = build_model(VideoCaptionConfig.from_dict(model_cfg["video_caption"]))
    load_weights(model, ckpt)
    return model.eval(), WordVocab.from_dict(model_cfg["vocab"]), config


def export_encoder_step(model: LSTMEncoderDecoder, path: Path,
                        opset: int = DEFAULT_OPSET) -> EncoderStepGraph:
    graph = EncoderStepGraph(model).eval()
    batch, hidden = torch.export.Dim("batch"), model.config.hidden_dim
    names = model.encoder_state_names
    args = (torch.randn(2, model.feature_dim), *(torch.randn(2, hidden) for _ in names))
    onnx_export(graph, args, path, ("features", *names), tuple(f"{s}_out" for s in names),
                ({0: batch}, tuple({0: batch} for _ in names)), opset)
    return graph


def export_decoder_step(model: VideoCaptioner, path: Path, top_k: int,
                        opset: int = DEFAULT_OPSET) -> StepGraph:
    """decoder_step.onnx with the caption step contract (N = 3 rows continue M = 2)."""
    graph = StepGraph(model, top_k).eval()
    hidden = model.config.hidden_dim
    parents = torch.tensor([0, 1, 1])
    tokens = torch.randint(0, model.config.vocab_size, (3,))
    states = [torch.randn(2, hidden) for _ in STATE]
    contexts = [torch.randn(3, 1, context_dim(model))] if model.context_names else []
    rows, prev_rows = torch.export.Dim("batch"), torch.export.Dim("prev_batch")
    dynamic = ({0: rows}, {0: rows},
               tuple([{0: prev_rows}] * len(states) + [{0: rows}] * len(contexts)))
    onnx_export(graph, (tokens, parents, *states, *contexts), path, step_input_names(model),
                step_output_names(model), dynamic, opset)
    return graph


@torch.no_grad()
def graph_parity(module: nn.Module, path: Path, key: str, feeds: dict[str, np.ndarray]
                 ) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| of each output of graph `key` on `feeds`
    (token ids: the share that differ)."""
    session = cpu_session(path)
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, feeds)
    want = module(*(torch.from_numpy(feeds[i.name]) for i in session.get_inputs()))
    diffs = {}
    for name, g, w in zip(names, got, want, strict=True):
        if name == "token_ids":
            diffs[f"{key}.token_ids_mismatch"] = float((g != w.numpy()).mean())
        else:
            diffs[f"{key}.{name}"] = float(np.abs(g - w.numpy()).max())
    return diffs


def write_video_caption_bundle(model: VideoCaptioner, vocab: WordVocab, repository: Path,
                               name: str, version: int | None, *, image_size: int, frames: int,
                               max_length: int, training: dict, top_k: int = DEFAULT_TOP_K,
                               seed: int = 0, atol: float = 1e-4) -> Path:
    """Export, check and describe everything of bundle repository/name/version."""
    rng = np.random.default_rng(seed)
    hidden, feature_dim = model.config.hidden_dim, model.feature_dim
    top_k = min(top_k, model.config.vocab_size)
    lstm_encoder = isinstance(model, LSTMEncoderDecoder)
    with staged_bundle(repository, name, version) as (tmp, version):
        frame_graph = export_frame_encoder(model.encoder, model.config.frame_grid,
                                           tmp / FRAME_ENCODER_FILE, image_size)
        diffs = frame_encoder_parity(frame_graph, tmp / FRAME_ENCODER_FILE, image_size, rng)
        graphs = [FRAME_ENCODER_KEY, "decoder_step"]
        if lstm_encoder:
            encoder_graph = export_encoder_step(model, tmp / ENCODER_STEP_FILE)
            diffs |= graph_parity(encoder_graph, tmp / ENCODER_STEP_FILE, "encoder_step", {
                "features": rng.standard_normal((3, feature_dim)).astype(np.float32),
                **{s: rng.standard_normal((3, hidden)).astype(np.float32)
                   for s in model.encoder_state_names}})
            graphs.insert(1, "encoder_step")
        step_graph = export_decoder_step(model, tmp / STEP_FILE, top_k)
        n = 5
        diffs |= graph_parity(step_graph, tmp / STEP_FILE, "decoder_step", {
            "tokens": rng.integers(0, model.config.vocab_size, n).astype(np.int64),
            "parents": rng.integers(0, 3, n).astype(np.int64),
            **{s: rng.standard_normal((3, hidden)).astype(np.float32) for s in STATE},
            **({"context": rng.standard_normal((n, 1, context_dim(model))).astype(np.float32)}
               if model.context_names else {})})
        parity = require_parity(diffs, atol)
        vocab.save(tmp / "vocab.json")
        encoder = model.config.encoder
        manifest = {
            "name": name, "version": version, "task": "video-caption",
            "architecture": model.config.arch + ("-ln" if model.config.layer_norm else ""),
            "created": created_now(),
            "graphs": {key: describe_graph(tmp, f"{key}.onnx").model_dump() for key in graphs},
            "files": {"vocab": file_entry(tmp, "vocab.json")},
            "preprocessing": image_preprocessing(image_size, encoder.mean, encoder.std,
                                                 tokenizer={"type": "word", "file": "vocab"}),
            "decoding": {"bos_id": vocab.bos_id, "eos_id": vocab.eos_id, "pad_id": vocab.pad_id,
                         "top_k": top_k, "state": list(STATE),
                         "context": list(model.context_names), "attention": None,
                         "beam_size": 5, "max_length": max_length, "length_penalty": 0.0},
            "inference": {"frames": frames, "feature_dim": feature_dim,
                          "video_encoder": model.config.arch,
                          **({"encoder_state": list(model.encoder_state_names)}
                             if lstm_encoder else {})},
            "training": {**training, "parity_max_abs_diff": parity},
            "metrics": {},
        }
        write_manifest(tmp, manifest)
    return Path(repository) / name / str(version)


def export_video_caption(run_dir: Path, repository: Path, name: str,
                         version: int | None = None) -> Path:
    """`glimpse export` of a `glimpse train video-caption` run (EXPORTERS["video-caption"])."""
    model, vocab, config = load_video_caption_run(run_dir)
    ckpt, _ = run_checkpoint(run_dir, "video-caption", "a video-caption")
    model_cfg = config["model"]
    task_cfg = model_cfg.get("task_config", {})
    training = {"config": {"video_caption": model_cfg["video_caption"],
                           "trainer": config.get("trainer", {}), "task": task_cfg},
                "dataset": model_cfg.get("data", {}), "encoder_run": model_cfg.get("encoder_run"),
                "checkpoint": str(ckpt)}
    return write_video_caption_bundle(
        model, vocab, Path(repository), name, version, image_size=int(model_cfg["image_size"]),
        frames=int(model_cfg["frames"]), max_length=int(task_cfg.get("max_length", 24)),
        training=training)
