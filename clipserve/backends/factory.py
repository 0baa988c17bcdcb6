"""Pick a backend and give it weights: checkpoint for torch, an ONNX export for onnx."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

from clipserve.backends.base import Backend, check_engine
from clipserve.backends.precision import variant
from clipserve.backends.published import SOURCES, published_fp32, sources_of
from clipserve.cache import content_fingerprint, touch
from clipserve.errors import UnsupportedModel, WeightsUnavailable
from clipserve.weights import (
    CHECKPOINT_NAMES,
    ONNX_MARKER,
    OPEN_CLIP_CONFIG,
    explicit_weights,
    find_checkpoint,
    is_current_export,
    is_onnx_dir,
    onnx_cache,
    read_export_meta,
)
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch")
WEIGHT_SOURCES = ("auto", "checkpoint", *SOURCES)
"""Where a model's weights come from when none are given: ``checkpoint`` (the zoo's, exported to
ONNX once with torch), a publisher's ready ONNX graphs, or ``auto`` (the checkpoint; without
torch, the first publisher that has the model)."""


def create_backend(
    spec: ModelSpec,
    backend: str,
    device: str,
    weights: str | os.PathLike[str] | None,
    precision: str,
    cache: Path,
    spin: bool = True,
    tokenizer_dir: Path | None = None,
    towers: tuple[str, ...] = ("image", "text"),
    source: str = "auto",
) -> Backend:
    """Build ``backend`` for ``spec`` on ``device``, locating (and for onnx, exporting) weights.

    ``weights`` is a checkpoint file, a directory in the hub layout, or (onnx) an export directory;
    ``None`` means the cache, then a download. ``spin`` lets idle ONNX Runtime threads busy-wait
    between text kernels (faster offline text; wasteful when other work, such as a server's
    request handling, shares the cores). ``tokenizer_dir`` is copied into a new export. With
    onnx, only the ``towers`` asked for are loaded. ``source`` says where weights come from when
    none are given (:data:`WEIGHT_SOURCES`).
    """
    explicit = explicit_weights(spec, weights) if weights is not None else None
    path = backend_weights(
        spec, backend, device, precision, explicit, cache, tokenizer_dir=tokenizer_dir, source=source
    )
    if backend == "torch":
        from clipserve.backends.torch import TorchBackend

        return TorchBackend(spec, path, device, precision)
    from clipserve.backends.onnx import OnnxBackend

    return OnnxBackend(spec, path, device, precision, spin, towers)


def backend_weights(
    spec: ModelSpec,
    backend: str,
    device: str,
    precision: str,
    given: Path | None,
    cache: Path,
    *,
    exporter: Callable[[ModelSpec, Path, Path], Path] | None = None,
    tokenizer_dir: Path | None = None,
    source: str = "auto",
) -> Path:
    """What ``backend`` runs for ``spec``: the one loader of every family.

    An unknown backend, or a precision it lacks or does not run on ``device``, is refused before
    any weights are looked for. torch runs a checkpoint: ``given``, else the cached one (downloaded
    when allowed), never an ONNX export. onnx runs an export in ``precision``
    (:func:`onnx_model_dir`, with the family's ``exporter``, or from a publisher's graphs per
    ``source``), once the device's execution provider is known to be there.
    """
    if backend not in BACKENDS:
        raise UnsupportedModel(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if source not in WEIGHT_SOURCES:
        raise UnsupportedModel(f"unknown weight source {source!r}; choose one of {', '.join(WEIGHT_SOURCES)}")
    check_engine(precision, backend, device)
    if backend == "torch":
        if given is not None and is_onnx_dir(given):
            raise UnsupportedModel(f"the torch backend runs a checkpoint, and {given} is an ONNX export")
        if source in SOURCES:
            raise UnsupportedModel(f"the torch backend runs a checkpoint, not {source}'s ONNX graphs")
        return given or find_checkpoint(spec, cache)
    from clipserve.backends.onnx import execution_providers

    execution_providers(device)  # a missing provider is said before any export or conversion
    published = _published_source(spec, given, source, exporter)
    return onnx_model_dir(spec, given, cache, precision, tokenizer_dir, exporter, published)


def _published_source(
    spec: ModelSpec, given: Path | None, source: str, exporter: Callable | None
) -> str | None:
    """The publisher whose graphs to read for ``spec``: the one named, or with ``auto`` the first
    that has the model (immich, clip-as-service, fastembed) when torch, which an export of the
    checkpoint needs, is not installed; None for the checkpoint."""
    if given is not None or source == "checkpoint":
        return None
    if source in SOURCES:
        if exporter is not None or spec.family != "open_clip":
            raise UnsupportedModel(
                f"{spec.name}: {source}'s published graphs are read for open_clip models only"
            )
        return source
    if exporter is None and spec.family == "open_clip" and not torch_installed():
        return next(iter(sources_of(spec)), None)
    return None


def torch_installed() -> bool:
    """True when torch can be imported here (an ONNX export of a checkpoint needs it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a finder that refuses torch outright
        return False


def onnx_model_dir(
    spec: ModelSpec,
    explicit: Path | None,
    cache: Path,
    precision: str = "fp32",
    tokenizer_dir: Path | None = None,
    exporter: Callable[[ModelSpec, Path, Path], Path] | None = None,
    published: str | None = None,
) -> Path:
    """An ONNX export of ``spec`` in ``precision``: given, cached, or made once into the cache.

    fp32 is exported from the checkpoint (needs torch) by ``exporter(spec, checkpoint, target)``
    (a family's own; default :func:`export_fp32`); int8 and fp16 are derived from the fp32 export
    (ONNX Runtime only) and cached beside it. Cache entries of local weights are keyed by content.
    With ``published`` (a publisher), fp32 is that publisher's graphs, made into an export.
    """
    if explicit is not None and is_onnx_dir(explicit):
        given = read_export_meta(explicit)["precision"]
        if given == precision:
            return explicit
        if given != "fp32":
            raise UnsupportedModel(
                f"{explicit} is a {given} export: run it with precision={given!r} (--precision {given}); "
                f"for {precision}, pass an fp32 export ({precision} is derived from fp32)"
            )
        fp32_dir = explicit
        target = onnx_cache(spec, cache, fingerprint(explicit, cache), variant(precision))
    elif published is not None:
        fp32_dir = published_fp32(spec, published, cache)
        target = onnx_cache(spec, cache, fp32_dir.parent.name, variant(precision))
    else:
        source = fingerprint(explicit, cache) if explicit is not None else spec.tag
        fp32_dir = onnx_cache(spec, cache, source, "fp32")
        if not is_current_export(fp32_dir):
            checkpoint = explicit or find_checkpoint(spec, cache)
            if exporter is None:
                export_fp32(spec, checkpoint, fp32_dir, tokenizer_dir)
            else:
                exporter(spec, checkpoint, fp32_dir)
        target = onnx_cache(spec, cache, source, variant(precision))
    if precision != "fp32" and not _derived_from_current(target, fp32_dir):
        from clipserve.backends.precision import derive

        derive(precision, fp32_dir, target)
    used = fp32_dir if precision == "fp32" else target
    touch(used)
    return used


KEY_FILES = (
    ONNX_MARKER,
    "image.onnx",
    "text.onnx",
    OPEN_CLIP_CONFIG,
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    *CHECKPOINT_NAMES,
    "tokenizer.json",
)
"""The files whose content identifies a model directory (an export, the open_clip hub layout, a
transformers model)."""


def fingerprint(path: Path, cache: Path) -> str:
    """A content key of local weights: a checkpoint file, or the key files of a directory."""
    if path.is_file():
        return content_fingerprint(path, cache)
    parts = [content_fingerprint(path / name, cache) for name in KEY_FILES if (path / name).is_file()]
    return "sha-" + hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


def _derived_from_current(target: Path, fp32_dir: Path) -> bool:
    """True when ``target`` was derived from ``fp32_dir`` as it is now: same export format, and the
    towers quantised as they are now (an int8 export from before AudioCLIP's audio tower stayed
    fp32 is derived again)."""
    from clipserve.backends.precision import quantised_towers

    if not is_onnx_dir(target):
        return False
    derived, source = read_export_meta(target), read_export_meta(fp32_dir)
    return derived.get("export_format") == source.get("export_format") and derived.get(
        "quantised"
    ) == quantised_towers(fp32_dir)


def export_fp32(spec: ModelSpec, checkpoint: Path, target: Path, tokenizer_dir: Path | None = None) -> Path:
    """Export ``checkpoint`` to ONNX fp32 in ``target``; explains when torch is missing."""
    try:
        from clipserve.backends.export import export_onnx
    except ImportError as exc:
        publishers = sources_of(spec)
        instead = (
            f"; or, without these weights, read a publisher's graphs of it (source={publishers[0]!r})"
            if publishers
            else f"; no publisher clipserve reads has ONNX graphs of {spec.name}"
        )
        raise WeightsUnavailable(
            f"{spec.name} has a checkpoint ({checkpoint}) but no ONNX export in {target}, and exporting "
            f"needs torch ({exc}). Install `clipserve[torch]` once, or pass an exported ONNX directory"
            f"{instead}."
        ) from exc
    log.info("exporting %s to ONNX once, into %s", spec.name, target)
    return export_onnx(spec, checkpoint, target, tokenizer_dir)
