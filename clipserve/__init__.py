"""clipserve: texts and images into one CLIP latent space, as a library, a CLI and an HTTP service."""

from clipserve.client import AsyncClient, Client, ServerError
from clipserve.encoder import Encoder, EncodeResult
from clipserve.errors import (
    ClipserveError,
    DeviceUnavailable,
    InvalidInput,
    UnknownModel,
    UnsupportedModel,
    WeightsUnavailable,
)
from clipserve.vectors import RankedMatch
from clipserve.zoo import ModelSpec, get_spec, list_models

__version__ = "0.1.0"
__all__ = [
    "AsyncClient",
    "Client",
    "ClipserveError",
    "DeviceUnavailable",
    "EncodeResult",
    "Encoder",
    "InvalidInput",
    "ModelSpec",
    "RankedMatch",
    "ServerError",
    "UnknownModel",
    "UnsupportedModel",
    "WeightsUnavailable",
    "get_spec",
    "list_models",
]
