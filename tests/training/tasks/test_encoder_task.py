"""Encoder pre-training on the shapes world's attributes, and starting a captioner from it."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from models.attributes import AttributeConfig, AttributeTagger
from training.cli import main as glimpse
from training.data.shapes import generate_shapes_world
from training.data.world import Scene, ShapeObject
from training.tasks.caption import CaptionTask, CaptionTaskConfig
from training.tasks.encoder import cell_targets, grid_stride

ROOT = Path(__file__).resolve().parents[3]


def test_cell_targets_put_each_object_in_its_centre_cell():
    scene = Scene([ShapeObject("star", "red", "large", x=0.30, y=0.70, radius=0.16),
                   ShapeObject("circle", "white", "small", x=0.93, y=0.05, radius=0.08)])
    t = cell_targets(scene, image_size=64)  # 8x8 grid of 8 px cells
    assert t["shape"].shape == (64,)
    star_cell, circle_cell = 5 * 8 + 2, 0 * 8 + 7
    assert t["shape"][star_cell] == 1 + 4 and t["colour"][star_cell] == 1 + 0
    assert t["size"][star_cell] == 1 + 1
    assert t["shape"][circle_cell] == 1 + 0 and t["colour"][circle_cell] == 1 + 7
    assert t["size"][circle_cell] == 1 + 0
    assert int((t["shape"] > 0).sum()) == 2 and int(t["count"]) == 1


def test_a_fourth_channel_entry_keeps_a_128_px_tagger_on_an_8x8_grid():
    three = AttributeTagger(AttributeConfig(encoder={"out_dim": 8, "channels": (4, 8, 8)}))
    four = AttributeTagger(AttributeConfig(encoder={"out_dim": 8, "channels": (4, 8, 8, 8)}))
    assert (grid_stride(three, 64), grid_stride(three, 128), grid_stride(four, 128)) == (8, 8, 16)
    assert cell_targets(Scene([ShapeObject("star", "red", "large", x=0.3, y=0.7, radius=0.16)]),
                        image_size=128, stride=16)["shape"].shape == (64,)


def test_tagger_loss_balances_object_and_empty_cells():
    torch.manual_seed(0)
    model = AttributeTagger(AttributeConfig(encoder={"out_dim": 8, "channels": (4, 8, 8)}))
    images = torch.rand(2, 3, 64, 64)
    targets = {k: torch.zeros(2, 64, dtype=torch.long) for k in ("shape", "colour", "size")}
    targets["shape"][0, 10], targets["colour"][0, 10], targets["size"][0, 10] = 3, 2, 1
    targets["count"] = torch.tensor([0, 0])
    logits, loss = model(images, targets)
    assert logits["shape"].shape == (2, 64, 8) and logits["count"].shape == (2, 4)
    per_cell = sum(torch.nn.functional.cross_entropy(logits[k].transpose(1, 2), targets[k],
                                                     reduction="none")
                   for k in ("shape", "colour", "size"))
    mask = targets["shape"] > 0
    expected = (per_cell[mask].mean() + per_cell[~mask].mean()
                + torch.nn.functional.cross_entropy(logits["count"], targets["count"]))
    torch.testing.assert_close(loss, expected)


def test_pretrained_encoder_starts_the_captioner(tmp_path):
    world = tmp_path / "world"
    generate_shapes_world(world, {"train": 40, "val": 8, "test": 4, "novel": 4}, size=64,
                          seed=1, workers=1, progress=False)
    config = tmp_path / "encoder.json"
    config.write_text(json.dumps({
        "val_images": 8, "encoder": {"out_dim": 16, "channels": [8, 16, 16]},
        "trainer": {"epochs": 2, "batch_size": 16, "warmup_steps": 2, "progress": False}}))
    run = tmp_path / "encoder"
    assert glimpse(["train", "encoder", "--data", str(world), "--out", str(run),
                    "--config", str(config)]) == 0
    history = json.loads((run / "history.json").read_text())
    assert {"object_accuracy", "empty_accuracy", "count_accuracy"} <= set(history[-1])
    tiny = json.loads((ROOT / "configs" / "caption_tiny.json").read_text())
    task = CaptionTask(CaptionTaskConfig.from_dict(
        {**tiny, "data": str(world), "arch": "sat-soft", "encoder_init": str(run)}))
    model = task.build_model()
    weights = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
    for name, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, weights[f"encoder.{name}"])
    assert tuple(task.model_config()["caption"]["encoder"]["channels"]) == (8, 16, 16)
