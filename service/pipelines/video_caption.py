"""The video description pipeline: frames -> frame encoder -> video encoder -> beam search.

`VideoCaptionModel` is what the service batches behind /v1/videos/captions and what
evaluation uses offline (`VideoCaptionModel.from_bundle(path).describe(clip)`).

Graph contract (manifest `decoding` and `inference`, service.bundle.VideoCaptionInference):
the frame encoder maps `frames` (N, 3, S, S) to `features` (N, F). "lstm-encoder":
`encoder_step` maps `features` (B, F), `h`, `c` (and `prev` with frame_diff: inference
`encoder_state`) to their `_out`s; unrolled over the
T frames from zeros, its final state starts the decoder (and when the decoder reads a
`context`, the final h (B, 1, H) is that context). "mean-pool": the decoder's
`context` is the mean feature (B, 1, F) and its state starts at zero. The decoder step
graph has the caption step contract (service/pipelines/caption.py) and decodes with the
same beam search, with the same parameters as /v1/captions: a batch mixes beam sizes,
lengths, penalties and caption counts, and each request gets its solo answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Bundle, BundleError, Decoding, VideoCaptionInference
from service.decoding import Hypothesis, StepOutput, beam_search
from service.pipelines.base import GraphContract, ImagePipeline
from service.pipelines.caption import (
    Caption,
    CaptionResult,
    SearchParams,
    Vocabulary,
    beam_search_params,
)
from service.runtime import OnnxGraph
from service.videos import VideoLimits, clip_input, decode_clip

FRAME_ENCODER = "frame_encoder"
ENCODER_STEP = "encoder_step"
DECODER_STEP = "decoder_step"


@dataclass(frozen=True)
class VideoCaptionRequest:
    frames: np.ndarray  # float32 (T, 3, S, S), see service.videos.clip_input
    params: SearchParams


def state_size(bundle: Bundle, name: str) -> int:
    """H of the decoder step's state input `name` [batch, H] (recorded in the manifest)."""
    spec = next((t for t in bundle.manifest.graphs[DECODER_STEP].inputs if t.name == name),
                None)
    if spec is None or len(spec.shape) != 2 or not isinstance(spec.shape[1], int):
        raise BundleError(bundle.path, f"decoder_step input {name!r} must be [batch, H]")
    return spec.shape[1]


