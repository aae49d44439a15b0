"""Bottom-up region features: the first stage of Anderson et al. 2018, in miniature.

Bottom-Up and Top-Down attention describes an image by a few salient regions,
each a box with a feature vector, instead of a uniform grid. The paper gets them
from Faster R-CNN trained on Visual Genome; glimpse gets them from a small
CenterNet-style detector ("Objects as Points", Zhou et al. 2019) on top of the
pre-trained, frozen image encoder:

    image -> encoder -> stride-4 map (the residual CNN's first stage, plus the
                        upsampled stride-8 annotation map)
          -> head    -> per-cell centre heatmap, box size and sub-cell offset
          -> the top k heatmap peaks (a cell is a peak iff it equals its 3x3 max,
             which replaces non-maximum suppression and keeps shapes static)
          -> boxes -> ROI-align (bilinear sampling of the stride-8 annotation map
                      over pool x pool bins) -> linear -> region features

The k proposals come sorted by score, and a last row always describes the whole
image (box [0, 0, 1, 1], score 1), so every image has R = k + 1 regions and a
consumer can attend over a fixed-size set. The region features are trained, like
the paper's, to name each object's attributes (shape, colour, size). No shape in
the graph depends on the data, so it exports to ONNX with a symbolic batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.encoder import EncoderConfig, ImageEncoder

HEAT_PRIOR = 0.1  # initial centre probability of every cell (CenterNet's bias init)


@dataclass
class RegionConfig:
    max_proposals: int = 6  # k: proposals per image (the whole image comes on top)
    pool: int = 2  # ROI-align output side: pool x pool bins per region
    sampling: int = 4  # bilinear samples per bin side, averaged
    feature_dim: int = 128  # F: size of each region feature
    head_channels: int = 64
    # Attribute classes that the region features learn to name (as in Anderson et
    # al.'s Visual Genome object and attribute heads).
    num_shapes: int = 7
    num_colours: int = 8
    num_sizes: int = 2
    freeze_encoder: bool = True
    # Loss weights: Eq. 5 of Zhou et al. 2019 (lambda_size 0.1, lambda_off 1) plus
    # the attribute classification of the region features.
    size_weight: float = 0.1
    offset_weight: float = 1.0
    attribute_weight: float = 1.0
    box_jitter: float = 0.1  # training: ground-truth boxes moved by up to this share of w/h
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if self.max_proposals < 1 or self.pool < 1 or self.sampling < 1:
            raise ValueError("max_proposals, pool and sampling must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RegionConfig:
        return cls(**d)


def peak_mask(heat: torch.Tensor) -> torch.Tensor:
    """1 where a cell equals the maximum of its 3x3 neighbourhood, else 0 (B, 1, h, w).

    CenterNet's replacement for non-maximum suppression: of two neighbouring
    cells claiming the same object only the stronger survives.
    """
    return (heat == F.max_pool2d(heat, 3, stride=1, padding=1)).to(heat.dtype)


def dense_boxes(size: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """One box per cell, normalised [x0, y0, x1, y1] clamped to [0, 1]: (B, h*w, 4).

    size (B, 2, h, w): box width and height in cells; offset (B, 2, h, w): the
    centre's position inside its cell, in cells (Eq. 2-3 of Zhou et al. 2019).
    """
    h, w = size.shape[-2:]
    cols = torch.arange(w, device=size.device, dtype=size.dtype).view(1, 1, w)
    rows = torch.arange(h, device=size.device, dtype=size.dtype).view(1, h, 1)
    cx = (cols + offset[:, 0]) / w  # (B, h, w)
    cy = (rows + offset[:, 1]) / h
    half_w, half_h = size[:, 0] / (2 * w), size[:, 1] / (2 * h)
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
    return boxes.flatten(1, 2).clamp(0.0, 1.0)  # (B, h*w, 4)


def roi_align(fmap: torch.Tensor, boxes: torch.Tensor, pool: int, sampling: int) -> torch.Tensor:
    """Bilinear ROI-align (He et al. 2017): (B, D, H, W), (B, R, 4) -> (B, R, pool, pool, D).

    Each box is cut into pool x pool bins; each bin averages sampling x sampling
    bilinear samples at its sub-bin centres. For the box [0, 0, 1, 1] on a map
    whose side is pool * sampling, the samples fall on cell centres and a bin is
    the exact mean of its cells.
    """
    B, R = boxes.shape[:2]
    n = pool * sampling
    steps = (torch.arange(n, device=boxes.device, dtype=boxes.dtype) + 0.5) / n  # (n,)
    x0, y0, x1, y1 = boxes.unbind(-1)  # (B, R) each
    xs = x0.unsqueeze(-1) + (x1 - x0).unsqueeze(-1) * steps  # (B, R, n)
    ys = y0.unsqueeze(-1) + (y1 - y0).unsqueeze(-1) * steps
    grid = torch.stack([xs.unsqueeze(2).expand(B, R, n, n),
                        ys.unsqueeze(3).expand(B, R, n, n)], dim=-1)  # (B, R, n_y, n_x, 2)
    grid = grid.reshape(B, R * n, n, 2) * 2 - 1  # grid_sample's [-1, 1] coordinates
    samples = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border",
                            align_corners=False)  # (B, D, R*n, n)
    D = fmap.shape[1]
    samples = samples.reshape(B, D, R, pool, sampling, pool, sampling)
    return samples.mean(dim=(4, 6)).permute(0, 2, 3, 4, 1)  # (B, R, pool, pool, D)


def centre_heat_targets(boxes: torch.Tensor, valid: torch.Tensor, h: int, w: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian centre heatmap (B, h, w), centre cell index (B, M) and in-cell offset (B, M, 2).

    Each object splats exp(-d^2 / 2 sigma^2) around the cell holding its box
    centre, sigma growing with the box (Zhou et al. 2019, Sec. 3); the heatmap
    is the element-wise maximum over objects and exactly 1 at centre cells.
    """
    cx = (boxes[..., 0] + boxes[..., 2]) / 2 * w  # (B, M), in cells
    cy = (boxes[..., 1] + boxes[..., 3]) / 2 * h
    col = cx.floor().clamp(0, w - 1)
    row = cy.floor().clamp(0, h - 1)
    bw = (boxes[..., 2] - boxes[..., 0]) * w
    bh = (boxes[..., 3] - boxes[..., 1]) * h
    sigma = (torch.minimum(bw, bh) / 6).clamp(min=0.5)  # (B, M)
    gx = torch.arange(w, device=boxes.device, dtype=boxes.dtype).view(1, 1, 1, w)
    gy = torch.arange(h, device=boxes.device, dtype=boxes.dtype).view(1, 1, h, 1)
    d2 = (gx - col[..., None, None]) ** 2 + (gy - row[..., None, None]) ** 2  # (B, M, h, w)
    splat = torch.exp(-d2 / (2 * sigma[..., None, None] ** 2)) * valid[..., None, None]
    heat = splat.amax(dim=1) if splat.shape[1] else boxes.new_zeros(boxes.shape[0], h, w)
    index = (row * w + col).long()
    offset = torch.stack([cx - col, cy - row], dim=-1)
    return heat, index, offset


