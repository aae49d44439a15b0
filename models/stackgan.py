"""StackGAN (Zhang et al. 2017): conditioning augmentation and two generator stages.

Conditioning augmentation (Sec. 3.1) replaces the fixed embedding phi(t) by a
sample c = mu(phi_t) + sigma(phi_t) * eps, eps ~ N(0, I), and regularises the
conditioning distribution with KL(N(mu, Sigma) || N(0, I)) (Eq. 3 and 4, weight
lambda). Stage-I (Sec. 3.2) draws a 64x64 sketch from (c0, z); Stage-II
(Sec. 3.3) reads the Stage-I image, joins it with its own c, refines it through
residual blocks and draws 128x128: anew, as in the paper, or (`residual_output`) as a
correction added to the Stage-I image upsampled to 128 px, so that Stage-II starts from
Stage-I's picture instead of having to learn to redraw it. Every network standardises phi(t) first
(models.gan.EmbeddingNorm). Each stage has a matching-aware
discriminator: phi(t) compressed, replicated over the 4x4 feature map and
concatenated in depth (models.gan.MatchingHead) in the paper, or the projection head,
group statistic and attribute classifier of GAN-INT-CLS (models.gan.Discriminator) when
the config asks for them.

`sample(embedding, noise)` takes every random input from `noise`, so a sample
is a pure function of its inputs and traces to ONNX: Stage-I noise is
[z, eps0]; Stage-II noise is [z, eps0, eps] (Stage-I's then its own).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.gan import Discriminator, EmbeddingNorm, GanConfig, init_dcgan_weights


@dataclass
class StackGanConfig:
    embed_dim: int = 128  # E, size of phi(t)
    z_dim: int = 100  # Stage-I noise z ~ N(0, I)
    c_dim: int = 64  # conditioning code c (128 in the paper)
    proj_dim: int = 32  # phi(t) compressed to this size in the discriminators
    ngf: int = 16  # Stage-I: 8*ngf channels at 4x4; Stage-II: 4*ngf at 16x16
    ndf: int = 16
    num_residual: int = 2  # Stage-II residual blocks (4 in the paper)
    # Stage-II's output: False draws the 128 px image anew through tanh (the paper); True
    # adds it to the pre-tanh Stage-I image upsampled bilinearly, starting at zero.
    residual_output: bool = False
    # The discriminators' options of models.gan.GanConfig (off: Zhang et al.'s D)
    projection: bool = False
    attribute_classes: tuple[int, ...] = ()
    minibatch_std_group: int = 0
    minibatch_std_features: int = 1

    def __post_init__(self) -> None:
        self.attribute_classes = tuple(self.attribute_classes)
        self.discriminator_config()  # refuses options models.gan.GanConfig refuses

    def discriminator_config(self) -> GanConfig:
        """The discriminators' settings as a models.gan.GanConfig."""
        return GanConfig(embed_dim=self.embed_dim, proj_dim=self.proj_dim, ndf=self.ndf,
                         projection=self.projection, attribute_classes=self.attribute_classes,
                         minibatch_std_group=self.minibatch_std_group,
                         minibatch_std_features=self.minibatch_std_features)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StackGanConfig:
        return cls(**d)


def kl_to_standard_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) summed over dimensions, averaged over the batch."""
    kl = 0.5 * (mu.pow(2) + torch.exp(2 * log_sigma) - 1.0) - log_sigma  # (B, C)
    return kl.sum(dim=1).mean()


class ConditioningAugmentation(nn.Module):
    """phi(t), eps -> c = mu + sigma * eps, with mu and log sigma (Sec. 3.1)."""

    def __init__(self, embed_dim: int, c_dim: int) -> None:
        super().__init__()
        self.c_dim = c_dim
        self.fc = nn.Linear(embed_dim, 2 * c_dim)

    def forward(self, embedding: torch.Tensor, eps: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.fc(embedding).chunk(2, dim=1)  # (B, C) each
        return mu + torch.exp(log_sigma) * eps, mu, log_sigma


def upsample_block(c_in: int, c_out: int) -> nn.Sequential:
    """Nearest-neighbour x2, 3x3 convolution, batch norm, ReLU (StackGAN's up-sampling)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels),
                                  nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def to_rgb(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 3, 3, 1, 1), nn.Tanh())


