"""The activity pipeline: a clip's frames -> frame encoder graph -> step graphs -> labels.

`ActivityModel` is what the service batches behind /v1/videos/activities and what
evaluation uses offline (`ActivityModel.from_bundle(path).classify(clip)`), so both
give the same answer.

Graph contract (manifest `inference`, service.bundle.ActivityInference): the frame
encoder maps `frames` (N, 3, S, S) to `features` (N, F); each stream's step graph maps
`features` (B, F) and its state names to `probs` (B, C) and `<state>_out`. An "rgb"
stream reads the T frames, a "motion" stream the T - 1 motion images
0.5 + 0.5 (x_t - x_{t-1}). Every step graph is unrolled over its frames from a zero
state; a stream's clip distribution is the mean of its per-frame distributions, and
the clip's is the weighted sum over the streams (late fusion, Donahue et al. 2015).
The distribution of sampled frame t fuses each stream's at that frame (the motion
image t is the change into frame t, so frame 0 has none; its weights are renormalised
over the streams that see it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import ActivityInference, Bundle, BundleError
from service.errors import InvalidParameter
from service.pipelines.base import GraphContract, ImagePipeline
from service.runtime import OnnxGraph
from service.videos import VideoLimits, clip_input, decode_clip

FRAME_ENCODER = "frame_encoder"
DEFAULT_TOP_K = 5
MAX_TOP_K = 100  # the request schema's bound; a model refuses more than its classes


@dataclass(frozen=True)
class ActivityRequest:
    frames: np.ndarray  # float32 (T, 3, S, S), see service.videos.clip_input
    top_k: int = DEFAULT_TOP_K
    per_frame: bool = False


@dataclass
class LabelScore:
    label: str
    score: float


@dataclass
class FrameScores:
    frame: int  # index among the T sampled frames
    activities: list[LabelScore]


@dataclass
class ActivityResult:
    activities: list[LabelScore]
    frames: list[FrameScores] | None = None
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (C,)
    stream_probs: dict[str, np.ndarray] = field(default_factory=dict)  # input -> (C,)


def read_classes(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise ValueError("expected {\"type\": \"classes\", \"classes\": [...]}")
    return [str(name) for name in data["classes"]]


def motion_images(frames: np.ndarray) -> np.ndarray:
    """(B, T, 3, S, S) -> (B, T - 1, 3, S, S): 0.5 + 0.5 (x_t - x_{t-1})."""
    return np.float32(0.5) + np.float32(0.5) * (frames[:, 1:] - frames[:, :-1])


def top_labels(probs: np.ndarray, classes: Sequence[str], k: int) -> list[LabelScore]:
    """The k most probable classes, best first (ties: the lower class index first)."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [LabelScore(classes[i], float(probs[i])) for i in order]


