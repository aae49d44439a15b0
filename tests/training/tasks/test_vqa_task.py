"""VQA training on precomputed region features, export with the detector inside, evaluation."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.regions import RegionConfig, RegionNet
from service.pipelines.vqa import VqaModel
from training.checkpoint import save_checkpoint
from training.cli import main as glimpse
from training.data.readers import VQAQuestion, load_captions, load_vqa_split
from training.data.shapes import generate_shapes_world
from training.data.world import Scene, ShapeObject
from training.evaluate.vqa import evaluate_vqa_bundle
from training.export.vqa import VqaGraph, load_vqa_run
from training.tasks.vqa import (
    SplitRegions,
    answer_vocabulary,
    encode_questions,
    glimpse_targets,
    soft_scores,
)


def question(*answers: str) -> VQAQuestion:
    return VQAQuestion(question_id=0, image_id=0, question="q", answers=answers)


def test_answer_vocabulary_counts_normalised_answers():
    questions = [question("Two", "2", "two.", "yes"), question("Yes", "a circle", "circle"),
                 question("no", "circle.")]
    assert answer_vocabulary(questions, min_count=2) == ["2", "circle", "yes"]
    assert answer_vocabulary(questions, min_count=1) == ["2", "circle", "yes", "no"]


def test_soft_scores_are_min_of_count_over_three_and_one():
    questions = [question("red", "Red", "red.", "red", "blue", "green"),
                 question("blue", "purple", "purple")]
    scores = soft_scores(questions, ["red", "blue", "green"])
    torch.testing.assert_close(scores, torch.tensor([[1.0, 1 / 3, 1 / 3], [0.0, 1 / 3, 0.0]]))


def test_questions_are_right_padded_with_their_lengths():
    from training.data.tokenizer import WordVocab

    vocab = WordVocab(["what", "color", "is", "the", "circle"])
    ids, lengths = encode_questions(vocab, ["What color is the circle?", "the zebra",
                                            "circle " * 9], max_length=6)
    assert lengths.tolist() == [5, 2, 6]
    assert ids.tolist() == [[4, 5, 6, 7, 8, 0], [7, 3, 0, 0, 0, 0], [8] * 6]


@pytest.fixture(scope="module")
def world_with_regions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small shapes world, a random tiny region detector run, and its features."""
    root = tmp_path_factory.mktemp("vqa")
    world = root / "world"
    generate_shapes_world(world, {"train": 40, "val": 10, "test": 6}, size=64, seed=3,
                          workers=1, progress=False)
    torch.manual_seed(0)
    config = RegionConfig(max_proposals=3, feature_dim=16, head_channels=8,
                          encoder={"out_dim": 16, "channels": (8, 16, 16)})
    regions = root / "regions"
    save_checkpoint(regions / "checkpoints" / "best", model=RegionNet(config),
                    config={"model": {"task": "regions", "regions": config.to_dict(),
                                      "image_size": 64}})
    assert glimpse(["features", "regions", "--run", str(regions), "--data", str(world),
                    "--splits", "train", "val", "test"]) == 0
    return world, regions


def tiny_config(path: Path, **model) -> Path:
    """A VQA training config of a tiny model with `model` settings on top, written to path."""
    path.write_text(json.dumps({
        "min_answer_count": 3,
        "model": {"embed_dim": 8, "question_dim": 16, "attention_dim": 16, "joint_dim": 16,
                  **model},
        "trainer": {"batch_size": 32, "warmup_steps": 2, "progress": False}}))
    return path


