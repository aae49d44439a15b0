"""Image-sentence retrieval (VSE / VSE++) as a trainer task, and `glimpse train retrieval`.

The image encoder is frozen (pre-trained by `glimpse train encoder`), so its
pooled features are computed once per run and cached in the run directory
(`features.safetensors`, reused while the encoder weights and the data are the
same); a training step runs only the image projection and the GRU.

One training example is one image with one of its sentences drawn at random, so
an epoch sees every image once and a batch never holds two sentences of the same
image (whose pairing the hinge would punish). Words of training sentences are
replaced by <unk> with probability `unk_rate`, so that the <unk> embedding, which
the service uses for words outside the vocabulary, means "some word" rather than
noise. Validation ranks the val split's images against all of its sentences
(training.metrics.retrieval: R@1/5/10, median rank, rsum); rsum drives early
stopping.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.encoder import EncoderConfig, ImageEncoder
from models.vse import VSE, VSEConfig
from training.data.images import load_images
from training.data.readers import CaptionImage, load_captions
from training.data.tokenizer import WordVocab
from training.runs import pretrained_encoder
from training.tasks import TrainingCommand, save_vocab
from training.trainer import TrainerConfig, config_from_dict

log = logging.getLogger(__name__)

FEATURE_CACHE = "features.safetensors"
TRAINER_DEFAULTS = {"early_stop_metric": "rsum", "patience": 5, "batch_size": 128,
                    "lr": 2e-3, "epochs": 30, "warmup_steps": 100}


@dataclass
class VSETaskConfig:
    data: str = "data/shapes"
    layer_norm: bool = False
    loss: str = "max"  # "sum" (VSE, Kiros et al.) or "max" (VSE++, Faghri et al.)
    image_size: int = 64
    max_length: int = 32  # T: words per sentence; the exported text graph takes T tokens
    unk_rate: float = 0.02  # word dropout to <unk> in training sentences
    val_images: int = 500
    model: dict = field(default_factory=dict)  # VSEConfig overrides (embed_dim, margin, ...)
    # Run directory of `glimpse train encoder` whose encoder (frozen) embeds the images;
    # without it the image side is a random frozen encoder (only useful in tests).
    encoder_init: str | None = None
    trainer: dict = field(default_factory=dict)  # TrainerConfig overrides

    @classmethod
    def from_dict(cls, d: dict) -> VSETaskConfig:
        return config_from_dict(cls, d, "retrieval training")


@dataclass
class Sentences:
    """Every sentence of a split as padded ids, and which image each belongs to."""

    tokens: torch.Tensor  # (N, T) long, right-padded
    lengths: torch.Tensor  # (N,) long, >= 1
    image: torch.Tensor  # (N,) index of the sentence's image in the split
    first: torch.Tensor  # (I,) index of each image's first sentence
    count: torch.Tensor  # (I,) sentences per image


def encode_sentences(vocab: WordVocab, images: list[CaptionImage], max_length: int
                     ) -> Sentences:
    rows = [(i, vocab.encode(list(toks))[:max_length])
            for i, im in enumerate(images) for toks in im.tokens]
    tokens = torch.full((len(rows), max_length), vocab.pad_id, dtype=torch.long)
    for k, (_, ids) in enumerate(rows):
        tokens[k, :len(ids)] = torch.tensor(ids)
    counts = torch.tensor([len(im.tokens) for im in images])
    return Sentences(tokens=tokens,
                     lengths=torch.tensor([max(1, len(ids)) for _, ids in rows]),
                     image=torch.tensor([i for i, _ in rows]),
                     first=torch.cumsum(counts, 0) - counts, count=counts)


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def compute_features(model: VSE, images_uint8: torch.Tensor, device: torch.device,
                     batch_size: int = 256) -> torch.Tensor:
    """Frozen pooled features (N, 2D) of (N, 3, S, S) uint8 images."""
    model.eval()
    out = []
    for start in range(0, len(images_uint8), batch_size):
        chunk = images_uint8[start:start + batch_size].to(device).float().div_(255)
        out.append(model.image_features(chunk).cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.feature_dim)


class VSETask:
    def __init__(self, config: VSETaskConfig, cache_dir: str | Path | None = None,
                 device: str | None = None) -> None:
        self.config = config
        self.dataset_dir = Path(config.data)
        train = load_captions(self.dataset_dir, "train", restval_as_train=True)
        val = load_captions(self.dataset_dir, "val")[: config.val_images]
        if not train or not val:
            raise ValueError(f"{self.dataset_dir}: retrieval training needs train and val images")
        self.vocab = WordVocab.build([t for im in train for t in im.tokens])
        self.train_sentences = encode_sentences(self.vocab, train, config.max_length)
        self.val_sentences = encode_sentences(self.vocab, val, config.max_length)
        model_cfg: dict = {"vocab_size": len(self.vocab), "pad_id": self.vocab.pad_id,
                           "layer_norm": config.layer_norm, "loss": config.loss,
                           **config.model}
        if config.encoder_init:
            model_cfg["encoder"], self.encoder_weights = pretrained_encoder(config.encoder_init)
        else:
            encoder_cfg = EncoderConfig(**model_cfg.get("encoder", {}))
            torch.manual_seed(int(config.trainer.get("seed", 0)))
            self.encoder_weights = ImageEncoder(encoder_cfg).state_dict()
        self.vse_config = VSEConfig(**model_cfg)
        self.num_train = len(train)
        self.features = self._features(train, val, cache_dir, device)

    # -- frozen image features -----------------------------------------------
    def _features(self, train: list[CaptionImage], val: list[CaptionImage],
                  cache_dir: str | Path | None, device: str | None) -> dict[str, torch.Tensor]:
        key = {"encoder": weights_digest(self.encoder_weights), "data": str(self.dataset_dir),
               "train": str(len(train)), "val": str(len(val)),
               "image_size": str(self.config.image_size)}
        cache = Path(cache_dir) / FEATURE_CACHE if cache_dir else None
        if cache is not None and cache.exists():
            from safetensors import safe_open

            with safe_open(str(cache), "pt") as f:
                if f.metadata() == key:
                    log.info("image features from %s", cache)
                    return load_file(str(cache))
        started = time.perf_counter()
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        encoder_model = self.build_model().to(dev)
        features = {split: compute_features(encoder_model, load_images(self.dataset_dir, ims,
                                                                       self.config.image_size),
                                            dev)
                    for split, ims in (("train", train), ("val", val))}
        log.info("image features of %d + %d images in %.1fs", len(train), len(val),
                 time.perf_counter() - started)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            save_file(features, str(cache), metadata=key)
        return features

    # -- Task protocol ---------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        model = VSE(self.vse_config)
        model.encoder.load_state_dict(self.encoder_weights)
        return model

    def model_config(self) -> dict:
        return {"task": "retrieval", "vse": self.vse_config.to_dict(),
                "image_size": self.config.image_size, "max_length": self.config.max_length,
                "vocab": self.vocab.to_dict(),
                "data": {"dir": str(self.dataset_dir), "train_images": self.num_train,
                         "train_sentences": len(self.train_sentences.tokens)},
                "task_config": asdict(self.config)}

    def num_examples(self) -> int:
        return self.num_train

    def batch(self, indices: torch.Tensor, device: torch.device):
        s = self.train_sentences
        pick = s.first[indices] + (torch.rand(len(indices)) * s.count[indices]).long()
        lengths = s.lengths[pick]
        tokens = s.tokens[pick, :int(lengths.max())].clone()
        if self.config.unk_rate > 0:
            drop = (torch.rand(tokens.shape) < self.config.unk_rate) & (tokens != self.vocab.pad_id)
            tokens[drop] = self.vocab.unk_id
        return (self.features["train"][indices].to(device), tokens.to(device),
                lengths.to(device), indices.to(device))

    def loss(self, model, batch):
        features, tokens, lengths, image_ids = batch
        _, loss = model(features, tokens, lengths, image_ids)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        from training.metrics.retrieval import retrieval_metrics

        images, sentences = embed_split(model, self.features["val"], self.val_sentences)
        return retrieval_metrics(images @ sentences.T, self.val_sentences.image.numpy())


@torch.no_grad()
def embed_split(model: VSE, features: torch.Tensor, sentences: Sentences,
                batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Joint-space embeddings (I, E) of a split's image features and (N, E) of its sentences."""
    device = next(model.parameters()).device
    images = model.embed_features(features.to(device)).cpu().numpy()
    out = []
    for start in range(0, len(sentences.tokens), batch_size):
        lengths = sentences.lengths[start:start + batch_size]
        tokens = sentences.tokens[start:start + batch_size, :int(lengths.max())]
        out.append(model.embed_text(tokens.to(device), lengths.to(device)).cpu().numpy())
    return images, np.concatenate(out)


# ---------------------------------------------------------------------------- the command


class RetrievalTraining(TrainingCommand):
    def build_task(self, config: VSETaskConfig, run_dir: Path,
                   trainer_config: TrainerConfig) -> VSETask:
        # The frozen image features are cached in the run directory (a resumed run reuses them).
        return VSETask(config, cache_dir=run_dir, device=trainer_config.device)


train = RetrievalTraining(config=VSETaskConfig, task=VSETask,
                          flags=("data", "layer_norm", "loss", "encoder_init"),
                          trainer_defaults=TRAINER_DEFAULTS, run_files=save_vocab)
