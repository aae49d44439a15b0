"""Visual-semantic alignment as a trainer task, and how well it aligns.

`glimpse train alignment` trains models.alignment.AlignmentModel on the
(image, caption) pairs of captions.json. Images are read as the region stage's
precomputed features (DATA/features/regions/{split}.npz, written by `glimpse
features regions` from the frozen RegionNet of --regions-run), so training runs
only the region projection and the BRNN. One training example is one
(image, reference caption) pair; the batch's other images and sentences are the
negatives of the ranking loss (Eq. 9).

Validation and `glimpse eval alignment` (which runs an exported bundle through
the service's own pipeline) report

- image-sentence retrieval R@1/5/10 in both directions with S_kl (Eq. 8),
  the protocol of training.metrics.retrieval;
- alignment accuracy: the share of the captions' noun phrases whose region
  overlaps an object the phrase refers to with IoU >= 0.5. A phrase's region is
  the region the MRF assignment (service.alignment.best_alignment, at the stated
  beta) gives to its head noun, which is also the region of the segment holding
  it. The objects a phrase refers to are the scene's objects with its attributes
  (training.data.language.matching_objects): a phrase such as "a triangle" in a
  scene of two triangles may be grounded on either. The proposal bound is the
  same share for an oracle that picks the best region of each phrase.
- segment statistics of the assignment at each beta: segments per sentence and
  words per segment (beta 0 aligns word by word, a large beta whole sentences).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.alignment import AlignmentConfig, AlignmentModel
from service.pipelines.alignment import best_alignment, runs, score_matrix
from training.data.language import PLURAL, matching_objects, parse_caption
from training.data.readers import CaptionImage, load_captions
from training.data.region_features import RegionFeatures, load_region_features
from training.data.tokenizer import WordVocab
from training.data.world import SHAPES, Scene
from training.metrics.retrieval import retrieval_metrics
from training.trainer import Trainer, TrainerConfig, config_from_dict, with_cli_overrides

log = logging.getLogger(__name__)

HEAD_NOUNS = frozenset(SHAPES) | frozenset(PLURAL.values())
IOU_THRESHOLD = 0.5
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


def rows_of(features: RegionFeatures, images: list[CaptionImage]) -> np.ndarray:
    """Row of each image in the feature file (KeyError names an image without features)."""
    return np.array([features.index_of(im.imgid) for im in images], dtype=np.int64)


def region_mask(features: RegionFeatures, rows: np.ndarray, min_score: float) -> np.ndarray:
    """(n, R) bool: the real regions scoring at least `min_score` (never none at all)."""
    real = np.arange(features.max_regions)[None, :] < features.num_regions[rows][:, None]
    mask = real & (features.scores[rows] >= min_score)
    return np.where(mask.any(axis=1, keepdims=True), mask, real)


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
        mask = region_mask(self.train_features, rows, config.min_region_score)
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


# ---------------------------------------------------------------------------- measuring


@dataclass
class ValidationSet:
    """A split's images with their region features, captions and ground-truth objects."""

    images: list[CaptionImage]
    region_features: np.ndarray  # (N, R, F)
    boxes: np.ndarray  # (N, R, 4) normalised xyxy
    scores: np.ndarray  # (N, R)
    num_regions: np.ndarray  # (N,)
    token_lists: list[list[str]]  # every caption, image by image
    caption_texts: list[str]
    img_of_caption: np.ndarray  # (C,) image index of each caption
    scenes: list[Scene]
    object_boxes: list[np.ndarray]  # per image (M, 4) normalised xyxy, scene order

    @classmethod
    def load(cls, dataset_dir: Path, features_dir: Path | None, split: str,
             limit: int | None = None) -> ValidationSet:
        """A split with its precomputed features (features_dir None: no features)."""
        images = load_captions(dataset_dir, split)[:limit]
        if not images:
            raise ValueError(f"{dataset_dir}: split {split!r} has no images")
        n, empty = len(images), np.zeros((len(images), 0), np.float32)
        feats, boxes, scores, num = np.zeros((n, 0, 0), np.float32), empty, empty, empty
        if features_dir is not None:
            rf = load_region_features(features_dir / f"{split}.npz")
            rows = rows_of(rf, images)
            feats, boxes, scores, num = (rf.features[rows], rf.boxes[rows], rf.scores[rows],
                                         rf.num_regions[rows])
        scenes, object_boxes = scene_objects(dataset_dir, [im.imgid for im in images])
        return cls(images=images, region_features=feats, boxes=boxes, scores=scores,
                   num_regions=num,
                   token_lists=[list(t) for im in images for t in im.tokens],
                   caption_texts=[c for im in images for c in im.captions],
                   img_of_caption=np.array([i for i, im in enumerate(images)
                                            for _ in im.tokens], dtype=np.int64),
                   scenes=scenes, object_boxes=object_boxes)

    def region_mask(self, min_score: float) -> np.ndarray:
        real = np.arange(self.scores.shape[1])[None, :] < self.num_regions[:, None]
        mask = real & (self.scores >= min_score)
        return np.where(mask.any(axis=1, keepdims=True), mask, real)


