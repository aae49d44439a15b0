"""One pipeline per served task, each registered under its task in `PIPELINES`, and
one per architecture that its task's pipeline cannot run, in `ARCHITECTURE_PIPELINES`.

Importing this package imports every pipeline module, so that the registries are
complete; a new task or architecture is one module here (a `Pipeline` subclass naming
its task, and its architecture) and its line below.
"""

from service.pipelines import (  # noqa: F401
    activity,
    alignment,
    caption,
    dalle,
    generation,
    retrieval,
    video_caption,
    vqa,
)
from service.pipelines.base import ARCHITECTURE_PIPELINES, PIPELINES, Pipeline, pipeline_for

__all__ = ["ARCHITECTURE_PIPELINES", "PIPELINES", "Pipeline", "pipeline_for"]
