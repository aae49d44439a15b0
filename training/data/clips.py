"""`glimpse data clips`: generate shapes-world clips and write them in the published formats.

Every clip is a pure function of (seed, split, index): its random streams are
seeded from that triple, so the output does not depend on how the work is split
across processes, and the same arguments give byte-identical files.

Layout under the output directory (docs/datasets.md has examples)::

    clips/<activity>/<split>_<index:06d>.png   the clip, an animated PNG (APNG)
    splits/classInd.txt                        UCF-101's class index: "1 move_left"
    splits/<split>list01.txt                   UCF-101's lists: trainlist01.txt holds
                                               "move_left/train_000000.png 1", the
                                               others the path alone (the folder is the class)
    videodatainfo.json                         MSR-VTT-style videos and descriptions
    clips.json                                 ground truth: objects, activities, boxes
    meta.json                                  generator version, arguments, vocabularies

A clip is one APNG file rather than a folder of PNG frames: it is lossless
24-bit colour (a GIF would quantise the textured background), one file per clip
as in UCF-101 (5,000 files rather than 80,000), small (later frames store only
the pixels that changed), shown animated by browsers, and read by Pillow (so by
the training readers and the service alike) with `Image.seek` frame by frame.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from training.data.clip_language import generate_descriptions
from training.data.clip_world import (
    ACTIVITIES,
    ACTIVITY_DEFINITIONS,
    IMPOSSIBLE_SHAPE_ACTIVITY,
    NOVEL_SHAPE_ACTIVITY,
    Clip,
    check_frames,
    sample_clip,
)
from training.data.readers import DatasetFormatError
from training.data.render import encode_apng, make_background, render_scene_with_coverage
from training.data.shapes import validate_arguments
from training.data.world import COLOURS, SHAPES, SIZE_RADIUS, SIZES, SPLITS

GENERATOR_VERSION = "1.0"
DESCRIPTIONS_PER_CLIP = 5  # also the stride of sentence ids: sen_id = id * 5 + k
FPS = 8  # frames per second of the written clips: 16 frames last 2 s
CHUNK_SIZE = 16  # clips per task handed to a worker process
APNG_COMPRESSION = 1  # zlib level: higher levels gain little on the noisy backgrounds
LIST_FOLD = 1  # UCF-101 has three train/test folds; the clips have one
# MSR-VTT calls the validation split "validate"; the other names are glimpse's.
MSRVTT_SPLIT: dict[str, str] = {"train": "train", "val": "validate", "test": "test",
                                "novel": "novel"}

# Independent random streams of one clip, so that a change to how one part draws
# numbers leaves the others untouched.
_STREAMS = ("clip", "background", "descriptions")
# Mixed into every stream's seed, so that clip k and shapes-world image k of one
# seed do not share random numbers.
_DATASET_WORD = 0x636C6970  # "clip"


def clip_streams(seed: int, split: str, index: int) -> dict[str, np.random.Generator]:
    """The random streams of one clip, by name (see _STREAMS), seeded from its identity."""
    split_id = SPLITS.index(split)
    return {name: np.random.default_rng([_DATASET_WORD, seed, split_id, index, k])
            for k, name in enumerate(_STREAMS)}


def clip_path(activity: str, split: str, index: int) -> str:
    """Path of a clip relative to the clips/ folder, UCF-101 style: the folder is the class."""
    return f"{activity}/{split}_{index:06d}.png"


def render_clip(clip: Clip, size: int, background: np.ndarray
                ) -> tuple[np.ndarray, list[list[list[int]]]]:
    """Frames (T, size, size, 3) uint8 and, per object and frame, the COCO box [x, y, w, h]
    of its visible pixels ([0, 0, 0, 0] where it is absent)."""
    frames, boxes = [], [[] for _ in clip.objects]
    for t in range(clip.frames):
        image, coverage = render_scene_with_coverage(clip.scene(t), size, background)
        frames.append(image)
        visible = iter(coverage)
        for k, state in enumerate(clip.states(t)):
            boxes[k].append(next(visible).box() if state is not None else [0, 0, 0, 0])
    return np.stack(frames), boxes


def make_clip(seed: int, split: str, index: int, size: int, frames: int
              ) -> tuple[np.ndarray, dict]:
    """Clip `index` of `split`: its frames (T, size, size, 3) and its record.

    The record holds the activity and its label, the objects (first-frame state,
    activity parameters and per-frame boxes; objects[0] is the actor) and the
    descriptions.
    """
    rngs = clip_streams(seed, split, index)
    clip = sample_clip(rngs["clip"], split, frames)
    pixels, boxes = render_clip(clip, size, make_background(size, rngs["background"]))
    record = {
        "split": split,
        "index": index,
        "path": clip_path(clip.activity, split, index),
        "label": clip.label,
        "activity": clip.activity,
        "frames": frames,
        "objects": [{**o.to_dict(), "bbox": b} for o, b in zip(clip.objects, boxes, strict=True)],
        "descriptions": generate_descriptions(clip, rngs["descriptions"],
                                              n=DESCRIPTIONS_PER_CLIP),
    }
    return pixels, record


def first_clip_ids(counts: dict[str, int]) -> dict[str, int]:
    """id of each split's clip 0: ids run through the splits in SPLITS order."""
    starts, next_id = {}, 0
    for split in SPLITS:
        starts[split] = next_id
        next_id += counts.get(split, 0)
    return starts


