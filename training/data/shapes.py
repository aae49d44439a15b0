"""`glimpse data shapes`: generate the shapes world and write it in the published formats.

Every image is a pure function of (seed, split, index): its random streams are
seeded from that triple, so the output does not depend on how the work is
split across processes, and the same arguments give byte-identical files.

Layout under the output directory (docs/datasets.md has examples)::

    images/<split>/<split>_<index:06d>.png
    captions.json                 Karpathy-style captions, every split
    vqa/<split>_questions.json    VQA v2 questions
    vqa/<split>_annotations.json  VQA v2 annotations (10 answers per question)
    scenes.json                   objects, COCO boxes, relations, class labels
    meta.json                     generator version, arguments, vocabularies
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data.language import generate_captions
from training.data.questions import generate_questions
from training.data.readers import CaptionImage, DatasetFormatError
from training.data.render import (
    SUPERSAMPLE,
    encode_png,
    render_scene_with_coverage,
)
from training.data.scenes import (
    AREA_MARGIN,
    MAX_OBJECTS,
    MIN_OBJECTS,
    NOVEL_COMBINATIONS,
    OVERLAP_TOLERANCE,
    RADIUS_JITTER,
    RELATION_MARGIN,
    check_object_range,
    sample_scene,
)
from training.data.tokenizer import tokenize
from training.data.world import (
    COLOURS,
    NOVEL_COLOUR_SHAPE,
    NOVEL_SIZE_SHAPE,
    NUM_CLASSES,
    RELATIONS,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
    SPLITS,
    Scene,
    ShapeObject,
    class_label,
)

GENERATOR_VERSION = "1.0"
CAPTIONS_PER_IMAGE = 5  # also the stride of sentence ids: sentid = imgid * 5 + k
QUESTION_ID_STRIDE = 1000  # question_id = image_id * 1000 + k, as in VQA v2
MIN_SIZE, MAX_SIZE = 32, 1024
CHUNK_SIZE = 64  # images per task handed to a worker process
LICENSE = {"name": "MIT", "url": "https://opensource.org/licenses/MIT"}

PNG_COMPRESSION = 1  # zlib level: higher levels gain ~1% on these noisy images
_OBJECT_FIELDS = tuple(f.name for f in fields(ShapeObject))

# Independent random streams of one image, so that a change to how one part
# draws numbers leaves the others untouched.
_STREAMS = ("scene", "background", "captions", "questions")


def class_names() -> list[str]:
    """Name of every class id of world.class_label, e.g. "red circle"."""
    names = [""] * NUM_CLASSES
    for shape in SHAPES:
        for colour in COLOURS:
            names[class_label(shape, colour)] = f"{colour} {shape}"
    return names


def image_filename(split: str, index: int) -> str:
    return f"{split}_{index:06d}.png"


def image_streams(seed: int, split: str, index: int) -> dict[str, np.random.Generator]:
    """The random streams of one image, by name (see _STREAMS), seeded from its identity."""
    split_id = SPLITS.index(split)
    return {name: np.random.default_rng(_stream_entropy(seed, split_id, index, k))
            for k, name in enumerate(_STREAMS)}


def _stream_entropy(*words: int) -> list[int] | np.ndarray:
    """The entropy of one stream: the list of its identity's numbers, or, when each fits
    in 32 bits, the uint32 array that SeedSequence turns that list into (same seed, but
    SeedSequence converts an array in one step and a list number by number)."""
    if min(words) >= 0 and max(words) < 2**32:
        return np.array(words, dtype=np.uint32)
    return list(words)


def _object_dict(obj: ShapeObject) -> dict:
    return {name: getattr(obj, name) for name in _OBJECT_FIELDS}


def make_image(seed: int, split: str, index: int, size: int, *,
               objects: tuple[int, int] = (MIN_OBJECTS, MAX_OBJECTS)) -> tuple[np.ndarray, dict]:
    """Image `index` of `split`: its pixels and its record.

    `objects` is the (min, max) number of objects per image.

    The record holds the objects (scene fields plus the COCO `bbox` [x, y, w, h]
    and `area` of their visible rendered mask), the relations, the class `label`
    of the object with the largest visible area and its index `largest`, the
    captions as (raw, tokens) pairs and the questions.
    """
    rngs = image_streams(seed, split, index)
    scene = sample_scene(rngs["scene"], split, min_objects=objects[0], max_objects=objects[1])
    image, visible = render_scene_with_coverage(scene, size, rngs["background"])
    areas = [v.area for v in visible]
    largest = areas.index(max(areas))  # the first largest, as np.argmax
    objects = [{**_object_dict(o), "bbox": v.box(), "area": round(a, 2)}
               for o, v, a in zip(scene.objects, visible, areas, strict=True)]
    largest_object = scene.objects[largest]
    record = {
        "split": split,
        "index": index,
        "filename": image_filename(split, index),
        "label": class_label(largest_object.shape, largest_object.colour),
        "largest": largest,
        "objects": objects,
        "relations": [list(r) for r in scene.relations()],
        "captions": [(raw, tokenize(raw)) for raw in
                     generate_captions(scene, rngs["captions"], n=CAPTIONS_PER_IMAGE)],
        "questions": generate_questions(scene, rngs["questions"]),
    }
    return image, record


def first_image_ids(counts: dict[str, int]) -> dict[str, int]:
    """imgid of each split's image 0: ids run through the splits in SPLITS order."""
    starts, next_id = {}, 0
    for split in SPLITS:
        starts[split] = next_id
        next_id += counts.get(split, 0)
    return starts


