"""A tiny random-weight caption bundle, built with onnx.helper alone.

The graphs honour the caption contract (service/pipelines/caption.py) without any
training code: the encoder average-pools the image to a GRID x GRID grid and
projects it to `context`, `h` and `c`; the step graph gathers the state by
`parents`, attends over `context` (or averages it), updates a tanh cell and
returns the top-K log-probabilities. Weights come from a seed, so two builds
with the same seed are identical.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.bundle import describe_graph, file_sha256, write_manifest

IMAGE_SIZE = 16
GRID = 4
D = 8  # context features
H = 32  # state size
E = 16  # word embedding size
WORDS = ["a", "red", "green", "blue", "yellow", "circle", "square", "triangle", "star",
         "cross", "left", "right", "above", "below", "of", "the", "small", "large",
         "and", "is"]
TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", *WORDS]
V = len(TOKENS)
TOP_K = V
OPSET = 17


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def _const(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def encoder_graph(rng: np.random.Generator) -> onnx.ModelProto:
    k = IMAGE_SIZE // GRID
    nodes = [
        helper.make_node("Sub", ["image", "half"], ["centred"]),
        helper.make_node("AveragePool", ["centred"], ["pooled"], kernel_shape=[k, k],
                         strides=[k, k]),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["cells"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["cells", "w_ctx"], ["proj"]),
        helper.make_node("Tanh", ["proj"], ["context"]),
        helper.make_node("ReduceMean", ["context"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "w_h"], ["h_pre"]),
        helper.make_node("Tanh", ["h_pre"], ["h"]),
        helper.make_node("MatMul", ["mean", "w_c"], ["c"]),
    ]
    inits = [
        _init("half", np.array(0.5, dtype=np.float32)),
        _const("flat_shape", [0, 3, -1]),
        _init("w_ctx", rng.normal(0, 2.0, (3, D)).astype(np.float32)),
        _init("w_h", rng.normal(0, 1.5, (D, H)).astype(np.float32)),
        _init("w_c", rng.normal(0, 1.0, (D, H)).astype(np.float32)),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("image", f32, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("context", f32, ["batch", GRID * GRID, D]),
         helper.make_tensor_value_info("h", f32, ["batch", H]),
         helper.make_tensor_value_info("c", f32, ["batch", H])],
        inits)
    return _model(graph)


def _attention_nodes() -> list[onnx.NodeProto]:
    # Dot-product attention over the L grid cells (the soft attention of Xu et al. 2015).
    return [
        helper.make_node("MatMul", ["h_p", "w_q"], ["query"]),
        helper.make_node("Unsqueeze", ["query", "axis2"], ["query3"]),
        helper.make_node("MatMul", ["context", "query3"], ["scores3"]),
        helper.make_node("Squeeze", ["scores3", "axis2"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["alpha"], axis=1),
        helper.make_node("Unsqueeze", ["alpha", "axis1"], ["alpha3"]),
        helper.make_node("MatMul", ["alpha3", "context"], ["glimpse3"]),
        helper.make_node("Squeeze", ["glimpse3", "axis1"], ["glimpse"]),
    ]


def decoder_graph(rng: np.random.Generator, attention: bool) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gather", ["h", "parents"], ["h_p"], axis=0),
        helper.make_node("Gather", ["c", "parents"], ["c_p"], axis=0),
        helper.make_node("Gather", ["embedding", "tokens"], ["emb"], axis=0),
    ]
    if attention:
        nodes += _attention_nodes()
    else:
        nodes.append(helper.make_node("ReduceMean", ["context"], ["glimpse"], axes=[1],
                                      keepdims=0))
    nodes += [
        helper.make_node("Concat", ["emb", "glimpse", "h_p"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w_x"], ["pre"]),
        helper.make_node("Add", ["pre", "c_p"], ["pre_c"]),
        helper.make_node("Tanh", ["pre_c"], ["h_out"]),
        helper.make_node("Add", ["c_p", "h_out"], ["c_sum"]),
        helper.make_node("Tanh", ["c_sum"], ["c_out"]),
        helper.make_node("MatMul", ["h_out", "w_o"], ["logits_w"]),
        helper.make_node("Add", ["logits_w", "b_o"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["all_log_probs"], axis=1),
        helper.make_node("TopK", ["all_log_probs", "k"], ["log_probs", "token_ids"], axis=1),
    ]
    bias = rng.normal(0, 0.5, V).astype(np.float32)
    bias[[0, 1, 3]] = -20.0  # <pad>, <bos>, <unk> are never emitted
    bias[2] = 0.0  # <eos> is likely enough that most captions end on their own
    inits = [
        _init("embedding", rng.normal(0, 1.0, (V, E)).astype(np.float32)),
        _init("w_x", rng.normal(0, 0.5, (E + D + H, H)).astype(np.float32)),
        _init("w_o", rng.normal(0, 1.0, (H, V)).astype(np.float32)),
        _init("b_o", bias),
        _const("k", [TOP_K]),
    ]
    if attention:
        inits += [_init("w_q", rng.normal(0, 2.0, (H, D)).astype(np.float32)),
                  _const("axis1", [1]), _const("axis2", [2])]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    outputs = [helper.make_tensor_value_info("log_probs", f32, ["n", TOP_K]),
               helper.make_tensor_value_info("token_ids", i64, ["n", TOP_K]),
               helper.make_tensor_value_info("h_out", f32, ["n", H]),
               helper.make_tensor_value_info("c_out", f32, ["n", H])]
    if attention:
        outputs.append(helper.make_tensor_value_info("alpha", f32, ["n", GRID * GRID]))
    graph = helper.make_graph(
        nodes, "decoder_step",
        [helper.make_tensor_value_info("tokens", i64, ["n"]),
         helper.make_tensor_value_info("parents", i64, ["n"]),
         helper.make_tensor_value_info("h", f32, ["m", H]),
         helper.make_tensor_value_info("c", f32, ["m", H]),
         helper.make_tensor_value_info("context", f32, ["n", GRID * GRID, D])],
        outputs, inits)
    return _model(graph)


def write_vocab(path: Path) -> None:
    path.write_text(json.dumps({"type": "word", "tokens": TOKENS, "min_count": 1}))


def build_caption_bundle(repository: Path, name: str = "caption-tiny", version: int = 1, *,
                         attention: bool = True, seed: int = 0, beam_size: int = 3,
                         max_length: int = 12) -> Path:
    """Write model_repository/NAME/VERSION with both graphs, vocab.json and a manifest."""
    bundle = Path(repository) / name / str(version)
    bundle.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    onnx.save(encoder_graph(rng), bundle / "encoder.onnx")
    onnx.save(decoder_graph(rng, attention), bundle / "decoder_step.onnx")
    write_vocab(bundle / "vocab.json")
    write_manifest(bundle, {
        "name": name, "version": version, "task": "caption",
        "architecture": "sat-soft" if attention else "nic",
        "created": datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
        "graphs": {key: describe_graph(bundle, f"{key}.onnx")
                   for key in ("encoder", "decoder_step")},
        "files": {"vocab": {"file": "vocab.json", "sha256": file_sha256(bundle / "vocab.json")}},
        "preprocessing": {"image_size": IMAGE_SIZE, "tokenizer": {"type": "word",
                                                                  "file": "vocab"}},
        "decoding": {"bos_id": 1, "eos_id": 2, "pad_id": 0, "top_k": TOP_K,
                     "state": ["h", "c"], "context": ["context"],
                     "attention": {"output": "alpha", "grid": [GRID, GRID]} if attention
                     else None,
                     "beam_size": beam_size, "max_length": max_length, "length_penalty": 0.0},
        "training": {"config": {"seed": seed}, "dataset": {"name": "none"}},
        "metrics": {"test": {"bleu4": 0.0}},
    })
    return bundle


def sample_png(seed: int, size: int = 32) -> bytes:
    """A PNG of random coloured blocks (distinct seeds give distinct captions)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
