"""One pipeline per served task, each registered under its task in `PIPELINES`.

Importing this package imports every task module, so that the registry is complete;
a new task is one module here (a `Pipeline` subclass naming its task) and its line below.
"""

from service.pipelines import alignment, caption, generation, retrieval, vqa  # noqa: F401
from service.pipelines.base import PIPELINES, Pipeline

__all__ = ["PIPELINES", "Pipeline"]
