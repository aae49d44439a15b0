import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_config
from training.trainer import Trainer, TrainerConfig, epoch_order

sys.path.insert(0, str(Path(__file__).parent))
from toy_task import ToyTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _config(**kw) -> TrainerConfig:
    base = dict(epochs=4, batch_size=16, lr=0.01, warmup_steps=3, progress=False, device="cpu",
                log_every=1)
    base.update(kw)
    return TrainerConfig(**base)


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / which / "model.safetensors"))


def test_training_reduces_loss_and_writes_checkpoints(tmp_path):
    task = ToyTask()
    out = Trainer(task, _config(epochs=6, lr=0.1), tmp_path).fit()
    mses = [h["mse"] for h in out["history"]]
    assert mses[-1] < mses[0] * 0.5
    assert out["steps"] == 6 * 6
    assert load_config(tmp_path / "checkpoints" / "best")["model"] == {"dim": 4}
    assert (tmp_path / "tb").is_dir()
    assert json.loads((tmp_path / "history.json").read_text()) == out["history"]


class Crash(RuntimeError):
    pass


class CrashingTask(ToyTask):
    """Dies when asked for the batch of optimizer step `at` (counting from 1)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def batch(self, indices, device):
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        return super().batch(indices, device)


def test_resume_continues_exactly(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    Trainer(ToyTask(), _config(epochs=4, save_every=4), straight).fit()
    # Crash at step 11: the last save was at step 8, in the middle of epoch 2.
    with pytest.raises(Crash):
        Trainer(CrashingTask(at=11), _config(epochs=4, save_every=4), crashed).fit()
    state = json.loads((crashed / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"]) == (8, 1)
    Trainer(ToyTask(), _config(epochs=4, save_every=4), crashed).fit(resume=True)
    paused = crashed
    a, b = _weights(straight), _weights(paused)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_early_stopping_on_metric(tmp_path):
    task = ToyTask(eval_scores=[0.5, 0.7, 0.6, 0.65, 0.4, 0.9])
    out = Trainer(task, _config(epochs=6, patience=2), tmp_path).fit()
    assert out["epochs"] == 4  # 0.7 at epoch 2, no better at 3 and 4 → stop
    assert out["best"] == 0.7
    best = load_config(tmp_path / "checkpoints" / "best")
    assert best["trainer"]["patience"] == 2
    state = json.loads((tmp_path / "checkpoints" / "best" / "trainer_state.json").read_text())
    assert state["epoch"] == 2


def test_epoch_order_shards_are_disjoint_and_deterministic():
    a = epoch_order(10, seed=1, epoch=3, rank=0, world_size=2)
    b = epoch_order(10, seed=1, epoch=3, rank=1, world_size=2)
    assert len(a) == len(b) == 5
    assert set(a.tolist()).isdisjoint(b.tolist())
    assert torch.equal(a, epoch_order(10, seed=1, epoch=3, rank=0, world_size=2))
    assert not torch.equal(a, epoch_order(10, seed=1, epoch=4, rank=0, world_size=2))


def test_unknown_trainer_setting_is_named():
    with pytest.raises(ValueError, match="bogus"):
        TrainerConfig.from_dict({"bogus": 1})


DDP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from toy_task import ToyTask
from training.trainer import Trainer, TrainerConfig
cfg = TrainerConfig(epochs=2, batch_size=8, lr=0.01, warmup_steps=2, progress=False,
                    device="cpu")
out = Trainer(ToyTask(), cfg, {run!r}).fit()
import torch.distributed as dist
from pathlib import Path
Path({run!r}, f"rank{{dist.get_rank()}}.json").write_text(str(out["steps"]))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(tmp_path):
    script = tmp_path / "ddp_run.py"
    run = tmp_path / "run"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), run=str(run)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", str(script)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 96 examples / 2 ranks / batch 8 = 6 steps per epoch, on both ranks.
    assert [(run / f"rank{r}.json").read_text() for r in (0, 1)] == ["12", "12"]
    # Only rank 0 wrote: one history with two evaluations, one checkpoint set.
    assert len(json.loads((run / "history.json").read_text())) == 2
    assert (run / "checkpoints" / "last" / "model.safetensors").exists()
