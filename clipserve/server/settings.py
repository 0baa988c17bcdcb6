"""Server configuration: constructor/CLI flags, ``CLIPSERVE_*`` environment variables, a YAML file."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from clipserve.zoo import DEFAULT_MODEL


@dataclass
class ServerSettings:
    """Everything ``clipserve serve`` can be told; each field is also ``--flag`` and ``CLIPSERVE_FLAG``."""

    model: str = DEFAULT_MODEL
    backend: str = "onnx"
    device: str = "cpu"
    precision: str = "fp32"
    weights: str | None = None
    cache_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 51000
    api_key: str | None = None
    allow_url: bool = False
    allow_private_urls: bool = False
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 4096
    max_body_mb: float = 64.0
    max_items: int = 1024
    max_pixels: int = 50_000_000
    max_text_chars: int = 16_384
    num_workers: int | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def replace(self, **changes: Any) -> ServerSettings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


HELP = {
    "model": "zoo name ARCH::TAG",
    "backend": "onnx or torch",
    "device": "cpu, cuda[:N] or tensorrt[:N]; a missing one is an error",
    "precision": "fp32; int8 (onnx, cpu); fp16 (torch, cuda)",
    "weights": "checkpoint file or exported ONNX directory",
    "cache_dir": "download and export cache",
    "host": "address to bind (loopback by default)",
    "port": "port to bind",
    "api_key": "require 'Authorization: Bearer KEY' (all routes but /healthz and the docs)",
    "allow_url": "accept http(s) image URLs (public addresses only)",
    "allow_private_urls": "also fetch from loopback/private/link-local addresses (trusted networks only)",
    "max_batch_size": "most items merged into one model call",
    "max_wait_ms": "longest wait for more items before a batch runs",
    "max_queue": "most items waiting for a batch; beyond it 503 + Retry-After",
    "max_body_mb": "largest request body (413 beyond)",
    "max_items": "most items in one request (413 beyond)",
    "max_pixels": "largest image in pixels (422 beyond)",
    "max_text_chars": "longest text in characters (422 beyond)",
    "num_workers": "image decoding threads (default: CPU count)",
    "ssl_certfile": "TLS certificate (PEM) to serve HTTPS",
    "ssl_keyfile": "TLS private key (PEM)",
}


def _convert(value: str, default: Any, name: str) -> Any:
    kind = type(default) if default is not None else str
    if name == "num_workers":
        kind = int
    if kind is bool:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return kind(value)


def load_settings(config: str | Path | None = None, **flags: Any) -> ServerSettings:
    """Defaults, then the YAML ``config`` file, then ``CLIPSERVE_*`` variables, then ``flags``."""
    settings = ServerSettings()
    known = {f.name: f.default for f in fields(ServerSettings)}
    if config is not None:
        import yaml

        data = yaml.safe_load(Path(config).read_text()) or {}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown settings in {config}: {', '.join(sorted(unknown))}")
        settings = settings.replace(**data)
    env = {
        name: _convert(os.environ[f"CLIPSERVE_{name.upper()}"], default, name)
        for name, default in known.items()
        if f"CLIPSERVE_{name.upper()}" in os.environ
    }
    return settings.replace(**env).replace(**flags)
