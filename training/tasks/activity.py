"""LRCN activity recognition as a trainer task, `glimpse train activity`, and the late
fusion of two trained streams, `glimpse fuse activity`.

Data: a clip set's UCF-101-style split lists (the clip's folder is its class)
and the frozen frame encoder's features of its clips (`glimpse features clips`,
training/tasks/frames.py). The encoder stays frozen, so the run trains on the
stored φ(x_t) of the frames (`--input rgb`) or of the motion images (`--input
motion`), with the LSTM over time (`--temporal lstm`, LRCN) or without it
(`--temporal single-frame`, the paper's baseline). One training example is one
clip; every frame's prediction is trained on the clip's label (Sec. 4 of Donahue
et al.). Validation scores clip accuracy: the class of the mean of the
per-frame softmax, as at test time.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.lrcn import ActivityConfig, ActivityRecognizer, LateFusion
from training.checkpoint import save_checkpoint
from training.data.clip_features import ClipFeatures
from training.data.clips import ClipSetInfo
from training.data.readers import load_activity_split
from training.export.activity import load_activity_run
from training.tasks import TrainingCommand
from training.tasks.frames import clip_paths, default_features_dir, load_video_features
from training.trainer import config_from_dict

log = logging.getLogger(__name__)


@dataclass
class ActivityTaskConfig:
    data: str = "data/clips"
    # Directory of the frame features {split}.npz (default DATA/features/frames) and the
    # `glimpse train encoder` run that computed them (default: the one they name).
    features: str | None = None
    encoder_run: str | None = None
    input: str = "rgb"  # "rgb" | "motion"
    temporal: str = "lstm"  # "lstm" | "single-frame"
    val_clips: int = 400
    model: dict = field(default_factory=dict)  # ActivityConfig settings (hidden_dim, ...)
    trainer: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> ActivityTaskConfig:
        return config_from_dict(cls, d, "activity training")


class ActivityTask:
    def __init__(self, config: ActivityTaskConfig):
        self.config = config
        self.dataset_dir = Path(config.data)
        self.info = ClipSetInfo.load(self.dataset_dir)
        features_dir = Path(config.features or default_features_dir(self.dataset_dir))
        features = load_video_features(features_dir, ("train", "val"), config.encoder_run)
        self.encoder_run, self.encoder_weights = features.encoder_run, features.encoder_weights
        train = features.splits["train"]
        self.train_x, self.train_y = self._split(train, "train")
        self.val_x, self.val_y = self._split(features.splits["val"], "val", config.val_clips)
        self.activity_config = ActivityConfig(
            num_classes=self.info.num_classes, input=config.input, temporal=config.temporal,
            freeze_encoder=True, frame_grid=train.meta.grid, encoder=features.encoder_config,
            **config.model)
        self.features_meta = asdict(train.meta)
        log.info("%d train and %d val clips of %s features %s", len(self.train_y),
                 len(self.val_y), config.input, tuple(self.train_x.shape[1:]))

    def _split(self, features: ClipFeatures, split: str, limit: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's features of this run's input (float16, in list order) and labels."""
        videos = load_activity_split(self.dataset_dir / "splits", split)[:limit]
        rows = features.rows(clip_paths(self.dataset_dir, split)[:len(videos)])
        x = torch.from_numpy(features.stream(self.config.input)[rows])
        return x, torch.tensor([v.label for v in videos], dtype=torch.long)

    # -- Task protocol -------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        model = ActivityRecognizer(self.activity_config)
        model.encoder.load_state_dict(self.encoder_weights)
        return model

    def model_config(self) -> dict:
        return {"task": "activity", "activity": self.activity_config.to_dict(),
                "image_size": self.info.image_size, "frames": self.info.frames,
                "class_names": list(self.info.class_names),
                "data": {"dir": str(self.dataset_dir), "train_clips": len(self.train_y),
                         "features": self.features_meta},
                "encoder_run": str(self.encoder_run), "task_config": asdict(self.config)}

    def num_examples(self) -> int:
        return len(self.train_y)

    def batch(self, indices: torch.Tensor, device: torch.device):
        return self.train_x[indices].to(device).float(), self.train_y[indices].to(device)

    def loss(self, model, batch):
        features, labels = batch
        _, loss = model((features,), labels)
        return loss, {}

    def evaluate(self, model) -> dict[str, float]:
        probs = clip_probs(model, self.val_x)
        return {"accuracy": float((probs.argmax(-1) == self.val_y).float().mean())}


