"""Tiny random-weight text-to-image models with the contracts of the trained ones.

`TinyCharCnnRnn` follows models.text_encoder's CharCnnRnn (chars (B, T), 0
pads -> embedding (B, E)): character embedding, temporal convolution and pooling,
a GRU averaged over time (Reed et al. 2016, Sec. 2.2). `TinyGenerator` follows
training.tasks.gan's generators (`sample(embedding, noise)` -> (B, 3, S, S) in
[-1, 1]). `tiny_generation_bundle` exports both through training.export.generation.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.data.tokenizer import CharAlphabet
from training.export.generation import GenerationModels, write_generation_bundle

MAX_LENGTH = 32
EMBED_DIM = 12
NOISE_DIM = 6
IMAGE_SIZE = 16
WORDS = ["a", "red", "blue", "green", "circle", "square", "left", "right", "of", "above",
         "below", "small", "large", "and"]


class TinyCharCnnRnn(nn.Module):
    def __init__(self, num_ids: int, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.chars = nn.Embedding(num_ids, 8, padding_idx=0)
        self.conv = nn.Conv1d(8, 10, kernel_size=3, padding=1)
        self.rnn = nn.GRU(10, 10, batch_first=True)
        self.proj = nn.Linear(10, embed_dim)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        x = self.chars(chars).transpose(1, 2)  # (B, C, T)
        x = F.max_pool1d(F.relu(self.conv(x)), 2).transpose(1, 2)  # (B, T/2, C)
        h, _ = self.rnn(x)  # (B, T/2, H)
        return self.proj(h.mean(dim=1))  # (B, E)


class TinyGenerator(nn.Module):
    def __init__(self, embed_dim: int = EMBED_DIM, noise_dim: int = NOISE_DIM) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(embed_dim, 8), nn.LeakyReLU(0.2))
        self.fc = nn.Linear(8 + noise_dim, 16 * 4 * 4)
        self.up = nn.Sequential(
            nn.BatchNorm2d(16), nn.ReLU(), nn.ConvTranspose2d(16, 8, 4, 2, 1),
            nn.BatchNorm2d(8), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh())

    def sample(self, embedding: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.project(embedding), noise], dim=1)
        return self.up(self.fc(x).view(-1, 16, 4, 4))  # (B, 3, 16, 16)


def tiny_models(seed: int = 0, *, words: list[str] | None = WORDS,
                variant: str = "gan-int-cls") -> GenerationModels:
    torch.manual_seed(seed)
    alphabet = CharAlphabet()
    generator = TinyGenerator()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is exercised
        for name, buf in generator.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return GenerationModels(
        text_encoder=TinyCharCnnRnn(len(alphabet)).eval(), alphabet=alphabet,
        generator=generator.eval(), variant=variant, max_length=MAX_LENGTH,
        embed_dim=EMBED_DIM, noise_dim=NOISE_DIM, image_size=IMAGE_SIZE, words=words,
        training={"config": {"seed": seed}})


def tiny_generation_bundle(repository: Path, name: str = "gan-tiny", version: int = 1, *,
                           seed: int = 0, words: list[str] | None = WORDS) -> Path:
    return write_generation_bundle(tiny_models(seed, words=words), repository, name, version)
