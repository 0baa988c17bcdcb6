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


@pytest.fixture
def loopback_files():
    """``serve(directory) -> base URL``: a static file server on 127.0.0.1 (a stand-in of a
    publisher's storage), stopped at the end."""
    import functools
    import http.server
    import threading

    servers = []

    def serve(directory) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *args: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()


def with_table(monkeypatch, source: str, entry: dict) -> None:
    """The published-models table with ``source``'s entry of ViT-B-32 replaced (the stand-in's)."""
    from clipserve.backends import published

    table = {name: dict(models) for name, models in published.published_models().items()}
    table[source][NAME] = entry
    monkeypatch.setattr(published, "published_models", lambda: table)
    for variable in ("CLIPSERVE_OFFLINE", "HF_HUB_OFFLINE"):  # the stand-in storage is on loopback
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.slow
@pytest.mark.parametrize("zipped", [False, True])
def test_clip_as_service_files_give_open_clips_vectors(
    random_model, reference, photo_paths, new_encoder, tmp_path, monkeypatch, loopback_files, zipped
) -> None:
    from tests.published_layouts import clip_as_service_layout

    model = random_model(NAME)
    storage = tmp_path / "storage"
    md5 = clip_as_service_layout(model.model, 224, storage / "ViT-B-32", zipped=zipped)
    visual = "ViT-B-32/visual.zip" if zipped else "ViT-B-32/visual.onnx"
    with_table(
        monkeypatch,
        "clip-as-service",
        {"textual": ["ViT-B-32/textual.onnx", md5["textual"]], "visual": [visual, md5["visual"]]},
    )
    monkeypatch.setenv("CLIPSERVE_CLIP_AS_SERVICE_URL", loopback_files(storage))
    encoder = new_encoder(NAME, source="clip-as-service", cache_dir=tmp_path / "cache")
    assert encoder.info()["published_by"] == "clip-as-service"
    vectors = np.concatenate([encoder.encode(photo_paths[:4]), encoder.encode_text(AWKWARD_TEXTS)])
    assert cosines(vectors, np.concatenate([reference[:4], reference[len(photo_paths) :]])).min() >= 0.99999
    assert_mask_covers_the_real_tokens(encoder, model)


def assert_mask_covers_the_real_tokens(encoder, model) -> None:
    """The attention mask computed in the graph covers every token up to the end token, id 0
    (CLIP's "!" piece) included: a mask of ``ids != 0`` would hide it and change the vector."""
    import torch

    ids = model.tokenizer(["a photo of a cat", "two dogs"])
    ids[:, 2] = 0
    with torch.no_grad():
        expected = model.model.encode_text(ids).numpy()
    assert cosines(encoder.pipeline.model.backend.encode_text(ids.numpy()), expected).min() >= 0.99999


def test_a_clip_as_service_file_failing_its_md5_is_refused_and_not_kept(
    random_model, tmp_path, monkeypatch, loopback_files
) -> None:
    from clipserve.encoder import Encoder
    from tests.published_layouts import clip_as_service_layout

    storage = tmp_path / "storage"
    md5 = clip_as_service_layout(random_model(NAME).model, 224, storage / "ViT-B-32")
    wrong = "0" * 32
    entry = {"textual": ["ViT-B-32/textual.onnx", md5["textual"]], "visual": ["ViT-B-32/visual.onnx", wrong]}
    with_table(monkeypatch, "clip-as-service", entry)
    monkeypatch.setenv("CLIPSERVE_CLIP_AS_SERVICE_URL", loopback_files(storage))
    with pytest.raises(
        WeightsUnavailable, match=r"visual.onnx could not be fetched: .*checksum mismatch \(got md5"
    ):
        Encoder(NAME, source="clip-as-service", cache_dir=tmp_path / "cache")
    folder = tmp_path / "cache" / "published" / "clip-as-service" / "ViT-B-32"
    assert sorted(p.name for p in folder.iterdir()) == ["textual.onnx"]  # nothing half-written


@pytest.mark.slow
def test_fastembed_repos_give_open_clips_vectors(
    random_model, reference, photo_paths, new_encoder, tmp_path, monkeypatch
) -> None:
    from tests.published_layouts import fastembed_layout

    model = random_model(NAME)
    fastembed_layout(model.model, tmp_path / "vision", tmp_path / "text")
    for part in ("vision", "text"):
        prefill_hub_cache(tmp_path / part, f"Qdrant/clip-ViT-B-32-{part}", tmp_path / "cache" / "hub")
    monkeypatch.setenv("CLIPSERVE_OFFLINE", "1")
    encoder = new_encoder(NAME, source="fastembed", cache_dir=tmp_path / "cache")
    assert encoder.info()["published_by"] == "fastembed"
    vectors = np.concatenate([encoder.encode(photo_paths[:4]), encoder.encode_text(AWKWARD_TEXTS)])
    assert cosines(vectors, np.concatenate([reference[:4], reference[len(photo_paths) :]])).min() >= 0.99999
    assert_mask_covers_the_real_tokens(encoder, model)


