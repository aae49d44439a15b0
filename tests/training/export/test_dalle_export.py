"""Export of DALL-E: the three graphs and their KV-cache contract, parity with PyTorch,
the manifest, the carried reranker, and the final image against a PyTorch decode."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.bundle import file_sha256, load_bundle
from service.decoding import draw_tokens
from service.pipelines.dalle import DalleModel
from service.pipelines.generation import SamplingOptions, to_uint8
from training.export.dalle import (
    DalleModels,
    check_dalle_parity,
    example_tokens,
    step_inputs,
    write_dalle_bundle,
)
from training.export.onnx import HALF_MIN_ELEMENTS

_spec = importlib.util.spec_from_file_location(
    "tiny_dalle", Path(__file__).parents[2] / "service" / "tiny_dalle.py")
tiny_dalle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_dalle)

L, G, K = tiny_dalle.TEXT_LENGTH, tiny_dalle.GRID, tiny_dalle.CODES


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[DalleModels, Path]:
    root = tmp_path_factory.mktemp("dalle_export")
    source = tiny_dalle.tiny_retrieval_bundle(root / "sources" / "rerank" / "1")
    models = tiny_dalle.tiny_dalle_models(3, reranker=source)
    return models, write_dalle_bundle(models, root / "repository", "dalle-tiny", 1)


def session(bundle: Path, file: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / file), providers=["CPUExecutionProvider"])


def test_graphs_have_a_symbolic_batch_and_an_explicit_cache(exported) -> None:
    models, bundle = exported
    m = load_bundle(bundle).manifest
    assert (m.task, m.architecture) == ("generation", "dalle")
    cache = ["batch", 2 * 2, 2, L + G * G, 8]  # layers x (k, v), heads, T, head size

    def specs(tensors) -> list:
        return [(t.name, t.dtype, t.shape) for t in tensors]

    assert specs(m.graphs["prefill"].inputs) == [("tokens", "int64", ["batch", L])]
    assert specs(m.graphs["prefill"].outputs) == [("logits", "float32", ["batch", K]),
                                                  ("present", "float32", cache)]
    assert specs(m.graphs["decoder_step"].inputs) == [("token", "int64", ["batch"]),
                                                      ("position", "int64", ["batch"]),
                                                      ("past", "float32", cache)]
    assert specs(m.graphs["decoder_step"].outputs) == [("logits", "float32", ["batch", K]),
                                                       ("kv", "float32", ["batch", 4, 2, 8])]
    assert specs(m.graphs["dvae_decoder"].inputs) == [("codes", "int64", ["batch", G, G])]
    assert specs(m.graphs["dvae_decoder"].outputs) == [("image", "float32",
                                                        ["batch", 3, 16, 16])]
    assert m.inference == {"text_length": L, "grid": G, "codebook_size": K, "image_size": 16,
                           "temperature": 1.0, "top_k": 0, "top_p": 1.0, "candidates": 1,
                           "reranker": {"image_graph": "rerank_image",
                                        "text_graph": "rerank_text",
                                        "vocabulary": "rerank_vocab", "text_length": 10,
                                        "source": "rerank/1"}}
    assert m.preprocessing.tokenizer.file == "vocab"
    assert m.training["config"]["dalle"]["attention"] == "sparse"
    assert m.training["config"]["dvae"]["grid"] == G and m.training["config"]["seed"] == 3


def test_the_transformer_weights_are_stored_once_for_both_graphs(exported) -> None:
    models, bundle = exported
    m = load_bundle(bundle).manifest  # verifies the weights file's sha256 too
    assert m.files["transformer_weights"].file == "transformer.bin"
    weights = (bundle / "transformer.bin").stat().st_size

    def stored(p: torch.Tensor) -> int:  # bytes on disk: half precision from HALF_MIN_ELEMENTS
        return p.numel() * (2 if p.numel() >= HALF_MIN_ELEMENTS else 4)

    params = sum(stored(p) for p in models.dalle.parameters())
    layers = sum(stored(p) for name, p in models.dalle.named_parameters()
                 if name.startswith("blocks.") and stored(p) >= 1024)
    # Both graphs run every layer: stored per graph, the layers alone would be 2 * layers.
    assert layers <= weights <= params < 2 * layers
    for file in ("prefill.onnx", "decoder_step.onnx"):
        graph = onnx.load(str(bundle / file), load_external_data=False).graph
        inline = [t.name for t in graph.initializer
                  if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) >= 1024]
        assert inline == []


def test_the_reranker_is_carried_unchanged(exported) -> None:
    models, bundle = exported
    m = load_bundle(bundle).manifest
    for key, source_file in (("rerank_image", "image_encoder.onnx"),
                             ("rerank_text", "text_encoder.onnx")):
        assert m.graphs[key].sha256 == file_sha256(models.reranker / source_file)
    assert m.files["rerank_vocab"].sha256 == file_sha256(models.reranker / "vocab.json")


def test_parity_holds_on_other_random_inputs(exported) -> None:
    models, bundle = exported
    diffs = check_dalle_parity(models, bundle, seed=11)
    assert set(diffs) == {"prefill.logits", "prefill.present", "decoder_step.logits",
                          "decoder_step.kv", "dvae_decoder.image"}
    assert max(diffs.values()) <= 1e-4
    assert load_bundle(bundle).manifest.training["parity_max_abs_diff"].keys() == diffs.keys()


def test_onnx_cached_decoding_follows_the_pytorch_forward_pass(exported) -> None:
    """Prefill, then steps fed the true codes: every step's logits equal the teacher-forced
    PyTorch pass, so the exported cache is the model's."""
    models, bundle = exported
    rng = np.random.default_rng(5)
    tokens = example_tokens(models, rng, 2)
    image = rng.integers(0, K, (2, G * G))
    with torch.no_grad():
        full = models.dalle(torch.from_numpy(tokens), torch.from_numpy(image)).image_logits
    logits, past = session(bundle, "prefill.onnx").run(None, {"tokens": tokens})
    step = session(bundle, "decoder_step.onnx")
    np.testing.assert_allclose(logits, full[:, 0].numpy(), atol=1e-4)
    for i in range(G * G - 1):
        logits, kv = step.run(None, {"token": image[:, i], "position": np.full(2, L + i),
                                     "past": past})
        past[:, :, :, L + i] = kv  # the caller keeps the cache
        np.testing.assert_allclose(logits, full[:, i + 1].numpy(), atol=1e-4)


