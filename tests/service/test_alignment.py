"""Segment alignment: the DP against brute force, the pipeline, and POST /v1/alignments."""

import base64
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from tiny_bundle import build_caption_bundle, sample_png

from models.alignment import AlignmentConfig, AlignmentModel
from models.regions import RegionConfig, RegionNet
from service.app import create_app
from service.pipelines.alignment import (
    AlignmentModel as AlignmentPipeline,
)
from service.pipelines.alignment import (
    alignment_energy,
    best_alignment,
    runs,
    score_matrix,
    sentence_score,
)
from service.settings import Settings
from training.data.tokenizer import WordVocab
from training.export.alignment import write_alignment_bundle

WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "and", "the", "big"]
MAX_WORDS = 10


def brute_force(unary: np.ndarray, beta: float) -> float:
    T, R = unary.shape
    return max(alignment_energy(unary, a, beta) for a in itertools.product(range(R), repeat=T))


@pytest.mark.parametrize("seed", range(12))
def test_dp_finds_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    T, R = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    unary = rng.normal(size=(T, R))
    for beta in (0.0, 0.3, 1.0, 5.0):
        assignment, energy = best_alignment(unary, beta)
        assert energy == pytest.approx(brute_force(unary, beta))
        assert alignment_energy(unary, assignment, beta) == pytest.approx(energy)


def test_beta_moves_from_word_level_to_one_segment():
    unary = np.array([[2.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.5]])
    assert best_alignment(unary, 0.0)[0].tolist() == [0, 1, 0, 1]  # each word its argmax
    # beta 1.5: keeping region 0 through word 2 (bonus 3) beats switching back and forth,
    # and word 3's margin of 3.5 pays for the last switch (10.5 against 9 for region 1).
    assert best_alignment(unary, 1.5)[0].tolist() == [0, 0, 0, 1]
    assert best_alignment(unary, 10.0)[0].tolist() == [1, 1, 1, 1]  # 4.5 > 4
    assert best_alignment(unary, 10.0)[1] == pytest.approx(4.5 + 30.0)


def test_runs_are_maximal():
    assert runs([3, 3, 1, 1, 1, 3]) == [(0, 2, 3), (2, 5, 1), (5, 6, 3)]
    assert runs([0]) == [(0, 1, 0)]


def test_score_matrix_is_eq8_with_masks():
    rng = np.random.default_rng(0)
    regions = rng.normal(size=(3, 4, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=bool)
    words = rng.normal(size=(2, 6, 5)).astype(np.float32)
    lengths = np.array([6, 2])
    sims = score_matrix(regions, mask, words, lengths, images_per_chunk=2)
    for k in range(3):
        for l in range(2):
            unary = words[l, :lengths[l]] @ regions[k, mask[k]].T
            assert sims[k, l] == pytest.approx(sentence_score(unary), rel=1e-5)


# ---------------------------------------------------------------------------- bundle + API


@pytest.fixture(scope="module")
def torch_models() -> tuple[AlignmentModel, RegionNet]:
    torch.manual_seed(0)
    model = AlignmentModel(AlignmentConfig(vocab_size=len(WORDS) + 4, feature_dim=12,
                                           embed_dim=8, hidden_dim=8, joint_dim=8))
    net = RegionNet(RegionConfig(encoder={"out_dim": 8, "channels": [8, 8, 8]},
                                 feature_dim=12, max_proposals=3))
    return model.eval(), net.eval()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, torch_models) -> Path:
    """align-tiny/1 (exported from tiny random models, parity checked) beside a caption bundle."""
    root = tmp_path_factory.mktemp("alignment_repository")
    write_alignment_bundle(*torch_models, WordVocab(WORDS), root / "align-tiny" / "1",
                           image_size=32, max_words=MAX_WORDS, beta=0.5)
    build_caption_bundle(root, "caption-tiny", 1)
    return root


@pytest.fixture(scope="module")
def offline(repository: Path) -> AlignmentPipeline:
    return AlignmentPipeline.from_bundle(repository / "align-tiny" / "1")


@pytest.fixture(scope="module")
def api(repository: Path):
    app = create_app(Settings(model_repository=repository, max_queue_delay_ms=200,
                              max_batch_size=4))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


SENTENCE = "A red circle, left of the big blue square"


def test_graphs_match_pytorch_at_batch_sizes_unseen_at_export(offline, torch_models):
    model, net = torch_models
    images = np.random.default_rng(7).random((5, 3, 32, 32), dtype=np.float32)
    regions = offline.encode_images(images)
    with torch.no_grad():
        boxes, scores, features = net(torch.from_numpy(images))
        expected = model.regions(features).numpy()
    assert regions["region_vectors"].shape == (5, 4, 8)
    np.testing.assert_allclose(regions["boxes"], boxes.numpy(), atol=1e-5)
    np.testing.assert_allclose(regions["region_vectors"], expected, atol=1e-4)
    ids = [[4, 5, 6], [7, 8, 9, 10, 11, 12, 13], [4], [13] * MAX_WORDS]
    words, lengths = offline.encode_texts(ids)
    assert words.shape == (4, MAX_WORDS, 8) and lengths.tolist() == [3, 7, 1, MAX_WORDS]
    for row, (got, n) in enumerate(zip(words, lengths, strict=True)):
        with torch.no_grad():
            solo = model.words(torch.tensor([ids[row]]), torch.tensor([n]))[0].numpy()
        np.testing.assert_allclose(got[:n], solo, atol=1e-5)


