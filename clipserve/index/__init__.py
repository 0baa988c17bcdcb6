"""A searchable index of a collection: images, texts and audio embedded by one model, in a directory.

``Index.create(directory, encoder)`` makes one, :meth:`Index.update` adds new files, re-embeds
changed ones and drops deleted ones (it never embeds an unchanged one again), and
:meth:`Index.search` answers a text, an image, an audio clip, a vector or an item's id ("more like
this"). The store of record is SQLite (:mod:`clipserve.index.store`); search runs on files derived
from it (:mod:`clipserve.index.vectors`): exact below ``approximate_from`` items, an HNSW graph
(usearch) above.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.errors import ClipserveError, InvalidInput
from clipserve.index import vectors as derived
from clipserve.index.store import FORMAT, Entry, Store, chunked
from clipserve.zoo import canonical_name

log = logging.getLogger(__name__)

APPROXIMATE_FROM = 100_000
"""Below this many items a search is exact (a matrix product of a few milliseconds); above, the
graph index answers (recall ≥ 0.95 at top-10 measured, in well under a millisecond)."""
CHUNK = 256
"""Items embedded between two commits of the pending vectors (the work a killed build loses)."""
FILTER_FIELDS = ("id", "modality", "root", "path", "caption")
NEIGHBOURS = 16
"""Near-duplicate groups are built from each item's this many nearest neighbours."""
SNAPSHOT_TRIES = 3
"""A search whose results a build removed while it ran is made again, at most this many times."""
DEDUP_EXTRA = 1000
"""A search with ``dedup`` looks at ``k`` plus at most this many (and at most ``2k``) candidates."""
DEDUP_BLOCK = 256
"""Candidates compared with the later ones at once, by one matrix product, in dedup."""
DEDUP_SCORE_MARGIN = 0.01
"""Slack on the score bound of dedup, for scores of float16 and int8 rows (see ``_deduplicated``)."""


class IndexMismatch(ClipserveError):
    """The index was built with another model than the one asked to query it."""

    http_status = 400


class ModelNotNamed(ClipserveError):
    """The index's model is not a zoo name, and no model was named to load: an index is data and
    never chooses a model file or hub repository to load."""


@dataclass(frozen=True)
class Hit:
    """One result of :meth:`Index.search`: the item's id, its cosine to the query, its metadata."""

    id: str
    score: float
    key: int
    metadata: dict = field(default_factory=dict)


