"""Text-to-image GANs: `glimpse train gan` (Reed et al. 2016) and `glimpse train stackgan`.

Data: the single-object text-to-image set of the shapes world (captions.json in
Karpathy format, scenes.json for each image's class), images resized once to
the generator's side and held in memory as uint8. The text embedding phi(t) is
frozen, as in both papers: every distinct training caption is embedded once by
the char-CNN-RNN of a `glimpse train text-encoder` run. One example is one
(image, caption) pair.

The variants of Reed et al. differ only in their losses:

    gan          D sees (real, right text) and (fake, right text)
    gan-cls      Algorithm 1: D also sees (real, wrong text), a caption of another class
    gan-int      G also learns from interpolated embeddings beta t1 + (1 - beta) t2 (Eq. 5);
                 D never sees them, as they have no real image
    gan-int-cls  both

StackGAN's stages use the matching-aware loss of GAN-CLS, plus the KL term of
conditioning augmentation in G's loss (Zhang et al. 2017, Eq. 3-6). Stage-II
trains on top of a frozen Stage-I run.

There is one Adam over two parameter groups, generator and discriminator,
stepped alternately: Adam updates only parameters that hold a gradient, so this
is exactly two optimizers, and it checkpoints (training.checkpoint) as one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from tqdm.auto import tqdm

from models.gan import Discriminator, GanConfig, Generator, init_dcgan_weights
from models.stackgan import (
    StackGanConfig,
    StageDiscriminator,
    StageIGenerator,
    StageIIGenerator,
    kl_to_standard_normal,
)
from training.checkpoint import (
    checkpoint_dir,
    load_config,
    load_training_state,
    load_weights,
    save_checkpoint,
)
from training.trainer import config_from_dict, seed_everything

log = logging.getLogger(__name__)

GAN_VARIANTS = ("gan", "gan-cls", "gan-int", "gan-int-cls")
STACKGAN_VARIANTS = ("stackgan-1", "stackgan-2")
BAG_OF_WORDS = "bag-of-words"  # --text-encoder value selecting the development stand-in
# Prompts of the sample grids: every colour, every shape, both sizes, no held-out combination.
GRID_PROMPTS = (
    "a large red circle", "a small orange square", "a large yellow triangle",
    "a small green diamond", "a large cyan star", "a small blue cross",
    "a large purple hexagon", "a small white star",
)

TextEmbedder = Callable[[Sequence[str]], torch.Tensor]


@dataclass
class GanTaskConfig:
    variant: str = "gan-int-cls"  # one of GAN_VARIANTS or STACKGAN_VARIANTS
    data: str = "data/t2i"
    text_encoder: str = "runs/text-encoder"  # run directory, or "bag-of-words" (development)
    stage1_run: str | None = None  # stackgan-2: the Stage-I run it refines
    model: dict = field(default_factory=dict)  # GanConfig / StackGanConfig overrides
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    kl_weight: float = 1.0  # lambda of Zhang et al. Eq. 6
    interpolation_beta: float = 0.5  # beta of Reed et al. Eq. 5
    sample_every: int = 250
    save_every: int = 250
    log_every: int = 25
    seed: int = 0
    device: str | None = None
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> GanTaskConfig:
        cfg = config_from_dict(cls, d, "text-to-image training")
        if cfg.variant not in GAN_VARIANTS + STACKGAN_VARIANTS:
            raise ValueError(f"unknown variant {cfg.variant!r}")
        if cfg.variant == "stackgan-2" and not cfg.stage1_run:
            raise ValueError("stackgan-2 needs the Stage-I run (--stage1-run)")
        return cfg

    @property
    def matching_aware(self) -> bool:
        return self.variant in ("gan-cls", "gan-int-cls", *STACKGAN_VARIANTS)

    @property
    def interpolates(self) -> bool:
        return self.variant in ("gan-int", "gan-int-cls")


# ----------------------------------------------------------------------------- losses


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor,
                       wrong: torch.Tensor | None = None) -> torch.Tensor:
    """D's loss from logits of (real, right text), (fake, right text) and (real, wrong text).

    Without `wrong`: the conditional GAN, -log s_r - log(1 - s_f). With it, Reed et
    al. Algorithm 1: L_D = log s_r + (log(1 - s_w) + log(1 - s_f)) / 2, negated.
    """
    loss_real = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
    loss_fake = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    if wrong is None:
        return loss_real + loss_fake
    loss_wrong = F.binary_cross_entropy_with_logits(wrong, torch.zeros_like(wrong))
    return loss_real + 0.5 * (loss_wrong + loss_fake)


def generator_loss(fake: torch.Tensor, interpolated: torch.Tensor | None = None) -> torch.Tensor:
    """G's non-saturating loss -log s_f, plus -log D(G(z, t_int), t_int) for GAN-INT (Eq. 5)."""
    loss = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if interpolated is not None:
        loss = loss + F.binary_cross_entropy_with_logits(interpolated,
                                                         torch.ones_like(interpolated))
    return loss


