"""What the batching queue adds to a lone request, compared in one run with the offline
pipeline and with another version of the service.

Servers started side by side on one bundle, all with the same settings
(`max_batch_size` 8, `max_queue_delay_ms` 2 unless changed):
- "current": this checkout's service;
- "before": the service of `--before REV` (its `service/` taken with `git archive`),
  when given;
- "delay 0": this checkout with `max_queue_delay_ms` 0, the setting that never waits.

Concurrency 1, paired: for each of `--requests` images, one HTTP request to each server
(in rotating order) and the same image through `CaptionModel` offline, so that every
path sees the same load on this shared machine. Then concurrency 8, closed loop,
alternating between the servers in rounds, to see what the change does to batching.

    python benchmarks/lone_request.py --before 2809fd4 --images data/shapes/images/test

Writes benchmarks/results/lone_request.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import (  # noqa: E402  (a sibling script)
    ROOT,
    Connection,
    Outcomes,
    caption_request,
    closed_loop,
    copy_bundle,
    load_images,
    machine,
    measured,
    multipart_body,
    percentiles_ms,
    serve,
)

from service.pipelines.caption import CaptionModel  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def export_service(rev: str, dest: Path) -> Path:
    """`service/` as it was at `rev`, unpacked under `dest`."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "service"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


async def paired(servers: dict[str, Any], model: CaptionModel, images: list[bytes],
                 count: int) -> dict[str, list[float]]:
    """Latencies of `count` rounds: each image once to every server, and offline."""
    names = list(servers)
    connections = {}
    for name, server in servers.items():
        host, port = server.url.removeprefix("http://").split(":")
        connections[name] = await Connection.open(host, int(port))
    requests = {name: [caption_request(multipart_body(image, {}),
                                       servers[name].url.removeprefix("http://"))
                       for image in images] for name in names}
    times: dict[str, list[float]] = {name: [] for name in [*names, "offline"]}
    model.caption(images[0])
    for i in range(count):
        k = i % len(images)
        for name in names[i % len(names):] + names[:i % len(names)]:
            started = time.perf_counter()
            status, body = await connections[name].send(requests[name][k])
            if status != 200:
                raise RuntimeError(f"{name}: {status} {body[:200]!r}")
            times[name].append(time.perf_counter() - started)
        started = time.perf_counter()
        model.caption(images[k])
        times["offline"].append(time.perf_counter() - started)
    for connection in connections.values():
        connection.close()
    return times


def queue_totals(server: Any) -> tuple[float, float]:
    """Seconds waited in queues, and requests, from the server's /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("glimpse_queue_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("glimpse_queue_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "model_repository/caption-sat/8")
    p.add_argument("--images", type=Path, default=ROOT / "data/shapes/images/test")
    p.add_argument("--before", help="a git revision whose service to compare with")
    p.add_argument("--requests", type=int, default=300, help="paired concurrency-1 rounds")
    p.add_argument("--rounds", type=int, default=3, help="concurrency-8 rounds per server")
    p.add_argument("--round-s", type=float, default=3.0)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=RESULTS / "lone_request")
    args = p.parse_args()

    images = load_images(args.images, 64)
    bodies = [multipart_body(image, {}) for image in images]
    model = CaptionModel.from_bundle(args.bundle, device="cpu", intra_op_threads=1)
    base = {"intra_op_threads": "1", "device": "cpu", "max_batch_size": "8",
            "max_queue_size": "256", "log_level": "warning"}
    with tempfile.TemporaryDirectory(prefix="glimpse-lone-") as tmp, ExitStack() as stack:
        repository = Path(tmp) / "repository"
        copy_bundle(args.bundle, repository)
        variants: dict[str, tuple[dict[str, str], Path]] = {
            "current": ({**base, "max_queue_delay_ms": str(args.max_queue_delay_ms)}, ROOT)}
        if args.before:
            variants[f"before ({args.before})"] = (
                {**base, "max_queue_delay_ms": str(args.max_queue_delay_ms)},
                export_service(args.before, Path(tmp) / "before"))
        variants["delay 0"] = ({**base, "max_queue_delay_ms": "0"}, ROOT)
        servers = {name: stack.enter_context(serve(repository, settings,
                                                   Path(tmp) / f"{i}.log", code_root=root))
                   for i, (name, (settings, root)) in enumerate(variants.items())}
        load_start = os.getloadavg()[0]
        waits0 = {name: queue_totals(server) for name, server in servers.items()}
        times = asyncio.run(paired(servers, model, images, args.requests))
        waits1 = {name: queue_totals(server) for name, server in servers.items()}
        loaded: dict[str, list[Outcomes]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, server in servers.items():
                loaded[name].append(measured(server, closed_loop(
                    server.url, bodies, 8, duration_s=args.round_s)))
    result = {
        "benchmark": "lone_request", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_1m_at_start": load_start},
        "bundle": str(args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT)
                      else args.bundle),
        "config": {k: str(v) for k, v in vars(args).items()},
        "concurrency_1": {name: percentiles_ms(t) for name, t in times.items()},
        # the server's own account: mean time a request waited in the queue
        "concurrency_1_queue_ms": {
            name: (waits1[name][0] - waits0[name][0]) / (waits1[name][1] - waits0[name][1])
            * 1000 for name in servers},
        "concurrency_8": {name: {
            "requests_per_s": sum(o.count(200) for o in outs) / sum(o.wall_s for o in outs),
            "mean_batch": sum(o.mean_batch or 0 for o in outs) / len(outs),
            "p50_ms": percentiles_ms([x for o in outs for x in o.latencies_s.get(200, [])]
                                     )["p50_ms"],
        } for name, outs in loaded.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    offline = result["concurrency_1"]["offline"]["p50_ms"]
    lines = [f"Lone requests ({result['bundle']}, {result['config']['requests']} paired rounds, "
             f"{result['machine']['cpu_count']} cores, load average "
             f"{result['machine']['load_average_1m_at_start']:.1f} at start)", "",
             "| path | concurrency 1 p50 ms | p95 ms | p50 - offline ms | mean queue wait ms |",
             "|---|---|---|---|---|"]
    waits = result["concurrency_1_queue_ms"]
    for name, stats in result["concurrency_1"].items():
        wait = f"{waits[name]:.3f}" if name in waits else "-"
        lines.append(f"| {name} | {stats['p50_ms']:.2f} | {stats['p95_ms']:.2f} | "
                     f"{stats['p50_ms'] - offline:+.2f} | {wait} |")
    lines += ["", "| server | concurrency 8 req/s | mean batch | p50 ms |", "|---|---|---|---|"]
    for name, stats in result["concurrency_8"].items():
        lines.append(f"| {name} | {stats['requests_per_s']:.1f} | {stats['mean_batch']:.2f} | "
                     f"{stats['p50_ms']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
