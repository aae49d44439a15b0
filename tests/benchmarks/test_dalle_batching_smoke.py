"""benchmarks/dalle_batching.py on a tiny random DALL-E bundle: the two policies admit
requests as they should, every request gets the same images under both, and the results
have the fields the report is written from. Latencies are checked only on the modelled
clock, where a step costs a fixed time; how fast the policies are on the real clock is
what the benchmark itself measures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

dalle_batching = load_benchmark("dalle_batching")
dalle_kv_cache = sys.modules["dalle_kv_cache"]  # loaded by dalle_batching
CODES = 16  # a 4 x 4 grid


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = dalle_kv_cache.DalleConfig(
        text_vocab_size=len(dalle_kv_cache.WORDS) + 4, text_length=8, image_vocab_size=13,
        image_grid=4, n_layer=2, n_head=2, n_embd=16)
    path, _ = dalle_kv_cache.random_dalle_bundle(config, tmp_path_factory.mktemp("repo"))
    return path


@pytest.fixture(scope="module")
def model(bundle: Path):
    return dalle_batching.DalleModel.from_bundle(bundle, device="cpu", intra_op_threads=1)


def test_static_makes_a_later_request_wait_for_the_batch_and_continuous_does_not(
        model) -> None:
    """A one-second step: the first request's row decodes alone; the second arrives
    during the first step. Static batching starts it when the first batch is done;
    continuous batching lets it join at the next step."""
    cost = dalle_batching.FlatStepCost(step_s=1.0, prefill_s=0.0)
    arrivals = [dalle_batching.Arrival(0.0, model.request("a red circle", 1, seed=1)),
                dalle_batching.Arrival(0.5, model.request("a blue square", 1, seed=2))]
    steps = CODES - 1  # the first code comes from the prefill, with the first step
    static = dalle_batching.serve_static(model, arrivals, 4, cost)
    continuous = dalle_batching.serve_continuous(model, arrivals, 4, cost)
    assert static.latencies_s == pytest.approx([steps, 2 * steps - 0.5], abs=0.2)
    assert continuous.latencies_s == pytest.approx([steps, steps + 0.5], abs=0.2)
    assert static.rows_per_step == [1] * steps * 2
    assert continuous.rows_per_step == [1] + [2] * (steps - 1) + [1]
    for a, b in zip(static.images, continuous.images, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_static_batch_holds_whole_requests_only(model) -> None:
    cost = dalle_batching.FlatStepCost(step_s=1.0, prefill_s=0.0)
    arrivals = [dalle_batching.Arrival(0.0, model.request("a red circle", n, seed=n))
                for n in (3, 2)]
    static = dalle_batching.serve_static(model, arrivals, 4, cost)
    continuous = dalle_batching.serve_continuous(model, arrivals, 4, cost)
    steps = CODES - 1
    # Static: the 3 rows, then the 2; continuous: the second request's first row fills
    # the 4th row at once, its second joins when the first request's rows leave.
    assert static.rows_per_step == [3] * steps + [2] * steps
    assert continuous.rows_per_step == [4] * steps + [1] * steps
    assert static.latencies_s == pytest.approx([steps, 2 * steps], abs=0.2)
    for a, b in zip(static.images, continuous.images, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_benchmark_reports_both_policies_on_both_clocks(bundle: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "batching"
    result = dalle_batching.main(["--bundle", str(bundle), "--requests", "8", "--loads", "0.5",
                                  "--max-images", "3", "--max-rows", "4", "--out", str(out)])
    assert json.loads(out.with_suffix(".json").read_text()) == result
    assert list(result["step_cost_ms_by_rows"]) == ["1", "2", "4", "8"]
    assert [c["clock"] for c in result["clocks"]] == ["measured", "flat step (modelled)"]
    for clock in result["clocks"]:
        (row,) = clock["rows"]
        assert row["identical_images"] and row["identical_requests"] == 8
        for name in ("continuous", "static"):
            served = row[name]
            assert served["requests"] == 8 and 8 <= served["images"] <= 24
            assert 0 < served["p50_ms"] <= served["p95_ms"]
            assert 1 <= served["mean_rows_per_step"] <= 4
        assert row["ratios"]["p50_static_over_continuous"] == pytest.approx(
            row["static"]["p50_ms"] / row["continuous"]["p50_ms"])
    assert "## Clock: flat step (modelled)" in out.with_suffix(".md").read_text()
