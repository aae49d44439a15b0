"""What every exporter does with ONNX: export a module, describe a graph, check parity.

Each family's exporter (training/export/FAMILY.py) wraps its model in small
`nn.Module`s whose inputs and outputs are the graph's contract, writes them with
`onnx_export`, and compares ONNX Runtime with PyTorch on fresh random inputs
(`cpu_session`, `require_parity`) before its bundle is written.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

# The dynamo exporter (torch.export) is used: unlike dynamo=False it keeps a graph
# input the step does not read (NIC's context), names symbolic dimensions after
# their torch.export.Dim and infers the static ones. Its translations start at
# opset 18; asking for 17 needs a down-conversion that fails on Split.
DEFAULT_OPSET = 18


def onnx_export(module: nn.Module, args: tuple, path: Path, input_names: tuple[str, ...],
                output_names: tuple[str, ...], dynamic_shapes: dict | tuple,
                opset: int = DEFAULT_OPSET) -> None:
    """Write `module` called on `args` as the ONNX graph `path`, with the given names and
    symbolic dimensions (torch.export.Dim), and check the file with onnx.checker."""
    with warnings.catch_warnings():
        # torch.export warns about its own internals (decompositions, pytree deprecations);
        # none of it concerns the exported graph, which onnx.checker verifies below.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(module, args, str(path), input_names=list(input_names),
                          output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                          opset_version=opset, dynamo=True, external_data=False,
                          verbose=False)
    # The shapes recorded for intermediate values can hold an example's size where the
    # tracer specialised a dimension (nn.GRU's time steps: the VQA question's length).
    # ONNX Runtime derives them itself; a stale one lets its memory planner share one
    # buffer between tensors that differ at run time ("Shape mismatch attempting to
    # re-use buffer"), so none are kept.
    graph = onnx.load(str(path))
    del graph.graph.value_info[:]
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def tensor_spec(value: onnx.ValueInfoProto) -> dict:
    """{"name", "dtype", "shape"} of a graph input or output (symbolic dimensions by name)."""
    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "dtype": dtype, "shape": shape}


def graph_spec(directory: str | Path, file: str) -> dict:
    """{"file", "sha256", "inputs", "outputs"} of the ONNX graph directory/file."""
    path = Path(directory) / file
    graph = onnx.load(str(path)).graph
    return {"file": file, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "inputs": [tensor_spec(v) for v in graph.input],
            "outputs": [tensor_spec(v) for v in graph.output]}


def cpu_session(path: str | Path) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU, the provider every parity check runs on."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def require_parity(diffs: Mapping[str, float], atol: float,
                 tolerances: Mapping[str, float] | None = None) -> dict[str, float]:
    """`diffs` (output name -> max |ONNX Runtime - PyTorch|) as a dict, or RuntimeError
    naming every output past its tolerance (`tolerances[name]`, else atol; NaN fails)."""
    tolerances = tolerances or {}
    bad = {k: v for k, v in diffs.items() if not v <= tolerances.get(k, atol)}
    if bad:
        raise RuntimeError(f"ONNX Runtime and PyTorch disagree on {bad} (atol {atol})")
    return dict(diffs)
