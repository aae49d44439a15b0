"""From a generated clip set to exported video bundles: features, training, fusion, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.attributes import AttributeConfig, AttributeTagger
from models.encoder import EncoderConfig
from service.bundle import load_bundle
from training.checkpoint import save_checkpoint
from training.cli import main as glimpse
from training.data.clip_features import load_features, split_path
from training.data.clips import generate_clips, read_clip
from training.evaluate.activity import evaluate_activity, pair_accuracy
from training.evaluate.video_caption import evaluate_video_caption
from training.export.activity import load_activity_run
from training.export.video_caption import load_video_caption_run
from training.runs import frozen_encoder
from training.tasks.activity import fusion_weight
from training.tasks.frames import clip_paths

COUNTS = {"train": 24, "val": 8, "test": 8, "novel": 4}
FRAMES, SIZE, GRID = 6, 32, 2
TRAINER = {"epochs": 2, "batch_size": 8, "lr": 0.01, "warmup_steps": 0, "seed": 0,
           "progress": False}


def tiny_encoder_run(run_dir: Path, seed: int = 0) -> Path:
    """A `glimpse train encoder` run with a tiny random tagger (4 x 4 grid at 32 px)."""
    torch.manual_seed(seed)
    config = AttributeConfig(encoder=EncoderConfig(out_dim=8, channels=(4, 8, 8)))
    save_checkpoint(run_dir / "checkpoints" / "best", model=AttributeTagger(config),
                    config={"model": {"task": "attributes", "attributes": config.to_dict()}})
    return run_dir


@pytest.fixture(scope="module")
def clip_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    generate_clips(root / "clips", COUNTS, frames=FRAMES, size=SIZE, seed=1, workers=1,
                   progress=False)
    tiny_encoder_run(root / "encoder")
    assert glimpse(["features", "clips", "--encoder-run", str(root / "encoder"), "--data",
                    str(root / "clips"), "--grid", str(GRID), "--batch-size", "5"]) == 0
    return root


def run_config(path: Path, **settings) -> str:
    path.write_text(json.dumps({**settings, "trainer": TRAINER}))
    return str(path)


def test_features_are_the_encoders_grid_of_every_frame_and_motion_image(clip_set):
    features = load_features(split_path(clip_set / "clips" / "features" / "frames", "test"))
    assert features.paths == clip_paths(clip_set / "clips", "test")
    assert features.rgb.shape == (COUNTS["test"], FRAMES, GRID * GRID * 8)
    assert features.motion.shape == (COUNTS["test"], FRAMES - 1, GRID * GRID * 8)
    assert features.rgb.dtype == np.float16
    _, _, encoder = frozen_encoder(clip_set / "encoder")
    frames = torch.from_numpy(read_clip(clip_set / "clips" / features.paths[2]))
    x = frames.permute(0, 3, 1, 2).float().div(255)
    _, cells = encoder(x)  # (T, 16, 8): a 4 x 4 grid, averaged to 2 x 2 below
    top_left = cells.view(FRAMES, 4, 4, 8)[:, :2, :2].mean(dim=(1, 2))
    np.testing.assert_allclose(features.rgb[2][:, :8], top_left.detach().numpy(), atol=2e-2)
    motion = 0.5 + 0.5 * (x[1:] - x[:-1])
    _, motion_cells = encoder(motion)
    np.testing.assert_allclose(features.motion[2][:, :8],
                               motion_cells.view(FRAMES - 1, 4, 4, 8)[:, :2, :2]
                               .mean(dim=(1, 2)).detach().numpy(), atol=2e-2)


def test_features_of_another_encoder_are_refused(clip_set, tmp_path):
    other = tiny_encoder_run(tmp_path / "other", seed=5)
    with pytest.raises(ValueError, match="whose weights differ"):
        glimpse(["train", "activity", "--data", str(clip_set / "clips"), "--encoder-run",
                 str(other), "--out", str(tmp_path / "run"),
                 "--config", run_config(tmp_path / "c.json")])


@pytest.fixture(scope="module")
def activity_runs(clip_set, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("activity")
    config = run_config(root / "config.json", model={"hidden_dim": 8, "frame_embed_dim": 8,
                                                     "dropout": 0.0}, val_clips=8)
    runs = {}
    for name, args in {"rgb": ["--input", "rgb"], "motion": ["--input", "motion"],
                       "single": ["--temporal", "single-frame"]}.items():
        runs[name] = root / name
        assert glimpse(["train", "activity", "--data", str(clip_set / "clips"), "--out",
                        str(runs[name]), "--config", config, *args]) == 0
    runs["fusion"] = root / "fusion"
    assert glimpse(["fuse", "activity", "--rgb-run", str(runs["rgb"]), "--motion-run",
                    str(runs["motion"]), "--out", str(runs["fusion"])]) == 0
    return runs


def test_activity_runs_train_on_features_with_a_frozen_encoder(activity_runs, clip_set):
    summary = json.loads((activity_runs["rgb"] / "summary.json").read_text())
    assert summary["steps"] == 2 * 3  # 24 clips, batch 8, two epochs
    assert 0.0 <= summary["history"][-1]["accuracy"] <= 1.0
    (stream,), config = load_activity_run(activity_runs["motion"])
    assert stream.input == "motion" and stream.model.config.freeze_encoder
    _, weights, _ = frozen_encoder(clip_set / "encoder")
    for name, tensor in stream.model.encoder.state_dict().items():
        torch.testing.assert_close(tensor, weights[name])  # the encoder never trained
    (single,), _ = load_activity_run(activity_runs["single"])
    assert single.model.state_names == () and config["model"]["frames"] == FRAMES


def test_fusion_picks_its_weight_on_validation_and_exports_both_streams(activity_runs, clip_set,
                                                                         tmp_path):
    streams, config = load_activity_run(activity_runs["fusion"])
    weight = config["model"]["fusion"]["rgb_weight"]
    assert [s.input for s in streams] == ["rgb", "motion"]
    assert [s.weight for s in streams] == pytest.approx([weight, 1 - weight])
    assert glimpse(["export", str(activity_runs["fusion"]), "--repository",
                    str(tmp_path), "--name", "activity-test"]) == 0
    manifest = load_bundle(tmp_path / "activity-test" / "1").manifest
    assert manifest.task == "activity" and manifest.architecture == "lrcn-fusion"
    assert set(manifest.graphs) == {"frame_encoder", "rgb_step", "motion_step"}
    streams = manifest.inference["streams"]
    # the LSTMs carry the previous frame's projection (frame_diff, on by default)
    assert [(s["input"], s["state"]) for s in streams] == [("rgb", ["h", "c", "prev"]),
                                                          ("motion", ["h", "c", "prev"])]
    assert max(manifest.training["parity_max_abs_diff"].values()) < 1e-4
    metrics = evaluate_activity(tmp_path / "activity-test" / "1", clip_set / "clips", "test",
                                progress=False)
    assert metrics["n_clips"] == COUNTS["test"] and set(metrics["streams"]) == {"rgb", "motion"}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert np.array(metrics["confusion"]).sum() == COUNTS["test"]
    assert glimpse(["eval", "activity", str(tmp_path / "activity-test" / "1"), "--data",
                    str(clip_set / "clips"), "--splits", "novel", "--write-manifest"]) == 0
    recorded = load_bundle(tmp_path / "activity-test" / "1").manifest.metrics
    assert recorded["novel"]["n_clips"] == COUNTS["novel"]


def test_pair_accuracy_compares_the_two_classes_of_each_single_frame_pair():
    classes = ["move_left", "move_right", "grow", "shrink", "bounce"]
    labels = np.array([0, 1, 2, 3, 4])
    probs = np.array([[0.5, 0.2, 0.1, 0.1, 0.1],  # left over right: right
                      [0.6, 0.3, 0.0, 0.0, 0.1],  # right scores below left: wrong
                      [0.0, 0.0, 0.2, 0.1, 0.7],  # grow over shrink, though bounce wins
                      [0.0, 0.0, 0.3, 0.3, 0.4],  # a tie is not right
                      [0.0, 0.0, 0.0, 0.0, 1.0]])
    pairs = pair_accuracy(probs, labels, classes)
    assert pairs == {"move_left/move_right": 0.5, "grow/shrink": 0.5, "mean": 0.5}


def test_fusion_weight_is_the_best_on_validation_and_nearest_even_on_ties():
    labels = torch.tensor([0, 1, 1])
    rgb = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    motion = torch.tensor([[0.4, 0.6], [0.1, 0.9], [0.3, 0.7]])
    weight, accuracy = fusion_weight(rgb, motion, labels)
    assert accuracy["1.00"] == pytest.approx(2 / 3) and accuracy["0.00"] == pytest.approx(2 / 3)
    assert accuracy[f"{weight:.2f}"] == 1.0 and weight == pytest.approx(0.5)
    tie_rgb, tie_motion = torch.tensor([[0.6, 0.4]]), torch.tensor([[0.7, 0.3]])
    assert fusion_weight(tie_rgb, tie_motion, torch.tensor([0]))[0] == pytest.approx(0.5)


@pytest.mark.parametrize("arch", ["lstm-encoder", "mean-pool"])
def test_video_caption_trains_on_features_and_exports(arch, clip_set, tmp_path):
    config = run_config(tmp_path / "config.json", val_clips=8,
                        model={"embed_dim": 8, "hidden_dim": 16, "frame_embed_dim": 8,
                               "dropout": 0.0})
    run = tmp_path / "run"
    assert glimpse(["train", "video-caption", "--arch", arch, "--data", str(clip_set / "clips"),
                    "--out", str(run), "--config", config]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert {"semantic_exactness", "coverage", "cider_d"} <= set(summary["history"][0])
    model, vocab, _ = load_video_caption_run(run)
    assert (run / "vocab.json").exists() and len(vocab) == model.config.vocab_size
    assert glimpse(["export", str(run), "--repository", str(tmp_path / "repo"),
                    "--name", "video-test"]) == 0
    manifest = load_bundle(tmp_path / "repo" / "video-test" / "1").manifest
    assert manifest.task == "video-caption" and manifest.decoding.beam_size == 5
    graphs = {"frame_encoder", "decoder_step"} | ({"encoder_step"} if arch == "lstm-encoder"
                                                  else set())
    assert set(manifest.graphs) == graphs
    assert manifest.inference == {"frames": FRAMES, "feature_dim": GRID * GRID * 8,
                                  "video_encoder": arch} | (
        {"encoder_state": ["h", "c", "prev"]} if arch == "lstm-encoder" else {})
    metrics = evaluate_video_caption(tmp_path / "repo" / "video-test" / "1",
                                     clip_set / "clips", "test", beam_size=2, progress=False)
    assert metrics["n_clips"] == COUNTS["test"] and metrics["beam_size"] == 2
    assert 0.0 <= metrics["semantic_exactness"] <= 1.0 and 0.0 <= metrics["cider_d"] <= 10.0
