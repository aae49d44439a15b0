"""One APIRouter per resource; `deps` holds the dependencies and input parsing they share.

`ROUTERS` is what the app includes, in the order /docs lists them; `INFERENCE_TASKS`
maps the path of each inference endpoint to the task of the models that answer it
(each inference router names its `TASK`), for the admission gate (service/middleware.py).
"""

from service.routers import (
    alignments,
    captions,
    generations,
    health,
    metrics,
    models,
    retrieval,
    vqa,
    web,
)

ROUTERS = (health.router, metrics.router, models.router, captions.router, alignments.router,
           vqa.router, retrieval.router, generations.router, web.router)

INFERENCE_TASKS: dict[str, str] = {
    route.path: module.TASK
    for module in (captions, alignments, vqa, retrieval, generations)
    for route in module.router.routes
}
