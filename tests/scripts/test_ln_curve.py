"""The layer-norm comparison script: each variant at each learning rate, and the
steps-to-target measured against each variant's own best rate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from script_modules import ROOT, load_script


def load():
    return load_script("ln_curve")


def history(rsums: list[float]) -> list[dict]:
    return [{"step": 100 * (i + 1), "rsum": r, "i2t_r1": r / 6, "t2i_r1": r / 6,
             "i2t_medr": 1.0, "t2i_medr": 1.0, "train_seconds": 10.0 * (i + 1)}
            for i, r in enumerate(rsums)]


def test_every_variant_runs_at_every_learning_rate():
    script = load()
    runs = script.variants([1e-3, 1e-2])
    assert runs == {"plain-lr0.001": ["--lr", "0.001"], "plain-lr0.01": ["--lr", "0.01"],
                    "ln-lr0.001": ["--layer-norm", "--lr", "0.001"],
                    "ln-lr0.01": ["--layer-norm", "--lr", "0.01"]}
    # the smaller rate is drawn lighter, in the variant's own hue
    light = script.colour("plain-lr0.001", [1e-3, 1e-2])
    dark = script.colour("plain-lr0.01", [1e-3, 1e-2])
    assert dark == script.HUES["plain"] and all(a >= b for a, b in zip(light, dark, strict=True))


def test_steps_to_target_use_each_encoders_best_rate():
    script = load()
    summary = script.summarise({
        "plain-lr0.001": history([100, 300, 500]),
        "plain-lr0.01": history([50, 80, 90]),  # diverged: not the plain GRU's tuned rate
        "ln-lr0.001": history([10, 20, 30]),
        "ln-lr0.01": history([200, 350, 400]),
    }, script.TASKS["retrieval"])
    assert summary["tuned"] == {"plain": "plain-lr0.001", "ln": "ln-lr0.01"}
    assert summary["target"] == 360.0  # 90% of the weaker tuned best (400)
    assert summary["plain-lr0.001"]["steps_to_target"] == 300
    assert summary["ln-lr0.01"]["steps_to_target"] == 300
    assert summary["ln-lr0.001"]["steps_to_target"] is None
    assert summary["ln-lr0.01"]["final"]["rsum"] == 400


def test_the_figure_has_a_legend_row_per_four_runs(tmp_path):
    from PIL import Image

    script = load()
    lrs = [1e-3, 3e-3, 1e-2]
    histories = {name: history([100, 200 + i, 300 + i])
                 for i, name in enumerate(script.variants(lrs))}
    task = script.TASKS["retrieval"]
    script.plot(histories, task, lrs, tmp_path / "curve.png")
    width, height = Image.open(tmp_path / "curve.png").size
    assert (width, height) == (script.WIDTH * len(task.panels), script.HEIGHT + 2 * 24)


def test_a_caption_run_starts_from_the_base_config_without_early_stopping(tmp_path,
                                                                         monkeypatch):
    script = load()
    calls = []

    def fake_glimpse(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        (out / "history.json").write_text(json.dumps(history([1.0, 2.0])))
        return 0

    monkeypatch.setattr(script, "glimpse", fake_glimpse)
    args = argparse.Namespace(runs=tmp_path, retrain=False, data="data/x",
                              encoder_init="runs/encoder", epochs=4, seed=0)
    task = script.TASKS["caption"]
    hist = script.train(task, ["--layer-norm", "--lr", "0.003"], tmp_path / "ln-lr0.003", args)
    assert [h["rsum"] for h in hist] == [1.0, 2.0]
    argv = calls[0]
    assert argv[:4] == ["train", "caption", "--arch", "nic"]
    assert argv[-3:] == ["--layer-norm", "--lr", "0.003"]
    config = json.loads(Path(argv[argv.index("--config") + 1]).read_text())
    base = json.loads((ROOT / "configs" / "caption_nic.json").read_text())
    assert config["model"] == base["model"]
    assert config["trainer"] == {**base["trainer"], "early_stop_metric": "cider_d",
                                 "patience": 10**6}
    script.train(task, [], tmp_path / "ln-lr0.003", args)  # a finished run is reused
    assert len(calls) == 1
