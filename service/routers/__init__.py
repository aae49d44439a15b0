"""One APIRouter per resource; `deps` holds the dependencies and input parsing they share.

`ROUTERS` is what the app includes, in the order /docs lists them; `INFERENCE_TASKS`
maps the path of each inference endpoint to the task of the models that answer it
(each inference router names its `TASK`, or its `TASKS` per path where its endpoints
answer with models of different tasks), for the admission gate (service/middleware.py)
and the OpenAPI document's model lists (service/openapi.py).
"""

from service.routers import (
    alignments,
    captions,
    generations,
    health,
    metrics,
    models,
    retrieval,
    videos,
    vqa,
    web,
)

ROUTERS = (health.router, metrics.router, models.router, captions.router, alignments.router,
           vqa.router, retrieval.router, generations.router, videos.router, web.router)


def _route_tasks(module) -> dict[str, str]:
    tasks = getattr(module, "TASKS", None)
    if tasks is not None:
        return dict(tasks)
    return {route.path: module.TASK for route in module.router.routes}


INFERENCE_TASKS: dict[str, str] = {
    path: task
    for module in (captions, alignments, vqa, retrieval, generations, videos)
    for path, task in _route_tasks(module).items()
}
