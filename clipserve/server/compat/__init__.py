"""Other products' inference APIs, as thin routes over the same service as ``/encode``
(``clipserve serve --compat weaviate,immich,tei,infinity``; none by default).

Each module builds one router; every route embeds through :meth:`ModelPool.embed`, as ``/encode``
does, so the API key, the limits, batching and metrics are the same as ``/encode``'s. The error
body each API answers with is in :mod:`clipserve.server.apis`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from clipserve.server.compat import immich, infinity, tei, weaviate
from clipserve.server.guard import OffLoopJSONRoute
from clipserve.server.models import ModelPool
from clipserve.settings import ServerSettings

BUILDERS = {
    "weaviate": weaviate.router,
    "immich": immich.router,
    "tei": tei.router,
    "infinity": infinity.router,
}


def compat_routers(pool: ModelPool, settings: ServerSettings) -> list[APIRouter]:
    """The routers of the APIs ``settings.compat`` names, in its order."""
    routers = [BUILDERS[name](pool, settings) for name in settings.compat]
    if {"tei", "infinity"} & set(settings.compat):
        routers.append(health_router())
    return routers


def health_router() -> APIRouter:
    """``GET /health``, the probe of TEI and of infinity (one route for both)."""
    router = APIRouter(route_class=OffLoopJSONRoute, tags=["tei", "infinity"])

    @router.get("/health")
    async def health() -> dict:
        """Alive: 200 with infinity's ``{"unix": seconds}`` (TEI's clients read only the status)."""
        return {"unix": time.time()}

    return router
