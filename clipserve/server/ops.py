"""What operators and browsers call: ``/healthz``, ``/readyz``, ``/metrics`` and the playground's page."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from clipserve.server.metrics import Metrics
from clipserve.server.models import ModelPool

PLAYGROUND = Path(__file__).parent / "playground"


def router(pool: ModelPool, metrics: Metrics, index=None, playground: bool = True) -> APIRouter:
    """Health, readiness (with the served ``index``'s description), metrics; the playground's page."""
    routes = APIRouter()

    @routes.get("/healthz")
    async def healthz() -> dict:
        """Alive (no authentication)."""
        return {"status": "ok"}

    @routes.get("/readyz")
    async def readyz() -> dict:
        """Ready to serve: the default model's description at the top level, every model's state in
        ``models`` (``unloaded`` ones load on their first request; no file system paths)."""
        return {
            "status": "ready",
            **pool.default.describe(),
            "models": {model.name: model.describe() for model in pool.models.values()},
            **({"index": index.info()} if index is not None else {}),
        }

    @routes.get("/metrics")
    async def metrics_route() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if playground:

        @routes.get("/", include_in_schema=False)
        @routes.get("/playground", include_in_schema=False)
        async def playground_page() -> FileResponse:
            """The browser playground: a page of the package calling this API."""
            return FileResponse(PLAYGROUND / "index.html")

    return routes
