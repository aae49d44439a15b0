"""Bottom-Up and Top-Down attention for VQA (Anderson et al. 2018, §3.3; Teney et al. 2018).

The bottom-up part is a region detector (models/regions.py) whose region features
are computed once and kept frozen; this file is the top-down part:

    q     = GRU(embed(question))[length - 1]                       question encoding
    a_i   = w_a^T f_a([v_i; q])            softmax over the real regions -> alpha
    v_hat = sum_i alpha_i v_i                                       attended image feature
    h     = f_q(q) * f_v(v_hat)                                     joint embedding
    s     = sigmoid(W_o f_o(h))                                     answer scores

with every f_* a gated tanh layer, y = tanh(W x + b) * sigmoid(W' x + b'). The
classifier is trained with binary cross-entropy against soft scores, as a
multi-label problem (Teney et al. 2018, §3.2).

Two choices beyond the paper, both switchable in `VqaConfig`:
- each region feature v_i is extended with its box geometry and detection score
  (x0, y0, x1, y1, w, h, score), so that questions about relative position can be
  answered from v_hat, and so that the whole-image region (box [0, 0, 1, 1]) can
  serve as an anchor for counting: the share of attention the matching regions take
  from it grows with their number;
- `glimpses` > 1 computes that many attention distributions (one w_a row each) and
  concatenates their v_hat, so a question about two objects can look at both.
  The returned attention is the mean of the glimpses' distributions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

GEOMETRY_FEATURES = 7  # x0, y0, x1, y1, w, h of a normalised xyxy box, and its score


@dataclass
class VqaConfig:
    vocab_size: int  # question words, WordVocab ids (<pad> = 0)
    num_answers: int
    feature_dim: int = 128  # F of the bottom-up region features
    embed_dim: int = 64
    question_dim: int = 128  # GRU state q
    attention_dim: int = 128  # f_a output
    joint_dim: int = 256  # f_q, f_v and f_o outputs
    glimpses: int = 2
    geometry: bool = True  # append GEOMETRY_FEATURES to each region feature
    dropout: float = 0.1
    pad_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VqaConfig:
        return cls(**d)


class GatedTanh(nn.Module):
    """y = tanh(W x + b) * sigmoid(W' x + b'), the non-linearity of every f_* (§3.3)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, 2 * out_dim)  # [W; W'] in one matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, gate = self.proj(x).chunk(2, dim=-1)
        return torch.tanh(y) * torch.sigmoid(gate)


class QuestionEncoder(nn.Module):
    """Word embeddings and a GRU; q is the state after each question's last word."""

    def __init__(self, config: VqaConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim,
                                  padding_idx=config.pad_id)
        self.gru = nn.GRU(config.embed_dim, config.question_dim, batch_first=True)

    def forward(self, question: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """question (B, T) right-padded ids, length (B,) >= 1 -> q (B, Dq)."""
        states, _ = self.gru(self.embed(question))  # (B, T, Dq)
        # The GRU reads left to right, so the right padding never reaches the state at
        # position length - 1: gathering it equals running each question unpadded.
        last = (length - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, states.shape[2])
        return states.gather(1, last).squeeze(1)


class TopDownAttention(nn.Module):
    """a_i = w_a^T f_a([v_i; q]) for each glimpse; softmax over the unmasked regions."""

    def __init__(self, region_dim: int, config: VqaConfig) -> None:
        super().__init__()
        self.f_a = GatedTanh(region_dim + config.question_dim, config.attention_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.w_a = nn.Linear(config.attention_dim, config.glimpses)

    def forward(self, v: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """v (B, R, Dv), q (B, Dq), mask (B, R) bool -> alpha (B, G, R)."""
        q_tiled = q.unsqueeze(1).expand(-1, v.shape[1], -1)  # (B, R, Dq)
        a = self.w_a(self.dropout(self.f_a(torch.cat([v, q_tiled], dim=-1))))  # (B, R, G)
        a = a.masked_fill(~mask.unsqueeze(-1), torch.finfo(a.dtype).min)
        return a.softmax(dim=1).transpose(1, 2)


class UpDownVqa(nn.Module):
    """The top-down VQA model over precomputed (or jointly computed) region features."""

    def __init__(self, config: VqaConfig) -> None:
        super().__init__()
        self.config = config
        region_dim = config.feature_dim + (GEOMETRY_FEATURES if config.geometry else 0)
        self.question = QuestionEncoder(config)
        self.attention = TopDownAttention(region_dim, config)
        self.f_q = GatedTanh(config.question_dim, config.joint_dim)
        self.f_v = GatedTanh(config.glimpses * region_dim, config.joint_dim)
        self.f_o = GatedTanh(config.joint_dim, config.joint_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.w_o = nn.Linear(config.joint_dim, config.num_answers)

    def regions(self, features: torch.Tensor, boxes: torch.Tensor,
                scores: torch.Tensor) -> torch.Tensor:
        """v_i: the region feature, with its box geometry and score when `geometry` is on."""
        if not self.config.geometry:
            return features
        wh = boxes[..., 2:] - boxes[..., :2]
        return torch.cat([features, boxes, wh, scores.unsqueeze(-1)], dim=-1)  # (B, R, F + 7)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                question: torch.Tensor, question_length: torch.Tensor,
                region_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Answer logits (B, A), attention (B, R) and the loss when `targets` are given.

        features (B, R, F), boxes (B, R, 4) normalised xyxy, scores (B, R) detection
        scores (1 for the whole-image region), question (B, T) ids,
        question_length (B,), region_mask (B, R) True for real regions (default: all),
        targets (B, A) soft scores in [0, 1]. sigmoid(logits) are the answer scores s.
        """
        if region_mask is None:
            region_mask = torch.ones(features.shape[:2], dtype=torch.bool,
                                     device=features.device)
        v = self.regions(features, boxes, scores)  # (B, R, Dv)
        q = self.question(question, question_length)  # (B, Dq)
        alpha = self.attention(v, q, region_mask)  # (B, G, R)
        v_hat = torch.bmm(alpha, v).flatten(1)  # (B, G * Dv)
        h = self.f_q(q) * self.f_v(v_hat)  # (B, J)
        logits = self.w_o(self.dropout(self.f_o(self.dropout(h))))  # (B, A)
        loss = None
        if targets is not None:
            loss = soft_score_loss(logits, targets)
        return logits, alpha.mean(dim=1), loss


def soft_score_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against soft scores, summed over answers, mean over questions.

    Summing over the answer vocabulary (rather than averaging) keeps the gradient of
    the few answers that matter from shrinking with the vocabulary size.
    """
    per_answer = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_answer.sum(dim=1).mean()
