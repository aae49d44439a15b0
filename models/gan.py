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

Stabilisers from later work, each off unless a config asks for it (the
discriminator's two are GanConfig fields; the rest are the task's):

    spectral_norm  D's weight layers divided by their largest singular value, and no
                   batch norm in D (Miyato et al. 2018, "Spectral Normalization for GANs")
    projection     D's text term is <V phi(t), h> on D's pooled features h instead of
                   a concatenation (Miyato & Koyama 2018, "cGANs with Projection
                   Discriminator", Eq. 3)
    hinge loss     Lim & Ye 2017 / Miyato et al. 2018: max(0, 1 - D(x)) + max(0, 1 + D(G(z)))
    EMA            the exported generator is an exponential moving average of G's weights
                   (Karras et al. 2018; Yazici et al. 2019)
    DiffAugment    the same random translation and cutout on every image D sees, real or
                   fake (Zhao et al. 2020); no colour jitter, which would blur colour
    R1             gamma / 2 * E ||grad_x D(x, t)||^2 on real images (Mescheder et al. 2018)
    mode seeking   G is also asked to draw two different images for two noises of one text
                   (Mao et al. 2019, "Mode Seeking GANs"): conditional GANs learn to ignore z
    minibatch std  D sees, beside each image's features, how much the features of its group
                   of `minibatch_std_group` images differ (Karras et al. 2018, Sec. 3); the
                   task fills each group with one class, real images of it or G's samples
                   of it under several noises, so a G that draws one image per prompt is
                   told apart from real images, which differ in place and outline
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
    # Discriminator stabilisers (above); False reads the checkpoints made before them.
    spectral_norm: bool = False
    projection: bool = False
    # D also names the shape, colour and size it sees (an auxiliary classifier, Odena et
    # al. 2017), from the same pooled features: AttributeHead's (shape, colour, size) sizes.
    attribute_classes: tuple[int, ...] = ()
    # D's image trunk: "dcgan", four strided 4x4 convolutions (Radford et al.), or
    # "residual", residual blocks of two 3x3 convolutions then average pooling (Miyato et
    # al. 2018's ResNet discriminator), which sees a small object's outline at full size.
    d_trunk: str = "dcgan"
    # Where the attribute classifier reads from: "shared", D's own trunk (AC-GAN), or
    # "separate", a trunk of its own that only the supervised loss on real images trains,
    # so that the adversarial game cannot wear away what it knows.
    attribute_trunk: str = "shared"
    # Rows per group of D's minibatch standard deviation (MinibatchStd); 0: off. The rows of
    # a group are consecutive in D's batch, whose size must be a multiple of it.
    minibatch_std_group: int = 0
    # Groups of D's feature channels whose spread is measured apart, one extra channel each
    # (1: one number for all features, as Karras et al. 2018; more let D ask for variety in
    # some features and not others, as StyleGAN2's num_channels does).
    minibatch_std_features: int = 1

    def __post_init__(self) -> None:
        self.attribute_classes = tuple(self.attribute_classes)
        if self.minibatch_std_group < 0 or self.minibatch_std_group == 1:
            raise ValueError("minibatch_std_group is 0 (off) or a group size of at least 2, "
                             f"not {self.minibatch_std_group}")
        if self.minibatch_std_features < 1 or (self.ndf * 8) % self.minibatch_std_features:
            raise ValueError(f"minibatch_std_features must divide D's {self.ndf * 8} feature "
                             f"channels, not {self.minibatch_std_features}")
        if self.d_trunk not in D_TRUNKS:
            raise ValueError(f"unknown discriminator trunk {self.d_trunk!r}; one of {D_TRUNKS}")
        if self.attribute_trunk not in ("shared", "separate"):
            raise ValueError(f"attribute_trunk is 'shared' or 'separate', not "
                             f"{self.attribute_trunk!r}")
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


def spectrally_normalised(layer: nn.Module, enabled: bool = True) -> nn.Module:
    """`layer` with its weight divided by its largest singular value (one power iteration
    per training forward), or `layer` itself when not `enabled`."""
    return nn.utils.parametrizations.spectral_norm(layer) if enabled else layer


def down_block(c_in: int, c_out: int, *, norm: bool = True,
               spectral_norm: bool = False) -> nn.Sequential:
    """Strided 4x4 convolution halving the side, (batch norm), leaky ReLU. With
    `spectral_norm` the convolution is spectrally normalised and batch norm is left out:
    it would rescale the features and undo the Lipschitz bound."""
    norm = norm and not spectral_norm
    conv = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)
    layers: list[nn.Module] = [spectrally_normalised(conv, spectral_norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def image_encoder(ndf: int, num_halvings: int, *, spectral_norm: bool = False
                  ) -> nn.Sequential:
    """x (B, 3, S, S) -> (B, 8*ndf, S / 2**num_halvings, ...); channels double up to 8*ndf.

    The first layer has no batch norm (DCGAN practice)."""
    layers = [down_block(3, ndf, norm=False, spectral_norm=spectral_norm)]
    c = ndf
    for _ in range(num_halvings - 1):
        c_next = min(c * 2, ndf * 8)
        layers.append(down_block(c, c_next, spectral_norm=spectral_norm))
        c = c_next
    return nn.Sequential(*layers)


class ResidualDown(nn.Module):
    """x -> avgpool(conv3x3(act(conv3x3(act(x))))) + avgpool(conv1x1(x)), halving the side
    (the discriminator block of Miyato et al. 2018). The first block of a trunk has no
    activation before its first convolution: it sees pixels."""

    def __init__(self, c_in: int, c_out: int, *, first: bool = False,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        sn = spectral_norm
        self.first = first
        self.conv1 = spectrally_normalised(nn.Conv2d(c_in, c_out, 3, 1, 1), sn)
        self.conv2 = spectrally_normalised(nn.Conv2d(c_out, c_out, 3, 1, 1), sn)
        self.shortcut = spectrally_normalised(nn.Conv2d(c_in, c_out, 1), sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.leaky_relu(x, 0.2)
        h = self.conv2(F.leaky_relu(self.conv1(h), 0.2))
        return F.avg_pool2d(h, 2) + self.shortcut(F.avg_pool2d(x, 2))


def residual_image_encoder(ndf: int, num_halvings: int, *, spectral_norm: bool = False
                           ) -> nn.Sequential:
    """x (B, 3, S, S) -> (B, 8*ndf, S / 2**num_halvings, ...) through residual blocks, channels
    doubling from ndf up to 8*ndf, and a final leaky ReLU (the heads take activations)."""
    blocks: list[nn.Module] = [ResidualDown(3, ndf, first=True, spectral_norm=spectral_norm)]
    c = ndf
    for _ in range(num_halvings - 1):
        c_next = min(c * 2, ndf * 8)
        blocks.append(ResidualDown(c, c_next, spectral_norm=spectral_norm))
        c = c_next
    return nn.Sequential(*blocks, nn.LeakyReLU(0.2))


D_TRUNKS = ("dcgan", "residual")
D_HALVINGS = {64: 4, 128: 5}  # image side -> stride-2 steps of D's trunk down to 4x4


def discriminator_trunk(kind: str, ndf: int, num_halvings: int, *,
                        spectral_norm: bool = False) -> nn.Sequential:
    """D's image trunk of `kind` (one of D_TRUNKS)."""
    build = image_encoder if kind == "dcgan" else residual_image_encoder
    return build(ndf, num_halvings, spectral_norm=spectral_norm)


class MatchingHead(nn.Module):
    """Joint image-text logit from a 4x4 image feature map (Reed et al. Sec. 4).

    phi(t) is compressed, replicated spatially and concatenated in depth; a 1x1
    convolution mixes image and text, a 4x4 convolution gives one logit.
    """

    def __init__(self, channels: int, embed_dim: int, proj_dim: int, *,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        sn = spectral_norm
        self.project = nn.Sequential(spectrally_normalised(nn.Linear(embed_dim, proj_dim), sn),
                                     nn.LeakyReLU(0.2, inplace=True))
        joint = spectrally_normalised(nn.Conv2d(channels + proj_dim, channels, 1, bias=sn), sn)
        self.joint = nn.Sequential(joint, *([] if sn else [nn.BatchNorm2d(channels)]),
                                   nn.LeakyReLU(0.2, inplace=True))
        self.logit = spectrally_normalised(nn.Conv2d(channels, 1, 4), sn)

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        code = self.project(embedding)  # (B, P)
        code = code[:, :, None, None].expand(-1, -1, *features.shape[2:])  # (B, P, 4, 4)
        joint = self.joint(torch.cat([features, code], dim=1))
        return self.logit(joint).flatten()  # (B,) logits of "real and matching"


class ProjectionHead(nn.Module):
    """Projection discriminator's logit (Miyato & Koyama 2018, Eq. 3):
    psi(h) + <V phi(t), h>, with h the image features summed over the grid.

    The text enters only through an inner product with the image's features, so D
    cannot score an image well without checking it against the text; with a
    concatenation (MatchingHead) it can learn to score realism alone.
    """

    def __init__(self, channels: int, embed_dim: int, *, spectral_norm: bool = False) -> None:
        super().__init__()
        self.psi = spectrally_normalised(nn.Linear(channels, 1), spectral_norm)
        self.embed = spectrally_normalised(nn.Linear(embed_dim, channels, bias=False),
                                           spectral_norm)

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = features.sum(dim=(2, 3))  # (B, C)
        return self.psi(h).flatten() + (self.embed(embedding) * h).sum(dim=1)  # (B,)


class MinibatchStd(nn.Module):
    """More feature channels: how much the features of each row's group differ
    (Karras et al. 2018, "Progressive Growing of GANs", Sec. 3).

    The batch is cut into consecutive groups of `group` rows; the standard deviation of
    each feature over a group's rows, averaged over positions and over the channels of
    each of `parts` equal parts of the channels, is `parts` numbers per group, given to
    each of its rows as constant (B, parts, H, W) channels. A generator whose samples of
    one prompt all look alike gives small numbers where real images of that prompt give
    large ones, so D can tell them apart and G is pushed to vary.
    """

    def __init__(self, group: int, parts: int = 1) -> None:
        super().__init__()
        self.group, self.parts = group, parts

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        if b % self.group:
            raise ValueError(f"minibatch std groups of {self.group} rows need a batch that is "
                             f"a multiple of it, not {b}")
        grouped = features.reshape(b // self.group, self.group, self.parts, -1, h, w)
        spread = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(2, 3, 4))
        channels = spread.repeat_interleave(self.group, dim=0)[:, :, None, None]
        return torch.cat([features, channels.expand(b, self.parts, h, w)], dim=1)


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

    def __init__(self, config: GanConfig, image_size: int | None = None) -> None:
        """D of `image_size` pixels (64 or 128; default: the config's): the trunk halves the
        side down to 4x4 (StackGAN's Stage-II discriminator sees 128)."""
        super().__init__()
        self.config = config
        image_size = config.image_size if image_size is None else image_size
        halvings = D_HALVINGS.get(image_size)
        if halvings is None:
            raise ValueError(f"discriminators see {sorted(D_HALVINGS)} pixels, not {image_size}")
        self.embed_norm = EmbeddingNorm(config.embed_dim)
        sn = config.spectral_norm
        self.encode = discriminator_trunk(config.d_trunk, config.ndf, num_halvings=halvings,
                                          spectral_norm=sn)  # -> 4x4
        group = config.minibatch_std_group
        # the heads read the group's spread as `parts` more channels; the attribute
        # classifier reads the image's own features only, so it names one image the same way
        parts = config.minibatch_std_features
        self.spread = MinibatchStd(group, parts) if group else None
        channels = config.ndf * 8 + (parts if group else 0)
        self.head = (ProjectionHead(channels, config.embed_dim, spectral_norm=sn)
                     if config.projection else
                     MatchingHead(channels, config.embed_dim, config.proj_dim,
                                  spectral_norm=sn))

        self.attributes = (AttributeHead(config.ndf * 8, config.attribute_classes)
                           if config.attribute_classes else None)
        self.classifier_trunk = (
            discriminator_trunk(config.d_trunk, config.ndf, num_halvings=halvings)
            if config.attribute_classes and config.attribute_trunk == "separate" else None)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor, *,
                with_attributes: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B,); with `with_attributes`, also the attribute head's logits."""
        features = self.encode(image)
        judged = features if self.spread is None else self.spread(features)
        logits = self.head(judged, self.embed_norm(embedding))
        if not with_attributes:
            return logits
        return logits, self.name_attributes(image, features)

    def name_attributes(self, image: torch.Tensor, features: torch.Tensor | None = None
                        ) -> list[torch.Tensor]:
        """The attribute classifier's logits for `image` (from D's trunk `features` when the
        classifier shares it; computed when not given)."""
        if self.classifier_trunk is not None:
            return self.attributes(self.classifier_trunk(image))
        return self.attributes(self.encode(image) if features is None else features)


class AttributeHead(nn.Module):
    """Logits of each attribute (shape, colour, size) from D's features summed over the grid:
    the auxiliary classifier of AC-GAN (Odena et al. 2017), trained on real images, that
    teaches D what tells the attributes apart and tells G when its image shows another."""

    def __init__(self, channels: int, classes: tuple[int, ...]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(channels, n) for n in classes)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        h = features.sum(dim=(2, 3))  # (B, C)
        return [head(h) for head in self.heads]  # each (B, n_k)


def init_dcgan_weights(module: nn.Module) -> None:
    """N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales (Radford et al. 2016).

    Fully connected layers keep PyTorch's default, which preserves the scale of
    the standardised text embedding (N(0, 0.02) would shrink it fivefold)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            # A spectrally normalised layer's trained tensor is the parametrisation's original.
            weight = (m.parametrizations.weight.original
                      if nn.utils.parametrize.is_parametrized(m, "weight") else m.weight)
            nn.init.normal_(weight, 0.0, 0.02)
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


def hinge_discriminator_loss(real: torch.Tensor, fake: torch.Tensor,
                             wrong: torch.Tensor | None = None) -> torch.Tensor:
    """Hinge version of `discriminator_loss`: E max(0, 1 - s_r) + E max(0, 1 + s_f), the
    fake term shared with (real, wrong text) as in Algorithm 1 when `wrong` is given."""
    loss_real = F.relu(1.0 - real).mean()
    loss_fake = F.relu(1.0 + fake).mean()
    if wrong is None:
        return loss_real + loss_fake
    return loss_real + 0.5 * (F.relu(1.0 + wrong).mean() + loss_fake)


def hinge_generator_loss(fake: torch.Tensor,
                         interpolated: torch.Tensor | None = None) -> torch.Tensor:
    """Hinge version of `generator_loss`: -E s_f (and -E s_int for GAN-INT)."""
    loss = -fake.mean()
    if interpolated is not None:
        loss = loss - interpolated.mean()
    return loss


# loss name -> (D's loss, G's loss), both taking logits as above
ADVERSARIAL_LOSSES = {
    "bce": (discriminator_loss, generator_loss),
    "hinge": (hinge_discriminator_loss, hinge_generator_loss),
}


# ------------------------------------------------------------------------- stabilisers


def attribute_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum over attributes of the cross-entropy of each head's logits (B, n_k) against
    labels (B, K), one column per attribute."""
    return sum(F.cross_entropy(x, labels[:, k]) for k, x in enumerate(logits))


def mode_seeking_loss(images: torch.Tensor, other: torch.Tensor, noise: torch.Tensor,
                      other_noise: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 / (mean |G(z1, t) - G(z2, t)| / mean |z1 - z2|) (Mao et al. 2019, Eq. 3): small
    when the two noises of each text give images as far apart as the noises are."""
    ratio = (images - other).abs().mean() / (noise - other_noise).abs().mean()
    return 1.0 / (ratio + eps)


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over real images (Mescheder et al. 2018, Eq. 9 without gamma / 2);
    `real_images` must require grad and `real_logits` come from them."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model for every parameter; buffers (batch
    norm statistics, the embedding norm) are copied, as they are not trained by gradient."""
    for a, p in zip(average.parameters(), model.parameters(), strict=True):
        a.lerp_(p, 1.0 - decay)
    for a, b in zip(average.buffers(), model.buffers(), strict=True):
        a.copy_(b)


def translate(images: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by a random whole number of pixels, up to `ratio` of its side in x
    and y, repeating the border pixels into the space uncovered (DiffAugment's translation,
    with edge padding: the shapes world's background is flat)."""
    b, _, h, w = images.shape
    dy, dx = (int(side * ratio + 0.5) for side in (h, w))
    shift_y = torch.randint(-dy, dy + 1, (b, 1, 1), device=images.device)
    shift_x = torch.randint(-dx, dx + 1, (b, 1, 1), device=images.device)
    rows = (torch.arange(h, device=images.device)[None, :, None] + shift_y).clamp(0, h - 1)
    cols = (torch.arange(w, device=images.device)[None, None, :] + shift_x).clamp(0, w - 1)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(images: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Set a random square of `ratio` of the side to 0 (mid grey in [-1, 1]) in each image
    (DiffAugment's cutout); the square may run over the border."""
    b, _, h, w = images.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=images.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=images.device) - cw // 2
    rows = torch.arange(h, device=images.device)[None, :, None]
    cols = torch.arange(w, device=images.device)[None, None, :]
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return images * (~inside).unsqueeze(1).to(images.dtype)


DIFF_AUGMENTATIONS = {"translation": translate, "cutout": cutout}


def diff_augment(images: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): the augmentations named in `policy`, in order, each
    differentiable so that G learns through them."""
    for name in policy:
        images = DIFF_AUGMENTATIONS[name](images)
    return images
