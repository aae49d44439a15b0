"""The layer-norm comparison script: each sentence encoder at each learning rate, and
the steps-to-target measured against each encoder's own best rate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "retrieval_ln_curve", ROOT / "scripts" / "retrieval_ln_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def history(rsums: list[float]) -> list[dict]:
    return [{"step": 100 * (i + 1), "rsum": r, "i2t_r1": r / 6, "t2i_r1": r / 6,
             "i2t_medr": 1.0, "t2i_medr": 1.0, "train_seconds": 10.0 * (i + 1)}
            for i, r in enumerate(rsums)]


def test_every_encoder_runs_at_every_learning_rate():
    script = load_script()
    runs = script.variants([1e-3, 1e-2])
    assert runs == {"gru-lr0.001": ["--lr", "0.001"], "gru-lr0.01": ["--lr", "0.01"],
                    "gru-ln-lr0.001": ["--layer-norm", "--lr", "0.001"],
                    "gru-ln-lr0.01": ["--layer-norm", "--lr", "0.01"]}
    # the smaller rate is drawn lighter, in the encoder's own hue
    light = script.colour("gru-lr0.001", [1e-3, 1e-2])
    dark = script.colour("gru-lr0.01", [1e-3, 1e-2])
    assert dark == script.HUES["gru"] and all(a >= b for a, b in zip(light, dark, strict=True))


def test_steps_to_target_use_each_encoders_best_rate():
    script = load_script()
    summary = script.summarise({
        "gru-lr0.001": history([100, 300, 500]),
        "gru-lr0.01": history([50, 80, 90]),  # diverged: not the GRU's tuned rate
        "gru-ln-lr0.001": history([10, 20, 30]),
        "gru-ln-lr0.01": history([200, 350, 400]),
    })
    assert summary["tuned"] == {"gru": "gru-lr0.001", "gru-ln": "gru-ln-lr0.01"}
    assert summary["rsum_target"] == 360.0  # 90% of the weaker tuned best (400)
    assert summary["gru-lr0.001"]["steps_to_target"] == 300
    assert summary["gru-ln-lr0.01"]["steps_to_target"] == 300
    assert summary["gru-ln-lr0.001"]["steps_to_target"] is None


def test_the_figure_has_a_legend_row_per_four_runs(tmp_path):
    from PIL import Image

    script = load_script()
    lrs = [1e-3, 3e-3, 1e-2]
    histories = {name: history([100, 200 + i, 300 + i])
                 for i, name in enumerate(script.variants(lrs))}
    script.plot(histories, lrs, tmp_path / "curve.png")
    width, height = Image.open(tmp_path / "curve.png").size
    assert (width, height) == (script.WIDTH * len(script.PANELS), script.HEIGHT + 2 * 24)
