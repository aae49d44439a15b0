"""Pre-train an image encoder on the shapes world's attributes (`glimpse train encoder`).

Labels come from scenes.json: which (shape, colour), (size, shape) and
(size, colour) pairs occur in the image, and how many objects it holds. A
caption run starts from the result with `"encoder_init": RUN_DIR` in its config.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models.attributes import AttributeConfig, AttributeTagger
from training.data.images import load_images
from training.data.readers import load_captions
from training.data.world import COLOURS, SHAPES, SIZES, Scene
from training.tasks import TrainingCommand
from training.trainer import config_from_dict

log = logging.getLogger(__name__)

MAX_OBJECTS = 4
STRIDE = 8  # pixels per annotation-grid cell of the default encoder (3 channel entries)


def cell_targets(scene: Scene, image_size: int, stride: int = STRIDE) -> dict[str, torch.Tensor]:
    """Per-cell class ids (L,) for shape, colour and size (0: no object centre) and the
    count class: the cell holding an object's centre carries its attributes."""
    side = image_size // stride
    targets = {name: torch.zeros(side * side, dtype=torch.long)
               for name in ("shape", "colour", "size")}
    for o in scene.objects:
        row = min(int(o.y * side), side - 1)
        col = min(int(o.x * side), side - 1)
        cell = row * side + col
        targets["shape"][cell] = SHAPES.index(o.shape) + 1
        targets["colour"][cell] = list(COLOURS).index(o.colour) + 1
        targets["size"][cell] = SIZES.index(o.size) + 1
    targets["count"] = torch.tensor(len(scene.objects) - 1)
    return targets


def grid_stride(tagger: AttributeTagger, image_size: int) -> int:
    """Pixels per cell of the tagger's annotation grid at `image_size` (8 for three channel
    entries; a fourth halves the grid again, so that a 128 px tagger keeps 8x8 cells)."""
    with torch.no_grad():
        logits, _ = tagger.eval()(torch.zeros(1, 3, image_size, image_size))
    side = int(round(logits["shape"].shape[1] ** 0.5))
    if side * side != logits["shape"].shape[1] or image_size % side:
        raise ValueError(f"the tagger's grid ({logits['shape'].shape[1]} cells) does not tile "
                         f"{image_size} px images")
    return image_size // side


@dataclass
class EncoderTaskConfig:
    data: str = "data/shapes"
    image_size: int = 64
    val_images: int = 500
    encoder: dict = field(default_factory=dict)  # EncoderConfig overrides
    trainer: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderTaskConfig:
        return config_from_dict(cls, d, "encoder training")


class EncoderTask:
    def __init__(self, config: EncoderTaskConfig):
        from training.data.shapes import load_scenes

        self.config = config
        data = Path(config.data)
        scenes = load_scenes(data)
        train = load_captions(data, "train")
        val = load_captions(data, "val")[: config.val_images]
        self.train_x = load_images(data, train, config.image_size)
        self.val_x = load_images(data, val, config.image_size)
        self.model_cfg = AttributeConfig(num_shapes=len(SHAPES), num_colours=len(COLOURS),
                                         num_sizes=len(SIZES), num_counts=MAX_OBJECTS,
                                         encoder=dict(config.encoder))
        self.stride = grid_stride(self.build_model(), config.image_size)
        self.train_t = self._targets(train, scenes)
        self.val_t = self._targets(val, scenes)

    def _targets(self, images, scenes) -> dict[str, torch.Tensor]:
        per_image = [cell_targets(scenes[im.imgid], self.config.image_size, self.stride)
                     for im in images]
        return {k: torch.stack([t[k] for t in per_image]) for k in per_image[0]}

    def build_model(self) -> torch.nn.Module:
        return AttributeTagger(self.model_cfg)

    def model_config(self) -> dict:
        return {"task": "attributes", "attributes": self.model_cfg.to_dict(),
                "classes": {"shape": list(SHAPES), "colour": list(COLOURS),
                            "size": list(SIZES)},
                "image_size": self.config.image_size, "task_config": asdict(self.config)}

    def num_examples(self) -> int:
        return len(self.train_x)

    def batch(self, indices: torch.Tensor, device: torch.device):
        x = self.train_x[indices].to(device).float().div_(255)
        return x, {k: v[indices].to(device) for k, v in self.train_t.items()}

    def loss(self, model, batch):
        x, targets = batch
        _, loss = model(x, targets)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """object_accuracy: objects whose centre cell names shape, colour and size right;
        empty_accuracy: cells without a centre predicted empty by all three heads."""
        device = next(model.parameters()).device
        preds: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(self.val_x), 256):
            x = self.val_x[start:start + 256].to(device).float().div_(255)
            logits, _ = model(x)
            for k, v in logits.items():
                preds.setdefault(k, []).append(v.argmax(-1).cpu())
        p = {k: torch.cat(v) for k, v in preds.items()}
        t = self.val_t
        objects = t["shape"] > 0
        heads = ("shape", "colour", "size")
        right = torch.stack([p[k] == t[k] for k in heads]).all(0)
        empty = torch.stack([p[k] == 0 for k in heads]).all(0)
        return {"object_accuracy": float(right[objects].float().mean()),
                "empty_accuracy": float(empty[~objects].float().mean()),
                "count_accuracy": float((p["count"] == t["count"]).float().mean())}


train = TrainingCommand(config=EncoderTaskConfig, task=EncoderTask,
                        trainer_defaults={"early_stop_metric": "object_accuracy"})
