"""DALL-E decoding with the KV cache vs recomputing the whole sequence for every code.

The same G*G image codes of a batch of prompts are drawn three ways in ONNX Runtime (CPU
provider, the same threads):
- cached: the bundle's `prefill` (text -> logits of code 0 and the cache) and then one
  `decoder_step` per code (token, position, past -> logits, kv: the token's keys and
  values, written into the cache in place), as service/pipelines/dalle.py runs them;
- copying: the same, with a step graph exported from the same weights that returns the
  whole updated cache (`present`) instead, as bundles before `kv` did;
- uncached: a graph of the transformer's teacher-forced pass (`Dalle.forward`'s logits,
  without the loss), exported here from the same weights, run over the whole sequence
  (the L text tokens and G*G - 1 image positions) for every code; the positions after the
  current one hold padding codes that the causal mask keeps out, and the logits at the
  current position are drawn from.

All draw with the service's `draw_tokens` at the same seeded uniforms (or `--greedy`:
argmax), so all ways must give identical codes; the script checks it and reports it
with the largest difference between the ways' logits. It reports the total decode
time of each way (fastest of `--repeats`, the ways alternating so that load from
elsewhere hits both alike), their ratio, and the cost of one code by position: the mean
over each quarter of the G*G codes of the per-code median time (the cached way's code 0
is the prefill, reported on its own).

Without `--bundle` a bundle of the production size (4 layers, 4 heads, 128 wide, 24 text
positions, 8 x 8 codes of 512) is exported from randomly initialised models into a
temporary directory; speed does not depend on the weights. A bundle written by `glimpse
export` can be given instead: the weights of the uncached graph are then read from the
training run its manifest names, and checked against the bundle's prefill first.

    OMP_NUM_THREADS=1 python benchmarks/dalle_kv_cache.py --batches 1 16

Writes benchmarks/results/dalle_kv_cache.json and .md (`--out` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from generation_speed import cpu_name  # noqa: E402  (a sibling script)
from serve_load import machine  # noqa: E402

from models.dalle import Dalle, DalleConfig  # noqa: E402
from models.dvae import DiscreteVAE, DVAEConfig  # noqa: E402
from service.decoding import draw_tokens  # noqa: E402
from service.pipelines.dalle import DalleModel  # noqa: E402
from service.runtime import OnnxGraph, session_options  # noqa: E402
from service.text import WordIndex, pad_ids  # noqa: E402
from training.data.tokenizer import WordVocab  # noqa: E402
from training.export.dalle import DalleModels, export_step_graph, write_dalle_bundle  # noqa: E402
from training.export.onnx import DEFAULT_OPSET, onnx_export, round_weights_to_half  # noqa: E402
from training.runs import load_dalle  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# Shapes-world words: the random model's vocabulary and the benchmarks' prompts.
WORDS = ["a", "small", "large", "red", "orange", "yellow", "green", "cyan", "blue", "purple",
         "white", "circle", "square", "triangle", "diamond", "star", "hexagon", "cross",
         "left", "right", "of", "above", "below", "and", "the", "next", "to"]
QUARTERS = ("q1", "q2", "q3", "q4")


# ---------------------------------------------------------------------------- models


def random_dalle_models(config: DalleConfig, *, seed: int = 0) -> DalleModels:
    """A randomly initialised transformer of `config` (its text vocabulary is WORDS) and a
    dVAE of the production recipe's shape for its grid and codebook."""
    torch.manual_seed(seed)
    vocab = WordVocab(WORDS)
    if config.text_vocab_size != len(vocab):
        raise ValueError(f"the random model reads the {len(vocab)} benchmark words")
    dvae = DiscreteVAE(DVAEConfig(image_size=8 * config.image_grid, grid=config.image_grid,
                                  codebook_size=config.image_vocab_size, channels=16,
                                  max_channels=128, code_dim=64, res_blocks=0))
    return DalleModels(dalle=Dalle(config).eval(), dvae=dvae.eval(), vocab=vocab,
                       training={"random_weights": True, "seed": seed})


def config_of(args: argparse.Namespace) -> DalleConfig:
    """The transformer's size as the command line gives it (the production size by default)."""
    return DalleConfig(text_vocab_size=len(WORDS) + 4, text_length=args.text_length,
                       image_vocab_size=args.codebook, image_grid=args.grid,
                       n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)


def add_size_arguments(p: argparse.ArgumentParser) -> None:
    """The size of the random model built when no --bundle is given."""
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--text-length", type=int, default=24)
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--codebook", type=int, default=512)


