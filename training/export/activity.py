"""`glimpse export` of an activity run: the frame encoder and a step graph per stream.

    model_repository/NAME/VERSION/
        manifest.json        task "activity"; inference {"frames", "feature_dim",
                             "classes", "streams": [{"input", "graph", "state",
                             "hidden_dim", "weight"}]}
        frame_encoder.onnx   frames (N, 3, S, S) in [0, 1] -> features (N, F)
                             (training/export/frames.py)
        rgb_step.onnx        one frame of the RGB stream:
                             features (B, F), h (B, H), c (B, H)
                             -> probs (B, C), h_out (B, H), c_out (B, H)
        motion_step.onnx     the same for the motion stream, which reads φ of the motion
                             images 0.5 + 0.5 (x_t - x_{t-1}), t = 1 .. T - 1
        classes.json         {"type": "classes", "classes": [...]}: column c of probs

The step graph is `ActivityRecognizer.classify_step` followed by a softmax, with
the LSTM state an explicit input and output, so the service unrolls it over the
frames and reads a distribution per frame; the clip's is their mean (Sec. 4 of
Donahue et al.). A single-frame model's step has no state. A run of `glimpse
train activity` exports one stream of weight 1; a fusion run (`glimpse fuse
activity`) both, each with its weight in the late fusion.

The export is followed by a parity check of ONNX Runtime against PyTorch on fresh
random inputs and refuses to write a bundle that fails it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.lrcn import ActivityConfig, ActivityRecognizer
from service.bundle import describe_graph, write_manifest
from training.checkpoint import load_weights
from training.export.bundle import created_now, file_entry, image_preprocessing, staged_bundle
from training.export.frames import (
    FRAME_ENCODER_FILE,
    FRAME_ENCODER_KEY,
    export_frame_encoder,
    frame_encoder_parity,
)
from training.export.onnx import DEFAULT_OPSET, cpu_session, onnx_export, require_parity
from training.runs import run_checkpoint, run_weights, submodule_weights

CLASSES_KEY = "classes"


class ClassifyStepGraph(nn.Module):
    """One frame of a stream: features (B, F), *state (B, H) -> probs (B, C), *state_out."""

    def __init__(self, model: ActivityRecognizer) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = self.model.state_names
        scores, new = self.model.classify_step(features, dict(zip(names, state, strict=True)))
        return (F.softmax(scores, dim=-1), *(new[name] for name in names))


@dataclass
class Stream:
    """A trained stream of an activity bundle and its weight in the late fusion."""

    model: ActivityRecognizer
    weight: float

    @property
    def input(self) -> str:
        return self.model.config.input

    @property
    def graph_key(self) -> str:
        return f"{self.input}_step"


def load_activity_run(run_dir: str | Path) -> tuple[list[Stream], dict]:
    """The streams of an activity run or fusion run (eval mode) and its config."""
    ckpt, config = run_checkpoint(run_dir, "activity", "an activity")
    model_cfg = config["model"]
    if "fusion" not in model_cfg:
        model = ActivityRecognizer(ActivityConfig.from_dict(model_cfg["activity"]))
        load_weights(model, ckpt)
        return [Stream(model.eval(), 1.0)], config
    weights = run_weights(ckpt)
    fusion = model_cfg["fusion"]
    streams = []
    for name, weight in (("rgb", fusion["rgb_weight"]), ("motion", 1 - fusion["rgb_weight"])):
        model = ActivityRecognizer(ActivityConfig.from_dict(fusion["streams"][name]))
        model.load_state_dict(submodule_weights(weights, f"{name}."))
        streams.append(Stream(model.eval(), float(weight)))
    return streams, config


def architecture(streams: list[Stream]) -> str:
    """"lrcn-rgb", "lrcn-fusion", "single-frame-motion", ...: the temporal model, then the input."""
    temporal = {"lstm": "lrcn", "single-frame": "single-frame"}
    kinds = {temporal[s.model.config.temporal] for s in streams}
    inputs = "fusion" if len(streams) > 1 else streams[0].input
    return f"{'+'.join(sorted(kinds))}-{inputs}"


def export_step(stream: Stream, path: Path, opset: int = DEFAULT_OPSET) -> ClassifyStepGraph:
    model = stream.model
    graph = ClassifyStepGraph(model).eval()
    batch = torch.export.Dim("batch")
    features = torch.randn(2, model.feature_dim)
    state = [torch.randn(2, model.config.hidden_dim) for _ in model.state_names]
    # forward(features, *state): the state's shapes are one more (nested) entry, if any
    dynamic = ({0: batch}, tuple({0: batch} for _ in state)) if state else ({0: batch},)
    onnx_export(graph, (features, *state), path, ("features", *model.state_names),
                ("probs", *(f"{name}_out" for name in model.state_names)), dynamic, opset)
    return graph


@torch.no_grad()
def step_parity(graph: ClassifyStepGraph, path: Path, key: str,
                rng: np.random.Generator) -> dict[str, float]:
    model = graph.model
    feeds = {"features": rng.standard_normal((3, model.feature_dim)).astype(np.float32),
             **{name: rng.standard_normal((3, model.config.hidden_dim)).astype(np.float32)
                for name in model.state_names}}
    session = cpu_session(path)
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, feeds)
    want = graph(*(torch.from_numpy(feeds[i.name]) for i in session.get_inputs()))
    return {f"{key}.{n}": float(np.abs(g - w.numpy()).max())
            for n, g, w in zip(names, got, want, strict=True)}


def write_activity_bundle(streams: list[Stream], repository: Path, name: str,
                          version: int | None, *, image_size: int, frames: int,
                          class_names: list[str], training: dict, seed: int = 0,
                          atol: float = 1e-4) -> Path:
    """Export, check and describe everything of bundle repository/name/version."""
    first = streams[0].model
    encoder, grid = first.encoder, first.config.frame_grid
    if any(s.model.config.frame_grid != grid for s in streams):
        raise ValueError("the streams of a bundle share one frame encoder and grid")
    rng = np.random.default_rng(seed)
    with staged_bundle(repository, name, version) as (tmp, version):
        frame_graph = export_frame_encoder(encoder, grid, tmp / FRAME_ENCODER_FILE, image_size)
        diffs = frame_encoder_parity(frame_graph, tmp / FRAME_ENCODER_FILE, image_size, rng)
        for stream in streams:
            path = tmp / f"{stream.graph_key}.onnx"
            graph = export_step(stream, path)
            diffs.update(step_parity(graph, path, stream.graph_key, rng))
        parity = require_parity(diffs, atol)
        (tmp / "classes.json").write_text(json.dumps({"type": "classes",
                                                      "classes": class_names}) + "\n")
        graphs = {FRAME_ENCODER_KEY: describe_graph(tmp, FRAME_ENCODER_FILE).model_dump()}
        graphs.update({s.graph_key: describe_graph(tmp, f"{s.graph_key}.onnx").model_dump()
                       for s in streams})
        manifest = {
            "name": name, "version": version, "task": "activity",
            "architecture": architecture(streams), "created": created_now(),
            "graphs": graphs,
            "files": {CLASSES_KEY: file_entry(tmp, "classes.json")},
            "preprocessing": image_preprocessing(image_size, encoder.config.mean,
                                                 encoder.config.std),
            "inference": {
                "frames": frames, "feature_dim": first.feature_dim,
                "classes": CLASSES_KEY,
                "streams": [{"input": s.input, "graph": s.graph_key,
                             "state": list(s.model.state_names),
                             "hidden_dim": s.model.config.hidden_dim,
                             "weight": s.weight} for s in streams]},
            "training": {**training, "parity_max_abs_diff": parity},
            "metrics": {},
        }
        write_manifest(tmp, manifest)
    return Path(repository) / name / str(version)


def export_activity(run_dir: Path, repository: Path, name: str, version: int | None = None
                    ) -> Path:
    """`glimpse export` of an activity run or a fusion run (EXPORTERS["activity"])."""
    streams, config = load_activity_run(run_dir)
    ckpt, _ = run_checkpoint(run_dir, "activity", "an activity")
    model_cfg = config["model"]
    training = {"config": {key: model_cfg[key] for key in ("activity", "fusion")
                           if key in model_cfg}
                | {"trainer": config.get("trainer", {}), "task": model_cfg.get("task_config", {})},
                "dataset": model_cfg.get("data", {}), "encoder_run": model_cfg.get("encoder_run"),
                "checkpoint": str(ckpt)}
    return write_activity_bundle(streams, Path(repository), name, version,
                                 image_size=int(model_cfg["image_size"]),
                                 frames=int(model_cfg["frames"]),
                                 class_names=list(model_cfg["class_names"]), training=training)