def scene_objects(dataset_dir: Path, imgids: list[int]) -> tuple[list[Scene], list[np.ndarray]]:
    """Scenes and every object's visible box (normalised xyxy, scenes.json order) of imgids."""
    from training.data.shapes import load_scenes

    scenes = load_scenes(dataset_dir)
    data = json.loads((dataset_dir / "scenes.json").read_text())
    side = float(data["image_size"])
    by_id = {int(im["imgid"]): im for im in data["images"]}
    boxes = []
    for imgid in imgids:
        xywh = np.array([o["bbox"] for o in by_id[imgid]["objects"]], np.float64) / side
        boxes.append(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
    return [scenes[i] for i in imgids], boxes


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of others (M, 4)."""
    inter_w = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    inter_h = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def phrase_heads(tokens: list[str], text: str, scene: Scene) -> list[tuple[int, list[int]]]:
    """(position of the head noun, objects the phrase may refer to) of each noun phrase.

    In the shapes world's grammar a shape word is always, and only, the last word
    of a noun phrase, so the head nouns in order are the parsed phrases in order.
    Captions outside the grammar give no phrases.
    """
    caption = parse_caption(text)
    heads = [t for t, word in enumerate(tokens) if word in HEAD_NOUNS]
    if caption is None or len(heads) != len(caption.noun_phrases()):
        return []
    return [(t, matching_objects(np_, scene)) for t, np_ in zip(heads, caption.noun_phrases(),
                                                              strict=True)]


def evaluate_vectors(data: ValidationSet, region_vectors: np.ndarray, mask: np.ndarray,
                     word_vectors: np.ndarray, lengths: np.ndarray,
                     betas: tuple[float, ...]) -> dict:
    """Retrieval, alignment accuracy and segment statistics from region and word vectors."""
    sims = score_matrix(region_vectors.astype(np.float32), mask,
                        word_vectors.astype(np.float32), lengths)
    out: dict = {"retrieval": retrieval_metrics(sims, data.img_of_caption), "alignment": {}}
    hits = {b: 0 for b in betas}
    segments = {b: [] for b in betas}
    phrases = bound = 0
    for c, k in enumerate(data.img_of_caption):
        kept = np.flatnonzero(mask[k])
        unary = word_vectors[c, :lengths[c]] @ region_vectors[k, kept].T  # (T, R') psi_U
        ious = [box_iou(box, data.object_boxes[k]) for box in data.boxes[k, kept]]  # R' x (M,)
        heads = phrase_heads(data.token_lists[c][:lengths[c]], data.caption_texts[c],
                             data.scenes[k])
        grounded = [(t, refs) for t, refs in heads if refs]
        phrases += len(grounded)
        bound += sum(max(ious[r][refs].max() for r in range(len(kept))) >= IOU_THRESHOLD
                     for _, refs in grounded)
        for beta in betas:
            assignment, _ = best_alignment(unary, beta)
            segments[beta].append(len(runs(assignment)))
            hits[beta] += sum(ious[assignment[t]][refs].max() >= IOU_THRESHOLD
                              for t, refs in grounded)
    words = float(np.mean(lengths))
    for beta in betas:
        per_sentence = float(np.mean(segments[beta]))
        out["alignment"][f"beta{beta:g}"] = {
            "accuracy": hits[beta] / max(phrases, 1),
            "segments_per_sentence": per_sentence,
            "words_per_segment": words / per_sentence,
        }
    out["noun_phrases"] = phrases
    out["proposal_bound"] = bound / max(phrases, 1)
    return out


def flat_metrics(result: dict, beta: float) -> dict[str, float]:
    """Scalars for the trainer's log: R@K, rsum, accuracy at each beta, the bound, and
    `alignment_accuracy`, the accuracy at the bundle's default beta (early stopping)."""
    out = {k: v for k, v in result["retrieval"].items() if not k.endswith("meanr")}
    for key, values in result["alignment"].items():
        out[f"accuracy_{key}"] = values["accuracy"]
        out[f"words_per_segment_{key}"] = values["words_per_segment"]
    out["alignment_accuracy"] = result["alignment"][f"beta{beta:g}"]["accuracy"]
    out["proposal_bound"] = result["proposal_bound"]
    return out


def evaluate_bundle(path: str | Path, data: str | Path, *, split: str = "test",
                    betas: tuple[float, ...] = (0.0, 1.0, 4.0), batch_size: int = 250,
                    limit: int | None = None) -> dict:
    """Retrieval and alignment of an exported bundle through the service's pipeline."""
    from service.pipelines.alignment import AlignmentModel as AlignmentPipeline
    from training.caption_task import load_images

    model = AlignmentPipeline.from_bundle(path)
    dataset = ValidationSet.load(Path(data), None, split, limit=limit)
    t0 = time.perf_counter()
    parts = []
    for start in range(0, len(dataset.images), batch_size):
        chunk = load_images(Path(data), dataset.images[start:start + batch_size],
                            model.image_size).float().div_(255).numpy()
        parts.append(model.encode_images(chunk))
    boxes, mask, regions = (np.concatenate([p[k] for p in parts])
                            for k in ("boxes", "region_mask", "region_vectors"))
    dataset.boxes = boxes
    # Reference words the bundle does not know count as <unk> here instead of refusing.
    ids = [model.words.encode(" ".join(t)).ids[:model.max_words] for t in dataset.token_lists]
    words, lengths = zip(*(model.encode_texts(ids[s:s + batch_size])
                           for s in range(0, len(ids), batch_size)), strict=True)
    words, lengths = np.concatenate(words), np.concatenate(lengths)
    encode_seconds = time.perf_counter() - t0
    result = evaluate_vectors(dataset, regions, mask, words, lengths, betas)
    return {"bundle": str(path), "split": split, "n_images": len(dataset.images),
            "n_captions": len(ids), **result["retrieval"], "alignment": result["alignment"],
            "noun_phrases": result["noun_phrases"], "proposal_bound": result["proposal_bound"],
            "encode_seconds": round(encode_seconds, 1)}


def record_metrics(path: str | Path, metrics: dict) -> None:
    """Store metrics in the bundle's manifest under metrics[split] (not a hashed file)."""
    manifest_path = Path(path) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    keep = {k: v for k, v in metrics.items() if k not in ("bundle", "split")}
    manifest.setdefault("metrics", {})[metrics["split"]] = keep
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


# ---------------------------------------------------------------------------- the CLI


def _task_config_from_args(args) -> AlignmentTaskConfig:
    raw: dict = json.loads(Path(args.config).read_text()) if args.config else {}
    cfg = AlignmentTaskConfig.from_dict(raw)
    for name in ("data", "features", "regions_run"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    trainer = with_cli_overrides({**DEFAULT_TRAINER, **cfg.trainer}, args)
    cfg.trainer = trainer
    return cfg


def train(args) -> int:
    cfg = _task_config_from_args(args)
    trainer_cfg = TrainerConfig.from_dict(cfg.trainer)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = AlignmentTask(cfg)
    (run_dir / "task.json").write_text(json.dumps(asdict(cfg), indent=2))
    task.vocab.save(run_dir / "vocab.json")
    trainer = Trainer(task, trainer_cfg, run_dir)
    summary = trainer.fit(resume=args.resume)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    last = summary["history"][-1] if summary["history"] else {}
    print(json.dumps({"run_dir": str(run_dir), "steps": summary["steps"],
                      "best_alignment_accuracy": summary["best"], "last": last,
                      "train_seconds": round(summary["train_seconds"], 1)}))
    return 0


def evaluate(args) -> int:
    metrics = evaluate_bundle(args.path, args.data, split=args.split, betas=tuple(args.betas),
                              limit=args.limit)
    if args.write_manifest:
        record_metrics(args.path, metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return evaluate(args) if args._command == "eval alignment" else train(args)
