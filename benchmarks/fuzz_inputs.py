"""Fuzz the running server with generated malformed requests; it must answer each with a 4xx (or a
200 where the input still makes sense), never a 5xx or a crash, and keep serving correct vectors.

Starts ``clipserve serve`` (random ViT-B-32 weights, ONNX, ``--allow-url``) on 127.0.0.1 and sends
N requests (default 10,000) from a seeded generator over 16 connections:

- images of every allowed format, truncated, bit-flipped, overwritten or with a corrupted header;
- extreme sizes and side ratios (thin strips, headers claiming huge or zero dimensions);
- wrong JSON types and shapes, missing and extra fields, bad base64 and data URIs;
- invalid UTF-8, lone surrogates, huge and deeply nested bodies, too many items;
- URLs of every address form (loopback in decimal, octal and hex, IPv6 forms that wrap private
  IPv4 addresses, metadata addresses, other schemes, malformed URLs, hosts that do not resolve).
  None is public: no request leaves the machine.

The server also serves AudioCLIP (random weights, loaded on first use), and about 2 % of the
requests are the bombs of the second hardening review: JSON bodies whose strings are unterminated
runs of escaped quotes (16 MB of them once froze the server), JPEGs of 1,000 repeated scans or of
96 scans over 49 megapixels, 49-megapixel images of a few bytes each (lossless WebP, AVIF, CMYK
JPEG, LA PNG), and audio bombs (400 one-minute FLACs of silence in one request, 8 channels at
655 kHz, over-long and silent clips). Meanwhile 8 uploads that declare 16 MB and send nothing,
and 8 connections that trickle header lines, are kept open (reopened when the server cuts them),
and ``/healthz`` is timed every half second.

Every 4xx about an item must carry that item's index. Afterwards the server's vectors are compared
with an offline ``Encoder`` on the same weights.

    python benchmarks/fuzz_inputs.py [--cases 10000] [--seed 0] [--tensor-preprocess]

``--tensor-preprocess`` sends the JPEGs through the tensor path (torchvision's decoder) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from serving import MODEL, cpu_description, drive, random_export, rss_mib, server_process

from clipserve.encoder import Encoder
from clipserve.preprocess.image import allowed_formats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the seeded checkpoint of the tests
from tests.audioclip_weights import write_checkpoint

MAX_ITEMS = 64
AUDIO_MODEL = "AudioCLIP::full"
BOMB_SHARE = 0.02


@dataclass
class Case:
    """One request and what may come back: allowed statuses, and the index a 4xx must name."""

    category: str
    path: str
    body: bytes
    statuses: frozenset[int]
    index: int | None = None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def source_images(rng: random.Random) -> list[bytes]:
    """Small images in every allowed format, of several modes."""
    out = []
    for fmt in allowed_formats():
        if fmt in ("MPO", "HEIF"):
            continue
        for mode in ("RGB", "L", "RGBA", "P"):
            size = (rng.randint(8, 96), rng.randint(8, 96))
            array = np.random.default_rng(rng.randint(0, 2**31)).integers(0, 256, (*size[::-1], 3), np.uint8)
            image = Image.fromarray(array).convert(mode)
            if fmt in ("JPEG", "AVIF") and mode in ("RGBA", "P"):
                image = image.convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format=fmt)
            out.append(buffer.getvalue())
    return out


def png_header(width: int, height: int, payload: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(payload))
        + chunk(b"IEND", b"")
    )


def mutate(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(data)
    kind = rng.choice(["truncate", "flip", "overwrite", "header", "splice"])
    if kind == "truncate":
        return bytes(raw[: rng.randint(0, len(raw) - 1)])
    if kind == "flip":
        for _ in range(rng.randint(1, 20)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        start = rng.randrange(len(raw))
        raw[start : start + rng.randint(1, 64)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "header":
        for position in range(min(32, len(raw))):
            if rng.random() < 0.3:
                raw[position] = rng.randrange(256)
    else:
        cut = rng.randrange(len(raw))
        raw = raw[:cut] + raw[cut:] * rng.randint(2, 5)
    return bytes(raw)


URL_FORMS = [
    "http://127.0.0.1/x.png",
    "http://127.1/x.png",
    "http://2130706433/x.png",
    "http://0x7f000001/x.png",
    "http://017700000001/x.png",
    "http://0.0.0.0:51000/x.png",
    "http://localhost/x.png",
    "http://[::1]/x.png",
    "http://[::ffff:127.0.0.1]/x.png",
    "http://[::ffff:7f00:1]/x.png",
    "http://[0:0:0:0:0:ffff:169.254.169.254]/latest",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://[fd00:ec2::254]/latest",
    "http://[2002:a9fe:a9fe::1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[fe80::1%25eth0]/",
    "http://[fec0::1]/",
    "http://192.0.0.8/",
    "http://10.0.0.1/x.png",
    "http://172.16.0.1/x.png",
    "http://192.168.0.1/x.png",
    "http://198.18.0.1/x.png",
    "http://224.0.0.1/x.png",
    "http://255.255.255.255/x.png",
    "http://user:pass@127.0.0.1/x.png",
    "http://127.0.0.1:99999/x.png",
    "http://[::1/x.png",
    "http:///x.png",
    "http://no-such-host.invalid/x.png",
    "https://no-such-host.invalid/x.png",
    "http://xn--nxasmq6b.invalid/x.png",
    "http://例え.invalid/x.png",
    "http://192.0.2.1/\ud800",
    "http://192.0.2.1/" + "a" * 5000,
    "ftp://127.0.0.1/x.png",
    "file:///etc/passwd",
    "gopher://127.0.0.1:22/",
    "dict://127.0.0.1:11211/",
    "http://127.0.0.1:22/\r\nInjected: header",
]


def item_cases(rng: random.Random, images: list[bytes]) -> list[tuple[str, object, frozenset[int]]]:
    """Bad (or odd) single items as the server's JSON items: ``(category, item, statuses)``."""
    ok_or_bad = frozenset({200, 422})
    bad = frozenset({422})
    cases: list[tuple[str, object, frozenset[int]]] = []
    for data in images:
        cases.append(("image-mutated", {"image": b64(mutate(data, rng))}, ok_or_bad))
    size = rng.choice(
        [(1, 10_000_000), (10_000_000, 1), (8, 8000), (3, 290), (1, 1), (100_000, 100_000), (0, 5)]
    )
    cases.append(("image-extreme", {"image": b64(png_header(*size))}, ok_or_bad))
    cases.append(("image-extreme", {"image": "data:image/png;base64," + b64(png_header(65535, 1))}, bad))
    bad_base64 = rng.choice(
        ["@@@", "AAA", "A===", "", " ", "data:image/png;base64,@@", "data:image/png", "data:,"]
    )
    cases.append(("base64", {"image": bad_base64}, bad))
    cases.append(("data-uri", {"image": "data:text/html;base64," + b64(b"<b>x</b>")}, bad))
    cases.append(("data-uri", {"image": "data:image/png," + "%FF" * rng.randint(1, 50)}, bad))
    cases.append(("url", {"image": rng.choice(URL_FORMS)}, bad))
    cases.append(("text", {"text": "x" * rng.choice([16_385, 100_000])}, bad))
    cases.append(
        (
            "text",
            {"text": "".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(50)).replace("\ud800", "")},
            ok_or_bad,
        )
    )
    cases.append(("audio", {"audio": b64(rng.randbytes(rng.randint(0, 200)))}, bad))
    return cases


