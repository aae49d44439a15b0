"""StackGAN (Zhang et al. 2017) on the Trainer: `glimpse train stackgan --stage 1|2`.

Both stages train as the GAN task does (training.tasks.gan), with the
matching-aware loss of GAN-CLS, plus the KL term of conditioning augmentation
in G's loss (Eq. 3-6), and by default with GAN-INT-CLS's stabilisers, warm-up and
discriminator options (configs/stackgan_zhang2017.json turns them off). Stage-I
draws 64 px; Stage-II refines it to 128 px on top of a frozen Stage-I run and embeds
text as that run did.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.gan import init_dcgan_weights
from models.stackgan import (
    StackGanConfig,
    StageDiscriminator,
    StageIGenerator,
    StageIIGenerator,
    kl_to_standard_normal,
)
from training.checkpoint import checkpoint_dir, load_config
from training.runs import load_generator
from training.tasks import TrainingCommand
from training.tasks.gan import GanTask, GanTaskConfig

STACKGAN_VARIANTS = ("stackgan-1", "stackgan-2")


@dataclass
class StackGanTaskConfig(GanTaskConfig):
    variant: str = "stackgan-1"  # one of VARIANTS
    stage1_run: str | None = None  # stackgan-2: the Stage-I run it refines
    # lambda of Zhang et al. Eq. 6 (1 there). At 1 the KL term keeps sigma near 1 and the
    # prompt's part of c near 0, so c carries too little of the text to name one of 112
    # classes and G draws the same thing for every prompt (docs/results.md); 0.02 keeps it.
    kl_weight: float = 0.02
    # stackgan-2: weight of the L1 distance between the Stage-II image, average-pooled to
    # 64 px, and the Stage-I image it refines (0: off). Nothing else in Stage II's loss ties
    # its picture to Stage I's, and a longer game drifts away from Stage I's shapes.
    stage1_anchor: float = 0.0
    # The stabilisers, discriminator options and steps are GAN-INT-CLS's measured recipe
    # (GanTaskConfig); configs/stackgan_zhang2017.json is Zhang et al.'s own.

    VARIANTS: ClassVar[tuple[str, ...]] = STACKGAN_VARIANTS
    # GAN-INT-CLS's discriminator options, those a StackGanConfig has (not spectral_norm),
    # and a Stage II that corrects the upsampled Stage-I image: redrawing it from scratch
    # lost Stage I's shapes and doubled its FID on the same budget (docs/results.md).
    MODEL_DEFAULTS: ClassVar[dict] = {
        **{k: v for k, v in GanTaskConfig.MODEL_DEFAULTS.items()
           if k in StackGanConfig.__dataclass_fields__},
        "residual_output": True}

    @classmethod
    def from_dict(cls, d: dict) -> StackGanTaskConfig:
        cfg = super().from_dict(d)
        if cfg.variant == "stackgan-2" and not cfg.stage1_run:
            raise ValueError("stackgan-2 needs the Stage-I run (--stage1-run)")
        if cfg.stage1_anchor < 0 or (cfg.stage1_anchor and cfg.variant != "stackgan-2"):
            raise ValueError("stage1_anchor is a weight >= 0 of Stage II's tie to its Stage-I "
                             "image; a Stage-I run has no Stage I to tie to")
        return cfg

    @property
    def stage(self) -> int:
        return STACKGAN_VARIANTS.index(self.variant) + 1

    @property
    def matching_aware(self) -> bool:
        return True

    @property
    def interpolates(self) -> bool:
        return False


def load_stage1_generator(run_dir: Path) -> tuple[StageIGenerator, dict]:
    """The trained, frozen Stage-I generator of a run, and its run's model config."""
    generator, info = load_generator(run_dir)
    if info["variant"] != "stackgan-1":
        raise ValueError(f"{run_dir}: a {info['variant']} run, not a StackGAN Stage-I run")
    for p in generator.parameters():
        p.requires_grad_(False)
    return generator, load_config(checkpoint_dir(run_dir))["model"]


class StackGanTask(GanTask):
    """A StackGAN stage: the GAN task's two-player step with StackGAN's networks and KL."""

    cfg: StackGanTaskConfig

    @property
    def kl_weight(self) -> float:
        return self.cfg.kl_weight

    def text_encoder_spec(self) -> str | dict:
        """Stage-II embeds text exactly as the Stage-I run it refines."""
        if self.cfg.stage == 2:
            return self.stage1_config()["text_encoder"]
        return self.cfg.text_encoder

    def stage1_config(self) -> dict:
        return load_config(checkpoint_dir(Path(self.cfg.stage1_run)))["model"]

    def stack_config(self) -> StackGanConfig:
        return StackGanConfig.from_dict({"embed_dim": self.embed_dim, **self.model_overrides()})

    def model_section(self) -> dict:
        section = {"architecture": "stackgan", "stage": self.cfg.stage,
                   "generator": self.stack_config().to_dict()}
        if self.cfg.stage == 2:
            section.update(stage1=self.stage1_config()["generator"],
                           stage1_run=self.cfg.stage1_run)
        return section

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        stack = self.stack_config()
        if self.cfg.stage == 1:
            generator, discriminator = StageIGenerator(stack), StageDiscriminator(stack, 64)
            init_dcgan_weights(discriminator)
            init_dcgan_weights(generator)
            return generator, discriminator
        stage1, _ = load_stage1_generator(Path(self.cfg.stage1_run))
        generator, discriminator = StageIIGenerator(stack, stage1), StageDiscriminator(stack, 128)
        init_dcgan_weights(discriminator)
        generator.init_weights()  # everything but the trained Stage-I
        return generator, discriminator

    def generate(self, generator: nn.Module, text: torch.Tensor,
                 noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fake images and KL(N(mu, Sigma) || N(0, I)) of this stage's conditioning."""
        noise = self.noise(text) if noise is None else noise
        outputs = generator(text, noise)
        mu, log_sigma = outputs[-2], outputs[-1]
        return outputs[0], kl_to_standard_normal(mu, log_sigma)

    def anchor_loss(self, generator: nn.Module, text: torch.Tensor, noise: torch.Tensor,
                    fake: torch.Tensor) -> torch.Tensor | None:
        """Stage II: stage1_anchor x L1(avg-pool of the 128 px image to 64 px, the frozen
        Stage-I image of the same text and noise). Detail finer than 2 px is left free."""
        if not self.cfg.stage1_anchor:
            return None
        stage1 = generator.stage1
        with torch.no_grad():
            low = stage1.sample(text, noise[:, :stage1.noise_dim])
        return self.cfg.stage1_anchor * F.l1_loss(F.avg_pool2d(fake, 2), low)


class StackGanCommand(TrainingCommand):
    """`glimpse train stackgan --stage N`: the stage names the variant."""

    def task_config(self, args: argparse.Namespace) -> StackGanTaskConfig:
        if getattr(args, "stage", None) is not None:
            args.variant = f"stackgan-{args.stage}"
        return super().task_config(args)


train = StackGanCommand(config=StackGanTaskConfig, task=StackGanTask,
                        flags=("data", "variant", "text_encoder", "sample_every", "stage1_run"))
