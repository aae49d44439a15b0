"""Python clients of the glimpse HTTP API (httpx): `GlimpseClient` and `AsyncGlimpseClient`.

    with GlimpseClient("http://127.0.0.1:8000", api_key="...") as client:
        answer = client.caption("cat.png", beam_size=5, num_captions=3)
        best = answer["captions"][0]["text"]
        drawn = client.caption("cat.png", decoding="sample", temperature=0.7, seed=7)
        client.vqa("cat.png", "what colour is the circle?")["answers"][0]["answer"]
        png = client.generate_images("a small green star", n=1, seed=7)[0]
        client.video_activities("clip.mp4", top_k=3)["activities"][0]["label"]
        client.video_captions(frames=["f0.png", "f1.png", "f2.png"])["captions"][0]["text"]

Images and clips go up as multipart form data; each method's keyword arguments are the
endpoint's other fields (docs/service.md lists them).

Every non-2xx answer raises `GlimpseAPIError` carrying the status, the error type,
message and request id of the JSON error body, and the Retry-After delay if any.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

import httpx

ImageInput = bytes | str | Path


class CaptionOptions(TypedDict, total=False):
    """The fields of POST /v1/captions besides the image (docs/service.md, "Captions")."""

    model: str
    decoding: Literal["beam", "sample"]
    max_length: int
    num_captions: int
    return_attention: bool
    # beam search
    beam_size: int
    length_penalty: float
    # sampling: the same image and seed give the same captions
    temperature: float
    top_k: int
    top_p: float
    seed: int


class GlimpseAPIError(Exception):
    def __init__(self, status: int, body: Any, retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.type: str = error.get("type", "http_error")
        self.message: str = error.get("message", str(body))
        self.request_id: str | None = error.get("request_id")
        self.retry_after = retry_after
        super().__init__(f"{status} {self.type}: {self.message} (request {self.request_id})")


def _image_bytes(image: ImageInput) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _form_fields(params: dict[str, Any]) -> dict[str, str]:
    """Parameters as multipart form fields (booleans as true/false, None left out)."""
    fields = {}
    for key, value in params.items():
        if value is None:
            continue
        fields[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return fields


def _image_post(path: str, image: ImageInput, params: dict[str, Any]) -> dict[str, Any]:
    """Arguments of an httpx POST sending `image` as multipart `file` plus form fields."""
    files = {"file": ("image", _image_bytes(image), "application/octet-stream")}
    return {"url": path, "files": files, "data": _form_fields(params)}


def _video_post(path: str, clip: ImageInput | None, frames: Sequence[ImageInput] | None,
                params: dict[str, Any]) -> dict[str, Any]:
    """Arguments of an httpx POST sending a clip file as `file`, or its frames as repeated
    `frames` parts, plus form fields."""
    if (clip is None) == (frames is None):
        raise ValueError("send a clip file or its frames (frames=[...]), not both")
    if clip is not None:
        files = [("file", ("clip", _image_bytes(clip), "application/octet-stream"))]
    else:
        files = [("frames", (f"frame{i}", _image_bytes(f), "application/octet-stream"))
                 for i, f in enumerate(frames or [])]
    return {"url": path, "files": files, "data": _form_fields(params)}


def _json_post(path: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"url": path, "json": {k: v for k, v in body.items() if v is not None}}


def _pngs(answer: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(item["b64_json"]) for item in answer["data"]]


class _Requests:
    """The request of each endpoint, shared by the synchronous and asynchronous clients."""

    @staticmethod
    def caption(image: ImageInput, params: CaptionOptions) -> dict[str, Any]:
        return _image_post("/v1/captions", image, dict(params))

    @staticmethod
    def vqa(image: ImageInput, question: str, params: dict[str, Any]) -> dict[str, Any]:
        return _image_post("/v1/vqa", image, {"question": question, **params})

    @staticmethod
    def align(image: ImageInput, sentence: str, params: dict[str, Any]) -> dict[str, Any]:
        return _image_post("/v1/alignments", image, {"sentence": sentence, **params})

    @staticmethod
    def embed(text: str | None, image: ImageInput | None, model: str | None) -> dict[str, Any]:
        if (text is None) == (image is None):
            raise ValueError("embed takes exactly one of text= and image=")
        if image is not None:
            return _image_post("/v1/embeddings", image, {"model": model})
        return _json_post("/v1/embeddings", {"text": text, "model": model})

    @staticmethod
    def search_images(text: str, top_k: int, model: str | None) -> dict[str, Any]:
        return _json_post("/v1/retrieval/images", {"text": text, "top_k": top_k, "model": model})

    @staticmethod
    def search_captions(image: ImageInput, top_k: int, model: str | None) -> dict[str, Any]:
        return _image_post("/v1/retrieval/captions", image, {"top_k": top_k, "model": model})

    @staticmethod
    def video_activities(clip: ImageInput | None, frames: Sequence[ImageInput] | None,
                         params: dict[str, Any]) -> dict[str, Any]:
        return _video_post("/v1/videos/activities", clip, frames, params)

    @staticmethod
    def video_captions(clip: ImageInput | None, frames: Sequence[ImageInput] | None,
                       params: dict[str, Any]) -> dict[str, Any]:
        return _video_post("/v1/videos/captions", clip, frames, params)

    @staticmethod
    def generate(prompt: str, n: int, seed: int | None, model: str | None) -> dict[str, Any]:
        return _json_post("/v1/images/generations", {"prompt": prompt, "n": n, "seed": seed,
                                                     "model": model,
                                                     "response_format": "b64_json"})


def _checked(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.is_success:
        return body
    retry_after = response.headers.get("retry-after")
    raise GlimpseAPIError(response.status_code, body,
                          float(retry_after) if retry_after else None)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _ready(response: httpx.Response) -> dict[str, Any]:
    """/v2/health/ready's body; 503 is an answer here, not an error."""
    if response.status_code not in (200, 503):
        _checked(response)
    return response.json()


