"""The discrete VAE of DALL-E (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", Sec. 2.1).

An image of S x S pixels becomes a G x G grid of codes, each one of K codebook entries,
so that the transformer can model it as G*G tokens. The encoder maps the image to
logits over the K entries per grid cell; training relaxes the categorical choice with
the Gumbel-softmax (Jang et al. 2017; Maddison et al. 2017) at a temperature tau that
is annealed towards 0, so the relaxation approaches the one-hot codes used at inference
(`encode` takes the argmax). The loss is the ELBO of Eq. 1 with the KL to the uniform
prior over the K codes weighted by beta, which ramps up from 0 at the start of training
("we increase beta from 0 to its final value", Sec. 2.1) so the codes are first made
informative and only then pushed to spread over the whole codebook.

Two departures from the paper, both for 64 px shapes-world images on a CPU: the
reconstruction term is the mean squared error of pixels in [0, 1] (the paper uses a
logit-Laplace likelihood on 256 px photographs), and the networks are a few convolutions
and residual blocks wide, not a ResNet of 4 groups. The decoder's first layer embeds each
code (the codebook); a relaxed code is the same embedding weighted by its probabilities.

Optionally (`backbone`, a models.encoder.EncoderConfig) the encoder is the shapes
world's pre-trained image encoder, frozen, whose stride-8 grid of annotation vectors a
small trainable head turns into the code logits. Trained from scratch on a CPU budget
the conv encoder collapses the objects onto a few codes (an object's centre cell names
its shape no better than chance; docs/results.md); the pre-trained grid already tells
the shapes apart cell by cell, though on the CPU budgets measured so far it has not
trained a usable dVAE either (docs/results.md). Only the decoder is served, so this
changes nothing downstream of the codes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.encoder import EncoderConfig, ImageEncoder


@dataclass
class DVAEConfig:
    image_size: int = 64  # S
    grid: int = 8  # G: codes per side (8 or 16 at 64 px)
    codebook_size: int = 512  # K
    channels: int = 32  # width at full resolution; doubles at each downsampling (capped)
    max_channels: int = 128
    code_dim: int = 64  # size of a code's embedding, the decoder's input
    res_blocks: int = 1  # residual blocks at each resolution
    # Gumbel-softmax temperature: cosine-annealed from start to end over the first steps
    temperature_start: float = 1.0
    temperature_end: float = 1.0 / 16  # the paper's final tau
    temperature_steps: int = 5000
    # beta, the KL term's weight: cosine-ramped from 0 to kl_weight over the first steps
    kl_weight: float = 1e-3
    kl_steps: int = 500
    # The pre-trained image encoder's EncoderConfig (as a dict) when the code logits are
    # read from its frozen annotation grid (`BackboneEncoder`); None: the conv `Encoder`.
    backbone: dict[str, Any] | None = None
    # BackboneEncoder's head: a 3x3 conv of this width, ReLU, 1x1 conv; 0: one 1x1 conv,
    # whose logits can start as the negative squared distances to k-means centroids
    # (`BackboneEncoder.init_from_centroids`)
    head_channels: int = 256

    def __post_init__(self) -> None:
        factor = self.image_size // self.grid
        if self.image_size % self.grid or factor & (factor - 1) or factor < 2:
            raise ValueError(f"image_size / grid must be a power of two >= 2, got "
                             f"{self.image_size} / {self.grid}")
        if self.backbone is not None:
            stride = 2 ** len(EncoderConfig(**self.backbone).channels)
            if self.image_size // stride != self.grid:
                raise ValueError(f"the pre-trained encoder's grid at {self.image_size} px is "
                                 f"{self.image_size // stride}, not grid {self.grid}")

    @property
    def downsamplings(self) -> int:
        return int(math.log2(self.image_size // self.grid))

    def temperature(self, step: int) -> float:
        """tau at training step `step`: cosine from temperature_start to temperature_end."""
        return cosine_ramp(step, self.temperature_steps, self.temperature_start,
                           self.temperature_end)

    def kl_weight_at(self, step: int) -> float:
        """beta at training step `step`: cosine from 0 to kl_weight."""
        return cosine_ramp(step, self.kl_steps, 0.0, self.kl_weight)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DVAEConfig:
        return cls(**d)


def cosine_ramp(step: int, steps: int, start: float, end: float) -> float:
    """`start` at step 0, `end` from step `steps` on, a half cosine in between."""
    if steps <= 0 or step >= steps:
        return end
    progress = max(step, 0) / steps
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def widths(cfg: DVAEConfig) -> list[int]:
    """Channels at full resolution and after each downsampling."""
    return [min(cfg.channels * 2 ** i, cfg.max_channels) for i in range(cfg.downsamplings + 1)]


class Encoder(nn.Module):
    """(B, 3, S, S) in [0, 1] -> logits (B, K, G, G)."""

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        chans = widths(cfg)
        layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1)]
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            layers += [ResBlock(c_in) for _ in range(cfg.res_blocks)]
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]
        layers += [ResBlock(chans[-1]) for _ in range(cfg.res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(chans[-1], cfg.codebook_size, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2.0 - 1.0)


class BackboneEncoder(nn.Module):
    """(B, 3, S, S) in [0, 1] -> logits (B, K, G, G) from a frozen pre-trained
    ImageEncoder's annotation grid: each annotation vector layer-normalised, then a 3x3
    conv (each cell sees its neighbours, where an object's edges fall), ReLU, a 1x1 conv
    to the K logits.

    The normalisation matters: the raw annotation vectors are large enough that the
    logits start one-hot, the Gumbel-softmax saturates, every image gets the same code
    and no gradient reaches the head (measured: KL at log K, relaxed PSNR flat at 17.5 dB
    for 600 steps)."""

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        self.backbone = ImageEncoder(EncoderConfig(**cfg.backbone))
        self.backbone.requires_grad_(False).eval()
        width = self.backbone.out_dim
        self.norm = nn.LayerNorm(width)
        if cfg.head_channels:
            self.head = nn.Sequential(nn.Conv2d(width, cfg.head_channels, 3, padding=1),
                                      nn.ReLU(), nn.Conv2d(cfg.head_channels, cfg.codebook_size, 1))
        else:
            self.head = nn.Sequential(nn.Conv2d(width, cfg.codebook_size, 1))

    def train(self, mode: bool = True) -> BackboneEncoder:
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics stay as pre-trained
        return self

    def cells(self, images: torch.Tensor) -> torch.Tensor:
        """The normalised annotation vectors (B, D, G, G) the head reads."""
        with torch.no_grad():
            _, grid = self.backbone(images)  # (B, G*G, D)
        side = int(math.isqrt(grid.shape[1]))
        grid = self.norm(grid)
        return grid.transpose(1, 2).reshape(len(grid), -1, side, side)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(images))

    @torch.no_grad()
    def init_from_centroids(self, centroids: torch.Tensor, scale: float) -> None:
        """Set a one-layer head to logits_k = -scale * |x - c_k|^2 (+ a constant per cell),
        centroids (K, D): every cell starts on the code of its nearest centroid, so the
        decoder sees informative codes from the first step instead of the few that a
        randomly initialised head collapses onto."""
        if len(self.head) != 1:
            raise ValueError("centroid initialisation needs the one-layer head (head_channels 0)")
        conv = self.head[0]
        conv.weight.copy_((2 * scale * centroids)[:, :, None, None])
        conv.bias.copy_(-scale * centroids.pow(2).sum(1))


def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Centroids (k, D) of the rows of x (N, D) by Lloyd's algorithm from k distinct rows
    drawn with `seed`; a centroid left without rows keeps its place."""
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        nearest = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, x)
        counts = torch.bincount(nearest, minlength=k).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


