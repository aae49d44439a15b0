"""Bottom-Up/Top-Down VQA as a trainer task, and `glimpse train vqa`.

Data: VQA v2 question and annotation files (the shapes world's vqa/ directory)
and the bottom-up region features precomputed once per split by the frozen
region detector (FEATURES/{split}.npz, training.data.region_features), so the
CNN never runs during training. One example is one question.

Answers (Teney et al. 2018, §3.2): the candidate answers are the normalised
human answers of the training questions seen at least `min_answer_count` times;
each question's target is a soft score per candidate, min(#humans who gave it / 3,
1), and the loss is binary cross-entropy (models.vqa.soft_score_loss). Validation
answers with the highest-scoring candidate and reports VQA accuracy, which drives
early stopping.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.vqa import UpDownVqa, VqaConfig
from service.text import tokenize
from training.data.readers import VQAQuestion, load_vqa_split
from training.data.tokenizer import WordVocab
from training.metrics.vqa import normalize_answer, vqa_accuracy
from training.tasks import TrainingCommand
from training.trainer import config_from_dict

log = logging.getLogger(__name__)


@dataclass
class VqaTaskConfig:
    data: str = "data/shapes"
    features: str | None = None  # default: DATA/features/regions
    # The detector that computed the features, exported inside the graph (default: the
    # run named by FEATURES/meta.json, which `glimpse features regions` writes).
    regions_run: str | None = None
    min_answer_count: int = 9  # candidate answers: normalised training answers seen this often
    max_question_length: int = 20  # longest question in words the model accepts
    val_questions: int | None = None  # validate on the first N val questions (None: all)
    model: dict = field(default_factory=dict)  # VqaConfig overrides (glimpses, joint_dim, ...)
    trainer: dict = field(default_factory=lambda: {"early_stop_metric": "vqa_accuracy"})

    @classmethod
    def from_dict(cls, d: dict) -> VqaTaskConfig:
        return config_from_dict(cls, d, "vqa training")

    @property
    def features_dir(self) -> Path:
        return Path(self.features) if self.features else Path(self.data) / "features" / "regions"


# ---------------------------------------------------------------------------- answers


def answer_vocabulary(questions: Sequence[VQAQuestion], min_count: int) -> list[str]:
    """Normalised human answers seen at least `min_count` times, most frequent first."""
    counts = Counter(normalize_answer(a) for q in questions for a in q.answers)
    counts.pop("", None)
    return sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))


def soft_scores(questions: Sequence[VQAQuestion], answers: Sequence[str]) -> torch.Tensor:
    """(N, A) targets: min(#humans who gave answer a / 3, 1) after normalisation."""
    index = {a: i for i, a in enumerate(answers)}
    out = torch.zeros(len(questions), len(answers))
    for row, q in enumerate(questions):
        for answer, count in Counter(normalize_answer(a) for a in q.answers).items():
            if answer in index:
                out[row, index[answer]] = min(count / 3.0, 1.0)
    return out


def encode_questions(vocab: WordVocab, questions: Sequence[str], max_length: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) right-padded word ids (truncated to max_length) and (N,) lengths >= 1."""
    ids = [vocab.encode(tokenize(q))[:max_length] or [vocab.unk_id] for q in questions]
    width = max((len(i) for i in ids), default=1)
    out = torch.full((len(ids), width), vocab.pad_id, dtype=torch.long)
    for row, seq in enumerate(ids):
        out[row, :len(seq)] = torch.tensor(seq)
    return out, torch.tensor([len(i) for i in ids], dtype=torch.long)


# ---------------------------------------------------------------------------- regions


@dataclass
class SplitRegions:
    """The region features of one split, one row per question's image."""

    features: torch.Tensor  # (N, R, F) float32
    boxes: torch.Tensor  # (N, R, 4) normalised xyxy
    scores: torch.Tensor  # (N, R)
    mask: torch.Tensor  # (N, R) True for real regions


def question_regions(features_dir: Path, split: str, questions: Sequence[VQAQuestion]
                     ) -> tuple[SplitRegions, torch.Tensor]:
    """The split's region features and, for each question, the row of its image."""
    from training.data.region_features import load_region_features

    path = features_dir / f"{split}.npz"
    regions = load_region_features(path)
    try:
        rows = torch.tensor([regions.index_of(q.image_id) for q in questions], dtype=torch.long)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{path}: no features for an image of split {split!r}: {exc}") from None
    num = torch.as_tensor(np.asarray(regions.num_regions), dtype=torch.long)
    r = int(np.asarray(regions.features).shape[1])
    split_regions = SplitRegions(
        features=torch.as_tensor(np.asarray(regions.features, dtype=np.float32)),
        boxes=torch.as_tensor(np.asarray(regions.boxes, dtype=np.float32)),
        scores=torch.as_tensor(np.asarray(regions.scores, dtype=np.float32)),
        mask=torch.arange(r).unsqueeze(0) < num.unsqueeze(1))
    return split_regions, rows


def glimpse_targets(questions: Sequence[VQAQuestion], regions: SplitRegions, rows: torch.Tensor,
                    scenes: dict, glimpses: int) -> torch.Tensor:
    """(N, G) the proposal each glimpse should attend to, -1 where the question names no
    object: glimpse g takes the g-th named object (the last for g beyond the count), and an
    object's region is the proposal whose box centre is nearest the object's centre (the
    whole-image region, an image's last real row, is never a target)."""
    out = torch.full((len(questions), glimpses), -1, dtype=torch.long)
    boxes = regions.boxes.numpy()
    num = regions.mask.sum(dim=1).numpy()
    for i, q in enumerate(questions):
        if not q.objects:
            continue
        row = int(rows[i])
        proposals = boxes[row, :max(int(num[row]) - 1, 0)]
        if not len(proposals):
            continue
        centres = (proposals[:, :2] + proposals[:, 2:]) / 2  # (P, 2) normalised x, y
        objects = scenes[q.image_id].objects
        for g in range(glimpses):
            obj = objects[q.objects[min(g, len(q.objects) - 1)]]
            out[i, g] = int(np.argmin(((centres - (obj.x, obj.y)) ** 2).sum(axis=1)))
    return out


def features_run(features_dir: Path) -> str:
    """The region run that wrote the features, from FEATURES/meta.json."""
    meta = features_dir / "meta.json"
    try:
        return str(json.loads(meta.read_text())["run"])
    except (OSError, ValueError, KeyError):
        raise ValueError(f"{meta} does not name the region run that computed the features; "
                         "pass --regions-run") from None


# ---------------------------------------------------------------------------- task


class VqaTask:
    def __init__(self, config: VqaTaskConfig) -> None:
        self.config = config
        self.dataset_dir = Path(config.data)
        train = load_vqa_split(self.dataset_dir, "train")
        val = load_vqa_split(self.dataset_dir, "val")[: config.val_questions]
        if not train or not val:
            raise ValueError(f"{self.dataset_dir}: VQA needs annotated train and val questions")
        if config.regions_run is None:
            config.regions_run = features_run(config.features_dir)
        self.vocab = WordVocab.build(tokenize(q.question) for q in train)
        self.answers = answer_vocabulary(train, config.min_answer_count)
        if not self.answers:
            raise ValueError(f"no training answer is given {config.min_answer_count} times")
        self.train_questions, self.train_lengths = encode_questions(
            self.vocab, [q.question for q in train], config.max_question_length)
        self.train_targets = soft_scores(train, self.answers)
        self.train_regions, self.train_rows = question_regions(config.features_dir, "train",
                                                               train)
        self.val = val
        self.val_questions, self.val_lengths = encode_questions(
            self.vocab, [q.question for q in val], config.max_question_length)
        self.val_regions, self.val_rows = question_regions(config.features_dir, "val", val)
        log.info("%d train / %d val questions, %d words, %d answers, regions %s",
                 len(train), len(val), len(self.vocab), len(self.answers),
                 tuple(self.train_regions.features.shape[1:]))
        self.vqa_config = VqaConfig(**{
            "vocab_size": len(self.vocab), "num_answers": len(self.answers),
            "pad_id": self.vocab.pad_id,
            "feature_dim": int(self.train_regions.features.shape[2]), **config.model})
        self.train_attention = None
        if self.vqa_config.attention_supervision > 0:
            self.train_attention = self._attention_targets(train)

    def _attention_targets(self, train: Sequence[VQAQuestion]) -> torch.Tensor:
        """Glimpse targets of the training questions, from their named objects and the
        world's scenes.json."""
        from training.data.shapes import load_scenes

        if not any(q.objects for q in train):
            raise ValueError(f"{self.dataset_dir}: attention_supervision needs annotations that "
                             "name each question's objects ('objects', as the shapes world "
                             "writes them); set it to 0 for data without")
        targets = glimpse_targets(train, self.train_regions, self.train_rows,
                                  load_scenes(self.dataset_dir), self.vqa_config.glimpses)
        log.info("attention supervision: %d of %d training questions name their objects",
                 int((targets[:, 0] >= 0).sum()), len(train))
        return targets

    # -- Task protocol -------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        return UpDownVqa(self.vqa_config)

    def model_config(self) -> dict:
        return {"task": "vqa", "vqa": self.vqa_config.to_dict(), "vocab": self.vocab.to_dict(),
                "answers": list(self.answers), "regions_run": self.config.regions_run,
                "max_question_length": self.config.max_question_length,
                "data": {"dir": str(self.dataset_dir), "features": str(self.config.features_dir),
                         "train_questions": len(self.train_rows)},
                "task_config": asdict(self.config)}

    def num_examples(self) -> int:
        return len(self.train_rows)

    def batch(self, indices: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        batch = question_batch(self.train_regions, self.train_rows, self.train_questions,
                               self.train_lengths, indices, device,
                               targets=self.train_targets)
        if self.train_attention is not None:
            batch["attention_targets"] = self.train_attention[indices].to(device)
        return batch

    def loss(self, model, batch):
        _, _, loss = model(**batch)
        return loss, {}

    def evaluate(self, model) -> dict[str, float]:
        predictions = self.predict(model)
        metrics = vqa_accuracy(predictions, {q.question_id: q for q in self.val})
        out = {"vqa_accuracy": metrics["overall"]}
        out.update({f"vqa_accuracy/{k}": v for k, v in metrics["per_question_type"].items()})
        return out

    @torch.no_grad()
    def predict(self, model, batch_size: int = 512) -> dict[int, str]:
        """{question_id: best answer} for the validation questions."""
        device = next(model.parameters()).device
        out: dict[int, str] = {}
        for start in range(0, len(self.val), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(self.val)))
            logits, _, _ = model(**question_batch(self.val_regions, self.val_rows,
                                                  self.val_questions, self.val_lengths, idx,
                                                  device))
            for i, best in zip(idx.tolist(), logits.argmax(1).tolist(), strict=True):
                out[self.val[i].question_id] = self.answers[best]
        return out


def question_batch(regions: SplitRegions, rows: torch.Tensor, questions: torch.Tensor,
                   lengths: torch.Tensor, indices: torch.Tensor, device: torch.device, *,
                   targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The keyword arguments of UpDownVqa.forward for these questions, on `device`."""
    image_rows = rows[indices]
    length = lengths[indices]
    batch = {"features": regions.features[image_rows], "boxes": regions.boxes[image_rows],
             "scores": regions.scores[image_rows], "region_mask": regions.mask[image_rows],
             "question": questions[indices, :int(length.max())], "question_length": length}
    if targets is not None:
        batch["targets"] = targets[indices]
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------- the command


def save_vocabularies(task: VqaTask, run_dir: Path) -> None:
    """The question words (vocab.json) and the candidate answers (answers.json)."""
    task.vocab.save(run_dir / "vocab.json")
    (run_dir / "answers.json").write_text(json.dumps({"answers": task.answers}, indent=2))


train = TrainingCommand(config=VqaTaskConfig, task=VqaTask,
                        flags=("data", "features", "regions_run"),
                        trainer_defaults={"early_stop_metric": "vqa_accuracy"},
                        run_files=save_vocabularies)
