"""DALL-E's discrete VAE on the Trainer: `glimpse train dvae`.

The dVAE (models/dvae.py) learns from images alone: the training images of one or
more shapes-world datasets (by default the single-object set data/t2i and the 1-4
object world data/shapes, the two kinds of scene DALL-E is asked to draw), at the
transformer's image size. Its Gumbel-softmax temperature tau and the KL weight beta
follow schedules of the training step (DVAEConfig.temperature / kl_weight_at); the
step is a buffer of the model (`AnnealedDVAE`), so it is saved with the weights,
restored on resume and the same on every rank under torchrun.

Validation decodes the *hard* codes (the argmax per cell, what the transformer will
model and the service decode) and reports their reconstruction PSNR and the
codebook's usage (perplexity of the code histogram, dead codes). After training,
`final_metrics` measures the same on the test and novel splits of every dataset;
they are what the grid G and codebook size K are chosen by (docs/results.md).

With `encoder_init` (a `glimpse train encoder` run) the code logits are read from that
encoder's frozen annotation grid (models.dvae.BackboneEncoder): its config becomes the
dVAE's `backbone` and its weights are loaded before the first step; the run's own
checkpoints then carry them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.dvae import BackboneEncoder, DiscreteVAE, DVAEConfig, DVAEOutput, codebook_usage, kmeans
from models.encoder import ImageEncoder
from training.callbacks import Callback, JsonLines
from training.data.images import load_images, save_image_rows
from training.data.readers import load_captions
from training.runs import frozen_encoder, load_dvae, pretrained_encoder
from training.tasks import TrainingCommand
from training.trainer import Trainer, TrainerConfig, config_from_dict

log = logging.getLogger(__name__)

TASK = "dvae"
DEFAULT_DATA = ("data/t2i", "data/shapes")
EVAL_BATCH = 256
KMEANS_IMAGES = 1024  # training images whose cells place a one-layer head's centroids
HEAD_SCALE = 4.0

# Whole epochs (validation after each, on a few hundred images, so that the run's best
# checkpoint is its last), AdamW with a cosine schedule.
DVAE_TRAINER = {"epochs": 6, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100,
                "schedule": "cosine", "grad_clip": 1.0, "amp": False, "log_every": 25,
                "save_every": 500, "eval_every": 1, "early_stop_metric": None}


@dataclass
class DVAETaskConfig:
    data: list[str] = field(default_factory=lambda: list(DEFAULT_DATA))
    image_size: int = 64
    train_images: int | None = None  # the first N training images of each dataset (None: all)
    val_images: int = 250  # per dataset
    encoder_init: str | None = None  # `glimpse train encoder` run: the frozen code encoder
    # Feature matching: a `glimpse train encoder` run whose frozen annotation grid the
    # reconstruction must match (squared distance of the layer-normalised grids, times
    # perceptual_weight, added to the pixel MSE). None or weight 0: pixels only.
    perceptual_init: str | None = None
    perceptual_weight: float = 0.0
    model: dict = field(default_factory=dict)  # DVAEConfig overrides (image_size is ours)
    trainer: dict = field(default_factory=dict)  # TrainerConfig settings over DVAE_TRAINER

    @classmethod
    def from_dict(cls, d: dict) -> DVAETaskConfig:
        cfg = config_from_dict(cls, d, "dVAE training")
        if isinstance(cfg.data, str):
            cfg.data = [cfg.data]
        cfg.trainer = {**DVAE_TRAINER, **cfg.trainer}
        DVAEConfig.from_dict(cfg.model_settings())  # refuse a bad grid or size now
        if cfg.perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {cfg.perceptual_weight}")
        if cfg.perceptual_weight > 0 and not cfg.perceptual_init:
            raise ValueError("perceptual_weight > 0 needs perceptual_init (an encoder run)")
        return cfg

    def model_settings(self) -> dict:
        return {**self.model, "image_size": self.image_size}


class AnnealedDVAE(nn.Module):
    """The dVAE with its training step as a buffer: each training forward uses tau and
    beta of that step, then counts it."""

    def __init__(self, dvae: DiscreteVAE) -> None:
        super().__init__()
        self.dvae = dvae
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, images: torch.Tensor) -> tuple[DVAEOutput, float, float]:
        cfg = self.dvae.config
        step = int(self.step)
        tau, beta = cfg.temperature(step), cfg.kl_weight_at(step)
        out = self.dvae(images, temperature=tau, kl_weight=beta)
        if self.training:
            self.step += 1
        return out, tau, beta


@torch.no_grad()
def init_head_by_kmeans(encoder: BackboneEncoder, images_uint8: torch.Tensor, seed: int,
                        images: int = KMEANS_IMAGES) -> None:
    """Start a one-layer head on the k-means centroids of the normalised annotation
    vectors of `images` training images, at a scale of HEAD_SCALE logits per mean squared
    distance of a cell to its nearest centroid: enough for the nearest code to outweigh
    most Gumbel draws at temperature 1."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(images_uint8), generator=gen)[:images]
    cells = torch.cat([encoder.cells(images_uint8[rows[i:i + EVAL_BATCH]].float().div(255))
                       for i in range(0, len(rows), EVAL_BATCH)])
    x = cells.permute(0, 2, 3, 1).reshape(-1, cells.shape[1])
    k = encoder.head[0].out_channels
    centroids = kmeans(x, k, seed=seed)
    nearest = torch.cdist(x, centroids).min(1).values.pow(2).mean()
    encoder.init_from_centroids(centroids, scale=float(HEAD_SCALE / nearest.clamp(min=1e-6)))
    log.info("dVAE head: k-means of %d cells into %d codes, mean squared distance %.2f",
             len(x), k, float(nearest))