def test_the_table_names_what_each_publisher_has() -> None:
    from clipserve.backends.published import sources_of

    assert sources_of(get_spec(NAME)) == ["immich", "clip-as-service", "fastembed"]
    assert immich_repo(get_spec("ViT-B-32::laion2b_s34b_b79k")) == "immich-app/ViT-B-32__laion2b-s34b-b79k"
    assert sources_of(get_spec("nllb-clip-base-siglip::v1")) == ["immich"]
    assert get_spec("nllb-clip-base-siglip::v1").licence == "CC-BY-NC-4.0"
    assert sources_of(get_spec("RN50::cc12m")) == ["immich", "clip-as-service"]


@pytest.mark.slow
def test_an_immich_siglip_squashes_and_canonicalises_as_open_clip(photo_paths, new_encoder, tmp_path) -> None:
    """SigLIP as immich publishes it: squash resize (no crop), mean and std 0.5, its own Hugging
    Face tokenizer in ``textual/`` with open_clip's canonical cleaning, a 64-token text graph. A tiny
    random SigLIP (tests/tiny_models.py) stands in for the real one's weights."""
    import open_clip
    import torch

    from tests.tiny_models import build_open_clip, open_clip_reference

    source = tmp_path / "tiny"
    model = build_open_clip("siglip", source)
    model_cfg = json.loads((source / "open_clip_config.json").read_text())["model_cfg"]
    preprocess = {
        "size": [224, 224],
        "mode": "RGB",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "squash",
        "fill_color": 0,
    }
    immich = immich_layout(
        model, model_cfg, tmp_path / "ViT-B-16-SigLIP__webli", preprocess=preprocess, tokenizer=source
    )
    encoder = new_encoder(str(immich), cache_dir=tmp_path / "cache")
    assert encoder.spec.resize_mode == "squash" and encoder.spec.tokenizer_clean == "canonicalize"
    transform = open_clip.image_transform(
        224, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash", interpolation="bicubic"
    )
    tokenizer = open_clip_reference("siglip", source)
    texts = [t for t in AWKWARD_TEXTS if t.strip()] + ["A Photo, of: the CAT!"]
    with torch.no_grad():
        images = model.encode_image(torch.stack([transform(Image.open(p)) for p in photo_paths]))
        expected = torch.cat([images, model.encode_text(tokenizer(texts))]).numpy()
    vectors = np.concatenate([encoder.encode(photo_paths), encoder.encode_text(texts)])
    assert len({round(float(v[0]), 5) for v in expected}) > len(expected) // 2  # the reference is alive
    assert cosines(vectors, expected).min() >= 0.99999


@pytest.mark.slow
def test_an_immich_mclip_gives_the_multilingual_clip_packages_vectors(
    random_model, photo_paths, new_encoder, tmp_path
) -> None:
    """M-CLIP as immich publishes it (its text encoder takes ``input_ids`` and ``attention_mask``,
    int32, one text of 77 tokens at a time; its image tower is ViT-B-32's), against the
    ``multilingual-clip`` package on the same weights and open_clip's image tower."""
    import torch

    from tests.published_layouts import immich_mclip_layout
    from tests.test_families import TEXTS, _reference_tokenizer
    from tests.tiny_models import build_mclip

    directory, reference = build_mclip(tmp_path / "mclip")
    clip = random_model(NAME)
    immich = immich_mclip_layout(clip.model, reference, directory, tmp_path / "XLM-Roberta-Large-Vit-B-32")
    encoder = new_encoder(str(immich), cache_dir=tmp_path / "cache")
    assert (
        encoder.spec.name == "M-CLIP/XLM-Roberta-Large-Vit-B-32"
        and encoder.info()["published_by"] == "immich"
    )
    with torch.no_grad():
        expected = reference.forward(TEXTS, _reference_tokenizer(directory)).numpy()
    assert cosines(encoder.encode_text(TEXTS), expected).min() >= 0.99999
    images = clip.image_vectors([Image.open(p) for p in photo_paths[:3]])
    assert cosines(encoder.encode(photo_paths[:3]), images).min() >= 0.99999


def test_auto_reads_the_first_publisher_that_has_the_model_only_without_torch(monkeypatch) -> None:
    from clipserve.backends import factory, published

    spec = get_spec(NAME)
    monkeypatch.setattr(factory, "torch_installed", lambda: True)
    assert factory._published_source(spec, None, "auto", None) is None  # torch exports the checkpoint
    monkeypatch.setattr(factory, "torch_installed", lambda: False)
    assert factory._published_source(spec, None, "auto", None) == "immich"
    table = {name: dict(models) for name, models in published.published_models().items()}
    del table["immich"][NAME]
    monkeypatch.setattr(published, "published_models", lambda: table)
    assert factory._published_source(spec, None, "auto", None) == "clip-as-service"
    assert factory._published_source(get_spec("ViT-bigG-14::laion2b_s39b_b160k"), None, "auto", None) is None
    assert factory._published_source(spec, None, "checkpoint", None) is None
