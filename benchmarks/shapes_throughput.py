"""Shapes-world generation throughput: images per second with 1 and 2 worker processes.

Generates the same world (train split only, 64 px by default) per worker count
into a temporary directory, end to end (sampling, rendering, PNG files,
captions, questions, JSON files), keeps the best of a few runs, and times one
process's stages on a sample so the figures can be read. CPU time per image
(user and system, all processes) is reported beside images/s: on a shared
machine it shows how much of a slow run was other load rather than work.
Writes benchmarks/results/shapes_throughput.json.

    .venv/bin/python benchmarks/shapes_throughput.py --images 5000 --workers 1 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
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
    _Encoded,
    generate_shapes_world,
    image_streams,
    make_image,
)
from training.data.tokenizer import tokenize

RESULTS = Path(__file__).parent / "results"


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process and its finished worker processes."""
    me, children = (resource.getrusage(who)
                    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + children.ru_utime, me.ru_stime + children.ru_stime


def end_to_end(images: int, size: int, workers: int) -> tuple[float, float, float]:
    """(wall, user CPU, system CPU) seconds to generate a world of `images` training images."""
    with tempfile.TemporaryDirectory() as out:
        user, system = cpu_seconds()
        start = time.perf_counter()
        generate_shapes_world(out, {"train": images}, size=size, seed=0, workers=workers,
                              progress=False)
        wall = time.perf_counter() - start
        user_after, system_after = cpu_seconds()
        return wall, user_after - user, system_after - system


def best_runs(images: int, size: int, workers: list[int], repeats: int) -> list[dict]:
    """Best of `repeats` timings per worker count, the counts interleaved so that
    load from other processes falls on all of them alike."""
    runs: dict[int, list[tuple[float, float, float]]] = {w: [] for w in workers}
    for _ in range(repeats):
        for w in workers:
            runs[w].append(end_to_end(images, size, w))
    results = []
    for w in workers:
        wall, user, system = min(runs[w])
        results.append({
            "workers": w, "images": images, "seconds": round(wall, 3),
            "images_per_s": round(images / wall, 1),
            "cpu_us_per_image": {"user": round(1e6 * user / images, 1),
                                 "system": round(1e6 * system / images, 1)},
            "all_seconds": [round(t[0], 3) for t in runs[w]],
        })
    return results


STAGES = ("streams", "sample", "render", "png", "captions", "tokenize", "questions")


def stage_times(images: int, size: int) -> dict[str, float]:
    """CPU microseconds per image spent in each stage, in this process.

    "record_json" is the encoding of the finished records into the JSON files'
    entries; writing files and moving results between processes are the rest of
    the end-to-end CPU time.
    """
    clock = time.process_time
    totals = dict.fromkeys(STAGES, 0.0)
    for index in range(images):
        t0 = clock()
        rngs = image_streams(0, "train", index)
        t1 = clock()
        scene = sample_scene(rngs["scene"], "train")
        t2 = clock()
        image, _ = render_scene_with_coverage(scene, size, rngs["background"])
        t3 = clock()
        encode_png(image, PNG_COMPRESSION)
        t4 = clock()
        captions = generate_captions(scene, rngs["captions"], n=CAPTIONS_PER_IMAGE)
        t5 = clock()
        [tokenize(c) for c in captions]
        t6 = clock()
        generate_questions(scene, rngs["questions"])
        t7 = clock()
        for name, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4,
                                          t6 - t5, t7 - t6), strict=True):
            totals[name] += seconds
    records = [(make_image(0, "train", index, size)[1], index) for index in range(images)]
    start = clock()
    _Encoded.encode("train", records)
    totals["record_json"] = clock() - start
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
        "stage_cpu_us_per_image": stage_times(args.stage_images, args.size),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        cpu = r["cpu_us_per_image"]
        print(f"{r['workers']} worker(s): {r['images_per_s']:.0f} images/s "
              f"({r['images']} images in {r['seconds']:.1f} s; CPU per image "
              f"{cpu['user']:.0f} us user + {cpu['system']:.0f} us system)")
    print("stages (CPU us/image, one process):", result["stage_cpu_us_per_image"])


if __name__ == "__main__":
    main()
