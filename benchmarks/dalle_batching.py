"""DALL-E under Poisson arrivals: step-level (continuous) batching vs static batching.

Requests for n = 1..`--max-images` images (uniform) with random prompts arrive by a
seeded Poisson process; both policies decode them with the service's own pieces, a
`StepScheduler` planning rows into a `DalleDecoder` (prefill, one `decoder_step` per
code for every row) and `DalleModel.finish` (dVAE decoder, PNGs) answering each
request, with at most `--max-rows` rows decoding at once:
- continuous, the service's way (service/step_batching.py): rows of waiting requests
  join the decode batch between steps as soon as there is room, a request's rows may
  join a few at a time, and rows leave when their last code is drawn;
- static, the baseline written here: when the decoder is idle, a batch is formed from
  the waiting requests, first come first served, whole requests only, up to
  `--max-rows` rows; it decodes until all its rows have finished, and requests arriving
  meanwhile wait for the next batch.

The clock is simulated and the work is real: every step and every request's finish runs
on the CPU, and arrivals wait for the step in progress; an idle decoder jumps to the next
arrival, so the run takes the compute time only. Two clocks:
- measured (the figures): work moves the clock on by the wall time it took, so both
  policies pay the real step cost, which grows with the rows in the batch;
- flat (a model, labelled so): a step costs what a one-row step measured here, whatever
  its rows, plus a one-row prefill when rows join; a request's finish costs its wall
  time. This is a device whose step time does not grow with the batch (a GPU below
  saturation), the case step-level batching is made for.
The script first measures one step and one prefill at 1, 2, 4, 8 and `--max-rows` rows,
which says which of the two this machine is closer to. A request's latency runs from
its arrival to its answer (its PNGs encoded).

Arrival rates are given as loads, fractions of each clock's capacity: the images per
second of back-to-back full batches of `--max-rows` rows. At each load both policies
serve the same requests (same arrival times, prompts, n and seeds), alternating which
goes first; the script checks that every request gets the same images both ways and
reports images/s, p50 and p95 latency, and their ratios.

    OMP_NUM_THREADS=1 python benchmarks/dalle_batching.py

Writes benchmarks/results/dalle_batching.json and .md (`--out` changes the stem). Without
`--bundle` a random-weight bundle of the production size is exported first, as
benchmarks/dalle_kv_cache.py does.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from dalle_kv_cache import (  # noqa: E402  (a sibling script)
    add_size_arguments,
    config_of,
    machine_section,
    random_dalle_bundle,
    write_result,
)
from serve_load import percentiles_ms  # noqa: E402

from service.pipelines.dalle import DalleDecoder, DalleModel, DalleRequest  # noqa: E402
from service.step_batching import StepRequest, StepScheduler  # noqa: E402

RESULTS = Path(__file__).parent / "results"
POLICIES = ("continuous", "static")


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds since the start
    request: DalleRequest


def poisson_arrivals(model: DalleModel, rate: float, count: int, max_images: int,
                     seed: int) -> list[Arrival]:
    """`count` requests at exponential gaps of mean 1/rate, each for 1..max_images images of
    a prompt of 2..8 words the model knows."""
    rng = np.random.default_rng(seed)
    words = [t for t in model.words.tokens if not t.startswith("<")]
    longest = min(8, model.text_length - 1)
    times = np.cumsum(rng.exponential(1.0 / rate, count))
    arrivals = []
    for i, at in enumerate(times):
        prompt = " ".join(rng.choice(words, rng.integers(min(2, longest), longest + 1)))
        n = int(rng.integers(1, max_images + 1))
        arrivals.append(Arrival(float(at), model.request(prompt, n, seed=seed * 100_003 + i)))
    return arrivals


@dataclass
class Served:
    """What one policy did with one set of arrivals."""

    latencies_s: list[float] = field(default_factory=list)  # in arrival order
    images: list[np.ndarray] = field(default_factory=list)  # in arrival order
    end: float = 0.0  # when the last answer was given
    busy_s: float = 0.0  # seconds the decoder computed
    rows_per_step: list[int] = field(default_factory=list)  # rows each step decoded

    def summary(self, arrivals: Sequence[Arrival]) -> dict[str, Any]:
        images = sum(a.request.n for a in arrivals)
        span = self.end - arrivals[0].at
        return {"images_per_s": images / span, "requests": len(arrivals), "images": images,
                **percentiles_ms(self.latencies_s), "busy_fraction": self.busy_s / span,
                "mean_rows_per_step": float(np.mean(self.rows_per_step))}


class MeasuredCost:
    """Work moves the clock on by the wall time it took."""

    name = "measured"

    def step(self, joined: bool, wall_s: float) -> float:
        return wall_s

    def finish(self, wall_s: float) -> float:
        return wall_s


@dataclass(frozen=True)
class FlatStepCost:
    """A model of a device whose step costs the same for any rows up to max rows (a GPU
    below saturation): every step costs what one row's step costs here, plus one row's
    prefill when rows join; a request's finish (dVAE decoder, PNGs) costs its wall time."""

    step_s: float
    prefill_s: float
    name: str = "flat step (modelled)"

    def step(self, joined: bool, wall_s: float) -> float:
        return self.step_s + (self.prefill_s if joined else 0.0)

    def finish(self, wall_s: float) -> float:
        return wall_s