def request_cases(rng: random.Random, images: list[bytes], count: int) -> list[Case]:
    cases: list[Case] = []
    generators = [item_request, shape_request, raw_request]
    bombs = bomb_cases()
    while len(cases) < count:
        if rng.random() < BOMB_SHARE:
            cases.append(rng.choice(bombs))
        else:
            cases.extend(rng.choice(generators)(rng, images))
    return cases[:count]


def scan_bomb(size: int, repeats: int) -> bytes:
    """A grey progressive JPEG whose last scan (an AC refinement) is repeated ``repeats`` times."""
    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last, end = data.rindex(b"\xff\xda"), len(data) - 2
    return data[:end] + data[last:end] * repeats + data[end:]


def flac(samples: np.ndarray, rate: int) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="FLAC")
    return buffer.getvalue()


def saved(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def bomb_cases() -> list[Case]:
    """The second review's bombs, each a whole request with the answers it may get."""
    big = Image.new("RGB", (7000, 7000), (120, 30, 200))
    redos = [b"[" * 5000 + b'"' + b'\\"' * n for n in (20_000, 40_000, 1_000_000)]
    redos.append(b'{"inputs": [{"text": "' + b'\\"' * (8 * 1024 * 1024 - 16))
    silent_minute = b64(flac(np.zeros(44_100 * 60, np.int16), 44_100))
    tone = (0.3 * np.sin(np.linspace(0, 2 * np.pi * 1320, 44_100 * 3))).astype(np.float32)
    cases = [Case("bomb-json", "/encode", body, frozenset({413, 422})) for body in redos]
    images = {
        "bomb-jpeg-scans": [(scan_bomb(2000, 1000), frozenset({422}))],
        "bomb-jpeg-96-scans": [(scan_bomb(7000, 90), frozenset({200}))],
        "bomb-decode-memory": [
            (saved(big.convert("RGBA"), format="WEBP", lossless=True), frozenset({200})),
            (saved(big, format="AVIF", quality=50), frozenset({200})),
            (saved(big.convert("CMYK"), format="JPEG"), frozenset({200})),
            (saved(big.convert("LA"), format="PNG"), frozenset({200})),
        ],
    }
    for category, entries in images.items():
        for data, statuses in entries:
            body = {"inputs": [{"text": "first"}, {"image": b64(data)}]}
            cases.append(Case(category, "/encode", json.dumps(body).encode(), statuses, 1))
    audio = [
        ([{"audio": silent_minute}] * 400, frozenset({413}), None),
        ([{"audio": b64(flac(np.zeros((655_000 * 5, 8), np.int16), 655_000))}], frozenset({422}), 0),
        ([{"audio": b64(flac(np.zeros(44_100 * 61, np.int16), 44_100))}], frozenset({422}), 0),
        ([{"audio": b64(flac(tone, 44_100))}, {"audio": silent_minute}], frozenset({422}), 1),
        ([{"audio": b64(flac(tone, 44_100))}] * 2, frozenset({200}), None),
    ]
    for inputs, statuses, index in audio:
        body = json.dumps({"inputs": inputs, "model": AUDIO_MODEL}).encode()
        cases.append(Case("bomb-audio", "/encode", body, statuses, index))
    return cases


class ConnectionAbuse:
    """Keeps silent 16 MB uploads and header tricklers open against the server while it is fuzzed
    (reopening each one the server cuts), and times ``/healthz`` meanwhile."""

    def __init__(self, port: int, each: int = 8) -> None:
        self.port, self.each = port, each
        self.lives: dict[str, list[float]] = {"stalled-upload": [], "slow-headers": []}
        self.answers: Counter = Counter()
        self.health_ms: list[float] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._abuse, args=(kind,), daemon=True)
            for kind in self.lives
            for _ in range(each)
        ]
        self._threads.append(threading.Thread(target=self._probe, daemon=True))

    def __enter__(self) -> ConnectionAbuse:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _abuse(self, kind: str) -> None:
        while not self._stop.is_set():
            opened = time.monotonic()
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                try:
                    if kind == "stalled-upload":
                        sock.sendall(b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Length: 16777216\r\n\r\n")
                    else:
                        sock.sendall(b"POST /encode HTTP/1.1\r\nHost: x\r\n")
                    answer = b""
                    for line in range(10**6):
                        if self._stop.is_set():
                            return
                        if kind == "slow-headers" and line % 5 == 0:
                            sock.sendall(b"X-Slow-%d: a\r\n" % line)
                        try:
                            chunk = sock.recv(4096)
                        except TimeoutError:
                            continue
                        if not chunk:
                            break
                        answer += chunk
                except OSError:
                    answer = b""
            self.lives[kind].append(time.monotonic() - opened)
            self.answers[(kind, answer[:12].decode(errors="replace") or "closed")] += 1

    def _probe(self) -> None:
        while not self._stop.wait(0.5):
            start = time.perf_counter()
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=30)
            except httpx.TransportError:
                continue
            self.health_ms.append((time.perf_counter() - start) * 1000)

    def report(self) -> list[str]:
        lines = []
        for kind, lives in self.lives.items():
            if lives:
                lines.append(
                    f"{kind}: {len(lives)} connections cut by the server after {min(lives):.1f} to "
                    f"{max(lives):.1f} s"
                )
        lines.append(
            "their answers: " + ", ".join(f"{k} {a!r}: {n}" for (k, a), n in sorted(self.answers.items()))
        )
        if self.health_ms:
            p50 = float(np.percentile(self.health_ms, 50))
            lines.append(f"/healthz during the run: p50 {p50:.0f} ms, max {max(self.health_ms):.0f} ms")
        return lines