def _numbered(items: list, imgid: int, stride: int, what: str) -> list[tuple[int, object]]:
    """(id, item) pairs with ids imgid * stride + k, unique across the whole world."""
    if len(items) > stride:
        raise RuntimeError(f"image {imgid} has {len(items)} {what}; at most {stride} are numbered")
    return [(imgid * stride + k, item) for k, item in enumerate(items)]


def caption_entry(record: dict, imgid: int) -> dict:
    """The Karpathy-format entry of one image (sentid = imgid * 5 + k)."""
    sentences = _numbered(record["captions"], imgid, CAPTIONS_PER_IMAGE, "captions")
    return {
        "filepath": f"images/{record['split']}",
        "filename": record["filename"],
        "imgid": imgid,
        "cocoid": imgid,
        "split": record["split"],
        "sentids": [sid for sid, _ in sentences],
        "sentences": [{"raw": raw, "tokens": tokens, "imgid": imgid, "sentid": sid}
                      for sid, (raw, tokens) in sentences],
    }


def vqa_entries(record: dict, imgid: int) -> tuple[list[dict], list[dict]]:
    """VQA v2 (questions, annotations) of one image, numbered as VQA v2 does:
    question_id = image_id * 1000 + k."""
    numbered = _numbered(record["questions"], imgid, QUESTION_ID_STRIDE, "questions")
    return ([_question_entry(qid, imgid, q) for qid, q in numbered],
            [_annotation_entry(qid, imgid, q) for qid, q in numbered])


def _question_entry(qid: int, imgid: int, q: dict) -> dict:
    return {"image_id": imgid, "question": q["question"], "question_id": qid}


def _annotation_entry(qid: int, imgid: int, q: dict) -> dict:
    return {
        "question_id": qid,
        "image_id": imgid,
        "question_type": q["question_type"],
        "answer_type": q["answer_type"],
        "multiple_choice_answer": q["multiple_choice_answer"],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k}
                    for k, a in enumerate(q["answers"], start=1)],
        "objects": q["objects"],
    }


def _annotation_json(qid: int, imgid: int, q: dict) -> str:
    """_dumps(_annotation_entry(qid, imgid, q)), written directly.

    Annotations are most of the VQA text (ten answer objects per question) and their
    strings come from a small vocabulary, so their JSON pieces are cached rather than
    encoded again for every question.
    """
    answers = ",".join([_answer_json(a, k) for k, a in enumerate(q["answers"], start=1)])
    return (f'{{"question_id":{qid},"image_id":{imgid},'
            f'"question_type":{_json_string(q["question_type"])},'
            f'"answer_type":{_json_string(q["answer_type"])},'
            f'"multiple_choice_answer":{_json_string(q["multiple_choice_answer"])},'
            f'"answers":[{answers}],"objects":{_dumps(q["objects"])}}}')


@cache
def _json_string(text: str) -> str:
    return json.dumps(text)


@cache
def _answer_json(answer: str, answer_id: int) -> str:
    return _dumps({"answer": answer, "answer_confidence": "yes", "answer_id": answer_id})


def scene_entry(record: dict, imgid: int) -> dict:
    keys = ("split", "filename", "label", "largest", "objects", "relations")
    return {"imgid": imgid, **{k: record[k] for k in keys}}