Cost = MeasuredCost | FlatStepCost


class Simulation:
    """A simulated clock that work moves on, and the answers given at it."""

    def __init__(self, model: DalleModel, arrivals: Sequence[Arrival], cost: Cost) -> None:
        self.model = model
        self.arrivals = arrivals
        self.cost = cost
        self.next = 0  # index of the first arrival not yet submitted
        self.now = 0.0
        self.index = {id(a.request): i for i, a in enumerate(arrivals)}
        self.served = Served(latencies_s=[math.nan] * len(arrivals),
                             images=[np.empty(0)] * len(arrivals))

    @property
    def arriving(self) -> bool:
        return self.next < len(self.arrivals)

    def arrived(self) -> list[Arrival]:
        """The arrivals up to now, not yet handed out."""
        start = self.next
        while self.arriving and self.arrivals[self.next].at <= self.now:
            self.next += 1
        return list(self.arrivals[start:self.next])

    def wait_for_next(self) -> None:
        self.now = max(self.now, self.arrivals[self.next].at)

    def timed(self, work: Callable[[], Any], cost: Callable[[float], float]) -> Any:
        """Run `work`; the clock moves on by `cost` of its wall time."""
        started = time.perf_counter()
        out = work()
        spent = cost(time.perf_counter() - started)
        self.now += spent
        self.served.busy_s += spent
        return out

    def step(self, scheduler: StepScheduler[DalleRequest], decoder: DalleDecoder) -> None:
        """One planned step of the decode batch, then the answers of the requests it
        completed."""
        plan = scheduler.plan()
        finished = self.timed(lambda: decoder.advance(plan.leaving, plan.joining),
                              lambda wall: self.cost.step(bool(plan.joining), wall))
        self.served.rows_per_step.append(len(decoder) + len(finished))
        for request in scheduler.complete(finished):
            self.answer(request)

    def answer(self, request: StepRequest[DalleRequest]) -> None:
        result = self.timed(lambda: self.model.finish(request.payload,
                                                      request.ordered_outputs()),
                            self.cost.finish)
        i = self.index[id(request.payload)]
        self.served.latencies_s[i] = self.now - request.enqueued_at
        self.served.images[i] = result.images
        self.served.end = self.now


def serve_continuous(model: DalleModel, arrivals: Sequence[Arrival], max_rows: int,
                     cost: Cost) -> Served:
    """The service's way: rows join and leave the decode batch between steps."""
    sim = Simulation(model, arrivals, cost)
    scheduler: StepScheduler[DalleRequest] = StepScheduler(max_rows=max_rows,
                                                           max_queue_size=len(arrivals))
    decoder = DalleDecoder(model)
    while sim.arriving or not scheduler.empty:
        for arrival in sim.arrived():
            scheduler.submit(arrival.request, arrival.request.rows, now=arrival.at,
                             timeout_s=math.inf)
        if scheduler.empty:
            sim.wait_for_next()
            continue
        sim.step(scheduler, decoder)
    return sim.served


def serve_static(model: DalleModel, arrivals: Sequence[Arrival], max_rows: int,
                 cost: Cost) -> Served:
    """The baseline: whole requests form a batch when the decoder is idle, and the batch
    decodes until all its rows have finished before the next one forms."""
    sim = Simulation(model, arrivals, cost)
    waiting: deque[Arrival] = deque()
    decoder = DalleDecoder(model)
    while sim.arriving or waiting:
        waiting.extend(sim.arrived())
        if not waiting:
            sim.wait_for_next()
            continue
        batch, rows = [], 0
        while waiting and rows + waiting[0].request.rows <= max_rows:
            batch.append(waiting.popleft())
            rows += batch[-1].request.rows
        # The same scheduler and decoder, with room for exactly this batch's rows.
        scheduler: StepScheduler[DalleRequest] = StepScheduler(max_rows=rows,
                                                               max_queue_size=len(batch))
        for arrival in batch:
            scheduler.submit(arrival.request, arrival.request.rows, now=arrival.at,
                             timeout_s=math.inf)
        while not scheduler.empty:
            sim.step(scheduler, decoder)
    return sim.served


