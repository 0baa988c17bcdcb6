"""Every setting of clipserve, declared once: a name, a default and a help text.

:class:`EngineSettings` is what an :class:`~clipserve.encoder.Encoder` takes; :class:`ServerSettings`
adds what the HTTP service needs. From these two declarations come the ``Encoder(...)`` keyword
arguments, the ``clipserve`` command-line flags, the ``CLIPSERVE_<NAME>`` environment variables and
the keys of the server's YAML file. Precedence, lowest first: default, YAML file (server), variable,
explicit argument or flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from clipserve.zoo import DEFAULT_MODEL

ENV_PREFIX = "CLIPSERVE_"


def setting(default: Any, help: str, *, flag: bool = True) -> Any:
    """A dataclass field with its help text. ``flag=False`` keeps a secret off the command line
    (``ps`` shows arguments). A list default makes a repeatable flag."""
    factory = (lambda: list(default)) if isinstance(default, list) else None
    meta = {"help": help, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


COMPAT_APIS = ("weaviate", "immich", "tei", "infinity")
"""The other products' APIs a server can answer too (``compat``)."""


@dataclass
class EngineSettings:
    """What to run and the limits on what it accepts; the arguments of ``Encoder``."""

    model: str = setting(
        DEFAULT_MODEL,
        "zoo name ARCH::TAG (`clipserve models` lists them), a transformers model directory or hub repo "
        "(owner/name), a clipserve export, or an OpenAI clip checkpoint file",
    )
    backend: str = setting(
        "auto",
        "onnx (ONNX Runtime; no torch needed once exported), torch, or auto: the faster of the two "
        "that can run the model, measured on its first load on this CPU and remembered in the cache",
    )
    device: str = setting("cpu", "cpu, cuda[:N] or tensorrt[:N] (onnx); a missing one is an error")
    precision: str = setting(
        "fp32",
        "fp32 (exact); int8 (onnx, cpu); bf16 (torch, cpu with AVX512_BF16 or AMX); fp16 (cuda)",
    )
    weights: str | None = setting(
        None,
        "checkpoint file, model directory (open_clip's hub layout, or transformers'), or exported ONNX "
        "directory (else the cache, then the hub)",
    )
    tokenizer: str | None = setting(
        None, "tokenizer directory (tokenizer.json…) when weights is a single file"
    )
    source: str = setting(
        "auto",
        "where a zoo model's weights come from when none are given: checkpoint (exported to ONNX once, "
        "with torch), immich, clip-as-service or fastembed (their published ONNX graphs: no torch), or "
        "auto (without torch, the first of these publishers that has the model; else the checkpoint)",
    )
    image_weights: str | None = setting(
        None, "weights of the image tower of a model that pairs two (M-CLIP): checkpoint or ONNX export"
    )
    cache_dir: str | None = setting(None, "download and export cache (default ~/.cache/clipserve)")
    cache_max_gb: float | None = setting(
        None, "evict the least recently used downloads and exports beyond this size (default: no cap)"
    )
    batch_size: int = setting(32, "most items in one model call")
    warmup: bool = setting(
        True,
        "run one full batch per tower when the model loads, so that the first request does not pay "
        "for the engine's first run (library and server; the CLI's one-shot commands skip it)",
    )
    num_workers: int | None = setting(
        None, "threads decoding images (default: the CPUs this process may use)"
    )
    allow_url: bool = setting(False, "fetch http(s) image URLs (public addresses only)")
    allow_private_urls: bool = setting(
        False, "also fetch from loopback, private and link-local addresses (trusted networks only)"
    )
    fetch_timeout_s: float = setting(10.0, "longest time one URL fetch may take, headers included")
    max_fetch_mb: float = setting(32.0, "largest body one URL fetch may download")
    max_pixels: int = setting(50_000_000, "largest image in pixels, checked before decoding")
    max_aspect_ratio: float = setting(
        100.0, "most extreme image side ratio (a 1 x 10,000,000 strip is refused, not resized)"
    )
    fast_decode: bool = setting(
        False,
        "decode large JPEGs at a reduced scale (libjpeg's DCT scaling) to at least twice the model's "
        "input, then resize exactly: faster, not pixel-exact to open_clip",
    )
    tensor_preprocess: bool = setting(
        False,
        "decode baseline colour JPEGs with torchvision (nvJPEG on CUDA, a batch per call) and resize, "
        "crop and normalise them as tensors on the model's device (torch; onnx by IO binding); close to "
        "open_clip, not pixel-exact",
    )
    text_cache: int = setting(
        0, "keep the vectors of this many recent texts (LRU, exact text); repeats skip the model"
    )
    max_text_chars: int = setting(16_384, "longest text in characters")
    max_audio_s: float = setting(60.0, "longest audio clip in seconds, checked before decoding")
    max_decode_s: float = setting(
        10.0, "longest time decoding one image or audio clip may take; beyond it the item is refused"
    )
    max_decode_mb: float = setting(
        1024.0,
        "most memory the image and audio decodes of this process may hold at once, estimated from "
        "each header; decodes wait for room (one process-wide budget, shared by every model)",
    )

    @property
    def max_fetch_bytes(self) -> int:
        return int(self.max_fetch_mb * 1024 * 1024)


