"""Checkpoints without pickle.

A checkpoint is a directory:

    config.json            how to rebuild the model (and the task that trained it)
    model.safetensors      weights of the unwrapped model
    optimizer.safetensors  optimizer tensors, keyed "<param index>.<name>" (a task with
                           several optimizers: "<optimizer>/<param index>.<name>")
    trainer_state.json     step, epoch, scheduler(s), optimizer hyper-parameters, RNG states,
                           early-stopping bookkeeping

Export and the service read only the first two; the rest makes resume exact.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"

# One optimizer, or several by name (a GAN's generator and discriminator).
Optimizers = torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                    meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, scalars in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _optimizers_state(optimizer: Optimizers, scheduler: Any) -> tuple[dict, dict]:
    """Tensors and JSON state of one optimizer (and scheduler), or of several by name."""
    if not isinstance(optimizer, Mapping):
        tensors, meta = _optimizer_tensors(optimizer)
        return tensors, {"optimizer": meta,
                         "scheduler": scheduler.state_dict() if scheduler is not None else None}
    tensors, metas = {}, {}
    for name, opt in optimizer.items():
        opt_tensors, metas[name] = _optimizer_tensors(opt)
        tensors.update({f"{name}/{key}": value for key, value in opt_tensors.items()})
    schedulers = {name: s.state_dict() for name, s in (scheduler or {}).items()}
    return tensors, {"optimizers": metas, "schedulers": schedulers}


def _load_optimizers(path: Path, optimizer: Optimizers, scheduler: Any,
                     tensors: dict[str, torch.Tensor], state: dict) -> None:
    if not isinstance(optimizer, Mapping):
        if "optimizer" not in state:
            raise ValueError(f"{path}: saved with optimizers {sorted(state['optimizers'])}, "
                             "not one")
        _load_optimizer(optimizer, tensors, state.pop("optimizer"))
        sched = state.pop("scheduler")
        if scheduler is not None and sched is not None:
            scheduler.load_state_dict(sched)
        return
    metas = state.pop("optimizers", None)
    if metas is None or set(metas) != set(optimizer):
        saved = sorted(metas) if metas is not None else "one unnamed optimizer"
        raise ValueError(f"{path}: saved with {saved}, not optimizers {sorted(optimizer)}")
    for name, opt in optimizer.items():
        prefix = f"{name}/"
        _load_optimizer(opt, {k[len(prefix):]: v for k, v in tensors.items()
                              if k.startswith(prefix)}, metas[name])
    schedulers = state.pop("schedulers")
    for name, sched in (scheduler or {}).items():
        sched.load_state_dict(schedulers[name])


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))


def _jsonable(x: Any) -> Any:
    if isinstance(x, tuple | list):
        return [_jsonable(v) for v in x]
    return x


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, config: dict,
                    optimizer: Optimizers | None = None,
                    scheduler: Any = None, trainer_state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically enough for a crash not to leave half a model."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_file(weights, str(tmp / MODEL_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    if optimizer is not None:
        opt_tensors, opt_state = _optimizers_state(optimizer, scheduler)
        rng_tensors, rng_meta = rng_state()
        save_file({**opt_tensors, **rng_tensors}, str(tmp / OPTIMIZER_FILE))
        state = {**opt_state, "rng": rng_meta, **(trainer_state or {})}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
    if path.exists():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    tmp.rename(path)
    return path


def load_config(path: str | Path) -> dict:
    return json.loads((Path(path) / CONFIG_FILE).read_text())


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    state = load_file(str(Path(path) / MODEL_FILE))
    unwrap(model).load_state_dict(state)
    return model


def load_training_state(path: str | Path, *, optimizer: Optimizers,
                        scheduler: Any = None, restore_rng: bool = True) -> dict:
    """Restore optimizer(s), scheduler(s) and RNG state; return the trainer's own bookkeeping.

    `optimizer` and `scheduler` take the form they were saved in: one each, or
    mappings by the same names."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    tensors = load_file(str(path / OPTIMIZER_FILE))
    opt_tensors = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
    _load_optimizers(path, optimizer, scheduler, opt_tensors, state)
    rng_meta = state.pop("rng")
    if restore_rng:
        set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, rng_meta)
    return state


def checkpoint_dir(run_dir: Path) -> Path:
    """The run's best checkpoint, else its last."""
    for which in ("best", "last"):
        path = run_dir / "checkpoints" / which
        if (path / "model.safetensors").exists():
            return path
    if (run_dir / "model.safetensors").exists():
        return run_dir
    raise FileNotFoundError(f"{run_dir}: no checkpoint (expected checkpoints/best or "
                            "checkpoints/last with model.safetensors)")
