"""From a generated shapes world to an evaluated bundle: train, export, evaluate."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle import load_bundle
from service.decoding import beam_search
from service.pipelines.caption import CaptionModel, CaptionRequest
from training.cli import main as glimpse
from training.data.readers import load_captions
from training.data.shapes import generate_shapes_world
from training.evaluate.caption import evaluate_bundle
from training.export.caption import TorchCaptionStep, export_caption, load_caption_model
from training.export.onnx import round_weights_to_half

ROOT = Path(__file__).resolve().parents[3]
TINY = str(ROOT / "configs" / "caption_tiny.json")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_shapes_world(out, {"train": 60, "val": 12, "test": 12, "novel": 12}, size=64,
                          seed=3, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    assert glimpse(["train", "caption", "--arch", "sat-soft", "--layer-norm", "--data",
                    str(world), "--out", str(run), "--config", TINY]) == 0
    return run


def test_training_writes_a_rebuildable_checkpoint(trained):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 300 // 16 + 1  # 60 images x 5 captions, batch 16
    assert {"cider_d", "semantic_exactness", "coverage"} <= set(summary["history"][0])
    model, vocab, config = load_caption_model(trained / "checkpoints" / "best")
    assert config["model"]["caption"]["layer_norm"] is True
    assert len(vocab) == model.config.vocab_size


def test_bundle_decodes_like_the_pytorch_model(trained, world, tmp_path):
    bundle = export_caption(trained, tmp_path / "repo", "caption-test")
    assert bundle == tmp_path / "repo" / "caption-test" / "1"
    manifest = load_bundle(bundle).manifest
    assert manifest.architecture == "sat-soft-ln"
    assert manifest.decoding.attention.grid == (8, 8)
    model, vocab, _ = load_caption_model(trained / "checkpoints" / "best")
    round_weights_to_half(model)  # as export did: the bundle is this model, exactly
    served = CaptionModel.from_bundle(bundle)
    images = load_captions(world, "test")
    arrays = [served.as_array(world / im.path) for im in images]
    params = served.params(beam_size=3, max_length=12, num_captions=2)
    onnx_out = served.caption_batch([CaptionRequest(a, params) for a in arrays])
    torch_step = TorchCaptionStep(model, top_k=manifest.decoding.top_k)
    context, state = torch_step.encode(torch.from_numpy(np.stack(arrays)))
    torch_out = beam_search(torch_step, state, context, bos_id=vocab.bos_id,
                            eos_id=vocab.eos_id, beam_size=3, max_length=12, num_return=2,
                            top_k=manifest.decoding.top_k)
    for got, want in zip(onnx_out, torch_out, strict=True):
        assert [c.tokens for c in got.captions] == [h.tokens for h in want]
        np.testing.assert_allclose([c.log_prob for c in got.captions],
                                   [h.log_prob for h in want], atol=1e-4)


def test_eval_bundle_reports_metrics_and_records_them(trained, world, tmp_path):
    bundle = export_caption(trained, tmp_path / "repo", "caption-test")
    metrics = evaluate_bundle(bundle, world, split="novel", beam_size=2, progress=False)
    assert metrics["n_images"] == 12 and metrics["split"] == "novel"
    for key in ("bleu_4", "cider_d", "semantic_exactness", "coverage"):
        assert 0.0 <= metrics[key] <= 10.0
    assert glimpse(["eval", "bundle", str(bundle), "--data", str(world), "--split", "novel",
                    "--beam-size", "2", "--no-meteor", "--write-manifest"]) == 0
    recorded = load_bundle(bundle).manifest.metrics  # still a valid bundle
    assert recorded["novel"]["beam2"]["cider_d"] == metrics["cider_d"]


def test_export_refuses_an_existing_version_and_bad_names(trained, tmp_path):
    export_caption(trained, tmp_path, "caption-test", version=2)
    with pytest.raises(FileExistsError):
        export_caption(trained, tmp_path, "caption-test", version=2)
    with pytest.raises(ValueError, match="lowercase"):
        export_caption(trained, tmp_path, "Caption_Test")


def test_export_refuses_graphs_that_fail_parity(trained, tmp_path, monkeypatch):
    # The graphs are written, then the model moves, as if they came from another run.
    import training.export.caption as caption_export

    write_graphs = caption_export.export_caption_graphs

    def graphs_of_another_model(model, out_dir, **kwargs):
        specs = write_graphs(model, out_dir, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        return specs

    monkeypatch.setattr(caption_export, "export_caption_graphs", graphs_of_another_model)
    with pytest.raises(RuntimeError, match="disagree on .*step.log_probs"):
        export_caption(trained, tmp_path / "repo", "caption-test")
    left = [p for p in (tmp_path / "repo").rglob("*") if p.is_file() or p.name.startswith(".")]
    assert left == []  # neither a bundle nor its staging directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_caption_training_runs_unchanged_under_torchrun(world, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", "-m", "training.cli", "train", "caption",
         "--arch", "nic", "--data", str(world), "--out", str(run), "--config", TINY],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both ranks print a summary object; their lines may interleave.
    lines = [json.loads(m) for m in re.findall(r'\{"run_dir".*?\}', proc.stdout)]
    # 300 pairs split over 2 ranks, batch 16: 10 steps on each rank.
    assert sorted((r["rank"], r["steps"]) for r in lines) == [(0, 10), (1, 10)]
    assert json.loads((run / "summary.json").read_text())["steps"] == 10
    assert (run / "checkpoints" / "best" / "model.safetensors").exists()


def test_fine_tuning_starts_from_an_earlier_run(trained, world, tmp_path):
    from safetensors.torch import load_file

    from training.tasks.caption import CaptionTask, CaptionTaskConfig

    tiny = json.loads(Path(TINY).read_text())
    task = CaptionTask(CaptionTaskConfig.from_dict(
        {**tiny, "data": str(world), "init_from": str(trained)}))
    assert task.caption_config.layer_norm is True  # the earlier run's architecture
    model = task.build_model()
    weights = load_file(str(trained / "checkpoints" / "best" / "model.safetensors"))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[name])
    # the config's model settings go over the earlier run's: here its encoder is frozen
    frozen = CaptionTask(CaptionTaskConfig.from_dict(
        {**tiny, "data": str(world), "init_from": str(trained),
         "model": {"train_encoder": False}}))
    assert (frozen.caption_config.layer_norm, frozen.caption_config.train_encoder,
            frozen.on_features) == (True, False, True)
    frozen_model = frozen.build_model()
    torch.testing.assert_close(frozen_model.state_dict(), model.state_dict())
    assert frozen.train_features[0].shape == (60, 64, 16)  # each image's 8 x 8 grid
    other = tmp_path / "other"
    generate_shapes_world(other, {"train": 3, "val": 2, "test": 2, "novel": 2}, size=64,
                          seed=9, workers=1, progress=False)
    with pytest.raises(ValueError, match="vocabulary differs"):
        CaptionTask(CaptionTaskConfig.from_dict(
            {**tiny, "data": str(other), "init_from": str(trained)}))
