"""`glimpse export`: a training run → a model bundle the service can load.

    model_repository/NAME/VERSION/
        manifest.json      (service.bundle.Manifest)
        *.onnx             the family's graphs
        vocab.json, ...    the files its pipeline reads

One exporter per family, in training/export/FAMILY.py under the name of the
task it serves (caption, vqa, alignment, retrieval, generation, activity,
video_caption; DALL-E, which serves generation too, in dalle.py); `EXPORTERS`
picks it by the run's task. Their shared pieces: training.export.onnx (export,
opset, parity), training.export.bundle (versions, staging, manifest entries)
and, for the video bundles, training.export.frames.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from pathlib import Path

from training.checkpoint import checkpoint_dir, load_config

Exporter = Callable[[Path, Path, str, int | None], Path]

# A run's `model.task` (its config.json) -> "module:function" exporting it, called as
# function(run_dir, repository, name, version) -> bundle directory. Imported only when
# that kind of run is exported.
EXPORTERS: dict[str, str] = {
    "caption": "training.export.caption:export_caption",
    "alignment": "training.export.alignment:export_alignment",
    "vqa": "training.export.vqa:export_vqa",
    "retrieval": "training.export.retrieval:export_retrieval",
    "generation": "training.export.generation:export_generation",
    "dalle": "training.export.dalle:export_dalle",  # served as "generation", trained apart
    "activity": "training.export.activity:export_activity",
    "video-caption": "training.export.video_caption:export_video_caption",
}


def exporter_for(run_dir: Path) -> Exporter:
    """The export function of the run's task (ValueError names the unknown task)."""
    task = load_config(checkpoint_dir(Path(run_dir)))["model"].get("task")
    if task not in EXPORTERS:
        raise ValueError(f"{run_dir}: runs of task {task!r} cannot be exported "
                         f"(known: {', '.join(sorted(EXPORTERS))})")
    module, function = EXPORTERS[task].split(":")
    return getattr(importlib.import_module(module), function)


def export(args: argparse.Namespace) -> int:
    """`glimpse export`: a JSON summary, then the bundle directory alone on the last line,
    for scripts: `bundle=$(glimpse export RUN --name NAME | tail -n 1)`."""
    run_dir = Path(args.run_dir)
    bundle = exporter_for(run_dir)(run_dir, Path(args.repository), args.name, args.version)
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(json.dumps({"bundle": str(bundle), "architecture": manifest["architecture"],
                      "parity": manifest["training"].get("parity_max_abs_diff")}, indent=2))
    print(bundle)
    return 0
