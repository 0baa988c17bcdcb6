"""OpenAI ``clip`` package checkpoints (``~/.cache/clip/ViT-B-32.pt``): the TorchScript archives
``clip.load`` downloads, and plain state dicts, load as the zoo's ``::openai`` models, equal to
open_clip's own loader of those files; an archive that is more than parameters is refused unread."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipserve.encoder import Encoder
from clipserve.errors import UnknownModel, UnsupportedModel
from clipserve.zoo import get_spec
from tests.conftest import cosines, open_clip_transform

NAME = "ViT-B-32::openai"


class OpenAILayout(nn.Module):
    """An open_clip CLIP's parameters under OpenAI's names, with the three integer buffers OpenAI's
    archives carry; traced, it is an archive shaped as ``clip.load``'s."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, parameter in clip.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        for name, buffer in clip.named_buffers(recurse=False):
            if name not in clip._non_persistent_buffers_set:
                self.register_buffer(name, buffer)
        self.register_buffer("input_resolution", torch.tensor(224))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


@pytest.fixture(scope="module")
def archive(random_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip-cache") / "ViT-B-32.pt"
    model = random_model(NAME).model
    torch.jit.trace(OpenAILayout(model), torch.randn(1, 3, 224, 224), check_trace=False).save(str(path))
    return path


def open_clip_vectors(path, photo_paths, texts) -> np.ndarray:
    """open_clip's own reading of an OpenAI checkpoint (``load_openai_model``): the reference."""
    import open_clip

    model = open_clip.load_openai_model(str(path), device="cpu").eval()
    transform = open_clip_transform(get_spec(NAME))
    with torch.no_grad():
        images = model.encode_image(torch.stack([transform(Image.open(p)) for p in photo_paths]))
        text = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(texts))
    vectors = torch.cat([images, text]).numpy()
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.slow
def test_a_torchscript_archive_loads_as_the_openai_model(archive, photo_paths, cache_root) -> None:
    texts = ["a photo of a cat", "a diagram"]
    expected = open_clip_vectors(archive, photo_paths[:3], texts)
    with Encoder(str(archive), backend="torch") as encoder:
        assert encoder.spec.name == NAME
        assert cosines(encoder.encode([*photo_paths[:3], *texts]), expected).min() >= 0.99999
    with Encoder(NAME, weights=str(archive), backend="onnx", cache_dir=cache_root) as encoder:
        assert cosines(encoder.encode([*photo_paths[:3], *texts]), expected).min() >= 0.9999


@pytest.mark.slow
def test_a_state_dict_file_loads_too(random_model, tmp_path, photo_paths) -> None:
    model = random_model(NAME)
    path = tmp_path / "ViT-B-32.pt"
    torch.save(model.model.state_dict(), path)
    with Encoder(str(path), backend="torch") as encoder:
        vectors = encoder.encode([photo_paths[0], "a cat"])
    expected = np.concatenate(
        [model.image_vectors([Image.open(photo_paths[0])]), model.text_vectors(["a cat"])]
    )
    assert cosines(vectors, expected).min() >= 0.99999


def rewritten(archive, tmp_path, change) -> object:
    """A copy of ``archive`` with ``change(name, data) -> data`` applied to its entries (and extra
    entries ``change`` adds under ``None``)."""
    target = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w") as out:
        for name in source.namelist():
            out.writestr(name, change(name, source.read(name)))
        for name, data in change(None, b"") or []:
            out.writestr(name, data)
    return target


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("attack", ["global", "setstate", "entry"])
def test_an_archive_that_is_more_than_parameters_is_refused_unread(
    archive, tmp_path, monkeypatch, attack
) -> None:
    prefix = zipfile.ZipFile(archive).namelist()[0].split("/")[0]

    def change(name, data):
        if attack == "global" and name == f"{prefix}/data.pkl":
            return pickle.dumps(Payload(), protocol=2)
        if attack == "setstate" and name is not None and "/code/" in name and name.endswith(".py"):
            return data + b"\ndef __setstate__(self, state):\n    pass\n"
        if attack == "entry" and name is None:
            return [(f"{prefix}/extra/loader.py", b"import os\n")]
        return data if name is not None else None

    bad = rewritten(archive, tmp_path, change)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("the archive was loaded"))
    with pytest.raises(UnsupportedModel, match=r"refusing to load it|not a plain TorchScript archive"):
        Encoder(str(bad), backend="torch")


def test_a_file_not_named_as_openai_names_them_is_said(tmp_path) -> None:
    path = tmp_path / "my-model.pt"
    path.write_bytes(b"x")
    with pytest.raises(UnknownModel, match="not named as OpenAI's clip checkpoints are"):
        Encoder(str(path))
