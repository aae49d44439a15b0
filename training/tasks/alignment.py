"""Visual-semantic alignment as a trainer task, and `glimpse train alignment`.

`glimpse train alignment` trains models.alignment.AlignmentModel on the
(image, caption) pairs of captions.json. Images are read as the region stage's
precomputed features (DATA/features/regions/{split}.npz, written by `glimpse
features regions` from the frozen RegionNet of --regions-run), so training runs
only the region projection and the BRNN. One training example is one
(image, reference caption) pair; the batch's other images and sentences are the
negatives of the ranking loss (Eq. 9).

Validation measures retrieval and noun-phrase alignment accuracy
(training.metrics.alignment); the accuracy at the bundle's default beta drives
early stopping.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models.alignment import AlignmentConfig, AlignmentModel
from training.data.readers import load_captions
from training.data.region_features import load_region_features
from training.data.tokenizer import WordVocab
from training.metrics.alignment import (
    ValidationSet,
    evaluate_vectors,
    flat_metrics,
    kept_regions,
    rows_of,
)
from training.tasks import TrainingCommand, save_vocab
from training.trainer import config_from_dict

log = logging.getLogger(__name__)

DEFAULT_TRAINER = {"early_stop_metric": "alignment_accuracy", "epochs": 10, "batch_size": 128,
                   "lr": 2e-3, "warmup_steps": 100, "patience": 4, "amp": False}


@dataclass
class AlignmentTaskConfig:
    data: str = "data/shapes15k"
    features: str | None = None  # directory of {split}.npz; None: DATA/features/regions
    regions_run: str = "runs/regions"  # the RegionNet run the features came from
    image_size: int = 64
    min_count: int = 1
    max_words: int = 24  # T of the exported text graph: longest sentence it aligns
    beta: float = 1.0  # default MRF bonus of the bundle (inference.beta)
    min_region_score: float = 0.2  # regions scoring lower are left out (training and serving)
    val_images: int = 500
    model: dict = field(default_factory=dict)  # AlignmentConfig overrides
    trainer: dict = field(default_factory=dict)  # TrainerConfig overrides

    @classmethod
    def from_dict(cls, d: dict) -> AlignmentTaskConfig:
        return config_from_dict(cls, d, "alignment training")

    def features_dir(self) -> Path:
        return Path(self.features) if self.features else Path(self.data) / "features" / "regions"


def encode_sentences(vocab: WordVocab, token_lists: list[list[str]], max_words: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, max_words) word ids right-padded with <pad> (no <bos>/<eos>), and lengths (N,)."""
    tokens = torch.full((len(token_lists), max_words), vocab.pad_id, dtype=torch.long)
    lengths = torch.zeros(len(token_lists), dtype=torch.long)
    for i, words in enumerate(token_lists):
        ids = vocab.encode(list(words)[:max_words])
        tokens[i, :len(ids)] = torch.tensor(ids)
        lengths[i] = len(ids)
    return tokens, lengths


class AlignmentTask:
    def __init__(self, config: AlignmentTaskConfig):
        self.config = config
        self.dataset_dir = Path(config.data)
        train = load_captions(self.dataset_dir, "train", restval_as_train=True)
        if not train:
            raise ValueError(f"{self.dataset_dir}: no training images in captions.json")
        self.vocab = WordVocab.build([t for im in train for t in im.tokens],
                                     min_count=config.min_count)
        t0 = time.perf_counter()
        self.train_features = load_region_features(config.features_dir() / "train.npz")
        rows = rows_of(self.train_features, train)
        mask = kept_regions(self.train_features.scores[rows],
                            self.train_features.num_regions[rows], config.min_region_score)
        self.features = torch.from_numpy(self.train_features.features[rows])
        self.regions_ok = torch.from_numpy(mask)
        pairs = [(i, toks) for i, im in enumerate(train) for toks in im.tokens]
        self.pair_image = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        self.pair_tokens, self.pair_lengths = encode_sentences(
            self.vocab, [t for _, t in pairs], config.max_words)
        self.val = ValidationSet.load(self.dataset_dir, config.features_dir(), "val",
                                      limit=config.val_images)
        log.info("loaded %d train images, %d pairs in %.1fs", len(train), len(pairs),
                 time.perf_counter() - t0)
        self.alignment_config = AlignmentConfig(
            vocab_size=len(self.vocab), feature_dim=self.train_features.feature_dim,
            pad_id=self.vocab.pad_id, **config.model)

    # -- Task protocol -------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        return AlignmentModel(self.alignment_config)

    def model_config(self) -> dict:
        return {"task": "alignment", "alignment": self.alignment_config.to_dict(),
                "regions_run": self.config.regions_run, "image_size": self.config.image_size,
                "max_words": self.config.max_words, "beta": self.config.beta,
                "min_region_score": self.config.min_region_score,
                "vocab": self.vocab.to_dict(),
                "data": {"dir": str(self.dataset_dir), "features": str(self.config.features_dir()),
                         "train_images": len(self.features),
                         "train_pairs": len(self.pair_image)},
                "task_config": asdict(self.config)}

    def num_examples(self) -> int:
        return len(self.pair_image)

    def batch(self, indices: torch.Tensor, device: torch.device):
        image = self.pair_image[indices]
        lengths = self.pair_lengths[indices]
        tokens = self.pair_tokens[indices, :int(lengths.max())]
        same_image = image[:, None] == image[None, :]
        return tuple(t.to(device) for t in (self.features[image], self.regions_ok[image], tokens,
                                             lengths, same_image))

    def loss(self, model, batch):
        features, region_mask, tokens, lengths, same_image = batch
        scores, loss = model(features, region_mask, tokens, lengths, same_image)
        positive = scores.diagonal().detach().mean()
        return loss, {"positive_score": float(positive)}

    def evaluate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        val = self.val
        with torch.no_grad():
            regions = model.regions(torch.from_numpy(val.region_features).to(device))
            tokens, lengths = encode_sentences(self.vocab, val.token_lists, self.config.max_words)
            words = model.words(tokens.to(device), lengths.to(device))
        mask = val.region_mask(self.config.min_region_score)
        result = evaluate_vectors(val, regions.cpu().numpy(), mask, words.cpu().numpy(),
                                  lengths.numpy(), betas=(0.0, self.config.beta))
        return flat_metrics(result, self.config.beta)


train = TrainingCommand(config=AlignmentTaskConfig, task=AlignmentTask,
                        flags=("data", "features", "regions_run"),
                        trainer_defaults=DEFAULT_TRAINER, run_files=save_vocab)
