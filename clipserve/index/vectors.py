"""Finding the nearest vectors: exact search over a matrix, or an approximate graph index (usearch's
HNSW) above a size threshold; both made from the store, into files named by its generation.

- Exact: the vectors of every item in one matrix (``vectors-gN.npy``, memory-mapped) and their keys
  (``keys-gN.npy``); a query is a matrix product, by chunks, and the top ``k`` of each.
- Approximate: ``ann-gN.usearch``, built once and then updated (keys removed and added) build
  after build. usearch was chosen by measurement (``benchmarks/index_engines.py``).

Vectors are stored as float32, or (an option of the index, lossy) float16 or int8; scores are the
inner product of unit vectors, the cosine. int8 rows are scaled each to its own largest component
(127): a fixed scale leaves a 512-d unit vector's components (~0.04) a few steps each, which lost
more than half the true neighbours of real photo crops (``benchmarks/index_engines.py --photos``).
Their scores are the cosine of the int8 rows, in the graph index too (its metric is then ``cos``).

A graph is only used where it finds the true neighbours: each build measures its recall on queries
made from the index's own vectors (midpoints of random pairs, against exact search), raises the
search expansion until recall reaches :data:`RECALL_TARGET`, and keeps exact search when the
graph gets as slow as exact search first. Embeddings of real images reach it at the
default; random vectors in 512 dimensions, where nothing is near anything, do not.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DTYPES = ("f32", "f16", "i8")
INT8_MAX = 127
CHUNK = 65_536
CONNECTIVITY = 32
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128
OVERSAMPLE = 4
"""A filtered approximate search asks for this many times ``k``, then more, until ``k`` pass."""
RECALL_TARGET = 0.95
EXPANSIONS = (EXPANSION_SEARCH, 256, 512, 1024, 2048)
PROBES = 200
"""Queries of a build's recall measurement."""
PROBE_K = 10


@dataclass(frozen=True)
class Tuning:
    """What a build measured of its graph: the search expansion chosen, the recall@10 and query
    time it gave, exact search's time, and whether the graph serves (else exact search does)."""

    expansion: int
    recall: float
    graph_ms: float
    exact_ms: float
    serves: bool


