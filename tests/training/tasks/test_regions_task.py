"""Region proposal training on the shapes world, recall, and the features command."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.attributes import AttributeConfig, AttributeTagger
from training.checkpoint import save_checkpoint
from training.cli import main as glimpse
from training.data.images import load_images
from training.data.readers import DatasetFormatError, load_captions
from training.data.region_features import load_region_features
from training.data.shapes import generate_shapes_world
from training.tasks.regions import (
    SceneBoxes,
    best_ious,
    box_iou,
    load_region_net,
    load_scene_boxes,
    padded_targets,
    proposal_recall,
)

TINY_ENCODER = {"out_dim": 16, "channels": [8, 16, 16]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("regions") / "world"
    generate_shapes_world(out, {"train": 32, "val": 8, "test": 6, "novel": 4}, size=64, seed=3,
                          workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """A `glimpse train encoder` run directory holding a tiny random tagger."""
    run = tmp_path_factory.mktemp("regions") / "encoder"
    torch.manual_seed(0)
    cfg = AttributeConfig(encoder=TINY_ENCODER)
    save_checkpoint(run / "checkpoints" / "best", model=AttributeTagger(cfg),
                    config={"model": {"task": "attributes", "attributes": cfg.to_dict()}})
    return run


def test_box_iou_and_recall_count_matched_objects():
    props = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    gt = [np.array([[0.0, 0.0, 0.5, 0.4],  # IoU 0.8 with the first proposal
                    [0.6, 0.6, 1.0, 1.0],  # 0.64 with the second
                    [0.0, 0.6, 0.3, 1.0]])]  # none
    iou = box_iou(props[0], torch.as_tensor(gt[0], dtype=torch.float32))
    torch.testing.assert_close(iou[0, 0], torch.tensor(0.8))
    torch.testing.assert_close(iou[1, 1], torch.tensor(0.64))
    assert proposal_recall(props, gt) == pytest.approx(2 / 3)
    assert proposal_recall(props, gt, iou=0.7) == pytest.approx(1 / 3)
    torch.testing.assert_close(best_ious(props, gt), torch.tensor([0.8, 0.64, 0.0]))
    assert np.isnan(proposal_recall(props, [np.zeros((0, 4))]))


def test_scene_boxes_are_normalised_visible_boxes(world):
    scenes = load_scene_boxes(world)
    raw = json.loads((world / "scenes.json").read_text())["images"][0]
    first = scenes[raw["imgid"]]
    x, y, w, h = raw["objects"][0]["bbox"]
    np.testing.assert_allclose(first.boxes[0], np.array([x, y, x + w, y + h]) / 64, rtol=1e-6)
    assert first.shape[0] == ["circle", "square", "triangle", "diamond", "star", "hexagon",
                              "cross"].index(raw["objects"][0]["shape"])
    assert len(scenes) == 50 and all(1 <= len(s.boxes) <= 4 for s in scenes.values())


def test_scene_boxes_name_a_broken_entry(tmp_path):
    (tmp_path / "scenes.json").write_text(json.dumps(
        {"image_size": 64, "images": [{"imgid": 0, "objects": [{"shape": "blob"}]}]}))
    with pytest.raises(DatasetFormatError, match=r"images\[0\]"):
        load_scene_boxes(tmp_path)


def test_padded_targets_mark_real_objects():
    s = SceneBoxes(boxes=np.array([[0.1, 0.2, 0.3, 0.4]], np.float32), shape=np.array([5]),
                   colour=np.array([2]), size=np.array([1]))
    t = padded_targets([s, s], max_objects=3)
    assert t["boxes"].shape == (2, 3, 4) and t["valid"].tolist() == [[True, False, False]] * 2
    assert t["shape"][1, 0] == 5 and t["colour"][0, 0] == 2 and t["shape"][0, 1] == 0


def test_train_regions_then_write_features(world, encoder_run, tmp_path):
    config = tmp_path / "regions.json"
    config.write_text(json.dumps({
        "val_images": 8, "regions": {"head_channels": 8, "feature_dim": 12, "max_proposals": 4},
        "trainer": {"batch_size": 16, "warmup_steps": 1, "progress": False}}))
    run = tmp_path / "regions"
    assert glimpse(["train", "regions", "--data", str(world), "--out", str(run),
                    "--encoder-init", str(encoder_run), "--config", str(config),
                    "--epochs", "2"]) == 0
    history = json.loads((run / "history.json").read_text())
    last = history[-1]
    assert len(history) == 2 and 0 <= last["recall_iou_0.7"] <= last["recall"] <= 1
    assert 0 <= last["mean_iou"] <= 1
    assert 0 <= history[-1]["attribute_accuracy"] <= 1

    net = load_region_net(run)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.num_regions == 5 and net.feature_dim == 12
    # the encoder is the encoder run's, unchanged by training
    enc = load_file(str(encoder_run / "checkpoints" / "best" / "model.safetensors"))
    torch.testing.assert_close(net.encoder.project.weight, enc["encoder.project.weight"])

    assert glimpse(["features", "regions", "--run", str(run), "--data", str(world),
                    "--splits", "test", "novel", "--batch-size", "4"]) == 0
    rf = load_region_features(world / "features" / "regions" / "test.npz")
    assert rf.features.shape == (6, 5, 12) and rf.boxes.shape == (6, 5, 4)
    np.testing.assert_array_equal(rf.num_regions, [5] * 6)
    np.testing.assert_array_equal(rf.boxes[:, -1], [[0, 0, 1, 1]] * 6)
    assert rf.image_ids.tolist() == [im.imgid for im in load_captions(world, "test")]
    images = load_captions(world, "test")[:2]
    with torch.no_grad():
        _, _, feats = net(load_images(world, images, 64).float() / 255)
    np.testing.assert_allclose(rf.features[rf.index_of(images[1].imgid)], feats[1].numpy(),
                               atol=1e-5)
    meta = json.loads((world / "features" / "regions" / "meta.json").read_text())
    assert meta["max_proposals"] == 4 and meta["feature_dim"] == 12
    assert set(meta["splits"]) == {"test", "novel"}
    novel = meta["splits"]["novel"]
    assert 0 <= novel["recall_iou_0.7"] <= novel["recall"] <= 1 and 0 <= novel["mean_iou"] <= 1


def test_region_training_needs_an_encoder_run(world, tmp_path):
    with pytest.raises(ValueError, match="--encoder-init"):
        glimpse(["train", "regions", "--data", str(world), "--out", str(tmp_path / "r")])