class ActivityModel(ImagePipeline[ActivityRequest, ActivityResult], task="activity"):
    """A frame encoder graph and one step graph per stream, fused late."""

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        self.video = bundle.manifest.inference_as(ActivityInference)
        super().__init__(bundle, graphs)
        self.frame_encoder = graphs[FRAME_ENCODER]
        self.steps = {s.graph: graphs[s.graph] for s in self.video.streams}
        self.classes = self.read_file(self.video.classes, read_classes)
        self.num_frames = self.video.frames
        if abs(sum(s.weight for s in self.video.streams) - 1.0) > 1e-6:
            raise BundleError(bundle.path, "the stream weights must sum to 1")

    def contract(self) -> dict[str, GraphContract]:
        steps = {s.graph: GraphContract(
            inputs=frozenset({"features", *s.state}),
            outputs=frozenset({"probs", *(f"{name}_out" for name in s.state)}))
            for s in self.video.streams}
        return {FRAME_ENCODER: GraphContract(inputs=frozenset({"frames"}),
                                             outputs=frozenset({"features"})), **steps}

    def defaults(self) -> dict[str, Any]:
        return {"frames": self.num_frames, "top_k": min(DEFAULT_TOP_K, len(self.classes)),
                "classes": list(self.classes),
                "streams": {s.input: s.weight for s in self.video.streams}}

    # ------------------------------------------------------------------ requests

    def top_k(self, top_k: int | None) -> int:
        """The labels a request returns: DEFAULT_TOP_K unless given, at most the model's
        classes (InvalidParameter beyond)."""
        k = min(DEFAULT_TOP_K, len(self.classes)) if top_k is None else top_k
        if not 1 <= k <= len(self.classes):
            raise InvalidParameter(f"top_k must be between 1 and {len(self.classes)} (the "
                                   f"model's classes), got {k}")
        return k

    def request(self, frames: np.ndarray, *, top_k: int | None = None, per_frame: bool = False
                ) -> ActivityRequest:
        """A request for a clip's uint8 frames (n, S, S, 3)."""
        return ActivityRequest(clip_input(frames, self.num_frames, self.pixel_range),
                               self.top_k(top_k), per_frame)

    def classify(self, clip: bytes | str | Path, *, limits: VideoLimits | None = None,
                 top_k: int | None = None, per_frame: bool = False) -> ActivityResult:
        """Classify one clip file offline (its bytes or path); the answer is the service's."""
        data = clip if isinstance(clip, bytes) else Path(clip).read_bytes()
        limits = limits or VideoLimits(max_frames=10_000, max_seconds=3600.0,
                                       max_pixels=1 << 26)
        frames = decode_clip(data, self.image_size, limits)
        return self.run_batch([self.request(frames, top_k=top_k, per_frame=per_frame)])[0]

    # ------------------------------------------------------------------ inference

    def stream_frame_probs(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Per-frame distributions of each stream, input -> (B, T', C), of a batch of clips
        (B, T, 3, S, S): one frame encoder run over every frame and motion image, then each
        step graph unrolled over its frames."""
        b, t = frames.shape[:2]
        inputs = {"rgb": frames} if any(s.input == "rgb" for s in self.video.streams) else {}
        if any(s.input == "motion" for s in self.video.streams):
            inputs["motion"] = motion_images(frames)
        flat = np.concatenate([x.reshape(-1, *x.shape[2:]) for x in inputs.values()])
        features = self.frame_encoder.run({"frames": flat}, ["features"])["features"]
        by_input, start = {}, 0
        for name, x in inputs.items():
            n = x.shape[0] * x.shape[1]
            by_input[name] = features[start:start + n].reshape(b, x.shape[1], -1)
            start += n
        return {s.input: self._unroll(s.graph, s.state, s.hidden_dim, by_input[s.input])
                for s in self.video.streams}

    def _unroll(self, key: str, state_names: list[str], hidden: int,
                features: np.ndarray) -> np.ndarray:
        graph, b = self.steps[key], features.shape[0]
        state = {name: np.zeros((b, hidden), np.float32) for name in state_names}
        outputs = ["probs", *(f"{name}_out" for name in state_names)]
        probs = []
        for t in range(features.shape[1]):
            out = graph.run({"features": np.ascontiguousarray(features[:, t]), **state}, outputs)
            probs.append(out["probs"])
            state = {name: out[f"{name}_out"] for name in state_names}
        return np.stack(probs, axis=1)

    def run_batch(self, requests: Sequence[ActivityRequest]) -> list[ActivityResult]:
        if not requests:
            return []
        per_stream = self.stream_frame_probs(np.stack([r.frames for r in requests]))
        weights = {s.input: s.weight for s in self.video.streams}
        clip = {name: p.mean(axis=1) for name, p in per_stream.items()}  # (B, C) each
        fused = sum(weights[name] * p for name, p in clip.items())
        results = []
        for i, r in enumerate(requests):
            frames = self._frame_scores(per_stream, weights, i, r.top_k) if r.per_frame else None
            results.append(ActivityResult(top_labels(fused[i], self.classes, r.top_k), frames,
                                          fused[i], {n: p[i] for n, p in clip.items()}))
        return results

    def _frame_scores(self, per_stream: Mapping[str, np.ndarray], weights: Mapping[str, float],
                      row: int, top_k: int) -> list[FrameScores]:
        """Fused distribution of each sampled frame (see the module docstring)."""
        out = []
        for t in range(self.num_frames):
            # (weight, distribution) of each stream that sees frame t: motion image t - 1
            # is the change into frame t.
            seen = [(weights[name], p[row, t if name == "rgb" else t - 1])
                    for name, p in per_stream.items() if name == "rgb" or t >= 1]
            total = sum(w for w, _ in seen)
            if not seen or total <= 0:
                continue
            probs = sum(w * p for w, p in seen) / total
            out.append(FrameScores(t, top_labels(probs, self.classes, top_k)))
        return out

    def warm_up_batches(self, size: int) -> list[list[ActivityRequest]]:
        blank = np.zeros((self.num_frames, 3, self.image_size, self.image_size), np.float32)
        return [[ActivityRequest(blank, 1, True)] * size]
