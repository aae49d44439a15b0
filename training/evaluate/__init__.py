"""Evaluating exported bundles, one module per family, through the service's runtime.

Each evaluator (training/evaluate/FAMILY.py, named after the task it serves)
runs a bundle through the same pipeline an HTTP request goes through, so the
published numbers are the numbers users get, and can record them in the
bundle's manifest with `record_metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from service.bundle import Manifest, load_bundle, write_manifest

# What an evaluator reports about where it ran, not what it measured.
NOT_METRICS = ("bundle", "split")


def record_metrics(bundle_dir: str | Path, metrics: Mapping[str, Any], *,
                   at: Sequence[str]) -> Manifest:
    """Store `metrics` in the bundle's manifest under metrics[at[0]][at[1]]..., replacing
    what was there (the keys of NOT_METRICS are left out); returns the new manifest.

    The bundle is verified first and the manifest is validated and written by
    service.bundle; it is not among the files whose sha256 it lists, so the bundle
    stays valid.
    """
    if not at:
        raise ValueError("record_metrics needs a place in the manifest (at=(split, ...))")
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest.model_copy(deep=True)
    node = manifest.metrics
    for key in at[:-1]:
        node = node.setdefault(key, {})
    node[at[-1]] = {k: v for k, v in metrics.items() if k not in NOT_METRICS}
    write_manifest(bundle.path, manifest)
    return manifest
