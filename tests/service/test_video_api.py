"""POST /v1/videos/activities and /v1/videos/captions in process, on tiny random-weight
bundles exported by the real exporters (tiny_video.py)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from in_process import TestClientTransport
from tiny_bundle import build_caption_bundle
from tiny_video import (
    CLASSES,
    FRAMES,
    SIZE,
    build_activity_bundle,
    build_video_caption_bundle,
    clip_frames,
    encode_animation,
    encode_video,
    png,
)

from service.app import create_app
from service.client import GlimpseAPIError, GlimpseClient
from service.pipelines.activity import ActivityModel
from service.pipelines.video_caption import VideoCaptionModel
from service.settings import Settings
from service.videos import sample_indices

APNG = encode_animation(clip_frames(1), "PNG")


@pytest.fixture(scope="module")
def video_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("video_repository")
    build_activity_bundle(root, "activity-tiny", 1, seed=0)
    build_activity_bundle(root, "activity-tiny", 2, seed=1)
    build_video_caption_bundle(root, "video-caption-tiny", 1)
    build_video_caption_bundle(root, "video-caption-mean", 1, arch="mean-pool", seed=2)
    build_video_caption_bundle(root, "video-caption-fed", 1, feed_encoding=True, seed=3)
    build_caption_bundle(root, "caption-tiny", 1, seed=0)
    return root


def make_app(repository: Path, **settings: object) -> TestClient:
    app = create_app(Settings(**{"model_repository": repository, "max_queue_delay_ms": 0,
                                 **settings}))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def video_api(video_repository: Path) -> Iterator[TestClient]:
    with make_app(video_repository) as client:
        yield client


def activities(client: TestClient, data: bytes = APNG, **fields: object):
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post("/v1/videos/activities", files={"file": ("clip", data, "video/mp4")},
                       data=form)


def descriptions(client: TestClient, data: bytes = APNG, **fields: object):
    return client.post("/v1/videos/captions", files={"file": ("clip", data, "image/png")},
                       data={k: str(v) for k, v in fields.items()})


# ---------------------------------------------------------------------------- activities


def test_activities_of_an_apng_are_the_offline_pipelines(video_api, video_repository):
    r = activities(video_api, top_k=3, model="activity-tiny/1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "activity-tiny/1"
    assert (body["num_frames"], body["sampled_frames"]) == (7, FRAMES)
    assert "per_frame" not in body
    offline = ActivityModel.from_bundle(video_repository / "activity-tiny" / "1")
    want = offline.classify(APNG, top_k=3)
    assert [a["label"] for a in body["activities"]] == [a.label for a in want.activities]
    np.testing.assert_allclose([a["score"] for a in body["activities"]],
                               [a.score for a in want.activities], rtol=1e-5)
    scores = [a["score"] for a in body["activities"]]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6
    assert np.isclose(want.probs.sum(), 1.0, atol=1e-5)
    # The fused distribution is the weighted sum of the streams' (0.6 RGB, 0.4 motion).
    np.testing.assert_allclose(want.probs, 0.6 * want.stream_probs["rgb"]
                               + 0.4 * want.stream_probs["motion"], rtol=1e-5)


@pytest.mark.parametrize("container", ["GIF", "WEBP", "mp4", "webm"])
def test_every_clip_format_is_read(video_api, container):
    images = clip_frames(2)
    data = (encode_video(images, container) if container in ("mp4", "webm")
            else encode_animation(images, container))
    r = activities(video_api, data, model="activity-tiny")
    assert r.status_code == 200, r.text
    assert r.json()["num_frames"] == 7 and r.json()["model"] == "activity-tiny/2"


def test_lossless_formats_and_frames_give_the_same_answer(video_api):
    images = clip_frames(3)
    answers = [activities(video_api, encode_animation(images, fmt), top_k=4).json()
               for fmt in ("PNG", "WEBP")]
    as_frames = video_api.post("/v1/videos/activities", data={"top_k": "4"},
                               files=[("frames", (f"{i}.png", png(im), "image/png"))
                                      for i, im in enumerate(images)]).json()
    as_json = video_api.post("/v1/videos/activities", json={
        "frames": [base64.b64encode(png(im)).decode() for im in images], "top_k": 4}).json()
    as_video = video_api.post("/v1/videos/activities", json={
        "video": base64.b64encode(encode_animation(images, "PNG")).decode(),
        "top_k": 4}).json()
    for other in (answers[1], as_frames, as_json, as_video):
        assert other["activities"] == answers[0]["activities"]


def test_per_frame_scores_cover_every_sampled_frame(video_api):
    body = activities(video_api, per_frame=True, top_k=2).json()
    frames = body["per_frame"]
    assert [f["frame"] for f in frames] == list(range(FRAMES))
    for f in frames:
        assert len(f["activities"]) == 2 and {a["label"] for a in f["activities"]} <= set(CLASSES)


def test_frames_are_sampled_evenly_over_the_clip():
    assert sample_indices(7, 5).tolist() == [0, 2, 3, 4, 6]
    assert sample_indices(16, 16).tolist() == list(range(16))
    assert sample_indices(2, 5).tolist() == [0, 0, 0, 1, 1]  # a short clip repeats frames


def test_a_still_image_is_a_clip_of_one_frame_held(video_api):
    """The document cannot say how many frames a file holds, so any decodable one is a
    clip: a still image is its one frame, sampled to the model's frames."""
    r = activities(video_api, png(clip_frames(0)[0]))
    assert r.status_code == 200, r.text
    assert (r.json()["num_frames"], r.json()["sampled_frames"]) == (1, FRAMES)


