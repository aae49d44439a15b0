"""Images/s for encode + beam search: the ONNX Runtime bundle vs the PyTorch model.

Both paths decode the same test images with the same beam search
(service.decoding), differing only in what computes each step: ONNX Runtime
graphs (service.pipelines.caption.CaptionModel) or the PyTorch model in eager mode
(training.export.caption.TorchCaptionStep). Same machine, same run, same threads.

    python benchmarks/caption_speed.py --run runs/captions/sat-soft --data data/shapes

Writes benchmarks/results/caption_speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from service.decoding import beam_search
from service.pipelines.caption import CaptionModel, CaptionRequest
from training.checkpoint import checkpoint_dir
from training.data.readers import load_captions
from training.export.caption import TorchCaptionStep, export_caption, load_caption_model

RESULTS = Path(__file__).parent / "results"


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", required=True, help="training run directory (checkpoint)")
    p.add_argument("--data", required=True, help="shapes world directory")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu", help="cpu or cuda (both paths)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    checkpoint = Path(args.run)
    model, vocab, _ = load_caption_model(checkpoint_dir(checkpoint))
    model.to(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_caption(checkpoint, Path(tmp), "bench")
        served = CaptionModel.from_bundle(bundle, device=args.device,
                                          intra_op_threads=args.threads)
        d = served.decoding
        images = load_captions(Path(args.data), "test")[: max(args.batches)]
        arrays = np.stack([served.as_array(Path(args.data) / im.path) for im in images])
        params = served.params(beam_size=args.beam_size, max_length=args.max_length)
        torch_step = TorchCaptionStep(model, top_k=d.top_k)
        rows = []
        for batch in args.batches:
            x = arrays[:batch]

            def run_onnx(x=x):
                return served.caption_batch([CaptionRequest(a, params) for a in x])

            def run_torch(x=x):
                with torch.no_grad():
                    context, state = torch_step.encode(torch.from_numpy(x).to(args.device))
                    return beam_search(torch_step, state, context, bos_id=d.bos_id,
                                       eos_id=d.eos_id, beam_size=args.beam_size,
                                       max_length=args.max_length, top_k=d.top_k)

            same = ([c.captions[0].tokens for c in run_onnx()]
                    == [h[0].tokens for h in run_torch()])
            t_onnx, t_torch = time_it(run_onnx, args.repeats), time_it(run_torch, args.repeats)
            rows.append({"batch": batch, "onnx_images_per_s": batch / t_onnx,
                         "torch_images_per_s": batch / t_torch,
                         "onnx_over_torch": t_torch / t_onnx, "same_captions": same})
            print(f"batch {batch:>3}: onnx {batch / t_onnx:8.1f} img/s  torch "
                  f"{batch / t_torch:8.1f} img/s  ratio {t_torch / t_onnx:.2f}x  "
                  f"same captions: {same}", flush=True)
    result = {
        "benchmark": "caption_speed", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "device": args.device,
                    "threads": args.threads},
        "model": served.bundle.manifest.architecture, "beam_size": args.beam_size,
        "max_length": args.max_length, "torch": torch.__version__, "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = f"caption_speed_{args.device}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Encode + beam search (beam {args.beam_size}), {result['model']}, "
             f"{args.device}, {args.threads} threads:", "",
             "| batch | ONNX Runtime img/s | PyTorch eager img/s | ONNX / PyTorch |",
             "|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['onnx_images_per_s']:.1f} | {r['torch_images_per_s']:.1f} "
              f"| {r['onnx_over_torch']:.2f}x |" for r in rows]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
