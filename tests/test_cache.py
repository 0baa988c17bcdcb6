"""The export cache is keyed by content, can be listed and pruned, and can be capped."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from clipserve.cache import content_fingerprint, entries, prune
from clipserve.cli import main

NAME = "RN50::openai"


@pytest.mark.slow
def test_the_same_weights_at_another_path_reuse_the_export(
    tmp_path, random_model, monkeypatch, new_encoder
) -> None:
    checkpoint = random_model(NAME).checkpoint
    cache = tmp_path / "cache"
    first = new_encoder(NAME, weights=checkpoint, cache_dir=cache)
    elsewhere = tmp_path / "redownloaded" / "RN50.pt"
    elsewhere.parent.mkdir()
    shutil.copy(checkpoint, elsewhere)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again for the same content at a new path")

    monkeypatch.setattr("clipserve.backends.export.export_onnx", no_export)
    second = new_encoder(NAME, weights=elsewhere, cache_dir=cache)
    assert second.info()["weights"] == first.info()["weights"]
    assert "/sha-" in first.info()["weights"]
    assert len(list(cache.glob("onnx/RN50/*"))) == 1


def test_fingerprints_are_hashed_once_per_file_version(tmp_path, monkeypatch) -> None:
    import hashlib

    data = tmp_path / "weights.pt"
    data.write_bytes(b"w" * 1000)
    first = content_fingerprint(data, tmp_path)
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert content_fingerprint(data, tmp_path) == first and not calls
    data.write_bytes(b"v" * 1000)
    assert content_fingerprint(data, tmp_path) != first and calls


def _entry(root, relative: str, size: int, age_s: float):
    path = root / relative
    path.mkdir(parents=True)
    (path / "blob").write_bytes(b"x" * size)
    (path / ".last-used").touch()
    stamp = time.time() - age_s
    os.utime(path / ".last-used", (stamp, stamp))
    return path


def test_prune_removes_least_recently_used_first(tmp_path) -> None:
    old = _entry(tmp_path, "onnx/A/sha-1/fp32", 3000, 3600)
    middle = _entry(tmp_path, "onnx/A/sha-2/fp32", 3000, 60)
    new = _entry(tmp_path, "checkpoints/A/tag", 3000, 1)
    stale = _entry(tmp_path, "onnx/A/sha-3/fp32.tmp-123", 10, 3 * 86400)
    assert [e.path for e in entries(tmp_path)] == [stale, old, middle, new]
    removed = prune(tmp_path, max_bytes=6500)
    assert {e.path for e in removed} == {stale, old}
    assert middle.exists() and new.exists() and not old.exists()
    assert prune(tmp_path, older_than_s=30, keep=middle / "blob") == []


def test_cache_command_lists_and_prunes(tmp_path, capsys) -> None:
    _entry(tmp_path, "onnx/A/sha-1/fp32", 2_000_000, 10 * 86400)
    kept = _entry(tmp_path, "onnx/A/sha-2/int8", 1_000_000, 60)
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "sha-1/fp32" in listing and "3.0 MB in 2 entries" in listing
    assert main(["cache", "prune", "--cache-dir", str(tmp_path), "--older-than-days", "7", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and (tmp_path / "onnx/A/sha-1/fp32").exists()
    assert main(["cache", "prune", "--cache-dir", str(tmp_path), "--cache-max-gb", "0.0015"]) == 0
    assert not (tmp_path / "onnx/A/sha-1/fp32").exists() and kept.exists()


@pytest.mark.slow
def test_a_cache_cap_evicts_on_load_but_never_the_model_in_use(
    cache_with_exports, random_model, new_encoder
) -> None:
    cache = cache_with_exports(NAME)
    stale = _entry(cache, "onnx/Other/sha-9/fp32", 5_000_000, 86400)
    encoder = new_encoder(NAME, weights=random_model(NAME).checkpoint, cache_dir=cache, cache_max_gb=0.001)
    assert not stale.exists()
    assert os.path.isdir(encoder.info()["weights"])
    assert encoder.encode(["still works"]).shape == (1, 1024)
