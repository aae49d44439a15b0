"""GET /v2/health/live and /v2/health/ready (the KServe v2 paths); no API key needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.routers.deps import StateDep
from service.schemas import Live, Ready

router = APIRouter(prefix="/v2/health", tags=["health"])


@router.get("/live", response_model=Live)
async def live() -> Live:
    """200 while the process runs."""
    return Live()


@router.get("/ready", response_model=Ready,
            responses={503: {"model": Ready, "description": "loading, degraded or draining"}})
async def ready(state: StateDep) -> JSONResponse:
    """200 once every bundle is loaded and warmed; 503 before, if any failed, and while
    draining."""
    body = Ready(ready=state.ready, status=state.status, models=list(state.models),
                 errors=state.errors)
    headers = {} if state.ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503,
                        headers=headers)
