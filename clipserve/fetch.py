"""Fetch a URL (only when the caller allowed URLs): bounded time and size, public addresses only.

- Only addresses that are globally routable are fetched from. The check runs on every address the
  host name resolves to, after unwrapping IPv4 addresses carried inside IPv6 ones (mapped,
  compatible, 6to4, Teredo, NAT64), and the connection is made to the checked address itself, so
  DNS rebinding cannot slip past it. Redirects open new connections through the same check and may
  only lead to ``http``/``https``: the opener has no FTP, file or data handlers at all.
- One deadline covers the whole fetch (name lookup, connect, headers, body): a watchdog shuts the
  socket when it passes, so a server that trickles one byte at a time cannot hold a thread.
- Every failure before a connection is made (a name that does not resolve, a lookup that takes too
  long, an address that is not public, a connection that fails) gives one message, and a malformed
  answer is named by its kind only: the details (resolved addresses, the resolver's words, the
  remote bytes) stay in the server's log, so the error text is no oracle for the names of an
  internal network and echoes nothing a remote host sent.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import cache

from clipserve.errors import InvalidInput, RequestTooLarge, echo

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
MAX_REDIRECTS = 5
FETCHED_SCHEMES = ("http", "https")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Special-purpose blocks (IANA registries) that Python 3.11's ``is_global`` still calls global.
NOT_PUBLIC = tuple(
    ipaddress.ip_network(block)
    for block in (
        "0.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT; cloud metadata services live here too (100.100.100.200)
        "192.0.0.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "::/96",  # deprecated IPv4-compatible IPv6
        "fec0::/10",  # deprecated site-local
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RefusedAddress(OSError):
    """The URL's host resolves only to addresses clipserve does not fetch from."""


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (6to4, Teredo server and client, NAT64)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    inner = [ip.sixtofour] if ip.sixtofour else []
    inner.extend(ip.teredo or ())
    if ip in NAT64:
        inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return inner


def is_public(address: str) -> bool:
    """True when ``address`` and every IPv4 address inside it are globally routable."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return all(_routable(candidate) for candidate in [ip, *embedded_ipv4(ip)])


def _routable(ip: IPAddress) -> bool:
    # Python 3.11's is_global alone passes multicast (ff02::1) and several special blocks.
    special = ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback or ip.is_link_local
    return ip.is_global and not special and not any(ip in block for block in NOT_PUBLIC)


FETCH_THREADS = 8


@cache
def fetch_pool() -> ThreadPoolExecutor:
    """The process's URL fetches: they wait on the network, not the CPU, so a pool of their own keeps
    them off the decoders; one for every model, so the downloads in flight are bounded once
    (``FETCH_THREADS`` × ``max_fetch_mb``)."""
    return ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="clipserve-fetch")


@cache
def _lookup_pool() -> ThreadPoolExecutor:
    # getaddrinfo has no timeout of its own: it runs here so the fetch can stop waiting for it.
    return ThreadPoolExecutor(4, thread_name_prefix="clipserve-dns")


class _Deadline:
    """The end time of one fetch, and a watchdog that shuts the fetch's sockets when it passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                sock.close()
                raise TimeoutError("deadline passed")
            self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def unreachable(host: str) -> str:
    """The one message of every failure to reach ``host`` (see the module docstring)."""
    return f"refusing to fetch from {echo(host, 80)}: it does not resolve to a public address"


def _connect(host: str, port: int, deadline: _Deadline, allow_private: bool) -> socket.socket:
    lookup = _lookup_pool().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        addresses = lookup.result(timeout=deadline.remaining())
    except FutureTimeout:
        log.warning("refused to fetch from %s: the name lookup took too long", host)
        raise RefusedAddress(unreachable(host)) from None
    except OSError as exc:
        log.warning("refused to fetch from %s: the name does not resolve (%s)", host, exc)
        raise RefusedAddress(unreachable(host)) from None
    refused = []
    for family, kind, proto, _, sockaddr in addresses:
        if not allow_private and not is_public(sockaddr[0]):
            refused.append(sockaddr[0])
            continue
        sock = socket.socket(family, kind, proto)
        deadline.watch(sock)
        sock.settimeout(deadline.remaining())
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            if deadline.expired or isinstance(exc, TimeoutError):
                raise
            log.warning("could not connect to %s (%s): %s", host, sockaddr[0], exc)
            raise RefusedAddress(unreachable(host)) from None
        return sock
    log.warning("refused to fetch from %s: it resolves to %s", host, ", ".join(refused) or "nothing")
    raise RefusedAddress(unreachable(host))


