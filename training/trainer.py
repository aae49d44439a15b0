"""One model-agnostic trainer.

The trainer knows nothing about captions, questions or images: a task gives it
a model, a way to cut batches from its training data, a batch → loss function,
an evaluation, and (in its TrainerConfig) the metric to stop early on. It
handles the rest: device and mixed precision, gradient clipping, the
learning-rate schedule, early stopping, checkpoints that resume exactly, and
DDP under `torchrun` (it reads RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU,
NCCL on GPU; only rank 0 evaluates, saves and reports). Progress bar,
TensorBoard and console lines are callbacks (training.callbacks).

A task whose step is more than one loss and one optimizer (a GAN: a
discriminator step, then a generator step) brings its own
`configure_optimizers` and `train_step` (OwnStepTask); the trainer still cuts
its batches, schedules every optimizer's learning rate, reports, checkpoints
every optimizer and resumes exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from training.callbacks import Callback, default_callbacks
from training.checkpoint import load_training_state, load_weights, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 64  # per process
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 2.0  # max global grad norm; 0 disables
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" (to 5% of lr) or "constant", after linear warm-up
    amp: bool | None = None  # autocast, float16 on CUDA, bfloat16 on CPU; None: on for CUDA
    log_every: int = 20
    save_every: int = 0  # also save "last" every N steps (0: only after evaluations)
    eval_every: int = 1  # epochs between evaluations (0: never evaluate)
    early_stop_metric: str | None = None  # the task's metric, higher is better; None: never
    patience: int = 3  # evaluations without improvement before stopping
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> TrainerConfig:
        return config_from_dict(cls, d, "trainer")


TRAINER_FLAGS = ("epochs", "batch_size", "lr", "device", "seed", "save_every")


def with_cli_overrides(trainer: dict[str, Any], args: Any) -> dict[str, Any]:
    """`trainer` (a TrainerConfig dict) with every trainer flag given on the command line
    (--epochs, --batch-size, --lr, --device, --seed, --save-every) taking precedence."""
    given = {name: getattr(args, name, None) for name in TRAINER_FLAGS}
    return {**trainer, **{name: value for name, value in given.items() if value is not None}}


def config_from_dict(cls, d: dict, what: str):
    """`cls(**d)` for a config dataclass, naming any key it does not know."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} settings: {sorted(unknown)}")
    return cls(**d)


class Task(Protocol):
    """What a task hands the trainer. `callbacks() -> list[Callback]` is optional: reports
    of its own (sample images, say), added to the trainer's."""

    def build_model(self) -> torch.nn.Module: ...

    def model_config(self) -> dict:
        """JSON config from which `build_model` can rebuild the model (stored in checkpoints)."""

    def num_examples(self) -> int: ...

    def batch(self, indices: torch.Tensor, device: torch.device) -> Any:
        """Training batch for these example indices, on `device`."""

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise and named terms to log."""

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Validation metrics (run on rank 0 with the unwrapped model in eval mode)."""


class OwnStepTask(Protocol):
    """A task that steps its own optimizers, in place of `loss`: a GAN's D step, then G step.

    `evaluate` and `callbacks` are optional; without `evaluate` nothing is evaluated
    and only `last` checkpoints are written."""

    def build_model(self) -> torch.nn.Module: ...

    def model_config(self) -> dict: ...

    def num_examples(self) -> int: ...

    def batch(self, indices: torch.Tensor, device: torch.device) -> Any: ...

    def configure_optimizers(self, model: torch.nn.Module
                             ) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name; the trainer schedules, checkpoints and restores each one."""

    def train_step(self, model: torch.nn.Module, batch: Any,
                   optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """Zero, backward and step each optimizer; return named terms to log.

        The trainer steps the learning-rate schedulers afterwards. Autocast and gradient
        clipping are the step's own business. Under DDP `model` is the bare model and every
        `optimizer.step()` first averages its gradients over the ranks."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_order(n: int, *, seed: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of a permutation that depends only on (seed, epoch).

    Every rank gets the same number of examples (the tail is dropped), so DDP
    processes take the same number of steps.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = n // world_size
    return perm[rank * per_rank:(rank + 1) * per_rank]


