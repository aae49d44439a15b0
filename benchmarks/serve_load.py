"""The caption service under load, compared in one run with the offline pipeline.

One bundle, one machine, one run:
- offline: `CaptionModel.from_bundle` on the bundle, single-image latency and
  batched throughput at the server's `max_batch_size` (PNG bytes in, captions out,
  as the service does), with the same ONNX Runtime thread setting as the server;
- HTTP, batched: `python -m service` in a subprocess, closed-loop clients at each
  concurrency sending requests back to back for `--duration` seconds;
- HTTP, unbatched: the same load on a second server with `max_batch_size` 1;
- HTTP, batched with another `max_queue_delay_ms` (`--compare-delay-ms`, default 0):
  what waiting for companions costs at low load and buys at high load;
- overload: open-loop Poisson arrivals at `--overload` x the saturating throughput on
  another server with a small queue: how fast 503s come back and whether accepted
  requests stay within the timeout;
- memory: the batched server's RSS after warm-up and after `--memory-requests`
  requests.

    python benchmarks/serve_load.py                 # full run, about 3 minutes on 2 cores
    python benchmarks/serve_load.py --quick         # smoke run, about 50 s

Writes benchmarks/results/serve_load.json and .md (`--out` changes the stem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import onnxruntime as ort

from service.bundle import load_bundle
from service.client import GlimpseClient
from service.pipelines.caption import CaptionModel, CaptionRequest

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "glimpse-load-boundary"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- statistics


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 of durations in seconds, in milliseconds (None when there are none)."""
    if not seconds:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p50, p95, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


@dataclass
class Outcomes:
    """What one load phase saw: per-request latency and status, and the CPU each side used."""

    wall_s: float = 0.0
    latencies_s: dict[int, list[float]] = field(default_factory=dict)  # status -> latencies
    transport_errors: int = 0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    mean_batch: float | None = None

    def add(self, status: int, latency_s: float) -> None:
        self.latencies_s.setdefault(status, []).append(latency_s)

    def count(self, status: int | None = None) -> int:
        if status is not None:
            return len(self.latencies_s.get(status, []))
        return sum(len(v) for v in self.latencies_s.values()) + self.transport_errors

    def summary(self) -> dict[str, Any]:
        ok = self.latencies_s.get(200, [])
        return {
            "requests": self.count(), "ok": len(ok),
            "statuses": {str(k): len(v) for k, v in sorted(self.latencies_s.items())},
            "transport_errors": self.transport_errors,
            "requests_per_s": len(ok) / self.wall_s if self.wall_s else 0.0,
            **percentiles_ms(ok), "wall_s": self.wall_s,
            "mean_batch": self.mean_batch,
            "client_cores": self.client_cpu_s / self.wall_s if self.wall_s else 0.0,
            "server_cores": self.server_cpu_s / self.wall_s if self.wall_s else 0.0,
        }


# ---------------------------------------------------------------------------- requests


