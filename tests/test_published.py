"""immich's published ONNX exports, read without torch into clipserve's export layout: a local
directory, a hub repo id and a zoo name with ``source="immich"`` all give open_clip's vectors of the
same weights, on the shared photos and awkward texts; downloads are verified."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipserve.backends.published import IMMICH_FILES, immich_repo
from clipserve.errors import UnsupportedModel, WeightsUnavailable
from clipserve.zoo import get_spec
from tests.conftest import AWKWARD_TEXTS, cosines
from tests.published_layouts import immich_layout, prefill_hub_cache

NAME = "ViT-B-32::openai"


@pytest.fixture(scope="module")
def immich_dirs(random_model, tmp_path_factory):
    """``{"static": dir, "dynamic": dir}``: the random ViT-B-32 in immich's newer layout (static
    batch 1) and in its 2023 one (dynamic batch), named as immich names them."""
    model = random_model(NAME).model
    root = tmp_path_factory.mktemp("immich")
    return {
        "static": immich_layout(model, "ViT-B-32", root / "static" / "ViT-B-32__openai"),
        "dynamic": immich_layout(
            model, "ViT-B-32", root / "dynamic" / "ViT-B-32__openai", static_batch=False
        ),
    }


@pytest.fixture(scope="module")
def reference(random_model, photo_paths):
    """open_clip's vectors of the photos and the awkward texts: the reference."""
    model = random_model(NAME)
    images = model.image_vectors([Image.open(p) for p in photo_paths])
    texts = model.text_vectors(AWKWARD_TEXTS)
    assert len({round(float(v[0]), 6) for v in texts}) > len(AWKWARD_TEXTS) // 2  # different texts differ
    return np.concatenate([images, texts])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["static", "dynamic"])
def test_a_local_immich_directory_gives_open_clips_vectors(
    immich_dirs, reference, photo_paths, new_encoder, tmp_path, layout
) -> None:
    encoder = new_encoder(str(immich_dirs[layout]), cache_dir=tmp_path)
    info = encoder.info()
    assert encoder.spec.name == NAME and info["published_by"] == "immich"
    vectors = np.concatenate([encoder.encode(photo_paths), encoder.encode_text(AWKWARD_TEXTS)])
    assert cosines(vectors, reference).min() >= 0.99999
    export = json.loads(
        next((tmp_path / "onnx" / "ViT-B-32").glob("immich-*/fp32/clipserve.json")).read_text()
    )
    # The tracer bakes batch 1 into the attention's reshapes: a batch of two then fails, so the
    # static graph runs item by item; the 2023 exports' dynamic batch stays dynamic.
    static = layout == "static"
    assert export["batch"] == ({"image": 1, "text": 1} if static else {"image": None, "text": None})


@pytest.mark.slow
def test_a_zoo_name_reads_immichs_repo_from_the_hub_cache(
    immich_dirs, reference, photo_paths, new_encoder, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("CLIPSERVE_OFFLINE", "1")
    repo = immich_repo(get_spec(NAME))
    assert repo == "immich-app/ViT-B-32__openai"
    prefill_hub_cache(immich_dirs["static"], repo, tmp_path / "hub")
    by_name = new_encoder(NAME, source="immich", cache_dir=tmp_path)
    assert by_name.info()["published_repo"] == repo
    vectors = np.concatenate([by_name.encode(photo_paths[:3]), by_name.encode_text(AWKWARD_TEXTS)])
    expected = np.concatenate([reference[:3], reference[len(photo_paths) :]])
    assert cosines(vectors, expected).min() >= 0.99999
    by_repo = new_encoder(repo, cache_dir=tmp_path)
    assert cosines(by_repo.encode_text(AWKWARD_TEXTS[:3]), reference[len(photo_paths) :][:3]).min() >= 0.99999
    int8 = new_encoder(NAME, source="immich", precision="int8", cache_dir=tmp_path)
    assert cosines(int8.encode_text(AWKWARD_TEXTS[:3]), reference[len(photo_paths) :][:3]).min() >= 0.99


def test_arm_nn_and_rknn_builds_are_never_fetched() -> None:
    import fnmatch

    wanted = ["visual/model.onnx", "textual/model.onnx", "textual/tokenizer.json", "config.json"]
    unwanted = ["visual/model.armnn", "textual/fp16/model.armnn", "visual/rknpu/rk3588/model.rknn"]
    assert all(any(fnmatch.fnmatch(f, p) for p in IMMICH_FILES) for f in wanted)
    assert not any(fnmatch.fnmatch(f, p) for f in unwanted for p in IMMICH_FILES)


@pytest.mark.slow
def test_a_corrupt_download_fails_its_checksum_and_is_removed(immich_dirs, tmp_path, monkeypatch) -> None:
    from clipserve.encoder import Encoder

    monkeypatch.setenv("CLIPSERVE_OFFLINE", "1")
    repo = immich_repo(get_spec(NAME))
    snapshot = prefill_hub_cache(immich_dirs["static"], repo, tmp_path / "hub")
    blob = (snapshot / "textual" / "model.onnx").resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailable, match=r"textual/model.onnx .* does not match the hub's checksum"):
        Encoder(NAME, source="immich", cache_dir=tmp_path)
    assert not blob.exists() and not (snapshot / "textual" / "model.onnx").exists()
    assert not list((tmp_path / "onnx").glob("**/clipserve.json"))  # nothing made of it


def test_a_graph_of_another_layout_is_refused_clearly(immich_dirs, tmp_path) -> None:
    import onnx

    from clipserve.backends.published import adapt_graph

    graph = onnx.load(str(immich_dirs["static"] / "visual" / "model.onnx"))
    graph.graph.input[0].name = "pixel_values"
    onnx.save(graph, str(tmp_path / "other.onnx"))
    with pytest.raises(UnsupportedModel, match=r"takes \['pixel_values'\]; .* takes \['image'\]"):
        adapt_graph(tmp_path / "other.onnx", tmp_path / "out.onnx", {"image": ("pixels", 1)})


def test_an_export_published_in_the_hub_layout_loads_by_hf_hub(
    onnx_export, encoder_for, photo_paths, new_encoder, tmp_path, monkeypatch
) -> None:
    from clipserve.cli import main

    repo_dir = tmp_path / "repo"
    assert (
        main(["export", "--model", NAME, "--weights", onnx_export(NAME), "--hub-layout", str(repo_dir)]) == 0
    )
    card = (repo_dir / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "hf-hub:ORG/REPO" in card
    assert not json.loads((repo_dir / "clipserve.json").read_text())["source"].startswith("/")
    monkeypatch.setenv("CLIPSERVE_OFFLINE", "1")
    prefill_hub_cache(repo_dir, "acme/vit-b-32-clipserve", tmp_path / "cache" / "hub")
    published = new_encoder("hf-hub:acme/vit-b-32-clipserve", cache_dir=tmp_path / "cache")
    inputs = [str(photo_paths[0]), "a photo of a cat"]
    assert published.spec.name == NAME and published.info()["licence"] == "MIT"
    assert cosines(published.encode(inputs), encoder_for(NAME, "onnx").encode(inputs)).min() >= 0.99999
