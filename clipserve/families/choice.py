"""``backend="auto"`` (the default): the fastest exact backend for this CPU and model.

The rules come first, with nothing loaded (:func:`candidates`): an ONNX export, a publisher's graphs,
int8 or TensorRT run on ONNX Runtime only, bf16 on torch only, and without torch installed there is
only ONNX Runtime. Where both remain, the first load measures them (:func:`load_chosen`): each
backend is loaded and runs a few batches of sample inputs through every tower, and the faster one
is kept (the other is closed). The choice is remembered in the cache directory, keyed by the CPU
(model name, the instruction sets that matter, CPUs this process may use), the engines' versions,
the model, its weights, precision and device, so that later loads measure nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from clipserve.backends.base import PRECISION_DEVICES, check_engine
from clipserve.backends.factory import BACKENDS, torch_installed
from clipserve.backends.published import SOURCES
from clipserve.families import load_model
from clipserve.families.base import Model
from clipserve.families.probe import seconds_per_batch
from clipserve.resources import available_cpus, cpu_flags, cpu_model
from clipserve.settings import EngineSettings
from clipserve.weights import cache_dir, is_onnx_dir
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)

AUTO = "auto"
CHOICES_FILE = "backend-choices.json"
MEASURED_RUNS = 2
"""Timed model calls per tower and backend (after one untimed call)."""
SIGNATURE_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""The instruction sets that change which engine is faster."""


def candidates(settings: EngineSettings) -> tuple[str, ...]:
    """The backends that can run ``settings`` (as :func:`~clipserve.families.resolve_model` returns
    them), by the rules alone (nothing is loaded): the one named, or for ``auto`` those of
    :data:`BACKENDS` that could."""
    if settings.backend != AUTO:
        return (settings.backend,)
    kind = settings.device.split(":")[0]
    offered = [b for b in BACKENDS if kind in PRECISION_DEVICES[b].get(settings.precision, ())]
    onnx_only = (
        not torch_installed()
        or settings.source in SOURCES
        or any(
            path is not None and is_onnx_dir(Path(path))
            for path in (settings.weights, settings.image_weights)
        )
    )
    if onnx_only:
        offered = [b for b in offered if b == "onnx"]
    if not offered:  # the refusal of the backend that would run it, with its reason
        check_engine(settings.precision, "torch" if settings.precision == "bf16" else "onnx", settings.device)
        raise AssertionError("check_engine refuses what no backend offers")  # pragma: no cover
    return tuple(offered)


def settled(settings: EngineSettings) -> EngineSettings:
    """``settings`` with ``auto`` replaced by the backend when the rules leave only one."""
    found = candidates(settings)
    return dataclasses.replace(settings, backend=found[0]) if len(found) == 1 else settings


def load_chosen(spec: ModelSpec, settings: EngineSettings, spin: bool = True) -> tuple[Model, dict | None]:
    """The model of ``spec``: on the backend named, or with ``auto`` on the fastest of its
    :func:`candidates`, with how it was chosen (None when it was named):
    ``{"backend", "how": "only one" | "remembered" | "measured", "ms_per_item": {backend: ms}}``."""
    if settings.backend != AUTO:
        return load_model(spec, settings, spin), None
    found = candidates(settings)
    if len(found) == 1:
        return load_model(spec, dataclasses.replace(settings, backend=found[0]), spin), {
            "backend": found[0],
            "how": "only one",
        }
    store = Path(cache_dir(settings.cache_dir)) / CHOICES_FILE
    key = signature(spec, settings)
    remembered = _read(store).get(key)
    if remembered is not None and remembered.get("backend") in found:
        chosen = remembered["backend"]
        log.info("backend auto: %s, as measured on this CPU before (%s)", chosen, store)
        model = load_model(spec, dataclasses.replace(settings, backend=chosen), spin)
        return model, {"backend": chosen, "how": "remembered", "ms_per_item": remembered["ms_per_item"]}
    best: tuple[float, str, Model] | None = None
    timings: dict[str, float] = {}
    for backend in found:
        model = load_model(spec, dataclasses.replace(settings, backend=backend), spin)
        try:
            timings[backend] = ms_per_item(model, settings)
        except BaseException:
            model.close()
            if best is not None:
                best[2].close()
            raise
        if best is None or timings[backend] < best[0]:
            if best is not None:
                best[2].close()
            best = (timings[backend], backend, model)
        else:
            model.close()
    assert best is not None
    chosen = best[1]
    log.info(
        "backend auto: %s (measured ms per item, every tower: %s)",
        chosen,
        ", ".join(f"{b} {ms:.1f}" for b, ms in timings.items()),
    )
    entry = {"backend": chosen, "ms_per_item": {b: round(ms, 2) for b, ms in timings.items()}}
    _write(store, key, {**entry, "cpu": cpu_model(), "model": spec.name, "at": time.strftime("%Y-%m-%d")})
    return best[2], {**entry, "how": "measured"}


def ms_per_item(model: Model, settings: EngineSettings) -> float:
    """Milliseconds per item of the model's towers together, each at the batch it runs at."""
    total = 0.0
    for tower in model.towers.values():
        size = min(settings.batch_size, tower.max_batch or settings.batch_size)
        total += seconds_per_batch(tower, size, MEASURED_RUNS) / size
    return total * 1000


def signature(spec: ModelSpec, settings: EngineSettings) -> str:
    """What a remembered choice holds for: this CPU and engines, and this model as configured."""
    flags = ",".join(f for f in SIGNATURE_FLAGS if f in cpu_flags())
    parts = [
        cpu_model(),
        flags,
        str(available_cpus()),
        *(_version(package) for package in ("onnxruntime", "torch", "open_clip_torch", "transformers")),
        spec.name,
        str(settings.weights),
        str(settings.image_weights),
        settings.precision,
        settings.device,
        str(settings.tensor_preprocess),
        str(settings.batch_size),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _version(package: str) -> str:
    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return f"{package} -"


def _read(store: Path) -> dict:
    try:
        choices = json.loads(store.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}
    return choices if isinstance(choices, dict) else {}


def _write(store: Path, key: str, entry: dict) -> None:
    """Add ``entry`` under ``key``, atomically (concurrent loads may write at once: last one wins)."""
    choices = {**_read(store), key: entry}
    written = None
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=store.parent, delete=False, suffix=".tmp") as f:
            written = Path(f.name)
            json.dump(choices, f, indent=1)
        os.replace(written, store)
    except OSError as exc:  # a read-only cache: measure again next time
        log.warning("could not remember the backend choice in %s: %s", store, exc)
        if written is not None:
            written.unlink(missing_ok=True)
