"""Layer normalisation in a recurrent encoder or decoder: validation score against
training steps, each variant at its own best learning rate.

Ba, Kiros & Hinton (2016, Sec. 6.2, Fig. 3) trained Kiros et al.'s order/VSE embedding
with and without a layer-normalised GRU and reported that LN reached the same recall in
fewer steps. This re-runs that comparison in miniature on the shapes world, for the
retrieval embedding's GRU sentence encoder (`--task retrieval`) and for a captioner's
LSTM (`--task caption`: NIC on its frozen encoder's CNN(I), precomputed, which makes a
sweep affordable on a CPU) and for the m-RNN's ReLU RNN (`--task caption-mrnn`,
likewise). The runs of a task share data, seed, image features, schedule and step
budget and differ only in `--layer-norm` and the learning rate: each variant is trained
at every rate of `--lrs`, so that each is compared at its own best rate, not at one
that suits the other. The validation score is measured after every
epoch; every run takes every step (no early stop), so the curves cover the same steps.

    python scripts/ln_curve.py --task retrieval --data data/shapes15k \
        --encoder-init runs/encoder --runs runs/vse_ln --epochs 18 --lrs 1e-3 3e-3 1e-2 3e-2
    python scripts/ln_curve.py --task caption --data data/shapes15k \
        --encoder-init runs/encoder --runs runs/nic_ln --epochs 4 --lrs 1e-3 3e-3 1e-2

write benchmarks/results/TASK_ln.json and docs/images/TASK_ln.png.
Runs whose history.json exists are reused (--retrain to train them again).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from training.cli import main as glimpse

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = {"plain": [], "ln": ["--layer-norm"]}
# Each variant's runs in its own hue, lighter for smaller learning rates.
HUES = {"plain": (31, 119, 180), "ln": (255, 127, 14)}
WIDTH, HEIGHT, MARGIN = 360, 300, 48


@dataclass(frozen=True)
class Task:
    """What one comparison trains and reads: the command, the score, the panels."""

    command: tuple[str, ...]  # `glimpse` arguments before the common ones
    base_config: str | None  # a config file the runs start from (repository-relative)
    score: str  # the validation score a run's "best" tracks
    panels: tuple[tuple[str, str], ...]  # (history key, title) per panel
    labels: dict[str, str]  # variant -> legend label
    runs: str  # the default run directory
    cache: str | None = None  # a features file the first run writes and the others reuse


def caption_task(arch: str, labels: dict[str, str], runs: str) -> Task:
    """A captioner's comparison: its own config, greedy validation CIDEr-D and semantics."""
    return Task(command=("train", "caption", "--arch", arch),
                base_config=f"configs/caption_{arch}.json", score="cider_d",
                panels=(("cider_d", "CIDEr-D (greedy)"),
                        ("semantic_exactness", "semantic exactness"), ("coverage", "coverage")),
                labels=labels, runs=runs)


TASKS = {
    "retrieval": Task(
        command=("train", "retrieval", "--loss", "max"), base_config=None, score="rsum",
        panels=(("i2t_r1", "R@1 image -> text (%)"), ("t2i_r1", "R@1 text -> image (%)"),
                ("rsum", "rsum (six recalls, max 600)")),
        labels={"plain": "GRU", "ln": "LN GRU"}, runs="runs/vse_ln",
        cache="features.safetensors"),
    "caption": caption_task("nic", {"plain": "NIC, LSTM", "ln": "NIC, LN LSTM"},
                            "runs/nic_ln"),
    "caption-mrnn": caption_task("mrnn", {"plain": "m-RNN, RNN", "ln": "m-RNN, LN RNN"},
                                 "runs/mrnn_ln"),
}


def variant_name(encoder: str, lr: float) -> str:
    return f"{encoder}-lr{lr:g}"


def variants(lrs: list[float]) -> dict[str, list[str]]:
    """Run name -> `glimpse train` flags, each variant at each learning rate."""
    return {variant_name(enc, lr): [*flags, "--lr", f"{lr:g}"]
            for enc, flags in ENCODERS.items() for lr in lrs}


def colour(name: str, lrs: list[float]) -> tuple[int, int, int]:
    encoder, lr = name.rsplit("-lr", 1)
    shade = 0.55 * (1 - sorted(lrs).index(float(lr)) / max(len(lrs) - 1, 1))
    return tuple(int(c + (255 - c) * shade) for c in HUES[encoder])


