"""Caption training learns from the image, not only from the captions.

Metrics in a plausible range say nothing about the pairing of captions and images: a
data bug that hands each caption another image's pixels trains a fluent, image-blind
captioner whose BLEU still looks fine. Here the batches are checked against the images
read independently from disk, and a tiny captioner overfitted on a small world of single
objects must caption its training images far better than any image-blind captioner can.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.images import load_images
from training.data.language import is_exact
from training.data.readers import load_captions
from training.data.shapes import generate_shapes_world, load_scenes
from training.tasks.caption import CaptionTask, CaptionTaskConfig, decode
from training.trainer import Trainer, TrainerConfig

ROOT = Path(__file__).resolve().parents[3]
TINY = json.loads((ROOT / "configs" / "caption_tiny.json").read_text())
NUM_IMAGES = 32
EPOCHS = 40
# The overfitted captioner is exact on 0.84 of its training images, the best image-blind
# captioner (one caption for every image, the best of all references and of the model's
# own captions) on 0.25.
LEAD_OVER_BLIND = 0.3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single_objects")
    generate_shapes_world(out, {"train": NUM_IMAGES, "val": 2}, seed=5, workers=1,
                          progress=False, max_objects=1)
    return out


def caption_task(world: Path, **trainer: object) -> CaptionTask:
    return CaptionTask(CaptionTaskConfig.from_dict(
        {**TINY, "data": str(world), "arch": "sat-soft",
         "trainer": {**TINY["trainer"], **trainer}}))


def test_batches_pair_each_caption_with_its_own_image(world: Path) -> None:
    task = caption_task(world)
    images = load_captions(world, "train")
    on_disk = load_images(world, images, task.config.image_size).float().div_(255)
    references = [{" ".join(tokens) for tokens in im.tokens} for im in images]
    order = torch.randperm(task.num_examples(), generator=torch.Generator().manual_seed(0))
    seen = set()
    for start in range(0, len(order), 16):
        pixels, _, targets = task.batch(order[start:start + 16], torch.device("cpu"))
        for image, target in zip(pixels, targets, strict=True):
            same = [k for k in range(len(images)) if torch.equal(on_disk[k], image)]
            assert len(same) == 1, "a batch image is none of the training images"
            caption = task.vocab.decode(target.tolist())
            assert caption in references[same[0]], \
                f"{caption!r} is not a caption of the image it is paired with"
            seen.add((same[0], caption))
    assert len(seen) == task.num_examples()  # every (image, caption) pair, once an epoch


def test_an_overfitted_captioner_beats_every_image_blind_one(world: Path,
                                                           tmp_path: Path) -> None:
    task = caption_task(world, epochs=EPOCHS, lr=0.005, eval_every=0)
    trainer = Trainer(task, TrainerConfig.from_dict(task.config.trainer), tmp_path,
                      callbacks=[])
    trainer.fit()
    images = load_captions(world, "train")
    scenes = [load_scenes(world)[im.imgid] for im in images]
    captions = decode(trainer.model, task.train_images, task.vocab, beam_size=1,
                      max_length=task.config.max_length)

    def exactness(texts: list[str]) -> float:
        return float(np.mean([is_exact(t, scene) for t, scene in zip(texts, scenes,
                                                                      strict=True)]))

    candidates = set(captions) | {c for im in images for c in im.captions}
    blind = max(exactness([c] * len(images)) for c in candidates)
    model = exactness(captions)
    assert model >= blind + LEAD_OVER_BLIND, f"overfitted {model:.2f}, best blind {blind:.2f}"