class Decoder(nn.Module):
    """Code embeddings (B, code_dim, G, G) -> images (B, 3, S, S) in [0, 1]."""

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        chans = widths(cfg)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, chans[0], 3, padding=1)]
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            layers += [ResBlock(c_in) for _ in range(cfg.res_blocks)]
            layers += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
        layers += [ResBlock(chans[-1]) for _ in range(cfg.res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(chans[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))


@dataclass
class DVAEOutput:
    recon: torch.Tensor  # (B, 3, S, S) in [0, 1]
    loss: torch.Tensor  # recon_loss + beta * kl
    recon_loss: torch.Tensor  # mean squared error per pixel value
    kl: torch.Tensor  # KL(q(z|x) || uniform) in nats, mean per grid cell
    logits: torch.Tensor  # (B, K, G, G)


class DiscreteVAE(nn.Module):
    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg) if cfg.backbone is None else BackboneEncoder(cfg)
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.code_dim)
        self.decoder = Decoder(cfg)

    def forward(self, images: torch.Tensor, *, temperature: float,
                kl_weight: float) -> DVAEOutput:
        """Reconstruct `images` (B, 3, S, S) in [0, 1] through Gumbel-softmax relaxed codes."""
        logits = self.encoder(images)  # (B, K, G, G)
        soft = F.gumbel_softmax(logits, tau=temperature, hard=False, dim=1)
        z = torch.einsum("bkhw,kc->bchw", soft, self.codebook.weight)  # (B, code_dim, G, G)
        recon = self.decoder(z)
        recon_loss = F.mse_loss(recon, images)
        kl = kl_to_uniform(logits)
        return DVAEOutput(recon, recon_loss + kl_weight * kl, recon_loss, kl, logits)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Code ids (B, G, G) int64 of images in [0, 1]: the most likely entry per cell."""
        return self.encoder(images).argmax(dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [0, 1] of code ids (B, G, G)."""
        z = self.codebook(codes).permute(0, 3, 1, 2)  # (B, code_dim, G, G)
        return self.decoder(z)


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(q || U(K)) = log K - H(q), q = softmax over dim 1, averaged over batch and cells."""
    log_q = F.log_softmax(logits, dim=1)
    per_cell = (log_q.exp() * log_q).sum(dim=1) + math.log(logits.shape[1])
    return per_cell.mean()


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity of the code histogram (K when every code is used equally, 1 for one code)
    and the number of codes never used, over the ids `codes` of any shape."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp(min=1.0)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"perplexity": float(entropy.exp()), "dead_codes": int((counts == 0).sum())}
