"""The frame encoder graph both video bundles carry (activity, video-caption).

    frame_encoder.onnx   frames (N, 3, S, S) in [0, 1] -> features (N, F)

φ(x) of models.lrcn.encode_frames for single frames: the frozen encoder's
annotation grid averaged to G x G cells, F = G * G * D. The service runs it on
every sampled frame (and motion image) of every clip of a batch at once; the
recurrent graphs then read the features frame by frame. Two bundles trained on
one encoder at one G export the same bytes, which the repository stores once
(training.export.bundle.share_identical_files).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.encoder import ImageEncoder
from models.lrcn import encode_frames
from training.export.onnx import DEFAULT_OPSET, cpu_session, onnx_export

FRAME_ENCODER_FILE = "frame_encoder.onnx"
FRAME_ENCODER_KEY = "frame_encoder"


class FrameEncoderGraph(nn.Module):
    """frames (N, 3, S, S) in [0, 1] -> φ (N, G·G·D)."""

    def __init__(self, encoder: ImageEncoder, grid: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.grid = grid

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return encode_frames(self.encoder, frames.unsqueeze(1), self.grid).squeeze(1)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d registered just before it (the
    order in which every glimpse encoder applies them), in place; returns `module`.

    The ONNX exporter folds them itself when the encoder is frozen, after the weights
    were rounded to half precision, which leaves the folded convolutions in float32;
    folded here first, they are rounded and stored in half like every other weight."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and \
                    bn.track_running_stats and conv.out_channels == bn.num_features:
                setattr(parent, name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(parent, bn_name, nn.Identity())
    return module


def export_frame_encoder(encoder: ImageEncoder, grid: int, path: Path, image_size: int,
                         opset: int = DEFAULT_OPSET) -> FrameEncoderGraph:
    """Write frame_encoder.onnx from a copy of `encoder` with its BatchNorms folded into
    the convolutions (weights rounded to half precision, as every graph's); returns the
    graph module, for the parity check."""
    encoder = fold_batch_norms(copy.deepcopy(encoder).eval())
    graph = FrameEncoderGraph(encoder, grid).eval()
    frames = torch.rand(2, 3, image_size, image_size)  # 2: the batch stays symbolic
    onnx_export(graph, (frames,), path, ("frames",), ("features",),
                {"frames": {0: torch.export.Dim("batch")}}, opset)
    return graph


@torch.no_grad()
def frame_encoder_parity(graph: FrameEncoderGraph, path: Path, image_size: int,
                         rng: np.random.Generator) -> dict[str, float]:
    """{"frame_encoder.features": max |ONNX Runtime - PyTorch|} on fresh random frames."""
    frames = rng.random((5, 3, image_size, image_size), dtype=np.float32)
    (got,) = cpu_session(path).run(["features"], {"frames": frames})
    want = graph(torch.from_numpy(frames)).numpy()
    return {"frame_encoder.features": float(np.abs(got - want).max())}
