"""Ray Data: bulk embedding jobs (resumable), the map_batches class, and ``clipserve encode --ray``,
on a local Ray of 2 CPUs (127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cosines

pytestmark = pytest.mark.slow
NAME = "ViT-B-32::openai"


def read_whole(output: Path, ray) -> list[str]:
    """The ids of a job's output directory read whole by pyarrow, pandas, DuckDB and Ray Data,
    which must agree (side files beside the parts break them)."""
    import duckdb
    import pandas as pd
    import pyarrow.parquet as pq

    by_pyarrow = pq.read_table(output).column("id").to_pylist()
    assert pd.read_parquet(output)["id"].tolist() == by_pyarrow
    rows = duckdb.sql(f"SELECT id FROM read_parquet('{output}/*.parquet') ORDER BY filename, file_row_number")
    assert [row[0] for row in rows.fetchall()] == by_pyarrow
    assert sorted(ray.data.read_parquet(str(output)).to_pandas()["id"]) == sorted(by_pyarrow)
    return by_pyarrow


def test_legacy_error_lists_move_out_of_the_readers_way(tmp_path) -> None:
    from clipserve.ray.data import ERRORS, _move_legacy_error_lists

    (tmp_path / "part-000003.errors.json").write_text("[]")
    _move_legacy_error_lists(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["_errors"] and (tmp_path / ERRORS.format(3)).is_file()


def test_data_job_writes_encoder_vectors_in_order_and_resumes(
    local_ray, vit_onnx_export, encoder_for, tmp_path
) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    from clipserve.preprocess.image import is_image_path
    from clipserve.ray.data import entries_from, run_job
    from clipserve.settings import EncodeSettings

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(200):
        path = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    (folder / "0007.png").write_bytes(b"not a png")  # bad files: reported, not fatal
    captions = [f"caption number {i} of a photo" for i in range(600)]
    entries = entries_from([folder], captions, is_image_path)
    assert [e.id for e in entries] == [str(p) for p in paths] + [f"text:{c}" for c in captions]
    (folder / "0013.png").unlink()  # gone before the job reads it: an error, never embedded as text
    settings = EncodeSettings(model=NAME, weights=vit_onnx_export, batch_size=16, shard_size=120, replicas=2)
    output = tmp_path / "vectors"
    first = run_job(entries, output, settings, progress=False)
    assert (first.shards, first.skipped_shards, first.vectors) == (7, 0, 798)
    assert [identifier for identifier, _ in first.errors] == [
        str(folder / "0007.png"),
        str(folder / "0013.png"),
    ]

    table = pq.read_table(sorted(output.glob("part-*.parquet")))
    ids = table.column("id").to_pylist()
    bad = ("0007.png", "0013.png")
    assert ids == [e.id for e in entries if not e.id.endswith(bad)]
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    reference = encoder_for(NAME, "onnx")
    good_paths = [p for p in paths if p.name not in bad]
    assert cosines(vectors[:198], reference.encode_image(good_paths)).min() >= 0.9999
    assert cosines(vectors[198:], reference.encode_text(captions)).min() >= 0.9999

    # an interruption: two parts never written, a half-written one left behind
    kept = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")}
    for lost in ("part-000002.parquet", "part-000005.parquet"):
        (output / lost).unlink()
        del kept[lost]
    (output / ".part-000005.parquet.123.tmp").write_bytes(b"half")
    second = run_job(entries, output, settings, progress=False)
    assert (second.shards, second.skipped_shards, second.vectors) == (7, 5, 798)
    assert {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet") if p.name in kept} == kept
    again = pq.read_table(sorted(output.glob("part-*.parquet")))
    assert again.column("id").to_pylist() == ids
    assert read_whole(output, local_ray) == ids  # with bad items, and a half-written part left behind
    assert np.allclose(np.asarray(again.column("vector").to_pylist()), vectors, atol=1e-6)

    with pytest.raises(Exception, match="holds a job with other"):
        run_job(entries[:-1], output, settings, progress=False)
    assert json.loads((output / "_clipserve_job.json").read_text())["items"] == 800


def test_embed_batch_in_a_users_pipeline(local_ray, vit_onnx_export, encoder_for) -> None:
    from clipserve.ray import EmbedBatch

    captions = [f"a caption {i}" for i in range(100)]
    dataset = local_ray.data.from_items([{"id": i, "text": c} for i, c in enumerate(captions)])
    embedded = dataset.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "column": "text",
            "modality": "text",
            "model": NAME,
            "weights": vit_onnx_export,
        },
        concurrency=1,
        batch_size=32,
    )
    rows = sorted(embedded.take_all(), key=lambda row: row["id"])
    assert [row["error"] for row in rows] == [""] * 100 and "text" not in rows[0]
    vectors = np.stack([row["vector"] for row in rows])
    assert cosines(vectors, encoder_for(NAME, "onnx").encode_text(captions)).min() >= 0.9999


def test_cli_encodes_a_folder_on_ray(
    local_ray, vit_onnx_export, encoder_for, photo_paths, tmp_path, capsys
) -> None:
    import pyarrow.parquet as pq

    from clipserve.cli import main

    output = tmp_path / "out"
    folder = Path(photo_paths[0]).parent
    assert main(["encode", str(folder), "--ray", "--output", str(output), "--weights", vit_onnx_export]) == 0
    table = pq.read_table(sorted(output.glob("part-*.parquet")))
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
    assert table.column("id").to_pylist() == files
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    assert cosines(vectors, encoder_for(NAME, "onnx").encode_image(files)).min() >= 0.9999
    assert "wrote 10 vectors" in capsys.readouterr().err
    assert read_whole(output, local_ray) == files


def test_an_index_builds_from_a_ray_jobs_vectors_without_embedding_again(
    local_ray, vit_onnx_export, encoder_for, photo_paths, tmp_path, capsys, monkeypatch
) -> None:
    """Bulk indexing: the vectors `encode --ray` wrote go into an index as they are."""
    from clipserve.cli import main
    from clipserve.encoder import Encoder
    from clipserve.index import Index

    output = tmp_path / "out"
    folder = Path(photo_paths[0]).parent
    assert (
        main(
            [
                "encode",
                str(folder),
                "--text",
                "a cat",
                "--ray",
                "--output",
                str(output),
                "--weights",
                vit_onnx_export,
            ]
        )
        == 0
    )
    monkeypatch.setattr(Encoder, "encode_lenient", lambda *a, **k: pytest.fail("embedded again"))
    index_dir = tmp_path / "index"
    assert (
        main(
            ["index", "--index", str(index_dir), "--from-vectors", str(output), "--weights", vit_onnx_export]
        )
        == 0
    )
    assert "11 added" in capsys.readouterr().err
    monkeypatch.undo()
    encoder = encoder_for(NAME, "onnx")
    with Index.open(index_dir, encoder) as index:
        hits = index.search("a cat", k=1, modality="text")
        assert hits[0].id == "text:a cat" and hits[0].score > 0.9999
        photo = index.search(photo_paths[3], k=1)
        assert photo[0].id == str(Path(photo_paths[3]).resolve()) and photo[0].score > 0.9999
