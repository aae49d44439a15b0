"""Loading the model repository into a `ServiceState`, and serving it until shutdown.

Start-up discovers every bundle under the repository, verifies manifests and sha256s,
creates ONNX Runtime sessions with the configured providers, builds the pipeline of
the bundle's architecture or task (`service.pipelines.pipeline_for`), warms it at the
batch sizes its queue will form and starts the queue the pipeline asks for. A bundle
that fails is skipped with an error log naming the bundle, the file and the reason; the
others are served, and /v2/health/ready answers 503 ("degraded") until the repository
is fixed, so that a deployment never silently runs without a model it was given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from service.bundle import Bundle, BundleError, discover
from service.indexes import use_qdrant
from service.metrics import ServiceMetrics
from service.pipelines import pipeline_for
from service.runtime import load_graphs, warm_batch_sizes
from service.settings import Settings
from service.state import ServedModel, ServiceState

log = logging.getLogger("service")


def load_model(bundle: Bundle, settings: Settings, metrics: ServiceMetrics) -> ServedModel:
    """Sessions, pipeline, warm-up and batching queue of one bundle (raises BundleError)."""
    pipeline_class = pipeline_for(bundle.manifest)
    if pipeline_class is None:
        raise BundleError(bundle.path, f"task {bundle.manifest.task!r} is not served by this "
                          "version of glimpse")
    knobs = settings.for_model(bundle.manifest.name)
    graphs = load_graphs(bundle, device=knobs.device, providers=knobs.providers,
                         intra_op_threads=knobs.intra_op_threads,
                         allow_spinning=settings.ort_spinning)
    pipeline = pipeline_class(bundle, graphs)
    started = time.perf_counter()
    try:
        pipeline.warm_up(warm_batch_sizes(knobs.max_batch_size))
    except Exception as exc:  # graphs that load but cannot run as the manifest says
        raise BundleError(bundle.path, f"warm-up failed: {exc}") from exc
    log.info("warmed %s in %.2f s", bundle.key, time.perf_counter() - started)
    return ServedModel(bundle=bundle, settings=knobs, pipeline=pipeline,
                       batcher=pipeline.batcher(knobs, metrics))


def load_repository(state: ServiceState) -> None:
    """Fill `state.models` and `state.errors` from the repository (blocking)."""
    use_qdrant(state.settings.qdrant_url)
    bundles, errors = discover(state.settings.model_repository)
    for bundle in bundles:
        try:
            state.models[bundle.key] = load_model(bundle, state.settings, state.metrics)
        except BundleError as exc:
            errors.append(exc)
    for exc in errors:
        log.error("not serving %s", exc)
    state.errors = [exc.public for exc in errors]  # the log above has the details
    if not bundles and not errors:
        log.warning("model repository %s holds no bundle", state.settings.model_repository)


@asynccontextmanager
async def serving(state: ServiceState) -> AsyncIterator[None]:
    """Load the repository (off the event loop) and start every queue; on exit, drain:
    refuse new requests and let queued ones finish (at most `drain_timeout_s`)."""
    await asyncio.to_thread(load_repository, state)
    for served in state.models.values():
        served.batcher.on_room = partial(state.room, served.task)
        served.batcher.start()
        state.metrics.watch_queue(served.key, lambda b=served.batcher: len(b.queue))
    state.phase = "ready"
    log.info("ready: %d model(s) %s", len(state.models), ", ".join(state.models) or "")
    try:
        yield
    finally:
        state.begin_drain()
        timeout = state.settings.drain_timeout_s
        await asyncio.gather(*(m.batcher.stop(timeout) for m in state.models.values()))
        log.info("stopped")
