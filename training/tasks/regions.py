"""Train bottom-up region proposals and write their features.

`glimpse train regions` trains models.regions.RegionNet on the shapes world's
object boxes (scenes.json) on top of a frozen `glimpse train encoder` run. The
encoder never changes, so its two feature maps are computed once per image and
training runs only the small head. Validation measures proposal recall at IoU
0.5: the share of ground-truth objects that some of the k proposals overlap.

`glimpse features regions` runs a trained RegionNet over a dataset's splits and
writes DIR/features/regions/{split}.npz (training.data.region_features), with
meta.json naming the run that made them, for the models that attend over regions.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.regions import RegionConfig, RegionNet
from training.data.images import load_images
from training.data.readers import CaptionImage, DatasetFormatError, load_captions
from training.data.region_features import RegionFeatures, save_region_features
from training.data.world import COLOURS, SHAPES, SIZES
from training.runs import load_region_net, pretrained_encoder, run_checkpoint
from training.tasks import TrainingCommand
from training.trainer import config_from_dict

log = logging.getLogger(__name__)

MAX_OBJECTS = 4
FEATURES_DIR = Path("features") / "regions"


@dataclass
class SceneBoxes:
    """Ground-truth objects of one image: normalised xyxy boxes and attribute class ids."""

    boxes: np.ndarray  # float32 (M, 4)
    shape: np.ndarray  # int64 (M,), index into world.SHAPES
    colour: np.ndarray  # index into world.COLOURS
    size: np.ndarray  # index into world.SIZES


def load_scene_boxes(dataset_dir: str | Path) -> dict[int, SceneBoxes]:
    """Visible-pixel boxes of every object in scenes.json, keyed by imgid.

    The generator writes COCO-style pixel boxes [x, y, w, h] at scenes.json's
    image_size; they are returned normalised to [x0, y0, x1, y1] in [0, 1].
    Objects hidden entirely (an empty box) are left out.
    """
    path = Path(dataset_dir) / "scenes.json"
    try:
        data = json.loads(path.read_text())
        side = float(data["image_size"])
        images = data["images"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DatasetFormatError(f"{path}: cannot read scene boxes ({err})") from None
    colours = list(COLOURS)
    out: dict[int, SceneBoxes] = {}
    for i, image in enumerate(images):
        try:
            objects = [o for o in image["objects"] if o["bbox"][2] > 0 and o["bbox"][3] > 0]
            xywh = np.array([o["bbox"] for o in objects], np.float32).reshape(-1, 4) / side
            out[int(image["imgid"])] = SceneBoxes(
                boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                shape=np.array([SHAPES.index(o["shape"]) for o in objects], np.int64),
                colour=np.array([colours.index(o["colour"]) for o in objects], np.int64),
                size=np.array([SIZES.index(o["size"]) for o in objects], np.int64))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DatasetFormatError(f"{path}: images[{i}] has no usable object boxes "
                                     f"({type(err).__name__}: {err})") from None
    return out


def padded_targets(scenes: Sequence[SceneBoxes], max_objects: int = MAX_OBJECTS
                   ) -> dict[str, torch.Tensor]:
    """RegionNet.loss targets: boxes (N, M, 4), valid (N, M) and class ids (N, M)."""
    n = len(scenes)
    t = {"boxes": torch.zeros(n, max_objects, 4), "valid": torch.zeros(n, max_objects, dtype=bool)}
    for name in ("shape", "colour", "size"):
        t[name] = torch.zeros(n, max_objects, dtype=torch.long)
    for i, s in enumerate(scenes):
        m = min(len(s.boxes), max_objects)
        t["boxes"][i, :m] = torch.from_numpy(s.boxes[:m])
        t["valid"][i, :m] = True
        for name in ("shape", "colour", "size"):
            t[name][i, :m] = torch.from_numpy(getattr(s, name)[:m])
    return t


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in a (..., P, 4) with every box in b (..., G, 4): (..., P, G)."""
    a, b = a.unsqueeze(-2), b.unsqueeze(-3)
    inter_w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]))
    inter_h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]))
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


