"""DALL-E's transformer (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", Sec. 2.2).

A decoder-only transformer models one stream of T = L + G*G tokens: the caption's L
text tokens, then the G x G image codes of the discrete VAE (models/dvae.py) in raster
order. As in the paper:

- the text is padded to L positions with a *padding token per position* (not one shared
  padding token), so the model knows where the caption ended and how far each padding
  position is from the image; `<pad>` ids in the input are replaced by them here;
- text and image tokens have their own embeddings and position embeddings, an image
  token's being the sum of a row and a column embedding;
- the loss is the cross-entropy of the text and of the image tokens, each averaged
  over its own tokens and weighted 1/8 and 7/8 (Sec. 2.2: "we weight the text and image
  losses by 1/8 and 7/8"), since the point of the model is the image;
- every layer attends causally; image tokens always see every text token. The
  attention among image tokens is dense (the baseline) or, with `attention="sparse"`,
  the paper's schedule of sparse masks (Appendix B.1): row attention in layers i with
  (i - 2) mod 4 != 0, column attention where (i - 2) mod 4 = 0 (layers counted from 1),
  and convolutional attention in the last layer. `attention_mask` draws them.

Decoding reuses keys and values (the KV cache): `prefill` runs the text once and returns
the keys/values of every layer in a buffer of the whole sequence's length; `step` feeds
one image token at its position, writes its keys/values there and attends over the
buffer. Each row of a batch carries its own position, so rows that started decoding at
different times step together (continuous batching); the buffer has a fixed size, so a
step costs the same at every position.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SPARSE_KINDS = ("row", "column", "conv")
ATTENTION_CHOICES = ("dense", "sparse", *SPARSE_KINDS)


@dataclass
class DalleConfig:
    text_vocab_size: int = 64  # V: words of the caption vocabulary, <pad>, <bos>, ... included
    text_length: int = 16  # L: text positions (<bos>, words, per-position padding)
    image_vocab_size: int = 512  # K: the dVAE's codebook
    image_grid: int = 8  # G: the image is G*G tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # "dense": causal attention everywhere; "sparse": the paper's row/column/conv schedule;
    # "row", "column" or "conv": that mask in every layer
    attention: str = "dense"
    conv_kernel: int = 3  # side of the convolutional mask's window (odd)
    image_loss_weight: float = 7 / 8  # the text loss gets 1 - this
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, "
                             f"got {self.attention!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd, got {self.conv_kernel}")
        if self.text_length < 1 or self.image_grid < 1:
            raise ValueError("text_length and image_grid must be >= 1")

    @property
    def image_length(self) -> int:
        return self.image_grid * self.image_grid

    @property
    def sequence_length(self) -> int:
        return self.text_length + self.image_length

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def layer_attention(self) -> list[str]:
        """The attention kind of each layer, first to last."""
        if self.attention != "sparse":
            return [self.attention] * self.n_layer
        return [paper_layer_kind(i, self.n_layer) for i in range(1, self.n_layer + 1)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DalleConfig:
        return cls(**d)


def paper_layer_kind(layer: int, n_layer: int) -> str:
    """The sparse mask of layer `layer` (1-based) of `n_layer` in DALL-E's schedule."""
    if layer == n_layer:
        return "conv"
    return "column" if (layer - 2) % 4 == 0 else "row"


