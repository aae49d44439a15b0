"""Captioning as a trainer task, and `glimpse train caption`.

Data: a Karpathy-style split file (the shapes world's captions.json, or COCO /
Flickr) with images resized once to the model's input size and held in memory
as uint8. One training example is one (image, reference caption) pair, so an
epoch sees every reference once. Validation decodes greedily through the same
NumPy beam search the service uses and scores CIDEr-D (plus semantic exactness
and coverage on the shapes world), which drives early stopping.

Up-Down, the m-RNN generator and NIC with a frozen encoder see the image only
through frozen features, so they train on those features computed once instead of
on pixels: Up-Down reads the RegionNet features precomputed for the dataset
(`--features DIR` holding `{split}.npz`, written by `glimpse features regions` from
`--regions-run`); the m-RNN and NIC run their pre-trained encoder once over the
training images at start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.captioners import build_caption_model, caption_config, trains_on_features
from training.data.images import load_images
from training.data.readers import CaptionImage, load_captions
from training.data.tokenizer import WordVocab
from training.runs import pretrained_encoder, pretrained_regions, run_checkpoint, run_weights
from training.tasks import TrainingCommand, save_vocab
from training.trainer import config_from_dict

log = logging.getLogger(__name__)


@dataclass
class CaptionTaskConfig:
    data: str = "data/shapes"
    arch: str = "sat-soft"
    layer_norm: bool = False
    image_size: int = 64
    min_count: int = 1  # words seen fewer times in training captions become <unk>
    max_length: int = 24  # longest training caption in tokens, eos included
    val_images: int = 500  # validation images decoded after each evaluation epoch
    model: dict = field(default_factory=dict)  # the captioner's settings (embed_dim, ...)
    # Run directory of `glimpse train encoder`: start the image encoder from its weights
    # (and take its encoder configuration), as the papers start from a trained CNN.
    encoder_init: str | None = None
    # Run directory of an earlier caption run to continue from (all weights; fine-tuning
    # with a fresh optimizer and schedule). Its vocabulary must equal this run's.
    init_from: str | None = None
    # Up-Down: run directory of `glimpse train regions` (the frozen bottom-up stage the
    # exported model carries) and the directory of its precomputed `{split}.npz` features.
    regions_run: str | None = None
    features: str | None = None
    # "xent": cross-entropy on the reference captions; "scst": self-critical sequence
    # training (training/tasks/scst.py) from an earlier run (init_from), rewarded with a
    # weighted sum of CIDEr-D and, on a generated world, semantic exactness and coverage.
    objective: str = "xent"
    scst_samples: int = 5  # sampled captions per image and step
    scst_reward: dict = field(default_factory=lambda: {"cider_d": 1.0, "exactness": 1.0,
                                                       "coverage": 1.0})
    trainer: dict = field(default_factory=dict)  # TrainerConfig overrides

    @classmethod
    def from_dict(cls, d: dict) -> CaptionTaskConfig:
        return config_from_dict(cls, d, "caption training")


def encode_captions(vocab: WordVocab, token_lists: list[list[str]], max_length: int
                    ) -> torch.Tensor:
    """(N, max_length + 1) ids: <bos> w1 .. wn <eos> <pad>..., truncated to fit."""
    out = torch.full((len(token_lists), max_length + 1), vocab.pad_id, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        ids = vocab.encode(list(tokens)[: max_length - 1], add_bos=True, add_eos=True)
        out[i, : len(ids)] = torch.tensor(ids)
    return out


class CaptionTask:
    def __init__(self, config: CaptionTaskConfig):
        self.config = config
        self.dataset_dir = Path(config.data)
        # COCO's "restval" images train too, as in most captioning papers.
        train = load_captions(self.dataset_dir, "train", restval_as_train=True)
        val = load_captions(self.dataset_dir, "val")[: config.val_images]
        if not train:
            raise ValueError(f"{self.dataset_dir}: no training images in captions.json")
        self.vocab = WordVocab.build([t for im in train for t in im.tokens],
                                     min_count=config.min_count)
        self.train_features: tuple[torch.Tensor, ...] = ()
        self.val_features: tuple[torch.Tensor, ...] = ()
        if config.arch == "updown":
            self.train_features = region_features(config, "train", train)
            self.val_features = region_features(config, "val", val)
        else:
            t0 = time.perf_counter()
            self.train_images = load_images(self.dataset_dir, train, config.image_size)
            self.val_images = load_images(self.dataset_dir, val, config.image_size)
            log.info("loaded %d train + %d val images in %.1fs", len(train), len(val),
                     time.perf_counter() - t0)
        self.num_train_images = len(train)
        pairs = [(i, toks) for i, im in enumerate(train) for toks in im.tokens]
        self.pair_image = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        self.pair_caption = encode_captions(self.vocab, [t for _, t in pairs], config.max_length)
        self.val = val
        model_cfg = {"arch": config.arch, "layer_norm": config.layer_norm,
                     "vocab_size": len(self.vocab), "pad_id": self.vocab.pad_id, **config.model}
        self.encoder_weights = None
        if config.encoder_init:
            model_cfg["encoder"], self.encoder_weights = pretrained_encoder(config.encoder_init)
        self.region_weights = None
        if config.arch == "updown":
            if not config.regions_run:
                raise ValueError("--arch updown needs --regions-run (the bottom-up RegionNet run)")
            model_cfg["regions"], self.region_weights = pretrained_regions(config.regions_run)
            model_cfg["region_feature_dim"] = int(self.train_features[2].shape[-1])
        self.init_weights = None
        if config.init_from:
            # The earlier run's model, with this config's `model` settings over it: e.g.
            # `train_encoder: true` to fine-tune the encoder after a frozen first phase.
            earlier, self.init_weights = self._earlier_run(config.init_from)
            model_cfg = {**earlier, **config.model}
        if config.arch == "mrnn" and self.encoder_weights is None and self.init_weights is None:
            raise ValueError("--arch mrnn reads CNN(I) from a trained encoder: give "
                             "--encoder-init (or --init-from an m-RNN run)")
        self.caption_config = caption_config(model_cfg, saved=self.init_weights is not None)
        self.on_features = trains_on_features(self.caption_config)
        self.reward = None
        if config.objective == "scst":
            self.reward = self._scst_reward(train)
        elif config.objective != "xent":
            raise ValueError(f"objective must be 'xent' or 'scst', not {config.objective!r}")

    def _scst_reward(self, train: list[CaptionImage]):
        """SCST's reward of a caption of training image i (by position in `train`)."""
        from training.data.shapes import load_scenes
        from training.tasks.scst import CaptionReward

        if not self.config.init_from:
            raise ValueError("objective 'scst' fine-tunes a trained captioner: give --init-from "
                             "(a cross-entropy run of the same architecture)")
        if self.config.scst_samples < 1:
            raise ValueError("scst_samples must be at least 1")
        scenes = None
        if (self.dataset_dir / "scenes.json").exists():
            by_id = load_scenes(self.dataset_dir)
            scenes = [by_id[im.imgid] for im in train]
        return CaptionReward(self.config.scst_reward, [im.captions for im in train], scenes)

    # -- Task protocol -------------------------------------------------------
    def _earlier_run(self, run_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """Model config and weights of an earlier caption run, checked against this data."""
        ckpt, config = run_checkpoint(run_dir, "caption", "a caption")
        if config["model"]["vocab"] != self.vocab.to_dict():
            raise ValueError(f"{ckpt}: its vocabulary differs from the one built from "
                             f"{self.dataset_dir}'s training captions")
        return config["model"]["caption"], run_weights(ckpt)

    def build_model(self) -> torch.nn.Module:
        model = build_caption_model(self.caption_config)
        if self.encoder_weights is not None and hasattr(model, "encoder"):
            model.encoder.load_state_dict(self.encoder_weights)
        if self.region_weights is not None:
            model.region_net.load_state_dict(self.region_weights)
        if self.init_weights is not None:
            model.load_state_dict(self.init_weights)
        if self.on_features and self.caption_config.arch != "updown":
            # a frozen encoder (NIC's first phase, the m-RNN): its features once, up front
            self.train_features = encoder_features(model, self.train_images)
            self.val_features = encoder_features(model, self.val_images)
        return model

    def model_config(self) -> dict:
        return {"task": "caption", "caption": self.caption_config.to_dict(),
                "image_size": self.config.image_size, "vocab": self.vocab.to_dict(),
                "data": {"dir": str(self.dataset_dir), "train_images": self.num_train_images,
                         "train_pairs": len(self.pair_image)},
                "task_config": asdict(self.config)}

    def num_examples(self) -> int:
        # SCST's examples are images (it samples its own captions); cross-entropy's are
        # (image, reference) pairs.
        return self.num_train_images if self.reward is not None else len(self.pair_image)

    def image_inputs(self, rows: torch.Tensor, device: torch.device):
        """The model's input for these training images: pixels or precomputed features."""
        if self.on_features:
            return tuple(f[rows].to(device) for f in self.train_features)
        return self.train_images[rows].to(device).float().div_(255)

    def batch(self, indices: torch.Tensor, device: torch.device):
        if self.reward is not None:
            return self.image_inputs(indices, device), indices
        inputs = self.image_inputs(self.pair_image[indices], device)
        caps = self.pair_caption[indices]
        length = int((caps != self.vocab.pad_id).sum(1).max())
        caps = caps[:, :length].to(device)
        return inputs, caps[:, :-1], caps[:, 1:]

    def loss(self, model, batch):
        if self.reward is not None:
            return self.scst_loss(model, *batch)
        inputs, captions_in, captions_out = batch  # inputs: images, or a tuple of features
        _, loss = model(inputs, captions_in, captions_out)
        terms = getattr(model, "module", model).loss_terms
        return loss, {k: float(v) for k, v in terms.items()}

    def scst_loss(self, model, inputs, rows: torch.Tensor):
        from training.tasks.scst import scst_loss

        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            # SCST decodes through the model's step, not its forward, which DDP's gradient
            # averaging hooks into.
            raise ValueError("objective 'scst' trains on one process; run it without torchrun")
        rows = rows.tolist()

        def reward(token_rows, images) -> torch.Tensor:
            return torch.tensor([self.reward(self.vocab.decode(t.tolist()), rows[i])
                                 for t, i in zip(token_rows, images, strict=True)])

        return scst_loss(model, inputs, reward,
                         samples=self.config.scst_samples, bos_id=self.vocab.bos_id,
                         eos_id=self.vocab.eos_id, pad_id=self.vocab.pad_id,
                         max_length=self.config.max_length)

    def evaluate(self, model) -> dict[str, float]:
        from training.metrics.captions import caption_metrics

        inputs = self.val_features if self.on_features else self.val_images
        captions = decode(model, inputs, self.vocab, beam_size=1,
                          max_length=self.config.max_length)
        results = {im.imgid: captions[i] for i, im in enumerate(self.val)}
        refs = {im.imgid: list(im.captions) for im in self.val}
        metrics = caption_metrics(results, refs, meteor=False)
        out = {k: v for k, v in metrics.items() if isinstance(v, float)}
        if (self.dataset_dir / "scenes.json").exists():
            from training.data.shapes import load_scenes
            from training.metrics.semantic import semantic_scores

            scenes = load_scenes(self.dataset_dir)
            sem = semantic_scores(results, {k: scenes[k] for k in results})
            out.update({"semantic_exactness": sem["semantic_exactness"],
                        "coverage": sem["coverage"]})
        return out


def region_features(config: CaptionTaskConfig, split: str, images: list[CaptionImage]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precomputed (boxes, scores, features) of these images, in their order, from
    `config.features/{split}.npz`. Every region must be real: the exported model sees
    all R regions the RegionNet proposes, so training must too."""
    from training.data.region_features import load_region_features

    if not config.features:
        raise ValueError("--arch updown trains on precomputed region features: give --features")
    path = Path(config.features) / f"{split}.npz"
    rf = load_region_features(path)
    rows = np.array([rf.index_of(im.imgid) for im in images], dtype=np.int64)
    if (rf.num_regions[rows] != rf.max_regions).any():
        raise ValueError(f"{path}: some images have fewer than {rf.max_regions} real regions; "
                         "Up-Down trains on RegionNet's own features, which always have R")
    return (torch.from_numpy(rf.boxes[rows]), torch.from_numpy(rf.scores[rows]),
            torch.from_numpy(rf.features[rows]))


@torch.no_grad()
def encoder_features(model, images_uint8: torch.Tensor, batch_size: int = 256
                     ) -> tuple[torch.Tensor, ...]:
    """`model.image_features` of (N, 3, S, S) uint8 images, computed once, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = [model.image_features(images_uint8[i:i + batch_size].to(device).float().div_(255))
              for i in range(0, len(images_uint8), batch_size)]
    model.train(was_training)
    return tuple(torch.cat([c[k] for c in chunks]).cpu() for k in range(len(chunks[0])))


@torch.no_grad()
def decode(model, inputs: torch.Tensor | tuple[torch.Tensor, ...], vocab: WordVocab, *,
           beam_size: int, max_length: int, batch_size: int = 128) -> list[str]:
    """Captions through the service's beam search, of (N, 3, S, S) uint8 images or, as
    `forward` takes them, of a tuple of precomputed `image_features`."""
    from service.decoding import beam_search
    from training.export.caption import TorchCaptionStep

    step = TorchCaptionStep(model)  # puts the model in eval mode
    on_features = isinstance(inputs, tuple)
    texts: list[str] = []
    for start in range(0, len(inputs[0] if on_features else inputs), batch_size):
        if on_features:
            context, state = step.encode_features(*(f[start:start + batch_size] for f in inputs))
        else:
            chunk = inputs[start:start + batch_size].to(step.device).float().div_(255)
            context, state = step.encode(chunk)
        hyps = beam_search(step, state, context, bos_id=vocab.bos_id, eos_id=vocab.eos_id,
                           beam_size=beam_size, max_length=max_length, top_k=step.top_k)
        texts.extend(vocab.decode(h[0].tokens) for h in hyps)
    return texts


# ---------------------------------------------------------------------------- the command

train = TrainingCommand(
    config=CaptionTaskConfig, task=CaptionTask,
    flags=("data", "arch", "layer_norm", "encoder_init", "init_from", "regions_run", "features"),
    trainer_defaults={"early_stop_metric": "cider_d"}, run_files=save_vocab)
