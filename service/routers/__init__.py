"""One APIRouter per resource; `deps` holds the dependencies and input parsing they share.

`ROUTERS` is what the app includes, in the order /docs lists them.
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
)

ROUTERS = (health.router, metrics.router, models.router, captions.router, alignments.router,
           vqa.router, retrieval.router, generations.router, videos.router)
