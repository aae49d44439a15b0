"""A tiny random-weight vqa bundle, built with onnx.helper alone.

The graph honours the vqa.onnx contract (service/pipelines/vqa.py) without any training code:
three fixed regions (left half, right half, whole image) described by their mean
colour, a bag-of-words question vector, dot-product attention between them, and
sigmoid answer scores from the attended colour and the question.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.bundle import describe_graph, file_sha256, write_manifest

IMAGE_SIZE = 16
E = 8  # question vector size
WORDS = ["what", "color", "is", "the", "circle", "square", "how", "many", "are", "there",
         "left", "of", "a", "red", "squares", "circles"]
TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", *WORDS]
ANSWERS = ["yes", "no", "red", "green", "blue", "1", "2", "circle"]
BOXES = [[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
MAX_QUESTION_LENGTH = 8


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def vqa_graph(rng: np.random.Generator) -> onnx.ModelProto:
    half = IMAGE_SIZE // 2
    nodes = [
        # regions v (B, 3, 3): mean colour of the left half, the right half, the whole image
        helper.make_node("AveragePool", ["image"], ["halves"], kernel_shape=[IMAGE_SIZE, half],
                         strides=[IMAGE_SIZE, half]),
        helper.make_node("Reshape", ["halves", "halves_shape"], ["halves3"]),
        helper.make_node("Transpose", ["halves3"], ["sides"], perm=[0, 2, 1]),
        helper.make_node("ReduceMean", ["sides", "axis1"], ["whole"], keepdims=1),
        helper.make_node("Concat", ["sides", "whole"], ["v"], axis=1),
        # q (B, E): mean embedding of the question's words (<pad> embeds to zero)
        helper.make_node("Gather", ["embedding", "question"], ["words"], axis=0),
        helper.make_node("ReduceSum", ["words", "axis1"], ["word_sum"], keepdims=0),
        helper.make_node("Cast", ["question_length"], ["length_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["length_f", "axis1"], ["length_col"]),
        helper.make_node("Div", ["word_sum", "length_col"], ["q"]),
        # attention over the regions, attended colour, scores
        helper.make_node("MatMul", ["v", "w_v"], ["keys"]),
        helper.make_node("Unsqueeze", ["q", "axis2"], ["q3"]),
        helper.make_node("MatMul", ["keys", "q3"], ["logits3"]),
        helper.make_node("Squeeze", ["logits3", "axis2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["attention"], axis=1),
        helper.make_node("Unsqueeze", ["attention", "axis1"], ["attention3"]),
        helper.make_node("MatMul", ["attention3", "v"], ["v_hat3"]),
        helper.make_node("Squeeze", ["v_hat3", "axis1"], ["v_hat"]),
        helper.make_node("MatMul", ["v_hat", "w_ov"], ["from_v"]),
        helper.make_node("MatMul", ["q", "w_oq"], ["from_q"]),
        helper.make_node("Add", ["from_v", "from_q"], ["answer_logits"]),
        helper.make_node("Sigmoid", ["answer_logits"], ["answer_scores"]),
        # boxes (B, 3, 4): the fixed boxes for every image
        helper.make_node("Shape", ["image"], ["image_shape"], end=1),
        helper.make_node("Concat", ["image_shape", "box_dims"], ["boxes_shape"], axis=0),
        helper.make_node("Expand", ["box_table", "boxes_shape"], ["boxes"]),
    ]
    embedding = rng.normal(0, 1.0, (len(TOKENS), E)).astype(np.float32)
    embedding[0] = 0.0
    inits = [
        _init("halves_shape", np.array([0, 3, 2], dtype=np.int64)),
        _init("axis1", np.array([1], dtype=np.int64)),
        _init("axis2", np.array([2], dtype=np.int64)),
        _init("embedding", embedding),
        _init("w_v", rng.normal(0, 3.0, (3, E)).astype(np.float32)),
        _init("w_ov", rng.normal(0, 3.0, (3, len(ANSWERS))).astype(np.float32)),
        _init("w_oq", rng.normal(0, 1.0, (E, len(ANSWERS))).astype(np.float32)),
        _init("box_dims", np.array([3, 4], dtype=np.int64)),
        _init("box_table", np.array([BOXES], dtype=np.float32)),
    ]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        nodes, "vqa",
        [helper.make_tensor_value_info("image", f32, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]),
         helper.make_tensor_value_info("question", i64, ["batch", "words"]),
         helper.make_tensor_value_info("question_length", i64, ["batch"])],
        [helper.make_tensor_value_info("answer_scores", f32, ["batch", len(ANSWERS)]),
         helper.make_tensor_value_info("attention", f32, ["batch", 3]),
         helper.make_tensor_value_info("boxes", f32, ["batch", 3, 4])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_vqa_bundle(repository: Path, name: str = "vqa-tiny", version: int = 1, *,
                     seed: int = 0) -> Path:
    """Write model_repository/NAME/VERSION with vqa.onnx, vocab.json, answers.json."""
    bundle = Path(repository) / name / str(version)
    bundle.mkdir(parents=True)
    onnx.save(vqa_graph(np.random.default_rng(seed)), bundle / "vqa.onnx")
    (bundle / "vocab.json").write_text(json.dumps({"type": "word", "tokens": TOKENS,
                                                   "min_count": 1}))
    (bundle / "answers.json").write_text(json.dumps({"type": "answers", "answers": ANSWERS}))
    write_manifest(bundle, {
        "name": name, "version": version, "task": "vqa", "architecture": "updown-tiny",
        "created": datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
        "graphs": {"vqa": describe_graph(bundle, "vqa.onnx")},
        "files": {key: {"file": f"{key}.json", "sha256": file_sha256(bundle / f"{key}.json")}
                  for key in ("vocab", "answers")},
        "preprocessing": {"image_size": IMAGE_SIZE,
                          "tokenizer": {"type": "word", "file": "vocab"}},
        "inference": {"answers": "answers", "max_question_length": MAX_QUESTION_LENGTH},
        "metrics": {"test": {"overall": 0.0}},
    })
    return bundle
