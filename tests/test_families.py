"""Every family against its reference on the same random weights and tokenizer files.

open_clip families (SigLIP, SigLIP2, CLIPA, MetaCLIP 2 worldwide, XLM-R and NLLB towers): open_clip's
own model and ``HFTokenizer``. M-CLIP: the ``multilingual-clip`` package's ``MultilingualCLIP``.
Token ids must be identical; vectors within cosine 0.99999 (torch) and 0.9999 (onnx).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipserve.errors import WeightsUnavailable
from tests.conftest import AWKWARD_TEXTS, built_once, cosines, open_clip_transform
from tests.tiny_models import (
    CORPUS,
    FAMILIES,
    build_mclip,
    build_open_clip,
    open_clip_reference,
    train_tokenizer,
)

TEXTS = [*AWKWARD_TEXTS, *CORPUS[len(AWKWARD_TEXTS) :], "word " * 200, "東京 " * 100]
TRIMMED = {"siglip": False, "siglip2": False, "clipa": False, "worldwide": True, "xlmr": True, "nllb": True}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``tiny(family)``: (directory, open_clip model) of that family, built once."""
    built = {}

    def get(family: str):
        if family not in built:
            directory = tmp_path_factory.mktemp(family)
            built[family] = (directory, build_open_clip(family, directory))
        return built[family]

    return get


@pytest.fixture(scope="module")
def encoders(tiny, tmp_path_factory):
    """``encoders(family, backend)``: an Encoder on the tiny model, built once."""
    cache = tmp_path_factory.mktemp("families-cache")
    with built_once() as get:
        yield lambda family, backend: get(
            FAMILIES[family].zoo_name, backend=backend, weights=tiny(family)[0], cache_dir=cache, batch_size=4
        )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_token_ids_equal_open_clip_hf_tokenizer(family, tiny, encoders) -> None:
    directory, _ = tiny(family)
    reference = open_clip_reference(family, directory)(TEXTS).numpy()
    tokenizer = encoders(family, "torch").pipeline.model.tokenizer
    ours = tokenizer.pad(tokenizer.token_ids(TEXTS))
    np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_vectors_equal_open_clip(family, backend, tiny, encoders, photo_paths) -> None:
    import torch

    from clipserve.preprocess.image import decode_image

    directory, model = tiny(family)
    encoder = encoders(family, backend)
    tokens = open_clip_reference(family, directory)(TEXTS)
    images = [decode_image(p) for p in photo_paths[:3]]
    with torch.no_grad():
        texts = model.encode_text(tokens).numpy()
        pixels = model.encode_image(
            torch.stack([open_clip_transform(encoder.spec)(im) for im in images])
        ).numpy()
    bound = 0.99999 if backend == "torch" else 0.9999
    assert cosines(encoder.encode_text(TEXTS), texts).min() >= bound
    assert cosines(encoder.encode(images), pixels).min() >= bound
    info = encoder.info()
    assert (info["family"], info["backend"]) == ("open_clip", backend)
    assert info["tokenizer"] == FAMILIES[family].text_cfg["hf_tokenizer_name"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batches_are_cut_short_only_where_exact(family, encoders) -> None:
    encoder = encoders(family, "onnx")
    backend = encoder.pipeline.model.backend
    widths = []
    original = backend.encode_text
    backend.encode_text = lambda tokens: widths.append(tokens.shape[1]) or original(tokens)
    try:
        encoder.encode_text(["a cat", "a dog", "two", "one"])
    finally:
        del backend.encode_text
    context = encoder.spec.context_length
    assert (max(widths) < context) == TRIMMED[family], widths


def test_the_export_carries_its_tokenizer(encoders, tmp_path, new_encoder) -> None:
    first = encoders("xlmr", "onnx")
    export = first.info()["weights"]
    copied = sorted(p.name for p in (first.pipeline.model.backend.model_dir / "tokenizer").iterdir())
    assert copied == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    alone = new_encoder(first.spec.name, weights=export, cache_dir=tmp_path)  # no hub, no torch needed
    assert cosines(alone.encode_text(TEXTS), first.encode_text(TEXTS)).min() > 0.99999


def test_a_missing_tokenizer_is_named_offline(tmp_path) -> None:
    from clipserve.encoder import Encoder

    with pytest.raises(WeightsUnavailable) as info:
        Encoder("ViT-B-16-SigLIP::webli", weights=tmp_path / "none.pt", cache_dir=tmp_path)
    assert "weights" in str(info.value)
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {"embed_dim": 8, "vision_cfg": {}, "text_cfg": FAMILIES["siglip"].text_cfg}})
    )
    with pytest.raises(WeightsUnavailable) as info:
        Encoder("ViT-B-16-SigLIP::webli", weights=directory, cache_dir=tmp_path)
    message = str(info.value)
    assert "no tokenizer files (timm/ViT-B-16-SigLIP) for ViT-B-16-SigLIP::webli" in message
    assert "offline" in message and "tokenizer='/path/to/dir'" in message