# --- generation in worker processes -------------------------------------------------

@dataclass(frozen=True)
class _Chunk:
    out_dir: str
    seed: int
    size: int
    frames: int
    split: str
    start: int
    stop: int


def _generate_chunk(chunk: _Chunk) -> tuple[str, list[dict]]:
    """Write the clips of one chunk and return their records (runs in a worker)."""
    records = []
    for index in range(chunk.start, chunk.stop):
        pixels, record = make_clip(chunk.seed, chunk.split, index, chunk.size, chunk.frames)
        path = Path(chunk.out_dir, "clips", record["path"])
        path.write_bytes(encode_apng(pixels, FPS, APNG_COMPRESSION))
        records.append(record)
    return chunk.split, records


def _map_chunks(chunks: list[_Chunk], workers: int) -> Iterator[tuple[str, list[dict]]]:
    if workers == 1 or len(chunks) <= 1:
        yield from map(_generate_chunk, chunks)
        return
    with multiprocessing.get_context().Pool(min(workers, len(chunks))) as pool:
        yield from pool.imap(_generate_chunk, chunks)


def _run_chunks(chunks: list[_Chunk], workers: int, progress: bool) -> dict[str, list[dict]]:
    """Records of every split, in clip order, from `workers` processes (1: this one)."""
    splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
    with tqdm(total=sum(c.stop - c.start for c in chunks), unit="clip", file=sys.stderr,
              disable=not progress, desc="clips") as bar:
        for split, records in _map_chunks(chunks, workers):
            splits[split].extend(records)
            bar.update(len(records))
    return splits


# --- writing ---------------------------------------------------------------------

def _prepare_output(out_dir: Path) -> None:
    """Create `out_dir`, clearing a previous clip set there; refuse anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        meta = out_dir / "meta.json"
        if not meta.is_file() or json.loads(meta.read_text()).get("dataset") != "clips":
            raise ValueError(f"--out {out_dir} is not empty and holds no clip set; "
                             "refusing to overwrite it")
        for name in ("clips", "splits"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    for activity in ACTIVITIES:
        (out_dir / "clips" / activity).mkdir(parents=True, exist_ok=True)
    (out_dir / "splits").mkdir(exist_ok=True)


def _numbered(splits: dict[str, list[dict]]) -> list[dict]:
    """Every record with its id (counting through the splits) and video id, in id order."""
    out = []
    for split in SPLITS:
        for record in splits[split]:
            out.append({"id": len(out), "video_id": f"video{len(out)}", **record})
    return out


def _write_ucf_lists(out_dir: Path, records: list[dict]) -> None:
    """classInd.txt and one list per split, as UCF-101 writes them: labels count from 1,
    the train list gives each clip's label, the others only its path."""
    folder = out_dir / "splits"
    (folder / "classInd.txt").write_text(
        "".join(f"{k} {name}\n" for k, name in enumerate(ACTIVITIES, start=1)))
    for split in SPLITS:
        lines = [r["path"] + (f" {r['label'] + 1}" if split == "train" else "")
                 for r in records if r["split"] == split]
        (folder / f"{split}list{LIST_FOLD:02d}.txt").write_text("".join(f"{x}\n" for x in lines))


