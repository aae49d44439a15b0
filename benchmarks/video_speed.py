"""Clips per second through /v1/videos/activities, batched vs unbatched, in one run.

One activity bundle, one machine, one run: `python -m service` in a subprocess on a
repository holding only that bundle, once with `max_batch_size` 8 (batched) and once
with 1 (unbatched), and closed-loop clients sending APNG clips of the clip set's
test split back to back at each concurrency for `--duration` seconds. Also the
offline pipeline (`ActivityModel.run_batch`, frames already decoded) at batch 1 and 8:
the most batching can add to the model's own work.

    python benchmarks/video_speed.py --bundle model_repository/activity-lrcn/1 \
        --clips data/clips

Writes benchmarks/results/video_speed.json and .md (`--out` changes the stem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from service.client import GlimpseClient
from service.pipelines.activity import ActivityModel
from service.videos import VideoLimits, decode_clip

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_totals(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of the glimpse_batch_size histogram."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("glimpse_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("glimpse_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


@contextmanager
def serve(repository: Path, settings: dict[str, Any], log_path: Path) -> Iterator[str]:
    """The URL of `python -m service` on `repository` with GLIMPSE_* `settings`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")}
    env.update({f"GLIMPSE_{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
             "--repository", str(repository)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with GlimpseClient(url) as client:
            client.wait_ready(timeout=120)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


async def closed_loop(url: str, clips: Sequence[bytes], concurrency: int,
                      duration_s: float) -> dict[str, Any]:
    """`concurrency` clients each sending clips back to back for `duration_s`."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + duration_s

    async def user(index: int, http: httpx.AsyncClient) -> None:
        nonlocal failures
        k = index
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await http.post("/v1/videos/activities",
                                files={"file": ("clip.png", clips[k % len(clips)], "image/png")})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1
            k += concurrency

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        totals0 = batch_totals((await http.get("/metrics")).text)
        start = time.perf_counter()
        await asyncio.gather(*(user(i, http) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
        totals1 = batch_totals((await http.get("/metrics")).text)
    batches = totals1[1] - totals0[1]
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "clips": len(latencies), "failures": failures,
            "clips_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p95_ms": float(np.percentile(ms, 95)) if len(ms) else None,
            "mean_batch": (totals1[0] - totals0[0]) / batches if batches else None}


def offline(model: ActivityModel, clips: Sequence[bytes], batch: int, seconds: float
            ) -> float:
    """Clips/s of the pipeline on decoded clips, `batch` at a time."""
    limits = VideoLimits(max_frames=1024, max_seconds=600.0, max_pixels=1 << 24)
    requests = [model.request(decode_clip(c, model.image_size, limits)) for c in clips]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [requests[(done + i) % len(requests)] for i in range(batch)]
        model.run_batch(chunk)
        done += batch
    return done / (time.perf_counter() - start)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Bundle {result['bundle']} ({result['architecture']}, {result['frames']} "
             f"frames of {result['image_size']} px); ONNX Runtime {m['onnxruntime']} CPU, "
             f"intra-op threads {result['intra_op_threads']}; {m['cpu_count']} cores "
             f"(1-minute load average {m['load_average_1m_at_start']:.1f} at the start); "
             f"APNG clips of 16 frames, multipart upload; clients on the same cores.", "",
             "| path | concurrency | clips/s | p50 ms | p95 ms | mean batch |",
             "|---|---|---|---|---|---|"]
    for name, levels in result["http"].items():
        for level in levels:
            lines.append(f"| HTTP, {name} | {level['concurrency']} | "
                         f"{level['clips_per_s']:.1f} | {level['p50_ms']:.0f} | "
                         f"{level['p95_ms']:.0f} | {level['mean_batch'] or 0:.2f} |")
    for batch, rate in result["offline"].items():
        lines.append(f"| offline pipeline, batch {batch} | – | {rate:.1f} | – | – | {batch} |")
    top = max(result["http"]["batched"], key=lambda r: r["concurrency"])
    solo = max(result["http"]["unbatched"], key=lambda r: r["concurrency"])
    lines += ["", f"At concurrency {top['concurrency']}, batching serves "
              f"{top['clips_per_s'] / solo['clips_per_s']:.2f}x the clips/s of the unbatched "
              "server."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    bundle = Path(args.bundle)
    model = ActivityModel.from_bundle(bundle, intra_op_threads=args.intra_op_threads)
    paths = sorted((Path(args.clips) / "clips").glob("*/test_*.png"))[:args.num_clips]
    clips = [p.read_bytes() for p in paths]
    result: dict[str, Any] = {
        "bundle": model.bundle.key, "architecture": model.bundle.manifest.architecture,
        "frames": model.num_frames, "image_size": model.image_size,
        "intra_op_threads": args.intra_op_threads, "machine": {
            "cpu_count": os.cpu_count(), "arch": platform.machine(),
            "load_average_1m_at_start": os.getloadavg()[0], "onnxruntime": ort.__version__},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "offline": {b: offline(model, clips, b, args.duration) for b in (1, 8)}, "http": {}}
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp, "repository")
        target = repository / bundle.parent.name / bundle.name
        shutil.copytree(bundle, target, symlinks=False)
        for name, max_batch in (("batched", 8), ("unbatched", 1)):
            settings = {"max_batch_size": max_batch, "max_queue_delay_ms": 2,
                        "intra_op_threads": args.intra_op_threads, "max_queue_size": 256}
            with serve(repository, settings, Path(tmp, f"{name}.log")) as url:
                result["http"][name] = [
                    asyncio.run(closed_loop(url, clips, c, args.duration))
                    for c in args.concurrency]
    result["batched_over_unbatched"] = (
        result["http"]["batched"][-1]["clips_per_s"]
        / result["http"]["unbatched"][-1]["clips_per_s"])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="model_repository/activity-lrcn/1")
    p.add_argument("--clips", default="data/clips", help="clip set (its test split is sent)")
    p.add_argument("--num-clips", type=int, default=64)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    p.add_argument("--intra-op-threads", type=int, default=1)
    p.add_argument("--out", default="video_speed", help="stem of the result files")
    args = p.parse_args(argv)
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
