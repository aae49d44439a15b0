"""Batch buckets and CUDA provider options: what a GPU session is built with, checked on CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from committed import served_bundles
from pydantic import ValidationError
from tiny_bundle import build_caption_bundle

from service.bundle import load_bundle
from service.loading import load_model
from service.metrics import ServiceMetrics
from service.pipelines import pipeline_for
from service.pipelines.caption import CaptionModel, CaptionRequest
from service.runtime import (
    CPU,
    CUDA,
    BatchBuckets,
    choose_providers,
    default_buckets,
    load_graphs,
    pad_rows,
    resolve_buckets,
)
from service.settings import DEFAULT_CUDA_OPTIONS, Settings


def test_bucket_sizes() -> None:
    buckets = BatchBuckets((1, 2, 4, 8))
    assert [buckets.size_for(n) for n in (0, 1, 2, 3, 5, 8, 9, 17)] == [0, 1, 2, 4, 8, 8, 16, 24]
    assert BatchBuckets.powers_of_two(8).sizes == (1, 2, 4, 8)
    assert BatchBuckets.powers_of_two(9).sizes == (1, 2, 4, 8, 16)
    assert BatchBuckets.powers_of_two(1).sizes == (1,)
    assert default_buckets(8).sizes[-1] == 128
    for bad in [(), (0, 2), (4, 2), (2, 2)]:
        with pytest.raises(ValueError, match="increasing"):
            BatchBuckets(bad)


def test_buckets_are_on_by_default_on_a_gpu_only() -> None:
    assert resolve_buckets("auto", 8, [(CUDA, {}), CPU]) == default_buckets(8)
    assert resolve_buckets("auto", 8, [CUDA, CPU]) == default_buckets(8)
    assert resolve_buckets("auto", 8, [CPU]) is None
    assert resolve_buckets("off", 8, [CUDA, CPU]) is None
    assert resolve_buckets([2, 6], 8, [CPU]) == BatchBuckets((2, 6))


def test_padding_repeats_the_last_row() -> None:
    value = np.arange(6).reshape(3, 2)
    assert pad_rows(value, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert pad_rows(value, 3) is value
    assert pad_rows(np.zeros((0, 2)), 4).shape == (0, 2)


def test_cuda_options_go_to_the_cuda_provider() -> None:
    options = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
    with_cuda = [CUDA, CPU]
    assert choose_providers("auto", available=with_cuda, cuda_options=options) == \
        [(CUDA, options), CPU]
    assert choose_providers("cuda:1", available=with_cuda, cuda_options=options) == \
        [(CUDA, {**options, "device_id": 1}), CPU]
    assert choose_providers("auto", [CUDA, CPU], available=with_cuda, cuda_options=options) == \
        [(CUDA, options), CPU]
    assert choose_providers("cpu", available=with_cuda, cuda_options=options) == [CPU]


class RecordedSession(onnxruntime.InferenceSession):
    """A CPU session that records the providers it was asked for."""

    asked: list[Any] = []

    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        RecordedSession.asked.append(providers)
        super().__init__(path, sess_options=sess_options, providers=[CPU])


def test_a_cuda_session_gets_the_settings_options(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA machine (faked: ONNX Runtime says it has the provider) every graph's
    session is asked for CUDA with the model's options, and the batches are bucketed."""
    bundle = load_bundle(build_caption_bundle(tmp_path / "repo", "caption-tiny", 1))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(onnxruntime, "InferenceSession", RecordedSession)
    RecordedSession.asked = []
    settings = Settings(model_repository=tmp_path / "repo", device="cuda:0", max_batch_size=4,
                        model_overrides={"caption-tiny": {
                            "cuda_options": {"arena_extend_strategy": "kNextPowerOfTwo"}}})
    served = load_model(bundle, settings, ServiceMetrics())
    want = {**DEFAULT_CUDA_OPTIONS, "arena_extend_strategy": "kNextPowerOfTwo", "device_id": 0}
    assert want["cudnn_conv_algo_search"] == "HEURISTIC"
    assert RecordedSession.asked == [[(CUDA, want), CPU]] * len(bundle.manifest.graphs)
    for graph in served.pipeline.graphs.values():
        assert graph.buckets == default_buckets(4)
        assert graph.warmed == set(default_buckets(4).sizes), graph.name