class GlimpseClient:
    """Synchronous client; use as a context manager or call close()."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout,
                                 transport=transport)

    def caption(self, image: ImageInput, **params: Unpack[CaptionOptions]) -> dict[str, Any]:
        """POST /v1/captions; params: model, decoding ("beam" or "sample"), max_length,
        num_captions, return_attention; beam_size and length_penalty for beam search;
        temperature, top_k, top_p and seed for sampling."""
        return _checked(self.http.post(**_Requests.caption(image, params)))

    def vqa(self, image: ImageInput, question: str, **params: Any) -> dict[str, Any]:
        """POST /v1/vqa; params: model, top_k, return_attention."""
        return _checked(self.http.post(**_Requests.vqa(image, question, params)))

    def align(self, image: ImageInput, sentence: str, **params: Any) -> dict[str, Any]:
        """POST /v1/alignments; params: model, beta."""
        return _checked(self.http.post(**_Requests.align(image, sentence, params)))

    def embed(self, *, text: str | None = None, image: ImageInput | None = None,
              model: str | None = None) -> dict[str, Any]:
        """POST /v1/embeddings of a sentence or an image."""
        return _checked(self.http.post(**_Requests.embed(text, image, model)))

    def search_images(self, text: str, top_k: int = 5,
                      model: str | None = None) -> dict[str, Any]:
        """POST /v1/retrieval/images: the gallery images that best match `text`."""
        return _checked(self.http.post(**_Requests.search_images(text, top_k, model)))

    def search_captions(self, image: ImageInput, top_k: int = 5,
                        model: str | None = None) -> dict[str, Any]:
        """POST /v1/retrieval/captions: the gallery sentences that best describe `image`."""
        return _checked(self.http.post(**_Requests.search_captions(image, top_k, model)))

    def generate_images(self, prompt: str, n: int = 1, seed: int | None = None,
                        model: str | None = None) -> list[bytes]:
        """POST /v1/images/generations; the PNG files, in order."""
        return _pngs(_checked(self.http.post(**_Requests.generate(prompt, n, seed, model))))

    def video_activities(self, clip: ImageInput | None = None, *,
                         frames: Sequence[ImageInput] | None = None,
                         **params: Any) -> dict[str, Any]:
        """POST /v1/videos/activities of a clip file (GIF, APNG, WebP, MP4, WebM) or of its
        frames; params: model, top_k, per_frame."""
        return _checked(self.http.post(**_Requests.video_activities(clip, frames, params)))

    def video_captions(self, clip: ImageInput | None = None, *,
                       frames: Sequence[ImageInput] | None = None,
                       **params: Any) -> dict[str, Any]:
        """POST /v1/videos/captions of a clip file or of its frames; params: model,
        beam_size, max_length, length_penalty, num_captions."""
        return _checked(self.http.post(**_Requests.video_captions(clip, frames, params)))

    def models(self) -> list[dict[str, Any]]:
        return _checked(self.http.get("/v1/models"))["models"]

    def health(self) -> dict[str, Any]:
        """Readiness: {"ready", "status", "models", "errors"}."""
        return _ready(self.http.get("/v2/health/ready"))

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.1) -> dict[str, Any]:
        """Poll readiness until ready (or raise TimeoutError), tolerating a closed port."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = self.health()
                if health["ready"]:
                    return health
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.http.base_url} not ready within {timeout} s")
            time.sleep(interval)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GlimpseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGlimpseClient:
    """Asynchronous client with the same methods as GlimpseClient."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 100) -> None:
        limits = httpx.Limits(max_connections=max_connections)
        self.http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key),
                                      timeout=timeout, transport=transport, limits=limits)

    async def caption(self, image: ImageInput,
                      **params: Unpack[CaptionOptions]) -> dict[str, Any]:
        return _checked(await self.http.post(**_Requests.caption(image, params)))

    async def vqa(self, image: ImageInput, question: str, **params: Any) -> dict[str, Any]:
        return _checked(await self.http.post(**_Requests.vqa(image, question, params)))

    async def align(self, image: ImageInput, sentence: str, **params: Any) -> dict[str, Any]:
        return _checked(await self.http.post(**_Requests.align(image, sentence, params)))

    async def embed(self, *, text: str | None = None, image: ImageInput | None = None,
                    model: str | None = None) -> dict[str, Any]:
        return _checked(await self.http.post(**_Requests.embed(text, image, model)))

    async def search_images(self, text: str, top_k: int = 5,
                            model: str | None = None) -> dict[str, Any]:
        return _checked(await self.http.post(**_Requests.search_images(text, top_k, model)))

    async def search_captions(self, image: ImageInput, top_k: int = 5,
                              model: str | None = None) -> dict[str, Any]:
        return _checked(await self.http.post(**_Requests.search_captions(image, top_k, model)))

    async def generate_images(self, prompt: str, n: int = 1, seed: int | None = None,
                              model: str | None = None) -> list[bytes]:
        answer = _checked(await self.http.post(**_Requests.generate(prompt, n, seed, model)))
        return _pngs(answer)

    async def video_activities(self, clip: ImageInput | None = None, *,
                               frames: Sequence[ImageInput] | None = None,
                               **params: Any) -> dict[str, Any]:
        request = _Requests.video_activities(clip, frames, params)
        return _checked(await self.http.post(**request))

    async def video_captions(self, clip: ImageInput | None = None, *,
                             frames: Sequence[ImageInput] | None = None,
                             **params: Any) -> dict[str, Any]:
        return _checked(await self.http.post(**_Requests.video_captions(clip, frames, params)))

    async def models(self) -> list[dict[str, Any]]:
        return _checked(await self.http.get("/v1/models"))["models"]

    async def health(self) -> dict[str, Any]:
        return _ready(await self.http.get("/v2/health/ready"))

    async def wait_ready(self, timeout: float = 30.0, interval: float = 0.1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = await self.health()
                if health["ready"]:
                    return health
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.http.base_url} not ready within {timeout} s")
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncGlimpseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
