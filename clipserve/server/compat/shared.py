"""What every compat route's body shares: it tolerates a newer client's extra fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Tolerant(BaseModel):
    """A compat request body: fields this server does not use are ignored, as their servers do."""

    model_config = ConfigDict(extra="ignore")