def stored(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """Unit float32 vectors as stored in ``dtype``."""
    if dtype == "f16":
        return vectors.astype(np.float16)
    if dtype == "i8":
        largest = np.abs(vectors).max(axis=-1, keepdims=True)
        scale = INT8_MAX / np.where(largest > 0, largest, 1.0)
        return np.clip(np.round(vectors * scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return vectors.astype(np.float32, copy=False)


def as_float(rows: np.ndarray) -> np.ndarray:
    """Stored rows as unit float32 vectors (int8 rows carry a scale of their own: normalised)."""
    if rows.dtype == np.int8:
        floats = rows.astype(np.float32)
        norms = np.linalg.norm(floats, axis=-1, keepdims=True)
        return floats / np.where(norms > 0, norms, 1.0)
    return rows.astype(np.float32, copy=False)


def ann_input(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """What the graph index of ``dtype`` takes: int8 rows as stored (usearch's own cast to int8
    uses the fixed scale), else the float vectors."""
    return stored(vectors, dtype) if dtype == "i8" else vectors


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest ``scores``, best first."""
    k = min(k, len(scores))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best], kind="stable")]


class Vectors:
    """One generation's vectors: exact search always, approximate search when built. ``keys`` are
    ascending (the store's order), so a key's row is found by bisection."""

    def __init__(self, keys: np.ndarray, matrix: np.ndarray, ann=None, tuning: Tuning | None = None) -> None:
        self.keys, self.matrix, self.ann, self.tuning = keys, matrix, ann, tuning

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """The rows of those of ``keys`` that are in this generation."""
        keys = np.asarray(keys, np.int64)
        rows = np.searchsorted(self.keys, keys).clip(max=max(len(self.keys) - 1, 0))
        return rows[self.keys[rows] == keys] if len(self.keys) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def exact(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, scores)`` of the ``k`` best, among the ``allowed`` keys when given."""
        if allowed is not None:
            rows = self.rows(allowed)
            scores = as_float(self.matrix[rows]) @ query
            best = top_k(scores, k)
            return self.keys[rows[best]], scores[best]
        if self.matrix.dtype != np.float32 and len(self.keys) and _usearch_installed():
            return self._exact_by_usearch(query, k)
        candidates_keys, candidates_scores = [], []
        for start in range(0, len(self.keys), CHUNK):
            scores = as_float(self.matrix[start : start + CHUNK]) @ query
            best = top_k(scores, k)
            candidates_keys.append(self.keys[start + best])
            candidates_scores.append(scores[best])
        if not candidates_keys:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        keys, scores = np.concatenate(candidates_keys), np.concatenate(candidates_scores)
        best = top_k(scores, k)
        return keys[best], scores[best]

    def _exact_by_usearch(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search of int8 or float16 rows by usearch's SIMD kernels: numpy has no BLAS for
        them (200,000 int8 rows: 224 ms a query by numpy, 18 ms by usearch, one core of a Zen 5)."""
        from usearch.index import MetricKind, search

        int8 = self.matrix.dtype == np.int8
        probe = stored(query, "i8") if int8 else query.astype(self.matrix.dtype)
        metric = MetricKind.Cos if int8 else MetricKind.IP
        found = search(np.asarray(self.matrix), probe, min(k, len(self.keys)), metric, exact=True, threads=1)
        rows = found.keys.astype(np.int64)
        return self.keys[rows], 1.0 - found.distances.astype(np.float32)

    def approximate(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, scores)`` from the graph index; with ``allowed``, the best that pass it."""
        want = k if allowed is None else k * OVERSAMPLE
        query = ann_input(query, "i8" if self.matrix.dtype == np.int8 else "f32")
        while True:
            found = self.ann.search(query, min(want, len(self)))
            keys, scores = found.keys.astype(np.int64), 1.0 - found.distances.astype(np.float32)
            if allowed is not None:
                passing = np.isin(keys, allowed)
                keys, scores = keys[passing], scores[passing]
            if len(keys) >= k or want >= len(self):
                return keys[:k], scores[:k]
            want *= OVERSAMPLE

    def vector(self, key: int) -> np.ndarray:
        return as_float(self.matrix[self.rows(np.asarray([key]))[0]])


@functools.cache
def _usearch_installed() -> bool:
    """Asked once: exact search asks at every query."""
    import importlib.util

    return importlib.util.find_spec("usearch") is not None


def paths(directory: Path, generation: int) -> dict[str, Path]:
    return {
        "keys": directory / f"keys-g{generation}.npy",
        "matrix": directory / f"vectors-g{generation}.npy",
        "ann": directory / f"ann-g{generation}.usearch",
        "tuning": directory / f"ann-g{generation}.json",
    }


def new_ann(dim: int, dtype: str):
    from usearch.index import Index

    return Index(
        ndim=dim,
        metric="cos" if dtype == "i8" else "ip",
        dtype=dtype,
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=EXPANSION_SEARCH,
    )


def write(
    directory: Path,
    generation: int,
    keys: np.ndarray,
    vectors: np.ndarray,
    dtype: str,
    approximate: bool,
    previous: tuple[int, dict[str, list]] | None,
) -> dict[str, list]:
    """The derived files of ``generation`` (each written to a name of its own, then renamed into
    place), and their records ``{name: [size, sha256]}`` for the store; the graph index is updated
    from ``previous``'s (a generation and its records) when it is there intact, else built."""
    target = paths(directory, generation)
    _save(target["keys"], keys)
    matrix = stored(vectors, dtype)
    _save(target["matrix"], matrix)
    written = [target["keys"], target["matrix"]]
    if approximate:
        ann = _updated_ann(directory, previous, keys, vectors, dtype)
        with _replacing(target["ann"]) as partial:
            ann.save(str(partial))
        tuning = tune(ann, Vectors(keys, matrix))
        log.info("index graph: %s", tuning)
        with _replacing(target["tuning"]) as partial:
            partial.write_text(json.dumps(asdict(tuning)))
        written += [target["ann"], target["tuning"]]
    return {path.name: [path.stat().st_size, _sha256(path)] for path in written}


def prune(directory: Path, generation: int) -> None:
    """Remove the search files of generations before ``generation - 1`` (a reader that has just
    read the previous generation's number may still open its files)."""
    for old in directory.glob("*-g*.*"):
        if _generation_of(old) < generation - 1:
            old.unlink(missing_ok=True)


def _updated_ann(
    directory: Path,
    previous: tuple[int, dict[str, list]] | None,
    keys: np.ndarray,
    vectors: np.ndarray,
    dtype: str,
):
    dim = vectors.shape[1]
    old = paths(directory, previous[0])["ann"] if previous is not None else None
    if old is not None and old.is_file() and _intact(old, previous[1]):
        ann = new_ann(dim, dtype)
        ann.load(str(old))
        had = np.asarray(ann.keys, dtype=np.int64)
        gone = np.setdiff1d(had, keys)
        added = np.setdiff1d(keys, had)
        if len(gone):
            ann.remove(gone)
        if len(added):
            rows = np.searchsorted(keys, added)
            ann.add(added, ann_input(vectors[rows], dtype), threads=os.cpu_count() or 1)
        log.info("index graph updated: %d removed, %d added", len(gone), len(added))
        return ann
    ann = new_ann(dim, dtype)
    if len(keys):
        ann.add(keys, ann_input(vectors, dtype), threads=os.cpu_count() or 1)
    log.info("index graph built over %d vectors", len(keys))
    return ann


def tune(ann, exact: Vectors) -> Tuning:
    """The smallest expansion of :data:`EXPANSIONS` at which ``ann`` finds :data:`RECALL_TARGET`
    of the true top 10 of probe queries; exact search serves when none does before the graph is
    as slow as exact search."""
    rng = np.random.default_rng(0)
    floats = as_float(exact.matrix)
    pairs = rng.integers(0, len(floats), size=(PROBES, 2))
    probes = floats[pairs[:, 0]] + floats[pairs[:, 1]]
    probes /= np.maximum(np.linalg.norm(probes, axis=1, keepdims=True), 1e-12)
    k = min(PROBE_K, len(floats))
    started = time.perf_counter()
    truth = [set(exact.exact(probe, k)[0].tolist()) for probe in probes]
    exact_ms = (time.perf_counter() - started) / PROBES * 1000
    graph = Vectors(exact.keys, exact.matrix, ann)
    measured = None
    for expansion in EXPANSIONS:
        ann.expansion_search = expansion
        started = time.perf_counter()
        found = [graph.approximate(probe, k)[0] for probe in probes]
        graph_ms = (time.perf_counter() - started) / PROBES * 1000
        recall = float(np.mean([len(t & set(f.tolist())) / k for t, f in zip(truth, found, strict=True)]))
        serves = recall >= RECALL_TARGET
        measured = Tuning(expansion, round(recall, 4), round(graph_ms, 3), round(exact_ms, 3), serves)
        if serves or graph_ms >= exact_ms:  # found it, or a wider search would only be slower
            break
    return measured


def read(directory: Path, generation: int, dim: int, dtype: str, records: dict[str, list]) -> Vectors | None:
    """The derived files of ``generation``, memory-mapped, each checked against its record (size
    and sha256, from the store) before it is opened. None when the keys or the matrix are missing,
    damaged or malformed (search then runs on the store); a graph that is missing, damaged or
    unrecorded is not opened (exact search serves). Never a crash on a bad file."""
    target = paths(directory, generation)
    try:
        if not all(_intact(target[name], records) for name in ("keys", "matrix")):
            return None
        keys = np.load(target["keys"])
        matrix = np.load(target["matrix"], mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        log.error("index %s: search files of generation %d unreadable: %s", directory, generation, exc)
        return None
    expected = np.dtype({"f32": np.float32, "f16": np.float16, "i8": np.int8}[dtype])
    if (
        keys.dtype != np.int64
        or keys.ndim != 1
        or matrix.shape != (len(keys), dim)
        or matrix.dtype != expected
        or (len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])))
    ):
        log.error("index %s: search files of generation %d are malformed", directory, generation)
        return None
    ann, tuning = None, None
    if target["tuning"].is_file() and _intact(target["tuning"], records):
        try:
            tuning = Tuning(**json.loads(target["tuning"].read_text()))
        except (ValueError, TypeError) as exc:
            log.error("index %s: graph tuning of generation %d unreadable: %s", directory, generation, exc)
        if tuning is not None and tuning.serves and _intact(target["ann"], records):
            ann = new_ann(dim, dtype)
            ann.view(str(target["ann"]))  # memory-mapped, not read into memory
            ann.expansion_search = tuning.expansion
    return Vectors(keys, matrix, ann, tuning)


def _intact(path: Path, records: dict[str, list]) -> bool:
    """True when ``path`` has the size and sha256 its record gives; a missing file, a missing
    record or a mismatch is logged and gives False."""
    record = records.get(path.name)
    if record is None:
        if path.is_file():
            log.warning(
                "%s has no recorded checksum (an index built before they were kept): not opened", path
            )
        return False
    try:
        size = path.stat().st_size
    except OSError:
        log.error("%s is missing: searching without it", path)
        return False
    if size != record[0] or _sha256(path) != record[1]:
        log.error("%s does not match its checksum (damaged or replaced): searching without it", path)
        return False
    return True


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A partial file of a name no other writer uses, renamed to ``path`` once written."""
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(descriptor)
    partial = Path(name)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _save(path: Path, array: np.ndarray) -> None:
    with _replacing(path) as partial, partial.open("wb") as file:
        np.save(file, array)


def _generation_of(path: Path) -> int:
    try:
        return int(path.name.split("-g", 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return -1
