"""What the Trainer reports while it trains, as callbacks.

The Trainer calls these hooks on rank 0 only (the rank that logs and saves):

    on_fit_start(trainer)            model built (and resumed): trainer.state["step"] is the start
    on_train_batch_end(trainer)      after every optimizer step
    on_log(trainer, logs)            every `log_every` steps: {"loss", "lr", **the task's terms}
    on_evaluate(trainer, metrics)    after every evaluation, history and checkpoints written
    on_fit_end(trainer)              after the last step

Every hook of `Callback` does nothing, so a callback overrides only what it
needs (minGPT's Trainer does the same with named events). `default_callbacks`
is what a Trainer reports unless told otherwise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from training.trainer import Trainer

log = logging.getLogger(__name__)


class Callback:
    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_train_batch_end(self, trainer: Trainer) -> None:
        pass

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        pass

    def on_evaluate(self, trainer: Trainer, metrics: dict) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass


class ProgressBar(Callback):
    """A tqdm bar over optimizer steps (off with TrainerConfig.progress = False); its postfix
    shows the latest logged losses ("loss", or a multi-optimizer task's "loss_*" terms)."""

    def __init__(self, desc: str = "train") -> None:
        self.desc = desc
        self.bar: tqdm | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.state["step"],
                        disable=not trainer.config.progress, desc=self.desc, unit="step",
                        dynamic_ncols=True)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        self.bar.update(1)

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        losses = {k: f"{v:.3f}" for k, v in logs.items() if k == "loss" or k.startswith("loss_")}
        self.bar.set_postfix(losses)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.bar.close()


def numbers(metrics: dict) -> dict[str, float]:
    """The scalar entries of a metrics dict (evaluations may also return lists or text)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


class EvaluationLine(Callback):
    """One console line per evaluation ("epoch 3: bleu_4=0.2100, ..."), and why training
    stopped early when it did. Printed through tqdm so that the progress bar stays whole."""

    def on_evaluate(self, trainer: Trainer, metrics: dict) -> None:
        epoch = trainer.state["epoch"]
        log.debug("epoch %d: %s", epoch, metrics)  # the line below shows it
        tqdm.write(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}"
                                                  for k, v in numbers(metrics).items()))
        if trainer.stopped_early:
            cfg = trainer.config
            tqdm.write(f"early stop: {cfg.early_stop_metric} has not improved for "
                       f"{cfg.patience} evaluations")


class TensorBoard(Callback):
    """train/* scalars every `log_every` steps and val/* after every evaluation, in RUN/tb.

    TensorBoard is in the train extra; without it the run logs one warning and goes on."""

    def __init__(self) -> None:
        self.writer = None

    def on_fit_start(self, trainer: Trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed; no TensorBoard logs")
            return
        self.writer = SummaryWriter(log_dir=str(trainer.run_dir / "tb"))

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.writer:
            for k, v in logs.items():
                self.writer.add_scalar(f"train/{k}", v, trainer.state["step"])

    def on_evaluate(self, trainer: Trainer, metrics: dict) -> None:
        if self.writer:
            for k, v in numbers(metrics).items():
                self.writer.add_scalar(f"val/{k}", v, trainer.state["step"])

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer:
            self.writer.close()


class JsonLines(Callback):
    """Every `log_every` step's logs as one JSON line in RUN/`name`, started afresh by a new
    run and appended to by a resumed one."""

    def __init__(self, name: str = "history.jsonl") -> None:
        self.name = name

    def path(self, trainer: Trainer) -> Path:
        return trainer.run_dir / self.name

    def on_fit_start(self, trainer: Trainer) -> None:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        if trainer.state["step"] == 0:
            self.path(trainer).unlink(missing_ok=True)

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        record = {"step": trainer.state["step"], **{k: round(v, 5) for k, v in logs.items()}}
        with open(self.path(trainer), "a") as f:
            f.write(json.dumps(record) + "\n")


def default_callbacks() -> list[Callback]:
    """What a Trainer reports unless told otherwise: progress bar, a line per evaluation,
    TensorBoard when installed."""
    return [ProgressBar(), EvaluationLine(), TensorBoard()]
