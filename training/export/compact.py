"""`glimpse compact BUNDLE`: a new version of a bundle whose graphs keep their weights in
half precision.

Bundles exported by this version of glimpse already do (training.export.onnx rounds
the model's weights to float16 before export, so nothing is lost); this command is
for bundles whose training run is gone, where the graphs are all there is. Every
float32 weight of at least HALF_MIN_ELEMENTS entries is rounded to float16 and cast
back to float32 when ONNX Runtime loads the graph. The new graphs are compared with
the old ones on seeded random inputs shaped as the manifest describes, and the
largest differences are recorded in the manifest (`training.compacted`).

Rounding moves the models' outputs slightly, so the new version's metrics are not
copied from the old: measure them with the family's `glimpse eval ... --write-manifest`
(and run `glimpse index` again for a retrieval bundle, whose gallery vectors come
from the old image graph).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx

from service.bundle import GraphSpec, describe_graph, load_bundle, write_manifest
from training.export.bundle import created_now, file_entry, staged_bundle
from training.export.onnx import HALF_MIN_ELEMENTS, cpu_session, store_weights_as_half

SYMBOLIC_SIZE = 2  # every symbolic dimension of the random parity inputs


def parity_inputs(spec: GraphSpec, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs for a graph: floats uniform in [0, 1), integers 1 (a valid token id,
    parent row and length for every glimpse graph), symbolic dimensions SYMBOLIC_SIZE."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in spec.inputs:
        shape = [d if isinstance(d, int) else SYMBOLIC_SIZE for d in tensor.shape]
        if tensor.dtype.startswith("float"):
            feeds[tensor.name] = rng.random(shape).astype(tensor.dtype)
        else:
            feeds[tensor.name] = np.ones(shape, dtype=tensor.dtype)
    return feeds


def output_differences(old: Path, new: Path, spec: GraphSpec, seed: int) -> dict[str, float]:
    """Largest |new - old| of each float output on the same inputs; integer outputs
    (top-k ids) must agree exactly or are reported as the share that differ."""
    feeds = parity_inputs(spec, seed)
    names = spec.output_names()
    before = cpu_session(old).run(names, feeds)
    after = cpu_session(new).run(names, feeds)
    diffs = {}
    for name, a, b in zip(names, before, after, strict=True):
        if a.dtype.kind == "f":
            diffs[name] = float(np.abs(a - b).max()) if a.size else 0.0
        else:
            diffs[f"{name}_differ"] = float((a != b).mean()) if a.size else 0.0
    return diffs


def compact_bundle(bundle_dir: Path, *, version: int | None = None, seed: int = 0,
                   min_elements: int = HALF_MIN_ELEMENTS) -> Path:
    """Write NAME/VERSION (default: the next free version) beside `bundle_dir`, its graphs
    with float16 weights; returns the new bundle's directory."""
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest.model_dump(mode="json")
    repository = Path(bundle_dir).resolve().parent.parent
    report: dict[str, dict] = {}
    with staged_bundle(repository, bundle.manifest.name, version) as (tmp, new_version):
        for key, spec in bundle.manifest.graphs.items():
            graph = onnx.load(str(bundle.file(key)))
            saved = store_weights_as_half(graph, min_elements, exact_only=False)
            onnx.save(graph, str(tmp / spec.file))
            onnx.checker.check_model(str(tmp / spec.file), full_check=True)
            report[key] = {"bytes_saved": saved,
                           "max_abs_diff": output_differences(bundle.file(key), tmp / spec.file,
                                                              spec, seed)}
            manifest["graphs"][key] = describe_graph(tmp, spec.file).model_dump(mode="json")
        for key, spec in bundle.manifest.files.items():
            shutil.copyfile(bundle.file(key), tmp / spec.file)
            manifest["files"][key] = file_entry(tmp, spec.file)
        manifest.update(version=new_version, created=created_now(), metrics={})
        manifest["training"] = {**manifest["training"], "compacted": {
            "from": bundle.key, "min_elements": min_elements, "graphs": report}}
        write_manifest(tmp, manifest)
    return repository / bundle.manifest.name / str(new_version)


def compact(args: argparse.Namespace) -> int:
    """`glimpse compact`: a JSON report, then the new bundle's directory on the last line."""
    new = compact_bundle(Path(args.path), version=args.version, seed=args.seed)
    report = json.loads((new / "manifest.json").read_text())["training"]["compacted"]
    print(json.dumps(report, indent=2))
    print(new)
    return 0