def best_ious(boxes: torch.Tensor | np.ndarray,
              gt_boxes: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """For every ground-truth object, its best IoU with a proposal of its image: (sum M_i,)."""
    best = [torch.zeros(0)]
    for props, gt in zip(torch.as_tensor(boxes), gt_boxes, strict=True):
        gt = torch.as_tensor(gt, dtype=props.dtype).reshape(-1, 4)
        if len(gt):
            best.append(box_iou(props, gt).amax(dim=0))
    return torch.cat(best)


def proposal_recall(boxes: torch.Tensor | np.ndarray,
                    gt_boxes: Sequence[torch.Tensor | np.ndarray], iou: float = 0.5) -> float:
    """Share of ground-truth objects matched by some proposal with IoU >= `iou`.

    boxes: (N, k, 4) proposals per image (leave out RegionNet's whole-image row);
    gt_boxes: N arrays (M_i, 4); all boxes [x0, y0, x1, y1] in one unit.
    """
    best = best_ious(boxes, gt_boxes)
    return float((best >= iou).float().mean()) if len(best) else float("nan")


def proposal_metrics(boxes: torch.Tensor | np.ndarray,
                     gt_boxes: Sequence[torch.Tensor | np.ndarray]) -> dict[str, float]:
    """recall (at IoU 0.5), recall_iou_0.7 and mean_iou (the mean over objects of the
    best proposal's IoU) of proposals (N, k, 4) against N ground-truth arrays."""
    best = best_ious(boxes, gt_boxes)
    return {"recall": float((best >= 0.5).float().mean()),
            "recall_iou_0.7": float((best >= 0.7).float().mean()),
            "mean_iou": float(best.mean())}


@torch.no_grad()
def run_region_net(model: RegionNet, images_uint8: torch.Tensor, batch_size: int = 256
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RegionNet over uint8 images (N, 3, S, S) in batches: boxes, scores, features on CPU."""
    device = next(model.parameters()).device
    outs = [model(images_uint8[i:i + batch_size].to(device).float().div_(255))
            for i in range(0, len(images_uint8), batch_size)]
    return tuple(torch.cat([o[j].cpu() for o in outs]) for j in range(3))


@dataclass
class RegionTaskConfig:
    data: str = "data/shapes"
    image_size: int = 64
    val_images: int = 500
    train_images: int | None = None  # use the first N training images (None: all)
    encoder_init: str | None = None  # `glimpse train encoder` run (required)
    regions: dict = field(default_factory=dict)  # RegionConfig overrides (not the encoder)
    trainer: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> RegionTaskConfig:
        return config_from_dict(cls, d, "region training")


class RegionTask:
    """The trainer's Task: RegionNet's head on cached frozen-encoder maps."""

    def __init__(self, config: RegionTaskConfig):
        if not config.encoder_init:
            raise ValueError("region training needs --encoder-init: a `glimpse train encoder` "
                             "run whose frozen encoder the proposals are read from")
        self.config = config
        data = Path(config.data)
        encoder_cfg, self.encoder_weights = pretrained_encoder(config.encoder_init)
        self.model_cfg = RegionConfig.from_dict({
            "num_shapes": len(SHAPES), "num_colours": len(COLOURS), "num_sizes": len(SIZES),
            **config.regions, "encoder": encoder_cfg})
        scenes = load_scene_boxes(data)
        train = load_captions(data, "train")[: config.train_images]
        self.val = load_captions(data, "val")[: config.val_images]
        self.val_x = load_images(data, self.val, config.image_size)
        self.val_scenes = [scenes[im.imgid] for im in self.val]
        self.train_t = padded_targets([scenes[im.imgid] for im in train])
        self.train_coarse, self.train_fine = self._cache_maps(data, train)

    def _cache_maps(self, data: Path, images: list[CaptionImage]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's maps of every training image, once (float16)."""
        model = self.build_model().eval()
        coarse, fine = [], []
        chunk = 512
        with torch.no_grad():
            for start in tqdm(range(0, len(images), chunk), desc="encoder maps", unit="chunk",
                              disable=not self.config.trainer.get("progress", True)):
                x = load_images(data, images[start:start + chunk], self.config.image_size)
                c, f = model.feature_maps(x.float().div_(255))
                coarse.append(c.half())
                fine.append(f.half())
        return torch.cat(coarse), torch.cat(fine)

    def build_model(self) -> torch.nn.Module:
        model = RegionNet(self.model_cfg)
        model.encoder.load_state_dict(self.encoder_weights)
        return model

    def model_config(self) -> dict:
        return {"task": "regions", "regions": self.model_cfg.to_dict(),
                "image_size": self.config.image_size, "task_config": asdict(self.config),
                "data": {"path": self.config.data}}

    def num_examples(self) -> int:
        return len(self.train_coarse)

    def batch(self, indices: torch.Tensor, device: torch.device):
        maps = (self.train_coarse[indices].to(device).float(),
                self.train_fine[indices].to(device).float())
        return maps, {k: v[indices].to(device) for k, v in self.train_t.items()}

    def loss(self, model, batch):
        (coarse, fine), targets = batch
        return model.loss_from_maps(coarse, fine, targets)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """`proposal_metrics` of the k proposals on val images, and attribute_accuracy:
        ground-truth regions whose features name shape, colour and size right."""
        k = model.config.max_proposals
        boxes, _, _ = run_region_net(model, self.val_x)
        device = next(model.parameters()).device
        t = padded_targets(self.val_scenes)
        coarse, _ = model.feature_maps(self.val_x.to(device).float().div_(255))
        feats = model.region_features(coarse, t["boxes"].to(device))
        right = torch.stack([model.attributes[name](feats).argmax(-1).cpu() == t[name]
                             for name in ("shape", "colour", "size")]).all(0)
        return {**proposal_metrics(boxes[:, :k], [s.boxes for s in self.val_scenes]),
                "attribute_accuracy": float(right[t["valid"]].float().mean())}


# Recall at IoU 0.5 saturates early on the shapes world; box tightness keeps improving.
train = TrainingCommand(config=RegionTaskConfig, task=RegionTask, flags=("data", "encoder_init"),
                        trainer_defaults={"early_stop_metric": "mean_iou"})


def write_split_features(model: RegionNet, data: Path, split: str, *, image_size: int,
                         batch_size: int = 256, progress: bool = True
                         ) -> tuple[Path, dict[str, float]]:
    """Write DATA/features/regions/SPLIT.npz; return it and the split's
    `proposal_metrics` when scenes.json is there to score them (else {})."""
    images = load_captions(data, split)
    if not images:
        raise ValueError(f"{data}: split {split!r} has no images")
    parts = []
    for start in tqdm(range(0, len(images), batch_size), desc=f"regions {split}", unit="batch",
                      disable=not progress):
        x = load_images(data, images[start:start + batch_size], image_size)
        parts.append(run_region_net(model, x, batch_size))
    boxes, scores, feats = (torch.cat([p[j] for p in parts]).numpy() for j in range(3))
    rf = RegionFeatures(image_ids=np.array([im.imgid for im in images], np.int64), boxes=boxes,
                        scores=scores, features=feats,
                        num_regions=np.full(len(images), model.num_regions, np.int64))
    path = save_region_features(data / FEATURES_DIR / f"{split}.npz", rf)
    if not (data / "scenes.json").exists():
        return path, {}
    scenes = load_scene_boxes(data)
    return path, proposal_metrics(boxes[:, :model.config.max_proposals],
                                  [scenes[im.imgid].boxes for im in images])


def features(args: argparse.Namespace) -> int:
    """`glimpse features regions`: a region run's boxes and features for dataset splits."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = load_region_net(args.run)
    ckpt, config = run_checkpoint(args.run, "regions", "a region")
    image_size = int(config["model"]["image_size"])
    if args.device:
        model.to(args.device)
    data = Path(args.data)
    results = {}
    for split in args.splits:
        path, metrics = write_split_features(model, data, split, image_size=image_size,
                                             batch_size=args.batch_size)
        results[split] = {"file": str(path), **metrics}
    meta = {"run": str(args.run), "checkpoint": str(ckpt),
            "max_proposals": model.config.max_proposals, "num_regions": model.num_regions,
            "feature_dim": model.feature_dim, "pool": model.config.pool,
            "image_size": image_size, "last_region": "whole image [0, 0, 1, 1]",
            "splits": {s: {k: v for k, v in r.items() if k != "file"}
                       for s, r in results.items()}}
    meta_path = data / FEATURES_DIR / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("checkpoint") == meta["checkpoint"]:
            meta["splits"] = {**old.get("splits", {}), **meta["splits"]}
    meta_path.write_text(json.dumps(meta, indent=2))
    print(json.dumps(results, indent=2))
    return 0

