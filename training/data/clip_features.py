"""Frozen frame features of a clip set, computed once for the video tasks.

The LRCN models see a clip only through φ(x_t), the pre-trained image encoder's
annotation grid averaged to G x G cells (models.lrcn.encode_frames). With the
encoder frozen, φ of every frame never changes during training, so `glimpse
features clips` computes it once per split, for the RGB frames and for the
motion images (frame differences) alike, and the activity and description runs
train on the stored arrays instead of on pixels:

    DATA/features/frames/SPLIT.npz
        paths   (N,)           the clip's file under the set ("clips/grow/test_000003.png")
        rgb     (N, T, F)      float16 φ of each frame, F = G * G * D
        motion  (N, T - 1, F)  float16 φ of each motion image 0.5 + 0.5 (x_t - x_{t-1})
        meta                   JSON: encoder run and the sha256 of its weights, grid, frames

The runs check `meta` against the encoder they export with, so a bundle's frozen
encoder is the one its features came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.lrcn import encode_frames, motion_frames
from training.data.clips import read_clip
from training.data.readers import DatasetFormatError

FEATURES_DIR = Path("features", "frames")
STREAMS = ("rgb", "motion")


@dataclass(frozen=True)
class FeatureMeta:
    """Where a split's features came from."""

    encoder_run: str
    encoder_sha256: str  # of the encoder's weights (see `encoder_fingerprint`)
    grid: int
    frames: int
    image_size: int
    feature_dim: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


@dataclass
class ClipFeatures:
    """φ of the frames and motion images of N clips, in `paths` order."""

    paths: list[str]
    rgb: np.ndarray  # float16 (N, T, F)
    motion: np.ndarray  # float16 (N, T - 1, F)
    meta: FeatureMeta

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        """Row of each of `paths` (DatasetFormatError naming a clip that has none)."""
        index = {p: i for i, p in enumerate(self.paths)}
        missing = [p for p in paths if p not in index]
        if missing:
            raise DatasetFormatError(f"no features for {len(missing)} clip(s), e.g. "
                                     f"{missing[:3]}; run `glimpse features clips` again")
        return np.array([index[p] for p in paths], dtype=np.int64)

    def stream(self, name: str) -> np.ndarray:
        if name not in STREAMS:
            raise ValueError(f"unknown input {name!r}; expected one of {STREAMS}")
        return self.rgb if name == "rgb" else self.motion


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 over the encoder's state dict (names and float32 values), so features
    can be matched to the encoder a model is built with."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()


def split_path(features_dir: str | Path, split: str) -> Path:
    return Path(features_dir) / f"{split}.npz"


def save_features(path: str | Path, features: ClipFeatures) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, paths=np.array(features.paths), rgb=features.rgb, motion=features.motion,
             meta=np.array(features.meta.to_json()))


def load_features(path: str | Path) -> ClipFeatures:
    """A split's features (DatasetFormatError for a missing or malformed file)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: no such features file; write it with "
                                 "`glimpse features clips`")
    try:
        with np.load(path) as data:
            meta = FeatureMeta(**json.loads(str(data["meta"])))
            features = ClipFeatures([str(p) for p in data["paths"]], data["rgb"],
                                    data["motion"], meta)
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetFormatError(f"{path}: not a clip features file ({err})") from None
    n, t = len(features.paths), meta.frames
    if features.rgb.shape != (n, t, meta.feature_dim) or \
            features.motion.shape != (n, t - 1, meta.feature_dim):
        raise DatasetFormatError(f"{path}: rgb {features.rgb.shape} and motion "
                                 f"{features.motion.shape} do not fit {n} clips of {t} frames")
    return features


def clip_batches(dataset_dir: Path, paths: Sequence[str], batch_size: int
                 ) -> Iterator[torch.Tensor]:
    """The clips at `paths` (under the set), batch by batch, as (B, T, 3, S, S) in [0, 1]."""
    for start in range(0, len(paths), batch_size):
        frames = np.stack([read_clip(dataset_dir / p) for p in paths[start:start + batch_size]])
        yield torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float().div_(255)


@torch.no_grad()
def compute_features(encoder: nn.Module, dataset_dir: str | Path, paths: Sequence[str],
                     meta: FeatureMeta, *, batch_size: int = 32,
                     device: str | torch.device = "cpu", progress: bool = True
                     ) -> ClipFeatures:
    """φ of the frames and motion images of the clips at `paths`, with `encoder` in eval
    mode (its BatchNorm statistics as trained)."""
    from tqdm.auto import tqdm

    encoder.eval().to(device)
    rgb, motion = [], []
    batches = clip_batches(Path(dataset_dir), paths, batch_size)
    for clips in tqdm(batches, total=-(-len(paths) // batch_size), disable=not progress,
                      desc="features", unit="batch"):
        clips = clips.to(device)
        rgb.append(encode_frames(encoder, clips, meta.grid).half().cpu().numpy())
        motion.append(encode_frames(encoder, motion_frames(clips), meta.grid).half().cpu().numpy())
    return ClipFeatures(list(paths), np.concatenate(rgb), np.concatenate(motion), meta)