def train(task: Task, flags: list[str], run_dir: Path, args: argparse.Namespace
          ) -> list[dict]:
    history = run_dir / "history.json"
    if history.exists() and not args.retrain:
        return json.loads(history.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cache = args.runs / task.cache if task.cache else None
    if cache and cache.exists():  # the frozen encoder's features are the same for every run
        shutil.copy(cache, run_dir / cache.name)
    # Every run takes every step of the budget: "best" still tracks the score, but a run
    # never stops early.
    settings = json.loads((ROOT / task.base_config).read_text()) if task.base_config else {}
    settings["trainer"] = {**settings.get("trainer", {}), "early_stop_metric": task.score,
                           "patience": 10**6}
    config = run_dir / "curve_config.json"
    config.write_text(json.dumps(settings))
    glimpse([*task.command, "--config", str(config), "--data", args.data,
             "--out", str(run_dir), "--encoder-init", args.encoder_init,
             "--epochs", str(args.epochs), "--seed", str(args.seed), "--device", "cpu", *flags])
    if cache and not cache.exists():
        shutil.copy(run_dir / cache.name, cache)
    return json.loads(history.read_text())


def steps_to_reach(history: list[dict], key: str, value: float) -> int | None:
    return next((h["step"] for h in history if h[key] >= value), None)


def summarise(histories: dict[str, list[dict]], task: Task) -> dict:
    """Best and final values of every run, and the steps each needs to reach 90% of the
    weaker variant's best score at its best rate (the paper's "same recall in fewer
    steps"); `tuned` names each variant's best learning rate."""
    key = task.score
    best_of = {name: max(h[key] for h in hist) for name, hist in histories.items()}
    tuned = {enc: max((n for n in histories if n.rsplit("-lr", 1)[0] == enc), key=best_of.get)
             for enc in ENCODERS}
    target = 0.9 * min(best_of[name] for name in tuned.values())
    out = {"score": key, "target": round(target, 4), "tuned": tuned}
    for name, hist in histories.items():
        best = max(hist, key=lambda h: h[key])
        out[name] = {"best": best[key], "best_step": best["step"],
                     "final": {k: hist[-1][k] for k, _ in task.panels},
                     "steps_to_target": steps_to_reach(hist, key, target),
                     "train_seconds": hist[-1]["train_seconds"]}
    return out


def nice_step(span: float, ticks: int = 4) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten) giving about `ticks` ticks."""
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _panel(histories: dict[str, list[dict]], key: str, title: str,
           font: ImageFont.ImageFont, colours: dict[str, tuple[int, int, int]]) -> Image.Image:
    panel = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(panel)
    x_max = max(h["step"] for hist in histories.values() for h in hist)
    y_step = nice_step(max(h[key] for hist in histories.values() for h in hist))
    y_max = y_step * math.ceil(max(h[key] for hist in histories.values() for h in hist)
                               / y_step)
    x_step = nice_step(x_max)
    left, top, right, bottom = MARGIN, 28, WIDTH - 24, HEIGHT - 36

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (right - left) * step / x_max, bottom - (bottom - top) * value / y_max)

    draw.text((WIDTH / 2, 6), title, fill="black", font=font, anchor="mt")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    for i in range(int(round(y_max / y_step)) + 1):
        _, y = xy(0, i * y_step)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.line([(left + 1, y), (right, y)], fill=(230, 230, 230))
        draw.text((left - 6, y), f"{i * y_step:g}", fill="black", font=font, anchor="rm")
    for i in range(int(x_max // x_step) + 1):
        x, _ = xy(i * x_step, 0)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x, bottom + 6), f"{i * x_step:g}", fill="black", font=font, anchor="mt")
    draw.text(((left + right) / 2, HEIGHT - 4), "training step", fill="black", font=font,
              anchor="mb")
    for name, hist in histories.items():
        points = [xy(h["step"], h[key]) for h in hist]
        draw.line(points, fill=colours[name], width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colours[name])
    return panel


def plot(histories: dict[str, list[dict]], task: Task, lrs: list[float], out: Path) -> None:
    font = ImageFont.load_default(size=13)
    colours = {name: colour(name, lrs) for name in histories}
    rows = math.ceil(len(histories) / 4)  # legend entries, four to a row
    figure = Image.new("RGB", (WIDTH * len(task.panels), HEIGHT + 24 * rows), "white")
    for i, (key, title) in enumerate(task.panels):
        figure.paste(_panel(histories, key, title, font, colours), (i * WIDTH, 0))
    draw = ImageDraw.Draw(figure)
    for i, name in enumerate(histories):
        x, y = MARGIN + (i % 4) * 240, HEIGHT + 12 + 24 * (i // 4)
        draw.line([(x, y), (x + 24, y)], fill=colours[name], width=3)
        encoder, lr = name.rsplit("-lr", 1)
        draw.text((x + 30, y), f"{task.labels[encoder]}, lr {lr}", fill="black", font=font,
                  anchor="lm")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="retrieval")
    p.add_argument("--data", default="data/shapes15k")
    p.add_argument("--encoder-init", default="runs/encoder")
    p.add_argument("--runs", type=Path, help="default: runs/vse_ln, runs/nic_ln or "
                   "runs/mrnn_ln")
    p.add_argument("--epochs", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2],
                   help="learning rates each variant is trained at")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--json", type=Path, help="default: benchmarks/results/TASK_ln.json")
    p.add_argument("--png", type=Path, help="default: docs/images/TASK_ln.png")
    args = p.parse_args()
    task = TASKS[args.task]
    args.runs = args.runs or Path(task.runs)
    args.json = args.json or Path(f"benchmarks/results/{args.task}_ln.json")
    args.png = args.png or Path(f"docs/images/{args.task}_ln.png")

    args.runs.mkdir(parents=True, exist_ok=True)
    runs = variants(args.lrs)
    histories = {name: train(task, flags, args.runs / name, args)
                 for name, flags in runs.items()}
    result = {"setup": {"task": args.task, "command": list(task.command),
                        "base_config": task.base_config, "data": args.data,
                        "encoder_init": args.encoder_init, "variants": runs,
                        "epochs": args.epochs, "seed": args.seed, "split": "val (500 images)"},
              "summary": summarise(histories, task), "history": histories}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    plot(histories, task, args.lrs, args.png)
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