@pytest.mark.parametrize("case, status, error_type", [
    ("not a clip", 415, "unsupported_media_type"),
    ("text body", 415, "unsupported_media_type"),
    ("file and frames", 422, "invalid_parameter"),
    ("no clip", 422, "invalid_parameter"),
    ("top_k", 422, "invalid_parameter"),
    ("unknown model", 404, "model_not_found"),
    ("caption model", 422, "invalid_parameter"),
    ("bad base64", 400, "bad_request"),
])
def test_activity_errors(video_api, case, status, error_type):
    single = png(clip_frames(0)[0])
    if case == "not a clip":
        r = activities(video_api, b"\x00\x01 certainly not a video" * 10)
    elif case == "text body":
        r = video_api.post("/v1/videos/activities", content=b"hello",
                           headers={"content-type": "text/plain"})
    elif case == "file and frames":
        r = video_api.post("/v1/videos/activities", files=[
            ("file", ("c", APNG, "image/png")), ("frames", ("f", single, "image/png"))])
    elif case == "no clip":
        r = video_api.post("/v1/videos/activities", json={"top_k": 2})
    elif case == "top_k":
        r = activities(video_api, top_k=len(CLASSES) + 1)
    elif case == "unknown model":
        r = activities(video_api, model="activity-nope")
    elif case == "caption model":
        r = activities(video_api, model="caption-tiny")
    else:
        r = video_api.post("/v1/videos/activities", json={"video": "not base64!"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == error_type


@pytest.mark.parametrize("limit, data, message", [
    ({"max_video_frames": 6}, APNG, "7 frames; the limit is 6"),
    ({"max_video_frames": 6}, "webm", "more than 6 frames"),
    ({"max_video_frames": 6}, "frames", "7 frames sent"),
    ({"max_video_seconds": 0.5}, APNG, "lasts"),
    ({"max_video_seconds": 0.5}, "mp4", "lasts"),
    ({"max_image_pixels": 100}, APNG, "pixels"),
    ({"max_image_pixels": 100}, "webm", "pixels"),
])
def test_clips_past_the_limits_are_413(video_repository, limit, data, message):
    images = clip_frames(4)
    with make_app(video_repository, **limit) as client:
        if data == "frames":
            r = client.post("/v1/videos/activities",
                            files=[("frames", (f"{i}.png", png(im), "image/png"))
                                   for i, im in enumerate(images)])
        else:
            r = activities(client, encode_video(images, data) if data in ("mp4", "webm")
                           else data)
    assert r.status_code == 413, r.text
    assert message in r.json()["error"]["message"]


def test_concurrent_requests_batch_and_each_gets_its_solo_answer(video_repository):
    clips = [encode_animation(clip_frames(seed), "PNG") for seed in range(6)]
    with make_app(video_repository) as solo:
        want = [activities(solo, c, per_frame=True).json() for c in clips]
    with make_app(video_repository, max_queue_delay_ms=200, max_batch_size=6) as client:
        got: list = [None] * len(clips)

        def send(i: int) -> None:
            got[i] = activities(client, clips[i], per_frame=True).json()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clips))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sizes = client.get("/metrics").text
    for g, w in zip(got, want, strict=True):
        assert [a["label"] for a in g["activities"]] == [a["label"] for a in w["activities"]]
        np.testing.assert_allclose([a["score"] for a in g["activities"]],
                                   [a["score"] for a in w["activities"]], atol=1e-6)
    assert "batch_size" in sizes


