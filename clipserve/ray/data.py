"""Bulk embedding on Ray Data.

- :class:`EmbedBatch`: a callable class for ``Dataset.map_batches`` that embeds one column (image
  bytes or paths, texts, audio) into a vector column, with an ``error`` column for bad rows.
- :func:`run_job` (``clipserve encode SOURCE --ray``): files, globs, parquet and texts to a
  directory of parquet parts (``id``, ``vector``), one per shard of the input, written by the
  actors themselves. A part appears only once complete, so a rerun after an interruption embeds
  only the shards whose part is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.encoder import Encoder
from clipserve.errors import ClipserveError
from clipserve.files import collect_files, write_atomically, write_vectors
from clipserve.preprocess.audio import is_audio_path
from clipserve.settings import EncodeSettings, EngineSettings

MANIFEST = "_clipserve_job.json"
PART = "part-{:06d}.parquet"
ERRORS = "_errors/part-{:06d}.json"
"""The bad items of a part, in a ``_`` folder: parquet readers (pyarrow, pandas, DuckDB, Ray) read
the output directory whole and skip names starting with ``_`` or ``.``."""
LEGACY_ERRORS = "part-*.errors.json"
"""Where earlier versions wrote them, beside the parts (readers choked on them)."""


class EmbedBatch:
    """``ds.map_batches(EmbedBatch, fn_constructor_kwargs={"column": "image", "model": …},
    concurrency=N, batch_size=B, num_gpus=G)``.

    Each actor loads the model once. ``column`` holds image or audio bytes or paths (``modality``
    None: detected per value) or texts (``modality="text"``: every string is text). The output keeps
    the other columns, drops the input column, and adds ``vector`` (float32 ``[dim]``, zeros for a
    bad row) and ``error`` (empty, or why the row could not be embedded). Options are
    :class:`~clipserve.Encoder`'s settings.
    """

    def __init__(
        self,
        column: str = "image",
        modality: str | None = None,
        output_column: str = "vector",
        **options: Any,
    ) -> None:
        self.column, self.modality, self.output_column = column, modality, output_column
        self.encoder = Encoder(**options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors, errors = embed_values(self.encoder, list(batch[self.column]), self.modality)
        out = {name: values for name, values in batch.items() if name != self.column}
        out[self.output_column] = vectors
        out["error"] = np.asarray(errors, dtype=object)
        return out


def embed_values(
    encoder: Encoder, values: Sequence[Any], modality: str | None
) -> tuple[np.ndarray, list[str]]:
    """Vectors of ``values`` (rows of zeros where bad) and each row's error (empty when fine)."""
    result = encoder.encode_lenient(values, modality=modality)
    vectors = np.zeros((len(values), encoder.dim), dtype=np.float32)
    vectors[result.indices] = result.vectors
    errors = [""] * len(values)
    for error in result.errors:
        errors[error.index] = error.reason
    return vectors, errors


@dataclass(frozen=True)
class Entry:
    """One input of a job: its id, its value (a path, bytes or a text) and its modality (None:
    detected from the value)."""

    id: str
    value: Any
    modality: str | None


@dataclass
class JobReport:
    """What :func:`run_job` did."""

    output: Path
    shards: int
    skipped_shards: int
    vectors: int
    errors: list[tuple[str, str]]
    """``(id, reason)`` of each input that could not be embedded, over all parts."""


def run_job(
    entries: Sequence[Entry], output: Path, settings: EncodeSettings, *, progress: bool = True
) -> JobReport:
    """Embed ``entries`` into ``output``/part-NNNNNN.parquet, one part per ``settings.shard_size``
    entries, in input order, on ``settings.replicas`` Ray Data actors (each with ``replica_cpus``
    and ``replica_gpus``, on the cluster at ``ray_address``); parts already there are kept (the job
    resumes). Needs the ``ray`` extra."""
    import ray
    from tqdm import tqdm

    if not entries:
        raise ClipserveError("nothing to encode")
    shard_size = settings.shard_size
    output.mkdir(parents=True, exist_ok=True)
    _check_manifest(output, entries, settings)
    _move_legacy_error_lists(output)
    shards = [entries[start : start + shard_size] for start in range(0, len(entries), shard_size)]
    todo = [number for number in range(len(shards)) if not (output / PART.format(number)).is_file()]
    if todo:
        if not ray.is_initialized():
            ray.init(address=settings.ray_address, log_to_driver=False)
        tasks = ray.data.from_items(
            [
                {
                    "shard": number,
                    "ids": [e.id for e in shards[number]],
                    "values": [_portable(e.value) for e in shards[number]],
                    "modalities": [e.modality or "" for e in shards[number]],
                }
                for number in todo
            ],
            override_num_blocks=len(todo),
        )
        written = tasks.map_batches(
            ShardWriter,
            fn_constructor_kwargs={"settings": settings.engine(), "output": str(output)},
            batch_size=1,
            concurrency=settings.replicas,
            num_cpus=settings.replica_cpus,
            num_gpus=settings.replica_gpus,
        )
        with tqdm(
            total=sum(len(shards[n]) for n in todo), unit="item", desc="encoding", disable=not progress
        ) as bar:
            for row in written.iter_rows():
                bar.update(int(row["count"]))
    return _report(output, len(shards), len(shards) - len(todo))