def msrvtt_entries(records: list[dict]) -> dict:
    """The MSR-VTT videodatainfo object of numbered records: `category` is the activity
    label (0-based, as MSR-VTT's 20 categories), `url` the clip's path under the set."""
    videos, sentences = [], []
    for r in records:
        videos.append({"category": r["label"], "url": f"clips/{r['path']}",
                       "video_id": r["video_id"], "start time": 0.0,
                       "end time": round(r["frames"] / FPS, 3),
                       "split": MSRVTT_SPLIT[r["split"]], "id": r["id"]})
        sentences += [{"caption": text, "video_id": r["video_id"],
                       "sen_id": r["id"] * DESCRIPTIONS_PER_CLIP + k}
                      for k, text in enumerate(r["descriptions"])]
    return {"info": {"description": "glimpse shapes-world clips", "version": GENERATOR_VERSION},
            "videos": videos, "sentences": sentences}


def _ground_truth(records: list[dict], size: int, frames: int) -> dict:
    keys = ("id", "video_id", "split", "index", "path", "label", "activity", "frames",
            "objects")
    return {"image_size": size, "frames": frames, "fps": FPS,
            "clips": [{k: r[k] for k in keys} for r in records]}


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _meta(counts: dict[str, int], size: int, frames: int, seed: int,
          records: list[dict]) -> dict:
    per_activity = {split: Counter(r["activity"] for r in records if r["split"] == split)
                    for split in SPLITS}
    return {
        "dataset": "clips",
        "generator_version": GENERATOR_VERSION,
        # The arguments that determine the output (workers and progress do not).
        "arguments": {**{f"num_{s}": counts[s] for s in SPLITS}, "frames": frames,
                      "size": size, "seed": seed},
        "seed": seed,
        "image_size": size,
        "frames": frames,
        "fps": FPS,
        "counts": {
            "clips": {s: counts[s] for s in SPLITS},
            "descriptions": {s: counts[s] * DESCRIPTIONS_PER_CLIP for s in SPLITS},
            "two_object_clips": {s: sum(len(r["objects"]) == 2 for r in records
                                        if r["split"] == s) for s in SPLITS},
            "activities": {s: {a: per_activity[s][a] for a in ACTIVITIES} for s in SPLITS},
        },
        "vocabulary": {
            "activities": {a: ACTIVITY_DEFINITIONS[a] for a in ACTIVITIES},
            "shapes": list(SHAPES),
            "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
            "sizes": {name: SIZE_RADIUS[name] for name in SIZES},
            "novel_shape_activity": sorted(list(p) for p in NOVEL_SHAPE_ACTIVITY),
            "impossible_shape_activity": sorted(list(p) for p in IMPOSSIBLE_SHAPE_ACTIVITY),
        },
        "num_classes": len(ACTIVITIES),
        "class_names": list(ACTIVITIES),
    }


