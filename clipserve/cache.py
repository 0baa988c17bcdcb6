"""The download and export cache: content-keyed entries, a listing, and least-recently-used pruning.

Layout under the cache root (``~/.cache/clipserve`` or ``cache_dir``):

- ``checkpoints/ARCH/TAG/<file>``: downloaded weights;
- ``onnx/ARCH/SOURCE/PRECISION/``: ONNX exports, where SOURCE is the zoo tag for downloaded weights
  or ``sha-<hash of the file's content>`` for a local checkpoint, so the same weights at another
  path (a re-download, a temporary directory, a CI workspace) reuse the export;
- ``fingerprints.json``: content hashes already computed, by path, size and modification time, so
  a file is hashed once.

Each entry's last use is the modification time of its ``.last-used`` file (touched on every load).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from clipserve.files import write_atomically

log = logging.getLogger(__name__)

FINGERPRINTS = "fingerprints.json"
LAST_USED = ".last-used"
STAGING_MARK = ".tmp-"
STALE_STAGING_S = 24 * 3600


@dataclass(frozen=True)
class Entry:
    """One cached checkpoint directory or export directory."""

    path: Path
    kind: str
    """``checkpoint``, ``export`` or ``staging`` (an interrupted export or download)."""
    size: int
    last_used: float


def content_fingerprint(path: Path, root: Path) -> str:
    """``sha-<16 hex>`` of the file's content; remembered under ``root`` by path, size and mtime."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    index_path = root / FINGERPRINTS
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        index[key] = digest.hexdigest()[:16]
        write_atomically(index_path, json.dumps(index, indent=0), suffix=STAGING_MARK)
    return "sha-" + index[key]


def touch(directory: Path) -> None:
    """Record that the entry ``directory`` was used now (its place in the LRU order)."""
    with contextlib.suppress(OSError):
        (directory / LAST_USED).touch()


def entries(root: Path) -> list[Entry]:
    """Every checkpoint and export directory under ``root``, and leftover staging directories."""
    found = []
    for kind, pattern in (("checkpoint", "checkpoints/*/*"), ("export", "onnx/*/*/*")):
        for path in root.glob(pattern):
            if not path.is_dir():
                continue
            entry_kind = "staging" if STAGING_MARK in path.name else kind
            found.append(Entry(path, entry_kind, _size(path), _last_used(path)))
    return sorted(found, key=lambda e: e.last_used)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _last_used(path: Path) -> float:
    marker = path / LAST_USED
    return (marker if marker.exists() else path).stat().st_mtime


def prune(
    root: Path,
    max_bytes: int | None = None,
    older_than_s: float | None = None,
    dry_run: bool = False,
    keep: Path | None = None,
) -> list[Entry]:
    """Remove entries, least recently used first: staging left over for a day, entries unused for
    ``older_than_s``, then more until the cache holds at most ``max_bytes``; never ``keep`` (the
    entry in use), nor an entry that is a symbolic link. Returns what went (in a dry run, what
    would go)."""
    now = time.time()
    listed = entries(root)
    total = sum(e.size for e in listed)
    removed = []
    for entry in listed:
        if keep is not None and _within(keep, entry.path):
            continue
        stale = entry.kind == "staging" and now - entry.last_used > STALE_STAGING_S
        old = older_than_s is not None and now - entry.last_used > older_than_s
        over = max_bytes is not None and total > max_bytes
        if stale or old or over:
            if entry.path.is_symlink():  # the user's own directory, linked in: never followed or counted
                log.warning("cache: kept %s: a symbolic link (remove it by hand)", entry.path)
                continue
            if not dry_run:
                shutil.rmtree(entry.path, ignore_errors=True)
                if entry.path.exists():
                    log.warning("cache: could not remove %s", entry.path)
                    continue
                log.info("cache: removed %s (%d bytes)", entry.path, entry.size)
            removed.append(entry)
            total -= entry.size
    return removed


def _within(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory.resolve())
    except OSError:
        return False


def enforce_cap(root: Path, max_gb: float | None, in_use: Path) -> None:
    """With a size cap set, evict least recently used entries beyond it (never ``in_use``)."""
    if max_gb is not None:
        prune(root, max_bytes=int(max_gb * 1024**3), keep=in_use)
