"""Alignment training, its measures, export and bundle evaluation on a tiny shapes world."""

import json

import numpy as np
import pytest
import torch

from models.regions import RegionConfig, RegionNet
from training.checkpoint import save_checkpoint
from training.cli import main as glimpse
from training.data.readers import CaptionImage
from training.data.shapes import generate_shapes_world
from training.data.world import Scene, ShapeObject
from training.metrics.alignment import ValidationSet, evaluate_vectors, phrase_heads
from training.tasks.alignment import AlignmentTask, AlignmentTaskConfig, encode_sentences
from training.tasks.regions import write_split_features

SCENE = Scene([ShapeObject("circle", "red", "small", x=0.2, y=0.5, radius=0.08),
               ShapeObject("square", "blue", "large", x=0.7, y=0.5, radius=0.16),
               ShapeObject("circle", "green", "small", x=0.5, y=0.2, radius=0.08)])
BOXES = np.array([[0.1, 0.4, 0.3, 0.6], [0.55, 0.35, 0.85, 0.65], [0.4, 0.1, 0.6, 0.3]])


def test_phrase_heads_find_each_noun_phrase_and_its_referents():
    text = "There is a red circle left of a big blue square, and two circles"
    tokens = text.lower().replace(",", "").split()
    heads = phrase_heads(tokens, text, SCENE)
    assert heads == [(4, [0]), (10, [1]), (13, [0, 2])]
    assert phrase_heads(["a", "circle", "circle"], "a circle circle", SCENE) == []


def one_image_set(text: str) -> ValidationSet:
    tokens = text.split()
    whole = np.array([[0.0, 0.0, 1.0, 1.0]])
    return ValidationSet(
        images=[CaptionImage(0, "x.png", "test", (text,), (tuple(tokens),), (0,))],
        region_features=np.zeros((1, 3, 1), np.float32),
        boxes=np.concatenate([BOXES[:2], whole])[None], scores=np.ones((1, 3), np.float32),
        num_regions=np.array([3]), token_lists=[tokens], caption_texts=[text],
        img_of_caption=np.array([0]), scenes=[SCENE], object_boxes=[BOXES])


