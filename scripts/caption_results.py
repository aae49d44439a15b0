"""Score caption bundles on test and novel at several beam sizes (docs/results.md).

    python scripts/caption_results.py --data data/shapes \
        --bundles runs/bundles/nic/1 runs/bundles/sat-soft/1 ... --beams 1 3 5 10

Writes the metrics as JSON (--out) and prints a markdown table per split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.evaluate.caption import evaluate_bundle

COLUMNS = [("bleu_4", "BLEU-4", 3), ("cider_d", "CIDEr-D", 3),
           ("semantic_exactness", "exact", 3), ("coverage", "coverage", 3),
           ("images_per_second", "img/s", 0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--bundles", nargs="+", required=True)
    p.add_argument("--beams", nargs="+", type=int, default=[1, 3, 5, 10])
    p.add_argument("--splits", nargs="+", default=["test", "novel"])
    p.add_argument("--out", default="benchmarks/results/caption_quality.json")
    args = p.parse_args()
    rows = []
    for bundle in args.bundles:
        for split in args.splits:
            for beam in args.beams:
                m = evaluate_bundle(bundle, args.data, split=split, beam_size=beam,
                                    progress=False)
                m["path"] = bundle
                rows.append(m)
                print(f"{m['bundle']:>20} {split:>5} beam {beam:>2}: "
                      + " ".join(f"{k}={m[k]:.3f}" for k, _, _ in COLUMNS), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    for split in args.splits:
        print(f"\n#### {split}\n")
        print("| bundle | beam | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
        print("|---|---|" + "---|" * len(COLUMNS))
        for m in rows:
            if m["split"] == split:
                cells = [f"{m[k]:.{d}f}" for k, _, d in COLUMNS]
                print(f"| {m['bundle']} | {m['beam_size']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
