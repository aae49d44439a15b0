"""The `glimpse` command.

Every subcommand is declared here, in COMMANDS, with its arguments and the
"module:function" that runs it, called with the parsed arguments. The module is
imported only when its subcommand runs, so `glimpse serve` works from a
serve-only install (no torch) and `glimpse --help` is instant. Every
`glimpse train FAMILY` names its family's TrainingCommand
("training.tasks.FAMILY:train", training.tasks), which does the set-up all
training shares.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

Configure = Callable[[argparse.ArgumentParser], None]
# The registered captioners (models.captioners), listed here so that --help needs no torch.
CAPTION_ARCHS = ("nic", "sat-soft", "sat-hard", "updown", "mrnn")


class Command(NamedTuple):
    target: str  # "module:function"; function(args) -> exit status
    help: str
    configure: Configure  # adds the command's arguments


def _data_shapes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-train", type=int, default=5000)
    p.add_argument("--num-val", type=int, default=500)
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--num-novel", type=int, default=1000)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (64, 128, 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--min-objects", type=int, default=1, help="fewest objects per image")
    p.add_argument("--max-objects", type=int, default=4,
                   help="most objects per image (1: single-object scenes for text-to-image)")


def _data_clips(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-train", type=int, default=5000)
    p.add_argument("--num-val", type=int, default=500)
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--num-novel", type=int, default=1000)
    p.add_argument("--frames", type=int, default=16, help="frames per clip (4 to 64)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _eval_captions(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help='COCO results JSON: [{"image_id", "caption"}]')
    p.add_argument("--dataset", required=True, help="directory holding captions.json")
    p.add_argument("--split", default="test")
    p.add_argument("--meteor", action=argparse.BooleanOptionalAction, default=None,
                   help="score METEOR (needs Java; default: when java is on PATH)")


def _eval_vqa(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help='VQA results JSON: [{"question_id", "answer"}]')
    p.add_argument("--dataset", required=True, help="directory holding the VQA files")
    p.add_argument("--split", default="test")


def _serve(p: argparse.ArgumentParser) -> None:
    from service.cli_args import add_serve_arguments

    add_serve_arguments(p)


def _trainer_arguments(p: argparse.ArgumentParser) -> None:
    """The knobs every trainer-driven `glimpse train` command shares (training.trainer)."""
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps", type=int, default=None,
                   help="stop after this many optimizer steps (a quick run)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue from the run directory's last checkpoint")


def _train_caption(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=CAPTION_ARCHS, default=None)
    p.add_argument("--layer-norm", action="store_true",
                   help="layer-normalised recurrence (the LSTMs; the m-RNN's ReLU RNN)")
    p.add_argument("--data", default=None, help="dataset directory (captions.json)")
    p.add_argument("--out", required=True, help="run directory for checkpoints and logs")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    p.add_argument("--encoder-init", default=None,
                   help="run directory of `glimpse train encoder` to start the encoder from")
    p.add_argument("--init-from", default=None,
                   help="caption run directory to fine-tune from (same data and vocabulary)")
    p.add_argument("--regions-run", default=None,
                   help="updown: run directory of `glimpse train regions` (frozen RegionNet)")
    p.add_argument("--features", default=None,
                   help="updown: directory of the precomputed region features {split}.npz")
    _trainer_arguments(p)


def _train_encoder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="shapes world directory (scenes.json)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    _trainer_arguments(p)


def _train_text_encoder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="single-object shapes world (data/t2i)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    p.add_argument("--encoder-init", default=None,
                   help="run directory of `glimpse train encoder` (the frozen image CNN)")
    _trainer_arguments(p)


def _eval_generation(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="generation bundle (model_repository/NAME/VERSION), or "
                                "'real' to score the split's own images (the ceiling)")
    p.add_argument("--data", required=True, help="single-object shapes world (data/t2i)")
    p.add_argument("--split", choices=["val", "test", "novel"], default="test",
                   help="val: for choosing between checkpoints without reading the test split")
    p.add_argument("--prompts", type=int, default=200, help="number of prompts")
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0,
                   help="fixes the prompts and each prompt's own noise seed")
    p.add_argument("--shared-noise", action="store_true",
                   help="draw every prompt with --seed itself (the same noise vectors for "
                        "every prompt), as figures recorded before per-prompt seeds were")
    p.add_argument("--tagger", default="runs/encoder",
                   help="`glimpse train encoder` run; images are judged at the size it was "
                        "trained at (runs/tagger128 of configs/tagger128.json: 128 px)")
    p.add_argument("--text-encoder", default="runs/text-encoder",
                   help="`glimpse train text-encoder` run (R-precision)")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    p.add_argument("--grid", default=None, help="save a sample grid PNG here")
    p.add_argument("--grid-prompts", type=int, default=8, help="rows of the sample grid")
    p.add_argument("--write-manifest", action="store_true",
                   help="record the metrics in the bundle's manifest under metrics[split] "
                        "(metrics[split_<S>px] for a tagger of another size S)")


def _eval_judge(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="generation bundle (model_repository/NAME/VERSION), 'real' "
                                "to judge the split's images against their own captions, or a "
                                "`glimpse train dvae` run to judge its reconstructions of them")
    p.add_argument("--data", required=True,
                   help="shapes-world dataset: single-object (data/t2i) or scenes (data/shapes)")
    p.add_argument("--split", choices=["test", "novel"], default="test")
    p.add_argument("--prompts", type=int, default=200,
                   help="prompts, from distinct images ('real': images, every caption)")
    p.add_argument("--samples-per-prompt", type=int, default=1)
    p.add_argument("--candidates", type=int, default=None,
                   help="DALL-E: samples drawn per image and reranked (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regions-run", default="runs/regions",
                   help="`glimpse train regions` run: the judge's region detector")
    p.add_argument("--threshold", type=float, default=None,
                   help="centre score an object needs (default: calibrated on the val split)")
    p.add_argument("--calibrate-on", default=None,
                   help="dataset whose val split calibrates the threshold (default: --data)")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--grid", default=None, help="save a sample grid PNG here")
    p.add_argument("--grid-prompts", type=int, default=8, help="rows of the sample grid")
    p.add_argument("--grid-label-width", type=int, default=200, help="pixels of prompt text")
    p.add_argument("--write-manifest", action="store_true",
                   help="record the metrics in the bundle's manifest")


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="training run directory holding a checkpoint")
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--name", required=True, help="model name: lowercase, digits, '-'")
    p.add_argument("--version", type=int, default=None, help="default: next free version")


def _eval_bundle(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="bundle directory (model_repository/NAME/VERSION)")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--split", default="test")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--meteor", action=argparse.BooleanOptionalAction, default=None,
                   help="score METEOR (needs Java; default: when java is on PATH)")
    p.add_argument("--write-manifest", action="store_true",
                   help="record the metrics in the bundle's manifest")


def _train_retrieval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="dataset directory (captions.json)")
    p.add_argument("--out", required=True, help="run directory for checkpoints and logs")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    p.add_argument("--layer-norm", action="store_true", help="layer-normalised GRU")
    p.add_argument("--loss", choices=["sum", "max"], default=None,
                   help="hinge over all negatives (VSE) or the hardest one (VSE++)")
    p.add_argument("--encoder-init", default=None,
                   help="run directory of `glimpse train encoder` (the frozen image encoder)")
    _trainer_arguments(p)


def _compact(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="bundle directory (model_repository/NAME/VERSION)")
    p.add_argument("--version", type=int, default=None, help="default: next free version")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity inputs")


def _index(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="retrieval bundle directory (model_repository/NAME/VERSION)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="dataset directory: index a split's images and sentences")
    source.add_argument("--images", help="folder of images: index the images only")
    source.add_argument("--rebuild", action="store_true",
                        help="keep the stored gallery; build its search index again")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--index", choices=["exact", "hnsw", "ivfpq", "qdrant"], default="exact",
                   help="how the gallery is searched: exact (every vector), an approximate "
                   "FAISS index (hnsw: fast, more memory; ivfpq: compact), or a Qdrant "
                   "collection (uploaded by the service at load)")
    p.add_argument("--index-param", action="append", metavar="KEY=VALUE",
                   help="an index parameter, e.g. M=32, ef_search=128 (hnsw) or nlist=1024, "
                   "m=32, nprobe=64, refine=10 (ivfpq), hnsw_m=16, hnsw_ef=128 (qdrant); repeat "
                   "for several")


def _eval_retrieval(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="retrieval bundle directory (model_repository/NAME/VERSION)")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--write-manifest", action="store_true",
                   help="record the metrics in the bundle's manifest")


def _train_vqa(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="dataset directory (vqa/ questions and answers)")
    p.add_argument("--features", default=None,
                   help="directory of precomputed region features {split}.npz "
                        "(default: DATA/features/regions)")
    p.add_argument("--regions-run", default=None,
                   help="run directory of the region detector that computed the features")
    p.add_argument("--out", required=True, help="run directory for checkpoints and logs")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    _trainer_arguments(p)


def _eval_vqa_bundle(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="vqa bundle directory (model_repository/NAME/VERSION)")
    p.add_argument("--data", required=True, help="dataset directory (vqa/ and the images)")
    p.add_argument("--splits", nargs="+", default=["test", "novel"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="the first N questions only")
    p.add_argument("--write-manifest", action="store_true",
                   help="record the metrics in the bundle's manifest")


def _train_gan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", choices=["gan", "gan-cls", "gan-int", "gan-int-cls"],
                   default=None, help="loss of Reed et al. 2016 (default gan-int-cls)")
    _t2i_arguments(p)


def _train_stackgan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", type=int, choices=[1, 2], required=True)
    p.add_argument("--stage1-run", default=None, help="stage 2: the Stage-I run it refines")
    _t2i_arguments(p)


def _t2i_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="single-object text-to-image set (data/t2i)")
    p.add_argument("--text-encoder", default=None,
                   help="run directory of `glimpse train text-encoder` (phi(t), frozen)")
    p.add_argument("--out", required=True, help="run directory for checkpoints and samples")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--sample-every", type=int, default=None, help="steps between sample grids")
    p.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true")


def _train_dvae(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", default=None,
                   help="shapes-world dataset directories whose training images it learns "
                        "(default: data/t2i data/shapes)")
    p.add_argument("--encoder-init", default=None,
                   help="run directory of `glimpse train encoder` whose frozen annotation grid "
                        "the code logits are read from (default: a conv encoder from scratch)")
    p.add_argument("--perceptual-init", default=None,
                   help="run directory of `glimpse train encoder` whose features the "
                        "reconstructions must match (with the config's perceptual_weight)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    p.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    _trainer_arguments(p)


def _train_dalle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", default=None,
                   help="shapes-world dataset directories of (image, caption) pairs "
                        "(default: data/t2i data/shapes)")
    p.add_argument("--dvae-run", default=None,
                   help="run directory of `glimpse train dvae` (its codes are the image tokens)")
    p.add_argument("--attention", choices=["dense", "sparse"], default=None,
                   help="dense causal attention, or the paper's row/column/conv masks")
    p.add_argument("--reranker", default=None,
                   help="retrieval bundle whose joint embedding the exported bundle reranks with")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    p.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    _trainer_arguments(p)


def _train_regions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="shapes world directory (scenes.json)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--encoder-init", default=None,
                   help="run directory of `glimpse train encoder` (its encoder stays frozen)")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    _trainer_arguments(p)


def _features_regions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory of `glimpse train regions`")
    p.add_argument("--data", required=True,
                   help="dataset directory; writes DATA/features/regions/SPLIT.npz")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test", "novel"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None)


def _features_clips(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder-run", required=True,
                   help="run directory of `glimpse train encoder` (the frozen frame encoder)")
    p.add_argument("--data", required=True, help="clip set directory (`glimpse data clips`)")
    p.add_argument("--out", default=None, help="default: DATA/features/frames")
    p.add_argument("--grid", type=int, default=4,
                   help="G: the encoder's grid averaged to G x G cells per frame")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test", "novel"])
    p.add_argument("--batch-size", type=int, default=32, help="clips per encoder batch")
    p.add_argument("--device", default=None)


def _video_task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="clip set directory (`glimpse data clips`)")
    p.add_argument("--features", default=None,
                   help="directory of the frame features {split}.npz "
                        "(default: DATA/features/frames)")
    p.add_argument("--encoder-run", default=None,
                   help="run directory of `glimpse train encoder` that computed the features "
                        "(its encoder goes into the exported frame graph)")
    p.add_argument("--out", required=True, help="run directory for checkpoints and logs")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    _trainer_arguments(p)


def _train_activity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", choices=["rgb", "motion"], default=None,
                   help="frames, or motion images (frame differences)")
    p.add_argument("--temporal", choices=["lstm", "single-frame"], default=None,
                   help="LRCN's LSTM over the frames, or the single-frame baseline")
    _video_task_arguments(p)


def _train_activity_fusion(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rgb-run", required=True, help="`glimpse train activity --input rgb` run")
    p.add_argument("--motion-run", required=True,
                   help="`glimpse train activity --input motion` run")
    p.add_argument("--data", default=None, help="clip set (default: the RGB run's)")
    p.add_argument("--features", default=None,
                   help="frame features directory (default: DATA/features/frames)")
    p.add_argument("--out", required=True, help="run directory of the fused model")


def _train_video_caption(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=["lstm-encoder", "mean-pool"], default=None)
    _video_task_arguments(p)


def _eval_activity(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="activity bundle directory (model_repository/NAME/VERSION)")
    p.add_argument("--data", required=True, help="clip set directory")
    p.add_argument("--splits", nargs="+", default=["test", "novel"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="the first N clips only")
    p.add_argument("--write-manifest", action="store_true",
                   help="record the metrics in the bundle's manifest")


def _eval_video_caption(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="video-caption bundle directory (model_repository/NAME/VERSION)")
    p.add_argument("--data", required=True, help="clip set directory")
    p.add_argument("--splits", nargs="+", default=["test", "novel"])
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="the first N clips only")
    p.add_argument("--write-manifest", action="store_true",
                   help="record the metrics in the bundle's manifest")


def _train_alignment(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="dataset directory (captions.json, scenes.json)")
    p.add_argument("--features", default=None,
                   help="directory of precomputed region features {split}.npz "
                        "(default: DATA/features/regions)")
    p.add_argument("--regions-run", default=None,
                   help="run directory of `glimpse train regions` that computed the features "
                        "(its RegionNet goes into the exported image graph)")
    p.add_argument("--out", required=True, help="run directory for checkpoints and logs")
    p.add_argument("--config", default=None, help="JSON file with any of the knobs")
    _trainer_arguments(p)


def _eval_alignment(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="alignment bundle directory (model_repository/NAME/VERSION)")
    p.add_argument("--data", required=True, help="dataset directory (captions.json, scenes.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 1.0, 4.0],
                   help="MRF bonus values to measure alignment at")
    p.add_argument("--limit", type=int, default=None, help="the first N images only")
    p.add_argument("--write-manifest", action="store_true",
                   help="record the metrics in the bundle's manifest")


# (group, name) -> the command. Training commands are their family's TrainingCommand.
COMMANDS: dict[tuple[str, str | None], Command] = {
    ("data", "shapes"): Command(
        "training.data.shapes:run",
        "generate the shapes world: images, captions, VQA, scenes", _data_shapes),
    ("data", "clips"): Command(
        "training.data.clips:run",
        "generate shapes-world clips: activity labels (UCF-101) and descriptions (MSR-VTT)",
        _data_clips),
    ("train", "encoder"): Command(
        "training.tasks.encoder:train",
        "pre-train an image encoder on the shapes world's attributes", _train_encoder),
    ("train", "caption"): Command(
        "training.tasks.caption:train",
        "train a captioning model (NIC, SAT soft/hard, Up-Down, m-RNN)", _train_caption),
    ("train", "regions"): Command(
        "training.tasks.regions:train",
        "train bottom-up region proposals and features on a frozen encoder", _train_regions),
    ("features", "regions"): Command(
        "training.tasks.regions:features",
        "write a region run's boxes and features for dataset splits (features/regions)",
        _features_regions),
    ("features", "clips"): Command(
        "training.tasks.frames:features",
        "write the frozen frame encoder's features of a clip set (features/frames)",
        _features_clips),
    ("train", "activity"): Command(
        "training.tasks.activity:train",
        "train LRCN activity recognition (RGB or motion; LSTM or single-frame) on frame "
        "features", _train_activity),
    ("fuse", "activity"): Command(
        "training.tasks.activity:fuse",
        "late fusion of an RGB and a motion activity run, its weight chosen on validation "
        "clips", _train_activity_fusion),
    ("train", "video-caption"): Command(
        "training.tasks.video_caption:train",
        "train LRCN video description (LSTM encoder-decoder or mean-pool) on frame features",
        _train_video_caption),
    ("train", "vqa"): Command(
        "training.tasks.vqa:train",
        "train a Bottom-Up/Top-Down VQA model on precomputed region features", _train_vqa),
    ("train", "alignment"): Command(
        "training.tasks.alignment:train",
        "train region-word alignment (Karpathy & Fei-Fei 2015) on region features",
        _train_alignment),
    ("train", "retrieval"): Command(
        "training.tasks.retrieval:train",
        "train an image-sentence embedding for retrieval (VSE, VSE++)", _train_retrieval),
    ("train", "text-encoder"): Command(
        "training.tasks.text_encoder:train",
        "train Reed et al.'s char-CNN-RNN text encoder in a joint embedding",
        _train_text_encoder),
    ("train", "gan"): Command(
        "training.tasks.gan:train",
        "train a text-to-image GAN (GAN, GAN-CLS, GAN-INT, GAN-INT-CLS)", _train_gan),
    ("train", "stackgan"): Command(
        "training.tasks.stackgan:train",
        "train a StackGAN stage (Stage-I 64 px, Stage-II 128 px)", _train_stackgan),
    ("train", "dvae"): Command(
        "training.tasks.dvae:train",
        "train DALL-E's discrete VAE (image -> grid of codebook ids -> image)", _train_dvae),
    ("train", "dalle"): Command(
        "training.tasks.dalle:train",
        "train DALL-E's transformer over caption words and the dVAE's image codes",
        _train_dalle),
    ("export", None): Command(
        "training.export:export",
        "export a training run to a model bundle (ONNX graphs + manifest); "
        "prints the bundle directory on the last line", _export),
    ("compact", None): Command(
        "training.export.compact:compact",
        "write a new version of a bundle with its graphs' weights in half precision; "
        "prints the bundle directory on the last line", _compact),
    ("index", None): Command(
        "training.index:index",
        "embed a dataset split or an image folder as a retrieval bundle's gallery", _index),
    ("eval", "bundle"): Command(
        "training.evaluate.caption:eval_bundle",
        "evaluate a caption bundle through the service runtime", _eval_bundle),
    ("eval", "vqa-bundle"): Command(
        "training.evaluate.vqa:eval_vqa_bundle",
        "VQA accuracy of a vqa bundle per split and question type, through the service runtime",
        _eval_vqa_bundle),
    ("eval", "alignment"): Command(
        "training.evaluate.alignment:eval_alignment",
        "retrieval and noun-phrase alignment accuracy of an alignment bundle", _eval_alignment),
    ("eval", "retrieval"): Command(
        "training.evaluate.retrieval:eval_retrieval",
        "recall of a retrieval bundle on a dataset split, through the service runtime",
        _eval_retrieval),
    ("eval", "generation"): Command(
        "training.evaluate.generation:eval_generation",
        "score generated images: attribute accuracy, IS, FID, R-precision, diversity",
        _eval_generation),
    ("eval", "judge"): Command(
        "training.evaluate.judge:eval_judge",
        "judge text-to-image samples: parse each image into a scene, check its prompt",
        _eval_judge),
    ("eval", "activity"): Command(
        "training.evaluate.activity:eval_activity",
        "activity accuracy of an activity bundle, per class and per stream", _eval_activity),
    ("eval", "video-caption"): Command(
        "training.evaluate.video_caption:eval_video_caption",
        "description metrics of a video-caption bundle: semantic exactness, CIDEr-D",
        _eval_video_caption),
    ("eval", "captions"): Command(
        "training.metrics.cli:eval_captions",
        "score COCO-format caption results against a dataset split", _eval_captions),
    ("eval", "vqa"): Command(
        "training.metrics.cli:eval_vqa",
        "score VQA-format answers against a dataset split", _eval_vqa),
    ("serve", None): Command(
        "service.__main__:run",
        "start the HTTP service on a model repository", _serve),
}


def build_parser(commands: dict[tuple[str, str | None], Command] = COMMANDS
                 ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glimpse",
        description="Train, export, evaluate and serve image-language models.",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    sub_of: dict[str, argparse._SubParsersAction] = {}
    for (group, name), (target, help_text, configure) in commands.items():
        if name is None:
            p = groups.add_parser(group, help=help_text, description=help_text)
        else:
            if group not in sub_of:
                gp = groups.add_parser(group, help=f"{group} commands")
                sub_of[group] = gp.add_subparsers(dest="command", metavar="SUBCOMMAND",
                                                  required=True)
            p = sub_of[group].add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(_target=target, _command=f"{group} {name or ''}".strip())
    return parser


def command_function(target: str) -> Callable[[argparse.Namespace], int | None]:
    """The function a "module:function" target names (its module imported now)."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(command_function(args._target)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
