"""What every compat route shares: embedding through the pool as ``/encode`` does, and the body
model that tolerates a newer client's extra fields."""

from __future__ import annotations

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict

from clipserve.inputs import Item
from clipserve.server.models import ModelPool, ServedModel


class Tolerant(BaseModel):
    """A compat request body: fields this server does not use are ignored, as their servers do."""

    model_config = ConfigDict(extra="ignore")


async def embedded(
    request: Request, pool: ModelPool, model: ServedModel, items: list[Item]
) -> tuple[np.ndarray, list[int]]:
    """``items`` embedded by ``model`` (recorded for the metrics and headers), and their tokens."""
    request.scope.setdefault("state", {})["model"] = model
    async with pool.use(model) as service:
        return await service.embed(items)