MODEL_WEIGHTS_SEPARATOR = "="
"""``NAME=PATH`` in the server's model list: that model's weights (zoo names hold no ``=``)."""
PER_MODEL_FILES = ("weights", "tokenizer", "image_weights")


@dataclass
class RaySettings:
    """Where a model runs on Ray: ``serve --ray`` (Ray Serve replicas) and ``encode --ray`` (Ray
    Data actors) alike, each replica one copy of the model with its share of the cluster."""

    ray: bool = setting(
        False,
        "run on Ray (ray extra): serve on Ray Serve, or encode on Ray Data (a rerun resumes the job); "
        "replicas across CPUs, GPUs and nodes",
    )
    ray_address: str | None = setting(
        None, "Ray cluster to join, e.g. ray://head:10001 or auto (default: start a local Ray)"
    )
    replicas: int = setting(1, "Ray: copies of the model working in parallel (each holds one)")
    replica_cpus: float = setting(1.0, "Ray: CPUs reserved per replica (its decode and inference threads)")
    replica_gpus: float = setting(0.0, "Ray: GPUs per replica (with device cuda)")


@dataclass
class EncodeSettings(RaySettings, EngineSettings):
    """Everything ``clipserve encode`` can be told: the engine, and where it runs on Ray."""

    shard_size: int = setting(1024, "Ray: inputs per parquet part of an encode job")

    def engine(self) -> EngineSettings:
        """The engine part, as an ``Encoder`` takes it."""
        return EngineSettings(**{f.name: getattr(self, f.name) for f in fields(EngineSettings)})


