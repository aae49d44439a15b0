"""GET /v1/models: every served bundle with its task, defaults and measured metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.routers.deps import StateDep, require_api_key
from service.schemas import ModelInfo, ModelList, OpenAIModel, error_responses
from service.state import ServedModel

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


def model_info(state: StateDep, served: ServedModel) -> ModelInfo:
    m = served.bundle.manifest
    return ModelInfo(name=m.name, version=m.version, id=served.key,
                     latest=state.is_latest(served), default=state.is_default(served),
                     task=m.task,
                     architecture=m.architecture, created=m.created,
                     defaults=served.pipeline.defaults(), metrics=m.metrics)


@router.get("/models", response_model=ModelList, responses=error_responses(401))
async def list_models(state: StateDep) -> ModelList:
    """The served models, sorted by name then version; `data` lists them as OpenAI's
    clients expect (`client.models.list()`)."""
    served = list(state.models.values())
    return ModelList(models=[model_info(state, m) for m in served],
                     data=[OpenAIModel(id=m.key, created=int(m.bundle.manifest.created.timestamp()))
                           for m in served])