def generate_clips(out_dir: str | os.PathLike, counts: dict[str, int], *, frames: int = 16,
                   size: int = 64, seed: int = 0, workers: int = 0,
                   progress: bool = True) -> dict:
    """Generate the clip set into `out_dir` and return a summary.

    `counts` maps split names to numbers of clips (missing splits: 0); `workers`
    0 means one process per core. Raises ValueError on bad arguments.
    """
    counts = {split: counts.get(split, 0) for split in SPLITS} | counts
    validate_arguments(counts, size, seed, workers)
    check_frames(frames)
    workers = workers or os.cpu_count() or 1
    out = Path(out_dir)
    _prepare_output(out)
    start = time.perf_counter()
    chunks = [_Chunk(str(out), seed, size, frames, split, first,
                     min(first + CHUNK_SIZE, counts[split]))
              for split in SPLITS for first in range(0, counts[split], CHUNK_SIZE)]
    records = _numbered(_run_chunks(chunks, workers, progress))
    _write_ucf_lists(out, records)
    (out / "videodatainfo.json").write_text(_dumps(msrvtt_entries(records)) + "\n")
    (out / "clips.json").write_text(_dumps(_ground_truth(records, size, frames)) + "\n")
    meta = _meta(counts, size, frames, seed, records)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    return {"out_dir": str(out), "clips": {s: counts[s] for s in SPLITS},
            "descriptions": total * DESCRIPTIONS_PER_CLIP, "frames": frames, "size": size,
            "workers": workers, "elapsed_s": elapsed,
            "clips_per_s": total / elapsed if elapsed > 0 else float("inf")}


def run(args: argparse.Namespace) -> int:
    """Entry point of `glimpse data clips`."""
    counts = {"train": args.num_train, "val": args.num_val, "test": args.num_test,
              "novel": args.num_novel}
    try:
        summary = generate_clips(args.out, counts, frames=args.frames, size=args.size,
                                 seed=args.seed, workers=args.workers,
                                 progress=not args.no_progress)
    except ValueError as error:
        print(f"glimpse data clips: error: {error}", file=sys.stderr)
        return 2
    clips = ", ".join(f"{split} {n}" for split, n in summary["clips"].items())
    print(f"clips written to {summary['out_dir']}: {clips} clips of {summary['frames']} "
          f"frames ({summary['size']}x{summary['size']}), "
          f"{summary['descriptions']} descriptions")
    print(f"{summary['elapsed_s']:.1f} s, {summary['clips_per_s']:.0f} clips/s "
          f"with {summary['workers']} worker(s)")
    return 0


# --- reading ---------------------------------------------------------------------

def read_clip(path: str | os.PathLike) -> np.ndarray:
    """Every frame of an animated image (APNG, GIF, WebP) as (T, H, W, 3) uint8 RGB."""
    with Image.open(path) as image:
        frames = []
        for t in range(getattr(image, "n_frames", 1)):
            image.seek(t)
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


def load_clips(dataset_dir: str | os.PathLike) -> dict[int, Clip]:
    """The clips of a generated set keyed by id (boxes and descriptions are dropped).

    A missing or malformed clips.json raises DatasetFormatError naming the file
    and the entry at fault.
    """
    path = Path(dataset_dir) / "clips.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: cannot read clips ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("clips"), list):
        raise DatasetFormatError(f"{path}: expected an object with a 'clips' list")
    clips: dict[int, Clip] = {}
    for i, entry in enumerate(data["clips"]):
        try:
            objects = [{k: v for k, v in o.items() if k != "bbox"} for o in entry["objects"]]
            clips[entry["id"]] = Clip.from_dict({"frames": entry["frames"], "objects": objects})
        except (KeyError, TypeError, AttributeError) as err:
            raise DatasetFormatError(f"{path}: clips[{i}] is not a clip "
                                     f"({type(err).__name__}: {err})") from None
    return clips


@dataclass(frozen=True)
class ClipSetInfo:
    """What meta.json says about a generated clip set."""

    image_size: int
    frames: int
    fps: int
    seed: int
    generator_version: str
    clips: dict[str, int]
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def load(cls, dataset_dir: str | os.PathLike) -> ClipSetInfo:
        meta = json.loads((Path(dataset_dir) / "meta.json").read_text())
        return cls(image_size=meta["image_size"], frames=meta["frames"], fps=meta["fps"],
                   seed=meta["seed"], generator_version=meta["generator_version"],
                   clips=meta["counts"]["clips"], class_names=meta["class_names"])
