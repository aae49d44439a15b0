"""Captioning models: Show and Tell (NIC) and Show, Attend and Tell (soft and hard).

Two more families live in their own files and plug into the same base class:
Bottom-Up and Top-Down attention (models/updown.py) and Karpathy & Fei-Fei's
multimodal RNN generator (models/mrnn.py).

Vinyals et al. 2015, "Show and Tell" (NIC): the image embedding is the LSTM's
input at t = -1, then the words. Xu et al. 2015, "Show, Attend and Tell" (SAT):
at every step an attention over the L annotation vectors of the image grid
chooses a context ẑ_t that is fed to the LSTM with the previous word.

Every model has one decoding step used everywhere: teacher-forced training
unrolls it over the caption, and `encode` + `step` expose it for beam search and
ONNX export, so the three agree by construction.

    context, state = model.encode(images)        # (B, L, D), {"h": (B, H), "c": (B, H)}
    log_probs, state, alpha = model.step(tokens, state, context)   # (N, V), ..., (N, L) | None

The state's keys are `model.state_names`; a model without per-image context
(`context_names` empty) encodes to context None. Models that train on frozen,
precomputed image features (`FeatureCaptioner`: Up-Down, m-RNN, and NIC and SAT with
their encoder frozen) also offer
`image_features(images)` and `encode_features(*features)`, with
`encode(images) == encode_features(*image_features(images))`, and their `forward`
takes that tuple of features in place of the images.

`forward(images, captions_in, captions_out)` returns `(logits, loss)`; the loss
includes the regularisers, and its terms are left in `model.loss_terms` for logging.

Each architecture owns its settings: a config class that extends CaptionConfig
(ShowAndTellConfig, ShowAttendTellConfig here, UpDownConfig and MultimodalRNNConfig
beside their models) and names the `arch` values it serves. Its model class says
which config it takes and registers itself with `@register_captioner`;
models.captioners builds any of them from a settings dict.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import ClassVar, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.encoder import EncoderConfig, ImageEncoder, ImageVector
from models.lstm import LSTMCell

HARD_INFERENCE = ("expected", "argmax")

State = dict[str, torch.Tensor]  # {"h": (N, H), "c": (N, H)}, keys model.state_names


@dataclass
class CaptionConfig:
    """The settings every captioner shares. Each architecture's config extends it with its
    own and names the `arch` values it serves; models.captioners.caption_config picks the
    class from a settings dict."""

    archs: ClassVar[tuple[str, ...]] = ()
    arch: str = ""
    vocab_size: int = 64
    embed_dim: int = 64
    hidden_dim: int = 128
    layer_norm: bool = False  # layer-normalised recurrence (Ba et al. 2016): LSTMs, m-RNN
    dropout: float = 0.2
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.arch not in self.archs:
            raise ValueError(f"arch must be one of {self.archs} for {type(self).__name__}, "
                             f"got {self.arch!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CaptionConfig:
        return cls(**d)


@dataclass
class GridCaptionerConfig(CaptionConfig):
    """What NIC and SAT share: the image encoder, trained with them or frozen."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # Train the encoder with the captioner (False: it stays as pre-trained, the first
    # phase of the NIC paper's training, and the captioner trains on its features
    # computed once).
    train_encoder: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)


@dataclass
class ShowAndTellConfig(GridCaptionerConfig):
    archs: ClassVar[tuple[str, ...]] = ("nic",)
    arch: str = "nic"
    # CNN(I): how the annotation grid is pooled, and whether the pooled vector is
    # standardised across images before W_I (models.encoder.ImageVector).
    image_pool: str = "max"
    standardise_image: bool = True
    # Add W_I CNN(I) to every word's input as well as feeding it at t = -1. Vinyals et al.
    # feed the image once and report that feeding it at each step overfits (False, the
    # default).
    image_every_step: bool = False
    # Runs saved before these settings existed pooled by the mean, did not standardise,
    # trained the encoder and saw the image at t = -1 only.
    SAVED_BEFORE: ClassVar[dict] = {"image_pool": "mean", "standardise_image": False,
                                    "train_encoder": True, "image_every_step": False}