@dataclass
class _Encoded:
    """The entries of consecutive images of one split, as JSON text.

    Each list holds fragments: runs of comma-separated JSON values, one run per
    encoded batch of images (possibly empty), in image order.
    """

    split: str
    images: int = 0
    num_captions: int = 0
    num_questions: int = 0
    captions: list[str] = field(default_factory=list)
    scenes: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    annotations: list[str] = field(default_factory=list)

    @classmethod
    def encode(cls, split: str, records: list[tuple[dict, int]]) -> _Encoded:
        """Encode (record, imgid) pairs: one json.dumps per file, annotations written
        directly (_annotation_json)."""
        captions, scenes, questions, annotations = [], [], [], []
        for record, imgid in records:
            captions.append(caption_entry(record, imgid))
            scenes.append(scene_entry(record, imgid))
            for qid, q in _numbered(record["questions"], imgid, QUESTION_ID_STRIDE, "questions"):
                questions.append(_question_entry(qid, imgid, q))
                annotations.append(_annotation_json(qid, imgid, q))
        return cls(split=split, images=len(records),
                   num_captions=sum(len(c["sentences"]) for c in captions),
                   num_questions=len(questions),
                   captions=[_dumps(captions)[1:-1]], scenes=[_dumps(scenes)[1:-1]],
                   questions=[_dumps(questions)[1:-1]],
                   annotations=[",".join(annotations)])

    def extend(self, other: _Encoded) -> None:
        self.images += other.images
        self.num_captions += other.num_captions
        self.num_questions += other.num_questions
        for name in ("captions", "scenes", "questions", "annotations"):
            getattr(self, name).extend(getattr(other, name))


@dataclass(frozen=True)
class _Chunk:
    out_dir: str
    seed: int
    size: int
    split: str
    start: int
    stop: int
    first_imgid: int  # imgid of the split's image 0
    objects: tuple[int, int] = (MIN_OBJECTS, MAX_OBJECTS)  # (min, max) objects per image


def _generate_chunk(chunk: _Chunk) -> _Encoded:
    """Write the PNGs of one chunk and return its entries as JSON (runs in a worker).

    Encoding here rather than in the parent keeps the parent's serial work to
    joining strings.
    """
    folder = os.path.join(chunk.out_dir, "images", chunk.split)
    records = []
    for index in range(chunk.start, chunk.stop):
        image, record = make_image(chunk.seed, chunk.split, index, chunk.size,
                                   objects=chunk.objects)
        _write_new_file(os.path.join(folder, record["filename"]),
                        encode_png(image, PNG_COMPRESSION))
        records.append((record, chunk.first_imgid + index))
    return _Encoded.encode(chunk.split, records)


def _write_new_file(path: str, data: bytes) -> None:
    """Write `data` to `path` with only the open, write and close system calls (a buffered
    Python file adds three more, a noticeable share of writing thousands of small files)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _chunks(out_dir: Path, counts: dict[str, int], size: int, seed: int,
            objects: tuple[int, int]) -> list[_Chunk]:
    first = first_image_ids(counts)
    return [_Chunk(str(out_dir), seed, size, split, start,
                   min(start + CHUNK_SIZE, counts[split]), first[split], objects)
            for split in SPLITS for start in range(0, counts[split], CHUNK_SIZE)]


def _run_chunks(chunks: list[_Chunk], workers: int, progress: bool) -> dict[str, _Encoded]:
    """Entries of every split, in image order, from `workers` processes (1: this one)."""
    total = sum(c.stop - c.start for c in chunks)
    splits = {split: _Encoded(split) for split in SPLITS}
    with tqdm(total=total, unit="img", file=sys.stderr, disable=not progress,
              desc="shapes world") as bar:
        for encoded in _map_chunks(chunks, workers):
            splits[encoded.split].extend(encoded)
            bar.update(encoded.images)
    return splits


def _map_chunks(chunks: list[_Chunk], workers: int) -> Iterator[_Encoded]:
    if workers == 1 or len(chunks) <= 1:
        yield from map(_generate_chunk, chunks)
        return
    with multiprocessing.get_context().Pool(min(workers, len(chunks))) as pool:
        yield from pool.imap(_generate_chunk, chunks)


def validate_arguments(counts: dict[str, int], size: int, seed: int, workers: int) -> None:
    """Raise ValueError with a message a user can act on."""
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {list(SPLITS)}")
    for split, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"--num-{split} must be a non-negative integer, got {n!r}")
    if sum(counts.values()) == 0:
        raise ValueError("every split count is 0: nothing to generate")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if seed < 0:
        raise ValueError(f"--seed must be non-negative, got {seed}")
    if workers < 0:
        raise ValueError(f"--workers must be non-negative (0: one per core), got {workers}")


def _prepare_output(out_dir: Path) -> None:
    """Create `out_dir`, clearing a previous shapes world there; refuse anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        meta = out_dir / "meta.json"
        if not meta.is_file() or json.loads(meta.read_text()).get("dataset") != "shapes":
            raise ValueError(f"--out {out_dir} is not empty and holds no shapes world; "
                             "refusing to overwrite it")
        for name in ("images", "vqa"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    for split in SPLITS:
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "vqa").mkdir(exist_ok=True)


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _write_json_list(path: Path, head: dict, key: str, fragments: list[str]) -> None:
    """Write the object {**head, key: [...]}, the list given as _Encoded fragments."""
    prefix = _dumps(head)[:-1] + ("," if head else "")
    with path.open("w") as file:  # the list written as it is, not copied into one string
        file.write(f'{prefix}"{key}":[')
        file.write(",".join(f for f in fragments if f))
        file.write("]}\n")


