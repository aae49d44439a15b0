"""DALL-E's transformer on the Trainer: `glimpse train dalle`.

One example is one (image, caption) pair of the training splits of one or more
shapes-world datasets (by default the single-object set data/t2i and the 1-4 object
world data/shapes). The caption is tokenised the way the service tokenises a prompt
(service.text.tokenize) into the run's word vocabulary: <bos>, its words, then pads,
which models.dalle turns into the paper's padding token per position. The image is
the G x G grid of codes of a trained dVAE (`glimpse train dvae`): every image is
encoded *once*, when the run starts, and the codes are kept in RUN/codes.npz (a
resumed run, or one on the same dVAE checkpoint, reads them back).

The loss is models.dalle's: text and image cross-entropy weighted 1/8 and 7/8.
Validation reports both on the validation pairs. After the last step a sample grid
(RUN/samples/step_N.png) draws GRID_PROMPTS with the KV cache, as the bundle will.

The run records what `glimpse export` needs besides its weights: the dVAE run, the
retrieval bundle whose joint embedding reranks (`reranker`), and the sampling
defaults the bundle's manifest states (`sampling`). Its task is "dalle": the GANs'
runs are "generation", and training.export.EXPORTERS tells them apart by it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.dalle import Dalle, DalleConfig
from models.dvae import DiscreteVAE
from service.decoding import draw_tokens
from service.text import tokenize
from training.callbacks import Callback, JsonLines
from training.checkpoint import MODEL_FILE, checkpoint_dir
from training.data.images import load_images, save_image_rows
from training.data.readers import CaptionImage, load_captions
from training.data.tokenizer import WordVocab
from training.runs import load_dvae
from training.tasks import TrainingCommand, save_vocab
from training.trainer import Trainer, TrainerConfig, config_from_dict

log = logging.getLogger(__name__)

TASK = "dalle"
DEFAULT_DATA = ("data/t2i", "data/shapes")
CODES_FILE = "codes.npz"
ENCODE_BATCH = 256
EVAL_BATCH = 256
# Rows of the sample grid: single objects (every colour, every shape, both sizes) and
# scenes of two to four objects with relations, none a held-out combination.
GRID_PROMPTS = (
    "a large red circle", "a small blue square", "a large yellow triangle",
    "a small green diamond", "a purple star above a white hexagon",
    "an orange cross to the left of a cyan circle",
    "a blue square, a red diamond and a small yellow circle",
    "a green hexagon below a white star and a purple cross right of an orange square",
)

# A fixed budget of whole epochs, AdamW with warm-up and a cosine schedule (GPT-2's
# recipe, as nanoGPT's); validation after each epoch.
DALLE_TRAINER = {"epochs": 2, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01,
                 "warmup_steps": 200, "schedule": "cosine", "grad_clip": 1.0, "amp": False,
                 "log_every": 25, "save_every": 250, "eval_every": 1,
                 "early_stop_metric": None}
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "candidates": 1}


@dataclass
class DalleTaskConfig:
    data: list[str] = field(default_factory=lambda: list(DEFAULT_DATA))
    dvae_run: str = "runs/dvae"
    train_images: int | None = None  # the first N training images of each dataset (None: all)
    val_images: int = 250  # per dataset
    text_length: int = 24  # L: <bos> and at most L - 1 words
    attention: str | None = None  # overrides model["attention"] ("dense" or "sparse")
    model: dict = field(default_factory=dict)  # DalleConfig overrides (layers, width, ...)
    reranker: str | None = "model_repository/retrieval-vse/2"  # a retrieval bundle
    sampling: dict = field(default_factory=dict)  # the bundle's defaults, over SAMPLING_DEFAULTS
    trainer: dict = field(default_factory=dict)  # TrainerConfig settings over DALLE_TRAINER

    @classmethod
    def from_dict(cls, d: dict) -> DalleTaskConfig:
        cfg = config_from_dict(cls, d, "DALL-E training")
        if isinstance(cfg.data, str):
            cfg.data = [cfg.data]
        unknown = set(cfg.sampling) - set(SAMPLING_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown sampling settings: {sorted(unknown)}")
        cfg.sampling = {**SAMPLING_DEFAULTS, **cfg.sampling}
        cfg.trainer = {**DALLE_TRAINER, **cfg.trainer}
        return cfg

    def model_settings(self) -> dict:
        settings = dict(self.model)
        if self.attention is not None:
            settings["attention"] = self.attention
        return settings


@dataclass
class PairSet:
    """(image, caption) pairs of one split: word ids per pair, codes per image."""

    text: torch.Tensor  # (P, L) int64: <bos>, word ids, 0 pads
    pair_image: torch.Tensor  # (P,) row of each pair's image in `codes`
    codes: torch.Tensor  # (N, G*G) int64

    def __len__(self) -> int:
        return len(self.pair_image)


def caption_ids(vocab: WordVocab, caption: str, length: int) -> list[int] | None:
    """<bos> and the caption's word ids, padded to `length`; None when it is longer."""
    ids = [vocab.bos_id, *vocab.encode(tokenize(caption))]
    if len(ids) > length:
        return None
    return ids + [vocab.pad_id] * (length - len(ids))