def test_cuda_graphs_are_refused() -> None:
    with pytest.raises(ValidationError, match="enable_cuda_graph"):
        Settings(cuda_options={"enable_cuda_graph": "1"})
    with pytest.raises(ValidationError, match="enable_cuda_graph"):
        Settings(model_overrides={"m": {"cuda_options": {"enable_cuda_graph": True}}})


def test_bucket_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_BATCH_BUCKETS", "1, 4,16")
    monkeypatch.setenv("GLIMPSE_MODEL_OVERRIDES", '{"m": {"batch_buckets": "off"}}')
    settings = Settings()
    assert settings.batch_buckets == [1, 4, 16]
    assert settings.for_model("m").batch_buckets == "off"
    assert settings.for_model("other").batch_buckets == [1, 4, 16]
    assert Settings(_env_file=None, batch_buckets="auto").batch_buckets == "auto"
    for bad in ["4,2", "0,1", "big"]:
        monkeypatch.setenv("GLIMPSE_BATCH_BUCKETS", bad)
        with pytest.raises(ValidationError, match="batch_buckets"):
            Settings()


def test_bucketed_graphs_answer_as_unpadded_ones(tmp_path: Path) -> None:
    """Every row count, padded to a bucket and cut back, gives the unpadded outputs."""
    bundle = load_bundle(build_caption_bundle(tmp_path / "repo", "caption-tiny", 1))
    plain = load_graphs(bundle, device="cpu")
    padded = load_graphs(bundle, device="cpu", batch_buckets=[4, 8])
    rng = np.random.default_rng(0)
    for rows in (1, 3, 5, 9):
        image = rng.random((rows, 3, 16, 16), dtype=np.float32)
        want, got = plain["encoder"].run({"image": image}), padded["encoder"].run({"image": image})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert padded["encoder"].warmed == {4, 8, 16}  # 9 rows: a multiple of the largest


def test_bucketed_beam_search_gives_the_unpadded_captions(tmp_path: Path) -> None:
    bundle = load_bundle(build_caption_bundle(tmp_path / "repo", "caption-tiny", 1))
    plain = CaptionModel(bundle, load_graphs(bundle, device="cpu"))
    padded = CaptionModel(bundle, load_graphs(bundle, device="cpu", batch_buckets=[2, 8]))
    images = [np.random.default_rng(k).random((3, 16, 16), dtype=np.float32) for k in range(3)]
    for beam_size in (1, 3):
        requests = [CaptionRequest(plain.as_array(image),
                                   plain.params(beam_size=beam_size, num_captions=beam_size))
                    for image in images]
        want = plain.caption_batch(requests)
        got = padded.caption_batch(requests)
        assert [[c.text for c in r.captions] for r in got] == \
            [[c.text for c in r.captions] for r in want]
        for g, w in zip(got, want, strict=True):
            assert [c.log_prob for c in g.captions] == pytest.approx(
                [c.log_prob for c in w.captions], abs=1e-4)


@pytest.mark.parametrize("name", sorted(served_bundles()))
def test_every_committed_graph_warms_every_bucket(name: str) -> None:
    """Warm-up runs each bucket of each graph, from feeds the pipeline's warm-up made."""
    bundle = served_bundles()[name]
    settings = Settings(device="cpu", batch_buckets=[1, 2, 4, 8, 16], max_batch_size=2,
                        intra_op_threads=1)
    served = load_model(bundle, settings, ServiceMetrics())
    for graph in served.pipeline.graphs.values():
        # A graph whose rows are frames x clips (the video frame encoder) also warms the
        # multiples of the largest bucket that its warm-up batches fill.
        assert {1, 2, 4, 8, 16} <= graph.warmed, graph.name
        assert all(size in (1, 2, 4, 8) or size % 16 == 0 for size in graph.warmed), graph.name


