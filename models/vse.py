"""Visual-semantic embedding (VSE) for image-sentence retrieval.

Kiros, Salakhutdinov & Zemel 2014 ("Unifying visual-semantic embeddings"): an
image and a sentence are mapped into one joint space, both L2-normalised, and
scored by cosine similarity s(i, c) = f(i) · g(c). Faghri et al. 2018 (VSE++)
keep the model and change the loss: the hinge on the hardest negative only.
Ba, Kiros & Hinton 2016 (Sec. 6.2) re-ran this model with a layer-normalised
GRU sentence encoder; `layer_norm` switches between the two GRUs.

    image side     frozen ImageEncoder -> relu(grid) mean- and max-pooled (B, 2D)
                   -> linear W_i -> f(i) = normalise(W_i v)                   (B, E)
    sentence side  word embedding -> GRU (optionally layer-normalised, Eq. 20-22
                   of Ba et al. on its summed inputs) -> hidden state after each
                   sentence's last word -> g(c) = normalise(h_len)              (B, E)

The image encoder is frozen, so training runs on pre-computed pooled features
(`image_features`); `embed_images` chains both halves for export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.encoder import EncoderConfig, ImageEncoder
from models.lstm import GRUCell

LOSSES = ("sum", "max")


@dataclass
class VSEConfig:
    vocab_size: int = 64
    pad_id: int = 0
    word_dim: int = 64  # word embedding size
    embed_dim: int = 128  # E: the joint space, also the GRU's hidden size (as in VSE++)
    layer_norm: bool = False  # layer-normalised GRU (Ba et al. 2016)
    margin: float = 0.2  # α of the hinge
    # "sum": hinge summed over every negative of the batch (Kiros et al. 2014, Eq. 1
    # of Faghri et al.); "max": the hardest negative only (VSE++, Eq. 4 of Faghri et al.).
    loss: str = "max"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def feature_dim(self) -> int:
        return 2 * self.encoder.out_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VSEConfig:
        return cls(**d)


def ranking_loss(images: torch.Tensor, sentences: torch.Tensor, *, margin: float,
                 max_violation: bool, positive: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional hinge ranking loss of a batch of matching pairs (row k with row k).

    With s = images @ sentences.T (B, B), a positive pair (i, c) and negatives c', i':
        sum (Faghri et al. Eq. 1):  Σ_c' [α - s(i,c) + s(i,c')]+ + Σ_i' [α - s(i,c) + s(i',c)]+
        max (Eq. 4):  max_c' [α - s(i,c) + s(i,c')]+ + max_i' [α - s(i,c) + s(i',c)]+
    averaged over the B pairs. `positive` (B, B) marks further matching pairs (two
    sentences of the same image in one batch), which are not negatives.
    """
    scores = images @ sentences.T  # (B, B): row = image, column = sentence
    diagonal = scores.diagonal()
    cost_sentence = (margin + scores - diagonal[:, None]).clamp(min=0)  # image i vs sentence c'
    cost_image = (margin + scores - diagonal[None, :]).clamp(min=0)  # sentence c vs image i'
    not_negative = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    if positive is not None:
        not_negative = not_negative | positive
    cost_sentence = cost_sentence.masked_fill(not_negative, 0.0)
    cost_image = cost_image.masked_fill(not_negative, 0.0)
    if max_violation:
        return cost_sentence.max(dim=1).values.mean() + cost_image.max(dim=0).values.mean()
    return cost_sentence.sum(dim=1).mean() + cost_image.sum(dim=0).mean()


class VSE(nn.Module):
    def __init__(self, config: VSEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(config.encoder)
        self.encoder.requires_grad_(False)  # frozen: features are pre-computed once
        self.image_proj = nn.Linear(config.feature_dim, config.embed_dim)
        self.word_embedding = nn.Embedding(config.vocab_size, config.word_dim,
                                           padding_idx=config.pad_id)
        self.gru = GRUCell(config.word_dim, config.embed_dim, layer_norm=config.layer_norm)

    def train(self, mode: bool = True) -> VSE:
        super().train(mode)
        self.encoder.eval()  # the frozen encoder keeps its BatchNorm statistics
        return self

    # -- image side ----------------------------------------------------------
    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, S, S) -> frozen pooled features v (B, 2D)."""
        _, grid = self.encoder(images)  # (B, L, D)
        cells = F.relu(grid)  # the attribute tagger reads its grid through a ReLU too
        return torch.cat([cells.mean(dim=1), cells.amax(dim=1)], dim=-1)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """v (B, 2D) -> f(i) (B, E), unit length."""
        return F.normalize(self.image_proj(features), dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.image_features(images))

    # -- sentence side -------------------------------------------------------
    def embed_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) right-padded, lengths (B,) >= 1 -> g(c) (B, E), unit length.

        The GRU runs over all T positions; a row's state stops changing after its
        last word, so the result is the hidden state at each sentence's own length.
        """
        return self.encode_words(self.word_embedding(tokens), lengths)

    def encode_words(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Word vectors (B, T, W) and lengths (B,) -> g(c) (B, E) (see `embed_text`)."""
        h = words.new_zeros(words.shape[0], self.config.embed_dim)
        for t in range(words.shape[1]):
            h_next = self.gru(words[:, t], h)
            h = torch.where((lengths > t)[:, None], h_next, h)
        return F.normalize(h, dim=-1)

    # -- training ------------------------------------------------------------
    def forward(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                image_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-computed features (B, 2D) and their sentences -> (scores (B, B), loss).

        image_ids (B,) names each pair's image, so that two sentences of one image
        in a batch are not treated as each other's negatives.
        """
        images = self.embed_features(features)
        sentences = self.embed_text(tokens, lengths)
        positive = None if image_ids is None else image_ids[:, None] == image_ids[None, :]
        loss = ranking_loss(images, sentences, margin=self.config.margin,
                            max_violation=self.config.loss == "max", positive=positive)
        return images @ sentences.T, loss