@dataclass
class ServerSettings(RaySettings, EngineSettings):
    """Everything ``clipserve serve`` can be told."""

    model: list[str] = setting(  # noqa: RUF009 (a list default becomes a default_factory)
        [DEFAULT_MODEL],
        "model(s) to serve, the first answering requests that name none; repeat the flag (or "
        "comma-separate) for several, NAME=PATH gives one its weights",
    )
    preload: bool = setting(False, "load every model at start (the first one always is); else on first use")
    model_ttl: float = setting(
        0.0, "unload a model idle this many seconds (0: never); the next request loads it again"
    )
    max_memory_gb: float | None = setting(
        None, "most resident memory of the server: a model whose load would pass it is refused (503)"
    )
    memory_policy: str = setting(
        "refuse",
        "when a model does not fit max_memory_gb: refuse (503), or evict (unload the least recently "
        "used idle models first)",
    )
    min_residency_s: float = setting(
        30.0,
        "evict: a model stays loaded at least this long before another may evict it (503 meanwhile), "
        "so alternating requests cannot make the server load models back to back",
    )
    host: str = setting("127.0.0.1", "address to bind (loopback by default)")
    port: int = setting(51000, "port to bind")
    api_key: str | None = setting(
        None,
        "require 'Authorization: Bearer KEY' (all routes but /healthz and the docs); from "
        "CLIPSERVE_API_KEY or the YAML file only, never a flag: `ps` shows flags",
        flag=False,
    )
    api_key_file: str | None = setting(None, "file holding the API key (first line)")
    max_wait_ms: float = setting(5.0, "longest wait for more items before a batch runs")
    max_queue: int = setting(512, "most items waiting for a batch; beyond it 503 + Retry-After")
    max_body_mb: float = setting(16.0, "largest request body (413 beyond)")
    max_items: int = setting(1024, "most items in one request (413 beyond)")
    max_urls: int = setting(16, "most URL items in one request (413 beyond)")
    max_request_fetch_mb: float = setting(64.0, "most bytes the URL items of one request may download")
    max_inflight_items: int = setting(
        2048,
        "most items being prepared or embedded at once (an audio clip counts as the memory of the "
        "5-second windows it may hold, 6 items each); a request heavier than this alone is 413, "
        "more at once 503 + Retry-After",
    )
    max_inflight_mb: float = setting(
        128.0,
        "most request-body bytes being handled at once, counted as they arrive; beyond it 503 + Retry-After",
    )
    body_timeout_s: float = setting(
        60.0, "longest time a request body may take to arrive; beyond it 408 and the connection closes"
    )
    header_timeout_s: float = setting(
        10.0, "longest time a request's headers may take to arrive; beyond it the connection closes"
    )
    max_connections: int = setting(
        1000, "most open connections and requests at once; beyond it new requests get 503"
    )
    playground: bool = setting(True, "serve the browser playground at / and /playground")
    index: str | None = setting(
        None,
        "a search index directory (`clipserve index` builds one) to serve at /search and clip-retrieval's "
        "/knn-service; its model is served (the default model list becomes it)",
    )
    compat: list[str] = setting(  # noqa: RUF009 (a list default becomes a default_factory)
        [],
        "also answer other products' APIs: weaviate (multi2vec-clip), immich (machine learning), tei "
        "(text-embeddings-inference), infinity; comma-separated; none by default",
    )
    cors_origins: list[str] = setting(  # noqa: RUF009 (a list default becomes a default_factory)
        [], "origins whose browser pages may call this API (e.g. clip-retrieval's front end)"
    )
    ssl_certfile: str | None = setting(None, "TLS certificate (PEM) to serve HTTPS")
    ssl_keyfile: str | None = setting(None, "TLS private key (PEM)")
    min_replicas: int = setting(1, "Ray autoscaling: fewest replicas (with max_replicas)")
    max_replicas: int = setting(0, "Ray autoscaling: most replicas; 0 keeps `replicas` fixed")
    target_ongoing_requests: float = setting(
        16.0, "Ray autoscaling: requests in flight per replica to aim for (batching wants several)"
    )
    max_ongoing_requests: int = setting(
        128, "Ray: most requests a replica takes at once; more wait in Ray's queue"
    )
    ray_request_timeout_s: float = setting(
        120.0, "Ray: longest time a request may take end to end; beyond it 503 (e.g. its replica died)"
    )

    def __post_init__(self) -> None:
        if isinstance(self.model, str):  # ServerSettings(model="A,B") as the flag, variable or YAML say it
            self.model = convert(ServerSettings, "model", self.model)
        entries = [self.compat] if isinstance(self.compat, str) else self.compat  # a flag repeats, or lists
        self.compat = [name.strip().lower() for entry in entries for name in entry.split(",") if name.strip()]
        if unknown := [name for name in self.compat if name not in COMPAT_APIS]:
            raise ValueError(f"compat APIs are {', '.join(COMPAT_APIS)}; unknown: {', '.join(unknown)}")
        if self.memory_policy not in ("refuse", "evict"):
            raise ValueError(f"memory_policy must be refuse or evict, got {self.memory_policy!r}")

    def engines(self) -> list[EngineSettings]:
        """One engine per served model, the default first; ``NAME=PATH`` entries carry their weights."""
        if not self.model:
            raise ValueError("give at least one model")
        shared = {f.name: getattr(self, f.name) for f in fields(EngineSettings) if f.name != "model"}
        if len(self.model) > 1:
            given = [name for name in PER_MODEL_FILES if shared[name] is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} apply to one model; with several, give each its weights "
                    "as --model NAME=PATH"
                )
        engines = []
        for entry in self.model:
            name, separator, weights = entry.partition(MODEL_WEIGHTS_SEPARATOR)
            if separator and not weights:
                raise ValueError(f"no weights path after {MODEL_WEIGHTS_SEPARATOR!r} in {entry!r}")
            chosen = {"weights": weights} if separator else {}
            engines.append(EngineSettings(**{**shared, "model": name.strip(), **chosen}))
        return engines

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * 1024 * 1024)

    @property
    def max_request_fetch_bytes(self) -> int:
        return int(self.max_request_fetch_mb * 1024 * 1024)

    def resolved_api_key(self) -> str | None:
        """The API key from ``api_key`` or ``api_key_file`` (not both)."""
        if self.api_key_file is None:
            return self.api_key
        if self.api_key is not None:
            raise ValueError("give the API key once: api_key or api_key_file, not both")
        key = Path(self.api_key_file).expanduser().read_text().strip().splitlines()
        if not key or not key[0]:
            raise ValueError(f"the API key file {self.api_key_file} is empty")
        return key[0]


