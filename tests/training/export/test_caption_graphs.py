import hashlib

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.captioners import build_caption_model, caption_config
from models.encoder import EncoderConfig
from service.bundle import GraphSpec
from service.decoding import StepOutput, beam_search
from training.export.caption import TorchCaptionStep, export_caption_graphs

V, S, TOP_K, H, D = 11, 32, 8, 12, 8
L = (S // 8) ** 2
# Every architecture with and without layer normalisation; the hard-attention model
# is exported once with each test-time context; soft attention once with cell positions
# and an attention that reads the previous word, NIC once with its grid kept in place and
# once with the image at every step.
VARIANTS = [
    ("nic", False, "expected", 0), ("nic", True, "expected", 0),
    ("sat-soft", False, "expected", 0), ("sat-soft", True, "expected", 0),
    ("sat-hard", False, "expected", 0), ("sat-hard", True, "argmax", 0),
    ("sat-soft", False, "expected", L), ("sat-soft", False, "expected", L, "word"),
    ("nic", False, "expected", 0, "cells"), ("nic", True, "expected", 0, "every"),
]
EXTRA = {"word": {"attend_with_word": True}, "cells": {"image_pool": "cells"},
         "every": {"image_every_step": True}}
ATOL = 1e-5


def tiny_model(arch: str, layer_norm: bool, hard_inference: str = "expected",
               cell_positions: int = 0, extra: str | None = None):
    torch.manual_seed(0)
    cfg = caption_config(dict(arch=arch, layer_norm=layer_norm, hard_inference=hard_inference,
                              vocab_size=V, embed_dim=8, hidden_dim=H, attention_dim=6,
                              encoder=EncoderConfig(out_dim=D, channels=(4, 8, 8)),
                              **({"cell_positions": cell_positions} if cell_positions else {}),
                              **EXTRA.get(extra, {})))
    model = build_caption_model(cfg)
    if cell_positions:
        with torch.no_grad():
            model.cell_position.normal_()
    # Non-trivial BatchNorm statistics, so that the exported eval-mode encoder is checked.
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: "-".join(map(str, v)))
def exported(request, tmp_path_factory):
    arch, layer_norm, hard_inference, cell_positions, *extra = request.param
    model = tiny_model(arch, layer_norm, hard_inference, cell_positions, *extra).train()
    out_dir = tmp_path_factory.mktemp(f"{arch}-{layer_norm}")
    specs = export_caption_graphs(model, out_dir, image_size=S, top_k=TOP_K)
    assert model.training  # the caller's mode is restored
    sessions = {key: ort.InferenceSession(str(out_dir / spec["file"]),
                                          providers=["CPUExecutionProvider"])
                for key, spec in specs.items()}
    return model, specs, sessions, out_dir


def context_shape(model) -> tuple[int, int]:
    """(locations, size) of the context the decoder step reads: NIC's one CNN(I) vector,
    SAT's L annotation vectors."""
    return (1, model.image.out_dim) if model.config.arch == "nic" else (L, D)