class FeatureMatch(nn.Module):
    """Squared distance between the frozen encoder's annotation grids of a reconstruction
    and of its image, each annotation vector layer-normalised (no affine), mean per value.

    Pixel MSE lets the dVAE spend its codes on what covers most pixels (colour, size,
    background) and draw every object as a blob of the right colour: an object's shape is
    a few dozen pixels of its edge. The encoder's grid names an object's shape in every
    cell it covers (a linear probe of the centre cell: accuracy 1.0), so matching it makes
    the shape part of what the codes must carry. The gradient reaches the reconstruction
    through the encoder, whose weights and BatchNorm statistics stay as pre-trained."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FeatureMatch:
        return self  # always eval: the encoder's statistics are not the dVAE's to change

    def features(self, images: torch.Tensor) -> torch.Tensor:
        _, grid = self.encoder(images)  # (B, L, D)
        return F.layer_norm(grid, grid.shape[-1:])

    def forward(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(images)
        return F.mse_loss(self.features(reconstruction), target)


def psnr(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image (B,), pixels in [0, 1]."""
    mse = (reconstruction - images).pow(2).flatten(1).mean(dim=1).clamp(min=1e-10)
    return 10.0 * torch.log10(1.0 / mse)


@torch.no_grad()
def reconstruction_metrics(dvae: DiscreteVAE, images_uint8: torch.Tensor,
                           batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """Mean PSNR of the hard-code reconstructions (encode -> argmax -> decode) of uint8
    images (N, 3, S, S), and the codebook usage of their codes."""
    device = next(dvae.parameters()).device
    scores, codes = [], []
    for start in range(0, len(images_uint8), batch_size):
        x = images_uint8[start:start + batch_size].to(device).float().div_(255)
        ids = dvae.encode(x)
        scores.append(psnr(dvae.decode(ids), x).cpu())
        codes.append(ids.cpu())
    usage = codebook_usage(torch.cat(codes), dvae.config.codebook_size)
    return {"psnr": float(torch.cat(scores).mean()), **usage}


class DVAETask:
    """Images of the configured datasets -> reconstruction loss + beta * KL."""

    def __init__(self, cfg: DVAETaskConfig) -> None:
        self.cfg = cfg
        settings, self.encoder_weights = cfg.model_settings(), None
        if cfg.encoder_init:
            settings["backbone"], self.encoder_weights = pretrained_encoder(cfg.encoder_init)
        self.model_cfg = DVAEConfig.from_dict(settings)
        self.feature_match: FeatureMatch | None = None
        if cfg.perceptual_init and cfg.perceptual_weight > 0:
            self.feature_match = FeatureMatch(frozen_encoder(cfg.perceptual_init)[2])
        train, val = [], []
        for data in map(Path, cfg.data):
            images = load_captions(data, "train")[:cfg.train_images]
            train.append(load_images(data, images, cfg.image_size))
            val.append(load_images(data, load_captions(data, "val")[:cfg.val_images],
                                   cfg.image_size))
        self.train_x, self.val_x = torch.cat(train), torch.cat(val)
        log.info("dVAE: %d training and %d validation images from %s", len(self.train_x),
                 len(self.val_x), ", ".join(cfg.data))

    def build_model(self) -> AnnealedDVAE:
        dvae = DiscreteVAE(self.model_cfg)
        if self.encoder_weights is not None:
            dvae.encoder.backbone.load_state_dict(self.encoder_weights)
            if not self.model_cfg.head_channels:
                init_head_by_kmeans(dvae.encoder, self.train_x,
                                    self.cfg.trainer.get("seed", TrainerConfig.seed))
        return AnnealedDVAE(dvae)

    def model_config(self) -> dict:
        return {"task": TASK, "dvae": self.model_cfg.to_dict(),
                "data": {"dirs": list(self.cfg.data), "train_images": len(self.train_x)},
                "task_config": asdict(self.cfg)}

    def num_examples(self) -> int:
        return len(self.train_x)

    def batch(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self.train_x[indices].to(device).float().div_(255)

    def loss(self, model: AnnealedDVAE, images: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        out, tau, beta = model(images)
        mse = float(out.recon_loss.detach())
        logs = {"recon_mse": mse, "psnr_relaxed": -10.0 * math.log10(max(mse, 1e-10)),
                "kl": float(out.kl.detach()), "tau": tau, "beta": beta}
        loss = out.loss
        if self.feature_match is not None:
            self.feature_match.to(images.device)
            features = self.feature_match(out.recon, images)
            loss = loss + self.cfg.perceptual_weight * features
            logs["feature_mse"] = float(features.detach())
        return loss, logs

    def evaluate(self, model: AnnealedDVAE) -> dict[str, float]:
        return reconstruction_metrics(model.dvae, self.val_x)

    def callbacks(self) -> list[Callback]:
        return [ReconstructionGrid(self.val_x[:8]), JsonLines("history.jsonl")]


def split_metrics(task: DVAETask, run_dir: Path) -> dict:
    """Hard-code PSNR and codebook usage of the trained dVAE on the test and novel split
    of every dataset (summary.json's "final")."""
    dvae = load_dvae(run_dir)
    out: dict[str, dict] = {}
    for data in map(Path, task.cfg.data):
        for split in ("test", "novel"):
            images = load_images(data, load_captions(data, split), task.cfg.image_size)
            out[f"{data.name}/{split}"] = reconstruction_metrics(dvae, images)
    return out


class ReconstructionGrid(Callback):
    """RUN/samples/reconstructions.png after the last step: validation images (top row)
    over their hard-code reconstructions (bottom row)."""

    def __init__(self, images_uint8: torch.Tensor) -> None:
        self.images = images_uint8

    @torch.no_grad()
    def on_fit_end(self, trainer: Trainer) -> None:
        dvae = trainer.model.dvae
        was_training = dvae.training
        dvae.eval()
        device = next(dvae.parameters()).device
        x = self.images.to(device).float().div_(255)
        recon = dvae.decode(dvae.encode(x))
        dvae.train(was_training)
        rows = torch.cat([x, recon]).clamp(0, 1).mul(255).round().byte().cpu()
        save_image_rows(rows.permute(0, 2, 3, 1).numpy(), len(x),
                        trainer.run_dir / "samples" / "reconstructions.png")


train = TrainingCommand(config=DVAETaskConfig, task=DVAETask,
                        flags=("data", "encoder_init", "perceptual_init"),
                        final_metrics=split_metrics)
