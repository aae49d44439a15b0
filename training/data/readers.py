"""Readers for the published caption and VQA formats.

- Karpathy's split files (dataset_coco.json, dataset_flickr8k.json,
  dataset_flickr30k.json), which the shapes world also writes as captions.json;
- VQA v2 questions + annotations, and the shapes world's DIR/vqa/<split>_*.json;
- Reed et al.'s CUB-200 / Oxford-102 captions (text_c10/<class>/<image>.txt);
- UCF-101's activity splits (classInd.txt, trainlist01.txt, testlist01.txt), which
  the clip set also writes under splits/;
- MSR-VTT's video descriptions (videodatainfo JSON), which the clip set also
  writes as videodatainfo.json.

Every reader validates what it reads: a malformed file raises
`DatasetFormatError` naming the file and what is wrong with it, so a bad
download fails with a readable message instead of a KeyError deep in training.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KARPATHY_SPLITS: frozenset[str] = frozenset({"train", "val", "test", "restval", "novel"})
CLASS_SPLIT_FILES: dict[str, str] = {
    "trainval": "trainvalclasses.txt",
    "test": "testclasses.txt",
    "all": "allclasses.txt",
}


class DatasetFormatError(ValueError):
    """A dataset file does not follow its published format."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetFormatError(
            f"{path.name}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path.name}: not UTF-8 text ({e.reason})") from None


_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object"}


def _field(obj: Any, key: str, kind: type, where: str, source: str) -> Any:
    """obj[key], checked to be of type `kind` (bool is not an int here)."""
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{source}: {where} is {_describe(obj)}, expected an object")
    if key not in obj:
        raise DatasetFormatError(f"{source}: {where} has no '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DatasetFormatError(
            f"{source}: {where}.{key} is {_describe(value)}, expected {_TYPE_NAMES[kind]}")
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _string_list(obj: dict, key: str, where: str, source: str) -> list[str]:
    items = _field(obj, key, list, where, source)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise DatasetFormatError(
                f"{source}: {where}.{key}[{i}] is {_describe(item)}, expected a string")
    return items


# ---------------------------------------------------------------- Karpathy splits


@dataclass(frozen=True)
class CaptionImage:
    """One image of a Karpathy split file and its reference captions."""

    imgid: int
    path: str  # relative to the image root: "<filepath>/<filename>", or "<filename>"
    split: str
    captions: tuple[str, ...]  # raw sentences
    tokens: tuple[tuple[str, ...], ...]  # the file's tokenisation of each sentence
    sentids: tuple[int, ...]
    cocoid: int | None = None


@dataclass(frozen=True)
class CaptionDataset:
    name: str
    images: tuple[CaptionImage, ...]

    def split(self, name: str) -> list[CaptionImage]:
        return [im for im in self.images if im.split == name]

    def by_imgid(self) -> dict[int, CaptionImage]:
        return {im.imgid: im for im in self.images}


def load_karpathy(path: str | Path, *, restval_as_train: bool = False) -> CaptionDataset:
    """Read a Karpathy split file (dataset_coco.json, dataset_flickr30k.json, ...).

    restval_as_train: fold COCO's "restval" images (the 30k validation images
    outside Karpathy's 5k val and 5k test) into "train", as most papers do.
    """
    path = Path(path)
    data = _read_json(path)
    source = path.name
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{source}: top level is {_describe(data)}, expected an object")
    raw_images = _field(data, "images", list, "the file", source)
    images = tuple(_caption_image(im, f"images[{i}]", source, restval_as_train)
                   for i, im in enumerate(raw_images))
    seen: set[int] = set()
    for i, im in enumerate(images):
        if im.imgid in seen:
            raise DatasetFormatError(f"{source}: images[{i}] repeats imgid {im.imgid}")
        seen.add(im.imgid)
    name = data.get("dataset", path.stem)
    return CaptionDataset(name=str(name), images=images)


