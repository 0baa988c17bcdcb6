"""Files in and out of a bulk job: the inputs of folders, and the vectors written (npy or parquet)."""

from __future__ import annotations

import json
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


def write_vectors(path: Path, vectors: np.ndarray, ids: list[str]) -> None:
    """``.parquet`` (columns id, vector) or ``.npy`` with the ids beside it in ``.ids.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ClipserveError("writing .parquet needs pyarrow: pip install 'clipserve[parquet]'") from exc

        vector_type = pa.list_(pa.float32(), vectors.shape[1])
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]
        )
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "vector": column.cast(vector_type)}), path)
    else:
        np.save(path, vectors)
        path.with_suffix(".ids.json").write_text(json.dumps(ids, ensure_ascii=False, indent=0) + "\n")
