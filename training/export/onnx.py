"""What every exporter does with ONNX: export a module, describe a graph, check parity.

Each family's exporter (training/export/FAMILY.py) wraps its model in small
`nn.Module`s whose inputs and outputs are the graph's contract, writes them with
`onnx_export`, and compares ONNX Runtime with PyTorch on fresh random inputs
(`cpu_session`, `require_parity`) before its bundle is written.

Graphs store their weights in half precision: `onnx_export` first rounds the module's
weights to the nearest float16 values (in place, so the parity check and anything
after it use exactly the exported model), then stores every weight that float16
holds exactly as a float16 initializer followed by a Cast to float32. ONNX Runtime
folds the casts when it loads the graph, so inference still runs in float32; the
files are about half the size.
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import numpy_helper

# The dynamo exporter (torch.export) is used: unlike dynamo=False it keeps a graph
# input the step does not read (NIC's context), names symbolic dimensions after
# their torch.export.Dim and infers the static ones. Its translations start at
# opset 18; asking for 17 needs a down-conversion that fails on Split.
DEFAULT_OPSET = 18
# Weights with fewer entries stay float32 (biases, norms): they weigh nothing.
HALF_MIN_ELEMENTS = 1024
FLOAT16_MAX = 65504.0


def onnx_export(module: nn.Module, args: tuple, path: Path, input_names: tuple[str, ...],
                output_names: tuple[str, ...], dynamic_shapes: dict | tuple,
                opset: int = DEFAULT_OPSET, half_weights: bool = True) -> None:
    """Write `module` called on `args` as the ONNX graph `path`, with the given names and
    symbolic dimensions (torch.export.Dim), and check the file with onnx.checker.

    With `half_weights` (the default) the module's weights are first rounded to float16
    values in place and stored as float16 (see the module docstring)."""
    if half_weights:
        round_weights_to_half(module)
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
    if half_weights:
        store_weights_as_half(graph)
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)


@torch.no_grad()
def round_weights_to_half(module: nn.Module, min_elements: int = HALF_MIN_ELEMENTS) -> None:
    """Round each float parameter and buffer of at least `min_elements` entries to the
    nearest float16 value (still float32), unless float16 cannot hold its range."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if (tensor.is_floating_point() and tensor.numel() >= min_elements
                and float(tensor.abs().max()) < FLOAT16_MAX):
            tensor.copy_(tensor.half().float())


def store_weights_as_half(model: onnx.ModelProto, min_elements: int = HALF_MIN_ELEMENTS, *,
                          exact_only: bool = True) -> int:
    """Store float32 initializers of at least `min_elements` entries as float16, cast back
    to float32 by a Cast node under the initializer's old name. With `exact_only` only
    those whose values float16 holds exactly, so the graph computes what it computed;
    otherwise every one within float16's range, rounded. Returns the bytes saved."""
    graph = model.graph
    graph_inputs = {value.name for value in graph.input}
    names = {init.name for init in graph.initializer} | {o for n in graph.node for o in n.output}
    kept, casts, saved = [], [], 0
    for init in graph.initializer:
        values = numpy_helper.to_array(init)
        exact = (init.data_type == onnx.TensorProto.FLOAT and values.size >= min_elements
                 and init.name not in graph_inputs and np.abs(values).max() < FLOAT16_MAX)
        half = values.astype(np.float16) if exact else None
        if half is None or (exact_only and not np.array_equal(half.astype(np.float32), values)):
            kept.append(init)
            continue
        stored = f"{init.name}__float16"
        while stored in names:
            stored += "_"
        names.add(stored)
        kept.append(numpy_helper.from_array(half, stored))
        casts.append(onnx.helper.make_node("Cast", [stored], [init.name],
                                           to=onnx.TensorProto.FLOAT, name=f"{stored}_cast"))
        saved += 2 * values.size
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return saved


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