def _opener(deadline: _Deadline, allow_private: bool) -> urllib.request.OpenerDirector:
    def connect(address, timeout=None, source_address=None):
        return _connect(address[0], address[1], deadline, allow_private)

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

        def http_error_302(self, req, fp, code, msg, headers):
            target = headers.get("location") or headers.get("uri") or ""
            scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, target)).scheme.lower()
            if scheme not in FETCHED_SCHEMES:
                log.warning("refused a redirect from %s to a %r URL", req.full_url, scheme)
                raise RefusedAddress("refusing to follow a redirect to a URL that is not http(s)")
            return super().http_error_302(req, fp, code, msg, headers)

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    # Built by hand: build_opener() would add FTP, file, data and environment-proxy handlers.
    opener = urllib.request.OpenerDirector()
    for handler in (
        HTTPHandler(),
        HTTPSHandler(),
        Redirects(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener


class ByteBudget:
    """Bytes that the URL items of one request may still download together (thread-safe)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total
        self._lock = threading.Lock()

    def take(self, count: int, index: int | None) -> None:
        with self._lock:
            self.left -= count
            if self.left < 0:
                raise RequestTooLarge(
                    f"the URL items of this request download more than {self.total} bytes together",
                    index,
                )


def fetch_url(
    url: str,
    index: int | None = None,
    allow_private: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    budget: ByteBudget | None = None,
) -> bytes:
    """GET ``url`` and return its body; any failure is an :class:`InvalidInput` naming the item.

    ``timeout_s`` bounds the whole fetch; ``max_bytes`` the body; ``budget`` (optional) is shared
    with the other URLs of a request.
    """
    shown = echo(url)
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise InvalidInput(f"malformed URL {shown}: {exc}", index) from exc
    if scheme not in FETCHED_SCHEMES:
        raise InvalidInput(f"only http(s) URLs are fetched, not {shown}", index)
    deadline = _Deadline(timeout_s)
    try:
        with _opener(deadline, allow_private).open(url, timeout=timeout_s) as response:
            length = int(response.headers.get("Content-Length") or 0)
            if length > max_bytes:
                raise InvalidInput(f"{shown} is {length} bytes, over the {max_bytes}-byte limit", index)
            chunks, size = [], 0
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if budget is not None:
                    budget.take(len(chunk), index)
                if size > max_bytes:
                    raise InvalidInput(f"{shown} is larger than the {max_bytes}-byte limit", index)
            if deadline.expired:  # the watchdog shut the socket: what arrived is a truncated body
                raise TimeoutError("deadline passed")
            if length and size != length:
                raise InvalidInput(f"{shown} ended after {size} of {length} bytes", index)
    except (InvalidInput, RequestTooLarge):
        raise
    except RefusedAddress as exc:
        raise InvalidInput(str(exc), index) from exc
    except Exception as exc:  # sockets, TLS, HTTP parsing and urllib raise many types; all are the URL's
        if deadline.expired or isinstance(exc, TimeoutError):
            raise InvalidInput(f"fetching {shown} took longer than {timeout_s:g} s", index) from exc
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, RefusedAddress):
            raise InvalidInput(str(reason), index) from exc
        raise InvalidInput(f"cannot fetch {shown}: {_describe(exc)}", index) from exc
    finally:
        deadline.cancel()
    return b"".join(chunks)


def _describe(exc: Exception) -> str:
    """A failed fetch in words that echo nothing the remote host sent (logged whole)."""
    log.info("fetch failed: %s: %s", type(exc).__name__, exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    return f"no valid HTTP answer ({type(exc).__name__})"
