import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.cli import main
from training.data.readers import load_captions, load_vqa_split
from training.data.render import UNIT_OUTLINES, object_area
from training.data.scenes import (
    MAX_OBJECTS,
    NOVEL_COMBINATIONS,
    SEEN_COMBINATIONS,
    largest_object,
    sample_scene,
    scene_problems,
)
from training.data.shapes import (
    ShapesWorldInfo,
    _annotation_entry,
    _annotation_json,
    class_names,
    generate_shapes_world,
    image_streams,
    load_scenes,
    make_image,
)
from training.data.world import SPLITS, Scene, ShapeObject, class_label

COUNTS = {"train": 20, "val": 20, "test": 20, "novel": 20}
SEED = 3


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_shapes_world(out, COUNTS, size=64, seed=SEED, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def scenes_json(world) -> dict:
    return json.loads((world / "scenes.json").read_text())


# --- scene sampling ----------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
def test_sampled_scenes_follow_every_placement_rule(split):
    counts = [0] * (MAX_OBJECTS + 1)
    for k in range(150):
        scene = sample_scene(np.random.default_rng([7, k]), split)
        assert scene_problems(scene) == []
        assert scene.is_novel() == (split == "novel")
        counts[len(scene.objects)] += 1
    assert counts[0] == 0 and min(counts[1:]) >= 20  # 1 to 4 objects, all common


def test_held_out_combinations_partition_the_vocabulary():
    assert len(NOVEL_COMBINATIONS) == 16  # 4 colour-shape pairs x 2 sizes + 8 large diamonds
    assert len(SEEN_COMBINATIONS) == 7 * 8 * 2 - 16
    assert all(ShapeObject(s, c, z, 0, 0, 0).is_novel() for s, c, z in NOVEL_COMBINATIONS)
    assert not any(ShapeObject(s, c, z, 0, 0, 0).is_novel() for s, c, z in SEEN_COMBINATIONS)


def test_scene_problems_name_each_broken_rule():
    def obj(x, y, radius=0.16, shape="circle", size="large"):
        return ShapeObject(shape, "red", size, x, y, radius)

    assert scene_problems(Scene([obj(0.1, 0.5)])) == ["object 0 not inside the image"]
    assert scene_problems(Scene([obj(0.3, 0.3), obj(0.5, 0.35, 0.08, size="small")])) == [
        "objects 0 and 1: overlap"]
    assert scene_problems(Scene([obj(0.25, 0.25), obj(0.75, 0.74, 0.08, size="small")])) == [
        "objects 0 and 1: ambiguous relation"]
    # Two large circles of almost equal area: "largest" would be a coin toss.
    assert scene_problems(Scene([obj(0.2, 0.2), obj(0.8, 0.5, 0.161)])) == [
        "largest object not clear"]


def test_largest_object_is_by_area_not_radius_word():
    star = ShapeObject("star", "red", "large", 0.25, 0.5, 0.16)
    circle = ShapeObject("circle", "blue", "large", 0.75, 0.5, 0.15)
    assert largest_object(Scene([star, circle])) == 1
    assert object_area(circle) > object_area(star)


# --- the generated world -----------------------------------------------------

def test_same_arguments_give_byte_identical_files_whatever_the_workers(world, tmp_path):
    generate_shapes_world(tmp_path, COUNTS, size=64, seed=SEED, workers=2, progress=False)
    expected, got = _files(world), _files(tmp_path)
    assert sorted(got) == sorted(expected)
    assert len(got) == sum(COUNTS.values()) + 2 * len(SPLITS) + 3
    assert got == expected


def test_another_seed_gives_other_images(world, tmp_path):
    generate_shapes_world(tmp_path, {"train": 3}, size=64, seed=SEED + 1, workers=1,
                          progress=False)
    for k in range(3):
        name = f"images/train/train_{k:06d}.png"
        assert (tmp_path / name).read_bytes() != (world / name).read_bytes()


def test_images_decode_at_the_requested_size(world):
    for split in SPLITS:
        files = sorted((world / "images" / split).iterdir())
        assert [f.name for f in files] == [f"{split}_{k:06d}.png" for k in range(COUNTS[split])]
        with Image.open(files[-1]) as image:
            assert image.size == (64, 64) and image.mode == "RGB"


def test_novel_split_alone_holds_the_held_out_combinations(world):
    scenes = load_scenes(world)
    splits = {im["imgid"]: im["split"] for im in json.loads((world / "scenes.json").read_text())
              ["images"]}
    for imgid, scene in scenes.items():
        assert scene.is_novel() == (splits[imgid] == "novel"), imgid
        assert scene_problems(scene) == []


def _outline_extent(obj: ShapeObject, size: int) -> tuple[float, float, float, float]:
    """Exact (x0, y0, x1, y1) of the object's rotated outline in pixels."""
    r, cx, cy = obj.radius * size, obj.x * size, obj.y * size
    outline = UNIT_OUTLINES[obj.shape]
    if outline is None:
        return cx - r, cy - r, cx + r, cy + r
    c, s = math.cos(obj.rotation), math.sin(obj.rotation)
    xs = [cx + r * (u * c - v * s) for u, v in outline]
    ys = [cy + r * (u * s + v * c) for u, v in outline]
    return min(xs), min(ys), max(xs), max(ys)


def test_objects_lie_inside_and_boxes_fit_their_rendered_outline(world, scenes_json):
    size = scenes_json["image_size"]
    for image in scenes_json["images"]:
        pixels = np.asarray(Image.open(world / "images" / image["split"] / image["filename"]))
        for o in image["objects"]:
            obj = ShapeObject(**{k: o[k] for k in ("shape", "colour", "size", "x", "y",
                                                   "radius", "rotation")})
            x, y, w, h = o["bbox"]
            assert min(x, y) >= 0 and x + w <= size and y + h <= size
            ex0, ey0, ex1, ey1 = _outline_extent(obj, size)
            # A visible box lies within the outline's extent (occlusion only shrinks it).
            assert ex0 - 1 <= x and ey0 - 1 <= y and x + w <= ex1 + 1 and y + h <= ey1 + 1
            # The box holds pixels of the object's colour.
            colour = np.array(json.loads((world / "meta.json").read_text())["vocabulary"]
                              ["colours"][obj.colour])
            inside = pixels[y:y + h, x:x + w].reshape(-1, 3).astype(int)
            assert np.abs(inside - colour).max(axis=1).min() <= 2


def test_unoccluded_boxes_match_the_outline_extent(scenes_json):
    checked = 0
    for image in scenes_json["images"]:
        if len(image["objects"]) != 1:
            continue
        o = image["objects"][0]
        obj = ShapeObject(**{k: o[k] for k in ("shape", "colour", "size", "x", "y", "radius",
                                               "rotation")})
        ex0, ey0, ex1, ey1 = _outline_extent(obj, 64)
        x, y, w, h = o["bbox"]
        # Within a pixel and a half: a sharp tip covers less than half of its last pixel.
        assert abs(x - ex0) <= 1.5 and abs(x + w - ex1) <= 1.5
        assert abs(y - ey0) <= 1.5 and abs(y + h - ey1) <= 1.5
        assert o["area"] == pytest.approx(object_area(obj) * 64**2, rel=0.04)
        checked += 1
    assert checked >= 5


def test_label_is_the_class_of_the_largest_object(scenes_json):
    names = class_names()
    for image in scenes_json["images"]:
        areas = [o["area"] for o in image["objects"]]
        largest = image["objects"][image["largest"]]
        assert image["largest"] == int(np.argmax(areas))
        assert image["label"] == class_label(largest["shape"], largest["colour"])
        assert names[image["label"]] == f"{largest['colour']} {largest['shape']}"
        scene = Scene([ShapeObject(**{k: o[k] for k in ("shape", "colour", "size", "x", "y",
                                                         "radius", "rotation")})
                       for o in image["objects"]])
        assert largest_object(scene) == image["largest"]


def test_relations_are_the_scene_relations(world, scenes_json):
    scenes = load_scenes(world)
    for image in scenes_json["images"]:
        expected = [list(r) for r in scenes[image["imgid"]].relations()]
        assert image["relations"] == expected
        n = len(image["objects"])
        assert len(image["relations"]) == n * (n - 1)


def test_loaded_scenes_are_the_sampled_ones(world):
    scenes = load_scenes(world)
    assert sorted(scenes) == list(range(sum(COUNTS.values())))
    first = {"train": 0, "val": 20, "test": 40, "novel": 60}
    for split, imgid0 in first.items():
        for index in (0, 19):
            resampled = sample_scene(image_streams(SEED, split, index)["scene"], split)
            assert scenes[imgid0 + index] == resampled


@pytest.mark.parametrize("seed", [0, 3, 2**32 - 1, 2**32, 2**40 + 5])
def test_image_streams_are_seeded_by_the_image_identity(seed):
    """Worlds already generated must not change: stream k of image `index` of split number
    s is np.random.default_rng([seed, s, index, k])."""
    for split_id, split in enumerate(SPLITS):
        for index in (0, 7, 123456):
            streams = image_streams(seed, split, index)
            assert list(streams) == ["scene", "background", "captions", "questions"]
            for k, rng in enumerate(streams.values()):
                expected = np.random.default_rng([seed, split_id, index, k])
                assert rng.bit_generator.state == expected.bit_generator.state


def test_annotations_are_written_as_json_dumps_writes_them():
    questions = [*make_image(SEED, "novel", 4, 64)[1]["questions"], {
        "question": "is it \u00e9t\u00e9?", "question_type": 'a "quoted" \\ type',
        "answer_type": "other", "multiple_choice_answer": "caf\u00e9\n\U0001f600",
        "answers": ["caf\u00e9\n\U0001f600"] * 9 + ["</script>"], "objects": [1, 0]}]
    for k, q in enumerate(questions):
        qid, imgid = 987654 * 1000 + k, 987654
        text = _annotation_json(qid, imgid, q)
        assert text == json.dumps(_annotation_entry(qid, imgid, q), separators=(",", ":"))
        assert json.loads(text)["answers"][9]["answer_id"] == 10


def test_captions_file_is_karpathy_format(world):
    data = json.loads((world / "captions.json").read_text())
    assert data["dataset"] == "shapes"
    image = data["images"][25]
    assert list(image) == ["filepath", "filename", "imgid", "cocoid", "split", "sentids",
                           "sentences"]
    assert image["filepath"] == "images/val" and image["filename"] == "val_000005.png"
    assert image["imgid"] == image["cocoid"] == 25
    assert image["sentids"] == [125, 126, 127, 128, 129]
    for sentence in image["sentences"]:
        assert set(sentence) == {"raw", "tokens", "imgid", "sentid"}
        assert sentence["imgid"] == 25
        assert sentence["tokens"] == re.findall(r"[a-z0-9]+", sentence["raw"].lower())
    captions = load_captions(world)
    assert len(captions) == sum(COUNTS.values())
    assert all(len(c.captions) == 5 for c in captions)
    sentids = [s for c in captions for s in c.sentids]
    assert len(set(sentids)) == len(sentids)
    assert [c.imgid for c in load_captions(world, "novel")] == list(range(60, 80))


def test_vqa_files_are_vqa_v2_format(world):
    question_ids = []
    for split in SPLITS:
        questions = json.loads((world / "vqa" / f"{split}_questions.json").read_text())
        annotations = json.loads((world / "vqa" / f"{split}_annotations.json").read_text())
        assert list(questions) == ["info", "license", "data_subtype", "task_type", "data_type",
                                   "questions"]
        assert questions["data_subtype"] == split and questions["task_type"] == "Open-Ended"
        assert list(annotations) == ["info", "license", "data_subtype", "annotations"]
        assert set(questions["questions"][0]) == {"image_id", "question", "question_id"}
        annotation = annotations["annotations"][0]
        # VQA v2's fields, and the shapes world's one addition: the objects a question names
        assert set(annotation) == {"question_id", "image_id", "question_type", "answer_type",
                                   "multiple_choice_answer", "answers", "objects"}
        assert [a["answer_id"] for a in annotation["answers"]] == list(range(1, 11))
        assert {a["answer_confidence"] for a in annotation["answers"]} == {"yes"}
        loaded = load_vqa_split(world, split)
        assert len(loaded) == len(questions["questions"]) >= COUNTS[split]
        first = {"train": 0, "val": 20, "test": 40, "novel": 60}[split]
        assert {q.image_id for q in loaded} == set(range(first, first + COUNTS[split]))
        assert all(q.question_id // 1000 == q.image_id for q in loaded)
        assert {q.answer_type for q in loaded} <= {"yes/no", "number", "other"}
        question_ids += [q.question_id for q in loaded]
    assert len(set(question_ids)) == len(question_ids)


def test_meta_records_arguments_counts_and_vocabulary(world):
    meta = json.loads((world / "meta.json").read_text())
    assert meta["arguments"] == {"num_train": 20, "num_val": 20, "num_test": 20,
                                 "num_novel": 20, "size": 64, "seed": SEED}
    assert meta["counts"]["images"] == COUNTS
    assert meta["counts"]["captions"] == {s: 100 for s in SPLITS}
    assert meta["vocabulary"]["novel_combinations"]["size_shape"] == [["large", "diamond"]]
    assert len(meta["vocabulary"]["novel_combinations"]["colour_shape"]) == 4
    assert meta["class_names"][0] == "red circle" and meta["num_classes"] == 56
    info = ShapesWorldInfo.load(world)
    assert (info.image_size, info.seed, info.num_classes) == (64, SEED, 56)
    assert info.images == COUNTS


@pytest.mark.parametrize("size", [128, 256])
def test_larger_images_scale_the_same_scenes(world, scenes_json, tmp_path, size):
    generate_shapes_world(tmp_path, {"train": 2, "novel": 1}, size=size, seed=SEED, workers=1,
                          progress=False)
    with Image.open(tmp_path / "images" / "novel" / "novel_000000.png") as image:
        assert image.size == (size, size)
    big = json.loads((tmp_path / "scenes.json").read_text())
    assert big["image_size"] == size
    small = {(im["split"], im["filename"]): im for im in scenes_json["images"]}
    for image in big["images"]:
        reference = small[(image["split"], image["filename"])]
        assert [o["x"] for o in image["objects"]] == [o["x"] for o in reference["objects"]]
        for o, r in zip(image["objects"], reference["objects"], strict=True):
            scale = size / 64
            assert o["bbox"][0] == pytest.approx(r["bbox"][0] * scale, abs=scale + 1)
            assert o["bbox"][2] == pytest.approx(r["bbox"][2] * scale, abs=2 * scale + 1)


def test_regenerating_replaces_a_previous_world(tmp_path):
    generate_shapes_world(tmp_path, {"train": 5}, seed=1, workers=1, progress=False)
    generate_shapes_world(tmp_path, {"train": 2, "val": 1}, seed=1, workers=1, progress=False)
    assert sorted(p.name for p in (tmp_path / "images" / "train").iterdir()) == [
        "train_000000.png", "train_000001.png"]
    assert len(load_scenes(tmp_path)) == 3


def test_a_directory_that_is_not_a_world_is_not_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        generate_shapes_world(tmp_path, {"train": 1}, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


# --- the command -------------------------------------------------------------

def test_cli_generates_a_world_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["data", "shapes", "--out", str(out), "--num-train", "4", "--num-val", "1",
                 "--num-test", "1", "--num-novel", "2", "--seed", "5", "--workers", "1",
                 "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert "train 4, val 1, test 1, novel 2 images (64x64)" in captured.out
    assert "images/s" in captured.out
    assert captured.err == ""
    assert len(list((out / "images" / "novel").iterdir())) == 2
    assert json.loads((out / "meta.json").read_text())["seed"] == 5


@pytest.mark.parametrize(("flags", "message"), [
    (["--num-train", "-1"], "--num-train must be a non-negative integer"),
    (["--size", "16"], "--size must be between 32 and 1024"),
    (["--seed", "-2"], "--seed must be non-negative"),
    (["--workers", "-1"], "--workers must be non-negative"),
    (["--num-train", "0", "--num-val", "0", "--num-test", "0", "--num-novel", "0"],
     "nothing to generate"),
])
def test_cli_rejects_bad_arguments_with_a_message(tmp_path, capsys, flags, message):
    code = main(["data", "shapes", "--out", str(tmp_path / "w"), "--no-progress", *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_load_scenes_names_the_file_and_entry_at_fault(tmp_path):
    from training.data.readers import DatasetFormatError

    with pytest.raises(DatasetFormatError, match="scenes.json: cannot read"):
        load_scenes(tmp_path)
    (tmp_path / "scenes.json").write_text("[1, 2]")
    with pytest.raises(DatasetFormatError, match="'images' list"):
        load_scenes(tmp_path)
    good = {"imgid": 0, "objects": [{"shape": "star", "colour": "red", "size": "large",
                                     "x": 0.5, "y": 0.5, "radius": 0.16, "rotation": 0.0}]}
    (tmp_path / "scenes.json").write_text(json.dumps({"images": [good, {"imgid": 1}]}))
    with pytest.raises(DatasetFormatError, match=r"images\[1\] is not a scene"):
        load_scenes(tmp_path)