S = typing.TypeVar("S", bound=EngineSettings)


def value_type(kind: type[EngineSettings], name: str) -> type:
    """The plain type of a setting (``int`` for ``int | None``, ``str`` for a list of str)."""
    hint = typing.get_type_hints(kind)[name]
    if is_list(kind, name):
        return typing.get_args(hint)[0]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def is_list(kind: type[EngineSettings], name: str) -> bool:
    """True for a setting holding a list (a repeatable flag)."""
    return typing.get_origin(typing.get_type_hints(kind)[name]) is list


def convert(kind: type[EngineSettings], name: str, value: Any) -> Any:
    """``value`` (often a string from a variable) as the setting's type; a list setting takes a
    list, one value, or a comma-separated string."""
    if is_list(kind, name) and value is not None:
        values = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
        return [convert_one(kind, name, v.strip() if isinstance(v, str) else v) for v in values]
    return convert_one(kind, name, value)


def convert_one(kind: type[EngineSettings], name: str, value: Any) -> Any:
    target = value_type(kind, name)
    if value is None or (isinstance(value, target) and not (target is int and isinstance(value, bool))):
        return value
    if target is bool:
        text = str(value).strip().lower()
        if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return text in ("1", "true", "yes", "on")
    try:
        return target(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be {target.__name__}, got {value!r}") from exc


def check_names(kind: type[EngineSettings], names: typing.Iterable[str], where: str) -> None:
    """Refuse unknown setting names, suggesting close ones."""
    known = [f.name for f in fields(kind)]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise TypeError(f"unknown setting {name!r} in {where}{hint}")


def from_environment(kind: type[EngineSettings]) -> dict[str, Any]:
    """The ``CLIPSERVE_<NAME>`` variables that are set, converted."""
    values = {}
    for f in fields(kind):
        variable = ENV_PREFIX + f.name.upper()
        if variable in os.environ:
            values[f.name] = convert(kind, f.name, os.environ[variable])
    return values


def resolve(kind: type[S], config: str | Path | None = None, **explicit: Any) -> S:
    """Defaults, then the YAML ``config`` file, then ``CLIPSERVE_*`` variables, then ``explicit``
    (arguments or flags; ``None`` means not given)."""
    check_names(kind, explicit, "arguments")
    values: dict[str, Any] = {}
    if config is not None:
        import yaml

        data = yaml.safe_load(Path(config).read_text()) or {}
        try:
            check_names(kind, data, str(config))
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        values.update({name: convert(kind, name, value) for name, value in data.items()})
    values.update(from_environment(kind))
    values.update({name: convert(kind, name, v) for name, v in explicit.items() if v is not None})
    return kind(**values)


def replace(settings: S, **changes: Any) -> S:
    """A copy with ``changes`` applied (``None`` values ignored)."""
    return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})


def options_doc(kind: type[EngineSettings]) -> str:
    """One line per setting: ``name (default): help``, for docstrings."""
    return "\n".join(f"    {f.name} ({_default(f)!r}): {f.metadata['help']}" for f in fields(kind))


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default