def random_dalle_bundle(config: DalleConfig, repository: Path, name: str = "dalle-random"
                        ) -> tuple[Path, DalleModels]:
    """A bundle exported (and parity-checked) by training/export/dalle.py from random
    models, and the models (their weights rounded as the export rounded them)."""
    models = random_dalle_models(config)
    return write_dalle_bundle(models, repository, name, 1), models


class FullSequenceGraph(nn.Module):
    """`Dalle.forward`'s image logits without the loss (the image head on `Dalle.hidden`):
    text (B, L) and image codes (B, G*G - 1) -> logits (B, G*G, K), row i predicting code i
    from the codes before it."""

    def __init__(self, dalle: Dalle) -> None:
        super().__init__()
        self.dalle = dalle

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        d = self.dalle
        return d.image_head(d.hidden(text, image)[:, d.config.text_length - 1:])


def export_full_sequence(dalle: Dalle, path: Path) -> None:
    cfg = dalle.config
    text = torch.full((3, cfg.text_length), 5, dtype=torch.long)
    image = torch.zeros((3, cfg.image_length - 1), dtype=torch.long)
    batch = torch.export.Dim("batch")
    onnx_export(FullSequenceGraph(dalle).eval(), (text, image), path, ("text", "image"),
                ("logits",), {"text": {0: batch}, "image": {0: batch}}, DEFAULT_OPSET)