def _caption_image(im: Any, where: str, source: str, restval_as_train: bool) -> CaptionImage:
    imgid = _field(im, "imgid", int, where, source)
    filename = _field(im, "filename", str, where, source)
    split = _field(im, "split", str, where, source)
    if split not in KARPATHY_SPLITS:
        raise DatasetFormatError(
            f"{source}: {where} has unknown split {split!r} "
            f"(expected one of {', '.join(sorted(KARPATHY_SPLITS))})")
    if restval_as_train and split == "restval":
        split = "train"
    filepath = im.get("filepath")
    if filepath is not None and not isinstance(filepath, str):
        raise DatasetFormatError(
            f"{source}: {where}.filepath is {_describe(filepath)}, expected a string")
    cocoid = im.get("cocoid")
    if cocoid is not None and (not isinstance(cocoid, int) or isinstance(cocoid, bool)):
        raise DatasetFormatError(
            f"{source}: {where}.cocoid is {_describe(cocoid)}, expected an integer")
    sentences = _field(im, "sentences", list, where, source)
    if not sentences:
        raise DatasetFormatError(f"{source}: {where} has no sentences")
    captions, tokens, sentids = [], [], []
    for j, s in enumerate(sentences):
        at = f"{where}.sentences[{j}]"
        captions.append(_field(s, "raw", str, at, source))
        tokens.append(tuple(_string_list(s, "tokens", at, source)))
        sentids.append(_field(s, "sentid", int, at, source))
        if not tokens[-1]:
            raise DatasetFormatError(f"{source}: {at} has no tokens")
    return CaptionImage(
        imgid=imgid,
        path=f"{filepath}/{filename}" if filepath else filename,
        split=split,
        captions=tuple(captions),
        tokens=tuple(tokens),
        sentids=tuple(sentids),
        cocoid=cocoid,
    )


def load_captions(dataset_dir: str | Path, split: str | None = None, *,
                  restval_as_train: bool = False) -> list[CaptionImage]:
    """The images of DIR/captions.json (the shapes world's Karpathy-style file),
    all of them or those of one split."""
    if split is not None and split not in KARPATHY_SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of "
                         f"{', '.join(sorted(KARPATHY_SPLITS))})")
    dataset = load_karpathy(Path(dataset_dir) / "captions.json",
                            restval_as_train=restval_as_train)
    return list(dataset.images) if split is None else dataset.split(split)


# ---------------------------------------------------------------- VQA v2


@dataclass(frozen=True)
class VQAQuestion:
    """A question, joined with its annotation when one was given."""

    question_id: int
    image_id: int
    question: str
    answers: tuple[str, ...] = ()  # the human answers (ten in VQA v2); empty without annotation
    multiple_choice_answer: str | None = None
    question_type: str | None = None
    answer_type: str | None = None
    # The objects the question names, in order (indices into the image's scene objects):
    # the shapes world's addition to VQA v2's annotations; () where the file has none.
    objects: tuple[int, ...] = ()

    @property
    def annotated(self) -> bool:
        return bool(self.answers)


def load_vqa(questions_path: str | Path,
             annotations_path: str | Path | None = None) -> list[VQAQuestion]:
    """Read VQA v2 questions, joined by question_id with their annotations.

    Annotations are optional (test-dev publishes none). With annotations every
    question must have exactly one, and its image_id must agree.
    """
    questions_path = Path(questions_path)
    questions = _vqa_questions(questions_path)
    if annotations_path is None:
        return list(questions.values())
    annotations_path = Path(annotations_path)
    annotations = _vqa_annotations(annotations_path)
    return _join_vqa(questions, annotations, questions_path.name, annotations_path.name)


def load_vqa_split(dataset_dir: str | Path, split: str) -> list[VQAQuestion]:
    """The shapes world's DIR/vqa/<split>_questions.json (+ _annotations.json if present)."""
    vqa_dir = Path(dataset_dir) / "vqa"
    questions = vqa_dir / f"{split}_questions.json"
    if not questions.is_file():
        found = sorted(p.name.removesuffix("_questions.json")
                       for p in vqa_dir.glob("*_questions.json"))
        raise FileNotFoundError(
            f"no {questions} (splits with questions: {', '.join(found) or 'none'})")
    annotations = vqa_dir / f"{split}_annotations.json"
    return load_vqa(questions, annotations if annotations.is_file() else None)


def _vqa_questions(path: Path) -> dict[int, VQAQuestion]:
    data = _read_json(path)
    items = _field(data, "questions", list, "the file", path.name)
    out: dict[int, VQAQuestion] = {}
    for i, q in enumerate(items):
        where = f"questions[{i}]"
        qid = _field(q, "question_id", int, where, path.name)
        if qid in out:
            raise DatasetFormatError(f"{path.name}: {where} repeats question_id {qid}")
        out[qid] = VQAQuestion(
            question_id=qid,
            image_id=_field(q, "image_id", int, where, path.name),
            question=_field(q, "question", str, where, path.name),
        )
    return out