def test_train_export_and_evaluate_through_the_bundle(world_with_regions, tmp_path):
    world, regions = world_with_regions
    # The relation-network, glimpse-geometry and counting branches on, so that their export
    # is checked for parity too.
    config = tiny_config(tmp_path / "vqa.json", relations=True, relation_feature_dim=4,
                         relation_dim=8, glimpse_geometry=True, counting=True)
    run = tmp_path / "run"
    assert glimpse(["train", "vqa", "--data", str(world), "--out", str(run),
                    "--config", str(config), "--epochs", "2", "--lr", "3e-3"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0.0 <= h["vqa_accuracy"] <= 100.0 for h in history)
    assert "vqa_accuracy/count" in history[-1]
    task = json.loads((run / "task.json").read_text())
    assert load_vqa_run(run / "checkpoints" / "best")[0].relations is not None
    assert task["regions_run"] == str(regions)  # found in the features' meta.json

    assert glimpse(["export", str(run), "--repository", str(tmp_path / "repo"),
                    "--name", "vqa-test"]) == 0
    bundle = tmp_path / "repo" / "vqa-test" / "1"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "vqa"
    assert manifest["architecture"] == "updown-g2-rn-geo-count"
    assert manifest["graphs"]["vqa"]["inputs"][1]["shape"] == ["batch", "words"]
    assert max(manifest["training"]["parity_max_abs_diff"].values()) < 1e-4
    assert manifest["inference"] == {"answers": "answers", "max_question_length": 20}

    # The bundle answers as the PyTorch model does on the same image and question.
    served = VqaModel.from_bundle(bundle)
    model, vocab, answers, _ = load_vqa_run(run / "checkpoints" / "best")
    assert served.answers == answers
    from training.runs import load_region_net

    graph = VqaGraph(load_region_net(regions), model).eval()
    q = next(q for q in load_vqa_split(world, "test")
             if not served.words.encode(q.question).unknown)
    image = world / next(im.path for im in load_captions(world, "test")
                         if im.imgid == q.image_id)
    result = served.answer(image, q.question, top_k=5, return_attention=True)
    ids = torch.tensor([vocab.encode(q.question)])
    with torch.no_grad():
        scores, attention, boxes = graph(torch.from_numpy(served.as_array(image))[None], ids,
                                         torch.tensor([ids.shape[1]]))
    best = scores[0].argsort(descending=True)[:5]
    assert [a.answer for a in result.answers] == [answers[i] for i in best]
    np.testing.assert_allclose([a.score for a in result.answers], scores[0, best].numpy(),
                               atol=1e-5)
    np.testing.assert_allclose([r.weight for r in result.attention], attention[0].numpy(),
                               atol=1e-5)
    assert len(result.attention) == 4 and result.attention[-1].box == (0.0, 0.0, 1.0, 1.0)

    metrics = evaluate_vqa_bundle(bundle, world, split="test", progress=False)
    assert metrics["n_questions"] == len(load_vqa_split(world, "test"))
    assert 0.0 <= metrics["overall"] <= 100.0 and metrics["refused"] >= 0
    assert glimpse(["eval", "vqa-bundle", str(bundle), "--data", str(world), "--splits", "test",
                    "--write-manifest"]) == 0
    assert VqaModel.from_bundle(bundle).bundle.manifest.metrics["test"]["overall"] == (
        metrics["overall"])



def test_glimpse_targets_are_the_proposals_nearest_the_named_objects():
    def thing(x: float, y: float) -> ShapeObject:
        return ShapeObject("circle", "red", "small", x=x, y=y, radius=0.1)

    scenes = {7: Scene([thing(0.2, 0.2), thing(0.8, 0.7)]), 9: Scene([thing(0.5, 0.5)])}
    # Image 7: proposals around (0.8, 0.7), (0.25, 0.2), then the whole image (the last real
    # row) and a padding row; image 9: one proposal and the whole image.
    boxes = torch.tensor([
        [[0.7, 0.6, 0.9, 0.8], [0.1, 0.1, 0.4, 0.3], [0, 0, 1, 1], [0, 0, 0, 0]],
        [[0.4, 0.4, 0.6, 0.6], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]])
    regions = SplitRegions(features=torch.zeros(2, 4, 3), boxes=boxes, scores=torch.ones(2, 4),
                           mask=torch.tensor([[True, True, True, False],
                                              [True, True, False, False]]))
    questions = [VQAQuestion(1, 7, "where is the a relative to the b?", objects=(0, 1)),
                 VQAQuestion(2, 7, "what color is the b?", objects=(1,)),
                 VQAQuestion(3, 9, "how many circles are there?"),
                 VQAQuestion(4, 9, "what shape is the red object?", objects=(0,))]
    rows = torch.tensor([0, 0, 1, 1])
    targets = glimpse_targets(questions, regions, rows, scenes, glimpses=3)
    assert targets.tolist() == [[1, 0, 0], [0, 0, 0], [-1, -1, -1], [0, 0, 0]]


def test_attention_supervision_trains_on_the_worlds_named_objects(world_with_regions, tmp_path):
    world, _ = world_with_regions
    config = tiny_config(tmp_path / "vqa.json", attention_supervision=1.0)
    run = tmp_path / "run"
    assert glimpse(["train", "vqa", "--data", str(world), "--out", str(run),
                    "--config", str(config), "--epochs", "1"]) == 0
    assert load_vqa_run(run / "checkpoints" / "best")[0].config.attention_supervision == 1.0


def test_attention_supervision_needs_named_objects(world_with_regions, tmp_path):
    world, _ = world_with_regions
    plain = tmp_path / "world"
    shutil.copytree(world, plain)
    for path in (plain / "vqa").glob("*_annotations.json"):
        data = json.loads(path.read_text())
        for a in data["annotations"]:
            del a["objects"]
        path.write_text(json.dumps(data))
    config = tmp_path / "vqa.json"
    config.write_text(json.dumps({"min_answer_count": 3,
                                  "model": {"attention_supervision": 1.0}}))
    with pytest.raises(ValueError, match="attention_supervision needs annotations that name"):
        glimpse(["train", "vqa", "--data", str(plain), "--out", str(tmp_path / "run"),
                 "--config", str(config), "--epochs", "1"])
