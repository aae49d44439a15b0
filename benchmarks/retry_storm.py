"""Useful throughput when clients ignore Retry-After, against the same load with no refusals.

One bundle, one machine, one run, two servers:
- no refusals: a queue long enough for every client (max_queue_size = 4 x concurrency);
- refusing: the default queue (64) under twice as many clients, so most requests are
  refused with 503, and every client sends its next request the moment an answer
  comes back, 503 or not (a client that ignores Retry-After); once refusing at once
  before the body is read (GLIMPSE_ADMISSION_WAIT_MS=0), once after the default wait
  for a place.
Useful throughput is the captions answered 200 per second; the target is >= 80% of the
no-refusal figure. The admission gate (service/middleware.py) refuses before the body
is read, and holds a request up to the wait for a place first: a refusal that comes at
once is sent again at once, so however cheap, refusals take the cores.

    python benchmarks/retry_storm.py --images data/shapes/images/test   # 1.5 min, 2 cores

Writes benchmarks/results/retry_storm.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from serve_load import (  # noqa: E402  (a sibling script, not a package)
    RESULTS,
    ROOT,
    Outcomes,
    closed_loop,
    copy_bundle,
    load_images,
    machine,
    measured,
    multipart_body,
    serve,
)


def run(bundle: Path, images: Path, concurrency: int, duration_s: float, max_batch_size: int,
        threads: int, wait_ms: float, rounds: int, queue_size: int) -> dict[str, Any]:
    """The three servers run side by side and take the load in turns, `rounds` times for
    `duration_s` each: what else the machine does weighs on all three alike."""
    work = Path(tempfile.mkdtemp(prefix="glimpse-retry-"))
    repository = work / "repository"
    copy_bundle(bundle, repository)
    bodies = [multipart_body(png, {"beam_size": "3"}) for png in load_images(images, 16)]
    servers = (("no refusals", 4 * concurrency, 0.0),
               ("refusing at once", queue_size, 0.0),
               (f"refusing after a {wait_ms:g} ms wait", queue_size, wait_ms))
    outcomes: dict[str, list[Outcomes]] = {label: [] for label, _, _ in servers}
    with ExitStack() as stack:
        running = {}
        for label, queue, wait in servers:
            settings = {"device": "cpu", "max_batch_size": str(max_batch_size),
                        "max_queue_delay_ms": "2", "max_queue_size": str(queue),
                        "admission_wait_ms": str(wait), "intra_op_threads": str(threads),
                        "log_level": "warning"}
            server = stack.enter_context(serve(repository, settings, work / f"{label}.log"))
            measured(server, closed_loop(server.url, bodies, 8, total=100))  # warm
            running[label] = server
        for _ in range(rounds):
            for label, server in running.items():
                out = measured(server, closed_loop(server.url, bodies, concurrency,
                                                   duration_s=duration_s))
                outcomes[label].append(out)
                print(f"{label:30s}: {out.count(200) / out.wall_s:6.1f} captions/s, "
                      f"{out.count(503) / out.wall_s:6.0f} refused/s", flush=True)
    rows = {label: combined(outs, queue, wait) for (label, queue, wait), outs
            in zip(servers, outcomes.values(), strict=True)}
    base = rows["no refusals"]["requests_per_s"]
    ratios = {label: row["requests_per_s"] / base for label, row in rows.items()}
    ratio = ratios[servers[-1][0]]
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
            "bundle": str(bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle),
            "concurrency": concurrency, "duration_s": duration_s, "rounds": rounds,
            "max_batch_size": max_batch_size, "intra_op_threads": threads, "rows": rows,
            "ratios": ratios, "useful_ratio": ratio, "met": ratio >= 0.8}


def combined(outs: list[Outcomes], queue: int, wait: float) -> dict[str, Any]:
    wall = sum(o.wall_s for o in outs)
    return {"max_queue_size": queue, "admission_wait_ms": wait, "wall_s": wall,
            "requests_per_s": sum(o.count(200) for o in outs) / wall,
            "refused_per_s": sum(o.count(503) for o in outs) / wall,
            "per_round": [o.count(200) / o.wall_s for o in outs],
            "server_cores": sum(o.server_cpu_s for o in outs) / wall,
            "client_cores": sum(o.client_cpu_s for o in outs) / wall}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Bundle {result['bundle']}, beam 3, {result['concurrency']} closed-loop clients "
             f"that send again as soon as they are answered (Retry-After ignored), "
             f"{result['rounds']} rounds of {result['duration_s']:g} s on each server in turn; "
             f"max_batch_size {result['max_batch_size']}, "
             f"intra-op threads {result['intra_op_threads']}; client and server share "
             f"{result['machine'].get('cpu_count', '?')} cores.", "",
             "| server | max_queue_size | captions/s (200) | of no refusals | 503/s | "
             "server cores | client cores |", "|---|---|---|---|---|---|---|"]
    for label, row in result["rows"].items():
        lines.append(f"| {label} | {row['max_queue_size']} | {row['requests_per_s']:.1f} | "
                     f"{result['ratios'][label]:.0%} | {row['refused_per_s']:.0f} | "
                     f"{row['server_cores']:.2f} | {row['client_cores']:.2f} |")
    lines += ["", f"Useful throughput while refusing (the default wait): "
              f"{result['useful_ratio']:.0%} of the no-refusal figure (target >= 80%: "
              f"{'met' if result['met'] else 'not met'})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "model_repository/caption-sat/1")
    p.add_argument("--images", type=Path, required=True,
                   help="a folder of PNG images (e.g. a generated world's images/test)")
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--max-queue-size", type=int, default=64,
                   help="of the refusing servers (the service's default)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--admission-wait-ms", type=float, default=100.0)
    p.add_argument("--out", default="retry_storm")
    args = p.parse_args()
    result = run(args.bundle, args.images, args.concurrency, args.duration,
                 args.max_batch_size, args.threads, args.admission_wait_ms, args.rounds,
                 args.max_queue_size)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