def multipart_body(image: bytes, fields: dict[str, str]) -> bytes:
    """A /v1/captions multipart body, built once so the load generator only sends bytes."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="image.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                 + image + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def caption_request(body: bytes, host: str) -> bytes:
    """The whole HTTP/1.1 request carrying a multipart body, ready to write to a socket."""
    head = (f"POST /v1/captions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def load_images(directory: Path, count: int) -> list[bytes]:
    files = sorted(directory.glob("*.png"))[:count]
    if not files:
        raise SystemExit(f"no PNG images in {directory}")
    return [f.read_bytes() for f in files]


class Connection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads the status.

    The load generator shares the CPU cores with the server, so it is kept to what a
    measurement needs: write the bytes, parse the status line and Content-Length, read
    the body. (httpx costs 1.5 to 7 ms of CPU per request here, growing with its pool.)
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; returns the status and the body."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close":
            self.close()
        return status, body

    def close(self) -> None:
        self.closed = True
        self.writer.close()


class LoadClient:
    """A pool of connections to one server; `post` borrows an idle one or opens another."""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.idle: list[Connection] = []

    def request(self, body: bytes) -> bytes:
        return caption_request(body, f"{self.host}:{self.port}")

    async def post(self, request: bytes, out: Outcomes) -> None:
        """Send a prepared request and record its status and latency in `out`."""
        started = time.perf_counter()
        connection = self.idle.pop() if self.idle else None
        try:
            if connection is None:
                connection = await Connection.open(self.host, self.port)
            status, _ = await connection.send(request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            out.transport_errors += 1
            if connection is not None:
                connection.close()
            return
        out.add(status, time.perf_counter() - started)
        if not connection.closed:
            self.idle.append(connection)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


async def closed_loop(url: str, bodies: Sequence[bytes], concurrency: int, *,
                      duration_s: float | None = None, total: int | None = None) -> Outcomes:
    """`concurrency` clients, each sending its next request when the previous one is
    answered, until `duration_s` has passed or `total` requests have been sent."""
    if (duration_s is None) == (total is None):
        raise ValueError("give exactly one of duration_s and total")
    out = Outcomes()
    client = LoadClient(url)
    requests = [client.request(body) for body in bodies]
    sent = 0
    started = time.perf_counter()
    end = started + duration_s if duration_s is not None else float("inf")

    async def user(index: int) -> None:
        nonlocal sent
        i = index
        while time.perf_counter() < end and (total is None or sent < total):
            sent += 1
            await client.post(requests[i % len(requests)], out)
            i += concurrency

    try:
        await asyncio.gather(*(user(i) for i in range(concurrency)))
    finally:
        client.close()
    out.wall_s = time.perf_counter() - started
    return out


async def open_loop(url: str, bodies: Sequence[bytes], rate: float, duration_s: float, *,
                    seed: int = 0) -> tuple[Outcomes, float]:
    """Poisson arrivals at `rate` requests/s for `duration_s`, each on its own task; returns
    the outcomes and the arrival rate actually achieved."""
    out = Outcomes()
    client = LoadClient(url)
    requests = [client.request(body) for body in bodies]
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, int(rate * duration_s * 2) + 1)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < duration_s]
    tasks = []
    started = time.perf_counter()
    try:
        for i, at in enumerate(arrivals):
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(client.post(requests[i % len(requests)], out)))
        sending_s = time.perf_counter() - started
        await asyncio.gather(*tasks)
    finally:
        client.close()
    out.wall_s = time.perf_counter() - started
    return out, len(arrivals) / sending_s


# ---------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS of /proc/PID/status), in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmRSS for process {pid}")
    return int(match.group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def batch_totals(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of the glimpse_batch_size histogram over all models."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("glimpse_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("glimpse_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


@dataclass
class Server:
    """A `python -m service` subprocess on a loopback port."""

    process: subprocess.Popen
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def batch_totals(self) -> tuple[float, float]:
        return batch_totals(httpx.get(f"{self.url}/metrics", timeout=10).text)


@contextmanager
def serve(repository: Path, settings: dict[str, str], log_path: Path,
          code_root: Path = ROOT) -> Iterator[Server]:
    """Start the service with `settings` (GLIMPSE_* names without the prefix) and stop it;
    `code_root` holds the `service` package it runs."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")}
    env.update({f"GLIMPSE_{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), env.get("PYTHONPATH")]))
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
             "--repository", str(repository)], env=env, stdout=log, stderr=subprocess.STDOUT,
            cwd=code_root)  # `python -m` looks in the working directory first
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        with GlimpseClient(server.url) as client:
            try:
                client.wait_ready(timeout=60)
            except TimeoutError:
                tail = log_path.read_text()[-2000:]
                raise RuntimeError(f"server not ready; log:\n{tail}") from None
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measured(server: Server, load: Any) -> Outcomes:
    """Run the coroutine `load` and attach the server's CPU time and mean batch size."""
    cpu0, client0 = cpu_seconds(server.pid), time.process_time()
    sum0, count0 = server.batch_totals()
    out = asyncio.run(load)
    out.server_cpu_s = cpu_seconds(server.pid) - cpu0
    out.client_cpu_s = time.process_time() - client0
    sum1, count1 = server.batch_totals()
    out.mean_batch = (sum1 - sum0) / (count1 - count0) if count1 > count0 else None
    return out


