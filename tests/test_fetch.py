"""URL fetching: public addresses only (after unwrapping), http(s) redirects only, one deadline for the
whole fetch, byte caps, and refusals that reveal nothing about the internal network."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clipserve import fetch
from clipserve.errors import InvalidInput, RequestTooLarge
from clipserve.fetch import ByteBudget, fetch_url, is_public


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.100.100.200",  # cloud metadata inside 100.64.0.0/10 (carrier-grade NAT)
        "192.0.0.8",
        "0.0.0.0",
        "::1",
        "::ffff:127.0.0.1",
        "::169.254.169.254",  # IPv4-compatible
        "2002:a9fe:a9fe::1",  # 6to4 wrapping 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "fec0::1",  # site-local
        "fd00::1",
        "fe80::1%eth0",
        "ff02::1",
    ],
)
def test_non_public_addresses_are_refused(address) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"])
def test_public_addresses_are_allowed(address) -> None:
    assert is_public(address)


def _serve(handler: type[BaseHTTPRequestHandler]):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_refusal_names_neither_the_address_nor_reveals_dns(loopback_files, caplog) -> None:
    base, files = loopback_files
    files["/cat.png"] = b"x"
    with pytest.raises(InvalidInput) as info:
        fetch_url(f"{base.replace('127.0.0.1', 'localhost')}/cat.png", index=3)
    message = str(info.value)
    assert message.startswith(
        "item 3: refusing to fetch from localhost: it does not resolve to a public address"
    )
    assert "127.0.0.1" not in message and "::1" not in message
    assert "127.0.0.1" in caplog.text  # the details stay in the server's log


def test_loopback_is_fetched_only_when_private_urls_are_allowed(loopback_files, photo_paths) -> None:
    base, files = loopback_files
    files["/cat.png"] = photo_paths[1].read_bytes()
    assert fetch_url(f"{base}/cat.png", allow_private=True) == files["/cat.png"]
    with pytest.raises(InvalidInput, match="does not resolve to a public address"):
        fetch_url(f"{base}/cat.png")


def test_redirects_are_checked_like_the_first_address(monkeypatch) -> None:
    """127.0.0.1 stands in for a public host; it redirects to 127.0.0.2, which must be refused."""

    class Redirect(_Quiet):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{self.server.server_address[1]}/cat.png")
            self.end_headers()

    server, url = _serve(Redirect)
    original = fetch.is_public
    monkeypatch.setattr(fetch, "is_public", lambda address: address == "127.0.0.1" or original(address))
    try:
        with pytest.raises(InvalidInput, match=r"refusing to fetch from 127\.0\.0\.2: it does not resolve"):
            fetch_url(f"{url}/start", index=0)
    finally:
        server.shutdown()


@pytest.mark.parametrize("scheme", ["ftp", "file", "data"])
def test_redirects_to_other_schemes_are_refused_without_connecting(scheme) -> None:
    banner_port = socket.socket()
    banner_port.bind(("127.0.0.1", 0))
    banner_port.listen()
    banner_port.settimeout(0.5)
    port = banner_port.getsockname()[1]
    targets = {
        "ftp": f"ftp://127.0.0.1:{port}/",
        "file": "file:///etc/passwd",
        "data": "data:text/plain,SSH-2.0-banner",
    }

    class Redirect(_Quiet):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", targets[scheme])
            self.end_headers()

    server, url = _serve(Redirect)
    try:
        with pytest.raises(InvalidInput) as info:
            fetch_url(f"{url}/x.png", index=1, allow_private=True)
        message = str(info.value)
        assert "refusing to follow a redirect to a URL that is not http(s)" in message
        assert scheme not in message.replace(url, "")  # the Location header is the remote's: not echoed
        assert "root:" not in message and "banner" not in message
        with pytest.raises(TimeoutError):
            banner_port.accept()  # nobody connected to the "FTP" port
    finally:
        server.shutdown()
        banner_port.close()


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_one_deadline_covers_the_whole_fetch(stage) -> None:
    """A server that trickles a byte every 0.2 s never trips a per-read timeout; the deadline ends it."""

    class Trickle(_Quiet):
        def do_GET(self) -> None:
            try:
                if stage == "headers":
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    for _ in range(100):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.2)
            except OSError:
                pass

    server, url = _serve(Trickle)
    try:
        start = time.monotonic()
        with pytest.raises(InvalidInput, match=r"item 2: fetching .* took longer than 1 s"):
            fetch_url(f"{url}/slow.png", index=2, allow_private=True, timeout_s=1.0)
        assert time.monotonic() - start < 2.5
    finally:
        server.shutdown()


def test_size_caps_per_url_and_per_request(loopback_files) -> None:
    base, files = loopback_files
    files["/big"] = b"x" * 600_000
    with pytest.raises(InvalidInput, match="over the 100000-byte limit"):
        fetch_url(f"{base}/big", allow_private=True, max_bytes=100_000)
    budget = ByteBudget(1_000_000)
    assert len(fetch_url(f"{base}/big", index=0, allow_private=True, budget=budget)) == 600_000
    with pytest.raises(RequestTooLarge, match="download more than 1000000 bytes together"):
        fetch_url(f"{base}/big", index=1, allow_private=True, budget=budget)


@pytest.mark.parametrize("url", ["http://[::1/x.png", "http://127.0.0.1:99999/x.png", "http:///x.png"])
def test_malformed_urls_are_invalid_input(url) -> None:
    with pytest.raises(InvalidInput, match="item 0: "):
        fetch_url(url, index=0, allow_private=True, timeout_s=2)


def test_echoed_urls_are_made_safe() -> None:
    with pytest.raises(InvalidInput) as info:
        fetch_url("gopher://192.0.2.1/\ud800" + "x" * 500)
    message = str(info.value)
    message.encode("utf-8")  # no lone surrogate left to break a JSON answer
    assert "\\ud800" in message and len(message) < 200