def test_offline_alignment_is_consistent(offline):
    png = sample_png(1, size=40)
    result = offline.align(png, SENTENCE, beta=0.0)
    assert result.words == ["a", "red", "circle", "left", "of", "the", "big", "blue", "square"]
    covered = [t for s in result.segments for t in range(s.start, s.end)]
    assert covered == list(range(9))
    for seg in result.segments:
        assert seg.text == " ".join(result.words[seg.start:seg.end])
        assert 0 <= seg.box[0] <= seg.box[2] <= 40 and 0 <= seg.box[1] <= seg.box[3] <= 40
    # beta 0: each word's region is its best, so the segment scores add up to S_kl.
    assert sum(s.score for s in result.segments) == pytest.approx(result.score, rel=1e-5)
    whole = offline.align(png, SENTENCE, beta=1e6)
    assert len(whole.segments) == 1 and whole.segments[0].end == 9
    assert whole.score == pytest.approx(result.score)


def test_batched_answers_equal_solo_answers(offline):
    requests = [offline.request(sample_png(s), SENTENCE if s % 2 else "a blue square", beta=b)
                for s, b in ((1, 0.0), (2, 0.5), (3, 2.0))]
    batched = offline.run_batch(requests)
    for req, got in zip(requests, batched, strict=True):
        solo = offline.run_batch([req])[0]
        assert got.assignment == solo.assignment
        assert got.score == pytest.approx(solo.score, rel=1e-5)


def test_multipart_and_json_give_the_same_answer(api, offline):
    png = sample_png(4, size=48)
    r1 = api.post("/v1/alignments", files={"file": ("x.png", png, "image/png")},
                  data={"sentence": SENTENCE, "beta": "0.2"})
    r2 = api.post("/v1/alignments", json={"image": base64.b64encode(png).decode(),
                                          "sentence": SENTENCE, "beta": 0.2,
                                          "model": "align-tiny"})
    assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
    body = r1.json()
    assert body == r2.json()
    assert body["model"] == "align-tiny/1"
    assert body["sentence"] == "a red circle left of the big blue square"
    expected = offline.align(png, SENTENCE, beta=0.2)
    assert body["score"] == pytest.approx(expected.score, rel=1e-5)
    assert [(s["start"], s["end"]) for s in body["segments"]] == \
        [(s.start, s.end) for s in expected.segments]
    assert all(len(s["box"]) == 4 and s["box"][2] <= 48 for s in body["segments"])


def test_default_beta_comes_from_the_manifest(api, offline):
    png = sample_png(5)
    body = api.post("/v1/alignments", files={"file": ("x.png", png, "image/png")},
                    data={"sentence": SENTENCE}).json()
    expected = offline.align(png, SENTENCE, beta=0.5)
    assert [s["start"] for s in body["segments"]] == [s.start for s in expected.segments]


@pytest.mark.parametrize(("fields", "needle"), [
    ({"sentence": "a purple hexagon"}, "purple, hexagon"),
    ({"sentence": " , ; "}, "no words"),
    ({"sentence": " ".join(["a"] * (MAX_WORDS + 1))}, "at most 10"),
    ({"sentence": "a red circle", "beta": "-1"}, "beta"),
    ({}, "sentence"),
    ({"sentence": "a circle", "model": "caption-tiny"}, "caption model"),
])
def test_bad_requests_are_422_naming_the_problem(api, fields, needle):
    r = api.post("/v1/alignments", files={"file": ("x.png", sample_png(0), "image/png")},
                 data=fields)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"]


def test_unknown_model_and_non_image(api):
    r = api.post("/v1/alignments", json={"image": base64.b64encode(sample_png(0)).decode(),
                                         "sentence": "a circle", "model": "align-none"})
    assert r.status_code == 404
    r = api.post("/v1/alignments", files={"file": ("x.txt", b"not an image", "text/plain")},
                 data={"sentence": "a circle"})
    assert r.status_code == 415, r.text


def test_bundle_records_the_alignment_contract(repository):
    manifest = json.loads((repository / "align-tiny" / "1" / "manifest.json").read_text())
    assert manifest["task"] == "alignment"
    assert manifest["inference"] == {"beta": 0.5, "max_words": MAX_WORDS,
                                     "min_region_score": 0.0}
    image_outputs = {o["name"]: o["shape"] for o in manifest["graphs"]["image"]["outputs"]}
    assert image_outputs["boxes"] == ["batch", 4, 4]
    assert image_outputs["region_vectors"] == ["batch", 4, 8]