# -- M-CLIP -----------------------------------------------------------------------------------------


MCLIP = "M-CLIP/XLM-Roberta-Large-Vit-B-32"


@pytest.fixture(scope="module")
def mclip(tmp_path_factory):
    """A tiny M-CLIP text encoder (2-layer XLM-R) saved as the released directory, and the
    ``multilingual-clip`` reference model on the same weights."""
    return build_mclip(tmp_path_factory.mktemp("mclip"))


def _reference_tokenizer(directory):
    """M-CLIP's tokenizer called as clip-as-service called it: padding to the longest, cut at 77."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)

    def call(texts, **kwargs):
        return tokenizer(texts, **kwargs, truncation=True, max_length=77)

    return call


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_mclip_equals_the_multilingual_clip_package(
    backend, mclip, random_model, cache_root, photo_paths, new_encoder
) -> None:
    import torch

    directory, reference = mclip
    image_weights = random_model("ViT-B-32::openai").checkpoint
    encoder = new_encoder(
        MCLIP, backend=backend, weights=directory, image_weights=image_weights, cache_dir=cache_root
    )
    with torch.no_grad():
        expected = reference.forward(TEXTS, _reference_tokenizer(directory)).numpy()
    bound = 0.99999 if backend == "torch" else 0.9999
    assert cosines(encoder.encode_text(TEXTS), expected).min() >= bound
    from clipserve.preprocess.image import decode_image

    clip_images = random_model("ViT-B-32::openai").image_vectors([decode_image(p) for p in photo_paths[:2]])
    assert cosines(encoder.encode(photo_paths[:2]), clip_images).min() >= bound
    ranked = encoder.rank(photo_paths[0], ["ein Foto einer Katze", "a photo", "猫"])
    assert sorted(r.index for r in ranked) == [0, 1, 2] and abs(sum(r.clip_score for r in ranked) - 1) < 1e-6
    info = encoder.info()
    assert (info["family"], info["image_model"], info["dim"]) == ("mclip", "ViT-B-32::openai", 512)


def test_mclip_token_ids_are_the_tokenizers_cut_at_77(mclip, random_model, cache_root, new_encoder) -> None:
    directory, _ = mclip
    encoder = new_encoder(
        MCLIP,
        weights=directory,
        image_weights=random_model("ViT-B-32::openai").checkpoint,
        cache_dir=cache_root,
    )
    expected = _reference_tokenizer(directory)(TEXTS, padding=True)["input_ids"]
    tokenizer = encoder.pipeline.model.tokenizer
    assert tokenizer.token_ids(TEXTS) == [[i for i in row if i != tokenizer.pad_id] for row in expected]


@pytest.mark.slow
def test_mclip_int8_and_strict_loading(mclip, random_model, cache_root, tmp_path, new_encoder) -> None:
    import shutil

    import torch

    from clipserve.encoder import Encoder

    directory, _ = mclip
    image_weights = random_model("ViT-B-32::openai").checkpoint
    fp32 = new_encoder(MCLIP, weights=directory, image_weights=image_weights, cache_dir=cache_root)
    int8 = new_encoder(
        MCLIP, weights=directory, image_weights=image_weights, cache_dir=cache_root, precision="int8"
    )
    assert cosines(int8.encode_text(TEXTS), fp32.encode_text(TEXTS)).min() > 0.98
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    state = torch.load(broken / "pytorch_model.bin", weights_only=True)
    del state["LinearTransformation.bias"]
    state["transformer.extra.weight"] = torch.zeros(1)
    torch.save(state, broken / "pytorch_model.bin")
    with pytest.raises(
        WeightsUnavailable, match=r"missing LinearTransformation\.bias; unexpected transformer\.extra"
    ):
        Encoder(MCLIP, backend="torch", weights=broken, image_weights=image_weights, cache_dir=tmp_path)


# -- every face, unchanged, for every family ------------------------------------------------------------


def test_server_and_rank_work_for_a_hugging_face_family(tiny, encoders, photo_paths) -> None:
    import httpx

    from tests.server_helpers import running_server

    directory, _ = tiny("nllb")
    name = FAMILIES["nllb"].zoo_name
    offline = encoders("nllb", "onnx")
    with running_server(model=name, weights=str(directory), cache_dir=str(offline.settings.cache_dir)) as (
        url,
        _,
    ):
        body = {"inputs": [{"text": "ein Foto einer Katze"}, {"image": _b64(photo_paths[0].read_bytes())}]}
        served = np.asarray(httpx.post(f"{url}/encode", json=body).json()["embeddings"], np.float32)
        expected = offline.encode(["ein Foto einer Katze", photo_paths[0]])
        assert cosines(served, expected).min() > 0.99999
        rank = httpx.post(
            f"{url}/rank",
            json={
                "query": {"image": _b64(photo_paths[0].read_bytes())},
                "candidates": [{"text": "a"}, {"text": "b"}],
            },
        ).json()
        assert sorted(m["index"] for m in rank["matches"]) == [0, 1]
        model = httpx.get(f"{url}/v1/models").json()["data"][0]
        assert (model["id"], model["family"], model["dim"], model["backend"]) == (
            name,
            "open_clip",
            32,
            "onnx",
        )
        metrics = httpx.get(f"{url}/metrics").text
        assert 'family="open_clip"' in metrics


def test_cli_encodes_with_a_model_directory(tiny, encoders, tmp_path, photo_paths, capsys) -> None:
    from clipserve.cli import main

    directory, _ = tiny("siglip")
    out = tmp_path / "v.npy"
    args = ["encode", "--model", FAMILIES["siglip"].zoo_name, "--weights", str(directory)]
    args += ["--cache-dir", str(encoders("siglip", "onnx").settings.cache_dir), "--text", "a cat"]
    assert main([*args, str(photo_paths[0]), "-o", str(out)]) == 0
    expected = encoders("siglip", "onnx").encode(["a cat", photo_paths[0]])
    assert cosines(np.load(out), expected).min() > 0.99999


@pytest.mark.slow
def test_a_single_weights_file_with_a_tokenizer_directory(tmp_path, new_encoder) -> None:
    """``weights=FILE, tokenizer=DIR``: the zoo architecture (full size) with its tokenizer elsewhere."""
    import open_clip
    import torch

    name = "ViT-B-16-SigLIP::webli"
    tokenizer_dir = tmp_path / "tokenizer"
    train_tokenizer("t5", tokenizer_dir)
    torch.manual_seed(3)
    model = open_clip.create_model("ViT-B-16-SigLIP").eval()
    torch.save(model.state_dict(), tmp_path / "siglip.pt")
    encoder = new_encoder(name, backend="torch", weights=tmp_path / "siglip.pt", tokenizer=tokenizer_dir)
    from open_clip.tokenizer import HFTokenizer

    reference = HFTokenizer(str(tokenizer_dir), context_length=64, clean="canonicalize")
    texts = ["a photo of a cat", "ein Foto", ""]
    with torch.no_grad():
        expected = model.encode_text(reference(texts)).numpy()
    assert cosines(encoder.encode_text(texts), expected).min() > 0.99999
    assert encoder.dim == 768


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_mclip_exports_run_without_torch(mclip, random_model, cache_root, tmp_path) -> None:
    from clipserve.cli import main
    from clipserve.encoder import Encoder
    from tests.test_onnx_without_torch import _run

    directory, _ = mclip
    image_weights = str(random_model("ViT-B-32::openai").checkpoint)
    out = tmp_path / "export"
    args = ["export", "--model", MCLIP, "--weights", str(directory), "--image-weights", image_weights]
    assert main([*args, "--cache-dir", str(cache_root), "--output", str(out)]) == 0
    assert (out / "image" / "image.onnx").is_file() and (out / "text" / "text.onnx").is_file()
    assert (out / "text" / "tokenizer" / "tokenizer.json").is_file()
    vectors = tmp_path / "vectors.npy"
    result = _run(
        f"""
        from clipserve.encoder import Encoder
        import numpy as np
        encoder = Encoder({MCLIP!r}, weights={str(out / "text")!r}, image_weights={str(out / "image")!r},
                          cache_dir={str(tmp_path / "empty")!r})
        np.save({str(vectors)!r}, encoder.encode_text({TEXTS!r}))
        assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    with Encoder(MCLIP, weights=directory, image_weights=image_weights, cache_dir=cache_root) as reference:
        assert cosines(np.load(vectors), reference.encode_text(TEXTS)).min() > 0.99999


def test_mclips_text_export_refuses_to_derive_from_a_non_fp32_export(tmp_path) -> None:
    """As every other family: int8 or fp16 are derived from an fp32 export only."""
    from clipserve.backends.factory import backend_weights
    from clipserve.errors import UnsupportedModel
    from clipserve.families.mclip import export_text_fp32
    from clipserve.weights import ONNX_MARKER
    from clipserve.zoo import get_spec

    given = tmp_path / "fp16-export"
    given.mkdir()
    (given / ONNX_MARKER).write_text(json.dumps({"precision": "fp16", "model": MCLIP}))
    with pytest.raises(UnsupportedModel, match=r"fp16 export: run it with precision='fp16' .* pass an fp32"):
        backend_weights(
            get_spec(MCLIP), "onnx", "cpu", "int8", given, tmp_path / "cache", exporter=export_text_fp32
        )