# ---------------------------------------------------------------------------- the command

train = TrainingCommand(
    config=ActivityTaskConfig, task=ActivityTask,
    flags=("data", "features", "encoder_run", "input", "temporal"),
    trainer_defaults={"early_stop_metric": "accuracy"})


# ---------------------------------------------------------------------------- late fusion

FUSION_WEIGHTS = np.linspace(0.0, 1.0, 21)  # RGB weights tried on the validation clips


@torch.no_grad()
def clip_probs(model: ActivityRecognizer, features: torch.Tensor, batch_size: int = 256
               ) -> torch.Tensor:
    """Clip distributions (N, C) of precomputed φ (N, T', F): the mean per-frame softmax."""
    device = next(model.parameters()).device
    return torch.cat([
        F.softmax(model((features[i:i + batch_size].to(device).float(),))[0], -1).mean(1).cpu()
        for i in range(0, len(features), batch_size)])


def fusion_weight(rgb: torch.Tensor, motion: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[float, dict[str, float]]:
    """The RGB weight of FUSION_WEIGHTS with the best accuracy of w p_rgb + (1 - w) p_motion
    (ties: the one nearest 0.5), and the accuracy of each."""
    accuracy = {f"{w:.2f}": float(((w * rgb + (1 - w) * motion).argmax(-1) == labels)
                                  .float().mean()) for w in FUSION_WEIGHTS}
    best = max(FUSION_WEIGHTS, key=lambda w: (accuracy[f"{w:.2f}"], -abs(w - 0.5)))
    return float(best), accuracy


def fuse(args: argparse.Namespace) -> int:
    """`glimpse fuse activity`: the late fusion of an RGB run and a motion run, its
    weight chosen on the validation clips; written as a run that `glimpse export` takes."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (rgb,), rgb_config = load_activity_run(args.rgb_run)
    (motion,), motion_config = load_activity_run(args.motion_run)
    if (rgb.input, motion.input) != ("rgb", "motion"):
        raise SystemExit(f"glimpse fuse activity: --rgb-run reads {rgb.input!r} and "
                         f"--motion-run {motion.input!r}")
    model_cfg = rgb_config["model"]
    if model_cfg["class_names"] != motion_config["model"]["class_names"]:
        raise SystemExit("glimpse fuse activity: the runs have different classes")
    dataset_dir = Path(args.data or model_cfg["data"]["dir"])
    features_dir = Path(args.features or default_features_dir(dataset_dir))
    val = load_video_features(features_dir, ("val",), model_cfg["encoder_run"]).splits["val"]
    videos = load_activity_split(dataset_dir / "splits", "val")
    rows = val.rows(clip_paths(dataset_dir, "val"))
    labels = torch.tensor([v.label for v in videos])
    probs = {s.input: clip_probs(s.model, torch.from_numpy(val.stream(s.input)[rows]))
             for s in (rgb, motion)}
    weight, accuracy = fusion_weight(probs["rgb"], probs["motion"], labels)
    fused = LateFusion(rgb.model, motion.model, rgb_weight=weight)
    config = {"model": {
        **{k: model_cfg[k] for k in ("image_size", "frames", "class_names", "data",
                                      "encoder_run")},
        "task": "activity",
        "fusion": {"rgb_weight": weight,
                   "streams": {"rgb": model_cfg["activity"],
                               "motion": motion_config["model"]["activity"]},
                   "runs": {"rgb": str(args.rgb_run), "motion": str(args.motion_run)}},
        "task_config": {"rgb_run": str(args.rgb_run), "motion_run": str(args.motion_run),
                        "data": str(dataset_dir), "features": str(features_dir)}}}
    out = Path(args.out)
    save_checkpoint(out / "checkpoints" / "best", model=fused, config=config)
    summary = {"rgb_weight": weight, "val_accuracy": accuracy[f"{weight:.2f}"],
               "val_accuracy_by_rgb_weight": accuracy}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({"run_dir": str(out), "rgb_weight": weight,
                      "val_accuracy": summary["val_accuracy"],
                      "rgb_alone": accuracy["1.00"], "motion_alone": accuracy["0.00"]}))
    return 0
