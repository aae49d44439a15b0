"""ONNX Runtime sessions of a bundle's graphs.

Sessions are created from a validated `Bundle`; the input and output names that
ONNX Runtime reports must equal the ones the manifest records, so that every
caller can rely on the manifest alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from service.bundle import Bundle, BundleError, GraphSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderList = list[str | tuple[str, dict[str, Any]]]


def choose_providers(device: str = "auto", providers: Sequence[str] | None = None,
                     available: Sequence[str] | None = None) -> ProviderList:
    """The providers, in priority order, for a session on `device`.

    `providers` given explicitly wins. Otherwise "auto" takes CUDA first when
    ONNX Runtime has it, then CPU; "cuda" or "cuda:N" requires CUDA on GPU N;
    "cpu" takes the CPU alone.
    """
    available = list(ort.get_available_providers() if available is None else available)
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"providers {missing} are not available (have {available})")
        return list(providers)
    if device == "cpu":
        return [CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if CUDA not in available:
        raise ValueError(f"device {device!r} needs {CUDA}, which this onnxruntime lacks "
                         "(install onnxruntime-gpu)")
    device_id = int(device.partition(":")[2] or 0)
    return [(CUDA, {"device_id": device_id}), CPU]


def session_options(intra_op_threads: int | None = None, *,
                    allow_spinning: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if not allow_spinning:
        # Decoding alternates graph runs with NumPy beam-search work on the same cores;
        # intra-op threads that spin-wait between runs take the CPU that work needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxGraph:
    """One ONNX Runtime session, fed and read by tensor name."""

    def __init__(self, session: ort.InferenceSession, name: str = "graph") -> None:
        self.session = session
        self.name = name
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_names)
        values = self.session.run(names, {k: feeds[k] for k in self.input_names})
        return dict(zip(names, values, strict=True))

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()


def _check_names(bundle: Bundle, key: str, spec: GraphSpec, graph: OnnxGraph) -> None:
    for kind, declared, actual in (("inputs", spec.input_names(), graph.input_names),
                                   ("outputs", spec.output_names(), graph.output_names)):
        if sorted(declared) != sorted(actual):
            raise BundleError(bundle.path, f"graph {kind} are {actual}, manifest says "
                              f"{declared}", spec.file)


def load_graphs(bundle: Bundle, *, device: str = "auto", providers: Sequence[str] | None = None,
                intra_op_threads: int | None = None,
                allow_spinning: bool = False) -> dict[str, OnnxGraph]:
    """Create one session per graph of `bundle`, keyed like the manifest's `graphs`."""
    try:
        chosen = choose_providers(device, providers)
    except ValueError as exc:
        raise BundleError(bundle.path, str(exc)) from None
    graphs = {}
    for key, spec in bundle.manifest.graphs.items():
        try:
            session = ort.InferenceSession(str(bundle.path / spec.file),
                                           sess_options=session_options(
                                               intra_op_threads, allow_spinning=allow_spinning),
                                           providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(bundle.path, "onnxruntime cannot load it", spec.file,
                              detail=str(exc)) from None
        graph = OnnxGraph(session, name=f"{bundle.key}:{key}")
        _check_names(bundle, key, spec, graph)
        graphs[key] = graph
    log.info("loaded %s with providers %s", bundle.key, chosen)
    return graphs


def warm_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to `max_batch_size`, and `max_batch_size` itself."""
    sizes = {1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size}
    return sorted(sizes | {max_batch_size})
