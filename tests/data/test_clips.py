"""The clip set: sampling, rendering, the written formats and the command."""

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.cli import main
from training.data.clip_language import coverage, is_exact
from training.data.clip_world import (
    ACTIVITIES,
    IMPOSSIBLE_SHAPE_ACTIVITY,
    NOVEL_SHAPE_ACTIVITY,
    STILL,
    Clip,
    ClipObject,
    clip_problems,
    sample_clip,
)
from training.data.clips import (
    ClipSetInfo,
    clip_streams,
    generate_clips,
    load_clips,
    make_clip,
    read_clip,
)
from training.data.readers import load_activity_split, load_msrvtt
from training.data.render import encode_apng
from training.data.world import COLOURS, NOVEL_COLOUR_SHAPE, SHAPES, SPLITS, ShapeObject

COUNTS = {"train": 66, "val": 6, "test": 6, "novel": 14}
FRAMES, SIZE, SEED = 8, 64, 5


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def clip_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clips")
    generate_clips(out, COUNTS, frames=FRAMES, size=SIZE, seed=SEED, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def records(clip_set) -> list[dict]:
    return json.loads((clip_set / "clips.json").read_text())["clips"]


# --- sampling ------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [4, 16])
@pytest.mark.parametrize("split", SPLITS)
def test_sampled_clips_follow_the_rules_of_their_split(split, frames):
    activities, bystanders = Counter(), 0
    for k in range(150):
        clip = sample_clip(np.random.default_rng([11, k]), split, frames)
        assert clip_problems(clip) == []
        actor, *rest = clip.objects
        pair = (actor.start.shape, actor.activity)
        assert (pair in NOVEL_SHAPE_ACTIVITY) == (split == "novel"), pair
        assert pair not in IMPOSSIBLE_SHAPE_ACTIVITY
        assert (actor.start.colour, actor.start.shape) not in NOVEL_COLOUR_SHAPE
        assert (actor.new_colour, actor.start.shape) not in NOVEL_COLOUR_SHAPE
        assert not (actor.start.shape == "diamond" and actor.start.size == "large")
        for other in rest:
            assert other.activity == STILL
            names = {(actor.start.shape, actor.start.colour), (actor.start.shape, actor.new_colour)}
            assert (other.start.shape, other.start.colour) not in names
        activities[clip.activity] += 1
        bystanders += len(rest)
    assert 40 <= bystanders <= 110
    if split != "novel":  # classes are balanced; the novel split has its 7 pairs only
        assert set(activities) == set(ACTIVITIES) and min(activities.values()) >= 5


def test_held_out_pairs_leave_every_shape_and_activity_seen():
    assert len(NOVEL_SHAPE_ACTIVITY) == len(SHAPES)
    assert {s for s, _ in NOVEL_SHAPE_ACTIVITY} == set(SHAPES)
    assert not NOVEL_SHAPE_ACTIVITY & IMPOSSIBLE_SHAPE_ACTIVITY
    for shape, activity in NOVEL_SHAPE_ACTIVITY:
        # In training the shape performs other activities and others perform this one.
        others = [s for s in SHAPES if (s, activity) not in NOVEL_SHAPE_ACTIVITY
                  | IMPOSSIBLE_SHAPE_ACTIVITY]
        assert len(others) >= 4, (shape, activity)


@pytest.fixture(scope="module")
def sampled_actors() -> dict[str, list[tuple[ClipObject, int]]]:
    """Actors of 3,000 sampled train clips of 16 frames by activity, each with a frame
    drawn at random."""
    by_activity: dict[str, list[tuple[ClipObject, int]]] = {a: [] for a in ACTIVITIES}
    for k in range(3000):
        rng = np.random.default_rng([23, k])
        clip = sample_clip(rng, "train", 16)
        by_activity[clip.activity].append((clip.objects[0], int(rng.integers(16))))
    return by_activity


@pytest.mark.parametrize("a, b, field", [("move_left", "move_right", "x"),
                                         ("move_up", "move_down", "y"),
                                         ("grow", "shrink", "radius")])
def test_a_single_frame_does_not_tell_opposite_activities_apart(sampled_actors, a, b, field):
    # The position (or radius) in a random frame is distributed alike for both.
    first, second = ([getattr(actor.at(t, 16), field) for actor, t in sampled_actors[name]]
                     for name in (a, b))
    for statistic in (np.mean, np.median, np.std):
        spread = np.sqrt(np.var(first) / len(first) + np.var(second) / len(second))
        assert abs(statistic(first) - statistic(second)) < 4 * spread, statistic.__name__
    # ... while the first frame tells them apart (the test can fail).
    starts = ([getattr(actor.start, field) for actor, _ in sampled_actors[name]]
              for name in (a, b))
    assert abs(np.mean(next(starts)) - np.mean(next(starts))) > 10 * spread


def test_appearing_and_vanishing_objects_are_visible_for_as_many_frames(sampled_actors):
    def visible_frames(activity):
        return Counter(sum(actor.at(t, 16) is not None for t in range(16))
                       for actor, _ in sampled_actors[activity])

    appear, vanish = visible_frames("appear"), visible_frames("vanish")
    assert set(appear) == set(vanish) == set(range(4, 13))


def test_clip_problems_name_each_broken_rule():
    def obj(x, y, **kw):
        return ClipObject(ShapeObject("circle", "red", "small", x, y, 0.085), **kw)

    assert clip_problems(Clip((obj(0.5, 0.5, activity="move_left", distance=0.3),), 4)) == []
    leaves = Clip((obj(0.2, 0.5, activity="move_left", distance=0.3),), 4)
    assert clip_problems(leaves) == ["frame 2: object 0 not inside the image",
                                     "frame 3: object 0 not inside the image"]
    crosses = Clip((obj(0.8, 0.5, activity="move_left", distance=0.6), obj(0.5, 0.5)), 3)
    assert clip_problems(crosses) == ["frame 1: objects 0 and 1 overlap"]
    # An absent object still keeps its place: nothing may appear on top of another.
    hidden = Clip((obj(0.5, 0.5, activity="appear", change_frame=2), obj(0.55, 0.5)), 4)
    assert "frame 0: objects 0 and 1 overlap" in clip_problems(hidden)


# --- the written set -----------------------------------------------------------------

def test_same_arguments_give_byte_identical_files_whatever_the_workers(clip_set, tmp_path):
    generate_clips(tmp_path, COUNTS, frames=FRAMES, size=SIZE, seed=SEED, workers=2,
                   progress=False)
    expected, got = _files(clip_set), _files(tmp_path)
    assert len(got) == sum(COUNTS.values()) + 1 + len(SPLITS) + 3
    assert got == expected


def test_another_seed_gives_other_clips(clip_set, tmp_path):
    generate_clips(tmp_path, {"train": 2}, frames=FRAMES, size=SIZE, seed=SEED + 1, workers=1,
                   progress=False)
    other = json.loads((tmp_path / "clips.json").read_text())["clips"]
    ours = json.loads((clip_set / "clips.json").read_text())["clips"]
    assert [c["objects"] for c in other] != [c["objects"] for c in ours[:2]]


def test_clip_files_decode_to_the_rendered_frames(clip_set, records):
    for record in records[:: 7]:
        frames = read_clip(clip_set / "clips" / record["path"])
        pixels, again = make_clip(SEED, record["split"], record["index"], SIZE, FRAMES)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8
        np.testing.assert_array_equal(frames, pixels)
        assert again["objects"] == record["objects"]
        with Image.open(clip_set / "clips" / record["path"]) as image:
            assert image.format == "PNG" and image.n_frames == FRAMES
            assert image.info["duration"] == 1000 / 8 and image.info["loop"] == 0


def test_clips_json_reloads_as_the_sampled_clips(clip_set, records):
    clips = load_clips(clip_set)
    assert sorted(clips) == list(range(sum(COUNTS.values())))
    for record in records:
        clip = clips[record["id"]]
        sampled = sample_clip(clip_streams(SEED, record["split"], record["index"])["clip"],
                              record["split"], FRAMES)
        assert clip == sampled
        assert record["label"] == ACTIVITIES.index(record["activity"]) == clip.label
        assert record["video_id"] == f"video{record['id']}"


def _boxes(record: dict, k: int) -> np.ndarray:
    return np.array(record["objects"][k]["bbox"], dtype=float)  # (T, 4) x, y, w, h


def _centres(boxes: np.ndarray) -> np.ndarray:
    return boxes[:, :2] + boxes[:, 2:] / 2


def test_labels_agree_with_the_rendered_boxes(clip_set, records):
    seen = set()
    for record in records:
        actor = record["objects"][0]
        boxes, change = _boxes(record, 0), actor["change_frame"]
        centre, (dx, dy) = _centres(boxes), _centres(boxes)[-1] - _centres(boxes)[0]
        travel = actor["distance"] * SIZE
        match record["activity"]:
            case "move_left" | "move_right" | "move_up" | "move_down" as move:
                along, across = (dx, dy) if move in ("move_left", "move_right") else (dy, dx)
                sign = -1 if move in ("move_left", "move_up") else 1
                assert sign * along == pytest.approx(travel, abs=2.5) and abs(across) <= 1.5
                steps = np.diff(centre[:, 0 if move in ("move_left", "move_right") else 1])
                assert (sign * steps > 0).all()
            case "grow" | "shrink" as size_change:
                sign = 1 if size_change == "grow" else -1
                assert (sign * np.diff(boxes[:, 2] * boxes[:, 3]) >= 0).all()
                assert sign * (boxes[-1, 2] - boxes[0, 2]) >= 6
                assert np.abs(centre - centre[0]).max() <= 1.0
            case "appear" | "vanish" as presence:
                present = boxes[:, 2] > 0
                expected = np.arange(FRAMES) >= change
                assert (present == (expected if presence == "appear" else ~expected)).all()
            case "bounce":
                lift = centre[0, 1] - centre[:, 1].min()
                assert lift == pytest.approx(actor["distance"] * SIZE, abs=2.5)
                assert abs(dy) <= 1.0 and abs(centre[:, 0] - centre[0, 0]).max() <= 1.0
            case "rotate" | "change_colour":
                assert np.abs(centre - centre[0]).max() <= 1.0
        for k in range(1, len(record["objects"])):  # the bystander keeps its box
            assert (_boxes(record, k) == _boxes(record, k)[0]).all()
        seen.add(record["activity"])
    assert seen == set(ACTIVITIES)


def test_colour_changes_and_rotations_show_in_the_pixels(clip_set, records):
    for record in records:
        actor = record["objects"][0]
        if record["activity"] not in ("change_colour", "rotate"):
            continue
        frames = read_clip(clip_set / "clips" / record["path"]).astype(int)
        x, y = (round(actor["start"][k] * SIZE) for k in ("x", "y"))
        if record["activity"] == "change_colour":
            colours = [COLOURS[actor["start"]["colour"]], COLOURS[actor["new_colour"]]]
            for t in range(FRAMES):
                expected = np.array(colours[t >= actor["change_frame"]])
                assert np.abs(frames[t, y, x] - expected).max() <= 2, t
        else:  # the object's pixels change from frame to frame, its box's centre does not
            x0, y0, w, h = actor["bbox"][0]
            window = frames[:, y0:y0 + h, x0:x0 + w]
            assert all((window[t] != window[t + 1]).any() for t in range(FRAMES - 1))


def test_descriptions_are_exact_complete_and_distinct(clip_set):
    clips = load_clips(clip_set)
    for video in load_msrvtt(clip_set / "videodatainfo.json"):
        assert len(set(video.captions)) == 5
        for text in video.captions:
            assert is_exact(text, clips[video.id]), text
            assert coverage(text, clips[video.id]) == 1.0, text


def test_ucf_lists_hold_every_clip_once_under_its_class_folder(clip_set, records):
    by_path = {r["path"]: r for r in records}
    for split in SPLITS:
        videos = load_activity_split(clip_set / "splits", split)
        assert [v.path for v in videos] == [r["path"] for r in records if r["split"] == split]
        for v in videos:
            assert v.label == by_path[v.path]["label"]
            assert v.class_name == v.path.split("/")[0] == by_path[v.path]["activity"]
            assert (clip_set / "clips" / v.path).is_file()
    classes = (clip_set / "splits" / "classInd.txt").read_text().splitlines()
    assert classes == [f"{k} {a}" for k, a in enumerate(ACTIVITIES, start=1)]
    train = (clip_set / "splits" / "trainlist01.txt").read_text().splitlines()
    test = (clip_set / "splits" / "testlist01.txt").read_text().splitlines()
    assert all(len(line.split()) == 2 for line in train)  # UCF-101: labels in train only
    assert all(len(line.split()) == 1 for line in test)


def test_msrvtt_file_holds_every_clip_and_its_descriptions(clip_set, records):
    videos = load_msrvtt(clip_set / "videodatainfo.json")
    assert [v.video_id for v in videos] == [r["video_id"] for r in records]
    for video, record in zip(videos, records, strict=True):
        assert video.split == record["split"] and video.category == record["label"]
        _, made = make_clip(SEED, record["split"], record["index"], SIZE, FRAMES)
        assert video.captions == tuple(made["descriptions"])
        assert video.sen_ids == tuple(record["id"] * 5 + k for k in range(5))
        assert video.url == f"clips/{record['path']}" and video.end == FRAMES / 8
    raw = json.loads((clip_set / "videodatainfo.json").read_text())
    assert {v["split"] for v in raw["videos"]} == {"train", "validate", "test", "novel"}


def test_meta_counts_the_set(clip_set, records):
    info = ClipSetInfo.load(clip_set)
    assert (info.image_size, info.frames, info.fps, info.seed) == (SIZE, FRAMES, 8, SEED)
    assert info.clips == COUNTS and info.class_names == list(ACTIVITIES)
    meta = json.loads((clip_set / "meta.json").read_text())
    for split in SPLITS:
        counted = Counter(r["activity"] for r in records if r["split"] == split)
        assert meta["counts"]["activities"][split] == {a: counted[a] for a in ACTIVITIES}
    assert sorted(map(tuple, meta["vocabulary"]["novel_shape_activity"])) == sorted(
        NOVEL_SHAPE_ACTIVITY)


def test_novel_split_holds_only_the_held_out_pairs(records):
    for record in records:
        actor = record["objects"][0]
        pair = (actor["start"]["shape"], actor["activity"])
        assert (pair in NOVEL_SHAPE_ACTIVITY) == (record["split"] == "novel"), record["path"]


# --- the command ---------------------------------------------------------------------

def test_command_writes_a_set_and_rewrites_it(tmp_path, capsys):
    args = ["data", "clips", "--out", str(tmp_path), "--num-train", "3", "--num-val", "0",
            "--num-test", "1", "--num-novel", "1", "--frames", "4", "--size", "32",
            "--workers", "1", "--no-progress"]
    assert main(args) == 0
    assert "train 3, val 0, test 1, novel 1 clips of 4 frames (32x32)" in capsys.readouterr().out
    assert read_clip(next((tmp_path / "clips").rglob("*.png"))).shape == (4, 32, 32, 3)
    assert main(args[:5] + ["1"] + args[6:]) == 0  # a clip set may be overwritten
    assert len(list((tmp_path / "clips").rglob("*.png"))) == 3


@pytest.mark.parametrize("extra, message", [
    (["--frames", "3"], "--frames must be between 4 and 64"),
    (["--num-train", "-1"], "--num-train must be a non-negative integer"),
    (["--size", "8"], "--size must be between"),
])
def test_command_rejects_bad_arguments(tmp_path, capsys, extra, message):
    assert main(["data", "clips", "--out", str(tmp_path / "c"), "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err


def test_command_refuses_a_folder_that_holds_something_else(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["data", "clips", "--out", str(tmp_path), "--num-train", "1",
                 "--no-progress"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --- the animated PNG ----------------------------------------------------------------

def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        frames = []
        for t in range(image.n_frames):
            image.seek(t)
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


def test_apng_round_trips_any_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
    frames[2] = frames[1]  # an unchanged frame is stored as one pixel
    frames[3, 4:6, 2:5] = 0  # a small change is stored as its rectangle
    frames[4] = frames[3]
    frames[4, 0, 0] = 255 - frames[3, 0, 0]
    data = encode_apng(frames, fps=10)
    np.testing.assert_array_equal(_decode(data), frames)
    assert data == encode_apng(frames.copy(), fps=10)
    single = encode_apng(frames[:1], fps=1)
    np.testing.assert_array_equal(_decode(single), frames[:1])


def test_apng_stores_later_frames_as_their_changes():
    background = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    frames = np.repeat(background[None], 16, axis=0)
    for t in range(16):
        frames[t, 10:14, 2 + 3 * t:6 + 3 * t] = 255
    one_frame = len(encode_apng(frames[:1], fps=8))
    assert len(encode_apng(frames, fps=8)) < 1.5 * one_frame


@pytest.mark.parametrize("frames, fps, message", [
    (np.zeros((2, 4, 4), np.uint8), 8, "expected"),
    (np.zeros((2, 4, 4, 3), np.float32), 8, "expected"),
    (np.zeros((2, 4, 4, 3), np.uint8), 0, "fps"),
])
def test_apng_rejects_what_it_cannot_encode(frames, fps, message):
    with pytest.raises(ValueError, match=message):
        encode_apng(frames, fps)
