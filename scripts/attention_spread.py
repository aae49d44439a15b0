"""Where a grid-attention captioner looks: how spread its attention is over the grid,
and how much of it lands on the objects, while it writes its greedy captions.

For each caption run (SAT soft or hard), over the first `--images` images of a split:

- `max_alpha`: the largest weight α_ti of each step, averaged over words;
- `cells_attended`: the effective number of cells, exp(entropy of α_t), averaged
  (1 for attention on one cell; 64 for uniform attention over an 8 x 8 grid);
- `on_objects`: the share of α_t on cells that an object's box overlaps, averaged,
  beside the share of cells those are (what uniform attention would give).

    python scripts/attention_spread.py runs/sat-frozen runs/sat-l0 --data data/shapes15k

prints one JSON object per run (and writes them with --out).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from training.data.images import load_images
from training.data.readers import load_captions
from training.export.caption import load_caption_model


def object_cells(objects: list[dict], image_size: int, side: int) -> torch.Tensor:
    """(side * side,) bool: the grid cells (row by row) that an object's box overlaps."""
    cell = image_size / side
    covered = torch.zeros(side, side, dtype=torch.bool)
    for obj in objects:
        x, y, w, h = obj["bbox"]
        c0, c1 = int(x // cell), min(side - 1, int(math.ceil((x + w) / cell)) - 1)
        r0, r1 = int(y // cell), min(side - 1, int(math.ceil((y + h) / cell)) - 1)
        covered[r0:r1 + 1, c0:c1 + 1] = True
    return covered.flatten()


@torch.no_grad()
def spread(run: Path, data: Path, split: str, num_images: int, max_words: int = 16) -> dict:
    model, vocab, config = load_caption_model(run)
    if not model.attends:
        raise SystemExit(f"{run}: {config['model']['caption']['arch']} has no attention")
    images = load_captions(data, split)[:num_images]
    scenes = {s["imgid"]: s for s in json.loads((data / "scenes.json").read_text())["images"]}
    size = int(config["model"]["image_size"])
    pixels = load_images(data, images, size).float().div_(255)
    context, state = model.encode(pixels)
    side = math.isqrt(context.shape[1])
    covered = torch.stack([object_cells(scenes[im.imgid]["objects"], size, side)
                           for im in images]).float()  # (N, L)
    tokens = torch.full((len(images),), vocab.bos_id, dtype=torch.long)
    alive = torch.ones(len(images), dtype=torch.bool)
    sums = {"max_alpha": 0.0, "cells_attended": 0.0, "on_objects": 0.0}
    words = 0
    for _ in range(max_words):
        log_p, state, alpha = model.step(tokens, state, context)
        tokens = log_p.argmax(dim=-1)
        a = alpha[alive]
        entropy = -(a * a.clamp_min(1e-12).log()).sum(dim=-1)
        sums["max_alpha"] += a.max(dim=-1).values.sum().item()
        sums["cells_attended"] += entropy.exp().sum().item()
        sums["on_objects"] += (a * covered[alive]).sum().item()
        words += int(alive.sum())
        alive &= tokens != vocab.eos_id
        if not alive.any():
            break
    return {"run": str(run), "split": split, "images": len(images), "grid_cells": side * side,
            **{k: round(v / words, 4) for k, v in sums.items()},
            "object_cell_share": round(covered.mean().item(), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="caption run directories")
    p.add_argument("--data", type=Path, default=Path("data/shapes15k"))
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--out", type=Path, help="write the results here as a JSON list")
    args = p.parse_args()
    results = [spread(run, args.data, args.split, args.images) for run in args.runs]
    for r in results:
        print(json.dumps(r))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
