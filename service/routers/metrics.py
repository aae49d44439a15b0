"""GET /metrics: Prometheus text of the metrics the service records (service/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.routers.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                             "description": "Prometheus text exposition format"}})
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics of this process (no API key needed)."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
