"""GET /v1/models: every served bundle with its task, defaults and measured metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.routers.deps import StateDep, require_api_key
from service.runtime import ServedModel
from service.schemas import ModelInfo, ModelList, error_responses

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


def _defaults(served: ServedModel) -> dict[str, Any]:
    """Decoding defaults of a caption model; the numeric inference settings of the others
    (alignment beta, prompt and question limits, noise size, ...)."""
    manifest = served.bundle.manifest
    d = manifest.decoding
    if d is None:
        return {key: value for key, value in manifest.inference.items()
                if isinstance(value, int | float | bool)}
    return {"beam_size": d.beam_size, "max_length": d.max_length,
            "length_penalty": d.length_penalty, "attention": d.attention is not None}


def model_info(state: StateDep, served: ServedModel) -> ModelInfo:
    m = served.bundle.manifest
    return ModelInfo(name=m.name, version=m.version, id=served.key,
                     latest=state.is_latest(served), task=m.task,
                     architecture=m.architecture, created=m.created,
                     defaults=_defaults(served), metrics=m.metrics)


@router.get("/models", response_model=ModelList, responses=error_responses(401))
async def list_models(state: StateDep) -> ModelList:
    """The served models, sorted by name then version."""
    return ModelList(models=[model_info(state, served) for served in state.models.values()])