def item_request(rng: random.Random, images: list[bytes]) -> list[Case]:
    """One bad item among good ones, on each route."""
    out = []
    for category, item, statuses in rng.sample(item_cases(rng, images), 4):
        good = [{"text": f"fine {i}"} for i in range(rng.randint(0, 3))]
        position = len(good)
        inputs = [*good, item, *[{"text": "after"}] * rng.randint(0, 2)]
        route = rng.choice(["/encode", "/rank", "/v1/embeddings"])
        if route == "/encode":
            body, index = {"inputs": inputs}, position
        elif route == "/rank":
            body = {"query": inputs[0], "candidates": inputs[1:] or [{"text": "x"}]}
            index = None if position == 0 else position - 1  # /rank names candidates; the query by name
        else:
            ((modality, value),) = item.items()
            if modality != "text" and not value.startswith(("data:", "http")):
                value = f"data:{'image/png' if modality == 'image' else 'audio/wav'};base64," + value
            body = {
                "input": [*[g["text"] for g in good], value],
                "encoding_format": rng.choice(["float", "base64"]),
            }
            index = position
        text = json.dumps(body, ensure_ascii=rng.random() < 0.5)
        encoded = text.encode("utf-8", "surrogatepass")
        out.append(Case(category, route, encoded, statuses | {400, 404}, index))
    return out