def interpolate_embeddings(t1: torch.Tensor, t2: torch.Tensor, beta: float) -> torch.Tensor:
    """beta t1 + (1 - beta) t2 (Reed et al. Eq. 5): points between two captions' embeddings."""
    return beta * t1 + (1.0 - beta) * t2


def mismatched_pairs(classes: torch.Tensor, chosen: torch.Tensor, *, tries: int = 20
                     ) -> torch.Tensor:
    """For each pair index in `chosen`, a random pair whose image is of another class."""
    n = len(classes)
    other = torch.randint(0, n, chosen.shape)
    for _ in range(tries):
        same = classes[other] == classes[chosen]
        if not same.any():
            return other
        other[same] = torch.randint(0, n, (int(same.sum()),))
    raise ValueError("mismatched texts need images of at least two classes")


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
    from training.runs import embed_texts, load_text_encoder

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


def embed_unique(embedder: TextEmbedder, texts: Sequence[str], chunk: int = 512
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of the distinct texts (U, E) and each text's row in them (N,)."""
    unique = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(unique)}
    table = torch.cat([embedder(unique[i:i + chunk]) for i in range(0, len(unique), chunk)])
    return table, torch.tensor([row[t] for t in texts], dtype=torch.long)


# ---------------------------------------------------------------------------------- data


@dataclass
class TextImagePairs:
    """Training pairs of the single-object set: images, their classes, caption embeddings."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    image_class: torch.Tensor  # (N,) shape-colour class of each image's object
    pair_image: torch.Tensor  # (P,) image of each (image, caption) pair
    pair_text: torch.Tensor  # (P,) row of the pair's caption in `embeddings`
    embeddings: torch.Tensor  # (U, E) phi(t) of every distinct caption

    def __len__(self) -> int:
        return len(self.pair_image)

    @property
    def pair_class(self) -> torch.Tensor:
        return self.image_class[self.pair_image]


def single_object_images(data_dir: Path, split: str = "train") -> list[tuple[str, list[str], int]]:
    """(image path, captions, class) of the split's images that hold exactly one object."""
    from training.data.readers import load_captions
    from training.data.shapes import load_scenes
    from training.data.world import class_label

    scenes = load_scenes(data_dir)
    out = []
    for im in load_captions(data_dir, split):
        objects = scenes[im.imgid].objects
        if len(objects) == 1:
            out.append((im.path, list(im.captions), class_label(objects[0].shape,
                                                                 objects[0].colour)))
    if not out:
        raise ValueError(f"{data_dir}: no single-object {split} images")
    return out


