"""Seconds per training step of each captioning variant on this machine.

Used to state what training costs here when the recorded runs were made on
another device: a step is one optimizer update on a batch of (image, caption)
pairs at the configs' sizes (configs/caption_*.json, 64 px, 20-token captions).

    python benchmarks/train_step_speed.py --batch-size 128 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from models.captioners import build_caption_model, caption_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--vocab", type=int, default=48)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for arch, config in (("nic", "caption_nic.json"), ("sat-soft", "caption_sat.json"),
                         ("sat-hard", "caption_sat.json")):
        overrides = json.loads((ROOT / "configs" / config).read_text())["model"]
        encoder = json.loads((ROOT / "configs" / "encoder.json").read_text())["encoder"]
        for layer_norm in (False, True):
            model = build_caption_model(caption_config(dict(
                arch=arch, layer_norm=layer_norm, vocab_size=args.vocab, encoder=encoder,
                **overrides)))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x = torch.rand(args.batch_size, 3, 64, 64)
            caps = torch.randint(4, args.vocab, (args.batch_size, args.tokens + 1))
            times = []
            for i in range(args.steps + 1):
                t0 = time.perf_counter()
                _, loss = model(x, caps[:, :-1], caps[:, 1:])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i:  # the first step pays for allocation
                    times.append(time.perf_counter() - t0)
            seconds = sorted(times)[len(times) // 2]
            name = arch + ("-ln" if layer_norm else "")
            rows.append({"model": name, "seconds_per_step": seconds,
                         "parameters": sum(q.numel() for q in model.parameters())})
            print(f"{name:12s} {seconds:.3f} s/step", flush=True)
    out = {"benchmark": "train_step_speed", "batch_size": args.batch_size,
           "tokens": args.tokens, "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "torch_threads": torch.get_num_threads()},
           "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_step_speed.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