def _vqa_head(split: str) -> dict:
    return {"info": {"description": "glimpse shapes world", "version": GENERATOR_VERSION},
            "license": LICENSE, "data_subtype": split}


def _meta_json(counts: dict[str, int], size: int, seed: int,
               splits: dict[str, _Encoded], objects: tuple[int, int]) -> dict:
    arguments = {**{f"num_{s}": counts[s] for s in SPLITS}, "size": size, "seed": seed}
    if objects != (MIN_OBJECTS, MAX_OBJECTS):  # a default world's meta.json stays as it was
        arguments |= {"min_objects": objects[0], "max_objects": objects[1]}
    return {
        "dataset": "shapes",
        "generator_version": GENERATOR_VERSION,
        # The arguments that determine the output (workers and progress do not).
        "arguments": arguments,
        "seed": seed,
        "image_size": size,
        "counts": {
            "images": {s: e.images for s, e in splits.items()},
            "captions": {s: e.num_captions for s, e in splits.items()},
            "questions": {s: e.num_questions for s, e in splits.items()},
        },
        "vocabulary": {
            "shapes": list(SHAPES),
            "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
            "sizes": {name: SIZE_RADIUS[name] for name in SIZES},
            "relations": list(RELATIONS),
            "novel_combinations": {
                "colour_shape": sorted(list(c) for c in NOVEL_COLOUR_SHAPE),
                "size_shape": sorted(list(c) for c in NOVEL_SIZE_SHAPE),
                "shape_colour_size": [list(c) for c in NOVEL_COMBINATIONS],
            },
        },
        "generation": {
            "objects_per_image": list(objects),
            "radius_jitter": RADIUS_JITTER,
            "overlap_tolerance": OVERLAP_TOLERANCE,
            "relation_margin": RELATION_MARGIN,
            "area_margin": AREA_MARGIN,
            "supersample": SUPERSAMPLE,
        },
        "num_classes": NUM_CLASSES,
        "class_names": class_names(),
    }


