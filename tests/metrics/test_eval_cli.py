import argparse
import json

import pytest

from training import cli
from training.metrics import captions as caption_module
from training.metrics.cli import (
    eval_captions,
    eval_vqa,
    evaluate_caption_results,
    evaluate_vqa_results,
)

CAPTIONS = {
    # imgid: (split, references)
    0: ("train", ["a small green star above a red circle"]),
    1: ("test", ["a large red circle to the left of a small blue square",
                 "there is a red circle left of a blue square"]),
    2: ("test", ["two yellow squares and a white star", "a white star and two yellow squares"]),
    3: ("test", ["a big cyan hexagon below a purple cross", "a cyan hexagon under a cross"]),
}


def _write_captions(root):
    images = []
    for imgid, (split, refs) in CAPTIONS.items():
        sentids = [imgid * 10 + k for k in range(len(refs))]
        images.append({
            "filepath": f"images/{split}", "filename": f"{split}_{imgid:06d}.png",
            "imgid": imgid, "cocoid": imgid, "split": split, "sentids": sentids,
            "sentences": [{"raw": r, "tokens": r.split(), "imgid": imgid, "sentid": s}
                          for r, s in zip(refs, sentids, strict=True)],
        })
    (root / "captions.json").write_text(json.dumps({"dataset": "shapes", "images": images}))


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "world"
    root.mkdir()
    _write_captions(root)
    return root


def _results_file(tmp_path, results, name="results.json"):
    path = tmp_path / name
    path.write_text(json.dumps(results))
    return str(path)


PERFECT = [{"image_id": i, "caption": CAPTIONS[i][1][0]} for i in (1, 2, 3)]


def test_evaluate_caption_results_perfect(dataset):
    scores = evaluate_caption_results(PERFECT, dataset, "test", meteor=False)
    assert scores["bleu_4"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert scores["cider_d"] > 5.0
    assert scores["meteor"] is None
    assert (scores["n_images"], scores["n_split_images"]) == (3, 3)
    assert "semantic_exactness" not in scores  # no scenes.json in this dataset


def _thing(shape, colour, size, x, y):
    return {"shape": shape, "colour": colour, "size": size, "x": x, "y": y, "radius": 0.1,
            "rotation": 0.0}


def test_semantic_scores_come_overall_and_by_object_count(dataset):
    scenes = [
        {"imgid": 1, "objects": [_thing("circle", "red", "large", 0.2, 0.5),
                                 _thing("square", "blue", "small", 0.7, 0.5)]},
        {"imgid": 2, "objects": [_thing("square", "yellow", "small", 0.2, 0.2),
                                 _thing("square", "yellow", "small", 0.5, 0.8),
                                 _thing("star", "white", "small", 0.8, 0.2)]},
        {"imgid": 3, "objects": [_thing("hexagon", "cyan", "large", 0.5, 0.8),
                                 _thing("cross", "purple", "small", 0.5, 0.2)]},
    ]
    (dataset / "scenes.json").write_text(json.dumps({"image_size": 64, "images": scenes}))
    results = {1: "a large red circle to the left of a small blue square",
               2: "a white star", 3: "a green hexagon"}
    scores = evaluate_caption_results(results, dataset, "test", meteor=False)
    assert scores["by_objects"] == {
        "2": {"semantic_exactness": 0.5, "coverage": 0.5, "n": 2},  # image 3's is false
        "3": {"semantic_exactness": 1.0, "coverage": pytest.approx(1 / 3), "n": 1}}
    assert scores["semantic_exactness"] == pytest.approx(2 / 3)


def test_evaluate_caption_results_subset_and_mapping(dataset):
    scores = evaluate_caption_results({2: "two yellow squares and a white star"}, dataset,
                                      meteor=False)
    assert (scores["n_images"], scores["n_split_images"]) == (1, 3)
    assert scores["bleu_1"] == pytest.approx(1.0)


def test_cli_eval_captions_prints_json(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(caption_module.shutil, "which", lambda name: None)  # no Java: no METEOR
    path = _results_file(tmp_path, PERFECT)
    rc = cli.main(["eval", "captions", path, "--dataset", str(dataset), "--split", "test"])
    out = capsys.readouterr().out
    assert rc == 0
    scores = json.loads(out)
    assert list(scores) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "meteor_note",
                            "rouge_l", "cider_d", "n_images", "n_split_images"]
    assert scores["bleu_4"] == pytest.approx(1.0)
    assert scores["meteor"] is None and "java" in scores["meteor_note"]


def _run(command, results_path, dataset, split="test"):
    run = {"eval captions": eval_captions, "eval vqa": eval_vqa}[command]
    return run(argparse.Namespace(_command=command, results=results_path, dataset=str(dataset),
                                  split=split, meteor=False))


@pytest.mark.parametrize(("results", "message"), [
    ([], "results are empty"),
    ([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}],
     "results[1] repeats image_id 1 (one result per id)"),
    ([{"image_id": 0, "caption": "a star"}, {"image_id": 42, "caption": "a"}],
     "2 image_id(s) not in split 'test': 0 (in split 'train'), 42"),
    ([{"image_id": 1}], "results[0] has no 'caption'"),
    ([{"image_id": "1", "caption": "a"}], "results[0].image_id must be int, got str"),
    ([{"image_id": 1, "caption": "a"}, "a white star"], "results[1] is not an object"),
])
def test_cli_eval_captions_errors(dataset, tmp_path, capsys, results, message):
    rc = _run("eval captions", _results_file(tmp_path, results), dataset)
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    assert captured.err == f"glimpse eval captions: error: {message}\n"


