"""Text-conditional DCGAN of Reed et al. 2016, "Generative Adversarial Text to Image Synthesis".

The generator maps noise z and a sentence embedding phi(t) to a 64x64 image;
the discriminator scores an image together with phi(t). In both networks the
embedding is first compressed by a fully connected layer and a leaky ReLU
(Sec. 4 of the paper: 1024 -> 128 there, E -> `proj_dim` here). G concatenates
it to z; D replicates it over the 4x4 grid of its last feature map and
concatenates it in depth before the final convolutions, so that the decision
"real image matching this text" is taken jointly.

Both networks first standardise phi(t) per dimension with statistics of the
training captions, kept as buffers (EmbeddingNorm): a sentence embedding varies
by ~0.1 per dimension, so without it the text code starts orders of magnitude
below z and the networks learn to ignore the text.

The same networks serve GAN, GAN-CLS, GAN-INT and GAN-INT-CLS: the variants
differ only in their losses (below; StackGAN's stages use them too), which
training/tasks/gan.py combines. Widths are small so that the shapes world
trains on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GanConfig:
    embed_dim: int = 128  # E, size of the frozen sentence embedding phi(t)
    noise_dim: int = 100  # size of z ~ N(0, I)
    proj_dim: int = 32  # phi(t) compressed to this size in G and in D
    ngf: int = 16  # generator width: 8*ngf channels at 4x4 down to ngf at 32x32
    ndf: int = 16  # discriminator width: ndf channels at 32x32 up to 8*ndf at 4x4
    image_size: int = 64

    def __post_init__(self) -> None:
        if self.image_size != 64:
            raise ValueError(f"the DCGAN generator draws 64x64 images, not {self.image_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GanConfig:
        return cls(**d)


class EmbeddingNorm(nn.Module):
    """(phi(t) - mean) / std with per-dimension statistics of the training captions.

    Identity until `set_statistics`; the buffers travel with the weights, so a
    loaded or exported generator takes raw text-encoder output.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(embed_dim))
        self.register_buffer("std", torch.ones(embed_dim))

    def set_statistics(self, embeddings: torch.Tensor) -> None:
        """Take mean and std of `embeddings` (N, E), e.g. every training pair's phi(t)."""
        self.mean.copy_(embeddings.mean(0))
        self.std.copy_(embeddings.std(0).clamp(min=1e-6))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return (embedding - self.mean) / self.std


def text_projection(embed_dim: int, proj_dim: int) -> nn.Sequential:
    """phi(t) -> a small code: linear + leaky ReLU (0.2), as in Reed et al. Sec. 4."""
    return nn.Sequential(nn.Linear(embed_dim, proj_dim), nn.LeakyReLU(0.2, inplace=True))


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Fractionally strided 4x4 convolution doubling the side, batch norm, ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def down_block(c_in: int, c_out: int, *, norm: bool = True) -> nn.Sequential:
    """Strided 4x4 convolution halving the side, (batch norm), leaky ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def image_encoder(ndf: int, num_halvings: int) -> nn.Sequential:
    """x (B, 3, S, S) -> (B, 8*ndf, S / 2**num_halvings, ...); channels double up to 8*ndf.

    The first layer has no batch norm (DCGAN practice)."""
    layers = [down_block(3, ndf, norm=False)]
    c = ndf
    for _ in range(num_halvings - 1):
        c_next = min(c * 2, ndf * 8)
        layers.append(down_block(c, c_next))
        c = c_next
    return nn.Sequential(*layers)


class MatchingHead(nn.Module):
    """Joint image-text logit from a 4x4 image feature map (Reed et al. Sec. 4).

    phi(t) is compressed, replicated spatially and concatenated in depth; a 1x1
    convolution mixes image and text, a 4x4 convolution gives one logit.
    """

    def __init__(self, channels: int, embed_dim: int, proj_dim: int) -> None:
        super().__init__()
        self.project = text_projection(embed_dim, proj_dim)
        self.joint = nn.Sequential(
            nn.Conv2d(channels + proj_dim, channels, 1, bias=False),
            nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True))
        self.logit = nn.Conv2d(channels, 1, 4)

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        code = self.project(embedding)  # (B, P)
        code = code[:, :, None, None].expand(-1, -1, *features.shape[2:])  # (B, P, 4, 4)
        joint = self.joint(torch.cat([features, code], dim=1))
        return self.logit(joint).flatten()  # (B,) logits of "real and matching"


class Generator(nn.Module):
    """G(z, phi(t)) -> image (B, 3, 64, 64) in [-1, 1]."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        self.noise_dim = config.noise_dim
        self.embed_dim = config.embed_dim
        self.image_size = config.image_size
        ngf = config.ngf
        self.embed_norm = EmbeddingNorm(config.embed_dim)
        self.project = text_projection(config.embed_dim, config.proj_dim)
        self.net = nn.Sequential(
            # (B, Z + P, 1, 1) -> (B, 8 ngf, 4, 4)
            nn.ConvTranspose2d(config.noise_dim + config.proj_dim, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8), nn.ReLU(inplace=True),
            up_block(ngf * 8, ngf * 4),  # 8x8
            up_block(ngf * 4, ngf * 2),  # 16x16
            up_block(ngf * 2, ngf),  # 32x32
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1),  # 64x64
            nn.Tanh(),
        )

    def forward(self, noise: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        code = torch.cat([noise, self.project(self.embed_norm(embedding))], dim=1)  # (B, Z + P)
        return self.net(code[:, :, None, None])

    def sample(self, embedding: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, 64, 64) in [-1, 1] for embeddings (B, E) and noise (B, noise_dim)."""
        return self(noise, embedding)


class Discriminator(nn.Module):
    """D(x, phi(t)) -> logit (B,) that x is a real image matching the text."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_norm = EmbeddingNorm(config.embed_dim)
        self.encode = image_encoder(config.ndf, num_halvings=4)  # 64 -> 4
        self.head = MatchingHead(config.ndf * 8, config.embed_dim, config.proj_dim)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(image), self.embed_norm(embedding))


def init_dcgan_weights(module: nn.Module) -> None:
    """N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales (Radford et al. 2016).

    Fully connected layers keep PyTorch's default, which preserves the scale of
    the standardised text embedding (N(0, 0.02) would shrink it fivefold)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- losses


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor,
                       wrong: torch.Tensor | None = None) -> torch.Tensor:
    """D's loss from logits of (real, right text), (fake, right text) and (real, wrong text).

    Without `wrong`: the conditional GAN, -log s_r - log(1 - s_f). With it, Reed et
    al. Algorithm 1: L_D = log s_r + (log(1 - s_w) + log(1 - s_f)) / 2, negated.
    """
    loss_real = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
    loss_fake = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    if wrong is None:
        return loss_real + loss_fake
    loss_wrong = F.binary_cross_entropy_with_logits(wrong, torch.zeros_like(wrong))
    return loss_real + 0.5 * (loss_wrong + loss_fake)


def generator_loss(fake: torch.Tensor, interpolated: torch.Tensor | None = None) -> torch.Tensor:
    """G's non-saturating loss -log s_f, plus -log D(G(z, t_int), t_int) for GAN-INT (Eq. 5)."""
    loss = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if interpolated is not None:
        loss = loss + F.binary_cross_entropy_with_logits(interpolated,
                                                         torch.ones_like(interpolated))
    return loss


def interpolate_embeddings(t1: torch.Tensor, t2: torch.Tensor, beta: float) -> torch.Tensor:
    """beta t1 + (1 - beta) t2 (Reed et al. Eq. 5): points between two captions' embeddings."""
    return beta * t1 + (1.0 - beta) * t2
