"""CUDA against CPU for one caption bundle, offline and over HTTP, in one run on one machine.

Run through benchmarks/gpu_check.sh on a GPU machine (it makes onnxruntime-gpu
importable first); on a machine without CUDA it compares the CPU with and without batch
buckets, which is how it is tested.

Configurations (each offline and as a served model):
- "cuda": glimpse's defaults on a GPU: cuDNN's heuristic algorithm choice, the arena
  growing by what is asked, batch buckets (powers of two);
- "cuda, onnxruntime defaults": the CUDA provider as ONNX Runtime configures it
  (exhaustive cuDNN search), batches unpadded;
- "cpu": the CPU provider, batches unpadded (glimpse's default there);
- "cpu, buckets": the CPU provider with the GPU's batch buckets (what padding costs).

Offline, after the warm-up the service does (batch sizes 1, 2, 4, ... `max_batch_size`,
then every bucket), for each batch size in an order that changes it every time: the
first batch of that size, then the median of `--repeats` more. Over HTTP: closed-loop
clients at each `--concurrency`, `--duration` seconds each.

    bash benchmarks/gpu_check.sh PARTS_DIR        # on the GPU machine, about 3 minutes
    python benchmarks/gpu_check.py --quick        # CPU only

Writes benchmarks/results/gpu_check.json and .md (`--out` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import (  # noqa: E402  (a sibling script)
    ROOT,
    closed_loop,
    copy_bundle,
    machine,
    measured,
    multipart_body,
    serve,
)

from service.pipelines.caption import CaptionModel, CaptionRequest  # noqa: E402
from service.runtime import CUDA, default_buckets, warm_batch_sizes  # noqa: E402
from service.settings import DEFAULT_CUDA_OPTIONS  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# Batch sizes in an order where each differs from the one before; most are not powers of
# two, so without buckets each is a shape the warm-up did not run.
SIZE_ORDER = (1, 3, 8, 5, 32, 12, 2, 24, 7, 16, 20, 6)


def configurations(cuda: bool) -> dict[str, dict[str, Any]]:
    """Name -> device, CUDA options and batch buckets (the service's settings)."""
    found: dict[str, dict[str, Any]] = {}
    if cuda:
        found["cuda"] = {"device": "cuda", "cuda_options": DEFAULT_CUDA_OPTIONS,
                         "batch_buckets": "auto"}
        found["cuda, onnxruntime defaults"] = {"device": "cuda", "cuda_options": {},
                                               "batch_buckets": "off"}
    found["cpu"] = {"device": "cpu", "cuda_options": {}, "batch_buckets": "off"}
    found["cpu, buckets"] = {"device": "cpu", "cuda_options": {}, "batch_buckets": "pow2"}
    return found


def buckets_of(setting: str, max_batch_size: int) -> str | list[int]:
    if setting != "pow2":
        return setting
    return list(default_buckets(max_batch_size).sizes)


def scene_png(seed: int, size: int = 64) -> bytes:
    """A few flat shapes on white, like the shapes world the bundles learnt from."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.integers(4, size - 20, 2)
        r = int(rng.integers(6, 16))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (int(x), int(y), int(x) + r, int(y) + r)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def offline(bundle: Path, config: dict[str, Any], images: list[bytes], sizes: list[int],
            max_batch_size: int, repeats: int) -> dict[str, Any]:
    """First and steady time of each batch size, after the service's warm-up."""
    started = time.perf_counter()
    model = CaptionModel.from_bundle(
        bundle, device=config["device"], cuda_options=config["cuda_options"],
        batch_buckets=buckets_of(config["batch_buckets"], max_batch_size),
        max_batch_size=max_batch_size)
    model.warm_up(warm_batch_sizes(max_batch_size))
    load_s = time.perf_counter() - started
    search = model.params()
    arrays = [model.as_array(png) for png in images]
    rows = []
    for size in sizes:
        batch = [CaptionRequest(arrays[i % len(arrays)], search) for i in range(size)]
        times = []
        for _ in range(1 + repeats):
            t0 = time.perf_counter()
            model.caption_batch(batch)
            times.append(time.perf_counter() - t0)
        steady = statistics.median(times[1:]) if repeats else times[0]
        rows.append({"batch_size": size, "first_ms": times[0] * 1000,
                     "steady_ms": steady * 1000, "images_per_s": size / steady})
    return {"providers": model.encoder.providers, "load_and_warm_s": load_s, "sizes": rows,
            "decoder_state": state_paths(model, arrays, max_batch_size, max(repeats, 3))}


def state_paths(model: CaptionModel, arrays: list[np.ndarray], size: int,
                repeats: int) -> dict[str, float]:
    """Median ms per batch of `size` with the decoder state kept between steps (IO
    binding) and copied through NumPy, alternated so that both see the same load."""
    batch = [CaptionRequest(arrays[i % len(arrays)], model.params()) for i in range(size)]
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for on_device in (True, False):
            model.state_on_device = on_device
            t0 = time.perf_counter()
            model.caption_batch(batch)
            times[on_device].append(time.perf_counter() - t0)
    model.state_on_device = True
    return {"batch_size": size, "kept_ms": statistics.median(times[True]) * 1000,
            "copied_ms": statistics.median(times[False]) * 1000}


def over_http(bundle: Path, config: dict[str, Any], images: list[bytes],
              concurrency: list[int], duration_s: float, max_batch_size: int,
              workdir: Path, name: str) -> list[dict[str, Any]]:
    repository = workdir / "repository"
    if not repository.exists():
        copy_bundle(bundle, repository)
    buckets = buckets_of(config["batch_buckets"], max_batch_size)
    settings = {"device": config["device"], "max_batch_size": str(max_batch_size),
                "max_queue_size": str(max(256, 2 * max(concurrency))), "log_level": "warning",
                "providers": "", "cuda_options": json.dumps(config["cuda_options"]),
                "batch_buckets": buckets if isinstance(buckets, str)
                else ",".join(map(str, buckets))}
    bodies = [multipart_body(png, {}) for png in images]
    log = workdir / f"{name.replace(' ', '_').replace(',', '')}.log"
    levels = []
    with serve(repository, settings, log) as server:
        for level in concurrency:
            out = measured(server, closed_loop(server.url, bodies, level, duration_s=duration_s))
            out.wall_s = out.wall_s or duration_s
            summary = out.summary()
            levels.append({"concurrency": level, **{k: summary[k] for k in (
                "requests", "ok", "requests_per_s", "p50_ms", "p95_ms", "p99_ms",
                "mean_batch", "server_cores")}})
    return levels


def run(args: argparse.Namespace) -> dict[str, Any]:
    if hasattr(ort, "preload_dlls") and CUDA in ort.get_available_providers():
        ort.preload_dlls()  # the CUDA and cuDNN libraries PyTorch's CUDA build brings
    cuda = CUDA in ort.get_available_providers() and not args.cpu_only
    configs = configurations(cuda)
    images = [scene_png(seed) for seed in range(64)]
    sizes = [s for s in SIZE_ORDER if s <= args.max_batch_size]
    result: dict[str, Any] = {
        "benchmark": "gpu_check", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "bundle": str(args.bundle), "cuda": cuda,
        "config": {k: str(v) for k, v in vars(args).items()},
        "offline": {}, "http": {},
    }
    for name, config in configs.items():
        result["offline"][name] = offline(args.bundle, config, images, sizes,
                                          args.max_batch_size, args.repeats)
    try:  # the server needs what the offline pipeline does not: FastAPI and its companions
        import service.app  # noqa: F401
    except ImportError as exc:
        result["http_skipped"] = f"the service cannot start here: {exc}"
        return result
    with tempfile.TemporaryDirectory(prefix="glimpse-gpu-check-") as tmp:
        for name, config in configs.items():
            result["http"][name] = over_http(args.bundle, config, images, args.concurrency,
                                             args.duration, args.max_batch_size, Path(tmp), name)
    return result


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# CUDA vs CPU: {result['bundle']}", "",
             f"{result['date']}; {m['platform']}, {m['cpu_count']} cores, ONNX Runtime "
             f"{m['onnxruntime']}, providers {m['providers']}; CUDA measured: "
             f"{'yes' if result['cuda'] else 'no'}.", "",
             "## Offline: first batch of a new size and steady state (ms per batch)", ""]
    names = list(result["offline"])
    lines.append("| batch | " + " | ".join(f"{n} first | {n} steady" for n in names) + " |")
    lines.append("|---|" + "---|---|" * len(names))
    rows = zip(*(result["offline"][n]["sizes"] for n in names), strict=True)
    for row in rows:
        cells = " | ".join(f"{r['first_ms']:.1f} | {r['steady_ms']:.1f}" for r in row)
        lines.append(f"| {row[0]['batch_size']} | {cells} |")
    lines += ["", "Decoder state between steps, ms per batch: " + "; ".join(
        f"{n}: kept {result['offline'][n]['decoder_state']['kept_ms']:.1f}, copied through "
        f"NumPy {result['offline'][n]['decoder_state']['copied_ms']:.1f}" for n in names)
        + f" (batch {result['offline'][names[0]]['decoder_state']['batch_size']}).", ""]
    lines += ["Load and warm-up: " + ", ".join(
        f"{n} {result['offline'][n]['load_and_warm_s']:.1f} s" for n in names) + ".", "",
        "## HTTP, closed loop", "", *([f"Not measured: {result['http_skipped']}.", ""]
                                       if "http_skipped" in result else []),
        "| configuration | concurrency | req/s | p50 ms | p95 ms | mean batch |",
        "|---|---|---|---|---|---|"]
    for name, levels in result["http"].items():
        for level in levels:
            p50 = level["p50_ms"]
            p95 = level["p95_ms"]
            lines.append(f"| {name} | {level['concurrency']} | {level['requests_per_s']:.1f} | "
                         f"{'-' if p50 is None else f'{p50:.1f}'} | "
                         f"{'-' if p95 is None else f'{p95:.1f}'} | "
                         f"{level['mean_batch'] or 0:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "model_repository/caption-sat/8")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="steady runs per batch size")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per HTTP level")
    p.add_argument("--cpu-only", action="store_true", help="leave CUDA out even if present")
    p.add_argument("--quick", action="store_true",
                   help="1 repeat, 1 s levels at concurrency 1 and 4, batches up to 8")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_check")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.duration, args.concurrency = 1, 1.0, [1, 4]
        args.max_batch_size = min(args.max_batch_size, 8)
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return args.out


if __name__ == "__main__":
    main()