def load_images(data_dir: Path, paths: Sequence[str], size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8, resized bilinearly (the 128 px set feeds 64 px models too)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(data_dir / path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(img)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_pairs(data_dir: Path, image_size: int, embedder: TextEmbedder) -> TextImagePairs:
    items = single_object_images(data_dir)
    t0 = time.perf_counter()
    images = load_images(data_dir, [path for path, _, _ in items], image_size)
    texts = [c for _, captions, _ in items for c in captions]
    embeddings, pair_text = embed_unique(embedder, texts)
    pair_image = torch.tensor([i for i, (_, captions, _) in enumerate(items) for _ in captions])
    log.info("%d images, %d pairs, %d distinct captions in %.1fs", len(items), len(texts),
             len(embeddings), time.perf_counter() - t0)
    return TextImagePairs(images=images, image_class=torch.tensor([c for _, _, c in items]),
                          pair_image=pair_image, pair_text=pair_text, embeddings=embeddings)


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range of the generators' tanh."""
    return images_uint8.float().div_(127.5).sub_(1.0)


# -------------------------------------------------------------------------------- models


def build_models(cfg: GanTaskConfig, embed_dim: int) -> tuple[nn.Module, nn.Module, dict]:
    """Generator, discriminator and the model section of the checkpoint config."""
    if cfg.variant in GAN_VARIANTS:
        gan = GanConfig.from_dict({"embed_dim": embed_dim, **cfg.model})
        generator, discriminator = Generator(gan), Discriminator(gan)
        section = {"architecture": "dcgan", "generator": gan.to_dict()}
    elif cfg.variant == "stackgan-1":
        stack = StackGanConfig.from_dict({"embed_dim": embed_dim, **cfg.model})
        generator, discriminator = StageIGenerator(stack), StageDiscriminator(stack, 64)
        section = {"architecture": "stackgan", "stage": 1, "generator": stack.to_dict()}
    else:
        stage1, stage1_section = _stage1_generator(Path(cfg.stage1_run))
        stack = StackGanConfig.from_dict({"embed_dim": embed_dim, **cfg.model})
        generator, discriminator = StageIIGenerator(stack, stage1), StageDiscriminator(stack, 128)
        section = {"architecture": "stackgan", "stage": 2, "generator": stack.to_dict(),
                   "stage1": stage1_section["generator"], "stage1_run": cfg.stage1_run}
    init_dcgan_weights(discriminator)
    if cfg.variant == "stackgan-2":
        for module in (generator.ca, generator.encode, generator.joint, generator.residual,
                       generator.up):
            init_dcgan_weights(module)
    else:
        init_dcgan_weights(generator)
    return generator, discriminator, section


def _stage1_generator(run_dir: Path) -> tuple[StageIGenerator, dict]:
    generator, info = load_generator(run_dir)
    if info["variant"] != "stackgan-1":
        raise ValueError(f"{run_dir}: a {info['variant']} run, not a StackGAN Stage-I run")
    for p in generator.parameters():
        p.requires_grad_(False)
    return generator, load_config(checkpoint_dir(run_dir))["model"]


def generator_from_config(model_cfg: dict) -> nn.Module:
    """An untrained generator of the architecture a checkpoint config describes."""
    if model_cfg["architecture"] == "dcgan":
        return Generator(GanConfig.from_dict(model_cfg["generator"]))
    stack = StackGanConfig.from_dict(model_cfg["generator"])
    if model_cfg["stage"] == 1:
        return StageIGenerator(stack)
    stage1 = StageIGenerator(StackGanConfig.from_dict(model_cfg["stage1"]))
    return StageIIGenerator(stack, stage1)


def load_generator(run_dir: str | Path) -> tuple[nn.Module, dict]:
    """The trained generator of a run (eval mode) and what a consumer needs to drive it:
    {"variant", "noise_dim", "embed_dim", "image_size", "text_encoder_run"}."""
    ckpt = checkpoint_dir(Path(run_dir))
    model_cfg = load_config(ckpt)["model"]
    if model_cfg.get("task") != "generation":
        raise ValueError(f"{ckpt}: task {model_cfg.get('task')!r} is not a text-to-image run")
    generator = generator_from_config(model_cfg)
    prefix = "generator."
    weights = load_file(str(ckpt / "model.safetensors"))
    generator.load_state_dict({k[len(prefix):]: v for k, v in weights.items()
                               if k.startswith(prefix)})
    generator.eval()
    return generator, {"variant": model_cfg["variant"], "noise_dim": generator.noise_dim,
                       "embed_dim": generator.embed_dim, "image_size": generator.image_size,
                       "text_encoder_run": model_cfg["text_encoder"].get("run")}


# ------------------------------------------------------------------------------ training


@dataclass
class Batch:
    real: torch.Tensor  # (B, 3, S, S) in [-1, 1]
    text: torch.Tensor  # (B, E) phi of each image's own caption
    wrong_text: torch.Tensor  # (B, E) phi of a caption of another class
    interpolated: torch.Tensor  # (B, E) between the batch's captions and those of a shift


class GanTraining:
    """The two-player loop: a D step, then a G step, on each batch."""

    def __init__(self, cfg: GanTaskConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available()
                                                  else "cpu"))
        self.data_dir = Path(cfg.data)
        spec = cfg.text_encoder
        if cfg.variant == "stackgan-2":
            spec = load_config(checkpoint_dir(Path(cfg.stage1_run)))["model"]["text_encoder"]
        captions = [c for _, cs, _ in single_object_images(self.data_dir) for c in cs]
        self.embed, self.text_info = text_embedder(spec, captions)
        seed_everything(cfg.seed)
        probe = self.embed(GRID_PROMPTS[:1])
        self.generator, self.discriminator, self.model_section = build_models(cfg,
                                                                              probe.shape[1])
        self.image_size = self.generator.image_size
        self.pairs = load_pairs(self.data_dir, self.image_size, self.embed)
        train_embeddings = self.pairs.embeddings[self.pairs.pair_text]
        self.generator.embed_norm.set_statistics(train_embeddings)  # Stage-II: its own only
        self.discriminator.embed_norm.set_statistics(train_embeddings)
        self.grid_embeddings = self.embed(GRID_PROMPTS)
        self.models = nn.ModuleDict({"generator": self.generator,
                                     "discriminator": self.discriminator}).to(self.device)
        self.optimizer = torch.optim.Adam(
            [{"params": [p for p in self.generator.parameters() if p.requires_grad]},
             {"params": list(self.discriminator.parameters())}],
            lr=cfg.lr, betas=(cfg.beta1, 0.999))
        self.state = {"step": 0, "train_seconds": 0.0}

    # -- pieces --------------------------------------------------------------
    def batch(self, size: int) -> Batch:
        pairs = self.pairs
        chosen = torch.randint(0, len(pairs), (size,))
        wrong = mismatched_pairs(pairs.pair_class, chosen) if self.cfg.matching_aware else chosen
        text = pairs.embeddings[pairs.pair_text[chosen]]
        partner = text.roll(1, dims=0)
        return Batch(
            real=to_unit_range(pairs.images[pairs.pair_image[chosen]]).to(self.device),
            text=text.to(self.device),
            wrong_text=pairs.embeddings[pairs.pair_text[wrong]].to(self.device),
            interpolated=interpolate_embeddings(text, partner,
                                                self.cfg.interpolation_beta).to(self.device),
        )

    def generate(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fake images for a batch of embeddings, and the KL term of conditioning augmentation."""
        noise = torch.randn(len(text), self.generator.noise_dim, device=self.device)
        if self.cfg.variant in GAN_VARIANTS:
            return self.generator(noise, text), torch.zeros((), device=self.device)
        outputs = self.generator(text, noise)
        mu, log_sigma = outputs[-2], outputs[-1]
        return outputs[0], kl_to_standard_normal(mu, log_sigma)

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One D update then one G update (Reed et al. Algorithm 1); returns logged terms."""
        cfg, D = self.cfg, self.discriminator
        fake, kl = self.generate(batch.text)
        s_r = D(batch.real, batch.text)
        s_f = D(fake.detach(), batch.text)
        s_w = D(batch.real, batch.wrong_text) if cfg.matching_aware else None
        loss_d = discriminator_loss(s_r, s_f, s_w)
        self.optimizer.zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizer.step()

        s_g = D(fake, batch.text)
        s_i = None
        if cfg.interpolates:
            fake_int, _ = self.generate(batch.interpolated)
            s_i = D(fake_int, batch.interpolated)
        loss_g = generator_loss(s_g, s_i) + cfg.kl_weight * kl
        self.optimizer.zero_grad(set_to_none=True)
        loss_g.backward()
        for p in D.parameters():  # D's gradients from G's loss must not move D
            p.grad = None
        self.optimizer.step()
        terms = {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "kl": kl.item(),
                 "s_real": torch.sigmoid(s_r).mean().item(),
                 "s_fake": torch.sigmoid(s_f).mean().item()}
        if s_w is not None:
            terms["s_wrong"] = torch.sigmoid(s_w).mean().item()
        return terms

    # -- the loop ------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> dict:
        cfg = self.cfg
        last = self.run_dir / "checkpoints" / "last"
        if resume:
            if not last.exists():
                raise FileNotFoundError(f"{last}: no checkpoint to resume from")
            load_weights(self.models, last)
            self.state.update(load_training_state(last, optimizer=self.optimizer))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (self.run_dir / "history.jsonl").unlink(missing_ok=True)
        self.models.train()
        bar = tqdm(total=cfg.steps, initial=self.state["step"], disable=not cfg.progress,
                   desc=cfg.variant, unit="step", dynamic_ncols=True)
        started = time.perf_counter()
        while self.state["step"] < cfg.steps:
            terms = self.train_step(self.batch(cfg.batch_size))
            self.state["step"] += 1
            step = self.state["step"]
            bar.update(1)
            if step % cfg.log_every == 0:
                bar.set_postfix(d=f"{terms['loss_d']:.3f}", g=f"{terms['loss_g']:.3f}")
                self._log({"step": step, **terms})
            if step % cfg.sample_every == 0 or step == cfg.steps:
                self.sample_grid(self.run_dir / "samples" / f"step_{step:06d}.png")
            if step % cfg.save_every == 0 or step == cfg.steps:
                self.state["train_seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                self.save()
        bar.close()
        return dict(self.state)

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "history.jsonl", "a") as f:
            f.write(json.dumps({k: round(v, 5) if isinstance(v, float) else v
                                for k, v in record.items()}) + "\n")

    def model_config(self) -> dict:
        return {"task": "generation", "variant": self.cfg.variant, **self.model_section,
                "image_size": self.image_size, "noise_dim": self.generator.noise_dim,
                "embed_dim": self.generator.embed_dim, "text_encoder": self.text_info,
                "data": {"dir": str(self.data_dir), "train_images": len(self.pairs.images),
                         "train_pairs": len(self.pairs)},
                "task_config": asdict(self.cfg)}

    def save(self) -> None:
        config = {"model": self.model_config(), "trainer": {"steps": self.cfg.steps,
                                                            "batch_size": self.cfg.batch_size,
                                                            "lr": self.cfg.lr,
                                                            "beta1": self.cfg.beta1}}
        save_checkpoint(self.run_dir / "checkpoints" / "last", model=self.models, config=config,
                        optimizer=self.optimizer, trainer_state=dict(self.state))

    @torch.no_grad()
    def sample_grid(self, path: Path, per_prompt: int = 8) -> None:
        """One row per GRID_PROMPTS entry, fixed noise, eval mode (what a bundle draws)."""
        g = torch.Generator().manual_seed(1234)
        n = len(GRID_PROMPTS)
        noise = torch.randn(per_prompt, self.generator.noise_dim, generator=g).repeat(n, 1)
        text = self.grid_embeddings.repeat_interleave(per_prompt, dim=0)
        self.generator.eval()
        images = self.generator.sample(text.to(self.device), noise.to(self.device)).cpu()
        self.generator.train()
        save_grid(images, per_prompt, path)


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


def task_config_from_args(args) -> GanTaskConfig:
    raw: dict = json.loads(Path(args.config).read_text()) if args.config else {}
    if getattr(args, "stage", None) is not None:
        raw["variant"] = f"stackgan-{args.stage}"
    elif getattr(args, "variant", None):
        raw["variant"] = args.variant
    for name in ("data", "text_encoder", "stage1_run", "steps", "batch_size", "lr", "device",
                 "seed", "sample_every", "save_every"):
        value = getattr(args, name, None)
        if value is not None:
            raw[name] = value
    return GanTaskConfig.from_dict(raw)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = task_config_from_args(args)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "task.json").write_text(json.dumps(asdict(cfg), indent=2))
    training = GanTraining(cfg, run_dir)
    summary = training.fit(resume=args.resume)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({"run_dir": str(run_dir), "variant": cfg.variant, **summary}))
    return 0
