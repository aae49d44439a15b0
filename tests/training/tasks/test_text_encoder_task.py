import json
from pathlib import Path

import pytest
import torch

from models.attributes import AttributeConfig, AttributeTagger
from models.encoder import EncoderConfig
from training.checkpoint import save_checkpoint
from training.cli import main
from training.data.shapes import generate_shapes_world
from training.data.world import COLOURS, NUM_OBJECT_CLASSES, SHAPES, SIZES, object_class
from training.runs import embed_texts, load_joint_image_encoder, load_text_encoder
from training.tasks.text_encoder import SplitData, zero_shot_accuracy

TINY_TEXT = {"max_length": 48, "char_dim": 8, "conv_channels": [12, 16], "kernel_sizes": [3, 3],
             "rnn_size": 16, "embed_dim": 8}


def tiny_encoder_run(run_dir: Path) -> Path:
    """A `glimpse train encoder` run with a tiny random tagger."""
    torch.manual_seed(0)
    config = AttributeConfig(encoder=EncoderConfig(out_dim=8, channels=(4, 8, 8)))
    save_checkpoint(run_dir / "checkpoints" / "best", model=AttributeTagger(config),
                    config={"model": {"task": "attributes", "attributes": config.to_dict()}})
    return run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("te")
    generate_shapes_world(root / "t2i", {"train": 24, "val": 8, "test": 8, "novel": 8},
                          workers=1, progress=False, max_objects=1)
    (root / "config.json").write_text(json.dumps({"text": TINY_TEXT, "trainer": {
        "progress": False, "warmup_steps": 0}}))
    assert main(["train", "text-encoder", "--data", str(root / "t2i"), "--out",
                 str(root / "run"), "--encoder-init", str(tiny_encoder_run(root / "enc")),
                 "--config", str(root / "config.json"), "--epochs", "2", "--batch-size", "8",
                 "--device", "cpu"]) == 0
    return root / "run"


def test_object_classes_number_every_combination_once():
    ids = {object_class(s, c, z) for s in SHAPES for c in COLOURS for z in SIZES}
    assert ids == set(range(NUM_OBJECT_CLASSES)) and NUM_OBJECT_CLASSES == 112


def test_training_writes_history_and_final_test_novel_accuracy(trained):
    history = json.loads((trained / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    final = json.loads((trained / "summary.json").read_text())["final"]
    for split in ("test", "novel"):
        for key in ("image_to_class", "text_to_class"):
            assert 0.0 <= final[split][key] <= 1.0
    assert (trained / "alphabet.json").is_file()


def test_load_text_encoder_embeds_new_sentences_and_refuses_unknown_characters(trained):
    encoder, alphabet, info = load_text_encoder(trained)
    assert info == {"max_length": 48, "embed_dim": 8, "image_size": 64}
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    emb = embed_texts(encoder, alphabet, ["a big red star", "A BIG RED STAR", "one cross"], 48)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[0], emb[1])  # the alphabet lowercases
    with pytest.raises(ValueError, match="outside the alphabet"):
        embed_texts(encoder, alphabet, ["a red star \u2605"], 48)
    replaced = embed_texts(encoder, alphabet, ["a red star \u2605"], 48, on_unknown="replace")
    assert replaced.shape == (1, 8)


def test_joint_image_encoder_matches_the_trained_image_side(trained):
    image_encoder = load_joint_image_encoder(trained)
    images = torch.rand(2, 3, 64, 64)
    out = image_encoder(images)
    assert out.shape == (2, 8)
    torch.testing.assert_close(out, image_encoder.project(image_encoder.features(images)))


def test_zero_shot_accuracy_reads_the_classes_off_the_embeddings():
    class OneHot(torch.nn.Module):
        """Text: the class id in the first character; image: the class id as a feature."""

        def __init__(self) -> None:
            super().__init__()
            self.text = lambda chars: torch.nn.functional.one_hot(chars[:, 0], 4).float()
            self.image = self
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def embed_features(self, features):
            return torch.nn.functional.one_hot(features[:, 0].long(), 4).float()

    labels = torch.tensor([0, 1, 2, 3])
    right = SplitData(features=labels.float().unsqueeze(1),
                      chars=labels.view(4, 1, 1).expand(4, 2, 1).contiguous(), labels=labels)
    acc = zero_shot_accuracy(OneHot(), right)
    assert acc == {"image_to_class": 1.0, "text_to_class": 1.0, "mean_accuracy": 1.0}
    shifted = SplitData(features=((labels + 1) % 4).float().unsqueeze(1), chars=right.chars,
                        labels=labels)
    assert zero_shot_accuracy(OneHot(), shifted)["image_to_class"] == 0.0