def shape_request(rng: random.Random, images: list[bytes]) -> list[Case]:
    """Wrong JSON types and shapes: request-level errors (no item to name, or the item's place)."""
    bodies = [
        ({"inputs": "not a list"}, None),
        ({"inputs": []}, None),
        ({"inputs": None}, None),
        ({"inputs": [1, 2, 3]}, 0),
        ({"inputs": [{"text": "a"}, []]}, 1),
        ({"inputs": [{"text": "a"}, {"text": 5}]}, 1),
        ({"inputs": [{"text": "a"}, {"text": None}]}, 1),
        ({"inputs": [{"text": "a"}, {"text": "b", "image": "c"}]}, 1),
        ({"inputs": [{"text": "a"}, {"colour": "red"}]}, 1),
        ({"inputs": [{"text": "a"}], "extra": True}, None),
        ({"inputs": [{"text": "a"}] * (MAX_ITEMS + rng.randint(1, 5000))}, None),
        ({"query": {"text": "a"}}, None),
        ({"query": [], "candidates": [{"text": "a"}]}, None),
        ({"input": 42}, None),
        ({"input": ["a"], "dimensions": "many"}, None),
        ({"input": ["a"], "model": "\ud800" * 3}, None),
        ({"input": ["a"], "encoding_format": "int8"}, None),
        ([{"text": "a"}], None),
        ("a string", None),
        (None, None),
    ]
    body, index = rng.choice(bodies)
    route = rng.choice(["/encode", "/rank", "/v1/embeddings"])
    encoded = json.dumps(body).encode("utf-8", "surrogatepass")
    # a body meant for another route is a 422 without an item: do not require an index then
    return [
        Case("json-shape", route, encoded, frozenset({404, 413, 422}), index if route == "/encode" else None)
    ]


def raw_request(rng: random.Random, images: list[bytes]) -> list[Case]:
    """Bodies that are not valid JSON or not valid UTF-8, deeply nested, or too large."""
    depth = rng.randint(1_000, 200_000)
    bodies = [
        b'{"inputs": [{"text": "\xff\xfe"}]}',
        b'{"inputs": [{"text": "\xc0\xaf"}]}',
        b'{"inputs": [{"text": "\\ud800"}]}',
        b'{"inputs": [{"text": "a"}',
        b"",
        b"\x00" * rng.randint(1, 1000),
        rng.randbytes(rng.randint(1, 4000)),
        b"[" * depth + b"]" * depth,
        b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}",
        b'{"inputs": [' + b'{"text": "a"},' * 100_000 + b'{"text": "a"}]}',
        b'{"inputs": [{"text": "' + b"x" * (17 * 1024 * 1024) + b'"}]}',
        b'{"inputs": [' + b"{}," * 2_000_000 + b"{}]}",
    ]
    body = rng.choice(bodies)
    return [
        Case("raw-body", rng.choice(["/encode", "/rank", "/v1/embeddings"]), body, frozenset({400, 413, 422}))
    ]