def copy_bundle(bundle: Path, repository: Path) -> Path:
    """Copy a bundle directory to REPOSITORY/NAME/VERSION (the names its manifest gives)."""
    manifest = load_bundle(bundle).manifest
    target = repository / manifest.name / str(manifest.version)
    shutil.copytree(bundle, target)
    return target


# ---------------------------------------------------------------------------- offline


def offline_single(model: CaptionModel, images: Sequence[bytes], params: dict[str, Any],
                   count: int) -> dict[str, Any]:
    """Latency of captioning one image at a time: PNG bytes -> decode -> encode -> beam search."""
    model.caption(images[0], **params)
    times = []
    for i in range(count):
        started = time.perf_counter()
        model.caption(images[i % len(images)], **params)
        times.append(time.perf_counter() - started)
    return {"images": count, "images_per_s": count / sum(times), **percentiles_ms(times)}


def offline_batched(model: CaptionModel, images: Sequence[bytes], params: dict[str, Any],
                    batch_size: int, duration_s: float) -> dict[str, Any]:
    """Images/s when batches of `batch_size` PNGs are decoded and captioned together."""
    search = model.params(**params)

    def run(start: int) -> None:
        chunk = [images[(start + j) % len(images)] for j in range(batch_size)]
        model.caption_batch([CaptionRequest(model.as_array(b), search) for b in chunk])

    run(0)
    done = batches = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        run(done)
        done += batch_size
        batches += 1
    elapsed = time.perf_counter() - started
    return {"batch_size": batch_size, "batches": batches, "images_per_s": done / elapsed,
            "ms_per_batch": elapsed / batches * 1000}


# ---------------------------------------------------------------------------- the run


@dataclass
class Config:
    bundle: Path
    images: Path
    concurrency: list[int]
    duration_s: float
    beam_size: int | None
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    compare_delay_ms: float | None
    threads: int | None
    overload: float
    overload_duration_s: float
    overload_queue_size: int
    overload_timeout_s: float
    memory_requests: int
    offline_duration_s: float
    offline_single: int
    log_level: str

    def server_settings(self, **changes: Any) -> dict[str, str]:
        settings = {"device": "cpu", "max_batch_size": self.max_batch_size,
                    "max_queue_delay_ms": self.max_queue_delay_ms,
                    "max_queue_size": self.max_queue_size, "log_level": self.log_level}
        if self.threads is not None:
            settings["intra_op_threads"] = self.threads
        settings.update(changes)
        return {k: str(v) for k, v in settings.items()}


def run_offline(cfg: Config, images: Sequence[bytes], params: dict[str, Any]) -> dict[str, Any]:
    rows = {}
    for label, threads in (("pinned", cfg.threads), ("ort_default", None)):
        if label == "ort_default" and cfg.threads is None:
            break
        model = CaptionModel.from_bundle(cfg.bundle, device="cpu", intra_op_threads=threads)
        rows[label] = {
            "intra_op_threads": threads,
            "single": offline_single(model, images, params, cfg.offline_single),
            "batched": offline_batched(model, images, params, cfg.max_batch_size,
                                       cfg.offline_duration_s),
        }
        print(f"offline ({label} threads): single p50 {rows[label]['single']['p50_ms']:.2f} ms,"
              f" batch {cfg.max_batch_size} {rows[label]['batched']['images_per_s']:.1f} img/s",
              flush=True)
    return rows


