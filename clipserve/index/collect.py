"""What ``clipserve index`` is given, as index entries: files, folders (searched recursively),
globs, parquet tables of ids and texts, and the vectors a Ray Data job wrote.

A file's id is its absolute path, and its root the folder (or glob's base) it was found under: the
server serves thumbnails from those roots only. A text's id is the table's ``id`` column.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clipserve.errors import ClipserveError
from clipserve.index.store import Entry
from clipserve.preprocess.audio import is_audio_path
from clipserve.preprocess.image import is_image_path

TEXT_COLUMNS = ("text", "caption")


def file_entry(path: Path, root: Path) -> Entry:
    stat = path.stat()
    modality = "audio" if is_audio_path(path) else "image"
    return Entry(str(path), modality, str(path), stat.st_size, stat.st_mtime, None, str(root))


def entries_from(sources: Sequence[str | Path], wanted: Callable[[Path], bool]) -> list[Entry]:
    """The entries of ``sources`` (see the module docstring); ``wanted`` picks the files of
    folders and globs (images, and audio for a model that hears). Ids are unique: the first wins."""
    found: dict[str, Entry] = {}
    for source in sources:
        text = str(source)
        if glob.has_magic(text):
            base = glob_base(text)
            matched = sorted(Path(p) for p in glob.glob(str(Path(text).expanduser()), recursive=True))
            files = [(p.resolve(), base.resolve()) for p in matched if p.is_file() and wanted(p)]
        else:
            path = Path(source).expanduser()
            if path.suffix == ".parquet" and path.is_file():
                for entry in parquet_entries(path):
                    found.setdefault(entry.id, entry)
                continue
            if path.is_dir():
                root = path.resolve()
                files = [(p.resolve(), root) for p in sorted(root.rglob("*")) if p.is_file() and wanted(p)]
            elif path.is_file():
                files = [(path.resolve(), path.resolve().parent)]
            else:
                raise ClipserveError(f"{source}: no such file or folder")
        for file, root in files:
            found.setdefault(str(file), file_entry(file, root))
    return list(found.values())


def glob_base(pattern: str) -> Path:
    """The folder a glob starts from: its leading parts without wildcards (``photos/2024`` of
    ``photos/2024/**/*.jpg``)."""
    parts = Path(pattern).expanduser().parts
    fixed = [
        part for part in parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    ]
    return Path(*fixed) if fixed else Path(".")


def parquet_entries(path: Path) -> list[Entry]:
    """One text entry per row of a table with an ``id`` column and a ``text`` (or ``caption``) one."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = table.column_names
    column = next((c for c in TEXT_COLUMNS if c in columns), None)
    if column is None or "id" not in columns:
        raise ClipserveError(
            f"{path}: a table of texts needs an id column and a text (or caption) one; has {columns}"
        )
    ids, texts = table.column("id").to_pylist(), table.column(column).to_pylist()
    return [Entry(str(i), "text", None, None, None, str(t), None) for i, t in zip(ids, texts, strict=True)]


def vectors_from_job(directory: Path) -> tuple[str, list[Entry], dict[str, np.ndarray]]:
    """The model, entries and vectors of a ``clipserve encode --ray`` output directory: a file id
    that still exists becomes a file entry (its size and time as now), ``text:…`` a text."""
    import pyarrow.parquet as pq

    manifest = directory / "_clipserve_job.json"
    if not manifest.is_file():
        raise ClipserveError(
            f"{directory} is not the output of `clipserve encode --ray` (no {manifest.name})"
        )
    model = json.loads(manifest.read_text())["model"]
    entries: list[Entry] = []
    vectors: dict[str, np.ndarray] = {}
    for part in sorted(directory.glob("part-*.parquet")):
        table = pq.read_table(part)
        ids = table.column("id").to_pylist()
        matrix = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
        for identifier, vector in zip(ids, matrix, strict=True):
            if identifier.startswith("text:"):
                entry = Entry(identifier, "text", None, None, None, identifier[len("text:") :], None)
            elif Path(identifier).is_file():
                path = Path(identifier).resolve()
                entry = file_entry(path, path.parent)
            else:
                continue  # a file gone since the job: nothing to index
            entries.append(entry)
            vectors[entry.id] = vector
    return model, entries, vectors


def media_filter(hears: bool) -> Callable[[Path], bool]:
    """Images, and audio for a model that hears."""
    return lambda path: is_image_path(path) or (hears and is_audio_path(path))