def test_the_step_graph_takes_any_batch_size(exported) -> None:
    models, bundle = exported
    step = session(bundle, "decoder_step.onnx")
    for n in (1, 7):
        token, position, past = step_inputs(models, np.random.default_rng(n), n)
        logits, kv = step.run(None, {"token": token, "position": position, "past": past})
        assert logits.shape == (n, K) and kv.shape == (n, *past.shape[1:3], past.shape[4])


def test_the_served_image_is_the_pytorch_decode_of_the_same_draws(exported) -> None:
    """End to end: the pipeline's image for a prompt and seed equals PyTorch's prefill,
    steps, the same draws (same uniforms) and the dVAE decoder."""
    models, bundle = exported
    model = DalleModel.from_bundle(bundle, device="cpu")
    options = SamplingOptions(temperature=0.8, top_k=5, top_p=0.95)
    request = model.request("a red circle left of a square", 2, 17, options)
    (served,) = model.run_batch([request])
    tokens = np.zeros((2, L), np.int64)
    tokens[:, :len(request.tokens)] = request.tokens
    settings = (np.full(2, 0.8), np.full(2, 5), np.full(2, 0.95))
    codes = np.zeros((2, G * G), np.int64)
    with torch.no_grad():
        logits, past = models.dalle.prefill(torch.from_numpy(tokens))
        codes[:, 0] = draw_tokens(logits.numpy(), *settings, request.uniforms[:, 0])
        for i in range(G * G - 1):
            logits, past = models.dalle.step(torch.from_numpy(codes[:, i]),
                                             torch.full((2,), L + i), past)
            codes[:, i + 1] = draw_tokens(logits.numpy(), *settings,
                                          request.uniforms[:, i + 1])
        images = models.dvae.decode(torch.from_numpy(codes).view(2, G, G)).numpy()
    assert len(np.unique(codes)) > 3  # the draws are not degenerate
    np.testing.assert_array_equal(served.images, to_uint8(images))


def test_a_bundle_whose_step_returns_the_whole_cache_is_served_alike(exported, tmp_path) -> None:
    """Bundles exported before `kv` return `present` from the step; the service still runs
    them, and from the same weights they draw the same images as a `kv` bundle."""
    models, bundle = exported
    copying = write_dalle_bundle(dataclasses.replace(models, step_cache="present"),
                                 tmp_path / "repository", "dalle-present", 1)
    m = load_bundle(copying).manifest
    assert [t.name for t in m.graphs["decoder_step"].outputs] == ["logits", "present"]
    assert "decoder_step.present" in m.training["parity_max_abs_diff"]
    options = SamplingOptions(temperature=0.9, top_k=0, top_p=1.0)
    images = []
    for path in (bundle, copying):
        model = DalleModel.from_bundle(path, device="cpu")
        (result,) = model.run_batch([model.request("a red circle", 3, 5, options)])
        images.append(result.images)
    np.testing.assert_array_equal(images[0], images[1])


def test_an_unknown_step_cache_is_refused() -> None:
    models = tiny_dalle.tiny_dalle_models()
    with pytest.raises(ValueError, match="step_cache must be one of"):
        dataclasses.replace(models, step_cache="everything")


def test_a_dvae_of_another_grid_is_refused() -> None:
    models = tiny_dalle.tiny_dalle_models()
    other = tiny_dalle.tiny_dalle_models()
    other.dvae.config.grid = 8
    with pytest.raises(ValueError, match="4x4 grid of 13 codes, the dVAE makes 8x8"):
        DalleModels(dalle=models.dalle, dvae=other.dvae, vocab=models.vocab)
