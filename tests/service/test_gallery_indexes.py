"""Gallery indexes (service/indexes.py): recall against exact search, the bundle's checks of
an index file, paging, and the same answers over HTTP whichever index a gallery uses.

Galleries are a few thousand random vectors at most, so every build takes a fraction of a
second; the benchmark (benchmarks/gallery_search.py --indexes) measures them at 1M.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_retrieval_api import E, b64, build_retrieval_bundle
from tiny_bundle import sample_png

from service.app import create_app
from service.bundle import BundleError, file_sha256, load_bundle, write_manifest
from service.indexes import INDEX_KINDS, ExactIndex, index_class, top_k_search, use_qdrant
from service.pipelines.retrieval import MAX_SEARCH_DEPTH, Query, RetrievalModel
from service.settings import Settings
from training.cli import main as glimpse
from training.index import write_gallery

KINDS = ("exact", "hnsw", "ivfpq", "qdrant")
GALLERY = 600  # vectors in the HTTP galleries


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def columns(n: int) -> dict[str, list]:
    return {"ids": [1000 + i for i in range(n)], "files": [f"img{i}.png" for i in range(n)]}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth,
                                                                          strict=True)]))


def test_the_manifest_names_every_index_kind():
    from typing import get_args

    from service.bundle import IndexKind
    assert set(get_args(IndexKind)) == set(INDEX_KINDS) == set(KINDS)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq", "qdrant"])
def test_approximate_indexes_find_what_exact_search_finds(kind: str, tmp_path: Path):
    gallery, queries = unit_vectors(3000, 32, 0), unit_vectors(50, 32, 1)
    cls = index_class(kind)
    params = cls.resolve_params({}, len(gallery), gallery.shape[1])
    if cls.needs_file:
        cls.build(gallery, params, tmp_path / "index.faiss", progress=False)
    index = cls.load(gallery, tmp_path / "index.faiss", params, name=f"test-{kind}")
    truth, _ = top_k_search(queries, gallery, 10)
    rows, scores = index.search(queries, 10)
    assert recall(rows, truth) >= 0.95
    # the scores are exact cosines, best first
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", queries, gallery[rows]),
                               atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    # one query alone gets what it gets in a batch
    alone = np.concatenate([index.search(q[None], 10)[0] for q in queries[:5]])
    np.testing.assert_array_equal(alone, rows[:5])


def test_ivfpq_fits_its_parameters_to_a_small_gallery():
    params = index_class("ivfpq").resolve_params({}, 100, 8)
    assert params["nlist"] == 2 and params["nbits"] == 6 and params["m"] == 2
    assert params["nprobe"] == 2
    with pytest.raises(ValueError, match="does not divide"):
        index_class("ivfpq").resolve_params({"m": 3}, 1000, 8)
    with pytest.raises(ValueError, match="has no parameter efSearch"):
        index_class("hnsw").resolve_params({"efSearch": 3}, 1000, 8)


# ---------------------------------------------------------------------------- bundles


def indexed_bundle(root: Path, name: str, kind: str, params: dict | None = None,
                   n: int = GALLERY) -> Path:
    bundle = build_retrieval_bundle(root, name)
    write_gallery(bundle, {"images": (unit_vectors(n, E, 7), columns(n))},
                  {"images": (kind, params or {})})
    return bundle


def test_the_manifest_records_the_index_and_its_file(tmp_path: Path):
    bundle = indexed_bundle(tmp_path, "retrieval-hnsw", "hnsw", {"M": 8})
    manifest = load_bundle(bundle).manifest
    spec = manifest.inference["galleries"]["images"]["index"]
    assert spec == {"kind": "hnsw", "file": "gallery_images_index",
                    "params": {"M": 8, "ef_construction": 100, "ef_search": 128}}
    entry = manifest.files["gallery_images_index"]
    assert entry.file == "gallery_images.hnsw.faiss"
    assert entry.sha256 == file_sha256(bundle / entry.file)
    # indexing again exactly removes the index file and its entry
    write_gallery(bundle, {"images": (unit_vectors(5, E, 0), columns(5))})
    manifest = load_bundle(bundle).manifest
    assert "gallery_images_index" not in manifest.files
    assert not (bundle / "gallery_images.hnsw.faiss").exists()
    assert manifest.inference["galleries"]["images"]["index"]["kind"] == "exact"


def test_a_corrupted_index_file_is_refused_like_any_bundle_file(tmp_path: Path):
    bundle = indexed_bundle(tmp_path, "retrieval-ivfpq", "ivfpq")
    path = bundle / "gallery_images.ivfpq.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch") as err:
        load_bundle(bundle)
    assert err.value.file == "gallery_images.ivfpq.faiss"
    # a file that matches its recorded sha256 but is no index is refused at load too
    path.write_bytes(b"not a faiss index")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["gallery_images_index"]["sha256"] = file_sha256(path)
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match="not a readable FAISS index"):
        RetrievalModel.from_bundle(bundle)


def test_an_index_of_another_gallery_is_refused(tmp_path: Path):
    bundle = indexed_bundle(tmp_path, "retrieval-other", "hnsw")
    np.save(bundle / "gallery_images.npy", unit_vectors(GALLERY + 1, E, 0))
    np.save(bundle / "x.npy", np.zeros(1))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["gallery_images"]["sha256"] = file_sha256(bundle / "gallery_images.npy")
    manifest["files"]["gallery_images_entries"]["sha256"] = file_sha256(
        bundle / "gallery_images.json")
    (bundle / "gallery_images.json").write_text(json.dumps(columns(GALLERY + 1)))
    manifest["files"]["gallery_images_entries"]["sha256"] = file_sha256(
        bundle / "gallery_images.json")
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match=f"the index holds {GALLERY} vectors"):
        RetrievalModel.from_bundle(bundle)


def test_without_faiss_exact_galleries_serve_and_approximate_ones_say_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    exact = indexed_bundle(tmp_path, "retrieval-exact", "exact")
    hnsw = indexed_bundle(tmp_path, "retrieval-hnsw", "hnsw")
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    model = RetrievalModel.from_bundle(exact)
    assert isinstance(model.galleries["images"].index, ExactIndex)
    with pytest.raises(BundleError, match="need faiss-cpu"):
        RetrievalModel.from_bundle(hnsw)


def test_a_qdrant_gallery_has_no_file_and_a_collection_named_by_its_content(tmp_path: Path):
    bundle = indexed_bundle(tmp_path, "retrieval-qdrant", "qdrant", n=50)
    manifest = load_bundle(bundle).manifest
    assert manifest.inference["galleries"]["images"]["index"] == {
        "kind": "qdrant", "params": {"hnsw_m": 16, "ef_construct": 100, "hnsw_ef": 128}}
    assert "gallery_images_index" not in manifest.files
    index = RetrievalModel.from_bundle(bundle).galleries["images"].index
    sha = manifest.files["gallery_images"].sha256
    assert index.collection == f"glimpse-retrieval-qdrant-1-images-{sha[:12]}"
    assert index.embedded and index.client.count(index.collection).count == 50


def test_without_qdrant_client_a_qdrant_gallery_says_why(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    bundle = indexed_bundle(tmp_path, "retrieval-qdrant", "qdrant", n=20)
    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    with pytest.raises(BundleError, match=r"glimpse\[vectordb\]"):
        RetrievalModel.from_bundle(bundle)


def test_glimpse_index_rebuild_changes_the_index_only(tmp_path: Path, capsys):
    bundle = indexed_bundle(tmp_path, "retrieval-cli", "exact")
    before = np.load(bundle / "gallery_images.npy")
    assert glimpse(["index", str(bundle), "--rebuild", "--index", "ivfpq",
                    "--index-param", "nprobe=4", "--index-param", "refine=5"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{"):])
    assert printed["images"]["index"]["kind"] == "ivfpq"
    model = RetrievalModel.from_bundle(bundle)
    gallery = model.galleries["images"]
    assert gallery.index.kind == "ivfpq" and gallery.index.params["nprobe"] == 4
    assert gallery.index.params["refine"] == 5
    np.testing.assert_array_equal(np.asarray(gallery.embeddings), before)
    with pytest.raises(ValueError, match="expected KEY=INTEGER"):
        glimpse(["index", str(bundle), "--rebuild", "--index", "hnsw", "--index-param", "M"])


# ---------------------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("indexed_repository")
    for kind in KINDS:
        indexed_bundle(root, f"retrieval-{kind}", kind,
                       {"ef_search": 64} if kind == "hnsw" else None)
    app = create_app(Settings(model_repository=root, max_queue_delay_ms=5))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def search(api: TestClient, kind: str, **fields) -> list[dict]:
    r = api.post("/v1/retrieval/images", json={"text": "a red circle left of a blue square",
                                               "model": f"retrieval-{kind}", **fields})
    assert r.status_code == 200, r.text
    return r.json()["results"]


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq", "qdrant"])
def test_every_index_answers_the_ids_of_exact_search(api: TestClient, kind: str):
    for top_k in (1, 10, 100):
        exact = search(api, "exact", top_k=top_k)
        found = search(api, kind, top_k=top_k)
        assert [h["id"] for h in found] == [h["id"] for h in exact]
        assert [h["file"] for h in found] == [f"img{h['id'] - 1000}.png" for h in found]
        np.testing.assert_allclose([h["score"] for h in found], [h["score"] for h in exact],
                                   atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_a_page_is_the_slice_of_a_longer_answer(api: TestClient, kind: str):
    longer = search(api, kind, top_k=30)
    for offset, top_k in ((0, 10), (10, 10), (20, 10), (25, 5), (29, 1)):
        assert search(api, kind, top_k=top_k, offset=offset) == longer[offset:offset + top_k]
    assert search(api, kind, top_k=10, offset=GALLERY - 4) == search(
        api, kind, top_k=100, offset=GALLERY - 50)[46:]
    assert len(search(api, kind, top_k=10, offset=GALLERY)) == 0


def test_pages_batched_together_get_their_solo_answers(tmp_path: Path):
    bundle = indexed_bundle(tmp_path, "retrieval-batch", "hnsw")
    model = RetrievalModel.from_bundle(bundle)
    text = model.text_query("a red circle")
    queries = [Query(text=text, search="images", top_k=5, offset=o) for o in (0, 5, 95)]
    queries.append(Query(text=text, search="images", top_k=100))
    together = model.run_batch(queries)
    for query, result in zip(queries, together, strict=True):
        assert [h.index for h in result.hits] == [h.index for h in
                                                  model.run_batch([query])[0].hits]


@pytest.mark.parametrize(("fields", "message"), [
    ({"offset": -1}, "offset"),
    ({"offset": "second"}, "offset"),
    ({"offset": MAX_SEARCH_DEPTH - 99, "top_k": 10}, "offset"),
    ({"top_k": 101}, "top_k"),
])
def test_bad_paging_is_422(api: TestClient, fields: dict, message: str):
    r = api.post("/v1/retrieval/images", json={"text": "a red circle",
                                               "model": "retrieval-hnsw", **fields})
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_parameter"


def test_the_deepest_page_is_answered_and_a_deeper_one_refused(api: TestClient,
                                                                 tmp_path: Path):
    assert len(search(api, "exact", top_k=100, offset=MAX_SEARCH_DEPTH - 100)) == 0
    model = RetrievalModel.from_bundle(indexed_bundle(tmp_path, "retrieval-deep", "exact",
                                                      n=10))
    with pytest.raises(Exception, match="offset \\+ top_k must be at most 1000") as err:
        model.check_search("images", 10, MAX_SEARCH_DEPTH - 5)
    assert err.value.status == 422


def test_bad_paging_of_a_caption_search_is_422(api: TestClient):
    r = api.post("/v1/retrieval/captions", files={"file": ("x.png", sample_png(1), "image/png")},
                 data={"model": "retrieval-hnsw", "offset": "-3"})
    assert r.status_code == 422 and "offset" in r.json()["error"]["message"]
    r = api.post("/v1/retrieval/captions", json={"image": b64(sample_png(1)), "offset": 2,
                                                 "model": "retrieval-hnsw"})
    assert r.status_code == 409  # a valid page, but this bundle has no sentence gallery


def test_a_qdrant_server_that_does_not_answer_refuses_the_bundle_and_says_where(
        tmp_path: Path):
    indexed_bundle(tmp_path, "retrieval-exact", "exact", n=20)
    indexed_bundle(tmp_path, "retrieval-qdrant", "qdrant", n=20)
    settings = Settings(model_repository=tmp_path, qdrant_url="http://127.0.0.1:9")
    try:
        with TestClient(create_app(settings)) as client:
            ready = client.get("/v2/health/ready").json()
    finally:
        use_qdrant(None)
    assert ready["models"] == ["retrieval-exact/1"]
    assert len(ready["errors"]) == 1
    assert "retrieval-qdrant/1" in ready["errors"][0]
    assert "qdrant at http://127.0.0.1:9" in ready["errors"][0]