SERVE = {"continuous": serve_continuous, "static": serve_static}


def one_word(model: DalleModel) -> str:
    return next(t for t in model.words.tokens if not t.startswith("<"))


def step_cost_by_rows(model: DalleModel, rows: Sequence[int], steps: int = 20
                      ) -> dict[int, dict[str, float]]:
    """Median ms of one decoder step and of one prefill for each number of rows (a cache
    of random values, rows at positions spread over the image)."""
    rng = np.random.default_rng(0)
    past_shape = model.prefill([(1,)])["present"].shape[1:]
    costs = {}
    for r in rows:
        past = rng.standard_normal((r, *past_shape)).astype(np.float32)
        token = rng.integers(0, model.settings.codebook_size, r)
        position = model.text_length + rng.integers(0, model.image_length - 1, r)
        prompts = [(1,) * int(n) for n in rng.integers(2, model.text_length, r)]
        times: dict[str, list[float]] = {"step_ms": [], "prefill_ms": []}
        for i in range(steps + 2):  # two warm-up runs
            started = time.perf_counter()
            model.step(token, position, past)
            between = time.perf_counter()
            model.prefill(prompts)
            if i >= 2:
                times["step_ms"].append(between - started)
                times["prefill_ms"].append(time.perf_counter() - between)
        costs[r] = {k: float(np.median(v) * 1000) for k, v in times.items()}
    return costs


def full_batch_capacity(model: DalleModel, max_rows: int, cost: Cost, repeats: int = 2
                        ) -> float:
    """Images/s of back-to-back full batches of `max_rows` one-image requests on the clock
    `cost` keeps (the fastest of `repeats` after a warm-up run)."""
    word = one_word(model)
    arrivals = [Arrival(0.0, model.request(word, 1, seed=i)) for i in range(max_rows)]
    spans = [serve_static(model, arrivals, max_rows, cost).end for _ in range(repeats + 1)]
    return max_rows / min(spans[1:])


def measure_load(model: DalleModel, load: float, capacity: float, cost: Cost,
                 args: argparse.Namespace, order: Sequence[str]) -> dict[str, Any]:
    mean_images = (1 + args.max_images) / 2
    rate = load * capacity / mean_images
    arrivals = poisson_arrivals(model, rate, args.requests, args.max_images, args.seed)
    served = {name: SERVE[name](model, arrivals, args.max_rows, cost) for name in order}
    same = [np.array_equal(a, b) for a, b in zip(served["continuous"].images,
                                                    served["static"].images, strict=True)]
    policies = {name: served[name].summary(arrivals) for name in POLICIES}
    c, s = policies["continuous"], policies["static"]
    return {"load": load, "requests_per_s": rate, "offered_images_per_s": rate * mean_images,
            "first": order[0], "identical_images": all(same),
            "identical_requests": int(sum(same)), **policies,
            "ratios": {"throughput_continuous_over_static": c["images_per_s"] / s["images_per_s"],
                       "p50_static_over_continuous": s["p50_ms"] / c["p50_ms"],
                       "p95_static_over_continuous": s["p95_ms"] / c["p95_ms"]}}


def measure_clock(model: DalleModel, cost: Cost, args: argparse.Namespace) -> dict[str, Any]:
    """Capacity, then both policies at each load, on one clock."""
    capacity = full_batch_capacity(model, args.max_rows, cost)
    print(f"{cost.name}: capacity {capacity:.1f} images/s at {args.max_rows} rows", flush=True)
    rows = []
    for k, load in enumerate(args.loads):
        order = POLICIES if k % 2 == 0 else POLICIES[::-1]
        row = measure_load(model, load, capacity, cost, args, order)
        rows.append(row)
        print(f"  load {load:.2f}: " + ", ".join(
            f"{name} {row[name]['images_per_s']:.1f} img/s p50 {row[name]['p50_ms']:.0f} ms "
            f"p95 {row[name]['p95_ms']:.0f} ms" for name in POLICIES)
            + f"; identical images: {row['identical_images']}", flush=True)
    return {"clock": cost.name, "capacity_images_per_s": capacity, "rows": rows}