def attention_mask(kind: str, text_length: int, grid: int, conv_kernel: int = 3) -> torch.Tensor:
    """bool (T, T), T = L + G*G: True where query i may attend to key j.

    Text queries attend causally to text. Image queries attend to every text token and,
    among image tokens (raster indices q >= k), to:
      dense   every earlier one;
      row     the previous G and itself: the rest of its row and the end of the row
              above (Sparse Transformer's first strided head, Child et al. 2019, Sec. 4.1,
              which the paper's row attention follows);
      column  those of its own column;
      conv    those in the conv_kernel x conv_kernel window centred on it.
    """
    if kind not in ("dense", *SPARSE_KINDS):
        raise ValueError(f"unknown attention kind {kind!r}")
    n = text_length + grid * grid
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    causal = j <= i
    q, k = i - text_length, j - text_length  # image indices (where both are image tokens)
    if kind == "dense":
        image = torch.ones(n, n, dtype=torch.bool)
    elif kind == "row":
        image = q - k <= grid
    elif kind == "column":
        image = (q - k) % grid == 0
    else:
        r = conv_kernel // 2
        image = ((q.div(grid, rounding_mode="floor") - k.div(grid, rounding_mode="floor")).abs()
                 <= r) & ((q % grid - k % grid).abs() <= r)
    return causal & ((j < text_length) | image)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, nh, T, hs) of x (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                     for t in (q, k, v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """Masked softmax attention; mask broadcasts to (B, nh, Tq, Tk). -> (B, Tq, C)."""
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = self.attn_dropout(att) @ v  # (B, nh, Tq, hs)
        B, _, Tq, _ = y.shape
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, Tq, -1)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention of x (B, T, C) under mask (T, T); also returns its k, v (B, nh, T, hs)."""
        q, k, v = self.heads(x)
        return self.attend(q, k, v, mask), k, v

    def step(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
             write: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token per row, x (B, 1, C): its k, v are written into the caches
        (B, nh, T, hs) where `write` (B, T) is True, and it attends where `mask` (B, T) is."""
        q, k, v = self.heads(x)
        k = torch.where(write[:, None, :, None], k, past_k)
        v = torch.where(write[:, None, :, None], v, past_v)
        return self.attend(q, k, v, mask[:, None, None, :]), k, v

    def step_apart(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                   bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token per row, x (B, 1, C), attending to itself and to the cached keys/values
        (B, nh, T, hs) under `bias` (B, 1, 1, T): 0 where it may attend, -inf elsewhere. The
        caches are only read: the token's k, v (B, nh, hs) are returned for the caller to
        store, so a step costs no copy of the cache (`step`'s `torch.where` writes a new one).
        With one query per row the heads need no transposes: (B, 1, C) views as
        (B, nh, 1, hs). (x stays 3-d so that the linear layers export as in `prefill`, and
        the two graphs share their weights.)"""
        B, _, C = x.shape
        nh = self.n_head
        q, k, v = (t.reshape(B, nh, 1, C // nh) for t in self.qkv(x).split(C, dim=2))
        q = q * (1.0 / math.sqrt(C // nh))
        to_cache = q @ past_k.transpose(-2, -1) + bias  # (B, nh, 1, T)
        to_self = q @ k.transpose(-2, -1)  # (B, nh, 1, 1)
        att = self.attn_dropout(torch.cat([to_cache, to_self], dim=-1).softmax(dim=-1))
        y = att[..., :-1] @ past_v + att[..., -1:] * v  # (B, nh, 1, hs)
        return self.resid_dropout(self.proj(y.reshape(B, 1, C))), k[:, :, 0], v[:, :, 0]


class MLP(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, k, v = self.attn(self.ln_1(x), mask)
        x = x + y
        return x + self.mlp(self.ln_2(x)), k, v

    def step(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
             write: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, k, v = self.attn.step(self.ln_1(x), past_k, past_v, write, mask)
        x = x + y
        return x + self.mlp(self.ln_2(x)), k, v

    def step_apart(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                   bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, k, v = self.attn.step_apart(self.ln_1(x), past_k, past_v, bias)
        x = x + y
        return x + self.mlp(self.ln_2(x)), k, v


@dataclass
class DalleOutput:
    text_logits: torch.Tensor  # (B, L-1, V+L): predictions of text positions 1..L-1
    image_logits: torch.Tensor  # (B, G*G, K): predictions of image tokens 0..G*G-1
    loss: torch.Tensor  # (1 - w) * text_loss + w * image_loss, w = image_loss_weight
    text_loss: torch.Tensor
    image_loss: torch.Tensor


class Dalle(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.config = cfg
        L, G, C = cfg.text_length, cfg.image_grid, cfg.n_embd
        self.text_embedding = nn.Embedding(cfg.text_vocab_size + L, C)  # words, then pads
        self.text_position = nn.Embedding(L, C)
        self.image_embedding = nn.Embedding(cfg.image_vocab_size, C)
        self.image_row = nn.Embedding(G, C)
        self.image_column = nn.Embedding(G, C)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(C)
        self.text_head = nn.Linear(C, cfg.text_vocab_size + L, bias=False)
        self.image_head = nn.Linear(C, cfg.image_vocab_size, bias=False)
        # One mask per kind in use; layer l reads masks[mask_index[l]].
        kinds = cfg.layer_attention()
        distinct = list(dict.fromkeys(kinds))
        self.mask_index = [distinct.index(kind) for kind in kinds]
        masks = torch.stack([attention_mask(kind, L, G, cfg.conv_kernel) for kind in distinct])
        self.register_buffer("masks", masks, persistent=False)  # (kinds, T, T)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def layer_mask(self, layer: int) -> torch.Tensor:
        """bool (T, T) of layer `layer` (0-based)."""
        return self.masks[self.mask_index[layer]]

    # ------------------------------------------------------------------ embeddings

    def text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) word ids with <pad> replaced by the padding token of its position."""
        cfg = self.config
        positions = torch.arange(text.shape[1], device=text.device)
        return torch.where(text == cfg.pad_id, cfg.text_vocab_size + positions, text)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(text.shape[1], device=text.device)
        return self.text_embedding(self.text_tokens(text)) + self.text_position(positions)

    def embed_image(self, codes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Embeddings of image codes at raster indices `index` (same shape as codes)."""
        G = self.config.image_grid
        return (self.image_embedding(codes) + self.image_row(index.div(G, rounding_mode="floor"))
                + self.image_column(index % G))

    # ------------------------------------------------------------------ training

    def hidden(self, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Final (layer-normalised) states (B, L + n, C) of the stream of text (B, L) word
        ids followed by the first n image codes (B, n), every layer attending causally."""
        index = torch.arange(codes.shape[1], device=codes.device).expand(codes.shape[0], -1)
        x = self.drop(torch.cat([self.embed_text(text), self.embed_image(codes, index)], dim=1))
        T = x.shape[1]
        for layer, block in enumerate(self.blocks):
            x, _, _ = block(x, self.layer_mask(layer)[:T, :T])
        return self.ln_f(x)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> DalleOutput:
        """Teacher-forced pass over text (B, L) word ids and image (B, G*G) codes."""
        cfg = self.config
        L, N = cfg.text_length, cfg.image_length
        if text.shape[1] != L or image.shape[1] != N:
            raise ValueError(f"expected text (B, {L}) and image (B, {N}), got "
                             f"{tuple(text.shape)} and {tuple(image.shape)}")
        # The last image token is only a target: the stream fed is T - 1 long.
        x = self.hidden(text, image[:, :-1])
        text_logits = self.text_head(x[:, :L - 1])
        image_logits = self.image_head(x[:, L - 1:])
        text_loss = F.cross_entropy(text_logits.reshape(-1, text_logits.size(-1)),
                                    self.text_tokens(text)[:, 1:].reshape(-1))
        image_loss = F.cross_entropy(image_logits.reshape(-1, image_logits.size(-1)),
                                     image.reshape(-1))
        w = cfg.image_loss_weight
        loss = (1.0 - w) * text_loss + w * image_loss
        return DalleOutput(text_logits, image_logits, loss, text_loss, image_loss)

    # ------------------------------------------------------------------ decoding with a KV cache

    def prefill(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the text (B, L) once.

        Returns the logits (B, K) of the first image token and `present` (B, 2 * n_layer,
        nh, T, hs): keys (even slots) and values (odd slots) of every layer over the whole
        sequence, filled for the L text positions and zero beyond.
        """
        cfg = self.config
        L, T = cfg.text_length, cfg.sequence_length
        x = self.embed_text(text)
        cache = []
        for layer, block in enumerate(self.blocks):
            x, k, v = block(x, self.layer_mask(layer)[:L, :L])
            cache += [F.pad(k, (0, 0, 0, T - L)), F.pad(v, (0, 0, 0, T - L))]
        return self.image_head(self.ln_f(x[:, -1])), torch.stack(cache, dim=1)

    def step(self, token: torch.Tensor, position: torch.Tensor, past: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed image code `token` (B,) at sequence position `position` (B,), L <= p < T - 1.

        `past` (B, 2 * n_layer, nh, T, hs) holds the keys/values of positions < p of each
        row; returns the logits (B, K) of the image token at p + 1 and `present`, `past`
        with this token's keys/values written at p.
        """
        cfg = self.config
        T = cfg.sequence_length
        x = self.embed_image(token, position - cfg.text_length)[:, None, :]  # (B, 1, C)
        write = torch.arange(T, device=position.device)[None, :] == position[:, None]  # (B, T)
        cache = []
        for layer, block in enumerate(self.blocks):
            mask = self.layer_mask(layer).index_select(0, position)  # (B, T): row p
            x, k, v = block.step(x, past[:, 2 * layer], past[:, 2 * layer + 1], write, mask)
            cache += [k, v]
        return self.image_head(self.ln_f(x[:, 0])), torch.stack(cache, dim=1)

    def step_apart(self, token: torch.Tensor, position: torch.Tensor, past: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """`step` without writing the cache: the same logits (B, K), and `kv` (B, 2 * n_layer,
        nh, hs), this token's keys (even slots) and values (odd slots) of every layer, for
        the caller to store at `past[b, :, :, position[b]]`.

        `past` is only read, at the positions < p of each row that the layer's mask allows,
        plus the token itself; so the caller can keep one cache and write each step's
        `kv` into it in place, where `step` returns a new copy of the whole cache per token
        (most of a step's time in ONNX Runtime at this model's width, docs/performance.md).
        """
        cfg = self.config
        T = cfg.sequence_length
        x = self.embed_image(token, position - cfg.text_length)[:, None, :]  # (B, 1, C)
        # The keys each row may read from the cache: those before p that the layer's mask
        # row p allows (every mask allows a token itself, which is not in the cache yet).
        # One additive bias per mask kind, shared by its layers.
        before = torch.arange(T, device=position.device)[None, :] < position[:, None]
        allowed = self.masks.index_select(1, position) & before  # (kinds, B, T)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~allowed, float("-inf"))[:, :, None, None, :]  # (kinds, B, 1, 1, T)
        kv = []
        for layer, block in enumerate(self.blocks):
            x, k, v = block.step_apart(x, past[:, 2 * layer], past[:, 2 * layer + 1],
                                       bias[self.mask_index[layer]])
            kv += [k, v]
        return self.image_head(self.ln_f(x[:, 0])), torch.stack(kv, dim=1)

    def cache_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of `past`/`present` for `batch` rows."""
        cfg = self.config
        return (batch, 2 * cfg.n_layer, cfg.n_head, cfg.sequence_length, cfg.head_dim)
