"""The index's store of record: one SQLite database holding every item's vector and metadata.

SQLite makes each write atomic: a build that is killed leaves the last committed index as it was.
Items embedded by a build that has not finished wait in ``pending``, committed chunk by chunk, so a
rerun takes them over instead of embedding them again; the build's last transaction moves them
into ``items`` (and drops the changed and deleted ones) and bumps the generation, which names the
derived files (:mod:`clipserve.index.vectors`) made from this store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DATABASE = "index.sqlite"
FORMAT = 1
PAGE_SIZE = 16384
COLUMNS = ("id", "modality", "path", "size", "mtime", "caption", "root")
NAMES = ", ".join(COLUMNS)
MARKS = ", ".join("?" * (len(COLUMNS) + 1))
SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL,
    path TEXT, size INTEGER, mtime REAL, caption TEXT, root TEXT,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    id TEXT PRIMARY KEY,
    modality TEXT NOT NULL,
    path TEXT, size INTEGER, mtime REAL, caption TEXT, root TEXT,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_modality ON items (modality);
"""


@dataclass(frozen=True)
class Entry:
    """One thing to index: a file (``path``, its ``size`` and ``mtime``) or a text (``caption``)."""

    id: str
    modality: str
    path: str | None = None
    size: int | None = None
    mtime: float | None = None
    caption: str | None = None
    root: str | None = None

    def same_source(self, other: Entry) -> bool:
        """True when re-embedding would give the same vector (same file version, or same text)."""
        return (self.path, self.size, self.mtime, self.caption) == (
            other.path,
            other.size,
            other.mtime,
            other.caption,
        )

    def metadata(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "id"}


class Store:
    """The SQLite file of an index directory (see the module docstring)."""

    def __init__(self, directory: Path, create: bool = False) -> None:
        self.path = directory / DATABASE
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"{directory} is not a clipserve index (no {DATABASE})")
        directory.mkdir(parents=True, exist_ok=True)
        # A build holds the write lock while it writes the next generation's search files.
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=600)
        # Before the first table only (they fix the file's layout): a row of a 512-d float32 vector
        # (2 KiB) takes a whole 4 KiB page, but a seventh of a 16 KiB one; and the pages ``pending``
        # frees at each commit go back to the file system.
        self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.db.execute("PRAGMA journal_mode=WAL")  # readers (a server) are never blocked by a build
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- info ---------------------------------------------------------------------------------

    def info(self) -> dict:
        return {key: json.loads(value) for key, value in self.db.execute("SELECT key, value FROM info")}

    def set_info(self, **values) -> None:
        with self.transaction():
            for key, value in values.items():
                self.db.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def generation(self) -> int:
        row = self.db.execute("SELECT value FROM info WHERE key = 'generation'").fetchone()
        return int(json.loads(row[0])) if row else 0

    def current(self) -> tuple[int, dict[str, list]]:
        """The generation and the records (``name: [size, sha256]``) of its search files, read
        together (one statement: never a generation with another's records)."""
        rows = dict(
            self.db.execute("SELECT key, value FROM info WHERE key IN ('generation', 'search_files')")
        )
        generation = int(json.loads(rows["generation"])) if "generation" in rows else 0
        files = json.loads(rows["search_files"]) if "search_files" in rows else {}
        return generation, (files.get("files", {}) if files.get("generation") == generation else {})

    # -- items ----------------------------------------------------------------------------------

    def entries(self, table: str = "items") -> dict[str, Entry]:
        """Every entry of ``items`` (or ``pending``) by id."""
        rows = self.db.execute(f"SELECT {NAMES} FROM {table}")
        return {row[0]: Entry(*row) for row in rows}

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keys int64 [n], vectors float32 [n, dim])`` of every item, by key."""
        rows = self.db.execute("SELECT key, vector FROM items ORDER BY key").fetchall()
        keys = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        vectors = np.empty((len(rows), dim), dtype=np.float32)
        for position, (_, blob) in enumerate(rows):
            vectors[position] = np.frombuffer(blob, dtype=np.float32)
        return keys, vectors

    def pending_vectors(self, ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The vectors waiting in ``pending`` for ``ids``."""
        found = {}
        for identifier in ids:
            row = self.db.execute("SELECT vector FROM pending WHERE id = ?", (identifier,)).fetchone()
            if row is not None:
                found[identifier] = np.frombuffer(row[0], dtype=np.float32)
        return found

    def add_pending(self, entries: list[Entry], vectors: np.ndarray) -> None:
        """Record embedded entries that a build has not committed yet (their own transaction)."""
        with self.transaction():
            self.db.executemany(
                f"INSERT OR REPLACE INTO pending ({NAMES}, vector) VALUES ({MARKS})",
                [
                    (*_row(entry), np.asarray(vector, np.float32).tobytes())
                    for entry, vector in zip(entries, vectors, strict=True)
                ],
            )

    def commit(
        self, replaced: list[str], removed: list[str], derive: Callable[[int], dict[str, list]]
    ) -> int:
        """The build's last step, in one transaction: drop ``removed`` and ``replaced`` items, move
        every pending item in (replaced ones get new keys), have ``derive(generation)`` write the
        new generation's search files from the store as it will be (returning their records), and
        bump the generation. Readers see the old generation until the files are all there."""
        with self.transaction():
            for identifier in [*removed, *replaced]:
                self.db.execute("DELETE FROM items WHERE id = ?", (identifier,))
            self.db.execute(f"INSERT INTO items ({NAMES}, vector) SELECT {NAMES}, vector FROM pending")
            self.db.execute("DELETE FROM pending")
            generation = self.generation + 1
            files = {"generation": generation, "files": derive(generation)}
            self.db.execute("INSERT OR REPLACE INTO info VALUES ('search_files', ?)", (json.dumps(files),))
            self.db.execute("INSERT OR REPLACE INTO info VALUES ('generation', ?)", (json.dumps(generation),))
        self.db.executescript("PRAGMA incremental_vacuum;")  # the pages pending held (run to its end)
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # and the log of the move
        return generation

    def lookup(self, keys: Iterable[int]) -> dict[int, Entry]:
        """The entries of ``keys``."""
        keys = list(map(int, keys))
        found: dict[int, Entry] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT key, {NAMES} FROM items WHERE key IN ({marks})"
            for row in self.db.execute(query, chunk):
                found[row[0]] = Entry(*row[1:])
        return found

    def key_of(self, identifier: str) -> int | None:
        row = self.db.execute("SELECT key FROM items WHERE id = ?", (identifier,)).fetchone()
        return None if row is None else row[0]

    def vector_of(self, key: int) -> np.ndarray:
        row = self.db.execute("SELECT vector FROM items WHERE key = ?", (int(key),)).fetchone()
        return np.frombuffer(row[0], dtype=np.float32)

    def keys_where(self, clauses: list[str], values: list) -> np.ndarray:
        """The keys of the items matching SQL ``clauses`` (ANDed, with ``values`` as parameters)."""
        where = " AND ".join(clauses) or "1"
        rows = self.db.execute(f"SELECT key FROM items WHERE {where}", values)
        return np.fromiter((row[0] for row in rows), dtype=np.int64)

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)


def _row(entry: Entry) -> tuple:
    return tuple(getattr(entry, column) for column in COLUMNS)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, *exc) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def chunked(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
