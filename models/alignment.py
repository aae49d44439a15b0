"""Deep visual-semantic alignment (Karpathy & Fei-Fei 2015): regions and words in one space.

Image side: each detected region's CNN feature f_i (from the region stage,
models/regions.py) is projected into the joint space,

    v_i = W_m f_i + b_m                                          (Eq. 1)

Sentence side: a bidirectional RNN (BRNN) reads the words,

    x_t   = W_w I_t                                               (Eq. 2, word embedding)
    e_t   = f(W_e x_t + b_e)                                      (Eq. 3)
    h^f_t = f(e_t + W_f h^f_{t-1} + b_f)                          (Eq. 4)
    h^b_t = f(e_t + W_b h^b_{t+1} + b_b)                          (Eq. 5)
    s_t   = f(W_d (h^f_t + h^b_t) + b_d)                          (Eq. 6)

with f = ReLU. Each direction is a `torch.nn.RNN` (ReLU), whose input matrix
generalises the identity in front of e_t in Eq. 4-5. The backward direction runs
over each sentence reversed within its own length, so padding never reaches a
real word.

Image-sentence score: every word picks its best region,

    S_kl = sum_t max_i v_i^T s_t                                  (Eq. 8)

and the bidirectional max-margin ranking loss over a batch of matching pairs
(k, k) pushes each true pair above every other sentence and every other image,

    C = sum_k [ sum_l max(0, S_kl - S_kk + margin) + sum_l max(0, S_lk - S_kk + margin) ]
                                                                  (Eq. 9)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class AlignmentConfig:
    vocab_size: int
    feature_dim: int = 128  # F: region features from the region stage
    embed_dim: int = 64  # x_t
    hidden_dim: int = 64  # e_t, h^f_t, h^b_t
    joint_dim: int = 64  # D: v_i and s_t
    margin: float = 1.0  # Eq. 9
    pad_id: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> AlignmentConfig:
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, T, C) with each row's first lengths[b] steps reversed; the padding is undefined.

    Applying it twice restores the real steps, which is how the backward RNN's
    outputs go back to word order.
    """
    steps = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    index = (lengths[:, None] - 1 - steps).clamp(min=0)  # (B, T)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class SentenceEncoder(nn.Module):
    """tokens (B, T), lengths (B,) -> word vectors s_t (B, T, D) (Eq. 2-6)."""

    def __init__(self, config: AlignmentConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim,
                                  padding_idx=config.pad_id)  # W_w
        self.inp = nn.Linear(config.embed_dim, config.hidden_dim)  # W_e, b_e
        self.forward_rnn = nn.RNN(config.hidden_dim, config.hidden_dim, nonlinearity="relu",
                                  batch_first=True)  # W_f, b_f
        self.backward_rnn = nn.RNN(config.hidden_dim, config.hidden_dim, nonlinearity="relu",
                                   batch_first=True)  # W_b, b_b
        self.out = nn.Linear(config.hidden_dim, config.joint_dim)  # W_d, b_d

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        e = F.relu(self.inp(self.embed(tokens)))  # (B, T, H)
        h_forward, _ = self.forward_rnn(e)
        h_backward, _ = self.backward_rnn(reverse_within_length(e, lengths))
        h_backward = reverse_within_length(h_backward, lengths)
        return F.relu(self.out(h_forward + h_backward))  # (B, T, D)


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool, True for the first lengths[b] positions."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def pair_scores(region_vectors: torch.Tensor, region_mask: torch.Tensor,
                word_vectors: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """S_kl of every image k against every sentence l (Eq. 8), shape (K, L).

    region_vectors (K, R, D) with region_mask (K, R) True for the regions to use
    (padding and regions the detector rejects are False); word_vectors (L, T, D)
    with lengths (L,) real words each.
    """
    (K, R, D), (L, T, _) = region_vectors.shape, word_vectors.shape
    # One (L*T, D) x (D, K*R) product, regions last so that the max runs over contiguous memory.
    dots = (word_vectors.reshape(L * T, D) @ region_vectors.reshape(K * R, D).T).view(L, T, K, R)
    if not bool(region_mask.all()):
        dots = dots.masked_fill(~region_mask, float("-inf"))
    best = dots.max(dim=-1).values  # (L, T, K): each word's best region in each image
    word_ok = length_mask(lengths, T)  # (L, T)
    return best.masked_fill(~word_ok[..., None], 0.0).sum(dim=1).T


def ranking_loss(scores: torch.Tensor, margin: float,
                 same_image: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 9 over a (K, K) score matrix whose diagonal holds the true pairs, averaged over K.

    same_image (K, K) bool marks off-diagonal pairs that are true too (two
    sentences of one image in the batch); they are not treated as negatives.
    """
    positive = scores.diagonal()
    by_sentence = (scores - positive[:, None] + margin).clamp(min=0)  # image k, sentence l
    by_image = (scores - positive[None, :] + margin).clamp(min=0)  # image l, sentence k
    negatives = ~torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    if same_image is not None:
        negatives &= ~same_image
    cost = (by_sentence * negatives).sum() + (by_image * negatives).sum()
    return cost / len(scores)


class AlignmentModel(nn.Module):
    """Region projection (Eq. 1) + BRNN sentence encoder (Eq. 2-6), scored by Eq. 8."""

    def __init__(self, config: AlignmentConfig) -> None:
        super().__init__()
        self.config = config
        self.region_proj = nn.Linear(config.feature_dim, config.joint_dim)  # W_m, b_m
        self.sentence = SentenceEncoder(config)

    def regions(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, R, F) -> region vectors v_i (B, R, D) (Eq. 1)."""
        return self.region_proj(features)

    def words(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (B, T), lengths (B,) -> word vectors s_t (B, T, D) (Eq. 2-6)."""
        return self.sentence(tokens, lengths)

    def forward(self, features: torch.Tensor, region_mask: torch.Tensor, tokens: torch.Tensor,
                lengths: torch.Tensor, same_image: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, B) of a batch of matching (image, sentence) pairs and the loss of Eq. 9.

        features (B, R, F) with region_mask (B, R); tokens (B, T) with lengths (B,).
        """
        scores = pair_scores(self.regions(features), region_mask,
                             self.words(tokens, lengths), lengths)
        return scores, ranking_loss(scores, self.config.margin, same_image)
