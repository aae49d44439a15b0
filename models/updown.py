"""Bottom-Up and Top-Down attention captioner (Anderson et al. 2018, Sec. 3.2).

The bottom-up stage (models/regions.py, frozen) gives each image R regions,
each a box and a feature vector f_i. The top-down captioner is two LSTMs:

    v_i   = ReLU(W_v [f_i; box_i] + b_v)                       region vectors (B, R, D)
    x1_t  = [h2_{t-1}; v̄; W_e Π_t]                              Eq. 2, v̄ = mean_i v_i
    h1_t  = LSTM_1(x1_t, h1_{t-1})                              top-down attention LSTM
    a_i,t = w_a^T tanh(W_va v_i + W_ha h1_t)                    Eq. 3
    α_t   = softmax(a_t),  v̂_t = Σ_i α_i,t v_i                   Eq. 4
    h2_t  = LSTM_2([v̂_t; h1_t], h2_{t-1})                      Eq. 5, language LSTM
    p(y_t) = softmax(W_p h2_t + b_p)                            Eq. 6

The paper feeds the 2048-d Faster R-CNN features directly; glimpse's regions are
small, so each is projected together with its box, which also tells the language
model where an object is (the shapes world's captions name relative positions).
Both LSTMs start from zeros. Training reads precomputed region features
(`encode_features`); the exported encoder runs the frozen RegionNet the model
carries (`encode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.caption import (
    CaptionConfig,
    DecodeResult,
    FeatureCaptioner,
    SoftAttention,
    State,
    register_captioner,
)
from models.lstm import LSTMCell
from models.regions import RegionConfig, RegionNet

BOX_DIM = 4  # normalised [x0, y0, x1, y1]


@dataclass
class UpDownConfig(CaptionConfig):
    archs: ClassVar[tuple[str, ...]] = ("updown",)
    arch: str = "updown"
    attention_dim: int = 64
    # Size F of the region features, and the RegionNet configuration (as its JSON dict)
    # whose frozen copy the model carries for `encode(images)`; None builds a captioner
    # that only encodes precomputed features.
    region_feature_dim: int = 0
    regions: dict | None = None


@register_captioner
class UpDownCaptioner(FeatureCaptioner):
    """The top-down captioner over a fixed set of R bottom-up regions per image."""

    config_class = UpDownConfig
    state_names = ("h1", "c1", "h2", "c2")
    context_names = ("context",)  # the region vectors v_i (N, R, D)
    attends = True
    attention_over = "regions"

    def __init__(self, config: UpDownConfig) -> None:
        super().__init__(config)
        if config.region_feature_dim < 1:
            raise ValueError("an Up-Down captioner needs region_feature_dim (F of the regions)")
        e, h = config.embed_dim, config.hidden_dim
        d = h  # region vectors live in the hidden size, as in the paper
        self.region_net = None
        if config.regions is not None:
            self.region_net = RegionNet(RegionConfig.from_dict(config.regions))
            if self.region_net.feature_dim != config.region_feature_dim:
                raise ValueError(f"regions give {self.region_net.feature_dim}-d features, "
                                 f"config says {config.region_feature_dim}")
            self.region_net.requires_grad_(False)
            self.region_net.eval()
        self.region_proj = nn.Linear(config.region_feature_dim + BOX_DIM, d)  # W_v
        self.embed = nn.Embedding(config.vocab_size, e)  # W_e
        self.attention_lstm = LSTMCell(h + d + e, h, layer_norm=config.layer_norm)
        self.attention = SoftAttention(d, h, config.attention_dim)  # w_a, W_va, W_ha
        self.language_lstm = LSTMCell(d + h, h, layer_norm=config.layer_norm)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(h, config.vocab_size)  # W_p, b_p

    def train(self, mode: bool = True) -> UpDownCaptioner:
        super().train(mode)
        if self.region_net is not None:
            self.region_net.eval()  # frozen bottom-up stage
        return self

    def image_features(self, images: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The frozen RegionNet's boxes (B, R, 4), scores (B, R) and features (B, R, F)."""
        if self.region_net is None:
            raise RuntimeError("this Up-Down captioner was built without a RegionNet "
                               "(config.regions); it can only encode precomputed features")
        return self.region_net(images)

    def encode_features(self, boxes: torch.Tensor, scores: torch.Tensor,
                        features: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Region vectors v (B, R, D) as context; zero states for both LSTMs.

        Scores are not used: RegionNet always gives R real regions (proposals
        and the whole image), and the attention decides which matter.
        """
        v = F.relu(self.region_proj(torch.cat([features, boxes], dim=-1)))  # (B, R, D)
        size = (v.shape[0], self.config.hidden_dim)
        return v, {name: v.new_zeros(size) for name in self.state_names}


    def decode(self, tokens: torch.Tensor, state: State, context: torch.Tensor | None,
               expectation_rows: torch.Tensor | None = None) -> DecodeResult:
        assert context is not None
        v_mean = context.mean(dim=1)  # v̄ (N, D)
        x1 = torch.cat([state["h2"], v_mean, self.embed(tokens)], dim=-1)
        h1, c1 = self.attention_lstm(x1, (state["h1"], state["c1"]))  # (N, H)
        alpha = F.softmax(self.attention(context, h1), dim=-1)  # (N, R)
        v_hat = torch.bmm(alpha.unsqueeze(1), context).squeeze(1)  # (N, D)
        h2, c2 = self.language_lstm(torch.cat([v_hat, h1], dim=-1), (state["h2"], state["c2"]))
        logits = self.out(self.drop(h2))  # (N, V)
        return DecodeResult(logits, {"h1": h1, "c1": c1, "h2": h2, "c2": c2}, alpha, None)