@dataclass
class UpdateReport:
    """What :meth:`Index.update` did."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    reused: int = 0
    """Items a killed build had embedded, taken over rather than embedded again."""
    embedded: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    """``(id, reason)`` of the inputs that could not be embedded."""
    generation: int = 0


class Index:
    """An index directory, open. Thread-safe for searches; one build at a time per directory."""

    def __init__(self, directory: Path, store: Store, encoder=None) -> None:
        self.directory, self.store = directory, store
        info = store.info()
        if info.get("format") != FORMAT:
            raise ClipserveError(f"{directory} is an index of another format ({info.get('format')})")
        self.model: str = info["model"]
        self.dim: int = int(info["dim"])
        self.dtype: str = info["dtype"]
        self.approximate_from: int = int(info["approximate_from"])
        self._encoder = encoder
        self._lock = threading.Lock()
        self._vectors: derived.Vectors | None = None
        self._generation = -1
        if encoder is not None:
            self.check_encoder(encoder)

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | Path,
        encoder,
        dtype: str = "f32",
        approximate_from: int = APPROXIMATE_FROM,
    ) -> Index:
        """A new, empty index of ``encoder``'s model (an existing one of the same model is opened)."""
        directory = Path(directory).expanduser()
        if dtype not in derived.DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(derived.DTYPES)}, got {dtype!r}")
        store = Store(directory, create=True)
        if not store.info():
            store.set_info(
                format=FORMAT,
                model=encoder.spec.name,
                dim=encoder.dim,
                family=encoder.spec.family,
                dtype=dtype,
                approximate_from=approximate_from,
                generation=0,
                weights=_weights_origin(encoder),
            )
        return cls(directory, store, encoder)

    @classmethod
    def open(cls, directory: str | Path, encoder=None) -> Index:
        """An existing index; ``encoder`` (optional, else made on first use) must run its model."""
        directory = Path(directory).expanduser()
        return cls(directory, Store(directory), encoder)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def zoo_model(self) -> str:
        """The index's model as a zoo name (see :func:`zoo_model_of`)."""
        return zoo_model_of(self.model, f"the index {self.directory}")

    def weights_advice(self, command: str) -> str:
        """How to give the weights this index was built with, for ``command`` (e.g. ``clipserve
        search DIR ...``), or ``""`` when it was built with the model's own download. The index only
        says where they were: they load only when the operator names them."""
        weights = self.store.info().get("weights")
        if not weights:
            return ""
        return (
            f"the index {self.directory} was built with the weights {weights}: give them, as "
            f"`{command} --weights {weights}`, CLIPSERVE_WEIGHTS={weights}, or `weights:` in the settings "
            "file"
        )

    @property
    def encoder(self):
        """The encoder of queries: the one given, else the index's zoo model with default settings."""
        if self._encoder is None:
            from clipserve.encoder import Encoder

            self._encoder = Encoder(self.zoo_model())
        return self._encoder

    def attach(self, encoder) -> None:
        """Query with ``encoder`` (it must run the index's model)."""
        self.check_encoder(encoder)
        self._encoder = encoder

    def check_encoder(self, encoder) -> None:
        """Refuse an encoder of another model: its vectors live in another space."""
        if encoder.spec.name != self.model or encoder.dim != self.dim:
            raise IndexMismatch(
                f"the index {self.directory} holds vectors of {self.model} ({self.dim}-d); "
                f"{encoder.spec.name} cannot query it"
            )

    def __len__(self) -> int:
        return self.store.count()

    def info(self) -> dict[str, object]:
        """What the index holds and how it is searched: ``search`` is ``approximate (HNSW)`` where
        the build found the graph reach its recall target faster than exact search (``graph``:
        what it measured), else ``exact``."""
        tuning = self._current().tuning
        return {
            "index": self.directory.name,
            "model": self.model,
            "dim": self.dim,
            "dtype": self.dtype,
            "items": len(self),
            "generation": self.store.generation,
            "search": "approximate (HNSW)" if tuning is not None and tuning.serves else "exact",
            **({"graph": asdict(tuning)} if tuning is not None else {}),
        }

    @property
    def roots(self) -> list[Path]:
        """The directories the indexed files came from (thumbnails are served from these only)."""
        rows = self.store.db.execute("SELECT DISTINCT root FROM items WHERE root IS NOT NULL")
        return [Path(row[0]) for row in rows]

    # -- building ---------------------------------------------------------------------------------

    def update(
        self,
        entries: Sequence[Entry],
        given_vectors: dict[str, np.ndarray] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> UpdateReport:
        """Make the index hold exactly ``entries``: embed new and changed ones (``given_vectors``
        by id skip the model), drop the others, keep unchanged ones as they are; then commit, in
        one transaction, and derive the search files. A killed update leaves the index as it was,
        and the next one takes over what it had embedded."""
        report = UpdateReport()
        current = self.store.entries()
        wanted = {entry.id: entry for entry in entries}
        removed = [identifier for identifier in current if identifier not in wanted]
        changed = [i for i, e in wanted.items() if i in current and not current[i].same_source(e)]
        added = [i for i in wanted if i not in current]
        report.unchanged = len(wanted) - len(changed) - len(added)
        todo = [wanted[i] for i in (*added, *changed)]
        pending = self.store.entries("pending")
        stale = [i for i, e in pending.items() if i not in wanted or not e.same_source(wanted[i])]
        with self.store.transaction() as db:
            db.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in stale])
        done = {i for i in pending if i not in stale}
        if not todo and not removed and not done:
            report.generation = self.store.generation  # nothing changed: nothing to write
            return report
        report.reused = sum(1 for entry in todo if entry.id in done)
        given = given_vectors or {}
        from_vectors = [e for e in todo if e.id not in done and e.id in given]
        if from_vectors:
            self.store.add_pending(from_vectors, np.stack([given[e.id] for e in from_vectors]))
        to_embed = [e for e in todo if e.id not in done and e.id not in given]
        failed: list[str] = []
        for part in chunked(to_embed, CHUNK):
            vectors, bad = self._embed(part)
            good = [e for e in part if e.id not in bad]
            if good:
                self.store.add_pending(good, vectors)
            failed.extend(bad)
            report.bad.extend(bad.items())
            report.embedded += len(good)
            if progress is not None:
                progress(len(part))
        failed_changed = [i for i in changed if i in set(failed)]  # its old vector is stale: it goes
        if not (report.embedded or from_vectors or done or removed or failed_changed):
            report.generation = self.store.generation  # only failures: nothing to write
            return report
        previous = self.store.current()
        report.generation = self.store.commit(
            replaced=[i for i in changed if i not in set(failed)],
            removed=removed + failed_changed,
            derive=lambda generation: self._derive(generation, previous),
        )
        derived.prune(self.directory, report.generation)
        report.added = sum(1 for i in added if i not in set(failed))
        report.changed = len(changed) - len(failed_changed)
        report.removed = len(removed) + len(failed_changed)
        return report

    def _embed(self, entries: list[Entry]) -> tuple[np.ndarray, dict[str, str]]:
        values = [Path(e.path) if e.path is not None else e.caption for e in entries]
        texts = [i for i, e in enumerate(entries) if e.path is None]
        files = [i for i, e in enumerate(entries) if e.path is not None]
        vectors = np.zeros((len(entries), self.dim), np.float32)
        bad: dict[str, str] = {}
        for positions, modality in ((texts, "text"), (files, None)):
            if not positions:
                continue
            result = self.encoder.encode_lenient([values[p] for p in positions], modality=modality)
            for row, vector in zip(result.indices, result.vectors, strict=True):
                vectors[positions[row]] = vector
            for error in result.errors:
                bad[entries[positions[error.index]].id] = error.reason
        kept = [p for p, e in enumerate(entries) if e.id not in bad]
        return vectors[kept], bad

    def _derive(self, generation: int, previous: tuple[int, dict[str, list]]) -> dict[str, list]:
        """The search files of ``generation`` from the store (inside the build's commit)."""
        keys, vectors = self.store.vectors(self.dim)
        return derived.write(
            self.directory,
            generation,
            keys,
            vectors,
            self.dtype,
            approximate=len(keys) >= self.approximate_from,
            previous=previous if previous[0] > 0 else None,
        )

    # -- searching --------------------------------------------------------------------------------

    def _current(self) -> derived.Vectors:
        return self._current_with_generation()[1]

    def _current_with_generation(self) -> tuple[int, derived.Vectors]:
        """The search files of the store's generation, checked against their records. Searching
        only reads: where they are missing or damaged, exact search runs on the store's vectors
        (``clipserve index`` writes them again)."""
        generation, records = self.store.current()
        with self._lock:
            if generation != self._generation or self._vectors is None:
                found = derived.read(self.directory, generation, self.dim, self.dtype, records)
                if found is None:
                    log.warning(
                        "index %s: no intact search files of generation %d: exact search from the store",
                        self.directory,
                        generation,
                    )
                    keys, vectors = self.store.vectors(self.dim)
                    found = derived.Vectors(keys, derived.stored(vectors, self.dtype))
                self._vectors, self._generation = found, generation
            return self._generation, self._vectors

    def key_of(self, identifier: str) -> int | None:
        """The key of an item's id; a file's id may also be given as a path relative to the working
        directory (or with ``~``), since files are indexed by their absolute path."""
        key = self.store.key_of(identifier)
        if key is None and identifier:
            try:
                key = self.store.key_of(str(Path(identifier).expanduser().resolve()))
            except (OSError, ValueError, RuntimeError):
                return None
        return key

    def query_vector(
        self, query: Any = None, *, like: str | None = None, modality: str | None = None
    ) -> np.ndarray:
        """The unit vector of a query: an item's id (``like``), a vector, or an input the encoder
        takes (a text, an image, an audio clip; ``modality`` forces one)."""
        if like is not None:
            key = self.key_of(like)
            if key is None:
                raise InvalidInput(f"no item {like!r} in the index")
            return self.store.vector_of(key)
        vector = _as_vector(query)
        if vector is not None:
            if vector.shape != (self.dim,):
                raise InvalidInput(f"a query vector must have {self.dim} values, got {vector.shape[0]}")
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(vector).all() or norm == 0:
                raise InvalidInput("a query vector must be finite and not zero")
            return vector / norm
        if query is None:
            raise InvalidInput("give a query: a text, an image, an audio clip, a vector, or like=ID")
        if modality == "text":
            return self.encoder.encode_text([query])[0]
        return self.encoder.encode([query])[0]

    def search(
        self,
        query: Any = None,
        k: int = 10,
        *,
        like: str | None = None,
        filter: dict[str, Any] | None = None,
        dedup: float | None = None,
        modality: str | None = None,
        vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """The ``k`` items nearest the query, best first.

        ``query`` is a text, an image (path, bytes, PIL image, array), an audio clip or a vector
        (``vector`` given precomputed); ``like`` is an item's id ("more like this": the item
        itself is left out). ``filter`` keeps items whose metadata match: ``{"modality": "image"}``,
        a list for any of several values, ``path_prefix`` for a folder. ``dedup`` (a cosine, e.g.
        0.95) keeps one of each group of near-duplicate results.
        """
        if not 1 <= k <= 10_000:
            raise InvalidInput(f"k must be between 1 and 10000, got {k}")
        query_vector = (
            vector if vector is not None else self.query_vector(query, like=like, modality=modality)
        )
        allowed = self._allowed(filter)
        for _ in range(SNAPSHOT_TRIES):
            generation, current = self._current_with_generation()
            keys, scores = self._nearest(current, query_vector, k, like, allowed, dedup)
            entries = self.store.lookup(keys)
            if len(entries) == len(keys) or self.store.generation == generation:
                break  # else a build committed between the search and the lookup: search again
        return [
            Hit(entries[int(key)].id, float(score), int(key), entries[int(key)].metadata())
            for key, score in zip(keys, scores, strict=True)
            if int(key) in entries
        ]

    def _nearest(
        self,
        current: derived.Vectors,
        query_vector: np.ndarray,
        k: int,
        like: str | None,
        allowed: np.ndarray | None,
        dedup: float | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        extra = (1 if like is not None else 0) + (min(k * 2, DEDUP_EXTRA) if dedup else 0)
        want = k + extra
        if current.ann is not None and (allowed is None or len(allowed) > self.approximate_from):
            keys, scores = current.approximate(query_vector, want, allowed)
        else:
            keys, scores = current.exact(query_vector, want, allowed)
        if like is not None:
            own = self.key_of(like)
            kept = keys != own
            keys, scores = keys[kept], scores[kept]
        if dedup:
            keys, scores = _deduplicated(current, keys, scores, dedup, k)
        return keys[:k], scores[:k]

    def _allowed(self, filter: dict[str, Any] | None) -> np.ndarray | None:
        if not filter:
            return None
        clauses, values = [], []
        for name, wanted in filter.items():
            if name == "path_prefix":
                clauses.append("path LIKE ? ESCAPE '\\'")
                values.append(str(wanted).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
            elif name in FILTER_FIELDS:
                choices = wanted if isinstance(wanted, list | tuple) else [wanted]
                clauses.append(f"{name} IN ({', '.join('?' * len(choices))})")
                values.extend(str(c) for c in choices)
            else:
                raise InvalidInput(
                    f"unknown filter {name!r}: use {', '.join((*FILTER_FIELDS, 'path_prefix'))}"
                )
        return self.store.keys_where(clauses, values)

    def near_duplicates(self, threshold: float = 0.95, modality: str = "image") -> list[list[Hit]]:
        """Groups of items (of ``modality``) whose vectors are within ``threshold`` cosine of
        another's in the group (connected: a ≈ b and b ≈ c group a, b and c), largest first; each
        hit's score is its cosine to the group's first item."""
        keys = self.store.keys_where(["modality = ?"], [modality])
        current = self._current()
        parent = {int(key): int(key) for key in keys}

        def root(key: int) -> int:
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        search = current.exact if current.ann is None else current.approximate
        for key in keys:
            near, scores = search(current.vector(int(key)), NEIGHBOURS, keys)
            for other, score in zip(near, scores, strict=True):
                if int(other) != int(key) and score >= threshold:
                    parent[root(int(other))] = root(int(key))
        groups: dict[int, list[int]] = {}
        for key in keys:
            groups.setdefault(root(int(key)), []).append(int(key))
        entries = self.store.lookup(keys)
        found = []
        for members in groups.values():
            if len(members) > 1:
                first = current.vector(min(members))
                found.append(
                    [
                        Hit(entries[k].id, float(current.vector(k) @ first), k, entries[k].metadata())
                        for k in sorted(members)
                    ]
                )
        return sorted(found, key=len, reverse=True)

    def export(self, path: str | Path) -> int:
        """Write every item (``id``, ``vector``, and its metadata columns) to a parquet file, the
        form Qdrant, Milvus and pgvector load (see the README); returns the number of rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys, vectors = self.store.vectors(self.dim)
        entries = self.store.lookup(keys)
        rows = [entries[int(key)] for key in keys]
        columns: dict[str, pa.Array] = {
            "key": pa.array(keys, pa.int64()),
            "id": pa.array([e.id for e in rows], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1), pa.float32()), self.dim
            ),
        }
        for column in ("modality", "path", "caption", "root"):
            columns[column] = pa.array([getattr(e, column) for e in rows], pa.string())
        columns["size"] = pa.array([e.size for e in rows], pa.int64())
        columns["mtime"] = pa.array([e.mtime for e in rows], pa.float64())
        table = pa.table(columns).replace_schema_metadata({"model": self.model, "dim": str(self.dim)})
        pq.write_table(table, Path(path))
        return len(rows)

    def check_model(self, name: str) -> None:
        if name != self.model:
            raise IndexMismatch(f"the index holds vectors of {self.model}; a query with {name} is refused")


def zoo_model_of(model: str, named_by: str) -> str:
    """``model`` as a zoo name: the only kind of model that data (an index, a job's vectors) may
    choose to load. :class:`ModelNotNamed` for a local path or hub repository, which the operator
    must name (``--model``)."""
    name = canonical_name(model)
    if name is None:
        raise ModelNotNamed(
            f"{named_by} was built with {model!r}, which is not a zoo model; data never chooses a model "
            f"file or repository to load: name it (--model {model})"
        )
    return name


def _as_vector(query: Any) -> np.ndarray | None:
    """``query`` as a float vector when it is one (a 1-D float array, or a list of numbers)."""
    if isinstance(query, np.ndarray) and query.ndim == 1 and query.dtype.kind == "f":
        return query.astype(np.float32)
    if (
        isinstance(query, list)
        and query
        and all(isinstance(v, float | int) and not isinstance(v, bool) for v in query)
    ):
        return np.asarray(query, dtype=np.float32)
    return None


def _deduplicated(
    current: derived.Vectors, keys: np.ndarray, scores: np.ndarray, threshold: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` results, best first, with every near-duplicate of a better one removed
    (cosine ≥ ``threshold``).

    Candidates are compared a block at a time by one matrix product, only with later candidates
    whose score is close enough to be a near-duplicate (two unit vectors of cosine ≥ t have scores
    within √(2 − 2t) of each other for any query), and only until ``k`` are kept."""
    vectors = derived.as_float(current.matrix[current.rows(keys)])
    reach = math.sqrt(max(0.0, 2.0 * (1.0 - threshold))) + DEDUP_SCORE_MARGIN
    descending = bool(np.all(np.diff(scores) <= 0))
    dropped = np.zeros(len(keys), dtype=bool)
    kept: list[int] = []
    for start in range(0, len(keys), DEDUP_BLOCK):
        stop = min(start + DEDUP_BLOCK, len(keys))
        end = len(keys)
        if descending:  # the later candidates within reach of the block's lowest score
            end = stop + int(np.searchsorted(-scores[stop:], reach - scores[stop - 1], side="right"))
        similar = vectors[start:stop] @ vectors[start:end].T >= threshold
        for offset, row in enumerate(similar):
            position = start + offset
            if dropped[position]:
                continue
            kept.append(position)
            if len(kept) == k:
                return keys[kept], scores[kept]
            dropped[start:end] |= row
    return keys[kept], scores[kept]


__all__ = ["Entry", "Hit", "Index", "IndexMismatch", "ModelNotNamed", "UpdateReport", "zoo_model_of"]


def _weights_origin(encoder) -> str | None:
    """Where the operator's weights came from (an absolute path), or None for the model's download
    (and for a stand-in of an encoder, with no settings, whose vectors are given)."""
    settings = getattr(encoder, "settings", None)
    given = settings.weights if settings is not None else None
    return str(Path(given).expanduser().resolve()) if given else None