@pytest.mark.parametrize("buckets", ["off", [2, 8]])
@pytest.mark.parametrize("name", ["caption-sat", "caption-updown", "caption-mrnn"])
def test_decoder_state_kept_between_steps_gives_the_numpy_path_answers(
        name: str, buckets: str | list[int]) -> None:
    """The step state as OrtValues from step to step (IO binding) against the state copied
    through NumPy: same captions, log-probabilities and attention, beam search and sampling."""
    bundle = served_bundles()[name]
    model = CaptionModel(bundle, load_graphs(bundle, device="cpu", batch_buckets=buckets))
    images = [np.random.default_rng(k).random((3, 64, 64), dtype=np.float32) for k in range(3)]
    asks = [dict(beam_size=1), dict(beam_size=5, num_captions=3),
            dict(decoding="sample", seed=3, num_captions=2)]
    if model.has_attention:
        asks[1]["return_attention"] = True
    requests = [CaptionRequest(image, model.params(**ask))
                for image, ask in zip(images, asks, strict=True)]
    assert model.state_on_device
    bound = model.caption_batch(requests)
    model.state_on_device = False
    copied = model.caption_batch(requests)
    for got, want in zip(bound, copied, strict=True):
        assert [c.text for c in got.captions] == [c.text for c in want.captions]
        assert [c.log_prob for c in got.captions] == pytest.approx(
            [c.log_prob for c in want.captions], abs=1e-5)
        for g, w in zip(got.captions, want.captions, strict=True):
            if w.attention is not None:
                np.testing.assert_allclose(g.attention, w.attention, atol=1e-6)


def test_kept_outputs_are_ort_values_on_the_sessions_device(tmp_path: Path) -> None:
    bundle = load_bundle(build_caption_bundle(tmp_path / "repo", "caption-tiny", 1))
    graphs = load_graphs(bundle, device="cpu", batch_buckets=[4])
    encoded = graphs["encoder"].run({"image": np.zeros((3, 3, 16, 16), np.float32)})
    feeds = {"tokens": np.ones(3, np.int64), "parents": np.arange(3),
             "h": encoded["h"], "c": encoded["c"], "context": encoded["context"]}
    out = graphs["decoder_step"].run_bound(feeds, ["log_probs", "h_out", "c_out"],
                                           keep={"h_out", "c_out"})
    assert isinstance(out["log_probs"], np.ndarray) and len(out["log_probs"]) == 3
    assert isinstance(out["h_out"], onnxruntime.OrtValue)
    assert out["h_out"].device_name() == "cpu" and out["h_out"].shape()[0] == 4  # padded
    again = graphs["decoder_step"].run_bound(
        {**feeds, "h": out["h_out"], "c": out["c_out"]}, ["log_probs"])
    want = graphs["decoder_step"].run({**feeds, "h": out["h_out"].numpy()[:3],
                                       "c": out["c_out"].numpy()[:3]}, ["log_probs"])
    np.testing.assert_allclose(again["log_probs"], want["log_probs"], atol=1e-6)


def plain(value: Any) -> Any:
    """A result as nested lists, dicts and numbers, for comparing with a tolerance."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def assert_close(got: Any, want: Any, where: str = "result") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4), where
    elif isinstance(want, bytes):  # PNGs: decoded pixels within one level
        from io import BytesIO

        from PIL import Image
        a = np.asarray(Image.open(BytesIO(got)), dtype=int)
        b = np.asarray(Image.open(BytesIO(want)), dtype=int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, where
    else:
        assert got == want, where


@pytest.mark.parametrize("build", ["activity", "video-caption", "dalle"])
def test_the_other_pipelines_answer_the_same_with_buckets(build: str, tmp_path: Path) -> None:
    """The video and DALL-E pipelines (their bundles are not committed): every graph warms
    at every bucket, and a batch's results equal the unpadded ones."""
    from tiny_dalle import tiny_dalle_bundle
    from tiny_video import build_activity_bundle, build_video_caption_bundle

    builders = {"activity": build_activity_bundle, "video-caption": build_video_caption_bundle,
                "dalle": tiny_dalle_bundle}
    bundle = load_bundle(builders[build](tmp_path / "repo"))
    pipeline_class = pipeline_for(bundle.manifest)
    unpadded = pipeline_class(bundle, load_graphs(bundle, device="cpu"))
    padded = pipeline_class(bundle, load_graphs(bundle, device="cpu", batch_buckets=[2, 8]))
    padded.warm_up([1, 3])
    for graph in padded.graphs.values():
        assert graph.warmed >= {2, 8}, graph.name
    (batch, *_) = padded.warm_up_batches(3)
    assert_close(plain(padded.run_batch(batch)), plain(unpadded.run_batch(batch)))