def build_vocab(images: list[CaptionImage]) -> WordVocab:
    """Every word of the training captions, tokenised as the service tokenises prompts."""
    return WordVocab.build(tokenize(c) for im in images for c in im.captions)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def encode_codes(dvae: DiscreteVAE, images_uint8: torch.Tensor,
                 batch_size: int = ENCODE_BATCH) -> torch.Tensor:
    """(N, G*G) code ids of uint8 images (N, 3, S, S), raster order."""
    out = [dvae.encode(images_uint8[i:i + batch_size].float().div_(255)).flatten(1)
           for i in range(0, len(images_uint8), batch_size)]
    return torch.cat(out)


class DalleTask:
    """Caption words and dVAE codes -> the transformer's weighted cross-entropy."""

    def __init__(self, cfg: DalleTaskConfig, cache_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.dvae = load_dvae(cfg.dvae_run)
        self.dvae_checkpoint = checkpoint_dir(Path(cfg.dvae_run))
        splits = {"train": [], "val": []}
        for data in map(Path, cfg.data):
            splits["train"].append((data, load_captions(data, "train")[:cfg.train_images]))
            splits["val"].append((data, load_captions(data, "val")[:cfg.val_images]))
        self.vocab = build_vocab([im for _, ims in splits["train"] for im in ims])
        d = self.dvae.config
        self.model_cfg = DalleConfig.from_dict({
            **cfg.model_settings(), "text_vocab_size": len(self.vocab),
            "text_length": cfg.text_length, "image_vocab_size": d.codebook_size,
            "image_grid": d.grid, "pad_id": self.vocab.pad_id})
        codes = self._codes(splits, cache_dir)
        self.train = self._pairs(splits["train"], codes["train"])
        self.val = self._pairs(splits["val"], codes["val"])
        self.grid_text = torch.tensor([caption_ids(self.vocab, p, cfg.text_length)
                                       for p in GRID_PROMPTS])
        log.info("DALL-E: %d training pairs of %d images, %d validation pairs; %d words",
                 len(self.train), len(self.train.codes), len(self.val), len(self.vocab))

    def _codes(self, splits: dict[str, list[tuple[Path, list[CaptionImage]]]],
               cache_dir: Path | None) -> dict[str, torch.Tensor]:
        """Each split's codes, from the cache when it holds this dVAE's codes of these images."""
        source = file_digest(self.dvae_checkpoint / MODEL_FILE)
        images = {s: [f"{data}/{im.path}" for data, ims in parts for im in ims]
                  for s, parts in splits.items()}
        key = hashlib.sha256(repr((source, images)).encode()).hexdigest()
        cache = None if cache_dir is None else Path(cache_dir) / CODES_FILE
        if cache is not None and cache.exists():
            stored = np.load(cache)
            if str(stored["key"]) == key:
                log.info("codes of %s read from %s", self.dvae_checkpoint, cache)
                return {s: torch.from_numpy(stored[s]) for s in splits}
        codes = {}
        for split, parts in splits.items():
            encoded = [encode_codes(self.dvae, load_images(data, ims, self.dvae.config.image_size))
                       for data, ims in parts]
            codes[split] = torch.cat(encoded)
            log.info("encoded %d %s images to codes", len(codes[split]), split)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, key=np.array(key), **{s: c.numpy() for s, c in codes.items()})
        return codes

    def _pairs(self, parts: list[tuple[Path, list[CaptionImage]]], codes: torch.Tensor
               ) -> PairSet:
        text, pair_image, skipped = [], [], 0
        images = [im for _, ims in parts for im in ims]
        for row, im in enumerate(images):
            for caption in im.captions:
                ids = caption_ids(self.vocab, caption, self.cfg.text_length)
                if ids is None:
                    skipped += 1
                    continue
                text.append(ids)
                pair_image.append(row)
        if skipped:
            log.warning("%d captions longer than %d words left out", skipped,
                        self.cfg.text_length - 1)
        return PairSet(torch.tensor(text), torch.tensor(pair_image), codes)

    # -- the Trainer's side ---------------------------------------------------
    def build_model(self) -> Dalle:
        return Dalle(self.model_cfg)

    def model_config(self) -> dict:
        return {"task": TASK, "dalle": self.model_cfg.to_dict(),
                "dvae_run": str(self.cfg.dvae_run), "dvae_checkpoint": str(self.dvae_checkpoint),
                "dvae": self.dvae.config.to_dict(), "reranker": self.cfg.reranker,
                "sampling": dict(self.cfg.sampling),
                "data": {"dirs": list(self.cfg.data), "train_images": len(self.train.codes),
                         "train_pairs": len(self.train)},
                "task_config": asdict(self.cfg)}

    def num_examples(self) -> int:
        return len(self.train)

    def batch(self, indices: torch.Tensor, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = self.train
        return (pairs.text[indices].to(device),
                pairs.codes[pairs.pair_image[indices]].to(device))

    def loss(self, model: Dalle, batch: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(*batch)
        return out.loss, {"text_loss": float(out.text_loss.detach()),
                          "image_loss": float(out.image_loss.detach())}

    def evaluate(self, model: Dalle) -> dict[str, float]:
        device = next(model.parameters()).device
        sums = {"text_loss": 0.0, "image_loss": 0.0}
        pairs = self.val
        for start in range(0, len(pairs), EVAL_BATCH):
            idx = torch.arange(start, min(start + EVAL_BATCH, len(pairs)))
            out = model(pairs.text[idx].to(device), pairs.codes[pairs.pair_image[idx]].to(device))
            sums["text_loss"] += float(out.text_loss) * len(idx)
            sums["image_loss"] += float(out.image_loss) * len(idx)
        return {k: v / len(pairs) for k, v in sums.items()}

    def callbacks(self) -> list[Callback]:
        return [DalleSampleGrid(self.grid_text, self.dvae), JsonLines("history.jsonl")]


# ------------------------------------------------------------------------ samples


@torch.no_grad()
def sample_codes(dalle: Dalle, text: torch.Tensor, *, seed: int = 0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
                 ) -> torch.Tensor:
    """(B, G*G) codes drawn for prompts `text` (B, L) with the KV cache (prefill, then one
    step per code), each code by service.decoding.draw_tokens as the service draws it."""
    cfg = dalle.config
    rng = np.random.default_rng(seed)
    n = len(text)
    settings = (np.full(n, temperature), np.full(n, top_k, np.int64), np.full(n, top_p))
    logits, past = dalle.prefill(text)
    codes = torch.zeros(n, cfg.image_length, dtype=torch.long, device=text.device)
    for i in range(cfg.image_length):
        drawn = draw_tokens(logits.float().cpu().numpy(), *settings, rng.random(n))
        codes[:, i] = torch.from_numpy(drawn).to(text.device)
        if i + 1 < cfg.image_length:
            position = torch.full((n,), cfg.text_length + i, device=text.device)
            logits, past = dalle.step(codes[:, i], position, past)
    return codes


class DalleSampleGrid(Callback):
    """RUN/samples/step_N.png after the last step: one row per GRID_PROMPTS entry, eight
    samples each (seeded), the transformer in eval mode."""

    def __init__(self, text: torch.Tensor, dvae: DiscreteVAE, per_prompt: int = 8) -> None:
        self.text = text
        self.dvae = dvae
        self.per_prompt = per_prompt

    def on_fit_end(self, trainer: Trainer) -> None:
        model: nn.Module = trainer.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        text = self.text.repeat_interleave(self.per_prompt, dim=0).to(device)
        codes = sample_codes(model, text).cpu()
        model.train(was_training)
        grid = model.config.image_grid
        with torch.no_grad():
            images = self.dvae.decode(codes.view(-1, grid, grid))
        pixels = images.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
        path = trainer.run_dir / "samples" / f"step_{trainer.state['step']:06d}.png"
        save_image_rows(pixels, self.per_prompt, path)


# ----------------------------------------------------------------------------- CLI


class DalleTraining(TrainingCommand):
    def build_task(self, config: DalleTaskConfig, run_dir: Path,
                   trainer_config: TrainerConfig) -> DalleTask:
        # The dVAE codes of every image are computed once and kept in the run directory.
        return DalleTask(config, cache_dir=run_dir)


train = DalleTraining(config=DalleTaskConfig, task=DalleTask,
                      flags=("data", "dvae_run", "attention", "reranker"),
                      run_files=save_vocab)