def test_alignment_accuracy_and_segments_at_each_beta():
    data = one_image_set("a red circle left of a blue square")
    regions = np.eye(3, dtype=np.float32)[None]  # region i = e_i
    words = np.tile(np.eye(3, dtype=np.float32)[2], (1, 8, 1))  # every word likes the image
    words[0, 2] = [3.0, 0.0, 0.0]  # "circle" -> the red circle's region
    words[0, 7] = [0.0, 3.0, 0.0]  # "square" -> the square's region
    out = evaluate_vectors(data, regions, np.ones((1, 3), bool), words, np.array([8]),
                           betas=(0.0, 100.0))
    assert out["noun_phrases"] == 2 and out["proposal_bound"] == 1.0
    word_level = out["alignment"]["beta0"]
    assert word_level["accuracy"] == 1.0
    assert word_level["segments_per_sentence"] == 4  # a red | circle | left of a blue | square
    assert word_level["words_per_segment"] == pytest.approx(8 / 4)
    whole = out["alignment"]["beta100"]
    assert whole["segments_per_sentence"] == 1 and whole["accuracy"] == 0.0  # the image region
    assert out["retrieval"]["i2t_r1"] == 100.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny world, a random RegionNet run and the region features it computes."""
    root = tmp_path_factory.mktemp("alignment")
    data = root / "world"
    generate_shapes_world(data, {"train": 32, "val": 8, "test": 8, "novel": 0}, size=64,
                          seed=3, workers=1, progress=False)
    torch.manual_seed(0)
    net = RegionNet(RegionConfig(encoder={"out_dim": 8, "channels": [8, 8, 8]},
                                 feature_dim=12, max_proposals=3)).eval()
    regions_run = root / "regions"
    save_checkpoint(regions_run / "checkpoints" / "best", model=net,
                    config={"model": {"task": "regions", "regions": net.config.to_dict(),
                                      "image_size": 64}})
    for split in ("train", "val", "test"):
        write_split_features(net, data, split, image_size=64, progress=False)
    return data, regions_run


def test_batches_pair_each_caption_with_its_image_features(world):
    data, regions_run = world
    task = AlignmentTask(AlignmentTaskConfig(data=str(data), regions_run=str(regions_run),
                                             val_images=8, model={"joint_dim": 8}))
    assert task.num_examples() == 32 * 5 and task.features.shape == (32, 4, 12)
    features, mask, tokens, lengths, same = task.batch(torch.tensor([0, 1, 5]),
                                                       torch.device("cpu"))
    assert torch.equal(features[0], features[1]) and torch.equal(same[0, 1], torch.tensor(True))
    assert not same[0, 2]
    # Regions the detector scores below min_region_score (0.2) are masked; the whole image
    # (score 1, the last row) never is.
    scores = torch.from_numpy(task.train_features.scores[[0, 0, 1]])
    assert torch.equal(mask, scores >= 0.2) and mask[:, -1].all()
    expected, expected_lengths = encode_sentences(task.vocab, [load_tokens(data, 0, 0),
                                                               load_tokens(data, 1, 0)], 24)
    assert tokens.shape[1] == int(lengths.max())
    assert torch.equal(tokens[0], expected[0, :tokens.shape[1]])
    assert torch.equal(tokens[2], expected[1, :tokens.shape[1]])
    assert lengths[[0, 2]].tolist() == expected_lengths.tolist()


def load_tokens(data, image: int, sentence: int) -> list[str]:
    captions = json.loads((data / "captions.json").read_text())["images"]
    train = [im for im in captions if im["split"] == "train"]
    return train[image]["sentences"][sentence]["tokens"]


def test_train_export_and_evaluate_the_bundle(world, tmp_path):
    data, regions_run = world
    config = tmp_path / "align.json"
    config.write_text(json.dumps({"val_images": 8, "beta": 0.5,
                                  "model": {"embed_dim": 8, "hidden_dim": 8, "joint_dim": 8},
                                  "trainer": {"warmup_steps": 2, "progress": False}}))
    run = tmp_path / "run"
    assert glimpse(["train", "alignment", "--data", str(data), "--regions-run",
                    str(regions_run), "--out", str(run), "--config", str(config),
                    "--epochs", "2", "--batch-size", "32"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2
    assert 0 <= history[-1]["alignment_accuracy"] <= history[-1]["proposal_bound"] <= 1
    assert history[-1]["alignment_accuracy"] == history[-1]["accuracy_beta0.5"]  # the default
    assert 0 <= history[-1]["i2t_r1"] <= history[-1]["i2t_r10"] <= 100
    repo = tmp_path / "repo"
    assert glimpse(["export", str(run), "--repository", str(repo), "--name", "align-x"]) == 0
    bundle = repo / "align-x" / "1"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "alignment" and manifest["inference"]["beta"] == 0.5
    assert glimpse(["eval", "alignment", str(bundle), "--data", str(data), "--split", "val",
                    "--betas", "0", "0.5", "--write-manifest"]) == 0
    metrics = json.loads((bundle / "manifest.json").read_text())["metrics"]["val"]
    assert metrics["n_images"] == 8 and metrics["n_captions"] == 40
    # The bundle, run through the service's pipeline, measures what training measured.
    last = history[-1]
    assert metrics["alignment"]["beta0"]["accuracy"] == pytest.approx(
        last["accuracy_beta0"], abs=0.02)
    assert metrics["proposal_bound"] == pytest.approx(last["proposal_bound"], abs=0.02)
    assert metrics["rsum"] == pytest.approx(last["rsum"], abs=3.0)
    assert metrics["alignment"]["beta0.5"]["words_per_segment"] >= \
        metrics["alignment"]["beta0"]["words_per_segment"]