def _vqa_annotations(path: Path) -> dict[int, dict]:
    data = _read_json(path)
    items = _field(data, "annotations", list, "the file", path.name)
    out: dict[int, dict] = {}
    for i, a in enumerate(items):
        where = f"annotations[{i}]"
        qid = _field(a, "question_id", int, where, path.name)
        if qid in out:
            raise DatasetFormatError(f"{path.name}: {where} repeats question_id {qid}")
        answers = _field(a, "answers", list, where, path.name)
        if not answers:
            raise DatasetFormatError(f"{path.name}: {where} has no answers")
        out[qid] = {
            "where": where,
            "image_id": _field(a, "image_id", int, where, path.name),
            "question_type": _field(a, "question_type", str, where, path.name),
            "answer_type": _field(a, "answer_type", str, where, path.name),
            "multiple_choice_answer": _field(a, "multiple_choice_answer", str, where, path.name),
            "answers": tuple(_field(ans, "answer", str, f"{where}.answers[{j}]", path.name)
                             for j, ans in enumerate(answers)),
            "objects": _named_objects(a, where, path.name),
        }
    return out


def _join_vqa(questions: dict[int, VQAQuestion], annotations: dict[int, dict],
              questions_name: str, annotations_name: str) -> list[VQAQuestion]:
    orphans = sorted(set(annotations) - set(questions))
    if orphans:
        raise DatasetFormatError(
            f"{annotations_name}: {len(orphans)} annotation(s) for question_id(s) absent from "
            f"{questions_name}, e.g. {orphans[:5]}")
    missing = sorted(set(questions) - set(annotations))
    if missing:
        raise DatasetFormatError(
            f"{annotations_name}: no annotation for {len(missing)} question(s) of "
            f"{questions_name}, e.g. question_id {missing[:5]}")
    joined = []
    for qid, q in questions.items():
        a = annotations[qid]
        if a["image_id"] != q.image_id:
            raise DatasetFormatError(
                f"{annotations_name}: {a['where']} (question_id {qid}) has image_id "
                f"{a['image_id']} but {questions_name} says {q.image_id}")
        joined.append(VQAQuestion(
            question_id=qid, image_id=q.image_id, question=q.question, answers=a["answers"],
            multiple_choice_answer=a["multiple_choice_answer"],
            question_type=a["question_type"], answer_type=a["answer_type"],
            objects=a["objects"]))
    return joined


def _named_objects(annotation: dict, where: str, filename: str) -> tuple[int, ...]:
    """The optional `objects` of an annotation: a list of non-negative object indices."""
    objects = annotation.get("objects", [])
    if not isinstance(objects, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in objects):
        raise DatasetFormatError(f"{filename}: {where}.objects must be a list of object "
                                 f"indices (non-negative integers), not {objects!r}")
    return tuple(objects)


# ---------------------------------------------------------------- CUB-200 / Oxford-102


@dataclass(frozen=True)
class ClassCaptionImage:
    """An image of Reed et al.'s caption release for CUB-200 or Oxford-102."""

    image_id: str  # "<class folder>/<image stem>"
    class_folder: str
    class_id: int  # the number in the folder name: "001.Black_footed_Albatross" -> 1
    class_name: str
    image_path: str  # "images/<class folder>/<image stem>.jpg"
    captions: tuple[str, ...]
    split: str | None  # "trainval" or "test" when the split files say, else None


_CUB_FOLDER = re.compile(r"^(\d+)\.(.+)$")
_FLOWERS_FOLDER = re.compile(r"^class_(\d+)$")


def parse_class_folder(name: str) -> tuple[int, str]:
    """(class id, class name) of "001.Black_footed_Albatross" or "class_00001"."""
    if m := _CUB_FOLDER.match(name):
        return int(m.group(1)), m.group(2)
    if m := _FLOWERS_FOLDER.match(name):
        return int(m.group(1)), name
    raise ValueError(f"class folder {name!r} is neither 'NNN.Name' (CUB) nor "
                     "'class_NNNNN' (Oxford-102)")


