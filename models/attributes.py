"""An attribute tagger over the shapes world, used to pre-train image encoders.

The captioning papers start from an ImageNet-trained CNN; glimpse downloads no
weights, so its encoders can start from this network instead, trained on the
shapes world's ground truth. Supervision is dense, one label per cell of the
annotation grid (CenterNet-style): the cell holding an object's centre must name
its shape, colour and size, every other cell says "nothing here". The annotation
vectors so learn to describe single objects where they are, which is what
attention over the grid needs. The same network judges generated images in
domain (attribute accuracy, features for FID).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.encoder import EncoderConfig, ImageEncoder


@dataclass
class AttributeConfig:
    # Classes per attribute; each head has one more output, index 0, for "no object centre".
    num_shapes: int = 7
    num_colours: int = 8
    num_sizes: int = 2
    num_counts: int = 4  # objects per image: 1..num_counts
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)

    def to_dict(self) -> dict:
        return asdict(self)


class AttributeTagger(nn.Module):
    def __init__(self, config: AttributeConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(config.encoder)
        d = config.encoder.out_dim
        self.heads = nn.ModuleDict({
            "shape": nn.Linear(d, config.num_shapes + 1),
            "colour": nn.Linear(d, config.num_colours + 1),
            "size": nn.Linear(d, config.num_sizes + 1),
        })
        self.count = nn.Linear(d, config.num_counts)

    def forward(self, images: torch.Tensor, targets: dict[str, torch.Tensor] | None = None):
        """images (B, 3, S, S) in [0, 1]; targets: "shape"/"colour"/"size" (B, L) class ids
        (0 = no object centre in the cell) and "count" (B,) in 0..C-1.

        Returns ({name: logits (B, L, classes)} and "count" (B, C)), and the loss (or None).
        """
        pooled, grid = self.encoder(images)  # (B, D), (B, L, D)
        feats = F.relu(grid)
        logits = {name: head(feats) for name, head in self.heads.items()}  # (B, L, K)
        logits["count"] = self.count(F.relu(pooled))  # (B, C)
        if targets is None:
            return logits, None
        # Few cells hold an object centre; averaging object cells and empty cells
        # separately keeps the empty majority from drowning the attributes.
        per_cell = sum(F.cross_entropy(logits[name].transpose(1, 2), targets[name],
                                       reduction="none") for name in self.heads)  # (B, L)
        has_object = targets["shape"] > 0
        loss = (per_cell[has_object].mean() + per_cell[~has_object].mean()
                + F.cross_entropy(logits["count"], targets["count"]))
        return logits, loss
