"""Typed errors users can cause. Each maps to one HTTP status in one place (the server)."""

from __future__ import annotations

ECHO_CHARS = 120


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``value`` made safe to put in an error message: printable, valid UTF-8, at most ``limit`` chars.

    User input (URLs, names) is echoed through this, so no input can break the rendering of its
    own error (a lone surrogate such as ``\\ud800`` cannot be encoded as UTF-8).
    """
    text = repr(value) if not isinstance(value, str) else value
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def listed(names: list[str], limit: int = 8) -> str:
    """``names`` for a message: the first ``limit`` and how many more, or ``none``."""
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return shown or "none"


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


class NotFound(ClipserveError, LookupError):
    """A resource of the request does not exist (an index item, a thumbnail)."""

    http_status = 404


class UnknownModel(ClipserveError, LookupError):
    """The model name is not in the zoo (or not served)."""

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
    """A request exceeds a size limit of the server (body bytes, items, URLs, downloads)."""

    http_status = 413

    def __init__(self, message: str, index: int | None = None) -> None:
        self.index = index
        super().__init__(message)


class Overloaded(ClipserveError):
    """The server holds its maximum of work; the caller should retry later (503 + Retry-After)."""

    http_status = 503


class ModelUnavailable(ClipserveError):
    """A served model cannot be loaded now: it would pass the server's memory limit, or it failed;
    ``retry_after_s`` says when to try again."""

    http_status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class Unauthorized(ClipserveError):
    """The request lacks the server's API key."""

    http_status = 401