@dataclass
class ShowAttendTellConfig(GridCaptionerConfig):
    archs: ClassVar[tuple[str, ...]] = ("sat-soft", "sat-hard")
    arch: str = "sat-soft"
    attention_dim: int = 64
    doubly_stochastic: float = 1.0  # λ of Eq. 14 (Xu et al.)
    # Hard attention (Xu et al. Sec. 4.1, Eq. 12).
    reinforce_weight: float = 1.0  # λ_r
    entropy_weight: float = 0.01  # λ_e
    baseline_decay: float = 0.9  # b <- 0.9 b + 0.1 log p(y | s, a)
    hard_expectation_prob: float = 0.5  # per image, use the expected context instead of a sample
    # At test time a hard-attention model uses the expected context Σ_i α_i a_i
    # ("expected", as in the paper) or the single most attended location ("argmax").
    hard_inference: str = "expected"
    # Add a learned embedding of each grid cell to its annotation vector, so that the
    # context ẑ_t says where the attended cells are (a caption's "left of", "above"):
    # the CNN's annotation vectors describe what is in a cell, hardly where it is. The
    # number of cells of the grid (64: 8 x 8 at 64 px), or 0 for none (the paper's).
    cell_positions: int = 0
    # Let the attention also read the word just written, E y_{t-1}: e_ti = w^T tanh(W_a a_i
    # + W_h h_{t-1} + W_y E y_{t-1}). Xu et al.'s f_att reads h_{t-1} only, a state that has
    # not yet read y_{t-1}, so the step that writes "star" after "green" cannot look for
    # the green object: it attends where the step before did, and a context spread over
    # two objects binds one's colour to the other's shape. False is the paper's.
    attend_with_word: bool = False
    # Runs saved before these settings trained the encoder, had no cell positions and
    # attended from h_{t-1} alone.
    SAVED_BEFORE: ClassVar[dict] = {"train_encoder": True, "cell_positions": 0,
                                    "attend_with_word": False}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hard_inference not in HARD_INFERENCE:
            raise ValueError(f"hard_inference must be one of {HARD_INFERENCE}")


class DecodeResult(NamedTuple):
    logits: torch.Tensor  # (N, V)
    state: State
    alpha: torch.Tensor | None  # (N, L) attention weights, SAT only
    sample_log_prob: torch.Tensor | None  # (N,) log α of the sampled location, hard training only


