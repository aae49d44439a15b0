"""benchmarks/dalle_kv_cache.py on a tiny random transformer: all ways draw the same codes
and the results have the fields the report is written from. How fast each way is, is
what the benchmark itself measures; nothing here depends on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

dalle_kv_cache = load_benchmark("dalle_kv_cache")
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--text-length", "8",
        "--grid", "4", "--codebook", "13"]


def test_quarters_average_the_codes_of_each_quarter() -> None:
    per_code = np.arange(1, 9) / 1000  # 1..8 ms
    assert dalle_kv_cache.quarter_means_ms(per_code) == pytest.approx(
        {"q1": 1.5, "q2": 3.5, "q3": 5.5, "q4": 7.5})
    # The cached way's code 0 is the prefill: left out of its first quarter.
    assert dalle_kv_cache.quarter_means_ms(per_code, skip_first=True)["q1"] == pytest.approx(2)


def test_cached_and_uncached_decoding_draw_the_same_codes(tmp_path: Path) -> None:
    out = tmp_path / "kv"
    result = dalle_kv_cache.main([*TINY, "--batches", "1", "3", "--repeats", "2",
                                  "--out", str(out)])
    assert json.loads(out.with_suffix(".json").read_text()) == result
    assert result["codes"] == 16 and result["transformer"]["n_layer"] == 2
    assert result["machine"]["providers_used"] == ["CPUExecutionProvider"]
    assert [r["batch"] for r in result["rows"]] == [1, 3]
    for row in result["rows"]:
        assert row["identical_codes"] and row["identical_rows"] == row["batch"]
        assert row["max_abs_logit_diff"] < 1e-4
        assert set(row["total_s"]) == {"cached", "copying", "uncached"}
        assert row["uncached_over_cached"] == pytest.approx(
            row["total_s"]["uncached"] / row["total_s"]["cached"])
        assert row["copying_over_cached"] == pytest.approx(
            row["total_s"]["copying"] / row["total_s"]["cached"])
        for way in ("cached", "copying", "uncached"):
            assert set(row["ms_per_code_by_quarter"][way]) == {"q1", "q2", "q3", "q4"}
    report = out.with_suffix(".md").read_text()
    assert "| 3 | " in report and "yes (3/3 rows)" in report
