"""The command registry: every command names a function that exists, and shares its set-up."""

from __future__ import annotations

import pytest

from models.caption import CAPTIONERS
from training.cli import CAPTION_ARCHS, COMMANDS, build_parser, command_function
from training.tasks import TrainingCommand


@pytest.mark.parametrize("key", list(COMMANDS), ids=lambda k: " ".join(filter(None, k)))
def test_every_command_names_a_function_that_takes_the_parsed_arguments(key):
    run = command_function(COMMANDS[key].target)
    assert callable(run)
    if key[0] == "train":
        assert isinstance(run, TrainingCommand)


def test_caption_arch_choices_are_the_registered_captioners():
    import models.captioners  # noqa: F401  (completes the registry)

    assert sorted(CAPTION_ARCHS) == sorted(CAPTIONERS)


@pytest.mark.parametrize("family", ["caption", "encoder", "regions", "vqa", "alignment",
                                    "retrieval", "text-encoder"])
def test_every_training_command_takes_the_quick_run_knobs(family):
    args = build_parser().parse_args(["train", family, "--out", "runs/x", "--epochs", "1",
                                      "--steps", "3", "--batch-size", "4"])
    assert (args.epochs, args.steps, args.batch_size) == (1, 3, 4)


def test_flags_given_override_the_config_file_and_the_family_defaults(tmp_path):
    config = tmp_path / "caption.json"
    config.write_text('{"arch": "nic", "data": "from-file", "trainer": {"lr": 0.1, "seed": 3}}')
    args = build_parser().parse_args(["train", "caption", "--out", str(tmp_path / "run"),
                                      "--config", str(config), "--data", "from-flag",
                                      "--seed", "7", "--steps", "5"])
    cfg = command_function(args._target).task_config(args)
    assert (cfg.arch, cfg.data, cfg.layer_norm) == ("nic", "from-flag", False)
    assert cfg.trainer == {"early_stop_metric": "cider_d", "lr": 0.1, "seed": 7, "max_steps": 5}
