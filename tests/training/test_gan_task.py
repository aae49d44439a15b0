"""Text-to-image GAN training: losses, wrong texts, interpolation, steps, resume, loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training.cli import build_parser
from training.data.shapes import generate_shapes_world
from training.gan_task import (
    BagOfWordsEmbedder,
    GanTaskConfig,
    GanTraining,
    discriminator_loss,
    generator_loss,
    interpolate_embeddings,
    load_generator,
    mismatched_pairs,
    single_object_images,
    task_config_from_args,
)

TINY_GAN = {"ngf": 4, "ndf": 4, "noise_dim": 8, "proj_dim": 4}
TINY_STACK = {"ngf": 4, "ndf": 4, "z_dim": 8, "c_dim": 4, "proj_dim": 4, "num_residual": 1}


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t2i") / "world"
    generate_shapes_world(out, {"train": 48, "val": 4}, size=128, workers=1, progress=False)
    return out


def config(world: Path, variant: str, **overrides) -> GanTaskConfig:
    model = TINY_STACK if variant.startswith("stackgan") else TINY_GAN
    return GanTaskConfig.from_dict({
        "variant": variant, "data": str(world), "text_encoder": "bag-of-words",
        "model": model, "steps": 2, "batch_size": 4, "sample_every": 2, "save_every": 2,
        "progress": False, "device": "cpu", **overrides})


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items()
            if v.is_floating_point() and not torch.equal(before[k], v)}


def test_discriminator_loss_is_algorithm_1_on_hand_set_logits():
    real, fake, wrong = torch.tensor([2.0]), torch.tensor([-1.0]), torch.tensor([3.0])
    # -log s_r - (log(1 - s_w) + log(1 - s_f)) / 2, with -log sigmoid(x) = softplus(-x).
    expected = softplus(-2.0) + 0.5 * (softplus(3.0) + softplus(-1.0))
    assert math.isclose(discriminator_loss(real, fake, wrong).item(), expected, rel_tol=1e-6)
    plain = softplus(-2.0) + softplus(-1.0)
    assert math.isclose(discriminator_loss(real, fake).item(), plain, rel_tol=1e-6)


def test_generator_loss_adds_the_interpolation_term():
    fake, interpolated = torch.tensor([0.5, -0.5]), torch.tensor([1.0, 0.0])
    assert math.isclose(generator_loss(fake).item(),
                        (softplus(-0.5) + softplus(0.5)) / 2, rel_tol=1e-6)
    expected = (softplus(-0.5) + softplus(0.5)) / 2 + (softplus(-1.0) + softplus(0.0)) / 2
    assert math.isclose(generator_loss(fake, interpolated).item(), expected, rel_tol=1e-6)


def test_interpolation_with_beta_half_is_the_midpoint():
    t1, t2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    torch.testing.assert_close(interpolate_embeddings(t1, t2, 0.5), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(interpolate_embeddings(t1, t2, 1.0), t1)


def test_wrong_texts_come_from_another_class():
    torch.manual_seed(0)
    classes = torch.tensor([0, 0, 0, 1, 2, 2])
    chosen = torch.arange(6).repeat(20)
    other = mismatched_pairs(classes, chosen)
    assert (classes[other] != classes[chosen]).all()
    with pytest.raises(ValueError, match="two classes"):
        mismatched_pairs(torch.zeros(4, dtype=torch.long), torch.arange(4))


def test_bag_of_words_stand_in_is_deterministic_and_word_sensitive():
    bag = BagOfWordsEmbedder(["a", "red", "blue", "star"], embed_dim=6, seed=3)
    again = BagOfWordsEmbedder(["a", "red", "blue", "star"], embed_dim=6, seed=3)
    e = bag(["a red star", "a blue star", "a red star, zebra"])
    torch.testing.assert_close(e, again(["a red star", "a blue star", "a red star, zebra"]))
    assert (e[0] - e[1]).abs().max() > 1e-3
    torch.testing.assert_close(e[0], e[2])  # unknown words are ignored


def test_only_single_object_images_train(world):
    items = single_object_images(world)
    assert 0 < len(items) < 48
    assert all(len(captions) == 5 for _, captions, _ in items)


@pytest.mark.parametrize("variant", ["gan-int-cls", "stackgan-1"])
def test_one_step_changes_both_networks(world, tmp_path, variant):
    training = GanTraining(config(world, variant), tmp_path / "run")
    g, d = weights(training.generator), weights(training.discriminator)
    pairs = training.pairs
    torch.testing.assert_close(training.generator.embed_norm.mean,
                               pairs.embeddings[pairs.pair_text].mean(0))
    terms = training.train_step(training.batch(4))
    assert changed(g, training.generator) and changed(d, training.discriminator)
    assert {"loss_d", "loss_g", "s_real", "s_fake", "s_wrong"} <= set(terms)
    assert (terms["kl"] > 0) == variant.startswith("stackgan")


def test_stage2_trains_on_a_frozen_stage1(world, tmp_path):
    GanTraining(config(world, "stackgan-1"), tmp_path / "s1").fit()
    training = GanTraining(config(world, "stackgan-2", stage1_run=str(tmp_path / "s1")),
                           tmp_path / "s2")
    stage1 = weights(training.generator.stage1)
    stage2 = weights(training.generator)
    training.train_step(training.batch(4))
    assert not changed(stage1, training.generator.stage1)
    assert changed(stage2, training.generator)
    generator, info = load_generator(tmp_path / "s1")
    assert info == {"variant": "stackgan-1", "noise_dim": 12, "embed_dim": 128,
                    "image_size": 64, "text_encoder_run": None}


def test_resume_continues_exactly(world, tmp_path):
    straight = GanTraining(config(world, "gan-cls", steps=4), tmp_path / "straight")
    straight.fit()
    GanTraining(config(world, "gan-cls", steps=2), tmp_path / "split").fit()
    resumed = GanTraining(config(world, "gan-cls", steps=4), tmp_path / "split")
    summary = resumed.fit(resume=True)
    assert summary["step"] == 4
    for k, v in straight.models.state_dict().items():
        torch.testing.assert_close(resumed.models.state_dict()[k], v, rtol=0, atol=0)
    assert (tmp_path / "split" / "samples" / "step_000004.png").exists()


def test_load_generator_gives_the_trained_generator_in_eval_mode(world, tmp_path):
    training = GanTraining(config(world, "gan-int"), tmp_path / "run")
    training.fit()
    generator, info = load_generator(tmp_path / "run")
    assert not generator.training
    assert info == {"variant": "gan-int", "noise_dim": 8, "embed_dim": 128, "image_size": 64,
                    "text_encoder_run": None}
    training.generator.eval()
    e, z = torch.randn(2, 128), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(generator.sample(e, z), training.generator.sample(e, z))


def test_cli_arguments_select_the_variant():
    args = build_parser().parse_args(["train", "stackgan", "--stage", "2", "--stage1-run", "r1",
                                      "--out", "r2", "--steps", "7"])
    cfg = task_config_from_args(args)
    assert (cfg.variant, cfg.stage1_run, cfg.steps) == ("stackgan-2", "r1", 7)
    args = build_parser().parse_args(["train", "gan", "--variant", "gan-int", "--out", "r"])
    assert task_config_from_args(args).variant == "gan-int"
    with pytest.raises(ValueError, match="stage1-run"):
        task_config_from_args(build_parser().parse_args(["train", "stackgan", "--stage", "2",
                                                         "--out", "r"]))
