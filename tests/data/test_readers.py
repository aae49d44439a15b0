import json

import pytest

from training.data.readers import (
    DatasetFormatError,
    load_captions,
    load_karpathy,
    load_text_c10,
    load_vqa,
    load_vqa_split,
    parse_class_folder,
)


def _sentence(raw, imgid, sentid):
    tokens = raw.lower().rstrip(".").split()
    return {"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid}


def _coco_image(imgid, split, n=2, filepath="val2014"):
    return {
        "filepath": filepath,
        "filename": f"COCO_{filepath}_{imgid:012d}.jpg",
        "imgid": imgid,
        "split": split,
        "sentids": [imgid * 10 + k for k in range(n)],
        "sentences": [_sentence(f"A dog number {k}.", imgid, imgid * 10 + k) for k in range(n)],
        "cocoid": 1000 + imgid,
    }


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def coco_file(tmp_path):
    images = [_coco_image(0, "train", filepath="train2014"), _coco_image(1, "restval"),
              _coco_image(2, "val"), _coco_image(3, "test", n=3)]
    return _write(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": images})


def test_karpathy_coco(coco_file):
    dataset = load_karpathy(coco_file)
    assert dataset.name == "coco"
    assert [im.split for im in dataset.images] == ["train", "restval", "val", "test"]
    test = dataset.split("test")[0]
    assert test.imgid == 3
    assert test.path == "val2014/COCO_val2014_000000000003.jpg"
    assert test.captions == ("A dog number 0.", "A dog number 1.", "A dog number 2.")
    assert test.tokens[2] == ("a", "dog", "number", "2")
    assert test.sentids == (30, 31, 32)
    assert test.cocoid == 1003


def test_karpathy_restval_as_train(coco_file):
    dataset = load_karpathy(coco_file, restval_as_train=True)
    assert [im.imgid for im in dataset.split("train")] == [0, 1]
    assert dataset.split("restval") == []


def test_karpathy_flickr_has_no_filepath(tmp_path):
    image = {"filename": "1000268201_693b08cb0e.jpg", "imgid": 0, "split": "train",
             "sentids": [0], "sentences": [_sentence("A child in a pink dress.", 0, 0)]}
    path = _write(tmp_path / "dataset_flickr8k.json", {"dataset": "flickr8k", "images": [image]})
    (im,) = load_karpathy(path).images
    assert im.path == "1000268201_693b08cb0e.jpg"
    assert im.cocoid is None


def test_load_captions_shapes_layout(tmp_path):
    images = [_coco_image(0, "train", filepath="images/train"),
              _coco_image(1, "novel", filepath="images/novel")]
    _write(tmp_path / "captions.json", {"dataset": "shapes", "images": images})
    assert [im.imgid for im in load_captions(tmp_path, "novel")] == [1]
    assert len(load_captions(tmp_path)) == 2
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_captions(tmp_path, "dev")


def _broken(images_edit):
    images = [_coco_image(i, "train") for i in range(4)]
    images_edit(images)
    return {"dataset": "coco", "images": images}


@pytest.mark.parametrize(("content", "message"), [
    (_broken(lambda ims: ims[3].pop("sentences")),
     "images[3] has no 'sentences'"),
    (_broken(lambda ims: ims[1].update(split="holdout")),
     "images[1] has unknown split 'holdout' (expected one of novel, restval, test, train, val)"),
    (_broken(lambda ims: ims[2].update(imgid="2")),
     "images[2].imgid is a string, expected an integer"),
    (_broken(lambda ims: ims[0]["sentences"][1].pop("raw")),
     "images[0].sentences[1] has no 'raw'"),
    (_broken(lambda ims: ims[0]["sentences"][0].update(tokens=["a", 3])),
     "images[0].sentences[0].tokens[1] is an integer, expected a string"),
    (_broken(lambda ims: ims[1].update(sentences=[])),
     "images[1] has no sentences"),
    (_broken(lambda ims: ims[3].update(imgid=0)),
     "images[3] repeats imgid 0"),
    (_broken(lambda ims: ims.__setitem__(1, "oops")),
     "images[1] is a string, expected an object"),
    ({"dataset": "coco"},
     "the file has no 'images'"),
    ([1, 2],
     "top level is a list, expected an object"),
])
def test_karpathy_malformed(tmp_path, content, message):
    path = _write(tmp_path / "dataset_coco.json", content)
    with pytest.raises(DatasetFormatError) as excinfo:
        load_karpathy(path)
    assert str(excinfo.value) == f"dataset_coco.json: {message}"


def test_karpathy_bad_json(tmp_path):
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetFormatError,
                       match=r"dataset_flickr30k.json: not valid JSON .* line 1"):
        load_karpathy(path)
    assert issubclass(DatasetFormatError, ValueError)


def _vqa_files(tmp_path, split="test", questions=None, annotations=None):
    vqa = tmp_path / "vqa"
    vqa.mkdir(exist_ok=True)
    questions = questions if questions is not None else [
        {"image_id": 5, "question": "What color is the circle?", "question_id": 50},
        {"image_id": 6, "question": "How many squares are there?", "question_id": 60},
    ]
    _write(vqa / f"{split}_questions.json", {"data_subtype": split, "questions": questions})
    if annotations is not None:
        _write(vqa / f"{split}_annotations.json", {"annotations": annotations})
    return vqa


def _annotation(qid, image_id, answers, qtype="what color is the", atype="other"):
    return {"question_id": qid, "image_id": image_id, "question_type": qtype,
            "answer_type": atype, "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(answers)]}


def test_vqa_joined(tmp_path):
    _vqa_files(tmp_path, annotations=[
        _annotation(60, 6, ["2"] * 9 + ["two"], "how many", "number"),
        _annotation(50, 5, ["red"] * 10),
    ])
    questions = {q.question_id: q for q in load_vqa_split(tmp_path, "test")}
    q = questions[60]
    assert (q.image_id, q.question) == (6, "How many squares are there?")
    assert q.answers == ("2",) * 9 + ("two",)
    assert (q.question_type, q.answer_type, q.multiple_choice_answer) == ("how many", "number", "2")
    assert q.annotated


def test_vqa_without_annotations(tmp_path):
    vqa = _vqa_files(tmp_path, split="test-dev")
    questions = load_vqa(vqa / "test-dev_questions.json")
    assert [q.question_id for q in questions] == [50, 60]
    assert not questions[0].annotated and questions[0].answers == ()
    assert len(load_vqa_split(tmp_path, "test-dev")) == 2


def test_vqa_split_missing_names_available(tmp_path):
    _vqa_files(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="splits with questions: val"):
        load_vqa_split(tmp_path, "test")


@pytest.mark.parametrize(("annotations", "message"), [
    ([_annotation(50, 5, ["red"])],
     r"test_annotations.json: no annotation for 1 question\(s\) of test_questions.json, "
     r"e.g. question_id \[60\]"),
    ([_annotation(50, 5, ["red"]), _annotation(60, 6, ["2"]), _annotation(70, 7, ["3"])],
     r"test_annotations.json: 1 annotation\(s\) for question_id\(s\) absent from "
     r"test_questions.json, e.g. \[70\]"),
    ([_annotation(50, 5, ["red"]), _annotation(60, 9, ["2"])],
     r"annotations\[1\] \(question_id 60\) has image_id 9 but test_questions.json says 6"),
    ([_annotation(50, 5, ["red"]), {"question_id": 60, "image_id": 6}],
     r"test_annotations.json: annotations\[1\] has no 'answers'"),
    ([_annotation(50, 5, ["red"]), _annotation(50, 5, ["blue"])],
     r"annotations\[1\] repeats question_id 50"),
])
def test_vqa_mismatch(tmp_path, annotations, message):
    _vqa_files(tmp_path, annotations=annotations)
    with pytest.raises(DatasetFormatError, match=message):
        load_vqa_split(tmp_path, "test")


def test_vqa_malformed_questions(tmp_path):
    _vqa_files(tmp_path, questions=[{"image_id": 5, "question_id": 50}])
    with pytest.raises(DatasetFormatError,
                       match=r"test_questions.json: questions\[0\] has no 'question'"):
        load_vqa_split(tmp_path, "test")


def _text_c10(root, classes):
    for folder, images in classes.items():
        d = root / "text_c10" / folder
        d.mkdir(parents=True)
        for name, lines in images.items():
            (d / f"{name}.txt").write_text("\n".join(lines) + "\n")


CUB = {
    "001.Black_footed_Albatross": {
        "Black_Footed_Albatross_0001_796111": ["a large bird with a long beak.",
                                               "this bird is black.", ""],
        "Black_Footed_Albatross_0002_55": ["a dark bird."],
    },
    "002.Laysan_Albatross": {"Laysan_Albatross_0001_545": ["a white bird with grey wings."]},
    "003.Sooty_Albatross": {"Sooty_Albatross_0001_1071": ["a sooty brown bird."]},
}


def test_text_c10_cub(tmp_path):
    _text_c10(tmp_path, CUB)
    (tmp_path / "trainvalclasses.txt").write_text(
        "001.Black_footed_Albatross\n002.Laysan_Albatross\n")
    (tmp_path / "testclasses.txt").write_text("003.Sooty_Albatross\n")
    images = load_text_c10(tmp_path)
    assert len(images) == 4
    first = images[0]
    assert first.image_id == "001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111"
    assert (first.class_id, first.class_name) == (1, "Black_footed_Albatross")
    assert first.image_path == ("images/001.Black_footed_Albatross/"
                                "Black_Footed_Albatross_0001_796111.jpg")
    assert first.captions == ("a large bird with a long beak.", "this bird is black.")
    assert [im.split for im in images] == ["trainval", "trainval", "trainval", "test"]
    test = load_text_c10(tmp_path, split="test")
    assert [(im.class_id, im.class_name) for im in test] == [(3, "Sooty_Albatross")]


def test_text_c10_flowers_without_split_files(tmp_path):
    _text_c10(tmp_path, {"class_00001": {"image_06734": ["pink petals."]},
                         "class_00102": {"image_08001": ["a yellow flower."]}})
    images = load_text_c10(tmp_path)
    assert [(im.class_id, im.class_name, im.split) for im in images] == [
        (1, "class_00001", None), (102, "class_00102", None)]
    with pytest.raises(DatasetFormatError, match="no trainvalclasses.txt to select split"):
        load_text_c10(tmp_path, split="trainval")
    with pytest.raises(ValueError, match="unknown split 'train'"):
        load_text_c10(tmp_path, split="train")


def test_parse_class_folder():
    assert parse_class_folder("200.Common_Yellowthroat") == (200, "Common_Yellowthroat")
    assert parse_class_folder("class_00042") == (42, "class_00042")
    with pytest.raises(ValueError, match="neither"):
        parse_class_folder("albatross")


@pytest.mark.parametrize(("setup", "message"), [
    (lambda root: (root / "text_c10/002.Laysan_Albatross/Laysan_Albatross_0001_545.txt")
     .write_text("\n  \n"),
     "text_c10/002.Laysan_Albatross/Laysan_Albatross_0001_545.txt: empty caption file"),
    (lambda root: (root / "text_c10/albatrosses").mkdir(),
     "text_c10/albatrosses: class folder 'albatrosses' is neither"),
    (lambda root: (root / "testclasses.txt").write_text("004.Groove_billed_Ani\n"),
     r"testclasses.txt: lists 1 class\(es\) with no text_c10/ folder"),
    (lambda root: ((root / "trainvalclasses.txt").write_text("003.Sooty_Albatross\n"),
                   (root / "testclasses.txt").write_text("003.Sooty_Albatross\n")),
     "testclasses.txt: class '003.Sooty_Albatross' is also in trainvalclasses.txt"),
    (lambda root: (root / "text_c10/003.Sooty_Albatross/Sooty_Albatross_0001_1071.txt")
     .write_bytes(b"\xff\xfe bird"),
     "text_c10/003.Sooty_Albatross/Sooty_Albatross_0001_1071.txt: not UTF-8 text"),
])
def test_text_c10_malformed(tmp_path, setup, message):
    _text_c10(tmp_path, CUB)
    setup(tmp_path)
    with pytest.raises(DatasetFormatError, match=message):
        load_text_c10(tmp_path)