# ---------------------------------------------------------------------------- captions


@pytest.mark.parametrize("name", ["video-caption-tiny", "video-caption-mean",
                                  "video-caption-fed"])
def test_descriptions_are_the_offline_pipelines(video_api, video_repository, name):
    r = descriptions(video_api, model=name, beam_size=3, num_captions=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == f"{name}/1" and body["sampled_frames"] == FRAMES
    offline = VideoCaptionModel.from_bundle(video_repository / name / "1")
    want = offline.describe(APNG, beam_size=3, num_captions=2)
    assert [c["text"] for c in body["captions"]] == [c.text for c in want.captions]
    np.testing.assert_allclose([c["log_prob"] for c in body["captions"]],
                               [c.log_prob for c in want.captions], rtol=1e-5)
    assert len(body["captions"]) == 2
    assert body["captions"][0]["log_prob"] >= body["captions"][1]["log_prob"]


@pytest.mark.parametrize("fields, message", [
    ({"beam_size": 30}, "beam_size"), ({"num_captions": 4, "beam_size": 2}, "num_captions"),
    ({"max_length": 0}, "max_length"), ({"length_penalty": -1}, "length_penalty"),
    ({"model": "activity-tiny"}, "activity model"),
])
def test_description_parameter_errors_are_422(video_api, fields, message):
    r = descriptions(video_api, **fields)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]["message"]


def test_models_list_the_video_bundles_with_their_defaults(video_api):
    models = {m["id"]: m for m in video_api.get("/v1/models").json()["models"]}
    assert models["activity-tiny/1"]["task"] == "activity"
    assert models["activity-tiny/1"]["architecture"] == "lrcn+single-frame-fusion"
    assert models["activity-tiny/1"]["defaults"]["classes"] == CLASSES
    assert models["video-caption-tiny/1"]["defaults"]["beam_size"] == 5
    assert models["video-caption-mean/1"]["architecture"] == "mean-pool"


def test_openapi_documents_the_video_endpoints(video_api):
    spec = video_api.get("/openapi.json").json()
    for path in ("/v1/videos/activities", "/v1/videos/captions"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]
        form = body["multipart/form-data"]["schema"]["properties"]
        assert form["file"]["format"] == "binary" and form["frames"]["type"] == "array"
        assert body["application/json"]["schema"]["examples"][0]["video"]
        assert {"413", "415", "422"} <= set(spec["paths"][path]["post"]["responses"])


def test_openapi_leaves_out_the_video_endpoints_when_no_video_model_is_served(tmp_path):
    build_caption_bundle(tmp_path, "caption-tiny", 1, seed=0)
    with make_app(tmp_path) as client:
        paths = client.get("/openapi.json").json()["paths"]
        assert "/v1/captions" in paths
        assert not [path for path in paths if path.startswith("/v1/videos/")]
        assert activities(client).status_code == 404  # and the endpoint says why


def test_client_methods(video_repository):
    with make_app(video_repository) as app:
        glimpse = GlimpseClient("http://testserver", transport=TestClientTransport(app))
        answer = glimpse.video_activities(APNG, top_k=2, per_frame=True)
        assert len(answer["activities"]) == 2 and len(answer["per_frame"]) == FRAMES
        frames = [png(im) for im in clip_frames(1)]
        assert glimpse.video_activities(frames=frames, top_k=2)["activities"] == \
            answer["activities"]
        described = glimpse.video_captions(APNG, model="video-caption-tiny", beam_size=2)
        assert described["captions"][0]["text"] == \
            glimpse.video_captions(frames=frames, beam_size=2,
                                   model="video-caption-tiny")["captions"][0]["text"]
        with pytest.raises(GlimpseAPIError) as err:
            glimpse.video_activities(b"nonsense")
        assert err.value.status == 415
        with pytest.raises(ValueError, match="not both"):
            glimpse.video_captions(APNG, frames=frames)


def test_a_clip_is_resized_to_the_models_frames(video_repository):
    model = ActivityModel.from_bundle(video_repository / "activity-tiny" / "1")
    request = model.request(np.zeros((9, SIZE, SIZE, 3), np.uint8), top_k=2)
    assert request.frames.shape == (FRAMES, 3, SIZE, SIZE)