# ---------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    costs = result["step_cost_ms_by_rows"]
    lines = [
        "# DALL-E under Poisson arrivals: step-level vs static batching\n",
        f"{result['bundle']}; {cfg['requests']} requests per load and policy, n = 1.."
        f"{cfg['max_images']} images each, at most {cfg['max_rows']} rows decoding. "
        f"{m['cpu']} ({m['cpu_count']} cores), {m['providers_used'][0]}, {cfg['threads']} "
        f"intra-op thread(s), OMP_NUM_THREADS={m['omp_num_threads']}; 1-minute load average "
        f"{m['load_average_1m_at_start']:.1f} at start, {m['load_average_1m_at_end']:.1f} at "
        "end.", "",
        "Cost of one decoder step and one prefill by rows (median ms):", "",
        "| rows | " + " | ".join(costs) + " |", "|---|" + "---|" * len(costs),
        "| step ms | " + " | ".join(f"{c['step_ms']:.2f}" for c in costs.values()) + " |",
        "| step ms per row | " + " | ".join(f"{c['step_ms'] / int(r):.2f}"
                                          for r, c in costs.items()) + " |",
        "| prefill ms | " + " | ".join(f"{c['prefill_ms']:.2f}" for c in costs.values()) + " |"]
    for clock in result["clocks"]:
        lines += ["", f"## Clock: {clock['clock']}", "",
                  f"Capacity (back-to-back full batches): "
                  f"{clock['capacity_images_per_s']:.1f} images/s; loads are fractions of it.",
                  "", "| load | req/s | policy | images/s | p50 ms | p95 ms | rows per step | "
                  "busy |", "|---|---|---|---|---|---|---|---|"]
        for r in clock["rows"]:
            for name in POLICIES:
                p = r[name]
                lines.append(f"| {r['load']:.2f} | {r['requests_per_s']:.2f} | {name} | "
                             f"{p['images_per_s']:.1f} | {p['p50_ms']:.0f} | {p['p95_ms']:.0f} "
                             f"| {p['mean_rows_per_step']:.1f} | "
                             f"{100 * p['busy_fraction']:.0f}% |")
        lines += ["", "| load | images/s continuous / static | p50 static / continuous | "
                  "p95 static / continuous | identical images |", "|---|---|---|---|---|"]
        for r in clock["rows"]:
            q = r["ratios"]
            lines.append(f"| {r['load']:.2f} | {q['throughput_continuous_over_static']:.2f}x | "
                         f"**{q['p50_static_over_continuous']:.2f}x** | "
                         f"{q['p95_static_over_continuous']:.2f}x | "
                         f"{'yes' if r['identical_images'] else 'NO'} "
                         f"({r['identical_requests']}/{r['continuous']['requests']}) |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="a dalle bundle (default: a random one of "
                   "the size below, exported into a temporary directory)")
    add_size_arguments(p)
    p.add_argument("--loads", nargs="+", type=float, default=[0.3, 0.6, 0.9, 1.2],
                   help="arrival rates as fractions of the full-batch capacity")
    p.add_argument("--requests", type=int, default=60, help="requests per load and policy")
    p.add_argument("--max-images", type=int, default=8, help="n is uniform in 1..this")
    p.add_argument("--max-rows", type=int, default=16, help="rows decoding at once")
    p.add_argument("--clocks", nargs="+", choices=("measured", "flat"),
                   default=["measured", "flat"], help="measured: work costs its wall time; "
                   "flat: a step costs one row's step whatever the rows (modelled)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "dalle_batching")
    args = p.parse_args(argv)
    if args.max_images > args.max_rows:
        p.error("--max-images must not exceed --max-rows (a static batch holds whole requests)")

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="glimpse-dalle-batching-") as tmp:
        if args.bundle is None:
            bundle, _ = random_dalle_bundle(config_of(args), Path(tmp) / "repository")
            described = "random weights (untrained)"
        else:
            bundle, described = args.bundle, f"bundle {args.bundle}"
        model = DalleModel.from_bundle(bundle, device="cpu", intra_op_threads=args.threads)
        costs = step_cost_by_rows(model, sorted({1, 2, 4, 8, args.max_rows}))
        print("step ms by rows: " + ", ".join(f"{r}: {c['step_ms']:.2f}"
                                              for r, c in costs.items()), flush=True)
        clocks = {"measured": MeasuredCost(),
                  "flat": FlatStepCost(costs[1]["step_ms"] / 1000, costs[1]["prefill_ms"] / 1000)}
        measured = [measure_clock(model, clocks[name], args) for name in args.clocks]
    s = model.settings
    result = {
        "benchmark": "dalle_batching", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_section(model, load_start),
        "bundle": (f"{described}: {s.grid} x {s.grid} codes of {s.codebook_size} after "
                   f"{s.text_length} text positions, {s.image_size} px images"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "step_cost_ms_by_rows": {str(r): c for r, c in costs.items()},
        "clocks": measured,
    }
    write_result(result, args.out, markdown)
    return result


if __name__ == "__main__":
    main()