class OnnxStep:
    """decoder_step.onnx behind service.decoding's StepFn contract."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]

    def __call__(self, tokens, parents, state, context) -> StepOutput:
        out = dict(zip(self.outputs, self.session.run(None, {
            "tokens": tokens, "parents": parents, **state, **context}), strict=True))
        extras = {"alpha": out["alpha"]} if "alpha" in out else {}
        return StepOutput(out["log_probs"], out["token_ids"],
                          {"h": out["h_out"], "c": out["c_out"]}, extras)


@pytest.mark.parametrize("batch", [1, 5])
def test_encoder_graph_matches_pytorch(exported, batch):
    model, _, sessions, _ = exported
    images = np.random.default_rng(batch).random((batch, 3, S, S), dtype=np.float32)
    context, h, c = sessions["encoder"].run(["context", "h", "c"], {"image": images})
    torch_context, torch_state = TorchCaptionStep(model, TOP_K).encode(images)
    np.testing.assert_allclose(context, torch_context["context"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(h, torch_state["h"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(c, torch_state["c"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("rows, prev_rows", [(1, 1), (5, 3)])
def test_step_graph_matches_pytorch(exported, rows, prev_rows):
    model, _, sessions, _ = exported
    rng = np.random.default_rng(rows)
    tokens = rng.integers(0, V, rows)
    parents = rng.integers(0, prev_rows, rows)
    state = {name: rng.standard_normal((prev_rows, H), dtype=np.float32) for name in ("h", "c")}
    width, dim = context_shape(model)
    context = {"context": rng.standard_normal((rows, width, dim), dtype=np.float32)}
    ours = OnnxStep(sessions["decoder_step"])(tokens, parents, state, context)
    ref = TorchCaptionStep(model, TOP_K)(tokens, parents, state, context)
    assert ours.log_probs.shape == ours.token_ids.shape == (rows, TOP_K)
    assert (np.diff(ours.log_probs, axis=1) <= 0).all()  # sorted descending
    np.testing.assert_array_equal(ours.token_ids, ref.token_ids)
    np.testing.assert_allclose(ours.log_probs, ref.log_probs, atol=ATOL, rtol=0)
    for name in ("h", "c"):
        np.testing.assert_allclose(ours.state[name], ref.state[name], atol=ATOL, rtol=0)
    assert ours.extras.keys() == ref.extras.keys() == ({"alpha"} if width > 1 else set())
    for name in ours.extras:
        assert ours.extras[name].shape == (rows, L)
        np.testing.assert_allclose(ours.extras[name], ref.extras[name], atol=ATOL, rtol=0)


def test_step_gathers_state_rows_by_parents(exported):
    model, _, sessions, _ = exported
    rng = np.random.default_rng(7)
    state = {name: rng.standard_normal((3, H), dtype=np.float32) for name in ("h", "c")}
    width, dim = context_shape(model)
    context = {"context": rng.standard_normal((1, width, dim), dtype=np.float32)}
    step = OnnxStep(sessions["decoder_step"])
    tokens = np.array([4])
    from_parent = step(tokens, np.array([2]), state, context)
    from_row = step(tokens, np.array([0]), {k: v[2:] for k, v in state.items()}, context)
    np.testing.assert_array_equal(from_parent.log_probs, from_row.log_probs)
    np.testing.assert_array_equal(from_parent.state["h"], from_row.state["h"])


def test_specs_describe_the_written_graphs(exported):
    model, specs, _, out_dir = exported
    for spec in specs.values():
        GraphSpec.model_validate(spec)  # what the bundle manifest stores
        assert spec["sha256"] == hashlib.sha256((out_dir / spec["file"]).read_bytes()).hexdigest()
    width, dim = context_shape(model)
    encoder, step = specs["encoder"], specs["decoder_step"]
    assert encoder["file"] == "encoder.onnx" and step["file"] == "decoder_step.onnx"
    assert encoder["inputs"] == [{"name": "image", "dtype": "float32",
                                  "shape": ["batch", 3, S, S]}]
    assert encoder["outputs"] == [
        {"name": "context", "dtype": "float32", "shape": ["batch", width, dim]},
        {"name": "h", "dtype": "float32", "shape": ["batch", H]},
        {"name": "c", "dtype": "float32", "shape": ["batch", H]},
    ]
    assert step["inputs"] == [
        {"name": "tokens", "dtype": "int64", "shape": ["batch"]},
        {"name": "parents", "dtype": "int64", "shape": ["batch"]},
        {"name": "h", "dtype": "float32", "shape": ["prev_batch", H]},
        {"name": "c", "dtype": "float32", "shape": ["prev_batch", H]},
        {"name": "context", "dtype": "float32", "shape": ["batch", width, dim]},
    ]
    outputs = [
        {"name": "log_probs", "dtype": "float32", "shape": ["batch", TOP_K]},
        {"name": "token_ids", "dtype": "int64", "shape": ["batch", TOP_K]},
        {"name": "h_out", "dtype": "float32", "shape": ["batch", H]},
        {"name": "c_out", "dtype": "float32", "shape": ["batch", H]},
    ]
    if width > 1:
        outputs.append({"name": "alpha", "dtype": "float32", "shape": ["batch", L]})
    assert step["outputs"] == outputs


def test_beam_search_over_the_graphs_equals_beam_search_over_the_model(exported):
    model, _, sessions, _ = exported
    images = np.random.default_rng(3).random((2, 3, S, S), dtype=np.float32)
    names = [o.name for o in sessions["encoder"].get_outputs()]
    encoded = dict(zip(names, sessions["encoder"].run(None, {"image": images}), strict=True))
    onnx_hyps = beam_search(OnnxStep(sessions["decoder_step"]),
                            {"h": encoded["h"], "c": encoded["c"]},
                            {"context": encoded["context"]},
                            bos_id=1, eos_id=2, beam_size=3, max_length=6, top_k=TOP_K)
    torch_step = TorchCaptionStep(model, TOP_K)
    context, state = torch_step.encode(images)
    torch_hyps = beam_search(torch_step, state, context, bos_id=1, eos_id=2, beam_size=3,
                             max_length=6, top_k=TOP_K)
    for ours, ref in zip(onnx_hyps, torch_hyps, strict=True):
        assert [h.tokens for h in ours] == [h.tokens for h in ref]
        np.testing.assert_allclose([h.log_prob for h in ours], [h.log_prob for h in ref],
                                   atol=1e-4)


def test_top_k_is_capped_at_the_vocabulary_size():
    model = tiny_model("nic", False)
    step = TorchCaptionStep(model, top_k=100)
    assert step.top_k == V
    context, state = step.encode(torch.rand(2, 3, S, S))
    out = step(np.array([1, 1]), np.array([0, 1]), state, context)
    assert out.token_ids.shape == (2, V)
    np.testing.assert_array_equal(np.sort(out.token_ids, axis=1), np.tile(np.arange(V), (2, 1)))
    np.testing.assert_allclose(np.exp(out.log_probs).sum(axis=1), 1.0, rtol=1e-5)
    assert not model.training  # the step function decodes in eval mode
