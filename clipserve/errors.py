"""Typed errors users can cause. Each maps to one HTTP status in one place (the server)."""

from __future__ import annotations


class ClipserveError(Exception):
    """Base class of every error clipserve raises on purpose."""

    http_status = 400


class InvalidInput(ClipserveError, ValueError):
    """An input item cannot be encoded; ``index`` names the item in the request (or None)."""

    http_status = 422

    def __init__(self, message: str, index: int | None = None) -> None:
        self.index = index
        self.reason = message
        where = f"item {index}: " if index is not None else ""
        super().__init__(where + message)


class UnknownModel(ClipserveError, LookupError):
    """The model name is not in the zoo."""

    http_status = 404


class UnsupportedModel(ClipserveError):
    """The model is known but cannot run with the requested backend, device or precision."""

    http_status = 400


class WeightsUnavailable(ClipserveError, FileNotFoundError):
    """No weights could be found or downloaded for a model."""

    http_status = 503


class DeviceUnavailable(ClipserveError, RuntimeError):
    """The requested device or execution provider is not present; never silently replaced."""

    http_status = 500


class RequestTooLarge(ClipserveError):
    """A request exceeds a size limit of the server (body bytes or items)."""

    http_status = 413


class Unauthorized(ClipserveError):
    """The request lacks the server's API key."""

    http_status = 401
