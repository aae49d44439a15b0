"""The retrieval pipeline and its endpoints, on tiny bundles built with onnx.helper.

The graphs honour the retrieval contract (service/pipelines/retrieval.py) without training
code: the image graph average-pools the image and projects it, the text graph
sums the embeddings of the first `lengths` words; both normalise to unit length.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from tiny_bundle import TOKENS, build_caption_bundle, sample_png, write_vocab

from service.app import create_app
from service.bundle import BundleError, describe_graph, file_sha256, load_bundle, write_manifest
from service.indexes import top_k_search
from service.pipelines.retrieval import Query, RetrievalModel
from service.settings import Settings
from training.index import write_gallery

SIZE, POOL, E, T = 16, 4, 8, 8
GALLERY_SEEDS = range(10)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def image_graph(rng: np.random.Generator) -> onnx.ModelProto:
    k = SIZE // POOL
    nodes = [
        helper.make_node("Sub", ["image", "half"], ["centred"]),
        helper.make_node("AveragePool", ["centred"], ["pooled"], kernel_shape=[k, k],
                         strides=[k, k]),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["projected"]),
        helper.make_node("LpNormalization", ["projected"], ["embedding"], axis=1, p=2),
    ]
    inits = [numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
             numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
             numpy_helper.from_array(rng.normal(0, 1, (3 * POOL * POOL, E)).astype(np.float32),
                                     "w")]
    f32 = TensorProto.FLOAT
    return _model(helper.make_graph(
        nodes, "image_encoder",
        [helper.make_tensor_value_info("image", f32, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", f32, ["batch", E])], inits))


def text_graph(rng: np.random.Generator) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gather", ["words", "tokens"], ["vectors"], axis=0),  # (B, T, E)
        helper.make_node("Unsqueeze", ["lengths", "axis1"], ["lengths2"]),  # (B, 1)
        helper.make_node("Less", ["positions", "lengths2"], ["inside"]),  # (B, T)
        helper.make_node("Cast", ["inside"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["vectors", "mask3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axis1"], ["summed"], keepdims=0),
        helper.make_node("LpNormalization", ["summed"], ["embedding"], axis=1, p=2),
    ]
    inits = [numpy_helper.from_array(rng.normal(0, 1, (len(TOKENS), E)).astype(np.float32),
                                     "words"),
             numpy_helper.from_array(np.arange(T, dtype=np.int64)[None, :], "positions"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2")]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    return _model(helper.make_graph(
        nodes, "text_encoder",
        [helper.make_tensor_value_info("tokens", i64, ["batch", T]),
         helper.make_tensor_value_info("lengths", i64, ["batch"])],
        [helper.make_tensor_value_info("embedding", f32, ["batch", E])], inits))


def build_retrieval_bundle(repository: Path, name: str, *, seed: int = 0) -> Path:
    bundle = repository / name / "1"
    bundle.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    onnx.save(image_graph(rng), bundle / "image_encoder.onnx")
    onnx.save(text_graph(rng), bundle / "text_encoder.onnx")
    write_vocab(bundle / "vocab.json")
    write_manifest(bundle, {
        "name": name, "version": 1, "task": "retrieval", "architecture": "bag-of-words",
        "created": datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
        "graphs": {g: describe_graph(bundle, f"{g}.onnx")
                   for g in ("image_encoder", "text_encoder")},
        "files": {"vocab": {"file": "vocab.json", "sha256": file_sha256(bundle / "vocab.json")}},
        "preprocessing": {"image_size": SIZE, "tokenizer": {"type": "word", "file": "vocab"}},
        "inference": {"embedding_dim": E, "text_length": T, "galleries": {}},
    })
    return bundle


SENTENCES = ["a red circle", "a blue square left of a star", "the small green cross",
             "a yellow triangle above a red star", "a large blue circle"]


def index_gallery(bundle: Path) -> None:
    """Ten random images and five sentences (written for images 0, 2, 4, 6, 8)."""
    model = RetrievalModel.from_bundle(bundle)
    images = model.embed_images([model.load_image(sample_png(s)) for s in GALLERY_SEEDS])
    texts = model.embed_texts([model.text_query(t).ids for t in SENTENCES])
    write_gallery(bundle, {
        "images": (images, {"ids": [100 + s for s in GALLERY_SEEDS],
                            "files": [f"img{s}.png" for s in GALLERY_SEEDS]}),
        "captions": (texts, {"texts": SENTENCES, "image_ids": [100, 102, 104, 106, 108]}),
    })


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retrieval_repository")
    index_gallery(build_retrieval_bundle(root, "retrieval-tiny", seed=0))
    build_retrieval_bundle(root, "retrieval-bare", seed=1)
    build_caption_bundle(root, "caption-tiny", 1, seed=0)
    return root


@pytest.fixture(scope="module")
def offline(repository: Path) -> RetrievalModel:
    return RetrievalModel.from_bundle(repository / "retrieval-tiny" / "1")


@pytest.fixture(scope="module")
def api(repository: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_repository=repository, max_queue_delay_ms=20))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------- offline


def test_top_k_search_equals_a_full_sort():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 4)).astype(np.float32)
    queries = rng.normal(size=(3, 4)).astype(np.float32)
    for k in (1, 7, 50, 80):
        rows, scores = top_k_search(queries, gallery, k)
        full = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :min(k, 50)]
        np.testing.assert_array_equal(rows, full)
        np.testing.assert_allclose(scores, np.take_along_axis(queries @ gallery.T, full, 1))


def test_ties_rank_by_gallery_row():
    gallery = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    rows, _ = top_k_search(np.array([[1.0, 0.0]], dtype=np.float32), gallery, 2)
    assert rows.tolist() == [[1, 2]]


def test_ties_at_the_cut_rank_by_gallery_row_whatever_k():
    # Half the gallery holds one sentence: which of its rows make the top k must not
    # depend on k, or a query batched with a larger top_k gets other hits than alone.
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(60, 4)).astype(np.float32)
    gallery[rng.choice(60, 30, replace=False)] = gallery[0]
    queries = np.stack([gallery[0] * 3, rng.normal(size=4).astype(np.float32)])
    full = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    for k in range(1, 61):
        rows, scores = top_k_search(queries, gallery, k)
        np.testing.assert_array_equal(rows, full[:, :k])
        np.testing.assert_array_equal(scores, np.take_along_axis(queries @ gallery.T, rows, 1))


def test_mixed_batch_gives_each_query_its_solo_answer(offline: RetrievalModel):
    image = offline.load_image(sample_png(3))
    text = offline.text_query("a red star above the blue circle")
    queries = [Query(image=image), Query(text=text, search="images", top_k=4),
               Query(image=image, search="captions", top_k=2), Query(text=text)]
    together = offline.run_batch(queries)
    for query, result in zip(queries, together, strict=True):
        alone = offline.run_batch([query])[0]
        np.testing.assert_allclose(result.embedding, alone.embedding, atol=1e-6)
        assert [h.index for h in result.hits] == [h.index for h in alone.hits]
        assert len(result.hits) == (query.top_k if query.search else 0)
    np.testing.assert_allclose(np.linalg.norm(together[0].embedding), 1.0, rtol=1e-5)


def test_text_queries_map_some_unknown_words_to_unk_and_refuse_the_rest(
        offline: RetrievalModel):
    query = offline.text_query("A red zebra, left of a purple square!")
    assert query.unknown == ("zebra", "purple")
    assert query.ids[2] == 3 and len(query.ids) == 8
    for text, message in (("zebra purple zebra", "no word is in the vocabulary"),
                          ("?!", "no words"),
                          ("a red circle left of a blue square and a star", "at most 8")):
        with pytest.raises(Exception, match=message) as err:
            offline.text_query(text)
        assert err.value.status == 422


def test_gallery_of_wrong_width_is_refused_at_load(tmp_path: Path):
    bundle = build_retrieval_bundle(tmp_path, "retrieval-bad")
    write_gallery(bundle, {"images": (np.ones((2, E + 1), dtype=np.float32),
                                      {"ids": [0, 1], "files": ["a.png", "b.png"]})})
    with pytest.raises(BundleError, match=r"expected float32 \[N, 8\]"):
        RetrievalModel.from_bundle(bundle)


def test_reindexing_replaces_the_whole_gallery(tmp_path: Path):
    bundle = build_retrieval_bundle(tmp_path, "retrieval-re")
    index_gallery(bundle)
    assert (bundle / "gallery_captions.npy").exists()
    write_gallery(bundle, {"images": (np.eye(E, dtype=np.float32)[:3],
                                      {"ids": [7, 8, 9], "files": ["x", "y", "z"]})})
    manifest = load_bundle(bundle).manifest  # sha256 of every listed file verified
    assert set(manifest.inference["galleries"]) == {"images"}
    assert "gallery_captions" not in manifest.files
    assert not (bundle / "gallery_captions.npy").exists()
    assert len(RetrievalModel.from_bundle(bundle).galleries["images"]) == 3


# ---------------------------------------------------------------------------- HTTP


def test_text_embedding_equals_the_offline_pipeline(api: TestClient, offline: RetrievalModel):
    r = api.post("/v1/embeddings", json={"text": "a small green cross"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "retrieval-bare/1"  # the default: first retrieval name A-Z
    assert body["dimensions"] == E and len(body["embedding"]) == E
    r = api.post("/v1/embeddings", json={"text": "a small green cross",
                                         "model": "retrieval-tiny"})
    expected = offline.run_batch([Query(text=offline.text_query("a small green cross"))])[0]
    np.testing.assert_allclose(r.json()["embedding"], expected.embedding, atol=1e-6)
    assert "unknown_words" not in r.json()
    multipart = api.post("/v1/embeddings", data={"text": "a small green cross",
                                                 "model": "retrieval-tiny"})
    assert multipart.status_code == 200
    np.testing.assert_allclose(multipart.json()["embedding"], expected.embedding, atol=1e-6)


def test_image_embedding_multipart_and_json_agree(api: TestClient, offline: RetrievalModel):
    png = sample_png(5)
    a = api.post("/v1/embeddings", files={"file": ("x.png", png, "image/png")},
                 data={"model": "retrieval-tiny"})
    b = api.post("/v1/embeddings", json={"image": b64(png), "model": "retrieval-tiny"})
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    expected = offline.embed_images([offline.load_image(png)])[0]
    np.testing.assert_allclose(a.json()["embedding"], expected, atol=1e-6)
    np.testing.assert_allclose(b.json()["embedding"], expected, atol=1e-6)
    assert abs(np.linalg.norm(a.json()["embedding"]) - 1) < 1e-5


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"text": ""}, 422, "text"),
    ({"text": "  ...  "}, 422, "no words"),
    ({"text": "zebra giraffe"}, 422, "zebra, giraffe"),
    ({"text": "a red circle", "image": "aGVsbG8="}, 422, "not both"),
    ({"model": "retrieval-tiny"}, 422, "image"),
    ({"text": "a red circle", "model": "caption-tiny"}, 422, "caption model"),
    ({"text": "a red circle", "model": "nope"}, 404, "not served"),
])
def test_embedding_errors(api: TestClient, body: dict, status: int, message: str):
    r = api.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_unknown_words_are_named_in_the_answer(api: TestClient):
    r = api.post("/v1/embeddings", json={"text": "a purple circle", "model": "retrieval-tiny"})
    assert r.status_code == 200
    assert r.json()["unknown_words"] == ["purple"]


def test_image_search_ranks_the_gallery_by_cosine(api: TestClient, offline: RetrievalModel):
    text = "a yellow triangle above a red star"
    r = api.post("/v1/retrieval/images", json={"text": text, "top_k": 3,
                                               "model": "retrieval-tiny"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    gallery = offline.galleries["images"]
    query = offline.embed_texts([offline.text_query(text).ids])[0]
    scores = gallery.embeddings @ query
    best = np.argsort(-scores)[:3]
    assert [h["id"] for h in results] == [100 + int(i) for i in best]
    assert [h["file"] for h in results] == [f"img{int(i)}.png" for i in best]
    np.testing.assert_allclose([h["score"] for h in results], scores[best], atol=1e-5)
    default_k = api.post("/v1/retrieval/images", json={"text": text, "model": "retrieval-tiny"})
    assert len(default_k.json()["results"]) == 5


def test_caption_search_finds_a_gallery_sentence_from_its_image(api: TestClient,
                                                                offline: RetrievalModel):
    png = sample_png(4)
    query = offline.embed_images([offline.load_image(png)])[0]
    expected = np.argsort(-(offline.galleries["captions"].embeddings @ query))
    for request in ({"files": {"file": ("x.png", png, "image/png")},
                     "data": {"top_k": "5", "model": "retrieval-tiny"}},
                    {"json": {"image": b64(png), "top_k": 5, "model": "retrieval-tiny"}}):
        r = api.post("/v1/retrieval/captions", **request)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [h["text"] for h in results] == [SENTENCES[i] for i in expected]
        assert [h["image_id"] for h in results] == [100 + 2 * int(i) for i in expected]
        assert results[0]["score"] >= results[-1]["score"]


@pytest.mark.parametrize("top_k", [0, 101, "many"])
def test_bad_top_k_is_422(api: TestClient, top_k):
    r = api.post("/v1/retrieval/images", json={"text": "a red circle", "top_k": top_k,
                                               "model": "retrieval-tiny"})
    assert r.status_code == 422 and "top_k" in r.json()["error"]["message"]
    r = api.post("/v1/retrieval/captions", json={"image": b64(sample_png(1)), "top_k": top_k,
                                                 "model": "retrieval-tiny"})
    assert r.status_code == 422 and "top_k" in r.json()["error"]["message"]


def test_a_bundle_without_gallery_embeds_but_does_not_search(api: TestClient):
    r = api.post("/v1/retrieval/images", json={"text": "a red circle",
                                               "model": "retrieval-bare"})
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["type"] == "no_gallery" and "glimpse index" in error["message"]
    r = api.post("/v1/retrieval/captions", files={"file": ("x.png", sample_png(1), "image/png")},
                 data={"model": "retrieval-bare"})
    assert r.status_code == 409
    assert api.post("/v1/embeddings", json={"text": "a red circle",
                                            "model": "retrieval-bare"}).status_code == 200


def test_not_an_image_is_415(api: TestClient):
    r = api.post("/v1/retrieval/captions", files={"file": ("x.png", b"not a png", "image/png")},
                 data={"model": "retrieval-tiny"})
    assert r.status_code == 415


# ---------------------------------------------------------------------------- committed bundle

COMMITTED = max((Path(__file__).parents[2] / "model_repository" / "retrieval-vse").glob("[0-9]*"),
                key=lambda path: int(path.name))  # the served version: the highest


def test_committed_bundle_finds_the_image_a_test_sentence_was_written_for():
    model = RetrievalModel.from_bundle(COMMITTED)
    images, captions = model.galleries["images"], model.galleries["captions"]
    assert (len(images), len(captions)) == (1000, 5000)
    picked = captions.entries[::250]  # 20 test sentences
    queries = [Query(text=model.text_query(e["text"]), search="images", top_k=5)
               for e in picked]
    found = [entry["image_id"] in [h.entry["id"] for h in result.hits]
             for entry, result in zip(picked, model.run_batch(queries), strict=True)]
    assert sum(found) >= 16  # the bundle's text -> image R@5 on this gallery is 91.7%
