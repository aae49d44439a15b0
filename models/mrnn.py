"""Karpathy & Fei-Fei 2015's multimodal RNN generator (Sec. 3.2, Eq. 13).

The image enters the recurrence once, as a bias on the first step:

    b_v = W_hi CNN(I)
    h_t = f(W_hx x_t + W_hh h_{t-1} + b_h + 1(t = 1) ⊙ b_v),   f = ReLU
    y_t = softmax(W_oh h_t + b_o)

with h_0 = 0 and x_1 the START (<bos>) word vector. CNN(I) is the pooled grid
of a frozen, pre-trained `ImageEncoder`, so training reads it precomputed, and it
is standardised across images before W_hi (models.encoder.ImageVector: without it
the shared part of every image's vector drowns the part that tells images apart).

With `layer_norm` the summed input is layer-normalised before the ReLU, as Ba, Kiros
& Hinton 2016 (Eq. 4) do for a vanilla RNN: h_t = f(LN(a_t; g, b)), a_t the sum above;
it holds every step's activations at one scale. With `recurrent_init: "identity"` W_hh
starts as the identity (Le, Jaitly & Hinton 2015's IRNN): until it learns otherwise,
each step hands its state on unchanged and adds the word, so what b_v wrote at t = 1 is
still there at the caption's end. Measured on one budget (docs/results.md, "The
m-RNN's recurrence"), the identity start, not LN, is what made the m-RNN use the image.

The indicator 1(t = 1) lives in the recurrent state: `encode` returns
{"h": 0, "image_bias": b_v}, and every step adds `image_bias` and hands on
zeros. The first step of any decoder (teacher forcing, beam search, the
exported step graph) therefore adds b_v, and no later step does, without the
step knowing t. With `image_every_step` every step hands b_v on instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.caption import CaptionConfig, DecodeResult, FeatureCaptioner, State, register_captioner
from models.encoder import EncoderConfig, ImageEncoder, ImageVector


@dataclass
class MultimodalRNNConfig(CaptionConfig):
    archs: ClassVar[tuple[str, ...]] = ("mrnn",)
    arch: str = "mrnn"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # CNN(I), pre-trained
    # Whether the encoder trains with the generator. The m-RNN paper's CNN(I) is a fixed
    # feature (False, the default: the generator trains on it computed once); True
    # fine-tunes it, a second phase started from a frozen-encoder run (`--init-from`).
    train_encoder: bool = False
    # How the frozen grid is pooled into CNN(I), and whether CNN(I) is standardised across
    # images before W_hi (models.encoder.ImageVector; without it the m-RNN ignores the image).
    image_pool: str = "max"
    standardise_image: bool = True
    # W_hh's initialisation: "default" (nn.Linear's uniform) or "identity" (IRNN).
    recurrent_init: str = "default"
    # Add b_v at every step, not at t = 1 only: Mao et al.'s m-RNN feeds the image to every
    # step's multimodal layer; Karpathy & Fei-Fei (Sec. 3.2) found the first step alone
    # better (False, the default).
    image_every_step: bool = False
    # Runs saved before these settings existed pooled by the mean, did not standardise,
    # kept the encoder frozen, initialised W_hh as nn.Linear does and saw b_v at t = 1.
    SAVED_BEFORE: ClassVar[dict] = {"image_pool": "mean", "standardise_image": False,
                                    "train_encoder": False, "recurrent_init": "default",
                                    "image_every_step": False}

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if self.recurrent_init not in ("default", "identity"):
            raise ValueError(f"recurrent_init: 'default' or 'identity', got "
                             f"{self.recurrent_init!r}")


@register_captioner
class MultimodalRNN(FeatureCaptioner):
    """The m-RNN generator: a ReLU RNN whose first step is biased by the image
    (optionally layer-normalised)."""

    config_class = MultimodalRNNConfig
    state_names = ("h", "image_bias")
    context_names = ()
    attends = False

    def __init__(self, config: MultimodalRNNConfig) -> None:
        super().__init__(config)
        d, e, h = config.encoder.out_dim, config.embed_dim, config.hidden_dim
        self.encoder = ImageEncoder(config.encoder)
        self.freeze_encoder()  # CNN(I) is a fixed, pre-trained feature unless fine-tuned
        self.image = ImageVector(d, pool=config.image_pool, standardise=config.standardise_image)
        self.image_bias = nn.Linear(self.image.out_dim, h)  # W_hi
        self.embed = nn.Embedding(config.vocab_size, e)  # x_t
        self.input = nn.Linear(e, h)  # W_hx, b_h
        self.recurrent = nn.Linear(h, h, bias=False)  # W_hh
        if config.recurrent_init == "identity":
            nn.init.eye_(self.recurrent.weight)
        self.norm = nn.LayerNorm(h) if config.layer_norm else nn.Identity()  # LN(a_t; g, b)
        self.out = nn.Linear(h, config.vocab_size)  # W_oh, b_o
        self.drop = nn.Dropout(config.dropout)

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        _, grid = self.encoder(images)  # (B, L, D)
        return (self.image.pooled(grid),)  # CNN(I) (B, D'), before standardisation

    def encode_features(self, pooled: torch.Tensor) -> tuple[None, State]:
        """pooled (B, D') -> no context; h_0 = 0 and the pending image bias b_v (B, H)."""
        b_v = self.image_bias(self.image.norm(pooled))  # (B, H)
        return None, {"h": torch.zeros_like(b_v), "image_bias": b_v}

    def decode(self, tokens: torch.Tensor, state: State, context: torch.Tensor | None,
               expectation_rows: torch.Tensor | None = None) -> DecodeResult:
        x = self.embed(tokens)  # (N, E)
        pre = self.input(x) + self.recurrent(state["h"]) + state["image_bias"]  # (N, H)
        h = F.relu(self.norm(pre))
        logits = self.out(self.drop(h))  # (N, V)
        # 1(t = 1): the bias is spent on this step (handed on with image_every_step).
        image_bias = (state["image_bias"] if self.config.image_every_step
                      else torch.zeros_like(h))
        return DecodeResult(logits, {"h": h, "image_bias": image_bias}, None, None)
