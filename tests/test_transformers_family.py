"""Hugging Face transformers checkpoints: every supported class, as ``save_pretrained`` writes it,
loads and embeds exactly as transformers' own ``get_image_features``/``get_text_features`` with its
own processor (the PIL backend) and tokenizer; hub repos resolve through the hub cache."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from clipserve.encoder import Encoder
from clipserve.errors import UnknownModel, UnsupportedModel, WeightsUnavailable
from clipserve.preprocess.hf_image import HfImagePreprocessor, HfImageSettings
from clipserve.preprocess.image import ImagePreprocessor
from clipserve.zoo import get_spec
from tests import hf_models
from tests.conftest import AWKWARD_TEXTS, cosines
from tests.server_helpers import running_server

CLASSES = ["clip", "clip_eos_2", "siglip", "siglip2", "chinese_clip", "clip_vision", "clip_text"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Every class, saved once: name → directory."""
    root = tmp_path_factory.mktemp("hf-models")
    vision, text = hf_models.clip_split(root / "split")
    return {
        "clip": hf_models.clip(root / "clip"),
        "clip_eos_2": hf_models.clip(root / "clip-eos-2", seed=1, eos_token_id=2),
        "siglip": hf_models.siglip(root / "siglip"),
        "siglip2": hf_models.siglip2(root / "siglip2"),
        "chinese_clip": hf_models.chinese_clip(root / "chinese-clip"),
        "clip_vision": vision,
        "clip_text": text,
    }


def odd_images(photo_paths) -> list[Image.Image]:
    """Photos with the shapes and modes that the two preprocessings treat differently: odd margins
    (a 67 x 40 crop: 35 pixels to share), smaller than the crop, transparency, palette, grey."""
    photo = Image.open(photo_paths[0]).convert("RGB")
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    return [
        photo.resize((67, 40)),
        photo.resize((40, 67)),
        photo.resize((13, 9)),
        rgba,
        photo.convert("P", palette=Image.Palette.ADAPTIVE),
        photo.convert("L"),
    ]


def reference_processor(directory):
    return transformers.AutoImageProcessor.from_pretrained(directory, backend="pil")


@pytest.mark.parametrize("name", ["clip", "siglip", "chinese_clip"])
def test_pixels_equal_transformers_pil_processor(models, name, photo_paths) -> None:
    directory = models[name]
    processor = reference_processor(directory)
    ours = HfImagePreprocessor(
        HfImageSettings.from_config(json.loads((directory / "preprocessor_config.json").read_text()))
    )
    images = [Image.open(p) for p in photo_paths] + odd_images(photo_paths)
    if not processor.do_convert_rgb:  # transformers then takes RGB images only
        images = [image.convert("RGB") for image in images]
    expected = processor(images=images, return_tensors="np")["pixel_values"]
    got = np.stack([ours.normalise(ours.rgb(image)) for image in images])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_naflex_patches_equal_transformers(models, photo_paths) -> None:
    directory = models["siglip2"]
    processor = reference_processor(directory)
    ours = HfImagePreprocessor(
        HfImageSettings.from_config(json.loads((directory / "preprocessor_config.json").read_text()))
    )
    images = [Image.open(p).convert("RGB") for p in photo_paths] + [
        im.convert("RGB") for im in odd_images(photo_paths)
    ]
    expected = processor(images=images, return_tensors="np")
    for row, image in enumerate(images):
        patches, grid = ours.patches(image)
        assert tuple(expected["spatial_shapes"][row]) == grid
        count = grid[0] * grid[1]
        assert expected["pixel_attention_mask"][row].sum() == count
        np.testing.assert_allclose(
            ours.normalise_patches(patches), expected["pixel_values"][row][:count], atol=1e-6, rtol=0
        )


