import json

import pytest

from training.data.readers import (
    ActivityVideo,
    DatasetFormatError,
    VideoCaptions,
    load_activity_split,
    load_captions,
    load_class_index,
    load_karpathy,
    load_msrvtt,
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


def test_vqa_reads_the_objects_a_question_names(tmp_path):
    named = {**_annotation(50, 5, ["red"] * 10), "objects": [2, 0]}
    _vqa_files(tmp_path, annotations=[named, _annotation(60, 6, ["2"] * 10)])
    questions = {q.question_id: q for q in load_vqa_split(tmp_path, "test")}
    assert questions[50].objects == (2, 0)
    assert questions[60].objects == ()  # VQA v2's own annotations have no such field


@pytest.mark.parametrize("objects", [3, [1, -1], ["0"], [True]])
def test_vqa_refuses_objects_that_are_not_indices(tmp_path, objects):
    bad = {**_annotation(50, 5, ["red"] * 10), "objects": objects}
    _vqa_files(tmp_path, annotations=[bad, _annotation(60, 6, ["2"] * 10)])
    with pytest.raises(DatasetFormatError,
                       match=r"annotations\[0\]\.objects must be a list of object indices"):
        load_vqa_split(tmp_path, "test")


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


# ---------------------------------------------------------------- UCF-101 splits

UCF_CLASSES = "1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n3 Archery\r\n"


@pytest.fixture
def ucf_splits(tmp_path):
    """UCF-101's own layout: CRLF lines, labels in the train list only."""
    (tmp_path / "classInd.txt").write_bytes(UCF_CLASSES.encode())
    (tmp_path / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        b"Archery/v_Archery_g08_c02.avi 3\r\n")
    (tmp_path / "testlist01.txt").write_bytes(
        b"ApplyLipstick/v_ApplyLipstick_g01_c01.avi\r\nArchery/v_Archery_g01_c01.avi\r\n\r\n")
    return tmp_path


def test_ucf101_lists(ucf_splits):
    assert load_class_index(ucf_splits / "classInd.txt") == (
        "ApplyEyeMakeup", "ApplyLipstick", "Archery")
    train = load_activity_split(ucf_splits, "train")
    assert train == [
        ActivityVideo("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, "ApplyEyeMakeup"),
        ActivityVideo("Archery/v_Archery_g08_c02.avi", 2, "Archery")]
    test = load_activity_split(ucf_splits, "test")  # the folder names the class
    assert [(v.label, v.class_name) for v in test] == [(1, "ApplyLipstick"), (2, "Archery")]
    with pytest.raises(FileNotFoundError, match="lists there: testlist01.txt, trainlist01.txt"):
        load_activity_split(ucf_splits, "train", fold=2)


@pytest.mark.parametrize("classes, message", [
    ("1 Archery\n3 Biking\n", "classInd.txt: line 2 has index 3, expected 2"),
    ("1 Archery\n2 Archery\n", "classInd.txt: line 2 repeats class 'Archery'"),
    ("1 Archery Bow\n", "classInd.txt: line 1 is '1 Archery Bow', expected '<index> <class name>'"),
    ("Archery 1\n", "line 1 is 'Archery 1'"),
    ("\n\n", "classInd.txt: no classes"),
])
def test_ucf101_class_index_malformed(tmp_path, classes, message):
    (tmp_path / "classInd.txt").write_text(classes)
    with pytest.raises(DatasetFormatError) as excinfo:
        load_class_index(tmp_path / "classInd.txt")
    assert message in str(excinfo.value)


@pytest.mark.parametrize("lines, message", [
    ("Archery/a.avi 4\n", "trainlist01.txt: line 1 has label '4', expected 1 to 3"),
    ("Archery/a.avi one\n", "line 1 has label 'one'"),
    ("Archery/a.avi 1\n", "line 1: Archery/a.avi is in folder 'Archery' but its label 1 is "
                          "'ApplyEyeMakeup'"),
    ("Archery/a.avi 3\nBiking/b.avi\n", "line 2: Biking/b.avi has no label and its folder "
                                        "'Biking' is not a class"),
    ("a.avi\n", "line 1: a.avi has no label"),
    ("Archery/a.avi 3\n\nArchery/a.avi 3\n", "trainlist01.txt: line 3 repeats Archery/a.avi"),
    ("Archery/a.avi 3 extra\n", "line 1 is 'Archery/a.avi 3 extra', expected '<path> [<label>]'"),
])
def test_ucf101_list_malformed(tmp_path, lines, message):
    (tmp_path / "classInd.txt").write_text(UCF_CLASSES)
    (tmp_path / "trainlist01.txt").write_text(lines)
    with pytest.raises(DatasetFormatError) as excinfo:
        load_activity_split(tmp_path, "train")
    assert message in str(excinfo.value)


# ---------------------------------------------------------------- MSR-VTT

def _msrvtt(videos=None, sentences=None) -> dict:
    videos = videos if videos is not None else [
        {"category": 9, "url": "https://www.youtube.com/watch?v=9lZi22qLlEo", "video_id": "video0",
         "start time": 137.72, "end time": 149.44, "split": "train", "id": 0},
        {"category": 16, "url": "https://www.youtube.com/watch?v=w4JM08PDEng", "video_id": "video1",
         "start time": 184.33, "end time": 206.89, "split": "validate", "id": 1}]
    sentences = sentences if sentences is not None else [
        {"caption": "a car is shown", "video_id": "video1", "sen_id": 0},
        {"caption": "a man drives a car", "video_id": "video0", "sen_id": 1},
        {"caption": "a car drives down the road", "video_id": "video0", "sen_id": 2}]
    return {"info": {"contributor": "Microsoft MSM group", "version": "1.0"},
            "videos": videos, "sentences": sentences}


def test_msrvtt(tmp_path):
    path = _write(tmp_path / "train_val_videodatainfo.json", _msrvtt())
    first, second = load_msrvtt(path)
    assert first == VideoCaptions(
        video_id="video0", id=0, split="train", category=9,
        url="https://www.youtube.com/watch?v=9lZi22qLlEo", start=137.72, end=149.44,
        captions=("a man drives a car", "a car drives down the road"), sen_ids=(1, 2))
    assert (second.split, second.captions) == ("val", ("a car is shown",))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("sentences"), "videodatainfo.json: the file has no 'sentences'"),
    (lambda d: d["videos"][1].pop("video_id"), "videos[1] has no 'video_id'"),
    (lambda d: d["videos"][1].update(split="dev"), "videos[1] has unknown split 'dev'"),
    (lambda d: d["videos"][0].update(id="0"), "videos[0].id is a string, expected an integer"),
    (lambda d: d["videos"][0].update({"end time": None}), "videos[0].end time is null"),
    (lambda d: d["videos"][1].update(video_id="video0"), "videos[1] repeats video_id 'video0'"),
    (lambda d: d["sentences"][2].update(video_id="video7"),
     "sentences[2] is for video_id 'video7', which the file's videos do not list"),
    (lambda d: d["sentences"][2].update(sen_id=1), "sentences[2] repeats sen_id 1"),
    (lambda d: d["sentences"][1].update(caption=["a", "car"]),
     "sentences[1].caption is a list, expected a string"),
    (lambda d: d["sentences"].pop(0), "1 video(s) have no sentence, e.g. ['video1']"),
])
def test_msrvtt_malformed(tmp_path, change, message):
    data = _msrvtt()
    change(data)
    path = _write(tmp_path / "videodatainfo.json", data)
    with pytest.raises(DatasetFormatError) as excinfo:
        load_msrvtt(path)
    assert message in str(excinfo.value)


def test_msrvtt_bad_json(tmp_path):
    (tmp_path / "videodatainfo.json").write_text('{"videos": [')
    with pytest.raises(DatasetFormatError, match="videodatainfo.json: not valid JSON"):
        load_msrvtt(tmp_path / "videodatainfo.json")
