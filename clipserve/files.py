"""Files in and out: the inputs of folders, the vectors written (npy or parquet), and small files
written whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clipserve.errors import ClipserveError


def collect_files(paths: Sequence[Path], wanted: Callable[[Path], bool]) -> list[Path]:
    """Files as given, folders searched recursively for the ``wanted`` files (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and wanted(p)))
        else:
            found.append(path)
    return found


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output :func:`write_vectors` could not write (``.parquet``
    without pyarrow)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise ClipserveError(
                f"writing {path} needs pyarrow: pip install 'clipserve[parquet]', or write .npy"
            ) from exc


def write_vectors(path: Path, vectors: np.ndarray, ids: list[str]) -> None:
    """``.parquet`` (columns id, vector) or ``.npy`` with the ids beside it in ``.ids.json``."""
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        vector_type = pa.list_(pa.float32(), vectors.shape[1])
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]
        )
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "vector": column.cast(vector_type)}), path)
    else:
        np.save(path, vectors)
        path.with_suffix(".ids.json").write_text(json.dumps(ids, ensure_ascii=False, indent=0) + "\n")


def write_atomically(path: Path, text: str, suffix: str = "") -> None:
    """Write ``text`` to ``path`` through a temporary file beside it (named with ``suffix``) renamed
    into place: a reader sees the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a dot name: readers of the folder (parquet datasets, globs) skip a file left by a crash
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, prefix=".", suffix=suffix) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)