def _write_dataset(out_dir: Path, splits: dict[str, _Encoded], counts: dict[str, int],
                   size: int, seed: int, objects: tuple[int, int]) -> None:
    ordered = [splits[s] for s in SPLITS]
    _write_json_list(out_dir / "captions.json", {"dataset": "shapes"}, "images",
                     [c for e in ordered for c in e.captions])
    for e in ordered:
        _write_json_list(out_dir / "vqa" / f"{e.split}_questions.json",
                         {**_vqa_head(e.split), "task_type": "Open-Ended", "data_type": "shapes"},
                         "questions", e.questions)
        _write_json_list(out_dir / "vqa" / f"{e.split}_annotations.json", _vqa_head(e.split),
                         "annotations", e.annotations)
    _write_json_list(out_dir / "scenes.json", {"image_size": size}, "images",
                     [c for e in ordered for c in e.scenes])
    meta = _meta_json(counts, size, seed, splits, objects)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def generate_shapes_world(out_dir: str | os.PathLike, counts: dict[str, int], size: int = 64,
                          seed: int = 0, workers: int = 0, progress: bool = True, *,
                          min_objects: int = MIN_OBJECTS,
                          max_objects: int = MAX_OBJECTS) -> dict:
    """Generate the shapes world into `out_dir` and return a summary.

    `counts` maps split names to numbers of images (missing splits: 0);
    `workers` 0 means one process per core; every image holds min_objects to
    max_objects objects (max_objects=1: single-object scenes, as text-to-image
    models are trained on). Raises ValueError on bad arguments.
    """
    counts = {split: counts.get(split, 0) for split in SPLITS} | counts
    validate_arguments(counts, size, seed, workers)
    check_object_range(min_objects, max_objects)
    objects = (min_objects, max_objects)
    workers = workers or os.cpu_count() or 1
    out = Path(out_dir)
    _prepare_output(out)
    start = time.perf_counter()
    splits = _run_chunks(_chunks(out, counts, size, seed, objects), workers, progress)
    _write_dataset(out, splits, counts, size, seed, objects)
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    return {
        "out_dir": str(out),
        "images": {split: counts[split] for split in SPLITS},
        "captions": sum(e.num_captions for e in splits.values()),
        "questions": sum(e.num_questions for e in splits.values()),
        "size": size,
        "workers": workers,
        "elapsed_s": elapsed,
        "images_per_s": total / elapsed if elapsed > 0 else float("inf"),
    }


def run(args: argparse.Namespace) -> int:
    """Entry point of `glimpse data shapes`."""
    counts = {"train": args.num_train, "val": args.num_val, "test": args.num_test,
              "novel": args.num_novel}
    try:
        summary = generate_shapes_world(args.out, counts, size=args.size, seed=args.seed,
                                        workers=args.workers, progress=not args.no_progress,
                                        min_objects=getattr(args, "min_objects", MIN_OBJECTS),
                                        max_objects=getattr(args, "max_objects", MAX_OBJECTS))
    except ValueError as error:
        print(f"glimpse data shapes: error: {error}", file=sys.stderr)
        return 2
    images = ", ".join(f"{split} {n}" for split, n in summary["images"].items())
    print(f"shapes world written to {summary['out_dir']}: {images} images "
          f"({summary['size']}x{summary['size']}), {summary['captions']} captions, "
          f"{summary['questions']} questions")
    print(f"{summary['elapsed_s']:.1f} s, {summary['images_per_s']:.0f} images/s "
          f"with {summary['workers']} worker(s)")
    return 0


def load_scenes(dataset_dir: str | os.PathLike) -> dict[int, Scene]:
    """Scenes of a generated world keyed by imgid (boxes and areas are dropped).

    A missing or malformed scenes.json raises DatasetFormatError naming the file
    and the entry at fault.
    """
    path = Path(dataset_dir) / "scenes.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: cannot read scenes ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(f"{path}: expected an object with an 'images' list")
    scenes: dict[int, Scene] = {}
    for i, image in enumerate(data["images"]):
        try:
            scenes[image["imgid"]] = Scene([
                ShapeObject(**{k: v for k, v in o.items() if k in _OBJECT_FIELDS})
                for o in image["objects"]])
        except (KeyError, TypeError, AttributeError) as err:
            raise DatasetFormatError(f"{path}: images[{i}] is not a scene "
                                     f"({type(err).__name__}: {err})") from None
    return scenes


def single_objects(dataset_dir: str | os.PathLike,
                   images: Sequence[CaptionImage]) -> list[ShapeObject]:
    """The one object of each image, for the single-object (text-to-image) world;
    ValueError names the first image that holds another number of objects."""
    scenes = load_scenes(dataset_dir)
    out = []
    for im in images:
        objects = scenes[im.imgid].objects
        if len(objects) != 1:
            raise ValueError(f"{dataset_dir}: image {im.path} holds {len(objects)} objects; "
                             "a single-object world is needed "
                             "(`glimpse data shapes --max-objects 1`)")
        out.append(objects[0])
    return out


@dataclass(frozen=True)
class ShapesWorldInfo:
    """What meta.json says about a generated world."""

    image_size: int
    seed: int
    generator_version: str
    images: dict[str, int]
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def load(cls, dataset_dir: str | os.PathLike) -> ShapesWorldInfo:
        meta = json.loads((Path(dataset_dir) / "meta.json").read_text())
        return cls(image_size=meta["image_size"], seed=meta["seed"],
                   generator_version=meta["generator_version"],
                   images=meta["counts"]["images"], class_names=meta["class_names"])
