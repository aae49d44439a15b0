"""Text-to-image GANs of Reed et al. 2016 on the Trainer: `glimpse train gan`.

The text embedding phi(t) is frozen, as in the paper: every distinct training
caption is embedded once by the char-CNN-RNN of a `glimpse train text-encoder`
run (training.data.text_image holds the pairs). The variants differ only in
their losses (models.gan):

    gan          D sees (real, right text) and (fake, right text)
    gan-cls      Algorithm 1: D also sees (real, wrong text), a caption of another class
    gan-int      G also learns from interpolated embeddings beta t1 + (1 - beta) t2 (Eq. 5);
                 D never sees them, as they have no real image
    gan-int-cls  both

The stabilisers of models.gan are options: `loss` "hinge", `ema` (decay of the
exported generator's moving average), `diff_augment` (DiffAugment's policy), `r1`
(gamma), and in `model` spectral_norm / projection; `shape_negatives` makes some of
GAN-CLS's wrong texts differ in shape only, so that D must check the shape (without
them it learns to check colour and size only); `mode_seeking` weighs Mao et al.'s term
that makes G use its noise; `auxiliary` weighs an AC-GAN classifier of the shape,
colour and size in D, and `warm_up` trains that classifier alone on real images for
the run's first steps. With D's `minibatch_std_group` (in `model`) every batch is made of
groups of that many pairs of one class, so that D compares a group of real images of a
prompt with a group of G's samples of it (`minibatch_std_features`: parts of D's
features whose spread is measured apart). GanTaskConfig's defaults are the combination
docs/results.md measured best; configs/gan_reed2016.json turns them all off (the papers'
recipe).

Each batch takes one D step then one G step, each with its own Adam: the task
brings its own `configure_optimizers` and `train_step`, and the Trainer does
the rest (batches, progress, checkpoints of both optimizers, exact resume).
StackGAN (training.tasks.stackgan) is this task with other networks and a KL
term; the pieces it shares live here: phi(t), the two-player step, sample
grids and loading a trained generator.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from models.gan import (
    ADVERSARIAL_LOSSES,
    DIFF_AUGMENTATIONS,
    Discriminator,
    GanConfig,
    Generator,
    attribute_loss,
    diff_augment,
    ema_update,
    init_dcgan_weights,
    interpolate_embeddings,
    mode_seeking_loss,
    r1_penalty,
)
from training.callbacks import Callback, JsonLines
from training.data.text_image import (
    TextEmbedder,
    load_pairs,
    mismatched_pairs,
    same_class_pairs,
    shape_swapped_pairs,
    single_object_images,
    to_unit_range,
)
from training.data.world import COLOURS, SHAPES, SIZES
from training.runs import embed_texts, generator_from_config, load_text_encoder
from training.tasks import TrainingCommand
from training.trainer import Trainer, config_from_dict

log = logging.getLogger(__name__)

GAN_VARIANTS = ("gan", "gan-cls", "gan-int", "gan-int-cls")
ATTRIBUTE_CLASSES = (len(SHAPES), len(COLOURS), len(SIZES))  # D's auxiliary classifier
EMA_GENERATOR = "generator_ema"  # the model's key of G's weight average, when kept
BAG_OF_WORDS = "bag-of-words"  # --text-encoder value selecting the development stand-in
# Prompts of the sample grids: every colour, every shape, both sizes, no held-out combination.
GRID_PROMPTS = (
    "a large red circle", "a small orange square", "a large yellow triangle",
    "a small green diamond", "a large cyan star", "a small blue cross",
    "a large purple hexagon", "a small white star",
)


# The Trainer's side of a text-to-image run: a fixed number of steps at a constant learning
# rate, no clipping or autocast (as in the papers), no evaluation (the sample grids and
# `glimpse eval generation` on the exported bundle judge a run).
GAN_TRAINER = {"max_steps": 2000, "batch_size": 64, "lr": 2e-4, "grad_clip": 0.0,
               "warmup_steps": 0, "schedule": "constant", "amp": False, "log_every": 25,
               "save_every": 250, "eval_every": 0, "early_stop_metric": None}


@dataclass
class GanTaskConfig:
    variant: str = "gan-int-cls"  # one of VARIANTS
    data: str = "data/t2i"
    text_encoder: str = "runs/text-encoder"  # run directory, or "bag-of-words" (development)
    model: dict = field(default_factory=dict)  # GanConfig (StackGAN: StackGanConfig) overrides
    beta1: float = 0.5  # Adam's beta1 for both players, as in DCGAN
    interpolation_beta: float = 0.5  # beta of Reed et al. Eq. 5
    sample_every: int = 250  # steps between sample grids (0: only after the last step)
    trainer: dict = field(default_factory=dict)  # TrainerConfig settings over TRAINER_DEFAULTS
    # Stabilisers (models.gan). The defaults are what the ablation of docs/results.md
    # favours; configs/gan_reed2016.json is Reed et al.'s own recipe.
    loss: str = "hinge"  # one of ADVERSARIAL_LOSSES
    ema: float = 0.995  # decay of the generator's weight average that is exported; 0: off
    diff_augment: tuple[str, ...] = ("translation",)  # DiffAugment policy
    r1: float = 0.0  # gamma of the R1 penalty on D; 0: off
    # D's learning rate; None: the trainer's lr (G's). D learns shapes far faster at 1e-3.
    lr_discriminator: float | None = 1e-3
    # Share of GAN-CLS's wrong texts that differ from the right one in shape only (same
    # colour and size); 0: any other class, as in Reed et al.
    shape_negatives: float = 0.0
    mode_seeking: float = 0.1  # weight of the mode-seeking term in G's loss; 0: off
    # Weight of the auxiliary classifier's loss (D names the shape, colour and size of real
    # images; G's images must be named as their prompt says); 0: no classifier
    auxiliary: float = 1.0
    # Steps at the start of a run in which only D's trunk and attribute classifier learn,
    # supervised on real images, before the game: D then tells shapes apart from the first
    # adversarial step (in the game it learns them far more slowly than colour and size).
    warm_up: int = 1500

    VARIANTS: ClassVar[tuple[str, ...]] = GAN_VARIANTS
    # GanConfig settings a run gets unless its `model` says otherwise (a checkpoint's own
    # model config always holds them, so older runs load as they were trained)
    MODEL_DEFAULTS: ClassVar[dict] = {"spectral_norm": False, "projection": True,
                                      "minibatch_std_group": 4, "minibatch_std_features": 16}
    # The Trainer's settings a run gets unless its `trainer` says otherwise: the warm-up,
    # then 8,000 steps of the game.
    TRAINER_DEFAULTS: ClassVar[dict] = {**GAN_TRAINER, "max_steps": 9500}

    @classmethod
    def from_dict(cls, d: dict) -> GanTaskConfig:
        cfg = config_from_dict(cls, d, "text-to-image training")
        if cfg.variant not in cls.VARIANTS:
            raise ValueError(f"unknown variant {cfg.variant!r}")
        if cfg.loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"unknown loss {cfg.loss!r}; one of {sorted(ADVERSARIAL_LOSSES)}")
        cfg.diff_augment = tuple(cfg.diff_augment)
        unknown = set(cfg.diff_augment) - set(DIFF_AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown DiffAugment policy {sorted(unknown)}; "
                             f"known: {sorted(DIFF_AUGMENTATIONS)}")
        if not 0.0 <= cfg.shape_negatives <= 1.0:
            raise ValueError(f"shape_negatives is a share in [0, 1], not {cfg.shape_negatives}")
        if not 0.0 <= cfg.ema < 1.0:
            raise ValueError(f"ema must be a decay in [0, 1), not {cfg.ema}")
        if cfg.warm_up < 0 or (cfg.warm_up and not cfg.auxiliary):
            raise ValueError("warm_up is a number of steps >= 0 and trains D's attribute "
                             "classifier, so it needs auxiliary > 0")
        cfg.trainer = {**cls.TRAINER_DEFAULTS, **cfg.trainer}
        cfg.model = {**cls.MODEL_DEFAULTS, **cfg.model}
        return cfg

    @property
    def matching_aware(self) -> bool:
        return self.variant in ("gan-cls", "gan-int-cls")

    @property
    def interpolates(self) -> bool:
        return self.variant in ("gan-int", "gan-int-cls")


# ------------------------------------------------------------------------ text embeddings


class BagOfWordsEmbedder:
    """Development stand-in for the char-CNN-RNN: a random, frozen linear map of word counts.

    Deterministic given (words, embed_dim, seed); unknown words are ignored.
    """

    def __init__(self, words: Sequence[str], embed_dim: int = 128, seed: int = 0) -> None:
        self.words = list(words)
        self.embed_dim = embed_dim
        self.seed = seed
        self.index = {w: i for i, w in enumerate(self.words)}
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(len(self.words), embed_dim, generator=g)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        counts = torch.zeros(len(texts), len(self.words))
        for row, text in enumerate(texts):
            for word in text.lower().replace(",", " ").replace(";", " ").split():
                if word in self.index:
                    counts[row, self.index[word]] += 1.0
        return counts @ self.weight / counts.sum(1, keepdim=True).clamp(min=1.0).sqrt()

    def describe(self) -> dict:
        return {"type": BAG_OF_WORDS, "words": self.words, "embed_dim": self.embed_dim,
                "seed": self.seed}


def char_cnn_rnn_embedder(run_dir: str | Path) -> tuple[TextEmbedder, dict]:
    """phi(t) of a `glimpse train text-encoder` run, and its description."""
    encoder, alphabet, info = load_text_encoder(run_dir)
    encoder.eval()
    max_length = int(info["max_length"])

    def embed(texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return embed_texts(encoder, alphabet, list(texts), max_length).float().cpu()

    return embed, {"type": "char-cnn-rnn", "run": str(run_dir),
                   "embed_dim": int(info["embed_dim"]), "max_length": max_length}


def text_embedder(spec: str | dict, captions: Sequence[str]) -> tuple[TextEmbedder, dict]:
    """The embedder named by --text-encoder (or a recorded description) and its description."""
    if isinstance(spec, dict):
        if spec["type"] == BAG_OF_WORDS:
            bag = BagOfWordsEmbedder(spec["words"], spec["embed_dim"], spec["seed"])
            return bag, bag.describe()
        return char_cnn_rnn_embedder(spec["run"])
    if spec == BAG_OF_WORDS:
        words = sorted({w for c in captions for w in c.lower().replace(",", " ").split()})
        bag = BagOfWordsEmbedder(words)
        return bag, bag.describe()
    return char_cnn_rnn_embedder(spec)


# --------------------------------------------------------------------------------- task


def class_attributes(classes: torch.Tensor) -> torch.Tensor:
    """(shape, colour, size) ids (N, 3) of world.object_class ids (N,)."""
    per_shape = len(COLOURS) * len(SIZES)
    return torch.stack([classes // per_shape, classes % per_shape // len(SIZES),
                        classes % len(SIZES)], dim=1)


@dataclass
class Batch:
    real: torch.Tensor  # (B, 3, S, S) in [-1, 1]
    text: torch.Tensor  # (B, E) phi of each image's own caption
    wrong_text: torch.Tensor  # (B, E) phi of a caption of another class
    interpolated: torch.Tensor  # (B, E) between the batch's captions and those of a shift
    attributes: torch.Tensor  # (B, 3) shape, colour, size ids of each image (and its text)


def optimizer_updates(optimizer: torch.optim.Optimizer) -> int:
    """How many steps an Adam optimizer has taken (0 before its first): the most any of its
    parameters has had (a parameter without gradients in a step is not counted in it)."""
    return max((int(state["step"]) for state in optimizer.state.values() if "step" in state),
               default=0)


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One gradient step of `optimizer` on `loss`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class GanTask:
    """The two-player game as a Trainer task: per batch, one D step then one G step."""

    kl_weight = 0.0  # conditioning augmentation's lambda; a DCGAN has no KL term

    def __init__(self, cfg: GanTaskConfig) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data)
        captions = [c for _, cs, _ in single_object_images(self.data_dir) for c in cs]
        self.embed, self.text_info = text_embedder(self.text_encoder_spec(), captions)
        self.grid_embeddings = self.embed(GRID_PROMPTS)
        self.embed_dim = self.grid_embeddings.shape[1]
        sizes = generator_from_config(self.model_section())  # untrained: only its sizes count
        self.image_size, self.noise_dim = sizes.image_size, sizes.noise_dim
        self.pairs = load_pairs(self.data_dir, self.image_size, self.embed)

    # -- what differs between GAN and StackGAN -------------------------------
    def text_encoder_spec(self) -> str | dict:
        return self.cfg.text_encoder

    def model_section(self) -> dict:
        """The architecture part of the checkpoint's model config."""
        gan = GanConfig.from_dict({"embed_dim": self.embed_dim, **self.model_overrides()})
        return {"architecture": "dcgan", "generator": gan.to_dict()}

    def model_overrides(self) -> dict:
        """GanConfig settings of the run: the config's, and D's attribute head when the
        auxiliary classifier is on."""
        if not self.cfg.auxiliary:
            return self.cfg.model
        return {**self.cfg.model, "attribute_classes": ATTRIBUTE_CLASSES}

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        """Generator and discriminator, initialised as in DCGAN."""
        gan = GanConfig.from_dict({"embed_dim": self.embed_dim, **self.model_overrides()})
        generator, discriminator = Generator(gan), Discriminator(gan)
        init_dcgan_weights(discriminator)
        init_dcgan_weights(generator)
        return generator, discriminator

    def generate(self, generator: nn.Module, text: torch.Tensor,
                 noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fake images for a batch of embeddings (and noise, drawn if not given), and the KL
        term of conditioning augmentation (zero here)."""
        noise = self.noise(text) if noise is None else noise
        return generator(noise, text), torch.zeros((), device=text.device)

    def noise(self, text: torch.Tensor) -> torch.Tensor:
        """z ~ N(0, I), one per embedding of `text`."""
        return torch.randn(len(text), self.noise_dim, device=text.device)

    def anchor_loss(self, generator: nn.Module, text: torch.Tensor, noise: torch.Tensor,
                    fake: torch.Tensor) -> torch.Tensor | None:
        """A weighted term of G's loss that ties its images to a reference; None: none
        (a DCGAN has nothing to tie them to)."""
        return None

    # -- the Trainer's side ---------------------------------------------------
    def build_model(self) -> nn.ModuleDict:
        generator, discriminator = self.build_networks()
        for network in (generator, discriminator):  # Stage-II: its own networks only
            network.embed_norm.set_statistics(self.pairs.pair_embeddings)
        networks = {"generator": generator, "discriminator": discriminator}
        if self.cfg.ema:  # the weights that are exported (training.runs.load_generator)
            networks[EMA_GENERATOR] = copy.deepcopy(generator).requires_grad_(False)
        return nn.ModuleDict(networks)

    def model_config(self) -> dict:
        return {"task": "generation", "variant": self.cfg.variant, **self.model_section(),
                "image_size": self.image_size, "noise_dim": self.noise_dim,
                "embed_dim": self.embed_dim, "text_encoder": self.text_info,
                "data": {"dir": str(self.data_dir), "train_images": len(self.pairs.images),
                         "train_pairs": len(self.pairs)},
                "task_config": asdict(self.cfg)}

    def num_examples(self) -> int:
        return len(self.pairs)

    @property
    def group(self) -> int:
        """Rows per minibatch-std group of D (0: D has none)."""
        return int(self.cfg.model.get("minibatch_std_group", 0))

    def grouped(self, indices: torch.Tensor) -> torch.Tensor:
        """The batch's pairs as groups of `group` pairs of one class: the first
        len(indices) // group indices each lead a group, and the rest of it is drawn from
        their class."""
        count = len(indices) // self.group
        if count == 0:
            raise ValueError(f"a batch of {len(indices)} pairs has no full minibatch-std "
                             f"group of {self.group}")
        leaders = indices[:count]
        members = same_class_pairs(self.pairs.pair_class, leaders.repeat_interleave(self.group))
        members[::self.group] = leaders
        return members

    def batch(self, indices: torch.Tensor, device: torch.device) -> Batch:
        pairs = self.pairs
        if self.group:
            indices = self.grouped(indices)
        wrong = indices
        if self.cfg.matching_aware:
            wrong = mismatched_pairs(pairs.pair_class, indices)
            if self.cfg.shape_negatives:
                hard = torch.rand(len(indices)) < self.cfg.shape_negatives
                wrong = torch.where(hard, shape_swapped_pairs(pairs.pair_class, indices, wrong),
                                    wrong)
        text = pairs.embeddings[pairs.pair_text[indices]]
        # GAN-INT's partner captions: those of the previous group, so that an interpolated
        # group still shares one pair of classes
        partner = text.roll(max(self.group, 1), dims=0)
        return Batch(
            real=to_unit_range(pairs.images[pairs.pair_image[indices]]).to(device),
            text=text.to(device),
            wrong_text=pairs.embeddings[pairs.pair_text[wrong]].to(device),
            interpolated=interpolate_embeddings(text, partner,
                                                self.cfg.interpolation_beta).to(device),
            attributes=class_attributes(pairs.pair_class[indices]).to(device),
        )

    def configure_optimizers(self, model: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        def adam(parameters, lr: float) -> torch.optim.Adam:
            return torch.optim.Adam([p for p in parameters if p.requires_grad],
                                    lr=lr, betas=(self.cfg.beta1, 0.999))

        lr = self.cfg.trainer["lr"]
        lr_d = lr if self.cfg.lr_discriminator is None else self.cfg.lr_discriminator
        return {"generator": adam(model["generator"].parameters(), lr),
                "discriminator": adam(model["discriminator"].parameters(), lr_d)}

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """What D sees of an image, real or fake: DiffAugment's policy, or the image."""
        return diff_augment(images, self.cfg.diff_augment) if self.cfg.diff_augment else images

    def judge(self, D: nn.Module, images: torch.Tensor, text: torch.Tensor,
              attributes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """D's logits of the (augmented) images against `text`, and with the auxiliary
        classifier on, its attribute loss against `attributes` (None when off)."""
        if not self.cfg.auxiliary:
            return D(self.augment(images), text), None
        logits, named = D(self.augment(images), text, with_attributes=True)
        return logits, attribute_loss(named, attributes)

    def train_step(self, model: nn.ModuleDict, batch: Batch,
                   optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """One D update then one G update (Reed et al. Algorithm 1); returns logged terms.
        During the first `warm_up` steps, one supervised update of D's attribute classifier."""
        cfg, generator, D = self.cfg, model["generator"], model["discriminator"]
        # D is updated once per step in both phases, so its optimizer counts the run's steps
        # (and a resumed run's count comes back with the optimizer's state).
        if optimizer_updates(optimizers["discriminator"]) < cfg.warm_up:
            aux_real = attribute_loss(D.name_attributes(self.augment(batch.real)),
                                      batch.attributes)
            descend(optimizers["discriminator"], aux_real)
            # G's optimizer steps on no gradients (it changes nothing) so that its learning-rate
            # schedule, which the trainer steps after every batch, follows an optimizer step.
            optimizers["generator"].zero_grad(set_to_none=True)
            optimizers["generator"].step()
            return {"aux_real": aux_real.item(), "warm_up": 1.0}
        d_loss, g_loss = ADVERSARIAL_LOSSES[cfg.loss]
        noise = self.noise(batch.text)
        fake, kl = self.generate(generator, batch.text, noise)
        real = batch.real.detach().requires_grad_(True) if cfg.r1 else batch.real
        terms = {}
        s_r, aux_real = self.judge(D, real, batch.text, batch.attributes)
        s_f = D(self.augment(fake.detach()), batch.text)
        s_w = D(self.augment(batch.real), batch.wrong_text) if cfg.matching_aware else None
        loss_d = d_loss(s_r, s_f, s_w)
        if aux_real is not None:
            loss_d = loss_d + cfg.auxiliary * aux_real
            terms["aux_real"] = aux_real.item()
        if cfg.r1:
            penalty = r1_penalty(s_r, real)
            loss_d = loss_d + 0.5 * cfg.r1 * penalty
            terms["r1"] = penalty.item()
        descend(optimizers["discriminator"], loss_d)

        D.requires_grad_(False)  # G's loss flows through D to G; D's own gradients are unused
        s_g, aux_fake = self.judge(D, fake, batch.text, batch.attributes)
        s_i = None
        if cfg.interpolates:
            fake_int, _ = self.generate(generator, batch.interpolated)
            s_i = D(self.augment(fake_int), batch.interpolated)
        loss_g = g_loss(s_g, s_i) + self.kl_weight * kl
        if aux_fake is not None:
            loss_g = loss_g + cfg.auxiliary * aux_fake
            terms["aux_fake"] = aux_fake.item()
        anchor = self.anchor_loss(generator, batch.text, noise, fake)
        if anchor is not None:
            loss_g = loss_g + anchor
            terms["anchor"] = anchor.item()
        if cfg.mode_seeking:
            other_noise = self.noise(batch.text)
            other, _ = self.generate(generator, batch.text, other_noise)
            seeking = mode_seeking_loss(fake, other, noise, other_noise)
            loss_g = loss_g + cfg.mode_seeking * seeking
            terms["mode_seeking"] = seeking.item()
        descend(optimizers["generator"], loss_g)
        D.requires_grad_(True)
        if EMA_GENERATOR in model:
            ema_update(model[EMA_GENERATOR], generator, cfg.ema)
        terms |= {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "kl": kl.item(),
                  "s_real": torch.sigmoid(s_r).mean().item(),
                  "s_fake": torch.sigmoid(s_f).mean().item()}
        if s_w is not None:
            terms["s_wrong"] = torch.sigmoid(s_w).mean().item()
        return terms

    def callbacks(self) -> list[Callback]:
        return [SampleGrid(self.grid_embeddings, every=self.cfg.sample_every),
                JsonLines("history.jsonl")]


# --------------------------------------------------------------------------- samples


class SampleGrid(Callback):
    """RUN/samples/step_NNNNNN.png every `every` steps and after the last: one row per
    GRID_PROMPTS entry, fixed noise, the generator in eval mode (its weight average when
    kept: what a bundle draws)."""

    def __init__(self, embeddings: torch.Tensor, *, every: int, per_prompt: int = 8) -> None:
        self.embeddings = embeddings
        self.every = every
        self.per_prompt = per_prompt

    def on_train_batch_end(self, trainer: Trainer) -> None:
        step = trainer.state["step"]
        if (self.every and step % self.every == 0) or step == trainer.total_steps:
            model = trainer.model
            generator = model[EMA_GENERATOR] if EMA_GENERATOR in model else model["generator"]
            images = sample_grid(generator, self.embeddings, self.per_prompt)
            save_grid(images, self.per_prompt, trainer.run_dir / "samples" / f"step_{step:06d}.png")


@torch.no_grad()
def sample_grid(generator: nn.Module, embeddings: torch.Tensor, per_prompt: int
                ) -> torch.Tensor:
    """(len(embeddings) * per_prompt, 3, S, S): each embedding with the same `per_prompt`
    noises (seeded), drawn in eval mode; the generator is left in the mode it was in."""
    g = torch.Generator().manual_seed(1234)
    device = next(generator.parameters()).device
    noise = torch.randn(per_prompt, generator.noise_dim, generator=g).repeat(len(embeddings), 1)
    text = embeddings.repeat_interleave(per_prompt, dim=0)
    was_training = generator.training
    generator.eval()
    images = generator.sample(text.to(device), noise.to(device)).cpu()
    generator.train(was_training)
    return images


def save_grid(images: torch.Tensor, columns: int, path: Path) -> None:
    """Write (N, 3, S, S) images in [-1, 1] as one PNG, `columns` to a row, 2 px apart."""
    n, _, s, _ = images.shape
    rows = -(-n // columns)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    canvas = np.full((rows * (s + 2), columns * (s + 2), 3), 255, dtype=np.uint8)
    for i, image in enumerate(pixels.numpy()):
        r, c = divmod(i, columns)
        canvas[r * (s + 2):r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


# ----------------------------------------------------------------------------------- CLI


train = TrainingCommand(config=GanTaskConfig, task=GanTask,
                        flags=("data", "variant", "text_encoder", "sample_every"))
