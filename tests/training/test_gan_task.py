"""Text-to-image GAN and StackGAN training: losses, wrong texts, interpolation, steps,
resume, loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from models.gan import discriminator_loss, generator_loss, interpolate_embeddings
from training.checkpoint import load_training_state
from training.cli import build_parser
from training.data.readers import load_captions
from training.data.shapes import generate_shapes_world, load_scenes
from training.data.text_image import mismatched_pairs, shape_swapped_pairs, single_object_images
from training.data.world import COLOURS, SHAPES, SIZES, object_class
from training.runs import load_generator
from training.tasks import gan, stackgan
from training.tasks.gan import EMA_GENERATOR, BagOfWordsEmbedder, GanTask, GanTaskConfig
from training.tasks.stackgan import StackGanTask, StackGanTaskConfig
from training.trainer import Trainer, TrainerConfig

TINY_GAN = {"ngf": 4, "ndf": 4, "noise_dim": 8, "proj_dim": 4}
# batches row for row as the indices say (the default D groups them by class)
UNGROUPED = {**TINY_GAN, "minibatch_std_group": 0}
TINY_STACK = {"ngf": 4, "ndf": 4, "z_dim": 8, "c_dim": 4, "proj_dim": 4, "num_residual": 1}


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t2i") / "world"
    generate_shapes_world(out, {"train": 48, "val": 4}, size=128, workers=1, progress=False)
    return out


def config(world: Path, variant: str, *, steps: int = 2, **overrides) -> GanTaskConfig:
    """A tiny run's config; no warm-up unless `overrides` ask for one, so that every step
    plays the game."""
    stack = variant.startswith("stackgan")
    overrides = {"warm_up": 0, **overrides}
    return (StackGanTaskConfig if stack else GanTaskConfig).from_dict({
        "variant": variant, "data": str(world), "text_encoder": "bag-of-words",
        "model": TINY_STACK if stack else TINY_GAN, "sample_every": 2,
        "trainer": {"max_steps": steps, "batch_size": 4, "save_every": 2, "progress": False,
                    "device": "cpu"}, **overrides})


def task(cfg: GanTaskConfig) -> GanTask:
    return (StackGanTask if isinstance(cfg, StackGanTaskConfig) else GanTask)(cfg)


def trainer(cfg: GanTaskConfig, run_dir: Path) -> Trainer:
    """What `glimpse train gan|stackgan` runs."""
    return Trainer(task(cfg), TrainerConfig.from_dict(cfg.trainer), run_dir)


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
def test_one_step_changes_both_networks(world, variant):
    t = task(config(world, variant))
    model = t.build_model()
    g, d = weights(model["generator"]), weights(model["discriminator"])
    pairs = t.pairs
    torch.testing.assert_close(model["generator"].embed_norm.mean,
                               pairs.embeddings[pairs.pair_text].mean(0))
    terms = t.train_step(model, t.batch(torch.arange(4), torch.device("cpu")),
                         t.configure_optimizers(model))
    assert changed(g, model["generator"]) and changed(d, model["discriminator"])
    assert {"loss_d", "loss_g", "s_real", "s_fake", "s_wrong"} <= set(terms)
    assert (terms["kl"] > 0) == variant.startswith("stackgan")


def test_stage2_trains_on_a_frozen_stage1(world, tmp_path):
    trainer(config(world, "stackgan-1"), tmp_path / "s1").fit()
    t = task(config(world, "stackgan-2", stage1_run=str(tmp_path / "s1")))
    model = t.build_model()
    stage1 = weights(model["generator"].stage1)
    stage2 = weights(model["generator"])
    t.train_step(model, t.batch(torch.arange(4), torch.device("cpu")),
                 t.configure_optimizers(model))
    assert not changed(stage1, model["generator"].stage1)
    assert changed(stage2, model["generator"])
    generator, info = load_generator(tmp_path / "s1")
    assert info == {"variant": "stackgan-1", "noise_dim": 12, "embed_dim": 128,
                    "image_size": 64, "text_encoder_run": None}


def test_resume_continues_exactly(world, tmp_path):
    straight = trainer(config(world, "gan-cls", steps=4), tmp_path / "straight")
    straight.fit()
    trainer(config(world, "gan-cls", steps=2), tmp_path / "split").fit()
    resumed = trainer(config(world, "gan-cls", steps=4), tmp_path / "split")
    summary = resumed.fit(resume=True)
    assert summary["steps"] == 4
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)
    assert (tmp_path / "split" / "samples" / "step_000004.png").exists()
    # Both players' Adam states are in the checkpoint, by name.
    t = task(config(world, "gan-cls"))
    optimizers = t.configure_optimizers(t.build_model())
    state = load_training_state(tmp_path / "split" / "checkpoints" / "last",
                                optimizer=optimizers, restore_rng=False)
    assert state["step"] == 4
    assert all(opt.state for opt in optimizers.values())


def test_load_generator_gives_the_trained_generator_in_eval_mode(world, tmp_path):
    training = trainer(config(world, "gan-int", ema=0.0), tmp_path / "run")
    training.fit()
    generator, info = load_generator(tmp_path / "run")
    assert not generator.training
    assert info == {"variant": "gan-int", "noise_dim": 8, "embed_dim": 128, "image_size": 64,
                    "text_encoder_run": None}
    trained = training.model["generator"].eval()
    e, z = torch.randn(2, 128), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(generator.sample(e, z), trained.sample(e, z))


def test_cli_arguments_select_the_variant():
    args = build_parser().parse_args(["train", "stackgan", "--stage", "2", "--stage1-run", "r1",
                                      "--out", "r2", "--steps", "7"])
    cfg = stackgan.train.task_config(args)
    assert (cfg.variant, cfg.stage1_run, cfg.trainer["max_steps"]) == ("stackgan-2", "r1", 7)
    args = build_parser().parse_args(["train", "gan", "--variant", "gan-int", "--out", "r"])
    assert gan.train.task_config(args).variant == "gan-int"
    with pytest.raises(ValueError, match="stage1-run"):
        stackgan.train.task_config(build_parser().parse_args(
            ["train", "stackgan", "--stage", "2", "--out", "r"]))


STABILISED = {"loss": "hinge", "ema": 0.9, "diff_augment": ["translation", "cutout"], "r1": 1.0,
              "mode_seeking": 1.0, "auxiliary": 1.0}


def test_one_step_with_every_stabiliser_updates_the_weight_average(world):
    t = task(config(world, "gan-int-cls", **STABILISED,
                    model={**TINY_GAN, "spectral_norm": True, "projection": True}))
    model = t.build_model()
    assert set(model) == {"generator", "discriminator", EMA_GENERATOR}
    assert not any(p.requires_grad for p in model[EMA_GENERATOR].parameters())
    g, d = weights(model["generator"]), weights(model["discriminator"])
    terms = t.train_step(model, t.batch(torch.arange(4), torch.device("cpu")),
                         t.configure_optimizers(model))
    assert changed(g, model["generator"]) and changed(d, model["discriminator"])
    assert terms["r1"] > 0 and terms["mode_seeking"] > 0
    assert terms["aux_real"] > 0 and terms["aux_fake"] > 0
    assert model["discriminator"].config.attribute_classes == (7, 8, 2)
    for name, p in model["generator"].named_parameters():  # average = 0.9 start + 0.1 new
        torch.testing.assert_close(dict(model[EMA_GENERATOR].named_parameters())[name],
                                   0.9 * g[name] + 0.1 * p.detach())


def test_discriminator_learning_rate_is_its_own_when_set(world):
    t = task(config(world, "gan", lr_discriminator=5e-4))
    optimizers = t.configure_optimizers(t.build_model())
    assert optimizers["discriminator"].param_groups[0]["lr"] == 5e-4
    assert optimizers["generator"].param_groups[0]["lr"] == 2e-4
    t = task(config(world, "gan", lr_discriminator=None))  # None: G's rate
    optimizers = t.configure_optimizers(t.build_model())
    assert optimizers["discriminator"].param_groups[0]["lr"] == 2e-4


def test_a_run_with_a_weight_average_serves_the_average(world, tmp_path):
    training = trainer(config(world, "gan-cls", ema=0.5), tmp_path / "run")
    training.fit()
    generator, _ = load_generator(tmp_path / "run")
    e, z = torch.randn(2, 128), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(generator.sample(e, z),
                                   training.model[EMA_GENERATOR].eval().sample(e, z))
        live = training.model["generator"].eval().sample(e, z)
    assert (generator.sample(e, z) - live).abs().max() > 1e-6


def test_warm_up_trains_only_ds_attribute_classifier_then_the_game_starts(world):
    t = task(config(world, "gan-int-cls", warm_up=2, ema=0.0))
    model = t.build_model()
    optimizers = t.configure_optimizers(model)
    D = model["discriminator"]
    batch = t.batch(torch.arange(4), torch.device("cpu"))
    # parameters only: spectral norm's power-iteration vectors move on every forward
    def trained(module):
        return {n: p.detach().clone() for n, p in module.named_parameters()}

    def moved(before, module):
        return any(not torch.equal(before[n], p) for n, p in module.named_parameters())

    g, trunk, head = trained(model["generator"]), trained(D.encode), trained(D.head)
    for _ in range(2):
        terms = t.train_step(model, batch, optimizers)
        assert terms["warm_up"] == 1.0 and terms["aux_real"] > 0 and "loss_g" not in terms
    assert not moved(g, model["generator"]) and not moved(head, D.head)
    assert moved(trunk, D.encode)
    terms = t.train_step(model, batch, optimizers)  # the third step is the game's first
    assert "warm_up" not in terms and moved(g, model["generator"]) and moved(head, D.head)


def test_resumed_run_does_not_warm_up_again(world, tmp_path):
    trainer(config(world, "gan-cls", steps=2, warm_up=2, ema=0.0), tmp_path / "run").fit()
    warmed, _ = load_generator(tmp_path / "run")  # G as it started: two warm-up steps only
    resumed = trainer(config(world, "gan-cls", steps=3, warm_up=2, ema=0.0), tmp_path / "run")
    resumed.fit(resume=True)
    assert changed(weights(warmed), resumed.model["generator"])


def test_stage1_anchor_is_the_l1_of_the_pooled_image_to_stage_i(world, tmp_path):
    trainer(config(world, "stackgan-1"), tmp_path / "s1").fit()
    t = task(config(world, "stackgan-2", stage1_run=str(tmp_path / "s1"), stage1_anchor=4.0))
    model = t.build_model()
    generator = model["generator"]
    batch = t.batch(torch.arange(4), torch.device("cpu"))
    noise = t.noise(batch.text)
    low = generator.stage1.sample(batch.text, noise[:, :generator.stage1.noise_dim]).detach()
    # A 128 px image whose 2x2 blocks average to Stage I's pixels is anchored exactly,
    # whatever detail it draws inside a block; a shift of every pixel by d costs 4 d.
    detail = torch.tensor([[0.1, -0.1], [-0.1, 0.1]]).repeat(64, 64)
    fake = torch.repeat_interleave(torch.repeat_interleave(low, 2, dim=2), 2, dim=3) + detail
    assert t.anchor_loss(generator, batch.text, noise, fake).item() == pytest.approx(0, abs=1e-6)
    anchor = t.anchor_loss(generator, batch.text, noise, fake + 0.05)
    assert anchor.item() == pytest.approx(4 * 0.05, rel=1e-4)
    terms = t.train_step(model, batch, t.configure_optimizers(model))
    assert terms["anchor"] >= 0
    plain = task(config(world, "stackgan-2", stage1_run=str(tmp_path / "s1")))
    assert "anchor" not in plain.train_step(model, batch, plain.configure_optimizers(model))


@pytest.mark.parametrize("bad", [{"stage1_anchor": -1.0},
                                 {"stage1_anchor": 1.0, "variant": "stackgan-1"}])
def test_stage1_anchor_is_a_stage_ii_weight(world, bad):
    with pytest.raises(ValueError, match="stage1_anchor"):
        StackGanTaskConfig.from_dict({"variant": "stackgan-2", "stage1_run": "r1",
                                      "data": str(world), **bad})


@pytest.mark.parametrize("bad", [{"loss": "wasserstein"}, {"diff_augment": ["colour"]},
                                 {"ema": 1.0}, {"warm_up": -1},
                                 {"warm_up": 5, "auxiliary": 0.0}])
def test_unknown_stabiliser_settings_are_refused(world, bad):
    with pytest.raises(ValueError):
        config(world, "gan", **bad)


def test_new_runs_get_the_ablations_choice_and_the_papers_recipe_is_a_config():
    cfg = GanTaskConfig.from_dict({"model": {"ngf": 32}})
    assert (cfg.loss, cfg.ema, cfg.diff_augment, cfg.auxiliary) == (
        "hinge", 0.995, ("translation",), 1.0)
    assert (cfg.warm_up, cfg.lr_discriminator, cfg.trainer["max_steps"], cfg.mode_seeking) == (
        1500, 1e-3, 9500, 0.1)
    assert cfg.model == {"spectral_norm": False, "projection": True, "minibatch_std_group": 4,
                         "minibatch_std_features": 16, "ngf": 32}
    recipe = json.loads((Path(__file__).parents[2] / "configs" / "gan_reed2016.json")
                        .read_text())
    paper = GanTaskConfig.from_dict(recipe)
    assert (paper.loss, paper.ema, paper.diff_augment, paper.auxiliary, paper.r1) == (
        "bce", 0.0, (), 0.0, 0.0)
    assert (paper.warm_up, paper.lr_discriminator) == (0, None)  # D at G's rate
    assert paper.model == {"spectral_norm": False, "projection": False,
                           "minibatch_std_group": 0, "minibatch_std_features": 1}
    stack = StackGanTaskConfig.from_dict({})  # StackGAN trains by the same recipe
    assert (stack.loss, stack.ema, stack.diff_augment, stack.auxiliary, stack.warm_up,
            stack.kl_weight) == ("hinge", 0.995, ("translation",), 1.0, 1500, 0.02)
    assert stack.model == {"projection": True, "minibatch_std_group": 4,
                           "minibatch_std_features": 16, "residual_output": True}
    zhang = StackGanTaskConfig.from_dict(json.loads(
        (Path(__file__).parents[2] / "configs" / "stackgan_zhang2017.json").read_text()))
    assert (zhang.loss, zhang.ema, zhang.diff_augment, zhang.auxiliary, zhang.kl_weight) == (
        "bce", 0.0, (), 0.0, 1.0)
    assert (zhang.warm_up, zhang.lr_discriminator, zhang.trainer["max_steps"],
            zhang.mode_seeking) == (0, None, 2000, 0.0)
    assert zhang.model == {"projection": False, "minibatch_std_group": 0,
                           "minibatch_std_features": 1, "residual_output": False}


def test_shape_swapped_texts_keep_colour_and_size_and_change_the_shape():
    torch.manual_seed(0)
    # class id = (shape * 8 + colour) * 2 + size (training.data.world.object_class)
    classes = torch.tensor([object_class(s, c, z) for s, c, z in [
        ("circle", "red", "small"), ("star", "red", "small"), ("square", "red", "small"),
        ("circle", "blue", "large"), ("cross", "blue", "large"), ("circle", "green", "small")]])
    chosen = torch.arange(6).repeat(30)
    fallback = torch.full_like(chosen, 99)
    other = shape_swapped_pairs(classes, chosen, fallback)
    swapped = other != 99
    assert (~swapped == (chosen == 5)).all()  # green small: only a circle, so the fallback
    a, b = classes[chosen[swapped]], classes[other[swapped]]
    assert (a % 16 == b % 16).all() and (a // 16 != b // 16).all()


def test_with_shape_negatives_every_wrong_text_that_can_differs_in_shape_only(world):
    t = task(config(world, "gan-cls", shape_negatives=1.0, model=UNGROUPED))
    pairs = t.pairs
    classes, texts = pairs.pair_class, pairs.embeddings[pairs.pair_text]  # per pair
    torch.manual_seed(0)
    indices = torch.arange(len(pairs))
    batch = t.batch(indices, torch.device("cpu"))
    swappable = torch.tensor([bool(((classes % 16 == c % 16) & (classes != c)).any())
                              for c in classes])
    assert swappable.any()
    for i in indices[swappable]:  # the wrong text is the caption of a shape-swapped pair
        source = (texts == batch.wrong_text[i]).all(1)
        assert (classes[source] % 16 == classes[i] % 16).all()
        assert (classes[source] // 16 != classes[i] // 16).all()


def test_batch_attributes_are_the_shape_colour_and_size_of_each_image(world):
    # Read from the scenes the world was drawn from, not from the class ids the task keeps.
    scenes = load_scenes(world)
    truth = [scenes[im.imgid].objects[0] for im in load_captions(world, "train")
             if len(scenes[im.imgid].objects) == 1]
    t = task(config(world, "gan-cls", model=UNGROUPED))
    indices = torch.arange(len(t.pairs))
    batch = t.batch(indices, torch.device("cpu"))
    named = {(SHAPES[s], list(COLOURS)[c], SIZES[z]) for s, c, z in batch.attributes.tolist()}
    assert len({o.size for o in truth}) == 2 and len(named) > 4
    for i, (s, c, z) in zip(indices.tolist(), batch.attributes.tolist(), strict=True):
        obj = truth[int(t.pairs.pair_image[i])]
        assert (SHAPES[s], list(COLOURS)[c], SIZES[z]) == (obj.shape, obj.colour, obj.size)


def test_minibatch_std_batches_are_groups_of_one_class(world):
    cfg = config(world, "gan-int-cls", model={**TINY_GAN, "projection": True,
                                              "minibatch_std_group": 2})
    t = task(cfg)
    indices = torch.randperm(len(t.pairs))[:5]
    batch = t.batch(indices, torch.device("cpu"))
    assert len(batch.real) == 4  # two full groups; the fifth index leads none
    classes = t.pairs.pair_class[t.grouped(indices[:4])]
    groups = batch.attributes.reshape(2, 2, 3)
    assert (groups[:, 0] == groups[:, 1]).all()  # each group: one shape, colour and size
    assert (classes.reshape(2, 2)[:, 0] == t.pairs.pair_class[indices[:2]]).all()
    # GAN-INT's partners are the previous group's captions, row for row
    both = (batch.text + batch.text.roll(2, dims=0)) / 2
    torch.testing.assert_close(batch.interpolated, both)
    model = t.build_model()
    d = weights(model["discriminator"])
    t.train_step(model, batch, t.configure_optimizers(model))
    assert changed(d, model["discriminator"])
