"""One model-agnostic trainer.

The trainer knows nothing about captions, questions or images: a task gives it
a model, a way to cut batches from its training data, a batch → loss function
and an evaluation. It handles the rest: device and mixed precision, gradient
clipping, the learning-rate schedule, progress bar and TensorBoard, early
stopping, checkpoints that resume exactly, and DDP under `torchrun` (it reads
RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU, NCCL on GPU; only rank 0 logs,
evaluates and saves).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from training.checkpoint import load_training_state, load_weights, save_checkpoint, unwrap

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
    amp: bool | None = None  # mixed precision; None: on when training on CUDA
    log_every: int = 20
    save_every: int = 0  # also save "last" every N steps (0: only after evaluations)
    eval_every: int = 1  # epochs between evaluations
    early_stop_metric: str | None = "cider_d"  # higher is better; None: never stop early
    patience: int = 3  # evaluations without improvement before stopping
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> TrainerConfig:
        return config_from_dict(cls, d, "trainer")


TRAINER_FLAGS = ("epochs", "batch_size", "lr", "device", "seed")


def with_cli_overrides(trainer: dict[str, Any], args: Any) -> dict[str, Any]:
    """`trainer` (a TrainerConfig dict) with every trainer flag given on the command line
    (--epochs, --batch-size, --lr, --device, --seed) taking precedence."""
    given = {name: getattr(args, name, None) for name in TRAINER_FLAGS}
    return {**trainer, **{name: value for name, value in given.items() if value is not None}}


def config_from_dict(cls, d: dict, what: str):
    """`cls(**d)` for a config dataclass, naming any key it does not know."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} settings: {sorted(unknown)}")
    return cls(**d)


class Task(Protocol):
    """What a task hands the trainer."""

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


class Trainer:
    def __init__(self, task: Task, config: TrainerConfig, run_dir: str | Path):
        self.task = task
        self.config = config
        self.run_dir = Path(run_dir)
        self.dist = self._init_distributed()
        self.device = self._pick_device()
        self.history: list[dict] = []

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

    # -- the loop ------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> dict:
        cfg = self.config
        seed_everything(cfg.seed)
        model = self.task.build_model().to(self.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        spe = self.steps_per_epoch()
        total = cfg.max_steps or cfg.epochs * spe
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
        state = {"step": 0, "epoch": 0, "best": None, "bad_evals": 0, "train_seconds": 0.0}
        last = self.run_dir / "checkpoints" / "last"
        if resume:
            if not last.exists():
                raise FileNotFoundError(f"{last}: no checkpoint to resume from")
            load_weights(model, last)
            state.update(load_training_state(last, optimizer=optimizer, scheduler=scheduler))
            self.history = json.loads((self.run_dir / "history.json").read_text())
        use_amp = cfg.amp if cfg.amp is not None else self.device.type == "cuda"
        scaler = torch.amp.GradScaler(self.device.type, enabled=use_amp and
                                      self.device.type == "cuda")
        wrapped = model
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        writer = self._writer()
        bar = tqdm(total=total, initial=state["step"], disable=not (cfg.progress and
                   self.dist.is_main), desc="train", unit="step", dynamic_ncols=True)
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
                with torch.autocast(self.device.type, enabled=use_amp):
                    loss, terms = self.task.loss(wrapped, batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state["step"] += 1
                bar.update(1)
                if self.dist.is_main and state["step"] % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                    if writer:
                        writer.add_scalar("train/loss", loss.item(), state["step"])
                        writer.add_scalar("train/lr", scheduler.get_last_lr()[0], state["step"])
                        for k, v in terms.items():
                            writer.add_scalar(f"train/{k}", v, state["step"])
                if state["step"] >= total:
                    break
                if cfg.save_every and state["step"] % cfg.save_every == 0:
                    state["train_seconds"] += time.perf_counter() - started
                    started = time.perf_counter()
                    self._save(model, optimizer, scheduler, state, "last")
            state["train_seconds"] += time.perf_counter() - started
            finished_epoch = state["step"] >= (epoch + 1) * spe
            if finished_epoch:
                state["epoch"] += 1
            stop = state["step"] >= total
            if finished_epoch and (state["epoch"] % cfg.eval_every == 0 or stop):
                stop = self._evaluate_and_save(model, optimizer, scheduler, state, writer) or stop
            elif stop:
                self._save(model, optimizer, scheduler, state, "last")
        bar.close()
        if writer:
            writer.close()
        if self.dist.world_size > 1:
            dist.barrier()
        return {"steps": state["step"], "epochs": state["epoch"], "best": state["best"],
                "train_seconds": state["train_seconds"], "history": self.history}

    # -- evaluation, early stopping, checkpoints -----------------------------
    def _evaluate_and_save(self, model, optimizer, scheduler, state, writer) -> bool:
        cfg = self.config
        stop = torch.zeros(1, device=self.device)
        if self.dist.is_main:
            model.eval()
            with torch.no_grad():
                metrics = self.task.evaluate(unwrap(model))
            model.train()
            record = {"epoch": state["epoch"], "step": state["step"],
                      "train_seconds": round(state["train_seconds"], 2), **metrics}
            self.history.append(record)
            log.debug("epoch %d: %s", state["epoch"], metrics)  # the line below shows it
            tqdm.write(f"epoch {state['epoch']}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, int | float)))
            if writer:
                for k, v in metrics.items():
                    if isinstance(v, int | float):
                        writer.add_scalar(f"val/{k}", v, state["step"])
            key = cfg.early_stop_metric
            value = metrics.get(key) if key else None
            improved = value is not None and (state["best"] is None or value > state["best"])
            if improved:
                state["best"], state["bad_evals"] = value, 0
            elif key:
                state["bad_evals"] += 1
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "history.json").write_text(json.dumps(self.history, indent=2))
            self._save(model, optimizer, scheduler, state, "last")
            if improved or key is None:
                self._save(model, optimizer, scheduler, state, "best")
            if key and state["bad_evals"] >= cfg.patience:
                tqdm.write(f"early stop: {key} has not improved for {cfg.patience} evaluations")
                stop[0] = 1
        if self.dist.world_size > 1:
            dist.broadcast(stop, src=0)
            for k in ("best", "bad_evals"):
                holder = [state[k]]
                dist.broadcast_object_list(holder, src=0)
                state[k] = holder[0]
        return bool(stop.item())

    def _save(self, model, optimizer, scheduler, state, which: str) -> None:
        if not self.dist.is_main:
            return
        config = {"model": self.task.model_config(), "trainer": asdict(self.config)}
        save_checkpoint(self.run_dir / "checkpoints" / which, model=model, config=config,
                        optimizer=optimizer, scheduler=scheduler, trainer_state=dict(state))

    def _writer(self):
        if not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the train extra; logging degrades gracefully
            log.warning("tensorboard is not installed; no TensorBoard logs")
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tb"))
