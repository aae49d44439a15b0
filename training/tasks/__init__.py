"""Training tasks, one module per family, and the runner every `glimpse train` shares.

Each module here holds a family's task for training.trainer.Trainer (its config
dataclass; its data, model, loss and validation) and ends with `train`, the
TrainingCommand that `glimpse train FAMILY` runs (training.cli names it
"training.tasks.FAMILY:train"). The command does what every family does alike:
logging; the config file (--config) with the flags given on the command line on
top; the run directory with task.json and the family's own run files
(vocab.json, ...); Trainer.fit; summary.json and a one-line JSON summary on
stdout (one per process under torchrun). A family declares only what is its own.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.trainer import Task, Trainer, TrainerConfig, with_cli_overrides

log = logging.getLogger(__name__)

RunFiles = Callable[[Any, Path], None]


@dataclass(frozen=True)
class TrainingCommand:
    """`glimpse train FAMILY`: how the family's config and task are made, and what its
    run directory needs besides checkpoints."""

    config: type  # the task's config dataclass: from_dict(dict), and a `trainer` dict field
    task: Callable[[Any], Task]  # the task of a config
    # Command-line flags that, when given, set the config field of the same name.
    flags: tuple[str, ...] = ("data",)
    # TrainerConfig settings of the family, under the config file's "trainer" and the flags.
    trainer_defaults: Mapping[str, Any] = field(default_factory=dict)
    run_files: RunFiles | None = None  # writes vocabularies and the like into the run dir
    # Metrics of the trained task beyond its validation (text encoder: test and novel
    # accuracy of the best checkpoint), recorded in summary.json under "final".
    final_metrics: Callable[[Any, Path], dict] | None = None

    def __call__(self, args: argparse.Namespace) -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        config = self.task_config(args)
        trainer_config = TrainerConfig.from_dict(config.trainer)
        run_dir = Path(args.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        task = self.build_task(config, run_dir, trainer_config)
        trainer = Trainer(task, trainer_config, run_dir)
        if trainer.dist.is_main:
            (run_dir / "task.json").write_text(json.dumps(asdict(config), indent=2))
            if self.run_files is not None:
                self.run_files(task, run_dir)
        summary = trainer.fit(resume=args.resume)
        if trainer.dist.is_main:
            if self.final_metrics is not None:
                summary["final"] = self.final_metrics(task, run_dir)
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        metric = trainer_config.early_stop_metric
        # One line, flat values first: under torchrun each rank prints its own.
        print(json.dumps({"run_dir": str(run_dir), "rank": trainer.dist.rank,
                          "steps": summary["steps"], "epochs": summary["epochs"],
                          f"best_{metric}" if metric else "best": summary["best"],
                          "train_seconds": round(summary["train_seconds"], 1),
                          **({"final": summary["final"]} if "final" in summary else {})}))
        return 0

    def task_config(self, args: argparse.Namespace) -> Any:
        """The config file's settings, then the flags given; the trainer's settings are the
        family's defaults, then the file's, then the trainer flags (--epochs, --steps, ...)."""
        raw = json.loads(Path(args.config).read_text()) if args.config else {}
        for name in self.flags:
            value = getattr(args, name, None)
            if value is not None and value is not False:  # False: a switch left off
                raw[name] = value
        config = self.config.from_dict(raw)  # validates the settings as finally given
        trainer = with_cli_overrides({**self.trainer_defaults, **config.trainer}, args)
        if getattr(args, "steps", None) is not None:
            trainer["max_steps"] = args.steps
        config.trainer = trainer
        return config

    def build_task(self, config: Any, run_dir: Path, trainer_config: TrainerConfig) -> Task:
        """The task of this run (a family whose task needs the run directory overrides it)."""
        return self.task(config)


def save_vocab(task: Any, run_dir: Path) -> None:
    """Run files of a task with a word vocabulary (`task.vocab`): vocab.json."""
    task.vocab.save(run_dir / "vocab.json")