def check(cases: list[Case], outcome) -> tuple[Counter, list[str]]:
    problems: list[str] = []
    seen: Counter = Counter()
    for i, status, body in zip(outcome.indices, outcome.statuses, outcome.bodies, strict=True):
        case = cases[i]
        seen[(case.category, status)] += 1
        if status >= 500 or status not in case.statuses:
            problems.append(f"{case.category} {case.path}: {status} {body[:300]!r}")
            continue
        if 400 <= status < 500:
            answer = json.loads(body)
            error = answer["error"]
            detail = error["message"] if isinstance(error, dict) else answer["detail"]
            index = error["code"] if isinstance(error, dict) else answer["index"]
            if not detail:
                problems.append(f"{case.category}: an empty error detail")
            malformed = detail.startswith("malformed JSON")  # e.g. a lone surrogate: the body, not an item
            if status == 422 and case.index is not None and index != case.index and not malformed:
                problems.append(
                    f"{case.category} {case.path}: index {index}, expected {case.index}: {detail[:200]}"
                )
    return seen, problems


def audioclip_export(workdir: Path) -> str:
    """AudioCLIP's ONNX export of the seeded random checkpoint in the released layout."""
    checkpoint = write_checkpoint(workdir / "AudioCLIP-Full-Training.pt")
    with Encoder(AUDIO_MODEL, weights=checkpoint, cache_dir=workdir) as encoder:
        return str(encoder.info()["weights"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tensor-preprocess", action="store_true", help="fuzz the tensor image path")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="clipserve-fuzz-"))
    weights = random_export(workdir)
    audio_weights = audioclip_export(workdir)
    cases = request_cases(rng, source_images(rng), args.cases)
    flags = ["--allow-url", "--max-items", str(MAX_ITEMS)]
    flags += ["--model", f"{MODEL}={weights}", "--model", f"{AUDIO_MODEL}={audio_weights}"]
    flags += ["--tensor-preprocess"] if args.tensor_preprocess else []
    with server_process(None, *flags) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        start = time.perf_counter()
        requests = [(c.category, c.path, c.body) for c in cases]
        with ConnectionAbuse(port) as abuse:
            outcome = asyncio.run(drive(port, requests, args.clients, keep_bodies=True))
        seconds = time.perf_counter() - start
        seen, problems = check(cases, outcome)
        alive = process.poll() is None
        photos = [png for png in source_images(random.Random(1))[:4]]
        texts = ["a photo of a cat", "a diagram"]
        served = httpx.post(
            f"{url}/encode",
            json={"inputs": [{"text": t} for t in texts] + [{"image": b64(p)} for p in photos]},
        )
        rss = rss_mib(process.pid)
    with Encoder(MODEL, weights=weights, tensor_preprocess=args.tensor_preprocess) as encoder:
        offline = encoder.encode([*texts, *photos])
    vectors = np.asarray(served.json()["embeddings"], np.float32)
    cosine = float((vectors * offline).sum(axis=1).min())

    print(f"{time.strftime('%Y-%m-%d')}, {cpu_description()}")
    print(
        f"{len(cases)} requests in {seconds:.0f} s over {args.clients} connections; server alive: {alive}; "
        f"peak RSS {rss[1]:.0f} MiB"
    )
    statuses = Counter(outcome.statuses)
    print("statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    print("\n| category | status | requests |\n| --- | ---: | ---: |")
    for (category, status), n in sorted(seen.items()):
        print(f"| {category} | {status} | {n} |")
    print(
        f"\n5xx: {sum(n for s, n in statuses.items() if s >= 500)}; problems: {len(problems)}; "
        f"vectors after the run: cosine to offline ≥ {cosine:.6f}"
    )
    for line in abuse.report():
        print(line)
    for problem in problems[:20]:
        print("  " + problem)
    if problems or not alive or cosine < 0.9999:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