def copying_step(graph: OnnxGraph) -> Callable:
    """A `DalleModel.step` over a step graph that returns `present`."""

    def step(token: np.ndarray, position: np.ndarray, past: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        out = graph.run({"token": token, "position": position, "past": past})
        return out["logits"], out["present"]

    return step


def trained_dalle(model: DalleModel) -> Dalle:
    """The transformer of the run a bundle's manifest names, checked against the bundle."""
    run = (model.bundle.manifest.training or {}).get("run")
    if not run or not Path(run).exists():
        raise SystemExit(f"{model.bundle.path}: the uncached graph needs the transformer's "
                         f"weights, from the training run the manifest names ({run!r}), "
                         "which is not here")
    dalle, _ = load_dalle(run)
    round_weights_to_half(dalle)  # as the export stored them
    tokens = prompt_rows(model, np.random.default_rng(0), 4)
    bundle_logits = model.prefill(tokens)["logits"]
    with torch.no_grad():
        torch_logits = dalle.prefill(torch.from_numpy(
            pad_ids(tokens, length=model.text_length, pad_id=WordIndex.PAD_ID)))[0].numpy()
    if not np.abs(bundle_logits - torch_logits).max() <= 1e-3:
        raise SystemExit(f"{model.bundle.path}: the run {run} does not hold the bundle's "
                         "weights (its prefill logits differ)")
    return dalle


def machine_section(model: DalleModel, load_start: float) -> dict[str, Any]:
    """Where a DALL-E benchmark ran: the machine, its load before and after, the threads
    and the providers the step graph used."""
    return {**machine(), "cpu": cpu_name(), "load_average_1m_at_start": load_start,
            "load_average_1m_at_end": os.getloadavg()[0],
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "providers_used": model.step_graph.providers}


def write_result(result: dict[str, Any], out: Path,
                 markdown: Callable[[dict[str, Any]], str]) -> None:
    """OUT.json and OUT.md (`markdown` of the result, also printed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


# ---------------------------------------------------------------------------- decoding


def prompt_rows(model: DalleModel, rng: np.random.Generator, count: int
                ) -> list[tuple[int, ...]]:
    """`count` prompts as the service tokenises them: <bos> and 1..L-1 known word ids."""
    words = [i for i, t in enumerate(model.words.tokens) if not t.startswith("<")]
    lengths = rng.integers(1, model.text_length, count)
    return [(WordIndex.BOS_ID, *(int(w) for w in rng.choice(words, n))) for n in lengths]


def chooser(greedy: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """codes [B] from logits [B, K] and one uniform per row: argmax, or the service's draw
    at temperature 1 with no filtering."""
    if greedy:
        return lambda logits, _: logits.argmax(axis=1).astype(np.int64)

    def draw(logits: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        n = len(logits)
        return draw_tokens(logits, np.ones(n), np.zeros(n, np.int64), np.ones(n), uniform)
    return draw


class Decoding:
    """One way of drawing the codes: the codes, the logits each was drawn from, and the
    wall time of each code (graph run and draw)."""

    def __init__(self, rows: int, length: int, codebook: int) -> None:
        self.codes = np.zeros((rows, length), np.int64)
        self.logits = np.zeros((rows, length, codebook), np.float32)
        self.seconds = np.zeros(length)


def decode_cached(model: DalleModel, step: Callable, prompts: Sequence[tuple[int, ...]],
                  uniforms: np.ndarray, choose: Callable) -> Decoding:
    """Prefill, then `step` (token, position, past -> logits, cache) once per code."""
    N = model.image_length
    out = Decoding(len(prompts), N, model.settings.codebook_size)
    started = time.perf_counter()
    first = model.prefill(prompts)
    logits, past = first["logits"], first["present"]
    for i in range(N):
        if i:
            position = np.full(len(prompts), model.text_length + i - 1, np.int64)
            logits, past = step(out.codes[:, i - 1], position, past)
        out.logits[:, i] = logits
        out.codes[:, i] = choose(logits, uniforms[:, i])
        now = time.perf_counter()
        out.seconds[i], started = now - started, now
    return out


def decode_uncached(model: DalleModel, full: OnnxGraph, prompts: Sequence[tuple[int, ...]],
                    uniforms: np.ndarray, choose: Callable) -> Decoding:
    N = model.image_length
    out = Decoding(len(prompts), N, model.settings.codebook_size)
    text = pad_ids(prompts, length=model.text_length, pad_id=WordIndex.PAD_ID)
    started = time.perf_counter()
    for i in range(N):
        # codes i.. are still 0 in out.codes: padding the causal mask keeps from row i
        logits = full.run({"text": text, "image": out.codes[:, :N - 1]})["logits"][:, i]
        out.logits[:, i] = logits
        out.codes[:, i] = choose(logits, uniforms[:, i])
        now = time.perf_counter()
        out.seconds[i], started = now - started, now
    return out


def quarter_means_ms(per_code_s: np.ndarray, skip_first: bool = False) -> dict[str, float]:
    """Mean ms per code in each quarter of the codes (without code 0 if `skip_first`)."""
    quarters = np.array_split(np.arange(len(per_code_s)), 4)
    if skip_first:
        quarters[0] = quarters[0][1:]
    return {q: float(per_code_s[idx].mean() * 1000) for q, idx in zip(QUARTERS, quarters,
                                                                        strict=True)}


def measure(model: DalleModel, copying: Callable, full: OnnxGraph, batch: int, repeats: int,
            greedy: bool, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, batch])
    prompts = prompt_rows(model, rng, batch)
    uniforms = rng.random((batch, model.image_length))
    choose = chooser(greedy)
    ways = {"cached": lambda: decode_cached(model, model.step, prompts, uniforms, choose),
            "copying": lambda: decode_cached(model, copying, prompts, uniforms, choose),
            "uncached": lambda: decode_uncached(model, full, prompts, uniforms, choose)}
    first = {name: run() for name, run in ways.items()}  # warm-up, and the codes compared
    same = ((first["cached"].codes == first["uncached"].codes)
            & (first["copying"].codes == first["uncached"].codes))
    runs: dict[str, list[Decoding]] = {name: [] for name in ways}
    for r in range(repeats):
        for name in list(ways)[r % 2:] + list(ways)[:r % 2]:
            decoded = ways[name]()
            if not np.array_equal(decoded.codes, first[name].codes):
                raise RuntimeError(f"{name} decoding drew other codes on repeat {r}")
            runs[name].append(decoded)
    totals = {name: [float(d.seconds.sum()) for d in rs] for name, rs in runs.items()}
    per_code = {name: np.median([d.seconds for d in rs], axis=0) for name, rs in runs.items()}
    best = {name: min(t) for name, t in totals.items()}
    return {
        "batch": batch,
        "identical_codes": bool(same.all()),
        "identical_rows": int(same.all(axis=1).sum()),
        "max_abs_logit_diff": max(float(np.abs(first[way].logits
                                               - first["uncached"].logits).max())
                                  for way in ("cached", "copying")),
        "total_s": best,
        "median_total_s": {name: float(np.median(t)) for name, t in totals.items()},
        "uncached_over_cached": best["uncached"] / best["cached"],
        "copying_over_cached": best["copying"] / best["cached"],
        "images_per_s": {name: batch / s for name, s in best.items()},
        "prefill_ms": float(per_code["cached"][0] * 1000),
        "ms_per_code_by_quarter": {
            "cached": quarter_means_ms(per_code["cached"], skip_first=True),
            "copying": quarter_means_ms(per_code["copying"], skip_first=True),
            "uncached": quarter_means_ms(per_code["uncached"])},
    }


# ---------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    lines = [
        "# DALL-E decoding: KV cache vs recomputing the sequence\n",
        f"{result['bundle']}; {result['codes']} codes per image after {cfg['text_length']} "
        f"text positions; {'argmax' if cfg['greedy'] else 'seeded sampling'}. "
        f"{m['cpu']} ({m['cpu_count']} cores), {m['providers_used'][0]}, {cfg['threads']} "
        f"intra-op thread(s), OMP_NUM_THREADS={m['omp_num_threads']}; fastest of "
        f"{cfg['repeats']} alternating repeats; 1-minute load average "
        f"{m['load_average_1m_at_start']:.1f} at start, {m['load_average_1m_at_end']:.1f} "
        "at end.", "",
        "| batch | cached s | copying s | uncached s | uncached / cached | copying / cached |"
        " cached img/s | identical codes | max logit diff |", "|---" * 9 + "|"]
    for r in result["rows"]:
        t = r["total_s"]
        lines.append(
            f"| {r['batch']} | {t['cached']:.3f} | {t['copying']:.3f} | {t['uncached']:.3f} | "
            f"**{r['uncached_over_cached']:.1f}x** | {r['copying_over_cached']:.2f}x | "
            f"{r['images_per_s']['cached']:.1f} | "
            f"{'yes' if r['identical_codes'] else 'NO'} ({r['identical_rows']}/{r['batch']} "
            f"rows) | {r['max_abs_logit_diff']:.1e} |")
    lines += ["", "Milliseconds per code by position (median over repeats, mean over each "
              "quarter of the codes; the cached ways' code 0 is the prefill):", "",
              "| batch | way | prefill | 1st quarter | 2nd | 3rd | 4th |",
              "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        for way in ("cached", "copying", "uncached"):
            q = r["ms_per_code_by_quarter"][way]
            prefill = f"{r['prefill_ms']:.2f}" if way != "uncached" else "-"
            lines.append(f"| {r['batch']} | {way} | {prefill} | "
                         + " | ".join(f"{q[k]:.2f}" for k in QUARTERS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="a dalle bundle (default: a random one of "
                   "the size below, exported into a temporary directory)")
    add_size_arguments(p)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--greedy", action="store_true", help="argmax instead of seeded sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "dalle_kv_cache")
    args = p.parse_args(argv)

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="glimpse-dalle-kv-") as tmp:
        if args.bundle is None:
            bundle, models = random_dalle_bundle(config_of(args), Path(tmp) / "repository")
            dalle, described = models.dalle, "random weights (untrained) of the size given"
        else:
            bundle, dalle, described = args.bundle, None, f"bundle {args.bundle}"
        model = DalleModel.from_bundle(bundle, device="cpu", intra_op_threads=args.threads)
        dalle = dalle or trained_dalle(model)
        export_full_sequence(dalle, Path(tmp) / "full_sequence.onnx")
        export_step_graph(dalle, Path(tmp) / "copying_step.onnx", "present")
        full, copying = (OnnxGraph(ort.InferenceSession(str(Path(tmp) / f"{name}.onnx"),
                                                        session_options(args.threads),
                                                        providers=["CPUExecutionProvider"]),
                                   name) for name in ("full_sequence", "copying_step"))
        rows = []
        for batch in args.batches:
            row = measure(model, copying_step(copying), full, batch, args.repeats,
                          args.greedy, args.seed)
            rows.append(row)
            t = row["total_s"]
            print(f"batch {batch:>3}: cached {t['cached']:.3f} s, copying {t['copying']:.3f} s, "
                  f"uncached {t['uncached']:.3f} s, {row['uncached_over_cached']:.1f}x, "
                  f"identical codes: {row['identical_codes']}", flush=True)
    cfg = dalle.config
    result = {
        "benchmark": "dalle_kv_cache", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_section(model, load_start),
        "bundle": (f"{described}: {cfg.n_layer} layers, {cfg.n_head} heads, width "
                   f"{cfg.n_embd}, {cfg.attention} attention"),
        "transformer": cfg.to_dict(), "codes": cfg.image_length,
        "config": {"batches": args.batches, "repeats": args.repeats, "threads": args.threads,
                   "greedy": args.greedy, "seed": args.seed, "text_length": cfg.text_length},
        "rows": rows,
    }
    write_result(result, args.out, markdown)
    return result


if __name__ == "__main__":
    main()
