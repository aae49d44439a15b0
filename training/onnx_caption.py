"""ONNX export of the captioning models: an encoder graph and a one-step decoder graph.

    encoder.onnx       image (B, 3, S, S) in [0, 1] -> context (B, L, D), h (B, H), c (B, H)
    decoder_step.onnx  tokens (N,), parents (N,), h (M, H), c (M, H), context (N, L, D)
                       -> log_probs (N, K), token_ids (N, K), h_out (N, H), c_out (N, H)
                          [, alpha (N, L) for the attention models]

The step graph gathers the state rows named by `parents` itself (beam re-ordering
stays on the device) and returns only the top K of the vocabulary, sorted by
descending log-probability, K = min(top_k, V) fixed at export. NIC has no
attention: its context is the pooled image vector (B, 1, D), which the step
takes but does not read.

The state and context names are the model's (`state_names`, `context_names`):
h, c for NIC and SAT; h1, c1, h2, c2 and the region vectors as context for
Up-Down, whose alpha weighs the R regions; h and the pending image bias, with no
context, for the m-RNN. The encoder graph returns the context names, then the
state names; the step graph takes tokens, parents, the state names, then the
context names, and returns log_probs, token_ids, `<name>_out` per state name and
alpha for the attention models.

`TorchCaptionStep` runs the PyTorch model behind the same NumPy contract as the
step graph (service.decoding's StepFn), so beam search over a bundle and over
the model it came from can be compared.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from models.caption import CaptionModel
from service.decoding import StepOutput

ENCODER_FILE = "encoder.onnx"
STEP_FILE = "decoder_step.onnx"
ENCODER_INPUTS = ("image",)
# The dynamo exporter (torch.export) is used: unlike dynamo=False it keeps a graph
# input the step does not read (NIC's context), names symbolic dimensions after
# their torch.export.Dim and infers the static ones. Its translations start at
# opset 18; asking for 17 needs a down-conversion that fails on Split.
DEFAULT_OPSET = 18


def encoder_output_names(model: CaptionModel) -> tuple[str, ...]:
    return (*model.context_names, *model.state_names)


def step_input_names(model: CaptionModel) -> tuple[str, ...]:
    return ("tokens", "parents", *model.state_names, *model.context_names)


def step_output_names(model: CaptionModel) -> tuple[str, ...]:
    outputs = ("log_probs", "token_ids", *(f"{name}_out" for name in model.state_names))
    return (*outputs, "alpha") if model.attends else outputs


def _encoded_outputs(model: CaptionModel, context: torch.Tensor | None,
                     state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    contexts = () if context is None else (context,)
    return (*contexts, *(state[name] for name in model.state_names))


class EncoderGraph(nn.Module):
    """image (B, 3, S, S) in [0, 1] -> the context, then the initial state (B, H) each."""

    def __init__(self, model: CaptionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _encoded_outputs(self.model, *self.model.encode(image))


class StepGraph(nn.Module):
    """One decoding step with beam re-ordering and top-k inside (see the module docstring).

    forward(tokens (N,), parents (N,), *state (M, ...) each, *context (N, ...) each).
    """

    def __init__(self, model: CaptionModel, top_k: int) -> None:
        super().__init__()
        self.model = model
        self.top_k = min(top_k, model.config.vocab_size)

    def forward(self, tokens: torch.Tensor, parents: torch.Tensor,
                *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = self.model.state_names
        state = {name: t.index_select(0, parents)
                 for name, t in zip(names, tensors[:len(names)], strict=True)}  # (N, ...)
        context = tensors[len(names)] if self.model.context_names else None
        log_probs, state, alpha = self.model.step(tokens, state, context)  # (N, V)
        top_log_probs, token_ids = log_probs.topk(self.top_k, dim=-1)  # (N, K), sorted
        outputs = (top_log_probs, token_ids, *(state[name] for name in names))
        return outputs if alpha is None else (*outputs, alpha)


class TorchCaptionStep:
    """The PyTorch model as a NumPy step function with decoder_step.onnx's contract.

    Puts the model in eval mode. `encode(images)` (or `encode_features(*features)`
    for models that train on precomputed features) gives `(context, state)` dicts
    with one row per image; calling the object advances N rows by one token and
    returns a service.decoding.StepOutput (extras {"alpha"} for attention models).
    """

    def __init__(self, model: CaptionModel, top_k: int = 64) -> None:
        model.eval()
        self.model = model
        self.encoder = EncoderGraph(model)
        self.graph = StepGraph(model, top_k)
        self.top_k = self.graph.top_k
        self.device = next(model.parameters()).device

    def _tensor(self, x: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(x).to(device=self.device, dtype=dtype)

    def _dicts(self, outputs: tuple[torch.Tensor, ...]
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        arrays = dict(zip(encoder_output_names(self.model), (o.cpu().numpy() for o in outputs),
                          strict=True))
        return ({name: arrays[name] for name in self.model.context_names},
                {name: arrays[name] for name in self.model.state_names})

    @torch.no_grad()
    def encode(self, images: np.ndarray | torch.Tensor
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return self._dicts(self.encoder(self._tensor(images, torch.float32)))

    @torch.no_grad()
    def encode_features(self, *features: np.ndarray | torch.Tensor
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        encoded = self.model.encode_features(*(self._tensor(f, torch.float32) for f in features))
        return self._dicts(_encoded_outputs(self.model, *encoded))

    @torch.no_grad()
    def __call__(self, tokens: np.ndarray, parents: np.ndarray, state: dict[str, np.ndarray],
                 context: dict[str, np.ndarray]) -> StepOutput:
        model = self.model
        inputs = [*(state[name] for name in model.state_names),
                  *(context[name] for name in model.context_names)]
        outputs = self.graph(self._tensor(tokens, torch.long), self._tensor(parents, torch.long),
                             *(self._tensor(x, torch.float32) for x in inputs))
        arrays = [o.cpu().numpy() for o in outputs]
        n = len(model.state_names)
        new_state = dict(zip(model.state_names, arrays[2:2 + n], strict=True))
        extras = {"alpha": arrays[2 + n]} if model.attends else {}
        return StepOutput(arrays[0], arrays[1], new_state, extras)


def export_caption_graphs(model: CaptionModel, out_dir: str | Path, *, image_size: int,
                          top_k: int = 64, opset: int = DEFAULT_OPSET) -> dict[str, dict]:
    """Write encoder.onnx and decoder_step.onnx under out_dir; return their manifest specs.

    Returns {"encoder": spec, "decoder_step": spec}, each spec {"file", "sha256",
    "inputs", "outputs"} with every tensor's name, dtype and shape; symbolic
    dimensions are "batch" (images, or step rows N) and "prev_batch" (the M rows
    of the previous step's state). The model is exported in eval mode and left in
    the mode it came in.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        _export_encoder(model, out_dir / ENCODER_FILE, image_size, opset)
        _export_step(model, out_dir / STEP_FILE, image_size, top_k, opset)
    finally:
        model.train(was_training)
    return {"encoder": graph_spec(out_dir, ENCODER_FILE),
            "decoder_step": graph_spec(out_dir, STEP_FILE)}


def _example_images(model: CaptionModel, image_size: int, batch: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.rand(batch, 3, image_size, image_size, device=device)


def _export_encoder(model: CaptionModel, path: Path, image_size: int, opset: int) -> None:
    # Example sizes above 1, so that torch.export does not specialise the batch to 1.
    image = _example_images(model, image_size, batch=2)
    _onnx_export(EncoderGraph(model).eval(), (image,), path, ENCODER_INPUTS,
                 encoder_output_names(model), {"image": {0: torch.export.Dim("batch")}}, opset)


def _export_step(model: CaptionModel, path: Path, image_size: int, top_k: int,
                 opset: int) -> None:
    with torch.no_grad():
        context, state = model.encode(_example_images(model, image_size, batch=2))  # M = 2
    device = next(model.parameters()).device
    parents = torch.tensor([0, 1, 1], device=device)  # N = 3 rows continue M = 2
    tokens = torch.randint(0, model.config.vocab_size, (3,), device=device)
    # Distinct tensors: the export would take one tensor passed as two inputs for aliases.
    states = [torch.randn_like(state[name]) for name in model.state_names]
    contexts = [] if context is None else [context.index_select(0, parents)]
    rows, prev_rows = torch.export.Dim("batch"), torch.export.Dim("prev_batch")
    dynamic = ({0: rows}, {0: rows},
               tuple([{0: prev_rows}] * len(states) + [{0: rows}] * len(contexts)))
    _onnx_export(StepGraph(model, top_k).eval(), (tokens, parents, *states, *contexts), path,
                 step_input_names(model), step_output_names(model), dynamic, opset)


def _onnx_export(module: nn.Module, args: tuple, path: Path, input_names: tuple[str, ...],
                 output_names: tuple[str, ...], dynamic_shapes: dict, opset: int) -> None:
    with warnings.catch_warnings():
        # torch.export warns about its own internals (decompositions, pytree deprecations);
        # none of it concerns the exported graph, which onnx.checker verifies below.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(module, args, str(path), input_names=list(input_names),
                          output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                          opset_version=opset, dynamo=True, external_data=False,
                          verbose=False)
    onnx.checker.check_model(str(path), full_check=True)


def _tensor_spec(value: onnx.ValueInfoProto) -> dict:
    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "dtype": dtype, "shape": shape}


def graph_spec(directory: str | Path, file: str) -> dict:
    """{"file", "sha256", "inputs", "outputs"} of the ONNX graph directory/file."""
    path = Path(directory) / file
    graph = onnx.load(str(path)).graph
    return {"file": file, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "inputs": [_tensor_spec(v) for v in graph.input],
            "outputs": [_tensor_spec(v) for v in graph.output]}