def rgb_logits(up: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """A stack of upsamplings ending in to_rgb, run up to to_rgb's tanh."""
    return up[-1][0](up[:-1](h))


class StageIGenerator(nn.Module):
    """(phi(t), [z, eps0]) -> 64x64 image in [-1, 1], with the CA's mu and log sigma."""

    def __init__(self, config: StackGanConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.noise_dim = config.z_dim + config.c_dim
        self.image_size = 64
        ngf = config.ngf
        self.embed_norm = EmbeddingNorm(config.embed_dim)
        self.ca = ConditioningAugmentation(config.embed_dim, config.c_dim)
        self.fc = nn.Sequential(nn.Linear(config.c_dim + config.z_dim, ngf * 8 * 16, bias=False),
                                nn.BatchNorm1d(ngf * 8 * 16), nn.ReLU(inplace=True))
        self.up = nn.Sequential(upsample_block(ngf * 8, ngf * 4),  # 8x8
                                upsample_block(ngf * 4, ngf * 2),  # 16x16
                                upsample_block(ngf * 2, ngf),  # 32x32
                                upsample_block(ngf, ngf // 2),  # 64x64
                                to_rgb(ngf // 2))

    def forward(self, embedding: torch.Tensor, noise: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, mu, log_sigma = self.logits(embedding, noise)
        return torch.tanh(logits), mu, log_sigma

    def logits(self, embedding: torch.Tensor, noise: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The image before its tanh (B, 3, 64, 64), with the CA's mu and log sigma."""
        z, eps = noise.split([self.config.z_dim, self.config.c_dim], dim=1)
        c, mu, log_sigma = self.ca(self.embed_norm(embedding), eps)
        h = self.fc(torch.cat([c, z], dim=1)).view(-1, self.config.ngf * 8, 4, 4)
        return rgb_logits(self.up, h), mu, log_sigma

    def sample(self, embedding: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, 64, 64) in [-1, 1] for embeddings (B, E) and noise (B, noise_dim)."""
        return self(embedding, noise)[0]


class StageIIGenerator(nn.Module):
    """(phi(t), [z, eps0, eps]) -> 128x128 image refining the frozen Stage-I sketch.

    `forward` returns (image 128, Stage-I image 64, mu, log sigma of this stage's CA).
    """

    def __init__(self, config: StackGanConfig, stage1: StageIGenerator) -> None:
        super().__init__()
        self.config = config
        self.stage1 = stage1
        self.embed_dim = config.embed_dim
        self.noise_dim = stage1.noise_dim + config.c_dim
        self.image_size = 128
        ngf = config.ngf
        self.embed_norm = EmbeddingNorm(config.embed_dim)
        self.ca = ConditioningAugmentation(config.embed_dim, config.c_dim)
        self.encode = nn.Sequential(
            nn.Conv2d(3, ngf, 3, 1, 1), nn.ReLU(inplace=True),  # 64x64
            conv_bn_relu(ngf, ngf * 2, kernel=4, stride=2),  # 32x32
            conv_bn_relu(ngf * 2, ngf * 4, kernel=4, stride=2))  # 16x16
        self.joint = conv_bn_relu(ngf * 4 + config.c_dim, ngf * 4)
        self.residual = nn.Sequential(*[ResidualBlock(ngf * 4) for _ in range(config.num_residual)])
        self.up = nn.Sequential(upsample_block(ngf * 4, ngf * 2),  # 32x32
                                upsample_block(ngf * 2, ngf),  # 64x64
                                upsample_block(ngf, ngf // 2),  # 128x128
                                to_rgb(ngf // 2))

    def init_weights(self) -> None:
        """DCGAN initialisation of everything but the trained Stage-I; a residual output
        starts at zero, so the untrained Stage-II draws the upsampled Stage-I image."""
        for module in (self.ca, self.encode, self.joint, self.residual, self.up):
            init_dcgan_weights(module)
        if self.config.residual_output:
            nn.init.zeros_(self.up[-1][0].weight)
            nn.init.zeros_(self.up[-1][0].bias)

    def train(self, mode: bool = True) -> StageIIGenerator:
        """Stage-I stays in eval mode: it is frozen while Stage-II trains (Sec. 3.3)."""
        super().train(mode)
        self.stage1.eval()
        return self

    def forward(self, embedding: torch.Tensor, noise: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        noise1, eps = noise.split([self.stage1.noise_dim, self.config.c_dim], dim=1)
        low_logits = self.stage1.logits(embedding, noise1)[0]
        low = torch.tanh(low_logits)  # (B, 3, 64, 64)
        c, mu, log_sigma = self.ca(self.embed_norm(embedding), eps)
        h = self.encode(low)  # (B, 4 ngf, 16, 16)
        code = c[:, :, None, None].expand(-1, -1, *h.shape[2:])
        h = self.residual(self.joint(torch.cat([h, code], dim=1)))
        if not self.config.residual_output:
            return self.up(h), low, mu, log_sigma
        correction = rgb_logits(self.up, h)
        base = F.interpolate(low_logits, scale_factor=2, mode="bilinear", align_corners=False)
        return torch.tanh(base + correction), low, mu, log_sigma

    def sample(self, embedding: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, 128, 128) in [-1, 1]: Stage-I, then Stage-II."""
        return self(embedding, noise)[0]


class StageDiscriminator(Discriminator):
    """Matching-aware D at 64 (Stage-I) or 128 (Stage-II) pixels -> logit (B,)."""

    def __init__(self, config: StackGanConfig, image_size: int) -> None:
        super().__init__(config.discriminator_config(), image_size)
