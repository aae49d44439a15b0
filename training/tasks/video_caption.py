"""LRCN video description as a trainer task, and `glimpse train video-caption`.

Data: a clip set's MSR-VTT-style videodatainfo.json (five descriptions per clip)
and the frozen frame encoder's features of its clips (`glimpse features clips`,
training/tasks/frames.py). The description models read a clip only through
those features, so the run trains on them: the LSTM encoder-decoder (`--arch
lstm-encoder`, Sec. 6 of Donahue et al.) or the mean-pooled features feeding
the decoder (`--arch mean-pool`, Venugopalan et al. 2015). One training example
is one (clip, description) pair. Validation decodes greedily through the
service's beam search and scores CIDEr-D, which drives early stopping, and
semantic exactness (the clip grammar's checker, training.metrics.semantic). CIDEr-D
rather than exactness picks the checkpoint because exactness stays near zero for
many epochs (as for NIC on still scenes: a single encoding of the clip names the
wrong objects long after the grammar is right), which would stop a run at once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.lrcn import VideoCaptionConfig, build_video_caption_model
from training.data.clip_features import ClipFeatures
from training.data.clips import ClipSetInfo, load_clips
from training.data.language import caption_tokens
from training.data.readers import VideoCaptions, load_msrvtt
from training.data.tokenizer import WordVocab
from training.tasks import TrainingCommand, save_vocab
from training.tasks.frames import default_features_dir, load_video_features
from training.trainer import config_from_dict

log = logging.getLogger(__name__)


@dataclass
class VideoCaptionTaskConfig:
    data: str = "data/clips"
    features: str | None = None  # {split}.npz of `glimpse features clips`
    encoder_run: str | None = None  # default: the run the features name
    arch: str = "lstm-encoder"  # "lstm-encoder" | "mean-pool"
    min_count: int = 1
    max_length: int = 24  # longest training description in tokens, eos included
    val_clips: int = 400
    model: dict = field(default_factory=dict)  # VideoCaptionConfig settings (hidden_dim, ...)
    trainer: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> VideoCaptionTaskConfig:
        return config_from_dict(cls, d, "video description training")


def split_videos(dataset_dir: Path, split: str) -> list[VideoCaptions]:
    """The videos of a split of the set's videodatainfo.json, in file order."""
    return [v for v in load_msrvtt(dataset_dir / "videodatainfo.json") if v.split == split]


def video_rows(features: ClipFeatures, videos: list[VideoCaptions]) -> np.ndarray:
    """Row of each video's clip in `features` (MSR-VTT's url is the clip's file)."""
    return features.rows([v.url for v in videos])


