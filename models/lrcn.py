"""LRCN (Donahue et al. 2015): a per-frame CNN feeding an LSTM, for video activity
recognition and video description.

Every frame x_t of a clip (B, T, 3, S, S) in [0, 1] goes through the shared image
encoder φ (models/encoder.py): its annotation grid averaged down to G x G cells and
flattened, φ(x_t) of G·G·D values (`frame_grid` G; G = 1 is the encoder's pooled
vector). The global mean of G = 1 forgets where things are, and where an object is
from frame to frame is what tells a move to the left from one to the right, so the
trained models keep a coarse grid. An optional `frame_embed_dim` maps φ(x_t) through
a ReLU layer first (the paper's fc6 above the convolutions), which keeps the LSTM
small over a wide grid feature. Before it, `frame_norm` normalises φ(x_t): "batch"
(the default, BatchNorm over the frames of a batch's clips) removes the component every
frame's pooled feature shares, which is as large as a clip's own part for RGB frames and
eight times it for motion images and leaves an LSTM fed the raw or LayerNorm-ed vector
close to blind; "layer" (LayerNorm) keeps it, which suits the RGB activity stream
(docs/results.md). With `frame_diff` (on by default wherever an LSTM reads the frames)
the LSTM also reads the BatchNorm-ed change of a projection of the frame feature since
the previous frame, carried between steps in the state as "prev"; with `cell_max`
(the video encoder's default) the maximum over the grid's cells joins φ(x_t). Then:

Activity recognition (Sec. 4 of the paper)
    "lstm":          h_t = LSTM(φ(x_t), h_{t-1}),  scores_t = W h_t
    "single-frame":  scores_t = W φ(x_t)           (the paper's single-frame baseline)
  Training puts the clip's label on every frame; at test time the clip's class
  distribution is the mean over frames of softmax(scores_t). The input is either
  the RGB frames or a motion image per pair of frames, 0.5 + 0.5 (x_t - x_{t-1})
  (T - 1 of them; the paper uses optical flow), and `LateFusion` averages the two
  streams' clip distributions with a weight, as the paper fuses RGB and flow.

Video description (Sec. 6 of the paper; Venugopalan et al. 2015)
    "lstm-encoder":  an LSTM reads φ(x_1) ... φ(x_T); its final (h, c) starts the
                     decoder LSTM, which then reads the words (encoder-decoder); with
                     `feed_encoding` the final h is also fed beside every word
    "mean-pool":     the mean of φ(x_t) is fed to the decoder LSTM beside every word
  Both are `FeatureCaptioner`s (models/caption.py), so they decode with the same
  `encode` + `step` interface as the image captioners: the state is explicit and
  the step takes tokens, which is what service.decoding's beam search and the
  captioners' ONNX step graph expect. `image_features(clips)` gives the frame
  features (B, T, D), and `encode_features` encodes them, so a model over a frozen
  frame encoder trains on precomputed features.

    context, state = model.encode(clips)                # None or (B, 1, D), {"h", "c"}
    log_probs, state, _ = model.step(tokens, state, context)   # (N, V)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.caption import DecodeResult, FeatureCaptioner, State
from models.encoder import EncoderConfig, ImageEncoder
from models.lstm import LSTMCell

ACTIVITY_INPUTS = ("rgb", "motion")
ACTIVITY_TEMPORAL = ("lstm", "single-frame")
VIDEO_CAPTION_ARCHS = ("lstm-encoder", "mean-pool")


def motion_frames(clips: torch.Tensor) -> torch.Tensor:
    """clips (B, T, 3, S, S) in [0, 1] -> (B, T - 1, 3, S, S): 0.5 + 0.5 (x_t - x_{t-1}),
    in [0, 1] like a frame, so the encoder's normalisation applies unchanged
    (no change is mid-grey)."""
    return 0.5 + 0.5 * (clips[:, 1:] - clips[:, :-1])


def encode_frames(encoder: ImageEncoder, frames: torch.Tensor, grid: int = 1) -> torch.Tensor:
    """frames (B, T, 3, S, S) -> features (B, T, grid * grid * D), every frame on its own:
    the annotation grid averaged to grid x grid cells, row by row (grid 1: the pooled vector)."""
    b, t = frames.shape[:2]
    pooled, cells = encoder(frames.flatten(0, 1))  # (B*T, D), (B*T, L, D)
    if grid == 1:
        return pooled.view(b, t, -1)
    side = int(round(cells.shape[1] ** 0.5))
    fmap = cells.transpose(1, 2).reshape(b * t, -1, side, side)  # (B*T, D, h, w)
    coarse = F.adaptive_avg_pool2d(fmap, grid)  # (B*T, D, G, G)
    return coarse.permute(0, 2, 3, 1).reshape(b, t, -1)  # cells row by row, D each


def frame_feature_dim(encoder: EncoderConfig, grid: int) -> int:
    """Size of φ(x_t): D per cell of the grid x grid frame grid."""
    return grid * grid * encoder.out_dim


FRAME_NORMS = ("batch", "layer")


class FeatureBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over every leading dimension: φ (..., F) standardised feature by
    feature over all the frames of all the clips of a batch (running statistics at
    eval time, where it is one affine map and exports to ONNX as such)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)


def normalize_frame_norm(norm: str | bool | None) -> str | None:
    """A config's frame_norm: "batch", "layer" or None (True, as saved before
    BatchNorm was an option, is "layer"; False is None)."""
    if norm is True:
        return "layer"
    if norm is False or norm is None:
        return None
    if norm not in FRAME_NORMS:
        raise ValueError(f"frame_norm must be one of {FRAME_NORMS} or None, got {norm!r}")
    return norm


def with_saved_defaults(d: dict) -> dict:
    """A saved config from before `frame_norm` or `frame_diff` existed had neither; the
    fields' defaults (BatchNorm, the change between frames) apply to new configs only."""
    return {"frame_norm": None, "frame_diff": False, **d}