def centre_focal_loss(logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 2.0,
                      beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss, Eq. 1 of Zhou et al. 2019 (per object)."""
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    is_centre = target >= 1.0 - 1e-6
    pos = (1 - p) ** alpha * log_p
    neg = (1 - target) ** beta * p ** alpha * log_not_p
    loss = -torch.where(is_centre, pos, neg).sum()
    return loss / is_centre.sum().clamp(min=1)


class RegionNet(nn.Module):
    """[0, 1] images (B, 3, S, S) -> boxes (B, R, 4), scores (B, R), features (B, R, F)."""

    def __init__(self, config: RegionConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(config.encoder)
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)
        if config.encoder.backbone != "cnn" or len(config.encoder.channels) < 3:
            raise ValueError("RegionNet reads the stride-4 stage of the residual CNN encoder "
                             "(backbone 'cnn' with at least three channel entries)")
        c = config.head_channels
        self.head = nn.Sequential(
            nn.Conv2d(config.encoder.channels[-2] + config.encoder.out_dim, c, 1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 5, 1),  # centre logit, size (w, h), offset (x, y)
        )
        with torch.no_grad():
            self.head[-1].bias[0] = -math.log(1 / HEAT_PRIOR - 1)
        pooled = config.pool * config.pool * config.encoder.out_dim
        self.region_proj = nn.Linear(pooled, config.feature_dim)
        self.attributes = nn.ModuleDict({
            "shape": nn.Linear(config.feature_dim, config.num_shapes),
            "colour": nn.Linear(config.feature_dim, config.num_colours),
            "size": nn.Linear(config.feature_dim, config.num_sizes),
        })
        self.feature_dim = config.feature_dim
        self.num_regions = config.max_proposals + 1

    def train(self, mode: bool = True) -> RegionNet:
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    def feature_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's stride-8 annotation map (B, D, S/8, S/8) and the output of its
        stride-4 stage (B, C, S/4, S/4): all that the rest of the network reads."""
        enc = self.encoder
        x = (images - enc.mean) / enc.std
        fine = enc.backbone.stages[:-1](enc.backbone.stem(x))  # (B, C, S/4, S/4)
        coarse = enc.project(enc.backbone.stages[-1](fine))  # (B, D, S/8, S/8)
        return coarse, fine

    def predict_maps(self, coarse: torch.Tensor, fine: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centre logits (B, 1, h, w), box size in cells (B, 2, h, w) and offset in cells,
        on the stride-4 grid: small objects get cells of their own there."""
        up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(torch.cat([fine, up], dim=1))
        size = F.softplus(out[:, 1:3])
        offset = torch.sigmoid(out[:, 3:5])
        return out[:, :1], size, offset

    def region_features(self, coarse: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """ROI-aligned features of the boxes (B, R, 4) on the annotation map: (B, R, F)."""
        cfg = self.config
        pooled = roi_align(coarse, boxes, cfg.pool, cfg.sampling).flatten(2)  # (B, R, P*P*D)
        return F.relu(self.region_proj(pooled))

    def propose(self, logits: torch.Tensor, size: torch.Tensor, offset: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k highest heatmap peaks: boxes (B, k, 4) and scores (B, k), best first."""
        heat = torch.sigmoid(logits)
        peak = peak_mask(heat)
        # Peaks rank first; should there be fewer than k, the strongest other cells
        # fill in (ranked by heat, so ties stay as unlikely as for peaks) with score 0.
        rank = (heat + peak - 1).flatten(1)  # (B, h*w)
        _, index = rank.topk(self.config.max_proposals, dim=1)  # sorted descending
        scores = (heat * peak).flatten(1).gather(1, index)  # (B, k)
        boxes = dense_boxes(size, offset).gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
        return boxes, scores

    def forward(self, images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        coarse, fine = self.feature_maps(images)
        boxes, scores = self.propose(*self.predict_maps(coarse, fine))  # (B, k, 4), (B, k)
        B = images.shape[0]
        whole = torch.tensor([0.0, 0.0, 1.0, 1.0], device=images.device, dtype=boxes.dtype)
        boxes = torch.cat([boxes, whole.expand(B, 1, 4)], dim=1)  # (B, R, 4)
        scores = torch.cat([scores, scores.new_ones(B, 1)], dim=1)  # (B, R)
        return boxes, scores, self.region_features(coarse, boxes)

    def loss(self, images: torch.Tensor, targets: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Detection and attribute loss for [0, 1] images; see `loss_from_maps`."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            coarse, fine = self.feature_maps(images)
        return self.loss_from_maps(coarse, fine, targets)

    def loss_from_maps(self, coarse: torch.Tensor, fine: torch.Tensor,
                       targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss given `feature_maps` output (precomputed when the encoder is frozen).

        targets: "boxes" (B, M, 4) normalised xyxy, "valid" (B, M) bool for the
        real objects among M padded slots, and "shape"/"colour"/"size" (B, M)
        class ids. Returns the total and its named terms: centre focal loss
        (Eq. 1 of Zhou et al. 2019), L1 size and offset at the centre cells
        (Eq. 2-3), and the attribute cross-entropy of the ground-truth regions.
        """
        cfg = self.config
        logits, size, offset = self.predict_maps(coarse, fine)
        h, w = logits.shape[-2:]
        boxes, valid = targets["boxes"], targets["valid"]
        validf = valid.to(boxes.dtype)
        heat, index, offset_t = centre_heat_targets(boxes, validf, h, w)
        focal = centre_focal_loss(logits[:, 0], heat)
        n = validf.sum().clamp(min=1)
        gather = index.unsqueeze(1).expand(-1, 2, -1)  # (B, 2, M)
        size_p = size.flatten(2).gather(2, gather).transpose(1, 2)  # (B, M, 2)
        offset_p = offset.flatten(2).gather(2, gather).transpose(1, 2)
        size_t = torch.stack([(boxes[..., 2] - boxes[..., 0]) * w,
                              (boxes[..., 3] - boxes[..., 1]) * h], dim=-1)
        size_l1 = ((size_p - size_t).abs().sum(-1) * validf).sum() / n
        offset_l1 = ((offset_p - offset_t).abs().sum(-1) * validf).sum() / n
        feats = self.region_features(coarse, self._jitter(boxes))
        attr = sum((F.cross_entropy(head(feats).transpose(1, 2), targets[name],
                                    reduction="none") * validf).sum() / n
                   for name, head in self.attributes.items())
        total = (focal + cfg.size_weight * size_l1 + cfg.offset_weight * offset_l1
                 + cfg.attribute_weight * attr)
        terms = {name: float(value.detach()) for name, value in
                 (("focal", focal), ("size", size_l1), ("offset", offset_l1),
                  ("attributes", attr))}
        return total, terms

    def _jitter(self, boxes: torch.Tensor) -> torch.Tensor:
        """Ground-truth boxes moved and resized a little in training, so the region
        features learn to describe imperfect proposals too."""
        if not self.training or self.config.box_jitter <= 0:
            return boxes
        wh = (boxes[..., 2:] - boxes[..., :2]).repeat(1, 1, 2)  # (B, M, 4)
        noise = (torch.rand_like(boxes) * 2 - 1) * self.config.box_jitter
        return (boxes + noise * wh).clamp(0.0, 1.0)
