"""Schemathesis hooks for fuzzing the committed repository (tests/e2e/test_openapi_fuzz.py).

The OpenAPI document says everything JSON Schema can say (types, ranges, patterns,
required and forbidden fields, the served model names). What it cannot say are rules
of the models themselves, which the server answers 415 or 422 with the rule named:
- an image must decode as an image (JSON Schema cannot check that base64 text is a PNG;
  Schemathesis draws real images for multipart files itself), and a clip as a clip
  (for JSON bodies these hooks send short animated PNGs, or real images as its frames);
- words must be in the model's vocabulary (a question, a sentence, a prompt);
- captions: num_captions <= beam_size, return_attention only with an attention model
  (the parameters of one decoding method only: the document says so with oneOf).
For schema-valid (positive) bodies these hooks keep the values JSON Schema chose and
bring those rules in: a real image, a sentence the model knows, a coherent decoding.
Schema-violating (negative) bodies are left as generated: each must still be refused.

One kind of case is dropped: negative multipart bodies of the coverage phase. Seen
with Schemathesis 4.32: their violation does not survive serialization as a form
(the form that goes out is valid, e.g. `beta=1.0`, `return_attention=true`), and the
check then reports a valid request that was accepted. The fuzzing phase still sends
negative forms, except those whose violation is a list of at most one item (no part, or
one valid-looking part, once sent), and the coverage phase negative JSON bodies.
"""

from __future__ import annotations

import base64
import io
import random
import re
from typing import Any

import numpy as np
import schemathesis
from PIL import Image
from schemathesis.generation.meta import CoveragePhaseData

from service.decoding import MAX_BEAM_SIZE
from service.pipelines.dalle import MAX_CANDIDATES, MAX_ROWS_PER_REQUEST
from service.pipelines.dalle import MAX_TEMPERATURE as DALLE_MAX_TEMPERATURE

rng = random.Random(0)

QUESTIONS = ["what color is the circle?", "how many circles are there?",
             "is there a red square?", "what shape is the blue object?"]
SENTENCES = ["a red circle", "a small green star above a red circle", "a large blue square"]
PROMPTS = ["a red circle", "a large blue square", "a large yellow triangle"]
# the examples of the OpenAPI document, which the coverage phase sends as they are
EXAMPLES = {"what color is the circle?", "a red circle left of a blue square",
            "a small green star above a red circle", "a large red circle"}