def test_the_crop_starts_where_transformers_starts_it_not_where_open_clip_does(models, photo_paths) -> None:
    """A 35-pixel margin: transformers starts the crop at 35 // 2 = 17, open_clip at round(17.5) = 18."""
    image = Image.open(photo_paths[0]).convert("RGB").resize((67, 32))
    settings = HfImageSettings(shortest_edge=32, crop=(32, 32), mean=(0, 0, 0), std=(1, 1, 1))
    ours = HfImagePreprocessor(settings).rgb(image)
    np.testing.assert_array_equal(ours, np.asarray(image).transpose(2, 0, 1)[:, :, 17:49])
    spec = get_spec("ViT-B-32::openai")
    open_clip_like = ImagePreprocessor(spec).rgb(image.resize((67 * 224 // 32, 224)))
    assert open_clip_like.shape == (3, 224, 224)  # the same rule there puts the crop one pixel right


def reference_vectors(name: str, directory, images, texts) -> tuple[np.ndarray | None, np.ndarray | None]:
    """transformers' own vectors: its processor (PIL backend), tokenizer and feature methods."""
    architecture = json.loads((directory / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, architecture).from_pretrained(directory).eval()
    image_vectors = text_vectors = None
    with torch.no_grad():
        if name != "clip_text":
            processor = reference_processor(directory)
            inputs = processor(images=images, return_tensors="pt")
            if hasattr(model, "get_image_features"):
                out = model.get_image_features(**inputs)
                image_vectors = getattr(out, "pooler_output", out).numpy()
            else:
                image_vectors = model(**inputs).image_embeds.numpy()
        if name != "clip_vision":
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
            padding = "max_length" if name.startswith("siglip") else True  # as SigLIP was trained
            inputs = tokenizer(texts, padding=padding, truncation=True, return_tensors="pt")
            if hasattr(model, "get_text_features"):
                out = model.get_text_features(**inputs)
                text_vectors = getattr(out, "pooler_output", out).numpy()
            else:
                text_vectors = model(**inputs).text_embeds.numpy()
    # Alive: inputs that differ get vectors further apart than the tests' tolerances.
    for vectors in (image_vectors, text_vectors):
        if vectors is not None:
            assert cosines(vectors[:1], vectors[2:3])[0] < 0.999, f"{name}: reference vectors alike"
    return image_vectors, text_vectors


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSES)
def test_vectors_equal_transformers_on_both_backends(models, name, photo_paths, cache_root) -> None:
    directory = models[name]
    images = [Image.open(p) for p in photo_paths] + odd_images(photo_paths)[:2]
    if name != "clip_text" and not reference_processor(directory).do_convert_rgb:
        images = [image.convert("RGB") for image in images]  # transformers then takes RGB images only
    texts = AWKWARD_TEXTS + (hf_models.CHINESE_TEXTS if name == "chinese_clip" else [])
    image_reference, text_reference = reference_vectors(name, directory, images, texts)
    for backend, minimum in (("torch", 0.99999), ("onnx", 0.9999)):
        with Encoder(str(directory), backend=backend, cache_dir=cache_root) as encoder:
            assert encoder.info()["family"] == "transformers" and encoder.spec.name == str(directory)
            if image_reference is not None:
                assert encoder.dim == image_reference.shape[1]
                assert cosines(encoder.encode_image(images), image_reference).min() >= minimum, backend
            else:
                assert encoder.modalities == ("text",)
            if text_reference is not None:
                vectors = encoder.encode_text(texts)
                assert cosines(vectors, text_reference).min() >= minimum, backend
                one_by_one = np.concatenate([encoder.encode_text([t]) for t in texts[:4]])
                assert (
                    cosines(one_by_one, vectors[:4]).min() >= 0.99999
                )  # batches cut at their longest: exact
            else:
                assert encoder.modalities == ("image",)


@pytest.mark.parametrize("name", ["clip", "siglip", "siglip2", "chinese_clip"])
def test_a_fine_tuned_model_saved_with_its_whole_processor_loads(models, name, photo_paths, tmp_path) -> None:
    """transformers 5's ``processor.save_pretrained(dir)`` writes ``processor_config.json`` (the image
    processor nested in it) and no ``preprocessor_config.json``: the usual way to save a fine-tune."""
    import shutil

    saved = tmp_path / "fine-tuned"
    shutil.copytree(models[name], saved)
    (saved / "preprocessor_config.json").unlink()
    with pytest.raises(WeightsUnavailable, match=r"processor_config\.json"):
        Encoder(str(saved), backend="torch", cache_dir=tmp_path / "cache")
    transformers.AutoProcessor.from_pretrained(models[name]).save_pretrained(saved)
    assert (saved / "processor_config.json").is_file() and not (saved / "preprocessor_config.json").exists()
    inputs = [str(photo_paths[0]), str(photo_paths[1]), "a photo of a cat"]
    with (
        Encoder(str(saved), backend="torch", cache_dir=tmp_path / "cache") as fine_tuned,
        Encoder(str(models[name]), backend="torch", cache_dir=tmp_path / "cache") as original,
    ):
        assert fine_tuned.spec.hf_processor == original.spec.hf_processor
        assert cosines(fine_tuned.encode(inputs), original.encode(inputs)).min() >= 0.99999


def test_an_export_is_quiet_and_says_its_stages(models, tmp_path, capfd, caplog) -> None:
    """A transformers model's first ONNX load exports it: the log says each stage, and neither
    torch's notes on dynamic axes (UserWarnings) nor transformers' weight-loading bar get through."""
    import logging
    import warnings

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        Encoder(str(models["clip"]), cache_dir=tmp_path / "cache").close()
    assert not [w for w in caught if "torch" in w.filename or "onnxscript" in w.filename], caught[0].message
    assert "Loading weights" not in capfd.readouterr().err
    stages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exporting ")]
    assert [stage.split(" to ONNX")[0].split(" ", 2)[2] for stage in stages] == [
        "weights",
        "image tower",
        "text tower",
    ], stages


def test_short_texts_run_short_where_the_tower_allows(models, cache_root) -> None:
    expected = {
        "clip": "eos",
        "clip_eos_2": "argmax",
        "chinese_clip": "mask",
        "siglip": "none",
        "siglip2": "none",
    }
    for name, trim in expected.items():
        with Encoder(str(models[name]), backend="torch", cache_dir=cache_root) as encoder:
            assert encoder.spec.text_trim == trim and encoder.spec.text_truncatable == (trim != "none")


def test_a_zoo_name_with_a_transformers_directory_as_weights(models, cache_root, photo_paths) -> None:
    """What the seed executors' users have: their own CLIPModel directory, and OpenAI's model name."""
    with (
        Encoder("openai/clip-vit-base-patch32", weights=str(models["clip"]), cache_dir=cache_root) as named,
        Encoder(str(models["clip"]), cache_dir=cache_root) as plain,
    ):
        assert named.spec.name == "ViT-B-32::openai" and named.info()["family"] == "transformers"
        assert (
            cosines(named.encode([photo_paths[0], "a cat"]), plain.encode([photo_paths[0], "a cat"])).min()
            > 0.99999
        )


def hub_cache(root, repo: str, directory) -> None:
    """A stand-in for the Hugging Face hub cache holding ``directory`` as ``repo``'s snapshot."""
    owner, name = repo.split("/")
    snapshot = root / f"models--{owner}--{name}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in directory.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (root / f"models--{owner}--{name}" / "refs").mkdir()
    (root / f"models--{owner}--{name}" / "refs" / "main").write_text("0123abcd")


def test_a_hub_repo_id_resolves_through_the_hub_cache(models, tmp_path, monkeypatch, cache_root) -> None:
    from huggingface_hub import constants

    hub_cache(tmp_path / "hub", "acme/tiny-clip", models["clip"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with (
        Encoder("acme/tiny-clip", cache_dir=cache_root) as encoder,
        Encoder(str(models["clip"]), cache_dir=cache_root) as local,
    ):
        assert encoder.spec.name == "acme/tiny-clip" and "0123abcd" in str(encoder.settings.weights)
        assert cosines(encoder.encode(["a dog"]), local.encode(["a dog"]))[0] > 0.99999
    with pytest.raises(UnknownModel) as info:
        Encoder("acme/not-there", cache_dir=cache_root)
    message = str(info.value)
    assert "'acme/not-there'" in message and str(tmp_path / "hub") in message and "offline" in message


def test_what_is_not_a_supported_model_is_said(tmp_path) -> None:
    blip = tmp_path / "blip"
    blip.mkdir()
    (blip / "config.json").write_text(json.dumps({"architectures": ["BlipModel"], "model_type": "blip"}))
    (blip / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModel, match="names BlipModel: not a supported family"):
        Encoder(str(blip))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(UnknownModel, match=r"neither a transformers model .* it holds notes\.txt"):
        Encoder(str(other))
    with pytest.raises(UnsupportedModel, match="names BlipModel"), running_server(model=str(blip)):
        pass


def test_every_face_serves_a_transformers_directory(models, cache_root, photo_paths, tmp_path) -> None:
    from clipserve.cli import main

    clip, siglip = str(models["clip"]), str(models["siglip"])
    png = io.BytesIO()
    Image.open(photo_paths[1]).save(png, format="PNG")
    with Encoder(clip, cache_dir=cache_root) as encoder, Encoder(siglip, cache_dir=cache_root) as other:
        expected = encoder.encode(["a cat", photo_paths[1]])
        expected_other = other.encode(["a cat"])
    with running_server(model=[clip, f"fashion={siglip}"], cache_dir=str(cache_root)) as (url, _):
        import base64

        inputs = [{"text": "a cat"}, {"image": base64.b64encode(png.getvalue()).decode()}]
        answer = httpx.post(f"{url}/encode", json={"inputs": inputs}, timeout=60).json()
        assert answer["model"] == clip and cosines(np.asarray(answer["embeddings"]), expected).min() > 0.99999
        named = httpx.post(
            f"{url}/encode", json={"inputs": inputs[:1], "model": "fashion"}, timeout=60
        ).json()
        assert cosines(np.asarray(named["embeddings"]), expected_other).min() > 0.99999
        listed = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert listed[clip]["family"] == listed["fashion"]["family"] == "transformers"
    out = tmp_path / "vectors.npy"
    assert (
        main(["encode", "--model", clip, "--cache-dir", str(cache_root), "--text", "a cat", "-o", str(out)])
        == 0
    )
    assert cosines(np.load(out), expected[:1])[0] > 0.99999


def test_the_models_command_says_how_to_use_one(capsys) -> None:
    from clipserve.cli import main

    assert main(["models"]) == 0
    shown = capsys.readouterr().out
    assert "CLIPModel" in shown and "--model /path/to/model-directory" in shown and "owner/repo" in shown


@pytest.mark.parametrize("name", CLASSES)
def test_each_class_through_the_server_and_the_cli(models, name, cache_root, photo_paths, tmp_path) -> None:
    import base64

    from clipserve.cli import main

    directory = str(models[name])
    with Encoder(directory, backend="torch", cache_dir=cache_root) as reference:  # transformers' modules
        modalities = reference.modalities
        values = [v for m, v in (("image", photo_paths[2]), ("text", "a photo of a cat")) if m in modalities]
        expected = reference.encode(values)
    image = {"image": base64.b64encode(photo_paths[2].read_bytes()).decode()}
    inputs = [
        image if m == "image" else {"text": "a photo of a cat"} for m in ("image", "text") if m in modalities
    ]
    with running_server(model=directory, cache_dir=str(cache_root)) as (url, _):
        answer = httpx.post(f"{url}/encode", json={"inputs": inputs}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert cosines(np.asarray(answer.json()["embeddings"]), expected).min() >= 0.9999
    out = tmp_path / "vectors.npy"
    args = ["encode", "--model", directory, "--cache-dir", str(cache_root), "-o", str(out)]
    args += [str(photo_paths[2])] if "image" in modalities else []
    args += ["--text", "a photo of a cat"] if "text" in modalities else []
    assert main(args) == 0
    written = np.load(out)
    order = [expected[-1], expected[0]] if len(values) == 2 else list(expected)  # the CLI writes texts first
    assert cosines(written, np.stack(order)).min() >= 0.9999
