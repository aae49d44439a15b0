"""Shapes-world generation throughput: images per second with 1 and 2 worker processes.

Generates the same world (train split only, 64 px by default) per worker count
into a temporary directory, end to end (sampling, rendering, PNG files,
captions, questions, JSON files), keeps the best of a few runs, and times one
process's stages on a sample so the figures can be read. Writes
benchmarks/results/shapes_throughput.json.

    .venv/bin/python benchmarks/shapes_throughput.py --images 5000 --workers 1 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL

from training.data.language import generate_captions
from training.data.questions import generate_questions
from training.data.render import encode_png, render_scene_with_coverage
from training.data.scenes import sample_scene
from training.data.shapes import (
    CAPTIONS_PER_IMAGE,
    PNG_COMPRESSION,
    generate_shapes_world,
    image_streams,
)
from training.data.tokenizer import tokenize

RESULTS = Path(__file__).parent / "results"


def end_to_end(images: int, size: int, workers: int) -> float:
    """Seconds to generate a world of `images` training images."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        generate_shapes_world(out, {"train": images}, size=size, seed=0, workers=workers,
                              progress=False)
        return time.perf_counter() - start


def best_runs(images: int, size: int, workers: list[int], repeats: int) -> list[dict]:
    """Best of `repeats` timings per worker count, the counts interleaved so that
    load from other processes falls on all of them alike."""
    seconds: dict[int, list[float]] = {w: [] for w in workers}
    for _ in range(repeats):
        for w in workers:
            seconds[w].append(end_to_end(images, size, w))
    return [{"workers": w, "images": images, "seconds": round(min(seconds[w]), 3),
             "images_per_s": round(images / min(seconds[w]), 1),
             "all_seconds": [round(t, 3) for t in seconds[w]]} for w in workers]


def stage_times(images: int, size: int) -> dict[str, float]:
    """Microseconds per image spent in each stage, in this process."""
    totals = dict.fromkeys(("sample", "render", "png", "captions", "questions"), 0.0)
    for index in range(images):
        rngs = image_streams(0, "train", index)
        t0 = time.perf_counter()
        scene = sample_scene(rngs["scene"], "train")
        t1 = time.perf_counter()
        image, _ = render_scene_with_coverage(scene, size, rngs["background"])
        t2 = time.perf_counter()
        encode_png(image, PNG_COMPRESSION)
        t3 = time.perf_counter()
        [tokenize(c) for c in generate_captions(scene, rngs["captions"], n=CAPTIONS_PER_IMAGE)]
        t4 = time.perf_counter()
        generate_questions(scene, rngs["questions"])
        t5 = time.perf_counter()
        for name, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                                 strict=True):
            totals[name] += seconds
    return {name: round(1e6 * seconds / images, 1) for name, seconds in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--stage-images", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS / "shapes_throughput.json")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other processes on the machine skew the figures
    runs = best_runs(args.images, args.size, args.workers, args.repeats)
    result = {
        "benchmark": "shapes_throughput",
        "command": "python benchmarks/shapes_throughput.py "
                   f"--images {args.images} --size {args.size} "
                   f"--workers {' '.join(map(str, args.workers))} --repeats {args.repeats}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": round(load_before, 2),
                              "after": round(os.getloadavg()[0], 2)},
        "image_size": args.size,
        "runs": runs,
        "speedup": {f"{r['workers']}_vs_{runs[0]['workers']}":
                    round(r["images_per_s"] / runs[0]["images_per_s"], 2) for r in runs[1:]},
        "stage_us_per_image": stage_times(args.stage_images, args.size),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r['workers']} worker(s): {r['images_per_s']:.0f} images/s "
              f"({r['images']} images in {r['seconds']:.1f} s)")
    print("stages (us/image, one process):", result["stage_us_per_image"])


if __name__ == "__main__":
    main()