def with_saved_caption_defaults(d: dict) -> dict:
    """with_saved_defaults, and no cell_max for a description config saved before it."""
    return {"cell_max": False, **with_saved_defaults(d)}


def frame_norm_layer(dim: int, norm: str | bool | None) -> nn.Module:
    """The normalisation of φ(x_t) that `norm` names (nn.Identity for None)."""
    norm = normalize_frame_norm(norm)
    if norm == "batch":
        return FeatureBatchNorm(dim)
    if norm == "layer":
        return nn.LayerNorm(dim)
    return nn.Identity()


class CellMax(nn.Module):
    """φ (..., G·G·D) -> (..., G·G·D + D): the grid's cells and, after them, their
    elementwise maximum, the same wherever in the frame an object is."""

    def __init__(self, cells: int) -> None:
        super().__init__()
        self.cells = cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.reshape(*x.shape[:-1], self.cells, x.shape[-1] // self.cells)
        return torch.cat([x, grid.amax(dim=-2)], dim=-1)


def frame_embedding(in_dim: int, embed_dim: int | None, *, norm: str | bool | None = None,
                    cell_max_of: int | None = None) -> tuple[nn.Module, int]:
    """The layers between φ(x_t) (..., F) and the model and their output size: the
    normalisation `norm` names, then ReLU(W φ + b) if `embed_dim`.

    "batch" (the default of the configs) standardises every feature over the frames
    of a batch's clips: the frozen pooled features are dominated by a component that
    every frame shares (its norm is about that of a frame's own deviation for RGB
    frames, about eight times it for motion images), which a model fed the raw or
    LayerNorm-ed vector mostly sees as a constant. "layer" (LayerNorm per vector)
    only evens out the scale and keeps that shared component."""
    layers: list[nn.Module] = []
    if cell_max_of:  # with cell_max_of cells, the maximum over them comes first
        layers.append(CellMax(cell_max_of))
        in_dim += in_dim // cell_max_of
    if normalize_frame_norm(norm) is not None:
        layers.append(frame_norm_layer(in_dim, norm))
    if embed_dim:
        layers += [nn.Linear(in_dim, embed_dim), nn.ReLU()]
    return (nn.Sequential(*layers) if layers else nn.Identity()), embed_dim or in_dim


def build_frame_encoder(config: EncoderConfig, *, frozen: bool) -> ImageEncoder:
    encoder = ImageEncoder(config)
    if frozen:
        encoder.requires_grad_(False)
    return encoder


# --- activity recognition -----------------------------------------------------------

@dataclass
class ActivityConfig:
    num_classes: int = 11
    input: str = "rgb"  # "rgb" | "motion" (frame differences)
    temporal: str = "lstm"  # "lstm" (LRCN) | "single-frame" (the baseline)
    hidden_dim: int = 128
    layer_norm: bool = False  # layer-normalised LSTM (Ba et al. 2016)
    dropout: float = 0.3
    freeze_encoder: bool = False  # keep φ (and its BatchNorm statistics) fixed
    frame_grid: int = 1  # G: φ(x_t) is the encoder's grid averaged to G x G cells
    frame_embed_dim: int | None = None  # a ReLU layer on φ(x_t) before the LSTM / head
    # φ(x_t) normalised first: "batch" (BatchNorm over frames and clips), "layer"
    # (LayerNorm; true in configs saved before "batch"), None
    frame_norm: str | bool | None = "batch"
    # lstm: the LSTM also reads the change of the (projected) frame feature since the
    # previous frame, BatchNorm-ed; the projection of the previous frame is carried in
    # the recurrent state as "prev" (B, hidden_dim). None: on with the LSTM (configs
    # saved before the field: off)
    frame_diff: bool | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if self.frame_grid < 1:
            raise ValueError(f"frame_grid must be >= 1, got {self.frame_grid}")
        self.frame_norm = normalize_frame_norm(self.frame_norm)
        if self.frame_diff is None:
            self.frame_diff = self.temporal == "lstm"
        if self.frame_diff and self.temporal != "lstm":
            raise ValueError("frame_diff needs the LSTM (temporal 'lstm')")
        if self.input not in ACTIVITY_INPUTS:
            raise ValueError(f"input must be one of {ACTIVITY_INPUTS}, got {self.input!r}")
        if self.temporal not in ACTIVITY_TEMPORAL:
            raise ValueError(f"temporal must be one of {ACTIVITY_TEMPORAL}, "
                             f"got {self.temporal!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ActivityConfig:
        return cls(**with_saved_defaults(d))


class ActivityRecognizer(nn.Module):
    """Per-frame class scores of a clip from the RGB or motion frames, with or without
    an LSTM over time; `clip_probs` averages the per-frame distributions."""

    def __init__(self, config: ActivityConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_frame_encoder(config.encoder, frozen=config.freeze_encoder)
        self.frame_embed, d = frame_embedding(self.feature_dim, config.frame_embed_dim,
                                              norm=config.frame_norm)
        h = config.hidden_dim
        self.diff_proj = nn.Linear(d, h) if config.frame_diff else None
        self.diff_norm = FeatureBatchNorm(h) if config.frame_diff else None
        self.lstm = (LSTMCell(d + (h if config.frame_diff else 0), h,
                              layer_norm=config.layer_norm)
                     if config.temporal == "lstm" else None)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_dim if self.lstm is not None else d,
                              config.num_classes)

    @property
    def feature_dim(self) -> int:
        """Size of φ(x_t), what `classify_step` reads per frame."""
        return frame_feature_dim(self.config.encoder, self.config.frame_grid)

    @property
    def state_names(self) -> tuple[str, ...]:
        """Keys of the recurrent state carried between frames (none without an LSTM)."""
        if self.lstm is None:
            return ()
        return ("h", "c", "prev") if self.config.frame_diff else ("h", "c")

    def train(self, mode: bool = True) -> ActivityRecognizer:
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()
        return self

    def frame_inputs(self, clips: torch.Tensor) -> torch.Tensor:
        """What the encoder sees: the frames (B, T, ...) or the motion images (B, T - 1, ...)."""
        return motion_frames(clips) if self.config.input == "motion" else clips

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder inputs (B, T', 3, S, S) -> φ (B, T', G·G·D)."""
        return encode_frames(self.encoder, frames, self.config.frame_grid)

    def initial_state(self, batch_size: int, *, like: torch.Tensor) -> State:
        if self.lstm is None:
            return {}
        h, c = self.lstm.initial_state(batch_size, like=like)
        state = {"h": h, "c": c}
        if self.config.frame_diff:  # zero: no previous frame yet
            state["prev"] = torch.zeros_like(h)
        return state

    def classify_step(self, features: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One frame: φ (B, G·G·D), state -> class scores (B, C), next state."""
        x = self.frame_embed(features)
        if self.diff_proj is None:
            return self.embedded_step(x, None, state)
        p, prev = self.diff_proj(x), state["prev"]
        # the first frame (a zero "prev": the projection has a bias, so a frame's is
        # never all zeros) has no change
        started = (prev.abs().sum(dim=-1, keepdim=True) > 0).to(p.dtype)
        return self.embedded_step(x, self.diff_norm(started * (p - prev)), state, p)

    def embedded_step(self, x: torch.Tensor, diff: torch.Tensor | None, state: State,
                      projection: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """classify_step after the frame embedding (x: frame_embed(φ), (B, d)) and, with
        frame_diff, the normalised change `diff` (B, H) and this frame's `projection`."""
        if self.lstm is None:
            return self.head(self.drop(x)), state
        if diff is not None:
            x = torch.cat([x, diff], dim=-1)
        h, c = self.lstm(x, (state["h"], state["c"]))
        new = {"h": h, "c": c}
        if projection is not None:
            new["prev"] = projection
        return self.head(self.drop(h)), new

    def frame_logits(self, features: torch.Tensor) -> torch.Tensor:
        """φ (B, T', G·G·D) -> per-frame class scores (B, T', C), unrolling classify_step."""
        state = self.initial_state(features.shape[0], like=features)
        x = self.frame_embed(features)  # all frames at once: BatchNorm sees frames x clips
        diffs = projections = None
        if self.diff_proj is not None:
            projections = self.diff_proj(x)  # (B, T', H)
            change = projections[:, 1:] - projections[:, :-1]
            diffs = self.diff_norm(torch.cat([torch.zeros_like(change[:, :1]), change], 1))
        logits = []
        for t in range(features.shape[1]):
            scores, state = self.embedded_step(
                x[:, t], None if diffs is None else diffs[:, t], state,
                None if projections is None else projections[:, t])
            logits.append(scores)
        return torch.stack(logits, dim=1)

    def forward(self, clips: torch.Tensor | tuple[torch.Tensor],
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """clips (B, T, 3, S, S) in [0, 1] (or `(features,)`, φ of frame_inputs(clips)
        precomputed), labels (B,) -> per-frame scores (B, T', C) and the cross entropy of
        every frame's prediction against its clip's label (or None)."""
        if isinstance(clips, tuple):
            (features,) = clips
        else:
            features = self.frame_features(self.frame_inputs(clips))
        logits = self.frame_logits(features)
        if labels is None:
            return logits, None
        frame_labels = labels.unsqueeze(1).expand(-1, logits.shape[1])  # (B, T')
        return logits, F.cross_entropy(logits.flatten(0, 1), frame_labels.flatten())

    def clip_probs(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, T, 3, S, S) -> class distribution (B, C): the mean over frames of
        each frame's softmax."""
        logits, _ = self(clips)
        return F.softmax(logits, dim=-1).mean(dim=1)


class LateFusion(nn.Module):
    """p(c | clip) = w p_rgb(c | clip) + (1 - w) p_motion(c | clip).

    Donahue et al. weigh the flow stream 2/3 for LRCN; the weight is best chosen
    on validation clips.
    """

    def __init__(self, rgb: ActivityRecognizer, motion: ActivityRecognizer, *,
                 rgb_weight: float = 0.5) -> None:
        super().__init__()
        if (rgb.config.input, motion.config.input) != ("rgb", "motion"):
            raise ValueError("LateFusion takes an RGB model and a motion model, got inputs "
                             f"{rgb.config.input!r} and {motion.config.input!r}")
        if rgb.config.num_classes != motion.config.num_classes:
            raise ValueError("the two streams must have the same classes")
        if not 0.0 <= rgb_weight <= 1.0:
            raise ValueError(f"rgb_weight must be in [0, 1], got {rgb_weight}")
        self.rgb, self.motion, self.rgb_weight = rgb, motion, rgb_weight

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, T, 3, S, S) -> fused class distribution (B, C)."""
        w = self.rgb_weight
        return w * self.rgb.clip_probs(clips) + (1.0 - w) * self.motion.clip_probs(clips)


# --- video description --------------------------------------------------------------

@dataclass
class VideoCaptionConfig:
    arch: str = "lstm-encoder"  # "lstm-encoder" | "mean-pool"
    vocab_size: int = 64
    embed_dim: int = 64
    hidden_dim: int = 128
    layer_norm: bool = False
    dropout: float = 0.2
    pad_id: int = 0
    freeze_encoder: bool = False
    frame_grid: int = 1  # G, as ActivityConfig's
    frame_embed_dim: int | None = None  # lstm-encoder: a ReLU layer before the frame LSTM
    frame_norm: str | bool | None = "batch"  # as ActivityConfig's (both architectures)
    feed_encoding: bool = False  # lstm-encoder: its final h also beside every word
    # lstm-encoder: as ActivityConfig's, for the encoder LSTM (None: on for lstm-encoder)
    frame_diff: bool | None = None
    # lstm-encoder: the maximum over the grid's cells joins φ(x_t) before the embedding
    # (None: on for lstm-encoder; configs saved before the field: off)
    cell_max: bool | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if self.frame_grid < 1:
            raise ValueError(f"frame_grid must be >= 1, got {self.frame_grid}")
        self.frame_norm = normalize_frame_norm(self.frame_norm)
        if self.frame_diff is None:
            self.frame_diff = self.arch == "lstm-encoder"
        if self.frame_diff and self.arch != "lstm-encoder":
            raise ValueError("frame_diff needs the LSTM encoder (arch 'lstm-encoder')")
        if self.cell_max is None:
            self.cell_max = self.arch == "lstm-encoder"
        if self.arch not in VIDEO_CAPTION_ARCHS:
            raise ValueError(f"arch must be one of {VIDEO_CAPTION_ARCHS}, got {self.arch!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VideoCaptionConfig:
        return cls(**with_saved_caption_defaults(d))


class VideoCaptioner(FeatureCaptioner):
    """What both description models share: the frame encoder, the word embedding, a
    decoder LSTM and its output layer. `forward(clips or (features,), captions_in,
    captions_out)` is CaptionModel's teacher-forced pass."""

    attends = False

    def __init__(self, config: VideoCaptionConfig, *, decoder_input: int) -> None:
        super().__init__(config)
        self.encoder = build_frame_encoder(config.encoder, frozen=config.freeze_encoder)
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.decoder = LSTMCell(decoder_input, config.hidden_dim, layer_norm=config.layer_norm)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_dim, config.vocab_size)

    def train(self, mode: bool = True) -> VideoCaptioner:
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()
        return self

    @property
    def feature_dim(self) -> int:
        """Size of φ(x_t), what `encode_features` reads per frame."""
        return frame_feature_dim(self.config.encoder, self.config.frame_grid)

    def image_features(self, clips: torch.Tensor) -> tuple[torch.Tensor]:
        """clips (B, T, 3, S, S) in [0, 1] -> (frame features φ (B, T, G·G·D),)."""
        return (encode_frames(self.encoder, clips, self.config.frame_grid),)

    def next_word(self, x: torch.Tensor, state: State) -> DecodeResult:
        """The decoder LSTM on its input x (N, I) -> word scores (N, V)."""
        h, c = self.decoder(x, (state["h"], state["c"]))
        return DecodeResult(self.head(self.drop(h)), {"h": h, "c": c}, None, None)


class LSTMEncoderDecoder(VideoCaptioner):
    """An LSTM reads the frame features; its final state starts the decoder (LRCN's
    encoder-decoder, Sec. 6, with CNN features where the paper has CRF outputs).

    With `feed_encoding`, the encoder's final h also enters the decoder beside every
    word, as the mean feature does in mean-pool, instead of reaching the later words
    only through the decoder's own state."""

    def __init__(self, config: VideoCaptionConfig) -> None:
        feed = config.feed_encoding
        super().__init__(config, decoder_input=(2 if feed else 1) * config.embed_dim)
        self.frame_embed, d = frame_embedding(
            self.feature_dim, config.frame_embed_dim, norm=config.frame_norm,
            cell_max_of=config.frame_grid ** 2 if config.cell_max else None)
        h = config.hidden_dim
        self.diff_proj = nn.Linear(d, h) if config.frame_diff else None
        self.diff_norm = FeatureBatchNorm(h) if config.frame_diff else None
        self.frame_lstm = LSTMCell(d + (h if config.frame_diff else 0), h,
                                   layer_norm=config.layer_norm)
        self.encoding_embed = nn.Linear(config.hidden_dim, config.embed_dim) if feed else None

    @property
    def encoder_state_names(self) -> tuple[str, ...]:
        """The encoder LSTM's state between frames: the decoder's ("h", "c"), and with
        frame_diff the previous frame's projection "prev" (B, H)."""
        return ("h", "c", "prev") if self.config.frame_diff else ("h", "c")

    @property
    def context_names(self) -> tuple[str, ...]:
        return ("context",) if self.config.feed_encoding else ()

    def encode_step(self, features: torch.Tensor, state: State | None) -> State:
        """One frame of the encoder: φ (B, G·G·D), its state (None at the first frame) ->
        the next {"h", "c"} (B, H)."""
        previous = None if state is None else (state["h"], state["c"])
        x = self.frame_embed(features)
        if self.diff_proj is None:
            h, c = self.frame_lstm(x, previous)
            return {"h": h, "c": c}
        p = self.diff_proj(x)
        prev = torch.zeros_like(p) if state is None else state["prev"]
        started = (prev.abs().sum(dim=-1, keepdim=True) > 0).to(p.dtype)  # see ActivityRecognizer
        h, c = self.frame_lstm(torch.cat([x, self.diff_norm(started * (p - prev))], -1), previous)
        return {"h": h, "c": c, "prev": p}

    def encode_features(self, features: torch.Tensor) -> tuple[torch.Tensor | None, State]:
        """φ (B, T, G·G·D) -> the encoder's final {"h", "c"} (B, H), and as context its
        final h (B, 1, H) with `feed_encoding` (else None)."""
        x = self.frame_embed(features)  # all frames at once: BatchNorm sees frames x clips
        if self.diff_proj is not None:
            p = self.diff_proj(x)
            change = p[:, 1:] - p[:, :-1]
            x = torch.cat([x, self.diff_norm(torch.cat([torch.zeros_like(p[:, :1]), change], 1))],
                          dim=-1)
        state = None
        for t in range(features.shape[1]):
            previous = None if state is None else (state["h"], state["c"])
            h, c = self.frame_lstm(x[:, t], previous)
            state = {"h": h, "c": c}
        context = state["h"].unsqueeze(1) if self.config.feed_encoding else None
        return context, state

    def decode(self, tokens: torch.Tensor, state: State, context: torch.Tensor | None,
               expectation_rows: torch.Tensor | None = None) -> DecodeResult:
        x = self.embed(tokens)
        if self.encoding_embed is not None:
            x = torch.cat([x, self.encoding_embed(context[:, 0])], dim=-1)
        return self.next_word(x, state)


class MeanPoolDecoder(VideoCaptioner):
    """The mean frame feature, embedded, is the decoder's input beside every word
    (Venugopalan et al. 2015, "Translating videos to natural language")."""

    def __init__(self, config: VideoCaptionConfig) -> None:
        super().__init__(config, decoder_input=2 * config.embed_dim)
        self.frame_norm = frame_norm_layer(self.feature_dim, config.frame_norm)
        self.video_embed = nn.Linear(self.feature_dim, config.embed_dim)

    def encode_features(self, features: torch.Tensor) -> tuple[torch.Tensor, State]:
        """φ (B, T, F) -> context (B, 1, F) = their mean, a zero state (B, H)."""
        zeros = features.new_zeros(features.shape[0], self.config.hidden_dim)
        return features.mean(dim=1, keepdim=True), {"h": zeros, "c": zeros.clone()}

    def decode(self, tokens: torch.Tensor, state: State, context: torch.Tensor,
               expectation_rows: torch.Tensor | None = None) -> DecodeResult:
        video = self.video_embed(self.frame_norm(context[:, 0]))  # (N, E)
        return self.next_word(torch.cat([self.embed(tokens), video], dim=-1), state)


VIDEO_CAPTIONERS: dict[str, type[VideoCaptioner]] = {
    "lstm-encoder": LSTMEncoderDecoder,
    "mean-pool": MeanPoolDecoder,
}


def build_video_caption_model(config: VideoCaptionConfig) -> VideoCaptioner:
    """The description model that config.arch names."""
    return VIDEO_CAPTIONERS[config.arch](config)