BASE64 = re.compile(r"(data:[^,]*,)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
TEXT_FIELDS = {"/v1/vqa": ("question", QUESTIONS), "/v1/alignments": ("sentence", SENTENCES),
               "/v1/embeddings": ("text", SENTENCES),
               "/v1/retrieval/images": ("text", SENTENCES),
               "/v1/images/generations": ("prompt", PROMPTS)}
# None: the default, caption-updown; a name without its version is the served one
ATTENTION_CAPTIONERS = {None, "caption-sat", "caption-updown"}
# Generators that draw no tokens refuse DALL-E's sampling fields (None: the default,
# gan-int-cls).
GANS = {None, "gan-int-cls", "stackgan"}


def integral(v: Any) -> bool:
    """A JSON Schema integer: 15 and 15.0 alike."""
    return isinstance(v, int | float) and float(v).is_integer()


SAMPLING_VALID = {  # each sampling field's schema-valid values (bools are excluded first)
    "candidates": lambda v: integral(v) and 1 <= v <= MAX_CANDIDATES,
    "temperature": lambda v: isinstance(v, int | float) and 0 < v <= DALLE_MAX_TEMPERATURE,
    "top_k": lambda v: integral(v) and v >= 0,
    "top_p": lambda v: isinstance(v, int | float) and 0 < v <= 1,
}


def picture(seed: int) -> bytes:
    """A small image with a few coloured squares, PNG or JPEG, of a random size."""
    r = np.random.default_rng(seed)
    side = int(r.integers(8, 96))
    pixels = np.full((side, side, 3), r.integers(0, 256, 3), dtype=np.uint8)
    for _ in range(3):
        x, y = r.integers(0, side, 2)
        pixels[y:y + side // 4, x:x + side // 4] = r.integers(0, 256, 3)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG" if seed % 3 else "JPEG")
    return out.getvalue()


PICTURES = [picture(seed) for seed in range(12)]


def clip(seed: int) -> bytes:
    """A short animated PNG: a square crossing a plain background, 4 to 12 frames."""
    r = np.random.default_rng(seed)
    side, n = int(r.integers(16, 80)), int(r.integers(4, 13))
    background, colour = r.integers(0, 256, 3), r.integers(0, 256, 3)
    frames = []
    for t in range(n):
        pixels = np.full((side, side, 3), background, dtype=np.uint8)
        x = t * (side // 2) // n
        pixels[side // 3:side // 3 + side // 4, x:x + side // 4] = colour
        frames.append(Image.fromarray(pixels))
    out = io.BytesIO()
    frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


CLIPS = [clip(seed) for seed in range(6)]
VIDEO_PATHS = {"/v1/videos/activities", "/v1/videos/captions"}
MAX_SENT_FRAMES = 16  # frames of a positive `frames` body (the server's limit is far above)


def with_video_rules(body: dict[str, Any]) -> None:
    """A real clip for `video`, real images for `frames`."""
    video = body.get("video")
    if isinstance(video, str) and len(video) >= 4 and BASE64.fullmatch(video):
        body["video"] = base64.b64encode(rng.choice(CLIPS)).decode()
    frames = body.get("frames")
    if isinstance(frames, list) and frames and all(
            isinstance(f, str) and len(f) >= 4 and BASE64.fullmatch(f) for f in frames):
        body["frames"] = [base64.b64encode(rng.choice(PICTURES)).decode()
                          for _ in range(min(len(frames), MAX_SENT_FRAMES))]


def beam_width(v: Any) -> bool:
    """A schema-valid beam_size (or num_captions that could be one)."""
    return not isinstance(v, bool) and integral(v) and 1 <= v <= MAX_BEAM_SIZE


def coherent_captioning(body: dict[str, Any]) -> None:
    """num_captions <= beam_size, by raising a schema-valid beam_size to a schema-valid
    num_captions; a violating value of either is left as it is (the body stays negative)."""
    count = body.get("num_captions")
    if body.get("decoding", "beam") == "beam" and beam_width(count):
        beam = body.get("beam_size")  # None: the committed captioners' default, 3 (or more)
        beam = 3 if beam is None else beam
        if beam_width(beam) and count > beam:
            body["beam_size"] = count
    model = body.get("model")
    if body.get("return_attention") is True and isinstance(model, str | None) \
            and (model if model is None else model.split("/")[0]) not in ATTENTION_CAPTIONERS:
        body["return_attention"] = False


def coherent_generation(body: dict[str, Any]) -> None:
    """A GAN gets no sampling fields; DALL-E at most MAX_ROWS_PER_REQUEST samples (n times
    candidates). Only schema-valid values are changed, into other schema-valid ones."""
    model = body.get("model")
    if not isinstance(model, str | None):
        return
    name = model if model is None else model.split("/")[0]
    valid = {k for k, ok in SAMPLING_VALID.items()
             if k in body and body[k] is not None and not isinstance(body[k], bool)
             and ok(body[k])}
    if name in GANS:
        for key in valid:
            body[key] = None
        return
    n = body.get("n", 1)
    if "candidates" in valid and not isinstance(n, bool) and integral(n) and 1 <= n <= 16 \
            and n * body["candidates"] > MAX_ROWS_PER_REQUEST:
        body["candidates"] = max(1, MAX_ROWS_PER_REQUEST // int(n))


def with_model_rules(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """`body` with the models' rules brought in, changing only values that are already
    schema-valid into other schema-valid ones: a negative body stays negative."""
    body = dict(body)
    image = body.get("image")
    if isinstance(image, str) and len(image) >= 4 and BASE64.fullmatch(image):
        body["image"] = base64.b64encode(rng.choice(PICTURES)).decode()
    field, choices = TEXT_FIELDS.get(path, (None, []))
    text = body.get(field)
    if isinstance(text, str) and re.search("[A-Za-z0-9]", text) \
            and len(text) <= (64 if field == "prompt" else 1000):
        body[field] = rng.choice(choices)
    if path in VIDEO_PATHS:
        with_video_rules(body)
    if path in ("/v1/captions", "/v1/videos/captions"):
        coherent_captioning(body)
    if path == "/v1/images/generations":
        coherent_generation(body)
    return body


def is_multipart(case: Any) -> bool:
    return (case.media_type or "").startswith("multipart/")


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """Fuzzing: JSON bodies as they are drawn. A multipart body (it holds the file's
    bytes) is left alone: Schemathesis judges an edited one schema-violating."""
    if not isinstance(body, dict) or "file" in body:
        return body
    return with_model_rules(context.operation.path, body)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """The examples and coverage phases' JSON bodies. Multipart bodies are left alone:
    Schemathesis judges an edited body that holds a file's bytes schema-violating."""
    meta = case.meta
    if isinstance(case.body, dict) and meta is not None and not is_multipart(case) \
            and not meta.generation.mode.is_negative:
        case.body = with_model_rules(case.operation.path, case.body)
    return case


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """Drop the coverage phase's negative multipart bodies, which cannot be judged as sent
    (see the module docstring), and positive multipart bodies that break a model's rule
    (they cannot be edited, see map_case): positive forms that reach the server are the
    ones that happen to follow the rules (the document's examples, mostly)."""
    meta = case.meta
    body = case.body if isinstance(case.body, dict) else {}
    form = "file" in body or (is_multipart(case) and "frames" in body)
    if case.operation.path in VIDEO_PATHS and form:
        if meta is not None and meta.generation.mode.is_negative:
            # a clip form's violation (a list or an object where a field is text) need not
            # survive serialization as a form either; negative JSON bodies are still sent
            return False
        # a clip form that may be sent as positive: only one the server can read
        return with_model_rules_hold(case.operation.path, body)
    if meta is None or not is_multipart(case):
        return True
    coverage = isinstance(meta.phase.data, CoveragePhaseData)
    if meta.generation.mode.is_negative:
        return not coverage and not lost_in_a_form(body)
    body = case.body if isinstance(case.body, dict) else {}
    return with_model_rules_hold(case.operation.path, body)


def lost_in_a_form(body: dict[str, Any]) -> bool:
    """Whether a negative form's violation may vanish when it is sent: a list goes out as one
    part per item, so an empty list is no part at all and a one-item list a single valid-
    looking field (lists of two or more are repeated fields, which the server refuses)."""
    return any(isinstance(value, list) and len(value) <= 1
               for key, value in body.items() if key not in ("file", "frames"))


def is_image(data: Any) -> bool:
    try:
        Image.open(io.BytesIO(data)).load()
    except Exception:
        return False
    return True


def with_model_rules_hold(path: str, body: dict[str, Any]) -> bool:
    if path in VIDEO_PATHS:
        frames = body.get("frames")
        frames = [] if frames is None else frames if isinstance(frames, list) else [frames]
        if ("file" in body) == bool(frames):
            return False
        if "file" in body and not is_image(body["file"]):  # a still image is a clip
            return False
        if frames and not all(is_image(f) for f in frames):
            return False
    elif "file" in body and not is_image(body["file"]):
        return False
    field, choices = TEXT_FIELDS.get(path, (None, []))
    if field in body and body[field] not in choices and body[field] not in EXAMPLES:
        return False
    if path in ("/v1/captions", "/v1/videos/captions"):
        fixed = dict(body)
        coherent_captioning(fixed)
        return fixed == body
    return True
