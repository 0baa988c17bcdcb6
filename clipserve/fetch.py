"""Fetch an image URL (only when the caller allowed URLs): bounded time, bounded size."""

from __future__ import annotations

import urllib.error
import urllib.request

from clipserve.errors import InvalidInput

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


def fetch_url(
    url: str,
    index: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """GET ``url`` and return its body; any failure is an :class:`InvalidInput` naming the item."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InvalidInput(f"cannot fetch {url}: {exc}", index) from exc
    if len(body) > max_bytes:
        raise InvalidInput(f"{url} is larger than the {max_bytes}-byte limit", index)
    return body
