"""The discriminator-trunk probe: supervised attribute learning of D's trunk on real images."""

from __future__ import annotations

import json

from script_modules import load_script

from training.data.shapes import generate_shapes_world


def test_probe_reports_each_attributes_validation_accuracy_at_each_step(tmp_path):
    world = tmp_path / "world"
    generate_shapes_world(world, {"train": 24, "val": 6}, size=64, workers=1, progress=False,
                          max_objects=1)
    out = tmp_path / "probe.json"
    results = load_script("discriminator_probe").main([
        "--data", str(world), "--trunks", "dcgan", "residual", "--ndf", "4",
        "--batch-size", "8", "--steps", "1", "3", "--out", str(out)])
    assert [r["trunk"] for r in results] == ["dcgan", "residual"]
    for r in results:
        assert set(r["val"]) == {1, 3}
        for scores in r["val"].values():
            assert set(scores) == {"shape", "colour", "size"}
            assert all(0.0 <= a <= 1.0 for a in scores.values())
        assert r["seconds_per_step"] > 0 and r["parameters"] > 0
    assert json.loads(out.read_text())[1]["val"]["3"] == results[1]["val"][3]
