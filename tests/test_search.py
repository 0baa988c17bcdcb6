"""Search: an index of files and texts, built incrementally and crash-safely, queried by text,
image, vector or item, exactly (small) or through the graph (large), from the library and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipserve.errors import InvalidInput
from clipserve.index import Index, IndexMismatch
from clipserve.index.collect import entries_from, media_filter
from clipserve.index.store import Entry
from tests.conftest import REPO

NAME = "ViT-B-32::openai"
CAPTIONS = ["a photo of a cat", "a rocket on its launch pad", "a cup of coffee", "a horse in a field"]


@pytest.fixture(scope="module")
def encoder(encoder_for):
    return encoder_for(NAME, "onnx")


@pytest.fixture
def photos(photos_dir, tmp_path) -> Path:
    """A copy of the shared photos: tests change, add and delete files."""
    copy = tmp_path / "photos"
    shutil.copytree(photos_dir, copy, ignore=shutil.ignore_patterns("*.csv"))
    return copy


def texts_table(path: Path, captions: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"caption-{i}" for i in range(len(captions))], "text": captions}), path)
    return path


def build(directory: Path, encoder, sources, **options) -> tuple[Index, object]:
    index = Index.create(directory, encoder, **options)
    report = index.update(entries_from(sources, media_filter(False)))
    return index, report


def brute_force(encoder, photos: Path, query_vector: np.ndarray) -> list[str]:
    files = sorted(str(p.resolve()) for p in photos.iterdir())
    vectors = encoder.encode([Path(f) for f in files])
    return [files[i] for i in np.argsort(-(vectors @ query_vector), kind="stable")]


def test_an_index_answers_texts_images_vectors_and_items(encoder, photos, tmp_path) -> None:
    table = texts_table(tmp_path / "captions.parquet", CAPTIONS)
    index, report = build(tmp_path / "index", encoder, [photos, table])
    assert (report.added, report.embedded, len(index)) == (14, 14, 14) and not report.bad
    query = encoder.encode_text(["a photo of a horse"])[0]
    expected = brute_force(encoder, photos, query)
    hits = index.search("a photo of a horse", k=5, filter={"modality": "image"})
    assert [hit.id for hit in hits] == expected[:5]
    assert hits[0].score == pytest.approx(float(encoder.encode([Path(expected[0])])[0] @ query), abs=1e-5)
    assert [h.id for h in index.search(vector=query, k=5, filter={"modality": "image"})] == expected[:5]
    assert [h.id for h in index.search(query.tolist(), k=5, filter={"modality": "image"})] == expected[:5]
    by_image = index.search(photos / "horse.png", k=1, filter={"modality": "image"})
    assert by_image[0].id == str((photos / "horse.png").resolve()) and by_image[0].score > 0.9999
    like = index.search(like=str((photos / "horse.png").resolve()), k=3)
    assert str((photos / "horse.png").resolve()) not in [h.id for h in like] and len(like) == 3
    texts = index.search("a cup of coffee", k=2, filter={"modality": "text"})
    assert texts[0].id == "caption-2" and texts[0].metadata["caption"] == "a cup of coffee"
    some = index.search("cat", k=20, filter={"path_prefix": str((photos / "c").resolve())})
    assert {Path(h.id).name for h in some} == {"camera.png", "chelsea.png", "coffee.png", "coins.png"}
    with pytest.raises(InvalidInput, match="a query vector must have 512 values"):
        index.search([0.5] * 10)
    with pytest.raises(InvalidInput, match="no item 'nope'"):
        index.search(like="nope")
    with pytest.raises(InvalidInput, match="unknown filter 'colour'"):
        index.search("x", filter={"colour": "red"})


def test_one_model_per_index(encoder, encoder_for, photos, tmp_path) -> None:
    build(tmp_path / "index", encoder, [photos])
    with pytest.raises(
        IndexMismatch, match=r"holds vectors of ViT-B-32::openai .* RN50::openai cannot query it"
    ):
        Index.open(tmp_path / "index", encoder_for("RN50::openai", "onnx"))


class CountingEncoder:
    """An encoder that counts what it is asked to embed."""

    def __init__(self, encoder) -> None:
        self.inner, self.seen = encoder, []
        self.spec, self.dim, self.modalities = encoder.spec, encoder.dim, encoder.modalities

    def encode_lenient(self, values, modality=None):
        self.seen.extend(str(v) for v in values)
        return self.inner.encode_lenient(values, modality=modality)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_a_rerun_embeds_only_what_changed_and_equals_a_fresh_build(encoder, photos, tmp_path) -> None:
    counting = CountingEncoder(encoder)
    index, _ = build(tmp_path / "index", counting, [photos])
    counting.seen.clear()
    originals = sorted(photos.iterdir())
    for i in range(10):  # add 10
        image = Image.open(originals[i % len(originals)]).convert("RGB").rotate(15 * (i + 1))
        image.save(photos / f"new-{i}.png")
    for path in originals[:2]:  # change 2
        Image.open(path).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, format="PNG")
    for path in originals[-3:]:  # delete 3
        path.unlink()
    report = index.update(entries_from([photos], media_filter(False)))
    assert (report.added, report.changed, report.removed, report.unchanged) == (10, 2, 3, 5)
    assert len(counting.seen) == 12 and report.embedded == 12
    fresh, _ = build(tmp_path / "fresh", encoder, [photos])
    for query in ("a photo of a cat", "a rocket", "coins on a table"):
        got, expected = index.search(query, k=15), fresh.search(query, k=15)
        assert [h.id for h in got] == [h.id for h in expected]
        assert np.allclose([h.score for h in got], [h.score for h in expected], atol=1e-6)
    again = index.update(entries_from([photos], media_filter(False)))
    assert again.embedded == 0 and again.generation == report.generation  # nothing to do: nothing done


KILLED_BUILD = """
import sys, time
from clipserve.encoder import Encoder
from clipserve.index import Index
from clipserve.index.collect import entries_from, media_filter
import clipserve.index as module
module.CHUNK = 8
encoder = Encoder("{name}", weights="{weights}", cache_dir="{cache}")
index = Index.open("{index}", encoder)
index.update(entries_from(["{photos}"], media_filter(False)), progress=lambda n: print("chunk", flush=True))
"""


@pytest.mark.slow
def test_a_killed_build_leaves_the_last_index_answering_and_the_rerun_finishes(
    encoder, photos, tmp_path, cache_root
) -> None:
    index, _ = build(tmp_path / "index", encoder, [photos])
    before = [h.id for h in index.search("a photo of a cat", k=10)]
    originals = sorted(photos.iterdir())
    for i in range(60):
        Image.open(originals[i % len(originals)]).convert("RGB").resize((64 + i, 64)).save(
            photos / f"more-{i}.png"
        )
    script = KILLED_BUILD.format(
        name=NAME,
        weights=encoder.info()["weights"],
        cache=cache_root,
        index=tmp_path / "index",
        photos=photos,
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    chunks = 0
    while chunks < 3:
        line = process.stdout.readline()
        assert line, "the build ended before it could be killed"
        chunks += line.startswith("chunk")
    process.kill()  # SIGKILL, mid-build
    process.wait(30)
    survived = Index.open(tmp_path / "index", encoder)
    assert len(survived) == 10 and [h.id for h in survived.search("a photo of a cat", k=10)] == before
    assert len(survived.store.entries("pending")) >= 24  # what it had embedded is kept for the rerun
    report = survived.update(entries_from([photos], media_filter(False)))
    assert report.reused >= 24 and report.reused + report.embedded == 60 and len(survived) == 70
    fresh, _ = build(tmp_path / "fresh", encoder, [photos])
    assert [h.id for h in survived.search("a rocket", k=20)] == [h.id for h in fresh.search("a rocket", k=20)]


@dataclass
class FakeSpec:
    name: str = "random/vectors"
    family: str = "none"


class VectorsOnly:
    """Stands for an encoder when the vectors are given (as a Ray job's are)."""

    spec = FakeSpec()
    modalities = ("text",)

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim


def random_entries(rng, count: int, dim: int) -> tuple[list[Entry], dict[str, np.ndarray]]:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entries = [Entry(f"v{i}", "text", caption=f"vector {i}") for i in range(count)]
    return entries, {e.id: v for e, v in zip(entries, vectors, strict=True)}


def recall(index: Index, vectors: dict[str, np.ndarray], queries: np.ndarray, k: int = 10) -> float:
    matrix = np.stack(list(vectors.values()))
    ids = list(vectors)
    hits = 0
    for query in queries:
        exact = {ids[i] for i in np.argsort(-(matrix @ query))[:k]}
        hits += len(exact & {h.id for h in index.search(vector=query, k=k)})
    return hits / (len(queries) * k)


def test_above_the_threshold_the_graph_answers_with_high_recall_and_follows_updates(tmp_path) -> None:
    rng = np.random.default_rng(0)
    entries, vectors = random_entries(rng, 3000, 64)
    index = Index.create(tmp_path / "index", VectorsOnly(), approximate_from=1000)
    index.update(entries, vectors)
    assert index.info()["search"] == "approximate (HNSW)" and list(tmp_path.glob("index/ann-g1.usearch"))
    queries = rng.standard_normal((50, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert recall(index, vectors, queries) >= 0.95
    kept, dropped = entries[:2500], {e.id for e in entries[2500:]}
    more, more_vectors = random_entries(np.random.default_rng(1), 200, 64)
    more = [Entry(f"w{e.id}", "text", caption=e.caption) for e in more]
    more_vectors = {f"w{k}": v for k, v in more_vectors.items()}
    report = index.update(kept + more, {**vectors, **more_vectors})
    assert (report.added, report.removed) == (200, 500) and list(tmp_path.glob("index/ann-g2.usearch"))
    assert list(tmp_path.glob("index/ann-g1.usearch"))  # kept for a reader that has just read its number
    current = {e.id: vectors[e.id] for e in kept} | more_vectors
    assert recall(index, current, queries) >= 0.95
    for query in queries[:10]:
        assert not dropped & {h.id for h in index.search(vector=query, k=50)}
    filtered = index.search(vector=queries[0], k=5, filter={"id": [e.id for e in more]})
    assert len(filtered) == 5 and all(h.id.startswith("w") for h in filtered)
    index.update(kept[10:] + more, {**vectors, **more_vectors})
    assert not list(tmp_path.glob("index/*-g1.*"))  # two generations back: gone
    assert list(tmp_path.glob("index/ann-g2.usearch")) and list(tmp_path.glob("index/ann-g3.usearch"))


def photo_crops(photos_dir: Path, count: int, rng) -> list[np.ndarray]:
    """Random square crops (20 to 100 % of the short side, half mirrored) of the shared photos."""
    images = [
        np.asarray(Image.open(p).convert("RGB")) for p in sorted(photos_dir.glob("*.*")) if p.suffix != ".csv"
    ]
    found = []
    for _ in range(count):
        image = images[rng.integers(len(images))]
        side = int(min(image.shape[:2]) * rng.uniform(0.2, 1.0))
        top, left = rng.integers(image.shape[0] - side + 1), rng.integers(image.shape[1] - side + 1)
        crop = image[top : top + side, left : left + side]
        found.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return found


@pytest.fixture(scope="module")
def crop_embeddings(encoder, photos_dir) -> np.ndarray:
    return encoder.encode(photo_crops(photos_dir, 650, np.random.default_rng(3)))


@pytest.mark.parametrize(("dtype", "minimum"), [("f32", 0.95), ("i8", 0.9)])
def test_the_graph_finds_the_neighbours_of_real_photo_embeddings(
    encoder, crop_embeddings, tmp_path, dtype, minimum
) -> None:
    """Embeddings of crops of real photos are clustered (ten photos), unlike random vectors; int8
    keeps their neighbours (a fixed int8 scale lost most of them)."""
    entries = [Entry(f"crop{i}", "image", caption=f"crop {i}") for i in range(600)]
    vectors = {e.id: v for e, v in zip(entries, crop_embeddings[:600], strict=True)}
    index = Index.create(tmp_path / "index", encoder, approximate_from=100, dtype=dtype)
    index.update(entries, vectors)
    assert index.info()["search"] == "approximate (HNSW)"
    assert recall(index, vectors, crop_embeddings[600:]) >= minimum


@pytest.mark.parametrize(("dtype", "minimum", "smaller"), [("f16", 0.9999, 1.9), ("i8", 0.999, 3.5)])
def test_smaller_vectors_keep_the_scores_close(tmp_path, dtype, minimum, smaller) -> None:
    rng = np.random.default_rng(2)
    entries, vectors = random_entries(rng, 500, 64)
    exact = Index.create(tmp_path / "f32", VectorsOnly())
    exact.update(entries, vectors)
    small = Index.create(tmp_path / dtype, VectorsOnly(), dtype=dtype)
    small.update(entries, vectors)
    query = next(iter(vectors.values()))
    full = {h.id: h.score for h in exact.search(vector=query, k=500)}
    approximate = {h.id: h.score for h in small.search(vector=query, k=500)}
    assert np.corrcoef([full[i] for i in full], [approximate[i] for i in full])[0, 1] >= minimum
    sizes = {name: (tmp_path / name / "vectors-g1.npy").stat().st_size for name in ("f32", dtype)}
    assert sizes[dtype] < sizes["f32"] / smaller


def test_near_duplicates_are_grouped_and_dropped_from_results(encoder, photos, tmp_path) -> None:
    shutil.copy(photos / "horse.png", photos / "horse-copy.png")
    Image.open(photos / "coins.png").convert("RGB").save(photos / "coins-again.jpg", quality=95)
    index, _ = build(tmp_path / "index", encoder, [photos])
    groups = index.near_duplicates(threshold=0.999)
    names = [{Path(h.id).name for h in group} for group in groups]
    assert {"horse.png", "horse-copy.png"} in names
    plain = index.search(photos / "horse.png", k=3)
    deduplicated = index.search(photos / "horse.png", k=3, dedup=0.999)
    assert {Path(h.id).name for h in plain[:2]} == {"horse.png", "horse-copy.png"}
    assert [Path(h.id).name for h in deduplicated].count("horse-copy.png") + [
        Path(h.id).name for h in deduplicated
    ].count("horse.png") == 1


def test_the_cli_indexes_searches_and_lists_duplicates(encoder, photos, tmp_path, capsys) -> None:
    from clipserve.cli import main

    weights = ["--weights", encoder.info()["weights"], "--cache-dir", str(encoder.settings.cache_dir)]
    shutil.copy(photos / "rocket.jpg", photos / "rocket-copy.jpg")
    (photos / "broken.png").write_bytes(b"not a png")
    assert main(["index", str(photos), "--index", str(tmp_path / "index"), *weights]) == 0
    err = capsys.readouterr().err
    assert "11 added" in err and "broken.png: not an image" in err
    assert main(["search", str(tmp_path / "index"), "a photo of a cat", "-k", "3", "--json", *weights]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = Index.open(tmp_path / "index", encoder).search("a photo of a cat", k=3, modality="text")
    assert [line["id"] for line in lines] == [h.id for h in expected]
    assert main(["dedup", str(tmp_path / "index"), "--threshold", "0.999", "--json"]) == 0
    groups = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {Path(entry["id"]).name for entry in groups[0]} == {"rocket.jpg", "rocket-copy.jpg"}
    time.sleep(0.01)
    (photos / "rocket-copy.jpg").unlink()
    assert main(["index", str(photos), "--index", str(tmp_path / "index"), *weights]) == 0
    assert "1 removed, 10 unchanged (0 embedded" in capsys.readouterr().err


def test_an_index_exports_to_parquet_for_a_vector_database(encoder, photos, tmp_path, capsys) -> None:
    import pyarrow.parquet as pq

    from clipserve.cli import main

    index, _ = build(tmp_path / "index", encoder, [photos, texts_table(tmp_path / "t.parquet", CAPTIONS)])
    assert main(["index", "--index", str(tmp_path / "index"), "--export", str(tmp_path / "out.parquet")]) == 0
    assert "wrote 14 items" in capsys.readouterr().err
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.metadata[b"model"] == NAME.encode() and table.num_rows == 14
    keys, vectors = index.store.vectors(index.dim)
    assert table.column("key").to_pylist() == keys.tolist()
    assert np.array_equal(np.asarray(table.column("vector").to_pylist(), np.float32), vectors)
    rows = table.to_pylist()
    assert {row["modality"] for row in rows} == {"image", "text"}
    assert next(row for row in rows if row["id"] == "caption-3")["caption"] == CAPTIONS[3]


def test_the_store_holds_a_vector_in_little_more_than_its_bytes(tmp_path) -> None:
    """A 512-d float32 row is 2 KiB: on 4 KiB pages it took a page in ``items`` and another in
    ``pending``, and the log of the move as much again (16 KiB an item); now about 2.3 KiB."""
    from clipserve.index.store import DATABASE, Store

    store = Store(tmp_path, create=True)
    rng = np.random.default_rng(0)
    for build in range(2):  # a second build replaces every item: the pages freed are returned
        ids = [f"/photos/{i:05d}.jpg" for i in range(3000)]
        for start in range(0, len(ids), 256):
            chunk = ids[start : start + 256]
            entries = [Entry(i, "image", path=i, size=100_000, mtime=1.7e9, root="/photos") for i in chunk]
            store.add_pending(entries, rng.standard_normal((len(chunk), 512)).astype(np.float32))
        store.commit(replaced=ids if build else [], removed=[], derive=lambda generation: {})
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir() if p.name.startswith(DATABASE))
    assert on_disk / 3000 < 2.6 * 1024
    assert store.count() == 3000


@pytest.mark.slow
def test_a_graph_that_misses_the_neighbours_is_not_used(tmp_path, monkeypatch) -> None:
    """Random vectors in 512 dimensions: nothing is near anything, and a graph searched with the
    expansions tried finds under 95% of the true neighbours (about 0.86 and 0.94 here), so the
    build keeps exact search, and recall stays whole. The wider expansions are left out: whether
    the build stops before them depends on how fast exact search ran on a busy machine."""
    from clipserve.index import vectors as derived

    monkeypatch.setattr(derived, "EXPANSIONS", derived.EXPANSIONS[:2])
    rng = np.random.default_rng(4)
    entries, vectors = random_entries(rng, 20_000, 512)
    index = Index.create(tmp_path / "index", VectorsOnly(512), approximate_from=1000)
    index.update(entries, vectors)
    info = index.info()
    assert info["search"] == "exact" and info["graph"]["serves"] is False
    assert info["graph"]["recall"] < 0.95  # measured, and why
    queries = rng.standard_normal((20, 512)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert recall(index, vectors, queries) == 1.0


@pytest.mark.parametrize("dtype", ["i8", "f16"])
def test_exact_search_of_small_rows_by_usearch_equals_numpys(dtype, monkeypatch) -> None:
    """int8 and float16 rows are searched by usearch's kernels (numpy has no BLAS for them): the
    neighbours of numpy's matrix product (an int8 query is quantized too: close ones may swap)."""
    from clipserve.index import vectors as derived

    rng = np.random.default_rng(5)
    _, given = random_entries(rng, 5000, 64)
    rows = derived.stored(np.stack(list(given.values())), dtype)
    keys = np.arange(100, 5100, dtype=np.int64)
    query = rows[7].astype(np.float32) + 0.1 * rng.standard_normal(64).astype(np.float32)
    query /= np.linalg.norm(query)
    fast = derived.Vectors(keys, rows).exact(query, 20)
    monkeypatch.setattr(derived, "_usearch_installed", lambda: False)
    plain = derived.Vectors(keys, rows).exact(query, 20)
    assert fast[0][0] == plain[0][0] and len(set(fast[0].tolist()) & set(plain[0].tolist())) >= 18
    assert np.abs(np.sort(fast[1]) - np.sort(plain[1])).max() < 0.005


def test_a_rerun_with_only_a_bad_file_writes_no_new_generation(encoder, photos, tmp_path) -> None:
    """Each rerun over a folder holding one bad file wrote new keys-gN/vectors-gN files."""
    (photos / "broken.png").write_bytes(b"not a png")
    index, first = build(tmp_path / "index", encoder, [photos])
    assert [Path(i).name for i, _ in first.bad] == ["broken.png"]
    files = sorted(p.name for p in (tmp_path / "index").iterdir())
    again = index.update(entries_from([photos], media_filter(False)))
    assert again.generation == first.generation and again.embedded == 0 and len(again.bad) == 1
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == files


def test_like_takes_a_files_path_relative_to_the_working_directory(
    encoder, photos, tmp_path, monkeypatch
) -> None:
    """``--like photos/chelsea.png`` found no item: files are indexed by their absolute path."""
    index, _ = build(tmp_path / "index", encoder, [photos])
    monkeypatch.chdir(photos.parent)
    relative = index.search(like="photos/chelsea.png", k=3)
    absolute = index.search(like=str(photos / "chelsea.png"), k=3)
    assert [h.id for h in relative] == [h.id for h in absolute] and len(relative) == 3
    assert str((photos / "chelsea.png").resolve()) not in [h.id for h in relative]
    with pytest.raises(InvalidInput, match=r"no item 'photos/missing\.png'"):
        index.search(like="photos/missing.png")


def test_an_index_says_which_weights_it_was_built_with(
    encoder, photos, tmp_path, monkeypatch, capsys
) -> None:
    """``clipserve search DIR ...`` failed with WeightsUnavailable after a build with local weights;
    the index records where they were, and the error gives the command, but never loads them itself."""
    from clipserve.cli import main

    weights = encoder.settings.weights  # the random checkpoint the encoder was built from
    index, _ = build(tmp_path / "index", encoder, [photos])
    index.close()
    empty_cache = ["--cache-dir", str(tmp_path / "empty-cache")]
    search = ["search", str(tmp_path / "index"), "a photo of a cat", "-k", "2", "--json", *empty_cache]
    assert main(search) == 2
    said = capsys.readouterr().err
    assert f"was built with the weights {Path(weights).resolve()}" in said
    assert f"`clipserve search INDEX QUERY --weights {Path(weights).resolve()}`" in said
    monkeypatch.setenv("CLIPSERVE_WEIGHTS", str(weights))
    assert (
        main(["search", str(tmp_path / "index"), "a photo of a cat", "-k", "2", "--json", *empty_cache]) == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 2