class ShardWriter:
    """A Ray Data actor: embeds whole shards and writes each one's part (and its errors)."""

    def __init__(self, settings: EngineSettings, output: str) -> None:
        self.encoder = Encoder(settings=settings)
        self.output = Path(output)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = []
        for number, ids, values, modalities in zip(
            batch["shard"], batch["ids"], batch["values"], batch["modalities"], strict=True
        ):
            counts.append(self._write(int(number), list(ids), list(values), list(modalities)))
        return {"shard": batch["shard"], "count": np.asarray(counts)}

    def _write(self, number: int, ids: list[str], values: list[Any], modalities: list[str]) -> int:
        vectors = np.zeros((len(values), self.encoder.dim), dtype=np.float32)
        errors = [""] * len(values)
        for modality in dict.fromkeys(modalities):
            rows = [i for i, m in enumerate(modalities) if m == modality]
            got, reasons = embed_values(self.encoder, [values[i] for i in rows], modality or None)
            vectors[rows] = got
            for row, reason in zip(rows, reasons, strict=True):
                errors[row] = reason
        good = [i for i, reason in enumerate(errors) if not reason]
        bad = [{"id": ids[i], "error": errors[i]} for i in range(len(ids)) if errors[i]]
        write_atomically(self.output / ERRORS.format(number), json.dumps(bad, ensure_ascii=False))
        _write_parquet(self.output / PART.format(number), vectors[good], [ids[i] for i in good])
        return len(values)


def entries_from(
    sources: Iterable[Path], texts: Sequence[str], wanted: Callable[[Path], bool]
) -> list[Entry]:
    """Entries of files (folders searched, globs expanded), parquet tables and ``texts``.

    A parquet source gives one entry per row: its ``id`` column (else file:row) and the first of
    the columns ``text`` (texts), ``image``/``audio``/``bytes`` (file bytes) or ``path``.
    """
    entries: list[Entry] = []
    files: list[Path] = []
    for source in sources:
        if source.suffix == ".parquet" and source.is_file():
            entries.extend(_parquet_entries(source))
        elif any(c in str(source) for c in "*?["):
            files.extend(sorted(p for p in Path().glob(str(source)) if p.is_file() and wanted(p)))
        else:
            files.extend(collect_files([source], wanted))
    entries.extend(Entry(str(path), str(path.resolve()), _file_modality(path)) for path in files)
    entries.extend(Entry(f"text:{text}", text, "text") for text in texts)
    return entries


def _parquet_entries(path: Path) -> list[Entry]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = table.column_names
    column = next((c for c in ("text", "image", "audio", "bytes", "path") if c in columns), None)
    if column is None:
        raise ClipserveError(f"{path}: no column to embed (text, image, audio, bytes or path); has {columns}")
    values = table.column(column).to_pylist()
    ids = table.column("id").to_pylist() if "id" in columns else [f"{path}:{i}" for i in range(len(values))]
    if column == "path":  # a path is never text: a missing file is an error, not a caption
        return [Entry(str(i), v, _file_modality(Path(v))) for i, v in zip(ids, values, strict=True)]
    modality = "text" if column == "text" else None
    return [Entry(str(i), v, modality) for i, v in zip(ids, values, strict=True)]


def _file_modality(path: Path) -> str:
    return "audio" if is_audio_path(path) else "image"


def _portable(value: Any) -> Any:
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else value


def _check_manifest(output: Path, entries: Sequence[Entry], settings: EncodeSettings) -> None:
    """A job directory belongs to one input and one model: a rerun must match them."""
    digest = hashlib.sha256("\n".join(e.id for e in entries).encode()).hexdigest()
    manifest = {
        "model": settings.model,
        "precision": settings.precision,
        "items": len(entries),
        "shard_size": settings.shard_size,
        "ids_sha256": digest,
    }
    path = output / MANIFEST
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != manifest:
            changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
            raise ClipserveError(
                f"{output} holds a job with other {', '.join(changed)}; resume it with the same "
                "inputs and settings, or write to a new directory"
            )
        return
    write_atomically(path, json.dumps(manifest, indent=1))


def _report(output: Path, shards: int, skipped: int) -> JobReport:
    import pyarrow.parquet as pq

    vectors = sum(pq.read_metadata(output / PART.format(n)).num_rows for n in range(shards))
    errors = [
        (bad["id"], bad["error"])
        for n in range(shards)
        for bad in json.loads((output / ERRORS.format(n)).read_text())
    ]
    return JobReport(output, shards, skipped, vectors, errors)


def _move_legacy_error_lists(output: Path) -> None:
    """Error lists an earlier version left beside the parts go where readers skip them."""
    for legacy in output.glob(LEGACY_ERRORS):
        number = int(legacy.name.split("-")[1].split(".")[0])
        target = output / ERRORS.format(number)
        target.parent.mkdir(exist_ok=True)
        os.replace(legacy, target)


def _write_parquet(path: Path, vectors: np.ndarray, ids: list[str]) -> None:
    staging = path.with_name(f".{path.stem}.{os.getpid()}.tmp.parquet")  # complete parts only
    write_vectors(staging, vectors, ids)
    os.replace(staging, path)


__all__ = ["EmbedBatch", "Entry", "JobReport", "embed_values", "entries_from", "run_job"]