class VideoCaptionModel(ImagePipeline[VideoCaptionRequest, CaptionResult],
                        task="video-caption"):
    """A frame encoder, an optional encoder step and a decoder step, decoded with beam search."""

    def __init__(self, bundle: Bundle, graphs: Mapping[str, OnnxGraph]) -> None:
        decoding = bundle.manifest.decoding
        assert decoding is not None  # a video-caption manifest has one (Manifest validation)
        self.decoding: Decoding = decoding
        self.video = bundle.manifest.inference_as(VideoCaptionInference)
        # the encoder LSTM's state: the decoder's, and what else it carries between frames
        self.encoder_state = list(self.video.encoder_state or self.decoding.state)
        if self.encoder_state[:len(self.decoding.state)] != list(self.decoding.state):
            raise BundleError(bundle.path, "inference.encoder_state must start with the "
                                           f"decoder's state {list(self.decoding.state)}")
        super().__init__(bundle, graphs)
        self.frame_encoder = graphs[FRAME_ENCODER]
        self.encoder_step = graphs.get(ENCODER_STEP)
        self.decoder = graphs[DECODER_STEP]
        self.vocab = self.read_file(self.tokenizer_file("word"), Vocabulary.from_file)
        self.num_frames = self.video.frames
        self.hidden = state_size(bundle, self.decoding.state[0])

    def contract(self) -> dict[str, GraphContract]:
        d = self.decoding
        graphs = {
            FRAME_ENCODER: GraphContract(inputs=frozenset({"frames"}),
                                         outputs=frozenset({"features"})),
            DECODER_STEP: GraphContract(
                inputs=frozenset({"tokens", "parents", *d.state, *d.context}),
                outputs=frozenset({"log_probs", "token_ids", *(f"{s}_out" for s in d.state)})),
        }
        if self.video.video_encoder == "lstm-encoder":
            graphs[ENCODER_STEP] = GraphContract(
                inputs=frozenset({"features", *self.encoder_state}),
                outputs=frozenset(f"{s}_out" for s in self.encoder_state))
        return graphs

    def defaults(self) -> dict[str, Any]:
        d = self.decoding
        return {"beam_size": d.beam_size, "max_length": d.max_length,
                "length_penalty": d.length_penalty, "frames": self.num_frames}

    # ------------------------------------------------------------------ requests

    def search_params(self, *, beam_size: int | None = None, max_length: int | None = None,
                      length_penalty: float | None = None, num_captions: int = 1
                      ) -> SearchParams:
        """Beam-search parameters with the bundle's defaults; InvalidParameter names a bad one."""
        return beam_search_params(self.decoding, beam_size=beam_size, max_length=max_length,
                                  length_penalty=length_penalty, num_captions=num_captions)

    def request(self, frames: np.ndarray, params: SearchParams) -> VideoCaptionRequest:
        """A request for a clip's uint8 frames (n, S, S, 3)."""
        return VideoCaptionRequest(clip_input(frames, self.num_frames, self.pixel_range), params)

    def describe(self, clip: bytes | str | Path, *, limits: VideoLimits | None = None,
                 **params: Any) -> CaptionResult:
        """Describe one clip file offline (its bytes or path); `params` are those of
        `search_params`. The answer is the service's."""
        data = clip if isinstance(clip, bytes) else Path(clip).read_bytes()
        limits = limits or VideoLimits(max_frames=10_000, max_seconds=3600.0,
                                       max_pixels=1 << 26)
        frames = decode_clip(data, self.image_size, limits)
        return self.run_batch([self.request(frames, self.search_params(**params))])[0]

    # ------------------------------------------------------------------ inference

    def encode(self, frames: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Clips (B, T, 3, S, S) -> the decoder's first state and its context."""
        b, t = frames.shape[:2]
        flat = frames.reshape(b * t, *frames.shape[2:])
        features = self.frame_encoder.run({"frames": flat}, ["features"])["features"]
        features = features.reshape(b, t, -1)
        zeros = {name: np.zeros((b, self.hidden), np.float32) for name in self.decoding.state}
        if self.encoder_step is None:  # mean-pool
            return zeros, {"context": features.mean(axis=1, keepdims=True)}
        state = {name: np.zeros((b, self.hidden), np.float32) for name in self.encoder_state}
        outputs = [f"{name}_out" for name in self.encoder_state]
        for step in range(t):
            out = self.encoder_step.run(
                {"features": np.ascontiguousarray(features[:, step]), **state}, outputs)
            state = {name: out[f"{name}_out"] for name in self.encoder_state}
        state = {name: state[name] for name in self.decoding.state}
        if "context" in self.decoding.context:  # the encoding, fed beside every word
            return state, {"context": state["h"][:, None, :]}
        return state, {}

    def run_batch(self, requests: Sequence[VideoCaptionRequest]) -> list[CaptionResult]:
        if not requests:
            return []
        state, context = self.encode(np.stack([r.frames for r in requests]))
        d = self.decoding
        found = beam_search(
            self._step, state, context, bos_id=d.bos_id, eos_id=d.eos_id, top_k=d.top_k,
            beam_size=np.array([r.params.beam_size for r in requests]),
            max_length=np.array([r.params.max_length for r in requests]),
            length_penalty=np.array([r.params.length_penalty for r in requests]),
            num_return=np.array([r.params.num_captions for r in requests]))
        return [CaptionResult([self._caption(h) for h in hyps]) for hyps in found]

    def _step(self, tokens: np.ndarray, parents: np.ndarray, state: Mapping[str, np.ndarray],
              context: Mapping[str, np.ndarray]) -> StepOutput:
        d = self.decoding
        outputs = ["log_probs", "token_ids", *(f"{s}_out" for s in d.state)]
        out = self.decoder.run({"tokens": tokens, "parents": parents, **state, **context},
                               outputs)
        return StepOutput(log_probs=out["log_probs"], token_ids=out["token_ids"],
                          state={s: out[f"{s}_out"] for s in d.state}, extras={})

    def _caption(self, hyp: Hypothesis) -> Caption:
        words = [self.vocab.tokens[hyp.tokens[pos]] for pos in self.vocab.kept(hyp.tokens)]
        return Caption(text=" ".join(words), log_prob=hyp.log_prob, score=hyp.score,
                       tokens=list(hyp.tokens), words=words)

    def warm_up_batches(self, size: int) -> list[list[VideoCaptionRequest]]:
        blank = np.zeros((self.num_frames, 3, self.image_size, self.image_size), np.float32)
        params = self.search_params(max_length=min(2, self.decoding.max_length))
        return [[VideoCaptionRequest(blank, params)] * size]
