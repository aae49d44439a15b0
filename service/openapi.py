"""The OpenAPI document of the running service, as /docs, /redoc and clients read it.

FastAPI builds the document from the routes and schemas (service/schemas.py); what only
the running service knows is added here, so that the document describes exactly what
this server accepts:
- `model` of each inference endpoint is an enum of the served models of its task
  ("name" and "name/version"), a prompt's `maxLength` is the shortest
  max_prompt_length among the served generators, image sampling settings are declared
  only when a served generator takes them, and caption sampling's `top_k` is at most
  the candidates every served captioner's step graph returns;
- with GLIMPSE_API_KEYS set, the two ways to present a key are declared as security
  schemes and required by every /v1 operation (health, metrics and docs stay open).
The document is cached once the models are loaded; before that it is rebuilt per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.pipelines.generation import SamplingOptions, TextToImage
from service.routers import INFERENCE_TASKS
from service.state import ServiceState

SAMPLING_FIELDS = tuple(SamplingOptions.__dataclass_fields__)

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "Authorization: Bearer KEY, a key of GLIMPSE_API_KEYS"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "X-API-Key: KEY, a key of GLIMPSE_API_KEYS"},
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """`app.openapi`: FastAPI's document with what the served models add."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    state: ServiceState = app.state.service
    document = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)
    if state.settings.api_keys:
        require_keys(document)
    if state.models:
        describe_served_models(document, state)
    if state.phase == "ready":
        app.openapi_schema = document
    return document


def require_keys(document: dict[str, Any]) -> None:
    document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in document["paths"].items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]


def describe_served_models(document: dict[str, Any], state: ServiceState) -> None:
    """Each inference endpoint lists the served models of its task; an endpoint whose
    task no served model has (a repository without video models) is left out, as every
    request to it would be refused."""
    for path, task in INFERENCE_TASKS.items():
        served = [m for m in state.models.values() if m.task == task]
        if not served:
            document["paths"].pop(path, None)
            continue
        names = sorted({m.bundle.manifest.name for m in served}) + sorted(m.key for m in served)
        body = document["paths"][path]["post"].get("requestBody", {})
        for media in body.get("content", {}).values():
            for schema in object_schemas(media.get("schema", {}), document):
                properties = schema.get("properties", {})
                if "model" in properties:
                    restrict_model(properties["model"], names)
                if task == "generation" and "prompt" in properties and served:
                    describe_generators(properties, [m.pipeline for m in served])
                if task == "activity" and "top_k" in properties:
                    # at most the classes of every served model (more is refused)
                    properties["top_k"]["maximum"] = min(len(m.pipeline.classes)
                                                         for m in served)
                if task == "caption" and "temperature" in properties and served:
                    # sampling's top_k: at most the candidates every step graph returns
                    properties["top_k"]["maximum"] = min(m.bundle.manifest.decoding.top_k
                                                         for m in served)


def describe_generators(properties: dict[str, Any], pipelines: list[TextToImage]) -> None:
    """A prompt's `maxLength` is the shortest limit among the served generators; the
    sampling settings are declared only when a served generator draws tokens (a GAN
    refuses them)."""
    limits = [p.max_prompt_length for p in pipelines if p.max_prompt_length is not None]
    if limits:
        properties["prompt"]["maxLength"] = min(limits)
    if not any(p.takes_sampling for p in pipelines):
        for name in SAMPLING_FIELDS:
            properties.pop(name, None)


def restrict_model(prop: dict[str, Any], names: list[str]) -> None:
    """`model` may be one of `names` (or null, where it was nullable)."""
    enum = {"type": "string", "enum": names}
    if "anyOf" in prop:
        prop["anyOf"] = [enum if v.get("type") == "string" else v for v in prop["anyOf"]]
    else:
        prop.pop("type", None)
        prop.update(enum)


def object_schemas(schema: dict[str, Any], document: dict[str, Any]) -> Iterator[dict]:
    """The object schemas a body schema is made of (through $ref, oneOf and anyOf)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    for key in ("oneOf", "anyOf"):
        for part in schema.get(key, []):
            yield from object_schemas(part, document)
    if "properties" in schema:
        yield schema