def load_text_c10(dataset_dir: str | Path, split: str | None = None) -> list[ClassCaptionImage]:
    """Read DIR/text_c10/<class folder>/<image>.txt (one caption per line).

    split: None for every image, or "trainval" / "test" / "all" to keep the
    classes listed in DIR/trainvalclasses.txt / testclasses.txt / allclasses.txt
    (zero-shot splits: the classes of train and test are disjoint).
    """
    root = Path(dataset_dir)
    if split is not None and split not in CLASS_SPLIT_FILES:
        raise ValueError(f"unknown split {split!r} (expected one of "
                         f"{', '.join(CLASS_SPLIT_FILES)})")
    text_dir = root / "text_c10"
    if not text_dir.is_dir():
        raise FileNotFoundError(f"no text_c10/ directory in {root}")
    folders = sorted(p.name for p in text_dir.iterdir() if p.is_dir())
    split_of = _class_splits(root, folders)
    if split is not None:
        if not (root / CLASS_SPLIT_FILES[split]).is_file():
            raise DatasetFormatError(
                f"{root.name}: no {CLASS_SPLIT_FILES[split]} to select split {split!r}")
        keep = set(_read_class_list(root / CLASS_SPLIT_FILES[split], folders))
        folders = [f for f in folders if f in keep]
    images = []
    for folder in folders:
        try:
            class_id, class_name = parse_class_folder(folder)
        except ValueError as e:
            raise DatasetFormatError(f"text_c10/{folder}: {e}") from None
        for txt in sorted((text_dir / folder).glob("*.txt")):
            images.append(ClassCaptionImage(
                image_id=f"{folder}/{txt.stem}",
                class_folder=folder,
                class_id=class_id,
                class_name=class_name,
                image_path=f"images/{folder}/{txt.stem}.jpg",
                captions=_read_caption_lines(txt, f"text_c10/{folder}/{txt.name}"),
                split=split_of.get(folder),
            ))
    return images


def _read_caption_lines(path: Path, name: str) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{name}: not UTF-8 text ({e.reason})") from None
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not lines:
        raise DatasetFormatError(f"{name}: empty caption file")
    return lines


def _read_class_list(path: Path, folders: list[str]) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    unknown = [n for n in names if n not in folders]
    if unknown:
        raise DatasetFormatError(
            f"{path.name}: lists {len(unknown)} class(es) with no text_c10/ folder, "
            f"e.g. {unknown[:3]}")
    return names


def _class_splits(root: Path, folders: list[str]) -> dict[str, str]:
    """class folder -> "trainval" / "test", from the split files that exist."""
    split_of: dict[str, str] = {}
    for split in ("trainval", "test"):
        path = root / CLASS_SPLIT_FILES[split]
        if not path.is_file():
            continue
        for name in _read_class_list(path, folders):
            if split_of.get(name, split) != split:
                raise DatasetFormatError(
                    f"{path.name}: class {name!r} is also in "
                    f"{CLASS_SPLIT_FILES[split_of[name]]}")
            split_of[name] = split
    return split_of


# ---------------------------------------------------------------- UCF-101 activity splits


@dataclass(frozen=True)
class ActivityVideo:
    """A video of a UCF-101-style split list."""

    path: str  # relative to the video root: "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"
    label: int  # 0-based class index (classInd.txt counts from 1)
    class_name: str


def load_class_index(path: str | Path) -> tuple[str, ...]:
    """The class names of a classInd.txt ("1 ApplyEyeMakeup" per line), in label order.

    Indices must run 1, 2, 3, ... and names must be unique.
    """
    path = Path(path)
    names: list[str] = []
    for line_no, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetFormatError(
                f"{path.name}: line {line_no} is {line!r}, expected '<index> <class name>'")
        index, name = int(parts[0]), parts[1]
        if index != len(names) + 1:
            raise DatasetFormatError(
                f"{path.name}: line {line_no} has index {index}, expected {len(names) + 1}")
        if name in names:
            raise DatasetFormatError(f"{path.name}: line {line_no} repeats class {name!r}")
        names.append(name)
    if not names:
        raise DatasetFormatError(f"{path.name}: no classes")
    return tuple(names)


def load_activity_list(path: str | Path, classes: tuple[str, ...]) -> list[ActivityVideo]:
    """The videos of a UCF-101 list: "Class/video.avi 1" (trainlist) or "Class/video.avi"
    (testlist), the class then being the path's folder. A label and a folder that
    disagree, an unknown class, a label out of range or a repeated path are errors."""
    path = Path(path)
    videos: list[ActivityVideo] = []
    seen: set[str] = set()
    for line_no, line in _lines(path):
        where = f"{path.name}: line {line_no}"
        parts = line.split()
        if len(parts) > 2:
            raise DatasetFormatError(f"{where} is {line!r}, expected '<path> [<label>]'")
        video, folder = parts[0], parts[0].split("/")[0]
        if len(parts) == 2:
            if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                raise DatasetFormatError(
                    f"{where} has label {parts[1]!r}, expected 1 to {len(classes)}")
            label = int(parts[1]) - 1
            if "/" in video and folder != classes[label]:
                raise DatasetFormatError(f"{where}: {video} is in folder {folder!r} but its "
                                         f"label {label + 1} is {classes[label]!r}")
        elif "/" in video and folder in classes:
            label = classes.index(folder)
        else:
            raise DatasetFormatError(
                f"{where}: {video} has no label and its folder {folder!r} is not a class "
                "of the class index")
        if video in seen:
            raise DatasetFormatError(f"{where} repeats {video}")
        seen.add(video)
        videos.append(ActivityVideo(video, label, classes[label]))
    return videos


