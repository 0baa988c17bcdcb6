"""Fetch an image URL (only when the caller allowed URLs): bounded time and size, no SSRF.

Loopback, private, link-local (cloud metadata), multicast and reserved addresses are refused unless
explicitly allowed. The check runs on the addresses the host name resolves to, and the connection
is then made to the checked address itself, so DNS rebinding cannot slip past it; redirects open
new connections through the same check. Environment proxies are not used.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
import urllib.error
import urllib.request
from functools import partial

from clipserve.errors import InvalidInput

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
MAX_REDIRECTS = 5


class RefusedAddress(OSError):
    """The URL's host resolves only to addresses clipserve does not fetch from."""


def refusal(address: str) -> str | None:
    """Why ``address`` must not be fetched from, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    return None


def _guarded_connection(
    address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *, allow_private
):
    host, port = address
    refused = []
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        reason = None if allow_private else refusal(sockaddr[0])
        if reason:
            refused.append(reason)
            continue
        sock = socket.socket(family, kind, proto)
        if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
        except OSError:
            sock.close()
            raise
        return sock
    raise RefusedAddress(f"refusing to fetch from {host}: {'; '.join(refused) or 'no address'}")


def _opener(allow_private: bool) -> urllib.request.OpenerDirector:
    connect = partial(_guarded_connection, allow_private=allow_private)

    class GuardedHTTP(http.client.HTTPConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = connect

    class GuardedHTTPS(http.client.HTTPSConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = connect

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(GuardedHTTP, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(GuardedHTTPS, req)

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), HTTPHandler, HTTPSHandler, Redirects)


def fetch_url(
    url: str,
    index: int | None = None,
    allow_private: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """GET ``url`` and return its body; any failure is an :class:`InvalidInput` naming the item."""
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"only http(s) URLs are fetched, not {url[:40]!r}", index)
    deadline = time.monotonic() + timeout_s
    try:
        with _opener(allow_private).open(url, timeout=timeout_s) as response:
            length = int(response.headers.get("Content-Length") or 0)
            if length > max_bytes:
                raise InvalidInput(f"{url} is {length} bytes, over the {max_bytes}-byte limit", index)
            chunks, size = [], 0
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidInput(f"{url} is larger than the {max_bytes}-byte limit", index)
                if time.monotonic() > deadline:
                    raise InvalidInput(f"{url} took longer than {timeout_s} s", index)
    except RefusedAddress as exc:
        raise InvalidInput(str(exc), index) from exc
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, RefusedAddress) else exc
        raise InvalidInput(f"cannot fetch {url}: {reason}", index) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise InvalidInput(f"cannot fetch {url}: {exc}", index) from exc
    return b"".join(chunks)