def test_cli_eval_captions_unreadable_results(dataset, tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text("[{")
    assert _run("eval captions", str(path), dataset) == 2
    assert "results.json: not valid JSON" in capsys.readouterr().err
    path.write_text(json.dumps({"1": "a red circle"}))
    assert _run("eval captions", str(path), dataset) == 2
    assert capsys.readouterr().err.endswith(
        'results.json: expected a JSON list of {"image_id", "caption"} objects\n')
    assert _run("eval captions", str(tmp_path / "missing.json"), dataset) == 2
    assert "missing.json" in capsys.readouterr().err
    assert _run("eval captions", _results_file(tmp_path, PERFECT), dataset, split="val") == 2
    assert "has no images in split 'val'" in capsys.readouterr().err


def _object(shape, colour, size, x, y):
    radius = {"small": 0.085, "large": 0.16}[size]
    side = round(2 * radius * 64)
    return {"shape": shape, "colour": colour, "size": size, "x": x, "y": y,
            "radius": radius, "rotation": 0.0,
            "bbox": [round((x - radius) * 64), round((y - radius) * 64), side, side]}


def _write_scenes(root):
    # Image 1: a large red circle left of a small blue square. Image 2: two
    # yellow squares and a white star. Image 3: a large cyan hexagon below a
    # small purple cross. Image 0 (train) is not scored.
    scenes = {
        0: [_object("star", "green", "small", 0.5, 0.3),
            _object("circle", "red", "small", 0.5, 0.7)],
        1: [_object("circle", "red", "large", 0.3, 0.5),
            _object("square", "blue", "small", 0.75, 0.45)],
        2: [_object("square", "yellow", "small", 0.2, 0.2),
            _object("square", "yellow", "small", 0.8, 0.3),
            _object("star", "white", "small", 0.45, 0.75)],
        3: [_object("hexagon", "cyan", "large", 0.45, 0.7),
            _object("cross", "purple", "small", 0.5, 0.2)],
    }
    images = [{"imgid": i, "split": CAPTIONS[i][0], "filename": f"{i}.png", "label": 0,
               "objects": objects, "relations": []} for i, objects in scenes.items()]
    (root / "scenes.json").write_text(json.dumps({"image_size": 64, "images": images}))


def test_semantic_scores_when_scenes_exist(dataset):
    _write_scenes(dataset)
    results = {
        1: "a large red circle to the left of a small blue square",  # exact, covers 2 of 2
        2: "a white star",  # exact, covers 1 of 3
        3: "a cyan hexagon above a purple cross",  # wrong relation, covers 2 of 2
    }
    scores = evaluate_caption_results(results, dataset, "test", meteor=False)
    assert scores["semantic_exactness"] == pytest.approx(2 / 3)
    assert scores["coverage"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    assert scores["n_images"] == 3


def _write_vqa(root):
    vqa = root / "vqa"
    vqa.mkdir()
    questions = [
        {"image_id": 1, "question": "What color is the circle?", "question_id": 10},
        {"image_id": 2, "question": "How many squares are there?", "question_id": 20},
        {"image_id": 3, "question": "Is there a cross?", "question_id": 30},
    ]
    answers = {10: (["red"] * 10, "what color is the", "other"),
               20: (["2"] * 8 + ["two", "Two."], "how many", "number"),
               30: (["yes"] * 10, "is there a", "yes/no")}
    annotations = [
        {"question_id": qid, "image_id": qid // 10, "question_type": qtype, "answer_type": atype,
         "multiple_choice_answer": ans[0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                     for k, a in enumerate(ans)]}
        for qid, (ans, qtype, atype) in answers.items()
    ]
    (vqa / "test_questions.json").write_text(json.dumps({"questions": questions}))
    (vqa / "test_annotations.json").write_text(json.dumps({"annotations": annotations}))
    (vqa / "val_questions.json").write_text(json.dumps({"questions": questions}))


def test_cli_eval_vqa(dataset, tmp_path, capsys):
    _write_vqa(dataset)
    results = [{"question_id": 10, "answer": "Red"}, {"question_id": 20, "answer": "two"},
               {"question_id": 30, "answer": "no"}]
    path = _results_file(tmp_path, results)
    assert cli.main(["eval", "vqa", path, "--dataset", str(dataset)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["overall"] == pytest.approx(200 / 3)
    assert scores["per_question_type"] == {"how many": 100.0, "is there a": 0.0,
                                           "what color is the": 100.0}
    assert scores["per_answer_type"] == {"number": 100.0, "other": 100.0, "yes/no": 0.0}
    assert (scores["n_questions"], scores["n_split_questions"]) == (3, 3)


def test_cli_eval_vqa_errors(dataset, tmp_path, capsys):
    _write_vqa(dataset)
    unknown = _results_file(tmp_path, [{"question_id": 99, "answer": "red"}])
    assert _run("eval vqa", unknown, dataset) == 2
    assert capsys.readouterr().err == (
        "glimpse eval vqa: error: 1 question_id(s) not in split 'test': 99\n")
    duplicate = _results_file(tmp_path, [{"question_id": 10, "answer": "red"}] * 2)
    assert _run("eval vqa", duplicate, dataset) == 2
    assert "results[1] repeats question_id 10" in capsys.readouterr().err
    fine = _results_file(tmp_path, [{"question_id": 10, "answer": "red"}])
    assert _run("eval vqa", fine, dataset, split="val") == 2
    assert "split 'val' of" in capsys.readouterr().err
    assert _run("eval vqa", fine, dataset, split="novel") == 2
    assert "splits with questions: test, val" in capsys.readouterr().err


def test_evaluate_vqa_results_library(dataset):
    _write_vqa(dataset)
    scores = evaluate_vqa_results({20: "2"}, dataset, "test")
    assert scores["overall"] == 100.0
    # vqaEval.py's treatment: "two" / "Two" among human answers do not match "2",
    # but 8 exact "2"s still give every leave-one-out subset >= 3 matches.
    assert evaluate_vqa_results({20: "2"}, dataset, match_vqaeval=True)["overall"] == 100.0