def load_activity_split(split_dir: str | Path, split: str = "train",
                        fold: int = 1) -> list[ActivityVideo]:
    """The videos of `split` ("train", "test"; the clip set also has "val" and
    "novel") in fold `fold` of a UCF-101-style split folder: classInd.txt and
    <split>list<fold:02d>.txt, as in UCF-101's ucfTrainTestlist/."""
    split_dir = Path(split_dir)
    list_file = split_dir / f"{split}list{fold:02d}.txt"
    if not list_file.is_file():
        found = sorted(p.name for p in split_dir.glob("*list*.txt"))
        raise FileNotFoundError(f"no {list_file} (lists there: {', '.join(found) or 'none'})")
    return load_activity_list(list_file, load_class_index(split_dir / "classInd.txt"))


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines; UCF-101's own files
    end their lines with CRLF."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path.name}: not UTF-8 text ({e.reason})") from None
    return [(k, line.strip()) for k, line in enumerate(text.splitlines(), start=1)
            if line.strip()]


# ---------------------------------------------------------------- MSR-VTT descriptions


MSRVTT_SPLITS: dict[str, str] = {"train": "train", "validate": "val", "val": "val",
                                 "test": "test", "novel": "novel"}


@dataclass(frozen=True)
class VideoCaptions:
    """A video of an MSR-VTT videodatainfo file and its reference sentences."""

    video_id: str  # "video0"
    id: int
    split: str  # train, val (MSR-VTT's "validate"), test or novel
    category: int
    url: str  # MSR-VTT: the YouTube address; the clip set: the clip's path under the set
    start: float  # seconds into the source video
    end: float
    captions: tuple[str, ...]
    sen_ids: tuple[int, ...]


def load_msrvtt(path: str | Path) -> list[VideoCaptions]:
    """Read an MSR-VTT videodatainfo file (train_val_videodatainfo.json,
    test_videodatainfo.json, or the clip set's videodatainfo.json): every video
    with its sentences, in the file's video order. Every sentence must name a video
    of the file and every video must have a sentence."""
    path = Path(path)
    source = path.name
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{source}: top level is {_describe(data)}, expected an object")
    videos = {}
    for i, v in enumerate(_field(data, "videos", list, "the file", source)):
        where = f"videos[{i}]"
        video_id = _field(v, "video_id", str, where, source)
        if video_id in videos:
            raise DatasetFormatError(f"{source}: {where} repeats video_id {video_id!r}")
        split = _field(v, "split", str, where, source)
        if split not in MSRVTT_SPLITS:
            raise DatasetFormatError(f"{source}: {where} has unknown split {split!r} "
                                     f"(expected one of {', '.join(MSRVTT_SPLITS)})")
        videos[video_id] = {
            "video_id": video_id, "id": _field(v, "id", int, where, source),
            "split": MSRVTT_SPLITS[split], "category": _field(v, "category", int, where, source),
            "url": _field(v, "url", str, where, source),
            "start": _seconds(v, "start time", where, source),
            "end": _seconds(v, "end time", where, source), "captions": [], "sen_ids": []}
    seen_sentences: set[int] = set()
    for i, s in enumerate(_field(data, "sentences", list, "the file", source)):
        where = f"sentences[{i}]"
        caption = _field(s, "caption", str, where, source)
        video_id = _field(s, "video_id", str, where, source)
        sen_id = _field(s, "sen_id", int, where, source)
        if video_id not in videos:
            raise DatasetFormatError(f"{source}: {where} is for video_id {video_id!r}, "
                                     "which the file's videos do not list")
        if sen_id in seen_sentences:
            raise DatasetFormatError(f"{source}: {where} repeats sen_id {sen_id}")
        seen_sentences.add(sen_id)
        videos[video_id]["captions"].append(caption)
        videos[video_id]["sen_ids"].append(sen_id)
    silent = [v for v, entry in videos.items() if not entry["captions"]]
    if silent:
        raise DatasetFormatError(f"{source}: {len(silent)} video(s) have no sentence, "
                                 f"e.g. {silent[:5]}")
    return [VideoCaptions(**{**v, "captions": tuple(v["captions"]),
                             "sen_ids": tuple(v["sen_ids"])}) for v in videos.values()]


def _seconds(obj: dict, key: str, where: str, source: str) -> float:
    if key not in obj:
        raise DatasetFormatError(f"{source}: {where} has no '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DatasetFormatError(
            f"{source}: {where}.{key} is {_describe(value)}, expected a number")
    return float(value)
