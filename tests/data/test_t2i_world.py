"""The text-to-image world: single-object scenes at 128 px (`--max-objects 1 --size 128`)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.cli import main
from training.data.scenes import NOVEL_COMBINATIONS, sample_scene, scene_problems
from training.data.shapes import generate_shapes_world, load_scenes

COUNTS = {"train": 12, "val": 4, "test": 4, "novel": 8}


@pytest.fixture(scope="module")
def t2i_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t2i")
    assert main(["data", "shapes", "--out", str(out), "--max-objects", "1", "--size", "128",
                 "--num-train", "12", "--num-val", "4", "--num-test", "4", "--num-novel", "8",
                 "--workers", "1", "--no-progress"]) == 0
    return out


def test_every_t2i_scene_holds_exactly_one_object(t2i_world):
    scenes = load_scenes(t2i_world)
    assert len(scenes) == sum(COUNTS.values())
    assert {len(s.objects) for s in scenes.values()} == {1}


def test_t2i_novel_objects_are_held_out_combinations(t2i_world):
    data = json.loads((t2i_world / "scenes.json").read_text())
    for image in data["images"]:
        o = image["objects"][0]
        held_out = (o["shape"], o["colour"], o["size"]) in NOVEL_COMBINATIONS
        assert held_out == (image["split"] == "novel")


def test_t2i_images_are_128_px_and_meta_records_the_range(t2i_world):
    image = Image.open(t2i_world / "images" / "test" / "test_000000.png")
    assert image.size == (128, 128)
    meta = json.loads((t2i_world / "meta.json").read_text())
    assert meta["generation"]["objects_per_image"] == [1, 1]
    assert meta["arguments"]["max_objects"] == 1


def test_default_range_leaves_meta_arguments_unchanged(tmp_path):
    generate_shapes_world(tmp_path, {"train": 2}, workers=1, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert "max_objects" not in meta["arguments"]
    assert meta["generation"]["objects_per_image"] == [1, 4]


@pytest.mark.parametrize(("low", "high"), [(2, 3), (4, 4)])
def test_sampled_scenes_respect_the_object_range(low, high):
    counts = {len(sample_scene(np.random.default_rng([5, k]), "train", min_objects=low,
                               max_objects=high).objects) for k in range(40)}
    assert counts == set(range(low, high + 1))
    scene = sample_scene(np.random.default_rng(1), "novel", min_objects=low, max_objects=high)
    assert scene_problems(scene) == [] and scene.is_novel()


@pytest.mark.parametrize(("low", "high"), [(0, 1), (3, 2), (1, 5)])
def test_bad_object_range_is_refused(tmp_path, low, high, capsys):
    code = main(["data", "shapes", "--out", str(tmp_path / "w"), "--num-train", "1",
                 "--min-objects", str(low), "--max-objects", str(high), "--workers", "1",
                 "--no-progress"])
    assert code == 2
    assert "objects per image" in capsys.readouterr().err