def run_levels(server: Server, bodies: Sequence[bytes], cfg: Config,
               label: str) -> list[dict[str, Any]]:
    rows = []
    for concurrency in cfg.concurrency:
        out = measured(server, closed_loop(server.url, bodies, concurrency,
                                           duration_s=cfg.duration_s))
        row = {"concurrency": concurrency, **out.summary()}
        rows.append(row)
        print(f"{label} c={concurrency:>3}: {row['requests_per_s']:7.1f} req/s  "
              f"p50 {row['p50_ms']:7.2f}  p99 {row['p99_ms']:7.2f} ms  batch "
              f"{row['mean_batch'] or 0:.2f}  statuses {row['statuses']}", flush=True)
    return rows


def run_batched(cfg: Config, repository: Path, bodies: Sequence[bytes],
                log_dir: Path) -> dict[str, Any]:
    """Load levels on the batched server, then top up to `memory_requests` and sample RSS."""
    with serve(repository, cfg.server_settings(), log_dir / "batched.log") as server:
        warm = measured(server, closed_loop(server.url, bodies, max(cfg.concurrency),
                                            total=max(200, 4 * max(cfg.concurrency))))
        rss_warm = server.rss_kib()
        samples = [{"requests": 0, "rss_kib": rss_warm}]
        levels = run_levels(server, bodies, cfg, "batched  ")
        sent = sum(r["requests"] for r in levels)
        samples.append({"requests": sent, "rss_kib": server.rss_kib()})
        if sent < cfg.memory_requests:
            top_up = measured(server, closed_loop(server.url, bodies, 32,
                                                  total=cfg.memory_requests - sent))
            sent += top_up.count()
        rss_end = server.rss_kib()
        samples.append({"requests": sent, "rss_kib": rss_end})
    memory = {"rss_after_warmup_kib": rss_warm, "rss_after_requests_kib": rss_end,
              "requests_after_warmup": sent, "warmup_requests": warm.count(),
              "growth_pct": (rss_end - rss_warm) / rss_warm * 100, "samples": samples}
    print(f"memory: RSS {rss_warm / 1024:.1f} MiB after warm-up, {rss_end / 1024:.1f} MiB after "
          f"{sent} requests ({memory['growth_pct']:+.1f}%)", flush=True)
    return {"levels": levels, "memory": memory}


def run_variant(cfg: Config, repository: Path, bodies: Sequence[bytes], log_dir: Path,
                label: str, **changes: Any) -> list[dict[str, Any]]:
    """The load levels on a server whose settings differ by `changes`."""
    with serve(repository, cfg.server_settings(**changes), log_dir / f"{label}.log") as server:
        measured(server, closed_loop(server.url, bodies, 8, total=50))
        return run_levels(server, bodies, cfg, label)


def run_overload(cfg: Config, repository: Path, bodies: Sequence[bytes], saturation: float,
                 log_dir: Path) -> dict[str, Any]:
    """Open-loop arrivals at `overload` x the saturating rate against a small queue."""
    settings = cfg.server_settings(max_queue_size=cfg.overload_queue_size,
                                   request_timeout_s=cfg.overload_timeout_s)
    rate = cfg.overload * saturation
    with serve(repository, settings, log_dir / "overload.log") as server:
        measured(server, closed_loop(server.url, bodies, 8, total=50))
        cpu0, client0 = cpu_seconds(server.pid), time.process_time()
        out, achieved = asyncio.run(open_loop(server.url, bodies, rate, cfg.overload_duration_s))
        out.server_cpu_s = cpu_seconds(server.pid) - cpu0
        out.client_cpu_s = time.process_time() - client0
    rejected = out.latencies_s.get(503, [])
    result = {
        "target_rate_per_s": rate, "achieved_rate_per_s": achieved,
        "max_queue_size": cfg.overload_queue_size, "request_timeout_s": cfg.overload_timeout_s,
        "accepted": out.summary(),
        "rejected": {"count": len(rejected), **percentiles_ms(rejected)},
        "timeouts_504": out.count(504),
    }
    print(f"overload {rate:.0f}/s offered ({achieved:.0f}/s achieved): "
          f"{out.count(200)} ok, {len(rejected)} rejected, p50/p99 rejection "
          f"{result['rejected']['p50_ms'] or 0:.2f}/{result['rejected']['p99_ms'] or 0:.2f} ms, "
          f"accepted p99 {result['accepted']['p99_ms'] or 0:.1f} ms", flush=True)
    return result


