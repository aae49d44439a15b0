"""Batched vs one-image-at-a-time beam search, and the search's own cost per step.

The step is a NumPy stand-in for an exported decoder step graph of caption
size (embedding + tanh RNN cell + vocabulary projection + top-K inside the
step), so the numbers isolate `service.decoding` from ONNX Runtime. Writes
benchmarks/results/decoding_speed.{json,md}.

    .venv/bin/python benchmarks/decoding_speed.py --images 32 --beam-size 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from service.decoding import StepOutput, beam_search

RESULTS = Path(__file__).parent / "results"


class RNNStep:
    """h' = tanh(E[y] + h[parents] W + c); log_softmax(h' U) -> top-K, like a step graph."""

    def __init__(self, vocab: int, hidden: int, k: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.embed = rng.normal(scale=0.5, size=(vocab + 1, hidden)).astype(np.float32)
        self.recur = rng.normal(scale=hidden**-0.5, size=(hidden, hidden)).astype(np.float32)
        self.out = rng.normal(scale=3 * hidden**-0.5, size=(hidden, vocab)).astype(np.float32)
        self.k = k
        self.seconds = 0.0

    def __call__(self, tokens, parents, state, context) -> StepOutput:
        start = time.perf_counter()
        h = np.tanh(self.embed[tokens] + state["h"][parents] @ self.recur + context["image"])
        logits = h @ self.out
        logits -= logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        top = np.argpartition(-log_probs, self.k - 1, axis=1)[:, :self.k]
        top_lp = np.take_along_axis(log_probs, top, axis=1)
        order = np.argsort(-top_lp, axis=1, kind="stable")
        out = StepOutput(np.take_along_axis(top_lp, order, axis=1),
                         np.take_along_axis(top, order, axis=1).astype(np.int64), {"h": h})
        self.seconds += time.perf_counter() - start
        return out


def timed(fn, step: RNNStep, repeats: int) -> tuple[float, float]:
    """Best wall time of `repeats` runs, and the time that run spent inside the step."""
    runs = []
    for _ in range(repeats):
        step.seconds = 0.0
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start, step.seconds))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    step = RNNStep(args.vocab, args.hidden, args.top_k)
    rng = np.random.default_rng(1)
    state = {"h": np.zeros((args.images, args.hidden), dtype=np.float32)}
    context = {"image": rng.normal(size=(args.images, args.hidden)).astype(np.float32)}
    settings = dict(bos_id=args.vocab, eos_id=0, beam_size=args.beam_size,
                    max_length=args.max_length, top_k=args.top_k)

    def batched():
        return beam_search(step, state, context, **settings)

    def one_by_one():
        return [beam_search(step, {"h": state["h"][[i]]}, {"image": context["image"][[i]]},
                            **settings)[0] for i in range(args.images)]

    assert [h[0].tokens for h in batched()] == [h[0].tokens for h in one_by_one()]
    batched_s, step_s = timed(batched, step, args.repeats)
    single_s, _ = timed(one_by_one, step, args.repeats)
    result = {
        "config": vars(args),
        "machine": f"{platform.processor() or platform.machine()}, numpy {np.__version__}",
        "batched_seconds": batched_s,
        "one_by_one_seconds": single_s,
        "speedup": single_s / batched_s,
        "batched_images_per_second": args.images / batched_s,
        "search_share_of_batched_time": 1 - step_s / batched_s,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decoding_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "decoding_speed.md").write_text(
        "# Beam search: batched vs one image at a time (NumPy step, CPU)\n\n"
        f"{args.images} images, beam {args.beam_size}, max length {args.max_length}, "
        f"vocabulary {args.vocab}, hidden {args.hidden}, K {args.top_k}; "
        f"best of {args.repeats}; {result['machine']}.\n\n"
        "| decoding | seconds | images/s |\n|---|---|---|\n"
        f"| batched | {batched_s:.3f} | {args.images / batched_s:.0f} |\n"
        f"| one by one | {single_s:.3f} | {args.images / single_s:.0f} |\n\n"
        f"Batched is {result['speedup']:.1f}x faster; the search itself (outside the step) "
        f"takes {100 * result['search_share_of_batched_time']:.0f}% of the batched time.\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
