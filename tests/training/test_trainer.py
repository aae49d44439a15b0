import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.callbacks import Callback
from training.checkpoint import load_config, load_training_state, save_checkpoint
from training.trainer import Trainer, TrainerConfig, epoch_order

sys.path.insert(0, str(Path(__file__).parent))
from toy_task import ToyTask, TwoOptimizerToyTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _config(**kw) -> TrainerConfig:
    base = dict(epochs=4, batch_size=16, lr=0.01, warmup_steps=3, progress=False, device="cpu",
                log_every=1, early_stop_metric="score")
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


class CrashAt:
    """Dies when asked for the batch of optimizer step `at` (counting from 1)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def batch(self, indices, device):
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        return super().batch(indices, device)


class CrashingTask(CrashAt, ToyTask):
    pass


class CrashingTwoOptimizerTask(CrashAt, TwoOptimizerToyTask):
    pass


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


def test_early_stopping_is_the_tasks_choice(tmp_path):
    assert TrainerConfig().early_stop_metric is None
    task = ToyTask(eval_scores=[0.9, 0.5, 0.4, 0.3, 0.2])
    out = Trainer(task, _config(epochs=5, patience=2, early_stop_metric=None), tmp_path).fit()
    assert out["epochs"] == 5 and out["best"] is None
    # With no metric to choose by, "best" is the latest evaluation, like "last".
    assert _weights(tmp_path, "best").keys() == _weights(tmp_path, "last").keys()
    for k, v in _weights(tmp_path, "best").items():
        torch.testing.assert_close(v, _weights(tmp_path, "last")[k], rtol=0, atol=0)


class BfloatRecordingTask(ToyTask):
    """Records the dtype its model computes in."""

    def __init__(self):
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def loss(self, model, batch):
        x, y = batch
        prediction = model(x).squeeze(-1)
        self.dtypes.add(prediction.dtype)
        loss = torch.nn.functional.mse_loss(prediction.float(), y)
        return loss, {"mse": loss.item()}


def test_mixed_precision_on_cpu_autocasts_to_bfloat16_and_learns(tmp_path):
    task = BfloatRecordingTask()
    out = Trainer(task, _config(epochs=6, lr=0.1, amp=True), tmp_path).fit()
    assert task.dtypes == {torch.bfloat16}
    mses = [h["mse"] for h in out["history"]]  # evaluated in float32
    assert mses[-1] < mses[0] * 0.5
    assert {v.dtype for v in _weights(tmp_path).values()} == {torch.float32}


class Recorder(Callback):
    def __init__(self):
        self.events: list[str] = []
        self.logs: list[dict] = []

    def on_fit_start(self, trainer):
        self.events.append(f"start@{trainer.state['step']}")

    def on_train_batch_end(self, trainer):
        self.events.append("batch")

    def on_log(self, trainer, logs):
        self.logs.append({"step": trainer.state["step"], **logs})

    def on_evaluate(self, trainer, metrics):
        self.events.append(f"evaluate@{trainer.state['epoch']}")

    def on_fit_end(self, trainer):
        self.events.append("end")


def test_callbacks_replace_the_default_reports(tmp_path):
    recorder = Recorder()
    Trainer(ToyTask(), _config(epochs=2, log_every=4), tmp_path, callbacks=[recorder]).fit()
    assert recorder.events == ["start@0", *["batch"] * 6, "evaluate@1", *["batch"] * 6,
                               "evaluate@2", "end"]
    assert [r["step"] for r in recorder.logs] == [4, 8, 12]
    assert set(recorder.logs[0]) == {"step", "loss", "lr", "mse"}
    assert not (tmp_path / "tb").exists()  # TensorBoard is one of the defaults left out
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2


def test_own_step_task_steps_every_optimizer_and_resumes_exactly(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    recorder = Recorder()
    task = TwoOptimizerToyTask()
    untrained = task.evaluate(task.build_model())["mse"]
    out = Trainer(task, _config(epochs=4, save_every=4), straight, callbacks=[recorder]).fit()
    assert out["history"][-1]["mse"] < 0.1 * untrained
    assert set(recorder.logs[0]) == {"step", "lr/first", "lr/second", "loss_first",
                                     "loss_second"}
    state = json.loads((straight / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"first", "second"}
    with pytest.raises(Crash):
        Trainer(CrashingTwoOptimizerTask(at=11), _config(epochs=4, save_every=4), crashed).fit()
    Trainer(TwoOptimizerToyTask(), _config(epochs=4, save_every=4), crashed).fit(resume=True)
    a, b = _weights(straight), _weights(crashed)
    assert a.keys() == b.keys() == {"first.weight", "first.bias", "second.weight",
                                    "second.bias"}
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_optimizers_resume_only_in_the_form_they_were_saved(tmp_path):
    model = torch.nn.Linear(2, 1)
    one = torch.optim.SGD(model.parameters(), lr=0.1)
    named = {"g": torch.optim.SGD(model.parameters(), lr=0.1)}
    save_checkpoint(tmp_path / "one", model=model, config={}, optimizer=one)
    save_checkpoint(tmp_path / "named", model=model, config={}, optimizer=named)
    with pytest.raises(ValueError, match="not optimizers"):
        load_training_state(tmp_path / "one", optimizer=named)
    with pytest.raises(ValueError, match="not one"):
        load_training_state(tmp_path / "named", optimizer=one)
    with pytest.raises(ValueError, match="not optimizers"):
        load_training_state(tmp_path / "named", optimizer={"d": one})


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
from toy_task import ToyTask, TwoOptimizerToyTask
from training.trainer import Trainer, TrainerConfig
cfg = TrainerConfig(epochs=2, batch_size=8, lr=0.01, warmup_steps=2, progress=False,
                    device="cpu", early_stop_metric="score")
out = Trainer(ToyTask(), cfg, {run!r}).fit()
import torch.distributed as dist
from pathlib import Path
from safetensors.torch import save_file
rank = dist.get_rank()
Path({run!r}, f"rank{{rank}}.json").write_text(str(out["steps"]))
own = Trainer(TwoOptimizerToyTask(), cfg, {own_run!r})
own.fit()
save_file(own.model.state_dict(), str(Path({own_run!r}, f"rank{{rank}}.safetensors")))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(tmp_path):
    script = tmp_path / "ddp_run.py"
    run = tmp_path / "run"
    own_run = tmp_path / "own"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), run=str(run),
                                        own_run=str(own_run)))
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
    # A task's own step: each rank steps on its own shard with the mean gradient, so the
    # ranks stay identical (with rank-local gradients they would drift apart).
    a, b = (load_file(str(own_run / f"rank{r}.safetensors")) for r in (0, 1))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert load_file(str(own_run / "checkpoints" / "last" / "model.safetensors")).keys() == a.keys()
