"""The building blocks of benchmarks/serve_load.py on the tiny caption bundle.

One real server whose queue holds a single request that waits 0.5 s for a companion:
closed-loop requests all succeed, open-loop arrivals during that wait are refused
with 503, and the server's RSS, CPU time and batch sizes can be read. How fast they are
refused, and the latencies and rates, are what the benchmark itself measures and checks
against its targets (`check_targets`); here nothing depends on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmark_scripts import ROOT, load_benchmark, load_module

serve_load = load_benchmark("serve_load")
tiny_bundle = load_module("tiny_bundle", ROOT / "tests" / "service" / "tiny_bundle.py")

HOLD_MS = 500


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle.build_caption_bundle(tmp_path_factory.mktemp("bundles"), "caption-tiny")


@pytest.fixture(scope="module")
def bodies() -> list[bytes]:
    return [serve_load.multipart_body(tiny_bundle.sample_png(seed), {"beam_size": "2"})
            for seed in range(4)]


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    root = tmp_path_factory.mktemp("serve_load")
    repository = root / "repository"
    serve_load.copy_bundle(bundle, repository)
    # Each batch waits HOLD_MS for a companion, a lone request too (idle_dispatch off), and
    # one request may queue: an open loop at 40 requests/s overloads it on any machine.
    settings = {"max_batch_size": "2", "max_queue_delay_ms": str(HOLD_MS),
                "max_queue_size": "1", "idle_dispatch": "false", "intra_op_threads": "1",
                "log_level": "warning"}
    with serve_load.serve(repository, settings, root / "server.log") as running:
        yield running


def test_percentiles_are_in_milliseconds() -> None:
    stats = serve_load.percentiles_ms([i / 1000 for i in range(1, 101)])
    assert stats == pytest.approx({"p50_ms": 50.5, "p95_ms": 95.05, "p99_ms": 99.01})
    assert serve_load.percentiles_ms([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None}


def test_process_counters_read_proc() -> None:
    cpu0 = serve_load.cpu_seconds(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    assert serve_load.cpu_seconds(os.getpid()) - cpu0 >= 0.2
    assert serve_load.rss_kib(os.getpid()) > 10_000  # the interpreter with numpy and torch


def test_batch_totals_sum_every_model() -> None:
    text = ('glimpse_batch_size_sum{model="a/1"} 12.0\nglimpse_batch_size_count{model="a/1"} 4.0\n'
            'glimpse_batch_size_sum{model="b/1"} 3.0\nglimpse_batch_size_count{model="b/1"} 1.0\n'
            'glimpse_batch_size_bucket{model="a/1",le="1.0"} 1.0\n')
    assert serve_load.batch_totals(text) == (15.0, 5.0)


def test_copy_bundle_uses_the_manifest_names(bundle: Path, tmp_path: Path) -> None:
    copied = serve_load.copy_bundle(bundle, tmp_path / "repo")
    assert copied == tmp_path / "repo" / "caption-tiny" / "1"
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in bundle.iterdir())


def test_offline_batched_counts_whole_batches(bundle: Path) -> None:
    model = serve_load.CaptionModel.from_bundle(bundle, device="cpu", intra_op_threads=1)
    images = [tiny_bundle.sample_png(seed) for seed in range(3)]
    batched = serve_load.offline_batched(model, images, {"beam_size": 2}, 4, 0.2)
    assert batched["batch_size"] == 4 and batched["batches"] >= 1
    elapsed = batched["batches"] * batched["ms_per_batch"] / 1000
    assert batched["images_per_s"] == pytest.approx(4 * batched["batches"] / elapsed)
    single = serve_load.offline_single(model, images, {"beam_size": 2}, 5)
    assert single["images"] == 5
    assert 0 < single["p50_ms"] <= single["p99_ms"]


def test_closed_loop_requests_all_succeed(server, bodies: list[bytes]) -> None:
    out = serve_load.measured(server, serve_load.closed_loop(server.url, bodies, 1, total=3))
    summary = out.summary()
    assert summary["statuses"] == {"200": 3}
    assert out.mean_batch == 1.0  # alone in the queue: no companion ever came
    assert server.rss_kib() > 10_000


def test_open_loop_overload_is_refused(server, bodies: list[bytes]) -> None:
    out, _ = asyncio.run(serve_load.open_loop(server.url, bodies, 40.0, 0.4, seed=1))
    assert out.count(200) >= 1
    assert out.count(503) >= 3
    assert out.count() == out.count(200) + out.count(503)


def _level(concurrency: int, rps: float, p50: float, p99: float) -> dict:
    return {"concurrency": concurrency, "requests_per_s": rps, "p50_ms": p50, "p95_ms": p99,
            "p99_ms": p99, "mean_batch": 1.0, "server_cores": 1.0, "client_cores": 0.1}


def test_targets_compare_the_runs_of_one_result() -> None:
    result = {
        "offline": {"pinned": {"intra_op_threads": 1,
                               "single": {"p50_ms": 10.0, "p95_ms": 11.0, "p99_ms": 12.0,
                                          "images_per_s": 95.0},
                               "batched": {"batch_size": 8, "images_per_s": 300.0}}},
        "batched": {"levels": [_level(1, 80.0, 13.0, 15.0), _level(32, 270.0, 110.0, 130.0)],
                    "memory": {"growth_pct": 12.5, "requests_after_warmup": 10_000,
                               "rss_after_warmup_kib": 100_000,
                               "rss_after_requests_kib": 112_500}},
        "unbatched": [_level(1, 85.0, 11.0, 12.0), _level(32, 88.0, 360.0, 400.0)],
        "overload": {"request_timeout_s": 2.0, "timeouts_504": 0, "target_rate_per_s": 540.0,
                     "achieved_rate_per_s": 530.0, "max_queue_size": 16,
                     "accepted": {"ok": 1000, "p50_ms": 90.0, "p95_ms": 150.0, "p99_ms": 180.0},
                     "rejected": {"count": 900, "p50_ms": 2.0, "p95_ms": 6.0, "p99_ms": 9.0}},
    }
    targets = serve_load.check_targets(result)
    assert [t["met"] for t in targets] == [True, True, False, True, True, False]
    assert targets[0]["measured"] == "90% (270.0 vs 300.0 img/s)"
    assert targets[1]["measured"] == "3.07x (270.0 vs 88.0 req/s)"
    assert targets[2]["measured"] == "+3.00 ms (13.00 vs 10.00 ms)"
    assert targets[5]["measured"] == "+12.5%"
