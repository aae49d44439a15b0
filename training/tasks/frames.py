"""The frozen frame encoder both video tasks build on, and its features of a clip set.

`glimpse features clips --encoder-run RUN --data DATA` runs the encoder of a
`glimpse train encoder` run over every clip of DATA's splits once and writes
DATA/features/frames/SPLIT.npz (training.data.clip_features). The activity and
description tasks then train on those arrays: `load_video_features` loads them
and checks that they came from the encoder the task exports with.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from models.encoder import EncoderConfig
from models.lrcn import frame_feature_dim
from training.data.clip_features import (
    FEATURES_DIR,
    ClipFeatures,
    FeatureMeta,
    compute_features,
    encoder_fingerprint,
    load_features,
    save_features,
    split_path,
)
from training.data.clips import ClipSetInfo
from training.data.readers import load_activity_split
from training.runs import Weights, frozen_encoder

log = logging.getLogger(__name__)

DEFAULT_GRID = 4  # 4 x 4 cells of 16 px at 64 px: where an object is, coarsely


def clip_paths(dataset_dir: str | Path, split: str) -> list[str]:
    """Files of a split's clips under the set, from its UCF-101-style list."""
    videos = load_activity_split(Path(dataset_dir) / "splits", split)
    return [f"clips/{v.path}" for v in videos]


def default_features_dir(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / FEATURES_DIR


@dataclass
class VideoFeatures:
    """Frame features of a run's splits and the frozen encoder that computed them."""

    encoder_run: str
    encoder_config: dict
    encoder_weights: Weights
    splits: dict[str, ClipFeatures]


def load_video_features(features_dir: str | Path, splits: tuple[str, ...],
                        encoder_run: str | Path | None = None) -> VideoFeatures:
    """The splits' features and their encoder: `encoder_run`, or the run the features
    name. Features that another encoder computed are refused."""
    loaded = {split: load_features(split_path(features_dir, split)) for split in splits}
    run = str(encoder_run or loaded[splits[0]].meta.encoder_run)
    config, weights, encoder = frozen_encoder(run)
    fingerprint = encoder_fingerprint(encoder)
    for split, found in loaded.items():
        if found.meta.encoder_sha256 != fingerprint:
            raise ValueError(f"{split_path(features_dir, split)}: computed with the encoder of "
                             f"{found.meta.encoder_run}, whose weights differ from those of "
                             f"{run}; run `glimpse features clips --encoder-run {run}`")
    return VideoFeatures(run, config, weights, loaded)


def features(args: argparse.Namespace) -> int:
    """`glimpse features clips`: φ of every clip of the requested splits."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = ClipSetInfo.load(args.data)
    config, _, encoder = frozen_encoder(args.encoder_run)
    meta = FeatureMeta(encoder_run=str(args.encoder_run),
                       encoder_sha256=encoder_fingerprint(encoder), grid=args.grid,
                       frames=info.frames, image_size=info.image_size,
                       feature_dim=frame_feature_dim(EncoderConfig(**config), args.grid))
    out_dir = Path(args.out) if args.out else default_features_dir(args.data)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    written = {}
    for split in args.splits:
        start = time.perf_counter()
        paths = clip_paths(args.data, split)
        computed = compute_features(encoder, args.data, paths, meta,
                                    batch_size=args.batch_size, device=device)
        save_features(split_path(out_dir, split), computed)
        seconds = time.perf_counter() - start
        log.info("%s: %d clips in %.1f s", split, len(paths), seconds)
        written[split] = {"clips": len(paths), "seconds": round(seconds, 1)}
    print(json.dumps({"out": str(out_dir), "feature_dim": meta.feature_dim, "grid": meta.grid,
                      "splits": written}))
    return 0
