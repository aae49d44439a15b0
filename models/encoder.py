"""Image encoders for the captioning models.

An encoder takes float images in [0, 1], shape (B, 3, S, S), normalises them by
mean/std inside the module (so an exported graph takes plain pixels), and
returns both a pooled vector (B, D) — the "CNN(I)" of Show and Tell — and a grid
of L annotation vectors (B, L, D) — the a_1..a_L of Show, Attend and Tell.

The default is a small residual CNN trained from scratch: a stride-2 stem and
stride-2 residual stages give stride 8, i.e. an 8x8 = 64-location grid at 64 px
and 16x16 at 128 px, in well under a million parameters. Alternatively a
ResNet-like backbone is loaded from a local file (TorchScript, or a torchvision
state dict), never downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


@dataclass
class EncoderConfig:
    out_dim: int = 128  # D: size of each annotation vector and of the pooled vector
    # Residual CNN: stem width, then one stride-2 stage per further entry.
    channels: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # "cnn": the residual CNN above. "torchscript": a TorchScript module saved
    # with torch.jit.save. "torchvision": a state dict for torchvision's
    # `backbone_arch` (needs torchvision installed).
    backbone: str = "cnn"
    backbone_path: str | None = None
    backbone_arch: str = "resnet18"
    freeze_backbone: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.mean = tuple(self.mean)
        self.std = tuple(self.std)
        if self.backbone not in ("cnn", "torchscript", "torchvision"):
            raise ValueError(f"unknown backbone {self.backbone!r}")
        if self.backbone != "cnn" and not self.backbone_path:
            raise ValueError(f"backbone {self.backbone!r} needs backbone_path")


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class SmallResNet(nn.Module):
    """A stride-2 stem, then one stride-2 residual stage per further channel entry (stride 8)."""

    def __init__(self, channels: tuple[int, ...], blocks_per_stage: int) -> None:
        super().__init__()
        stem = channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()
        )
        stages = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            blocks = [ResidualBlock(c_in, c_out, stride=2)]
            blocks += [ResidualBlock(c_out, c_out) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (B, C, S/8, S/8)


class ResNetTrunk(nn.Module):
    """The feature trunk of a loaded ResNet-like module (its classifier head is dropped).

    A module exposing torchvision's ResNet attributes (conv1 ... layer4) is run up
    to layer4; any other module is expected to map images to a (B, C, h, w) map.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if all(hasattr(net, name) for name in RESNET_TRUNK):
            self.net = nn.Sequential(*(getattr(net, name) for name in RESNET_TRUNK))
        else:
            self.net = net
        with torch.no_grad():
            probe = self.net(torch.zeros(1, 3, 64, 64))
        if probe.dim() != 4:
            raise ValueError(f"backbone must return a (B, C, h, w) map, got {tuple(probe.shape)}")
        self.out_channels = probe.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_backbone(config: EncoderConfig) -> nn.Module:
    """Load the local backbone named by the config; nothing is downloaded."""
    if config.backbone == "torchscript":
        return torch.jit.load(config.backbone_path, map_location="cpu")
    try:
        import torchvision
    except ImportError as err:
        raise ImportError(
            "EncoderConfig(backbone='torchvision') needs torchvision to build "
            f"{config.backbone_arch!r}; install torchvision, or save the backbone with "
            "torch.jit.save and use backbone='torchscript'"
        ) from err
    net = torchvision.models.get_model(config.backbone_arch, weights=None)
    state = torch.load(config.backbone_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net


class ImageEncoder(nn.Module):
    """[0, 1] images (B, 3, S, S) -> pooled (B, D) and annotation grid (B, L, D)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        if config.backbone == "cnn":
            self.backbone = SmallResNet(config.channels, config.blocks_per_stage)
        else:
            self.backbone = ResNetTrunk(load_backbone(config))
            if config.freeze_backbone:
                self.backbone.requires_grad_(False)
        # A 1x1 conv maps backbone channels to D; each grid cell is one annotation a_i.
        self.project = nn.Conv2d(self.backbone.out_channels, config.out_dim, 1)

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.config.backbone != "cnn" and self.config.freeze_backbone:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images - self.mean) / self.std
        fmap = self.project(self.backbone(x))  # (B, D, h, w)
        grid = fmap.flatten(2).transpose(1, 2)  # (B, L = h*w, D)
        pooled = grid.mean(dim=1)  # (B, D)
        return pooled, grid


IMAGE_POOLS = ("mean", "max", "mean+max", "pyramid", "cells")
CELLS_SIDE = 8  # the "cells" pool keeps an 8 x 8 grid of annotation vectors in place


class ImageVector(nn.Module):
    """CNN(I) as Show and Tell and the m-RNN feed it to their recurrent nets: the annotation
    grid (B, L, D) pooled over locations, then standardised per feature across images.

    The standardisation is what lets these models see the image at all. Every image of a
    world shares most of its pooled features (the background, the layout of the grid):
    measured on the pre-trained encoder, the part common to all images is about twice the
    part that tells them apart. Fed as it is (or layer-normalised, which keeps the common
    part), NIC and the m-RNN learn a language model that ignores the image (docs/results.md);
    BatchNorm1d subtracts the common part and scales each feature to unit variance across
    images, as the batch-normalised CNN of the NIC paper's later version gives it. At
    inference the running statistics make it a fixed affine map.

    Pools: "mean", "max", "mean+max" (both, concatenated) over all L locations, or
    "pyramid": the maximum over the whole grid and over each of its four quadrants
    (a two-level spatial pyramid, He et al. 2014), so that the vector also says roughly
    where things are: a caption's "left of" and "above" are not in a grid pooled whole.
    "cells": no pooling over locations, every cell of the grid in place (averaged to 8 x 8
    cells when the grid is finer), as a fully connected layer over a CNN's last
    convolutional map reads it (the fc layers whose output is the m-RNN's and NIC's
    CNN(I)). A pooled vector keeps which attributes are present, not which of them belong
    to one object; in place, a cell's colour and shape stay together.
    """

    def __init__(self, dim: int, *, pool: str = "max", standardise: bool = True) -> None:
        super().__init__()
        if pool not in IMAGE_POOLS:
            raise ValueError(f"pool must be one of {IMAGE_POOLS}, got {pool!r}")
        self.pool = pool
        self.out_dim = {"mean+max": 2 * dim, "pyramid": 5 * dim,
                        "cells": CELLS_SIDE * CELLS_SIDE * dim}.get(pool, dim)
        self.norm = nn.BatchNorm1d(self.out_dim) if standardise else nn.Identity()

    def pooled(self, grid: torch.Tensor) -> torch.Tensor:
        """grid (B, L, D) -> (B, out_dim), before standardisation."""
        if self.pool == "mean":
            return grid.mean(dim=1)
        if self.pool == "max":
            return grid.amax(dim=1)
        if self.pool == "pyramid":
            return pyramid_max(grid)
        if self.pool == "cells":
            return grid_in_place(grid, CELLS_SIDE)
        return torch.cat([grid.mean(dim=1), grid.amax(dim=1)], dim=-1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.norm(self.pooled(grid))


def grid_in_place(grid: torch.Tensor, side: int) -> torch.Tensor:
    """(B, L, D), L = S * S row by row -> (B, side * side * D): the cells of a side x side
    grid in row order. A finer grid (S a multiple of side) is averaged over the cells each
    covers; a coarser one (side a multiple of S) repeats each cell over the cells it covers."""
    _, cells, d = grid.shape
    s = math.isqrt(cells)
    if s * s != cells or (s % side and side % s):
        raise ValueError(f"the cells pool needs a square grid whose side divides or is a "
                         f"multiple of {side}, not {cells} cells")
    # batch as -1: an exported graph keeps it dynamic
    if s >= side:
        k = s // side
        blocks = grid.reshape(-1, side, k, side, k, d).mean(dim=(2, 4))  # (B, side, side, D)
    else:
        k = side // s
        blocks = grid.reshape(-1, s, 1, s, 1, d).expand(-1, s, k, s, k, d)
    return blocks.reshape(-1, side * side * d)


def pyramid_max(grid: torch.Tensor) -> torch.Tensor:
    """(B, L, D), L = S * S row by row with S even -> (B, 5 D): the maximum over the whole
    grid, then over the top-left, top-right, bottom-left and bottom-right quadrants."""
    _, cells, d = grid.shape
    side = math.isqrt(cells)
    if side * side != cells or side % 2:
        raise ValueError(f"a pyramid pools a square grid of even side, not {cells} cells")
    half = side // 2
    # batch as -1: an exported graph keeps it dynamic
    quadrants = grid.reshape(-1, 2, half, 2, half, d).amax(dim=(2, 4))  # (B, 2, 2, D)
    return torch.cat([grid.amax(dim=1), quadrants.reshape(-1, 4 * d)], dim=-1)