def _low_load_target(levels: list[dict[str, Any]], offline_p50_ms: float,
                     setting: str = "") -> dict[str, Any]:
    """HTTP p50 at the lowest concurrency against offline single-image p50."""
    row = min(levels, key=lambda r: r["concurrency"])
    gap_ms = row["p50_ms"] - offline_p50_ms
    return {"target": f"concurrency {row['concurrency']}{setting}: p50 within 2 ms of offline "
                      "single image",
            "measured": f"{gap_ms:+.2f} ms ({row['p50_ms']:.2f} vs {offline_p50_ms:.2f} ms)",
            "met": gap_ms <= 2.0}


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's performance targets, measured value and whether each is met."""
    offline = result["offline"]["pinned"]
    saturated = max(r["requests_per_s"] for r in result["batched"]["levels"])
    unbatched = max(r["requests_per_s"] for r in result["unbatched"])
    over = result["overload"]
    http_share = saturated / offline["batched"]["images_per_s"]
    rejection_p99 = over["rejected"]["p99_ms"]
    accepted_p99 = over["accepted"]["p99_ms"]
    growth = result["batched"]["memory"]["growth_pct"]
    targets = [
        {"target": "saturated HTTP throughput >= 85% of offline batched",
         "measured": f"{http_share:.0%} ({saturated:.1f} vs "
                     f"{offline['batched']['images_per_s']:.1f} img/s)",
         "met": http_share >= 0.85},
        {"target": "saturated HTTP throughput >= 3x unbatched service",
         "measured": f"{saturated / unbatched:.2f}x ({saturated:.1f} vs {unbatched:.1f} req/s)",
         "met": saturated >= 3 * unbatched},
        _low_load_target(result["batched"]["levels"], offline["single"]["p50_ms"]),
        {"target": "overload: rejections (503) p99 < 10 ms",
         "measured": "no rejection" if rejection_p99 is None else f"{rejection_p99:.2f} ms",
         "met": rejection_p99 is not None and rejection_p99 < 10.0},
        {"target": "overload: accepted p99 below the request timeout",
         "measured": f"{accepted_p99 or 0:.1f} ms vs {over['request_timeout_s'] * 1000:.0f} ms",
         "met": accepted_p99 is not None and accepted_p99 < over["request_timeout_s"] * 1000
         and over["timeouts_504"] == 0},
        {"target": f"RSS growth over {result['batched']['memory']['requests_after_warmup']} "
                   "requests within 10%",
         "measured": f"{growth:+.1f}%", "met": abs(growth) <= 10.0},
    ]
    if "batched_other_delay" in result:
        delay = result["config"]["compare_delay_ms"]
        targets.insert(3, _low_load_target(result["batched_other_delay"],
                                           offline["single"]["p50_ms"],
                                           f", max_queue_delay_ms {delay:g}"))
    return targets


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    cfg, offline = result["config"], result["offline"]
    beam = cfg["beam_size"] or result["bundle"]["beam_size"]
    threads = cfg["threads"] if cfg["threads"] is not None else "ONNX Runtime default"
    lines = [
        f"Bundle {result['bundle']['key']} ({result['bundle']['architecture']}, "
        f"{result['bundle']['image_size']} px), beam {beam}; ONNX Runtime "
        f"{result['machine']['onnxruntime']} CPU provider, intra-op threads {threads}; "
        f"max_batch_size {cfg['max_batch_size']}, max_queue_delay_ms "
        f"{cfg['max_queue_delay_ms']:g}, max_queue_size {cfg['max_queue_size']}; "
        f"{result['machine']['cpu_count']} cores {result['machine']['arch']} (1-minute load "
        f"average {result['machine']['load_average_1m_at_start']:.1f} at the start, "
        f"{result['machine']['load_average_1m_at_end']:.1f} at the end), load generator "
        f"(asyncio, keep-alive connections, closed loop, {cfg['duration_s']:g} s per level) on "
        "the same cores.",
        "",
        "| path | concurrency | req/s | p50 ms | p95 ms | p99 ms | mean batch "
        "| server cores | client cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    variants = [("HTTP, batched", result["batched"]["levels"]),
                ("HTTP, unbatched", result["unbatched"])]
    if "batched_other_delay" in result:
        variants.append((f"HTTP, batched, delay {cfg['compare_delay_ms']:g} ms",
                         result["batched_other_delay"]))
    for label, rows in variants:
        lines += [f"| {label} | {r['concurrency']} | {r['requests_per_s']:.1f} | "
                  f"{_fmt(r['p50_ms'])} | {_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | "
                  f"{_fmt(r['mean_batch'])} | {r['server_cores']:.2f} | "
                  f"{r['client_cores']:.2f} |" for r in rows]
    for row in offline.values():
        threads = row["intra_op_threads"]
        name = ("offline, ONNX Runtime's default threads" if threads is None
                else f"offline, {threads} thread{'s' if threads > 1 else ''}")
        single, batched = row["single"], row["batched"]
        lines.append(f"| {name}, one image | – | {single['images_per_s']:.1f} | "
                     f"{_fmt(single['p50_ms'])} | {_fmt(single['p95_ms'])} | "
                     f"{_fmt(single['p99_ms'])} | 1 | – | – |")
        lines.append(f"| {name}, batch {batched['batch_size']} | – | "
                     f"{batched['images_per_s']:.1f} | – | – | – | {batched['batch_size']} "
                     f"| – | – |")
    over = result["overload"]
    acc, rej = over["accepted"], over["rejected"]
    mem = result["batched"]["memory"]
    pinned = offline["pinned"]
    ceiling = pinned["batched"]["images_per_s"] / pinned["single"]["images_per_s"]
    lines += [
        "",
        f"Offline, batches of {pinned['batched']['batch_size']} give {ceiling:.2f}x the images/s "
        "of one image at a time: the most that batching can add on this model and machine.",
        "",
        f"Overload: Poisson arrivals at {over['target_rate_per_s']:.0f}/s "
        f"({cfg['overload']:g}x saturation; {over['achieved_rate_per_s']:.0f}/s achieved) for "
        f"{cfg['overload_duration_s']:g} s, max_queue_size {over['max_queue_size']}, "
        f"request timeout {over['request_timeout_s']:g} s.",
        "",
        "| outcome | count | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|",
        f"| accepted (200) | {acc['ok']} | {_fmt(acc['p50_ms'])} | {_fmt(acc['p95_ms'])} | "
        f"{_fmt(acc['p99_ms'])} |",
        f"| rejected (503) | {rej['count']} | {_fmt(rej['p50_ms'])} | {_fmt(rej['p95_ms'])} | "
        f"{_fmt(rej['p99_ms'])} |",
        f"| timed out (504) | {over['timeouts_504']} | – | – | – |",
        "",
        f"Memory: server RSS {mem['rss_after_warmup_kib'] / 1024:.1f} MiB after warm-up, "
        f"{mem['rss_after_requests_kib'] / 1024:.1f} MiB after {mem['requests_after_warmup']} "
        f"more requests ({mem['growth_pct']:+.1f}%).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |"
              for t in result["targets"]]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "arch": platform.machine(),
            "load_average_1m_at_start": os.getloadavg()[0],
            "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "numpy": np.__version__,
            "providers": ort.get_available_providers()}


