"""Images/s of text-to-image bundles through the service pipeline, batched vs unbatched.

For each batch size B, B single-image requests with distinct prompts go through
service.pipelines.generation.GenerationModel.run_batch (text encoder, generator, PNG encoding)
either as one batch (one run of each graph for the B images) or one request at a
time (B runs of each graph). Same machine, same process, same threads; the two
ways alternate so that load from elsewhere hits both alike, and the fastest repeat
of each is reported (the median is kept in the JSON).

    python benchmarks/generation_speed.py --bundle model_repository/gan-int-cls/4 \
        --bundle model_repository/stackgan/11

Writes benchmarks/results/generation_speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from service.errors import InvalidParameter
from service.pipelines.generation import GenerationModel, GenerationRequest

RESULTS = Path(__file__).parent / "results"
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon", "cross")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def requests_for(model: GenerationModel, count: int) -> list[GenerationRequest]:
    """`count` one-image requests with distinct shapes-world prompts the model accepts."""
    prompts = [f"a {size}{colour} {shape}" for size in ("", "small ", "large ")
               for colour in COLOURS for shape in SHAPES]
    requests = []
    for i, prompt in enumerate(prompts):
        try:
            requests.append(model.request(prompt, 1, seed=i))
        except InvalidParameter:
            continue
        if len(requests) == count:
            return requests
    raise SystemExit(f"{model.bundle.key} accepts only {len(requests)} of the benchmark prompts")


def measure(model: GenerationModel, batch: int, repeats: int) -> dict:
    requests = requests_for(model, batch)

    def batched() -> None:
        model.run_batch(requests)

    def unbatched() -> None:
        for request in requests:
            model.run_batch([request])

    batched()  # warm-up at this batch size
    unbatched()
    times: dict[str, list[float]] = {"batched": [], "unbatched": []}
    for _ in range(repeats):
        for name, fn in (("batched", batched), ("unbatched", unbatched)):
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    # The fastest repeat is the one least disturbed by other work on a shared machine.
    t_batched, t_unbatched = (min(times[k]) for k in ("batched", "unbatched"))
    return {"batch": batch, "batched_images_per_s": batch / t_batched,
            "unbatched_images_per_s": batch / t_unbatched,
            "batched_over_unbatched": t_unbatched / t_batched,
            "median_s": {k: float(np.median(v)) for k, v in times.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", required=True, help="generation bundle(s)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (ONNX Runtime providers)")
    args = p.parse_args()

    load_before = os.getloadavg()[0]
    rows = []
    for path in args.bundle:
        model = GenerationModel.from_bundle(path, device=args.device,
                                            intra_op_threads=args.threads)
        m = model.bundle.manifest
        for batch in args.batches:
            row = {"model": model.bundle.key, "architecture": m.architecture,
                   "image_size": model.image_size, **measure(model, batch, args.repeats)}
            rows.append(row)
            print(f"{row['model']:>16} batch {batch:>3}: batched "
                  f"{row['batched_images_per_s']:8.1f} img/s  unbatched "
                  f"{row['unbatched_images_per_s']:8.1f} img/s  "
                  f"{row['batched_over_unbatched']:.2f}x", flush=True)
    providers = model.generator.providers
    machine = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "device": args.device, "providers": providers, "threads": args.threads,
               "load_average_1min": [load_before, os.getloadavg()[0]]}
    result = {"benchmark": "generation_speed",
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": machine, "repeats": args.repeats, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generation_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Text encoder + generator + PNG through `GenerationModel.run_batch`, "
             f"{machine['cpu']} ({machine['cpu_count']} cores, {args.threads} ONNX Runtime "
             f"threads, {providers[0]}), fastest of {args.repeats} repeats, 1-minute load "
             f"average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after:", "",
             "| model | image | batch | batched img/s | unbatched img/s | batched / unbatched |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} ({r['architecture']}) | {r['image_size']} px | {r['batch']} | "
              f"{r['batched_images_per_s']:.1f} | {r['unbatched_images_per_s']:.1f} | "
              f"{r['batched_over_unbatched']:.2f}x |" for r in rows]
    (RESULTS / "generation_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