def lr_lambda(config: TrainerConfig, total_steps: int):
    def f(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def average_gradients(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Optimizer pre-step hook under DDP: every rank steps with the mean gradient over the
    ranks, which is what DDP's backward gives the single-loss path."""
    world = dist.get_world_size()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)


SINGLE = "model"  # the name of the single-loss path's one optimizer


class Trainer:
    """Fits a task. `callbacks` replace `default_callbacks()` (progress bar, a line per
    evaluation, TensorBoard); `add_callback` adds to them."""

    def __init__(self, task: Task | OwnStepTask, config: TrainerConfig, run_dir: str | Path,
                 callbacks: Sequence[Callback] | None = None):
        self.task = task
        self.config = config
        self.run_dir = Path(run_dir)
        self.own_step = hasattr(task, "train_step")
        if self.own_step != hasattr(task, "configure_optimizers"):
            raise TypeError(f"{type(task).__name__}: a task's own step needs both "
                            "configure_optimizers and train_step")
        self.dist = self._init_distributed()
        self.device = self._pick_device()
        if self.device.type == "cpu":
            # Subnormal floats take a slow path in the CPU's arithmetic: a dVAE whose
            # Gumbel-softmax probabilities underflow into them ran 5x slower per step
            # after its first hundred steps. They are far below anything a weight or a
            # gradient here needs, so the CPU flushes them to zero.
            torch.set_flush_denormal(True)
        self.callbacks = list(default_callbacks() if callbacks is None else callbacks)
        self.callbacks += task.callbacks() if hasattr(task, "callbacks") else []
        self.history: list[dict] = []
        # What callbacks read while `fit` runs: the bare model, the bookkeeping that
        # checkpoints carry, how many steps the run takes, whether it stops early.
        self.model: torch.nn.Module | None = None
        self.state: dict[str, Any] = {}
        self.total_steps = 0
        self.stopped_early = False

    def add_callback(self, callback: Callback) -> None:
        self.callbacks.append(callback)

    def report(self, event: str, *args: Any) -> None:
        """Call `event` on every callback, on rank 0 only (one process reports)."""
        if self.dist.is_main:
            for callback in self.callbacks:
                getattr(callback, event)(self, *args)

    # -- set-up --------------------------------------------------------------
    def _init_distributed(self) -> DistInfo:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return DistInfo()
        info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            cuda = torch.cuda.is_available() and (self.config.device or "cuda").startswith("cuda")
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        return info

    def _pick_device(self) -> torch.device:
        name = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if name == "cuda" and self.dist.world_size > 1:
            name = f"cuda:{self.dist.local_rank}"
        device = torch.device(name)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return device

    def steps_per_epoch(self) -> int:
        per_rank = self.task.num_examples() // self.dist.world_size
        return max(1, math.ceil(per_rank / self.config.batch_size))

    def _optimizers(self, model: torch.nn.Module) -> dict[str, torch.optim.Optimizer]:
        if self.own_step:
            return dict(self.task.configure_optimizers(model))
        return {SINGLE: torch.optim.AdamW(model.parameters(), lr=self.config.lr,
                                          weight_decay=self.config.weight_decay)}

    def _distributed(self, model: torch.nn.Module,
                     optimizers: dict[str, torch.optim.Optimizer]) -> torch.nn.Module:
        """The model the step runs: DDP-wrapped for a single loss; for a task's own step the
        bare model, with gradients averaged over the ranks before every optimizer step."""
        if self.dist.world_size == 1:
            return model
        if not self.own_step:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        for tensor in model.state_dict().values():  # start every rank from rank 0's weights
            dist.broadcast(tensor, src=0)
        for optimizer in optimizers.values():
            optimizer.register_step_pre_hook(average_gradients)
        return model

    def _checkpointed(self, named: dict[str, Any]) -> Any:
        """What a checkpoint holds: the single-loss path's one optimizer (or scheduler), in
        the layout it always had, or a task's own optimizers by name."""
        return named if self.own_step else named[SINGLE]

    # -- the loop ------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> dict:
        cfg = self.config
        seed_everything(cfg.seed)
        model = self.model = self.task.build_model().to(self.device)
        optimizers = self._optimizers(model)
        spe = self.steps_per_epoch()
        total = self.total_steps = cfg.max_steps or cfg.epochs * spe
        schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
                      for name, opt in optimizers.items()}
        state = self.state = {"step": 0, "epoch": 0, "best": None, "bad_evals": 0,
                              "train_seconds": 0.0}
        self.stopped_early = False
        if resume:
            self._resume(optimizers, schedulers)
        use_amp = cfg.amp if cfg.amp is not None else self.device.type == "cuda"
        if use_amp and self.own_step:
            log.warning("amp applies to the single-loss step; %s runs its own step as it "
                        "chooses", type(self.task).__name__)
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        # float16 needs its gradients scaled; bfloat16 has float32's range and does not.
        scaler = torch.amp.GradScaler(self.device.type, enabled=use_amp and
                                      amp_dtype == torch.float16)
        wrapped = self._distributed(model, optimizers)
        self.report("on_fit_start")
        stop = state["step"] >= total
        while not stop:
            epoch = state["epoch"]
            order = epoch_order(self.task.num_examples(), seed=cfg.seed, epoch=epoch,
                                rank=self.dist.rank, world_size=self.dist.world_size)
            done_in_epoch = state["step"] - epoch * spe
            started = time.perf_counter()
            wrapped.train()
            for b in range(max(0, done_in_epoch), spe):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                batch = self.task.batch(idx, self.device)
                if self.own_step:
                    loss, terms = None, self.task.train_step(wrapped, batch, optimizers)
                else:
                    with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                        loss, terms = self.task.loss(wrapped, batch)
                    self._single_loss_step(loss, optimizers[SINGLE], scaler)
                for scheduler in schedulers.values():
                    scheduler.step()
                state["step"] += 1
                self.report("on_train_batch_end")
                if self.dist.is_main and state["step"] % cfg.log_every == 0:
                    self.report("on_log", self._logs(loss, terms, schedulers))
                if state["step"] >= total:
                    break
                if cfg.save_every and state["step"] % cfg.save_every == 0:
                    state["train_seconds"] += time.perf_counter() - started
                    started = time.perf_counter()
                    self._save(optimizers, schedulers, "last")
            state["train_seconds"] += time.perf_counter() - started
            finished_epoch = state["step"] >= (epoch + 1) * spe
            if finished_epoch:
                state["epoch"] += 1
            stop = state["step"] >= total
            if finished_epoch and self._evaluates() and (state["epoch"] % cfg.eval_every == 0
                                                         or stop):
                stop = self._evaluate_and_save(optimizers, schedulers) or stop
            elif stop:
                self._save(optimizers, schedulers, "last")
        self.report("on_fit_end")
        if self.dist.world_size > 1:
            dist.barrier()
        return {"steps": state["step"], "epochs": state["epoch"], "best": state["best"],
                "train_seconds": state["train_seconds"], "history": self.history}

    def _single_loss_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                          scaler: torch.amp.GradScaler) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.config.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    def _logs(self, loss: torch.Tensor | None, terms: dict[str, float],
              schedulers: dict[str, Any]) -> dict[str, float]:
        """What `on_log` gets: the loss and learning rate ("lr/<name>" for each of a task's
        own optimizers), then the task's terms."""
        logs = {} if loss is None else {"loss": loss.item()}
        if self.own_step:
            logs.update({f"lr/{name}": s.get_last_lr()[0] for name, s in schedulers.items()})
        else:
            logs["lr"] = schedulers[SINGLE].get_last_lr()[0]
        return {**logs, **terms}

    def _resume(self, optimizers: dict, schedulers: dict) -> None:
        last = self.run_dir / "checkpoints" / "last"
        if not last.exists():
            raise FileNotFoundError(f"{last}: no checkpoint to resume from")
        load_weights(self.model, last)
        self.state.update(load_training_state(last, optimizer=self._checkpointed(optimizers),
                                              scheduler=self._checkpointed(schedulers)))
        history = self.run_dir / "history.json"  # absent when the task never evaluates
        self.history = json.loads(history.read_text()) if history.exists() else []

    # -- evaluation, early stopping, checkpoints -----------------------------
    def _evaluates(self) -> bool:
        return self.config.eval_every > 0 and hasattr(self.task, "evaluate")

    def _evaluate_and_save(self, optimizers: dict, schedulers: dict) -> bool:
        cfg, state, model = self.config, self.state, self.model
        stop = torch.zeros(1, device=self.device)
        if self.dist.is_main:
            model.eval()
            with torch.no_grad():
                metrics = self.task.evaluate(model)
            model.train()
            record = {"epoch": state["epoch"], "step": state["step"],
                      "train_seconds": round(state["train_seconds"], 2), **metrics}
            self.history.append(record)
            key = cfg.early_stop_metric
            value = metrics.get(key) if key else None
            improved = value is not None and (state["best"] is None or value > state["best"])
            if improved:
                state["best"], state["bad_evals"] = value, 0
            elif key:
                state["bad_evals"] += 1
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "history.json").write_text(json.dumps(self.history, indent=2))
            self._save(optimizers, schedulers, "last")
            if improved or key is None:
                self._save(optimizers, schedulers, "best")
            self.stopped_early = bool(key) and state["bad_evals"] >= cfg.patience
            self.report("on_evaluate", metrics)
            stop[0] = float(self.stopped_early)
        if self.dist.world_size > 1:
            dist.broadcast(stop, src=0)
            for k in ("best", "bad_evals"):
                holder = [state[k]]
                dist.broadcast_object_list(holder, src=0)
                state[k] = holder[0]
        return bool(stop.item())

    def _save(self, optimizers: dict, schedulers: dict, which: str) -> None:
        if not self.dist.is_main:
            return
        config = {"model": self.task.model_config(), "trainer": asdict(self.config)}
        save_checkpoint(self.run_dir / "checkpoints" / which, model=self.model, config=config,
                        optimizer=self._checkpointed(optimizers),
                        scheduler=self._checkpointed(schedulers), trainer_state=dict(self.state))