def encode_descriptions(vocab: WordVocab, token_lists: list[list[str]], max_length: int
                        ) -> torch.Tensor:
    """(N, max_length + 1) ids: <bos> w1 .. wn <eos> <pad>..., truncated to fit."""
    out = torch.full((len(token_lists), max_length + 1), vocab.pad_id, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        ids = vocab.encode(list(tokens)[: max_length - 1], add_bos=True, add_eos=True)
        out[i, : len(ids)] = torch.tensor(ids)
    return out


class VideoCaptionTask:
    def __init__(self, config: VideoCaptionTaskConfig):
        self.config = config
        self.dataset_dir = Path(config.data)
        self.info = ClipSetInfo.load(self.dataset_dir)
        features_dir = Path(config.features or default_features_dir(self.dataset_dir))
        features = load_video_features(features_dir, ("train", "val"), config.encoder_run)
        self.encoder_run, self.encoder_weights = features.encoder_run, features.encoder_weights
        train = split_videos(self.dataset_dir, "train")
        self.val = split_videos(self.dataset_dir, "val")[: config.val_clips]
        train_tokens = [[caption_tokens(c) for c in v.captions] for v in train]
        self.vocab = WordVocab.build([t for tokens in train_tokens for t in tokens],
                                     min_count=config.min_count)
        self.train_x = torch.from_numpy(features.splits["train"].rgb[
            video_rows(features.splits["train"], train)])
        self.val_x = torch.from_numpy(features.splits["val"].rgb[
            video_rows(features.splits["val"], self.val)])
        pairs = [(i, tokens) for i, per_clip in enumerate(train_tokens) for tokens in per_clip]
        self.pair_clip = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        self.pair_caption = encode_descriptions(self.vocab, [t for _, t in pairs],
                                                config.max_length)
        meta = features.splits["train"].meta
        self.caption_config = VideoCaptionConfig(
            arch=config.arch, vocab_size=len(self.vocab), pad_id=self.vocab.pad_id,
            freeze_encoder=True, frame_grid=meta.grid, encoder=features.encoder_config,
            **config.model)
        self.features_meta = asdict(meta)
        clips = load_clips(self.dataset_dir)  # the ground truth the checker reads
        self.val_truth = {v.id: clips[v.id] for v in self.val}
        self.num_train_clips = len(train)
        log.info("%d train clips (%d descriptions), %d val clips, %d words", len(train),
                 len(pairs), len(self.val), len(self.vocab))

    # -- Task protocol -------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        model = build_video_caption_model(self.caption_config)
        model.encoder.load_state_dict(self.encoder_weights)
        return model

    def model_config(self) -> dict:
        return {"task": "video-caption", "video_caption": self.caption_config.to_dict(),
                "image_size": self.info.image_size, "frames": self.info.frames,
                "vocab": self.vocab.to_dict(),
                "data": {"dir": str(self.dataset_dir), "train_clips": self.num_train_clips,
                         "train_pairs": len(self.pair_clip), "features": self.features_meta},
                "encoder_run": str(self.encoder_run), "task_config": asdict(self.config)}

    def num_examples(self) -> int:
        return len(self.pair_clip)

    def batch(self, indices: torch.Tensor, device: torch.device):
        features = self.train_x[self.pair_clip[indices]].to(device).float()
        caps = self.pair_caption[indices]
        length = int((caps != self.vocab.pad_id).sum(1).max())
        caps = caps[:, :length].to(device)
        return (features,), caps[:, :-1], caps[:, 1:]

    def loss(self, model, batch):
        inputs, captions_in, captions_out = batch
        _, loss = model(inputs, captions_in, captions_out)
        return loss, {}

    def evaluate(self, model) -> dict[str, float]:
        from training.metrics.captions import caption_metrics
        from training.metrics.semantic import clip_semantic_scores

        texts = describe(model, self.val_x, self.vocab, beam_size=1,
                         max_length=self.config.max_length)
        results = {v.id: text for v, text in zip(self.val, texts, strict=True)}
        refs = {v.id: list(v.captions) for v in self.val}
        metrics = caption_metrics(results, refs, meteor=False)
        out = {k: v for k, v in metrics.items() if isinstance(v, float)}
        semantic = clip_semantic_scores(results, self.val_truth)
        out.update({"semantic_exactness": semantic["semantic_exactness"],
                    "coverage": semantic["coverage"]})
        return out


@torch.no_grad()
def describe(model, features: torch.Tensor, vocab: WordVocab, *, beam_size: int,
             max_length: int, batch_size: int = 128) -> list[str]:
    """Descriptions of clips given as φ (N, T, F), through the service's beam search."""
    from service.decoding import beam_search
    from training.export.caption import TorchCaptionStep

    step = TorchCaptionStep(model)  # puts the model in eval mode
    texts: list[str] = []
    for start in range(0, len(features), batch_size):
        context, state = step.encode_features(features[start:start + batch_size].float())
        hyps = beam_search(step, state, context, bos_id=vocab.bos_id, eos_id=vocab.eos_id,
                           beam_size=beam_size, max_length=max_length, top_k=step.top_k)
        texts.extend(vocab.decode(h[0].tokens) for h in hyps)
    return texts


# ---------------------------------------------------------------------------- the command

train = TrainingCommand(
    config=VideoCaptionTaskConfig, task=VideoCaptionTask,
    flags=("data", "features", "encoder_run", "arch"),
    trainer_defaults={"early_stop_metric": "cider_d"}, run_files=save_vocab)