def run(cfg: Config) -> dict[str, Any]:
    bundle = load_bundle(cfg.bundle)
    manifest = bundle.manifest
    params = {} if cfg.beam_size is None else {"beam_size": cfg.beam_size}
    fields = {k: str(v) for k, v in params.items()}
    images = load_images(cfg.images, 64)
    bodies = [multipart_body(image, fields) for image in images]
    result: dict[str, Any] = {
        "benchmark": "serve_load", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "bundle": {"key": bundle.key, "architecture": manifest.architecture,
                   "image_size": manifest.preprocessing.image_size,
                   "beam_size": manifest.decoding.beam_size if manifest.decoding else None},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "offline": run_offline(cfg, images, params),
    }
    with tempfile.TemporaryDirectory(prefix="glimpse-serve-load-") as tmp:
        repository = Path(tmp) / "repository"
        copy_bundle(cfg.bundle, repository)
        result["batched"] = run_batched(cfg, repository, bodies, Path(tmp))
        result["unbatched"] = run_variant(cfg, repository, bodies, Path(tmp), "unbatched",
                                          max_batch_size=1)
        if cfg.compare_delay_ms is not None:
            result["batched_other_delay"] = run_variant(
                cfg, repository, bodies, Path(tmp), f"delay-{cfg.compare_delay_ms:g}ms",
                max_queue_delay_ms=cfg.compare_delay_ms)
        saturation = max(r["requests_per_s"] for r in result["batched"]["levels"])
        result["overload"] = run_overload(cfg, repository, bodies, saturation, Path(tmp))
    result["machine"]["load_average_1m_at_end"] = os.getloadavg()[0]
    result["targets"] = check_targets(result)
    return result


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, Path]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "model_repository/caption-sat/8")
    p.add_argument("--images", type=Path, default=ROOT / "data/shapes/images/test")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    p.add_argument("--beam-size", type=int, default=None, help="default: the bundle's")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--compare-delay-ms", type=float, default=0.0,
                   help="also run the levels with this max_queue_delay_ms (negative: skip)")
    p.add_argument("--max-queue-size", type=int, default=256,
                   help="queue of the load servers: above the largest concurrency")
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads, server and offline (0: ORT default)")
    p.add_argument("--overload", type=float, default=2.0, help="x the saturating throughput")
    p.add_argument("--overload-duration", type=float, default=10.0)
    p.add_argument("--overload-queue-size", type=int, default=16)
    p.add_argument("--overload-timeout", type=float, default=2.0, help="request timeout, s")
    p.add_argument("--memory-requests", type=int, default=10_000,
                   help="requests after warm-up before the second RSS sample")
    p.add_argument("--offline-duration", type=float, default=5.0)
    p.add_argument("--offline-single", type=int, default=300, help="single-image runs")
    p.add_argument("--log-level", default="info", help="server GLIMPSE_LOG_LEVEL")
    p.add_argument("--quick", action="store_true",
                   help="short smoke run: 2 s levels, 1000 memory requests")
    p.add_argument("--out", type=Path, default=RESULTS / "serve_load",
                   help="output stem: writes STEM.json and STEM.md")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.overload_duration, args.offline_duration = 2.0, 3.0, 1.0
        args.offline_single, args.memory_requests = 50, 1000
    cfg = Config(
        bundle=args.bundle, images=args.images, concurrency=args.concurrency,
        duration_s=args.duration, beam_size=args.beam_size,
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=args.max_queue_size, threads=args.threads or None,
        compare_delay_ms=args.compare_delay_ms if args.compare_delay_ms >= 0 else None,
        overload=args.overload, overload_duration_s=args.overload_duration,
        overload_queue_size=args.overload_queue_size, overload_timeout_s=args.overload_timeout,
        memory_requests=args.memory_requests, offline_duration_s=args.offline_duration,
        offline_single=args.offline_single, log_level=args.log_level)
    return cfg, args.out


def main(argv: Sequence[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    result = run(cfg)
    table = markdown(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
