"""`glimpse export` of a caption run: an encoder graph and a one-step decoder graph.

    model_repository/NAME/VERSION/
        manifest.json      (service.bundle.Manifest, task "caption")
        encoder.onnx       see below
        decoder_step.onnx  see below
        vocab.json

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

The checkpoint's config rebuilds the model; the weights come from safetensors.
Export is followed by a parity check of ONNX Runtime against PyTorch on fresh
random inputs, and refuses to write a bundle that fails it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.caption import CaptionModel
from models.captioners import build_caption_model, caption_config
from service.bundle import describe_graph, write_manifest
from service.decoding import StepOutput
from training.checkpoint import checkpoint_dir, load_weights
from training.data.tokenizer import WordVocab
from training.export.bundle import created_now, file_entry, image_preprocessing, staged_bundle
from training.export.onnx import (
    DEFAULT_OPSET,
    cpu_session,
    graph_spec,
    onnx_export,
    require_parity,
)
from training.runs import run_checkpoint

ENCODER_FILE = "encoder.onnx"
STEP_FILE = "decoder_step.onnx"
ENCODER_INPUTS = ("image",)
DEFAULT_TOP_K = 64


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
    onnx_export(EncoderGraph(model).eval(), (image,), path, ENCODER_INPUTS,
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
    onnx_export(StepGraph(model, top_k).eval(), (tokens, parents, *states, *contexts), path,
                 step_input_names(model), step_output_names(model), dynamic, opset)


# ---------------------------------------------------------------------------- bundle


def load_caption_model(ckpt: Path) -> tuple[CaptionModel, WordVocab, dict]:
    """The trained captioner of a run or checkpoint (eval mode), its vocabulary and config."""
    ckpt, config = run_checkpoint(ckpt, "caption", "a caption")
    model_cfg = config["model"]
    model = build_caption_model(caption_config(model_cfg["caption"], saved=True))
    load_weights(model, ckpt)
    model.eval()
    return model, WordVocab.from_dict(model_cfg["vocab"]), config


def check_parity(model, bundle_dir: Path, image_size: int, *, seed: int = 0,
                 atol: float = 1e-4) -> dict[str, float]:
    """Max |ONNX Runtime − PyTorch| of every graph output on fresh random inputs."""
    rng = np.random.default_rng(seed)
    enc, step = cpu_session(bundle_dir / ENCODER_FILE), cpu_session(bundle_dir / STEP_FILE)
    images = rng.random((3, 3, image_size, image_size), dtype=np.float32)
    ort_enc = dict(zip([o.name for o in enc.get_outputs()], enc.run(None, {"image": images}),
                       strict=True))
    with torch.no_grad():
        pt_enc = EncoderGraph(model)(torch.from_numpy(images))
    diffs = {f"encoder.{name}": float(np.abs(ort_enc[name] - t.numpy()).max())
             for name, t in zip(encoder_output_names(model), pt_enc, strict=True)}
    n = 5
    feeds = {
        "tokens": rng.integers(0, model.config.vocab_size, n).astype(np.int64),
        "parents": rng.integers(0, 3, n).astype(np.int64),
        **{name: rng.standard_normal(ort_enc[name].shape).astype(np.float32)
           for name in model.state_names},
        **{name: ort_enc[name][rng.integers(0, 3, n)] for name in model.context_names},
    }
    ort_step = step.run(None, feeds)
    names = [o.name for o in step.get_outputs()]
    with torch.no_grad():
        k = ort_step[names.index("token_ids")].shape[1]
        pt_step = StepGraph(model, top_k=k)(*[torch.from_numpy(feeds[i.name])
                                             for i in step.get_inputs()])
    for name, o, t in zip(names, ort_step, pt_step, strict=True):
        if name == "token_ids":
            diffs["step.token_ids_mismatch"] = float((o != t.numpy()).mean())
        else:
            diffs[f"step.{name}"] = float(np.abs(o - t.numpy()).max())
    return require_parity(diffs, atol)


def export_caption(run_dir: Path, repository: Path, name: str, version: int | None = None,
                   *, top_k: int = DEFAULT_TOP_K) -> Path:
    """`glimpse export` of a caption run (EXPORTERS["caption"]); returns the bundle path."""
    model, vocab, config = load_caption_model(run_dir)
    ckpt = checkpoint_dir(Path(run_dir))
    model_cfg = config["model"]
    image_size = int(model_cfg["image_size"])
    with staged_bundle(repository, name, version) as (tmp, version):
        export_caption_graphs(model, tmp, image_size=image_size, top_k=min(top_k, len(vocab)))
        vocab.save(tmp / "vocab.json")
        parity = check_parity(model, tmp, image_size)
        graphs = {key: describe_graph(tmp, f"{key}.onnx").model_dump()
                  for key in ("encoder", "decoder_step")}
        cap = model_cfg["caption"]
        k = graphs["decoder_step"]["outputs"][0]["shape"][1]
        attention = None
        if model.attends:
            attention = {"output": "alpha", "grid": attention_grid(model, image_size)}
        task_cfg = model_cfg.get("task_config", {})
        encoder = image_encoder(cap)
        manifest = {
            "name": name, "version": version, "task": "caption",
            "architecture": cap["arch"] + ("-ln" if cap["layer_norm"] else ""),
            "created": created_now(),
            "graphs": graphs,
            "files": {"vocab": file_entry(tmp, "vocab.json")},
            "preprocessing": image_preprocessing(image_size, encoder["mean"], encoder["std"],
                                                 tokenizer={"type": "word", "file": "vocab"}),
            "decoding": {"bos_id": vocab.bos_id, "eos_id": vocab.eos_id, "pad_id": vocab.pad_id,
                         "top_k": int(k), "state": list(model.state_names),
                         "context": list(model.context_names),
                         "attention": attention, "beam_size": 3,
                         "max_length": int(task_cfg.get("max_length", 20)),
                         "length_penalty": 0.0},
            "training": {"config": {"caption": cap, "trainer": config.get("trainer", {}),
                                    "task": task_cfg},
                         "dataset": model_cfg.get("data", {}),
                         "checkpoint": str(ckpt), "parity_max_abs_diff": parity},
            "metrics": {},
        }
        write_manifest(tmp, manifest)
    return Path(repository) / name / str(version)


def image_encoder(caption: dict) -> dict:
    """Config of the CNN that sees the pixels: the RegionNet's for Up-Down, else the model's."""
    regions = caption.get("regions")
    return regions["encoder"] if regions else caption["encoder"]


def attention_grid(model, image_size: int) -> list[int]:
    """[rows, cols] of what the attention weights cover: a square annotation grid, or
    [R, 1] for the R regions of Up-Down (in the order of the RegionNet's boxes)."""
    with torch.no_grad():
        context, _ = model.encode(torch.zeros(1, 3, image_size, image_size))
    L = context.shape[1]
    if model.attention_over == "regions":
        return [L, 1]
    side = int(round(L ** 0.5))
    if side * side != L:
        raise ValueError(f"attention grid of {L} locations is not square")
    return [side, side]