class Rollout(NamedTuple):
    """What the regularisers need from a teacher-forced pass."""

    alpha: torch.Tensor | None  # (B, T, L)
    sample_log_prob: torch.Tensor | None  # (B, T)
    expectation_rows: torch.Tensor | None  # (B,) bool

    @classmethod
    def of(cls, steps: list[DecodeResult], expectation_rows: torch.Tensor | None) -> Rollout:
        def stacked(values: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if values[0] is None else torch.stack(values, dim=1)

        return cls(stacked([s.alpha for s in steps]),
                   stacked([s.sample_log_prob for s in steps]), expectation_rows)


def doubly_stochastic_penalty(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_i (1 - Σ_t α_ti)² of each image (Eq. 14 of Xu et al.) -> (B,).

    alpha (B, T, L), mask (B, T): padded steps do not count towards Σ_t.
    """
    coverage = (alpha * mask.unsqueeze(-1)).sum(dim=1)  # (B, L)
    return ((1.0 - coverage) ** 2).sum(dim=-1)


def attention_entropy(alpha: torch.Tensor) -> torch.Tensor:
    """H[s] = -Σ_i α_i log α_i over the last axis."""
    return -torch.special.xlogy(alpha, alpha).sum(dim=-1)


class CaptionModel(nn.Module, ABC):
    """What every captioner shares: the step, the unrolled teacher-forced loop, the loss."""

    config_class: ClassVar[type[CaptionConfig]] = CaptionConfig  # its archs: names it serves
    state_names: tuple[str, ...] = ("h", "c")  # keys of State, in graph order
    context_names: tuple[str, ...] = ("context",)  # () when encode gives context None
    attends = True  # whether step returns attention weights over the context
    # What the context's L rows are: the cells of a square annotation grid ("grid", row
    # by row) or a list of image regions ("regions"), which a bundle's manifest records.
    attention_over = "grid"

    def __init__(self, config: CaptionConfig) -> None:
        super().__init__()
        self.config = config
        self.loss_terms: dict[str, torch.Tensor] = {}

    @abstractmethod
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor | None, State]:
        """images (B, 3, S, S) in [0, 1] -> context (B, L, D) or None, initial state."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor, state: State, context: torch.Tensor | None,
               expectation_rows: torch.Tensor | None = None) -> DecodeResult:
        """One step from the previous word: tokens (N,) -> unnormalised logits (N, V)."""

    def encode_input(self, images: torch.Tensor | tuple[torch.Tensor, ...]
                     ) -> tuple[torch.Tensor | None, State]:
        """What `forward` encodes: images here; FeatureCaptioner also takes features."""
        return self.encode(images)

    def step(
        self, tokens: torch.Tensor, state: State, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """tokens (N,), state (N, H) each, context (N, L, D) -> log p (N, V), state, α (N, L)."""
        out = self.decode(tokens, state, context)
        return F.log_softmax(out.logits, dim=-1), out.state, out.alpha

    def forward(
        self,
        images: torch.Tensor | tuple[torch.Tensor, ...],
        captions_in: torch.Tensor,
        captions_out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: captions_in (B, T) starts with BOS, captions_out (B, T) is it shifted
        by one and padded with pad_id. Returns logits (B, T, V) and the loss (or None).

        A FeatureCaptioner takes the tuple `image_features(images)`, precomputed, in place
        of the images (it goes through forward, not a method of its own, so that DDP sees
        the pass)."""
        context, state = self.encode_input(images)
        return self.teacher_forced(context, state, captions_in, captions_out)

    def teacher_forced(
        self,
        context: torch.Tensor | None,
        state: State,
        captions_in: torch.Tensor,
        captions_out: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unroll `decode` over captions_in from the encoded context and state."""
        expectation_rows = self.expectation_rows(captions_in.shape[0], captions_in.device)
        steps = []
        for t in range(captions_in.shape[1]):
            out = self.decode(captions_in[:, t], state, context, expectation_rows)
            state = out.state
            steps.append(out)
        logits = torch.stack([s.logits for s in steps], dim=1)  # (B, T, V)
        if captions_out is None:
            self.loss_terms = {}
            return logits, None
        return logits, self.loss(logits, captions_out, Rollout.of(steps, expectation_rows))

    def expectation_rows(self, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """Which images train on the expected context instead of a sample (hard attention)."""
        return None

    def loss(self, logits: torch.Tensor, captions_out: torch.Tensor,
             rollout: Rollout) -> torch.Tensor:
        """Token-averaged cross entropy over non-pad targets, plus the model's regularisers."""
        mask = (captions_out != self.config.pad_id).float()  # (B, T)
        token_nll = F.cross_entropy(
            logits.transpose(1, 2), captions_out, reduction="none"
        ) * mask  # (B, T)
        xent = token_nll.sum() / mask.sum().clamp(min=1.0)
        terms = {"xent": xent}
        total = xent + self.regularisers(token_nll, mask, rollout, terms)
        self.loss_terms = {k: v.detach() for k, v in terms.items()}
        return total

    def regularisers(self, token_nll: torch.Tensor, mask: torch.Tensor, rollout: Rollout,
                     terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Extra loss terms; each is also recorded in `terms` under its name."""
        return token_nll.new_zeros(())


# arch -> captioner class. Each architecture adds itself with @register_captioner;
# models.captioners imports every architecture's module, so the registry read there is whole.
CAPTIONERS: dict[str, type[CaptionModel]] = {}


def register_captioner(cls: type[CaptionModel]) -> type[CaptionModel]:
    """Class decorator: `cls` serves the arch names of its config_class."""
    for arch in cls.config_class.archs:
        if arch in CAPTIONERS:
            raise ValueError(f"arch {arch!r} is served by {CAPTIONERS[arch].__name__} already")
        CAPTIONERS[arch] = cls
    return cls


class FeatureCaptioner(CaptionModel):
    """A captioner over a frozen image network, trained on its precomputed features."""

    def freeze_encoder(self) -> None:
        """Keep `self.encoder` as pre-trained unless the config trains it
        (`train_encoder`): no gradients, and eval mode whatever mode the model is in."""
        if not self.config.train_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> FeatureCaptioner:
        super().train(mode)
        if hasattr(self, "encoder") and not getattr(self.config, "train_encoder", True):
            self.encoder.eval()  # frozen: BatchNorm keeps its pre-trained statistics
        return self

    @abstractmethod
    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The frozen network's features of images (B, 3, S, S) in [0, 1]."""

    @abstractmethod
    def encode_features(self, *features: torch.Tensor) -> tuple[torch.Tensor | None, State]:
        """Context and initial state from `image_features(images)`, precomputed or not."""

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor | None, State]:
        return self.encode_features(*self.image_features(images))

    def encode_input(self, images: torch.Tensor | tuple[torch.Tensor, ...]
                     ) -> tuple[torch.Tensor | None, State]:
        if isinstance(images, tuple):
            return self.encode_features(*images)
        return self.encode(images)


class GridCaptioner(FeatureCaptioner):
    """What NIC and SAT share: an image encoder, word embedding, one LSTM.

    With the encoder frozen (`train_encoder` False) the captioner sees the image only
    through features of the pre-trained encoder that never change, so it trains on them
    precomputed (`image_features`); a jointly trained encoder trains on pixels.
    """

    def __init__(self, config: GridCaptionerConfig, *, lstm_input: int) -> None:
        super().__init__(config)
        self.encoder = ImageEncoder(config.encoder)
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.lstm = LSTMCell(lstm_input, config.hidden_dim, layer_norm=config.layer_norm)
        self.drop = nn.Dropout(config.dropout)
        self.freeze_encoder()


@register_captioner
class ShowAndTell(GridCaptioner):
    """NIC (Vinyals et al. 2015): x_{-1} = W_I CNN(I), x_t = W_e S_t, p_{t+1} = softmax(W h_t).

    With its encoder frozen NIC's feature is the pooled CNN(I), as the m-RNN's is.
    """

    config_class = ShowAndTellConfig
    attends = False

    def __init__(self, config: ShowAndTellConfig) -> None:
        super().__init__(config, lstm_input=config.embed_dim)
        self.image = ImageVector(config.encoder.out_dim, pool=config.image_pool,
                                 standardise=config.standardise_image)
        self.image_embed = nn.Linear(self.image.out_dim, config.embed_dim)  # W_I
        self.head = nn.Linear(config.hidden_dim, config.vocab_size)

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        _, grid = self.encoder(images)  # (B, L, D)
        return (self.image.pooled(grid),)  # CNN(I) (B, D'), before standardisation

    def encode_features(self, pooled: torch.Tensor) -> tuple[torch.Tensor, State]:
        image = self.image.norm(pooled)  # CNN(I), standardised (B, D')
        # The image is the LSTM's input once, at t = -1, from a zero state.
        h, c = self.lstm(self.image_embed(image))
        return image.unsqueeze(1), {"h": h, "c": c}  # context (B, 1, D') is not attended

    def decode(self, tokens: torch.Tensor, state: State, context: torch.Tensor,
               expectation_rows: torch.Tensor | None = None) -> DecodeResult:
        x = self.embed(tokens)  # (N, E)
        if self.config.image_every_step:
            x = x + self.image_embed(context[:, 0])  # W_e S_t + W_I CNN(I)
        h, c = self.lstm(x, (state["h"], state["c"]))  # (N, H)
        logits = self.head(self.drop(h))  # (N, V)
        return DecodeResult(logits, {"h": h, "c": c}, None, None)


class SoftAttention(nn.Module):
    """f_att of Eq. 4-5 (Xu et al.): e_ti = w^T tanh(W_a a_i + W_h h_{t-1}), α_t = softmax(e_t).

    With `word_dim` the query also reads a word vector (+ W_y E y_{t-1} inside the tanh).
    The score layer has no bias: a constant added to every e_ti cancels in the softmax.
    """

    def __init__(self, context_dim: int, hidden_dim: int, attention_dim: int,
                 word_dim: int = 0) -> None:
        super().__init__()
        self.context_proj = nn.Linear(context_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim, bias=False)
        self.word_proj = nn.Linear(word_dim, attention_dim, bias=False) if word_dim else None
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, context: torch.Tensor, h: torch.Tensor,
                word: torch.Tensor | None = None) -> torch.Tensor:
        """context (N, L, D), h (N, H), word (N, E) when built with word_dim -> scores e (N, L)."""
        query = self.hidden_proj(h)
        if self.word_proj is not None:
            if word is None:
                raise ValueError("this attention reads the previous word: pass `word`")
            query = query + self.word_proj(word)
        att = torch.tanh(self.context_proj(context) + query.unsqueeze(1))  # (N, L, A)
        return self.score(att).squeeze(-1)


@register_captioner
class ShowAttendTell(GridCaptioner):
    """SAT (Xu et al. 2015) with soft (deterministic) or hard (stochastic) attention."""

    config_class = ShowAttendTellConfig

    def __init__(self, config: ShowAttendTellConfig) -> None:
        d, h, e = config.encoder.out_dim, config.hidden_dim, config.embed_dim
        super().__init__(config, lstm_input=e + d)  # Eq. 1: the LSTM sees [E y_{t-1}; ẑ_t]
        self.hard = config.arch == "sat-hard"
        self.attention = SoftAttention(d, h, config.attention_dim,
                                       word_dim=e if config.attend_with_word else 0)
        self.gate = nn.Linear(h, 1)  # β_t = σ(f_β(h_{t-1})), Sec. 4.2.1
        # Initial memory and hidden state from the mean annotation (Sec. 3.1.2).
        self.init_h = nn.Linear(d, h)
        self.init_c = nn.Linear(d, h)
        self.cell_position = (nn.Parameter(torch.zeros(config.cell_positions, d))
                              if config.cell_positions else None)  # (L, D), row by row
        # Deep output layer, Eq. 7: p(y_t) ∝ exp(L_o(E y_{t-1} + L_h h_t + L_z ẑ_t)).
        self.out_h = nn.Linear(h, e)
        self.out_z = nn.Linear(d, e)
        self.out = nn.Linear(e, config.vocab_size)
        if self.hard:
            # Moving average of log p(y | s, a): the REINFORCE baseline of Eq. 12.
            self.register_buffer("reward_baseline", torch.zeros(()))
            self.register_buffer("baseline_updates", torch.zeros((), dtype=torch.long))

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        _, grid = self.encoder(images)
        return (grid,)  # the annotation vectors a_i (B, L, D)

    def encode_features(self, grid: torch.Tensor) -> tuple[torch.Tensor, State]:
        mean = grid.mean(dim=1)  # (B, D), the paper's initial-state input
        if self.cell_position is not None:
            if grid.shape[1] != self.cell_position.shape[0]:
                raise ValueError(f"cell_positions is {self.cell_position.shape[0]} but the "
                                 f"encoder's grid has {grid.shape[1]} cells")
            grid = grid + self.cell_position
        return grid, {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean))}

    def decode(self, tokens: torch.Tensor, state: State, context: torch.Tensor,
               expectation_rows: torch.Tensor | None = None) -> DecodeResult:
        h, c = state["h"], state["c"]  # (N, H)
        emb = self.embed(tokens)  # (N, E)
        scores = self.attention(context, h, emb if self.config.attend_with_word else None)  # (N, L)
        alpha = F.softmax(scores, dim=-1)
        z, sample_log_prob = self.glimpse(scores, alpha, context, expectation_rows)  # (N, D)
        z = torch.sigmoid(self.gate(h)) * z
        h, c = self.lstm(torch.cat([emb, z], dim=-1), (h, c))
        logits = self.out(self.drop(emb + self.out_h(h) + self.out_z(z)))  # (N, V)
        return DecodeResult(logits, {"h": h, "c": c}, alpha, sample_log_prob)

    def glimpse(self, scores: torch.Tensor, alpha: torch.Tensor, context: torch.Tensor,
                expectation_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The context vector ẑ (N, D) before gating, and log p(s_t) when s_t was sampled."""
        expected = torch.bmm(alpha.unsqueeze(1), context).squeeze(1)  # Σ_i α_i a_i (Eq. 13)
        if not self.hard or (not self.training and self.config.hard_inference == "expected"):
            return expected, None
        if not self.training:
            return gather_location(context, alpha.argmax(dim=-1)), None
        # s_t ~ Multinoulli(α), Eq. 8-9; ẑ_t = a_{s_t}.
        s = torch.multinomial(alpha.detach(), 1).squeeze(1)  # (N,)
        sample_log_prob = F.log_softmax(scores, dim=-1).gather(1, s.unsqueeze(1)).squeeze(1)
        z = gather_location(context, s)
        if expectation_rows is not None:
            z = torch.where(expectation_rows.unsqueeze(1), expected, z)
        return z, sample_log_prob

    def expectation_rows(self, batch_size: int, device: torch.device) -> torch.Tensor | None:
        # Xu et al. Sec. 4.1: with probability 0.5 per image, s̃ is set to its expected value.
        if not (self.hard and self.training):
            return None
        return torch.rand(batch_size, device=device) < self.config.hard_expectation_prob

    def regularisers(self, token_nll: torch.Tensor, mask: torch.Tensor, rollout: Rollout,
                     terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Xu et al.'s per-sentence objective divided by the number of tokens, like the
        cross entropy, so that λ, λ_r and λ_e weigh each term as in the paper."""
        num_tokens = mask.sum().clamp(min=1.0)
        penalty = doubly_stochastic_penalty(rollout.alpha, mask).sum() / num_tokens
        terms["doubly_stochastic"] = penalty
        total = self.config.doubly_stochastic * penalty
        if rollout.sample_log_prob is not None:
            total = total + self.reinforce_terms(token_nll, mask, rollout, terms)
        return total

    def reinforce_terms(self, token_nll: torch.Tensor, mask: torch.Tensor, rollout: Rollout,
                        terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Surrogate loss whose negative gradient is Eq. 12 of Xu et al.:

            λ_r (log p(y|s̃,a) - b) ∂ log p(s̃|a)/∂W + λ_e ∂H[s̃]/∂W

        (the ∂ log p(y|s̃,a)/∂W part is the cross entropy's). Images that used the
        expected context contribute no score-function term. b is the baseline from
        earlier minibatches, so it does not depend on this sample; afterwards
        b <- 0.9 b + 0.1 mean log p(y|s̃,a). The first minibatch sets b to its own mean
        instead of pulling it from 0.
        """
        cfg = self.config
        num_tokens = mask.sum().clamp(min=1.0)
        sentence_log_prob = -token_nll.sum(dim=1)  # (B,) log p(y | s̃, a)
        batch_mean = sentence_log_prob.mean().detach()
        with torch.no_grad():
            if self.baseline_updates == 0:
                self.reward_baseline.copy_(batch_mean)
        sampled = mask
        if rollout.expectation_rows is not None:
            sampled = mask * (~rollout.expectation_rows).float().unsqueeze(1)  # (B, T)
        advantage = (sentence_log_prob - self.reward_baseline).detach()  # (B,)
        log_p_s = (rollout.sample_log_prob * sampled).sum(dim=1)  # (B,) log p(s̃ | a)
        reinforce = -(advantage * log_p_s).sum() / num_tokens
        entropy = (attention_entropy(rollout.alpha) * mask).sum() / num_tokens
        with torch.no_grad():
            decay = cfg.baseline_decay
            self.reward_baseline.mul_(decay).add_((1.0 - decay) * batch_mean)
            self.baseline_updates += 1
        terms.update(reinforce=reinforce, entropy=entropy, sentence_log_prob=batch_mean,
                     reward_baseline=self.reward_baseline.clone())
        return cfg.reinforce_weight * reinforce - cfg.entropy_weight * entropy


def gather_location(context: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """context (N, L, D), index (N,) -> the annotation vector a_index of each row (N, D)."""
    index = index.view(-1, 1, 1).expand(-1, 1, context.shape[-1])
    return context.gather(1, index).squeeze(1)

