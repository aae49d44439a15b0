"""Reed et al. 2016's char-CNN-RNN text encoder and the image side of its joint embedding.

"Learning Deep Representations of Fine-Grained Visual Descriptions" (Reed, Akata,
Lee and Schiele, CVPR 2016, Sec. 3) embeds a description psi(t) by reading its
characters: temporal convolutions with max-pooling shorten the sequence, a
recurrent layer reads what is left, and the average of its hidden states is
mapped linearly to the joint space. Images are embedded as phi(v), a linear map
of features of a fixed, pre-trained CNN; the compatibility of an image and a
text is the inner product F(v, t) = phi(v)^T psi(t) (Eq. 2).

GAN-CLS and StackGAN condition their generators on psi(t), so the text encoder
is exported on its own: characters (B, T) in, embedding (B, E) out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.encoder import EncoderConfig, ImageEncoder


@dataclass
class TextEncoderConfig:
    alphabet_size: int = 71  # ids: 0 pads, then the characters, then the unknown id
    max_length: int = 64  # T: characters per text (longer texts are truncated)
    char_dim: int = 32  # a learned embedding stands in for the one-hot input (same model)
    conv_channels: tuple[int, ...] = (64, 128)
    kernel_sizes: tuple[int, ...] = (5, 3)
    pool_sizes: tuple[int, ...] = (2, 2)  # max-pooling after each convolution
    rnn: str = "gru"  # "gru" or "lstm"
    rnn_size: int = 128
    embed_dim: int = 128  # E: the joint embedding

    def __post_init__(self) -> None:
        self.conv_channels = tuple(self.conv_channels)
        self.kernel_sizes = tuple(self.kernel_sizes)
        self.pool_sizes = tuple(self.pool_sizes)
        if not len(self.conv_channels) == len(self.kernel_sizes) == len(self.pool_sizes):
            raise ValueError("conv_channels, kernel_sizes and pool_sizes need one entry per layer")
        if self.rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', got {self.rnn!r}")
        reduction = 1
        for p in self.pool_sizes:
            reduction *= p
        if self.max_length % reduction:
            raise ValueError(f"max_length {self.max_length} is not a multiple of the total "
                             f"pooling {reduction}")

    def to_dict(self) -> dict:
        return asdict(self)


class CharCnnRnn(nn.Module):
    """chars (B, T) int64, 0 = padding -> psi(t) (B, E)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.alphabet_size, config.char_dim, padding_idx=0)
        convs, c_in = [], config.char_dim
        for c_out, k in zip(config.conv_channels, config.kernel_sizes, strict=True):
            convs.append(nn.Conv1d(c_in, c_out, k, padding=k // 2))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        rnn = nn.GRU if config.rnn == "gru" else nn.LSTM
        self.rnn = rnn(c_in, config.rnn_size, batch_first=True)
        self.project = nn.Linear(config.rnn_size, config.embed_dim)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        mask = (chars > 0).float().unsqueeze(1)  # (B, 1, T)
        x = self.embed(chars).transpose(1, 2)  # (B, C, T)
        for conv, pool in zip(self.convs, self.config.pool_sizes, strict=True):
            # Padding steps are zeroed, as the convolution's own zero padding is, so a text
            # reads the same whatever length it is padded to.
            x = F.max_pool1d(F.relu(conv(x)) * mask, pool)  # (B, C', T / pool)
            mask = F.max_pool1d(mask, pool)  # a pooled step is real if any of its chars is
        h, _ = self.rnn(x.transpose(1, 2))  # (B, T', H)
        # Reed et al. average the hidden states over time; padding steps are left out so
        # that a text's embedding does not depend on how much padding follows it.
        weights = mask.transpose(1, 2)  # (B, T', 1)
        mean = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
        return self.project(mean)  # (B, E)


@dataclass
class JointImageConfig:
    encoder: EncoderConfig
    embed_dim: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)

    @property
    def feature_dim(self) -> int:
        return 2 * self.encoder.out_dim

    def to_dict(self) -> dict:
        return asdict(self)


def grid_features(encoder: ImageEncoder, images: torch.Tensor) -> torch.Tensor:
    """Fixed image features (B, 2D): mean and max over the encoder's annotation grid.

    The max keeps a small object's cell from being averaged away by the empty ones.
    """
    _, grid = encoder(images)  # (B, L, D)
    grid = F.relu(grid)
    return torch.cat([grid.mean(1), grid.amax(1)], dim=1)


class JointImageEncoder(nn.Module):
    """Images (B, 3, S, S) in [0, 1] -> phi(v) (B, E).

    The CNN is frozen (Reed et al. keep GoogLeNet fixed), so training learns only
    `project` and runs on features computed once (`grid_features`).
    """

    def __init__(self, config: JointImageConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(config.encoder)
        self.encoder.requires_grad_(False)
        self.project = nn.Linear(config.feature_dim, config.embed_dim)

    def train(self, mode: bool = True) -> JointImageEncoder:
        super().train(mode)
        self.encoder.eval()  # frozen: BatchNorm keeps its statistics
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return grid_features(self.encoder, images)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(images))


class JointEmbedding(nn.Module):
    """The pair trained together: psi (text) and phi (images).

    Training feeds phi fixed CNN features computed once; the frozen CNN is kept
    in the module so that a checkpoint holds the whole image side.
    """

    def __init__(self, text: TextEncoderConfig, image: JointImageConfig) -> None:
        super().__init__()
        if text.embed_dim != image.embed_dim:
            raise ValueError(f"text embed_dim {text.embed_dim} != image embed_dim "
                             f"{image.embed_dim}")
        self.text = CharCnnRnn(text)
        self.image = JointImageEncoder(image)

    def forward(self, chars: torch.Tensor, features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """chars (B, T), features (B, 2D) -> (psi(t) (B, E), phi(v) (B, E))."""
        return self.text(chars), self.image.embed_features(features)


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean embedding of each class (K, E) and which classes occur (K,) bool.

    The batch estimate of E_{t~T(y)}[psi(t)] (or of E_{v~V(y)}[phi(v)]) in Eq. 4-5.
    """
    sums = embeddings.new_zeros(num_classes, embeddings.shape[1]).index_add(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=num_classes).to(embeddings.dtype)
    return sums / counts.clamp(min=1).unsqueeze(1), counts > 0


def _one_direction(queries: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                   present: torch.Tensor) -> torch.Tensor:
    """Hinge surrogate of the 0-1 loss of one classifier (Eq. 4 or 5).

    scores[n, y] = <query_n, prototype_y>; the true class must beat every other class
    present by the margin Delta(y_n, y) = 1. glimpse sums the hinge over every wrong
    class (an upper bound of the max of the structured SVM that sends gradient to
    every violating class) and averages over the batch.
    """
    scores = queries @ prototypes.T  # (B, K)
    true = scores.gather(1, labels.unsqueeze(1))  # (B, 1)
    wrong = present.unsqueeze(0) & (torch.arange(len(present), device=labels.device)
                                    != labels.unsqueeze(1))  # (B, K)
    hinge = F.relu(1.0 + scores - true) * wrong
    return hinge.sum(1).mean()


def symmetric_sje_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Deep symmetric structured joint embedding loss (Reed et al. 2016, Eq. 3).

    The image classifier f_v(v) = argmax_y E_{t~T(y)}[phi(v)^T psi(t)] (Eq. 4) and the
    text classifier f_t(t) = argmax_y E_{v~V(y)}[phi(v)^T psi(t)] (Eq. 5) are trained
    together; expectations are estimated from the batch. image_emb, text_emb (B, E) are
    paired (same image's description) and labels (B,) hold their class ids.
    """
    text_means, present = class_means(text_emb, labels, num_classes)
    image_means, _ = class_means(image_emb, labels, num_classes)
    loss_v = _one_direction(image_emb, labels, text_means, present)
    loss_t = _one_direction(text_emb, labels, image_means, present)
    return loss_v + loss_t, {"loss_image": loss_v.item(), "loss_text": loss_t.item()}
