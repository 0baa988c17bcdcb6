"""OpenAI ``clip`` package checkpoints (``~/.cache/clip/ViT-B-32.pt``): the TorchScript archives
``clip.load`` downloads, and plain state dicts, load as the zoo's ``::openai`` models, equal to
open_clip's own loader of those files; an archive that is more than parameters is refused unread."""

from __future__ import annotations

import contextlib
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipserve.backends.torchscript import archive_arrays
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


def rewritten(archive, target, change) -> object:
    """A copy of ``archive`` at ``target`` with ``change(name, data) -> data`` applied to its
    entries (and extra entries ``change`` adds under ``None``)."""
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


class Scripted(nn.Module):
    """A scripted module whose ``__setstate__`` the archive's code file is edited to give a payload."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.marker = state[1]
        self.training = state[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


PAYLOAD = (
    b"    self.training = (state)[2]\n"
    b"    written = torch.fill_(torch.from_file(self.marker, True, 4, dtype=0), 65)\n"
    b"    print(torch.sum(written))\n"
    b"    return None"
)
"""TorchScript that writes a file (``torch.from_file(shared=True)``) when ``__setstate__`` runs."""


@pytest.fixture
def payload_archive(tmp_path):
    """``(archive, marker)``: a TorchScript archive whose ``__setstate__`` writes ``marker``, checked
    to really do it when ``torch.jit.load`` reads it (so a test that it is never run means something)."""
    marker = tmp_path / "pwned"
    (tmp_path / "decoyed").mkdir()
    plain = tmp_path / "plain.pt"
    torch.jit.script(Scripted(str(marker))).save(str(plain))

    def armed(name, data):
        if name is not None and "/code/" in name and name.endswith(".py"):
            return data.replace(b"    self.training = (state)[2]\n    return None", PAYLOAD)
        return data if name is not None else None

    archive = rewritten(plain, tmp_path / "ViT-B-32.pt", armed)
    torch.jit.load(str(archive))
    assert marker.read_bytes() == b"AAAA", "the payload fixture does not run its payload"
    marker.unlink()
    return archive, marker


def with_raw_names(path, renames: dict[bytes, bytes]) -> None:
    """Rename entries byte for byte (same length), in the local headers and the central directory:
    names Python's ``zipfile`` cannot write (a NUL inside)."""
    data = path.read_bytes()
    for old, new in renames.items():
        assert len(old) == len(new) and data.count(old) >= 2
        data = data.replace(old, new)
    path.write_bytes(data)


def test_a_nul_decoy_beside_the_payload_is_refused_and_nothing_runs(payload_archive, monkeypatch) -> None:
    """Round 3's hole: a decoy ``X.py\\0`` (clean) beside the real ``X.py`` (the payload) passed a
    check made with Python's zip reader, and ``torch.jit.load`` then ran the payload."""
    archive, marker = payload_archive
    code = next(n for n in zipfile.ZipFile(archive).namelist() if "/code/" in n and n.endswith(".py"))
    decoyed = archive.parent / "decoyed" / "ViT-B-32.pt"

    def decoy(name, data):
        if name is None:
            return [(code + "Q", b"class Clean:\n  pass\n")]  # renamed to ...py\0 below
        return data

    rewritten(archive, decoyed, decoy)
    with_raw_names(decoyed, {(code + "Q").encode(): code.encode() + b"\0"})
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("the archive was loaded"))
    with pytest.raises(UnsupportedModel, match="not a plain TorchScript archive: it holds the name"):
        Encoder(str(decoyed), backend="torch")
    assert not marker.exists()


def test_a_payload_archive_is_read_as_data_and_its_code_never_runs(payload_archive, monkeypatch) -> None:
    archive, marker = payload_archive
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("the archive was loaded"))
    with pytest.raises(UnsupportedModel):
        Encoder(str(archive), backend="torch")
    assert not marker.exists()


@pytest.fixture
def small_archive(tmp_path):
    """A traced archive of a few kilobytes, of the same layout as the model's (for the fuzz)."""
    path = tmp_path / "small.pt"
    network = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Sequential(nn.Linear(8, 2)))
    torch.jit.trace(network, torch.randn(1, 4)).save(str(path))
    return path


@pytest.mark.parametrize("attack", ["global", "entry", "repeated", "compressed", "short-record"])
def test_an_archive_that_is_more_than_parameters_is_refused_unread(
    small_archive, tmp_path, monkeypatch, attack
) -> None:
    archive = small_archive
    prefix = zipfile.ZipFile(archive).namelist()[0].split("/")[0]

    def change(name, data):
        if attack == "global" and name == f"{prefix}/data.pkl":
            return pickle.dumps(Payload(), protocol=2)
        if attack == "entry" and name is None:
            return [(f"{prefix}/extra/loader.py", b"import os\n")]
        if attack == "repeated" and name is None:
            return [(f"{prefix}/data.pkl", b"")]
        if attack == "short-record" and name == f"{prefix}/data/0":
            return data[:-4]
        return data if name is not None else None

    if attack == "compressed":
        bad = tmp_path / "ViT-B-32.pt"
        with zipfile.ZipFile(archive) as source, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as out:
            for name in source.namelist():
                out.writestr(name, source.read(name))
    else:
        with pytest.warns(UserWarning) if attack == "repeated" else contextlib.nullcontext():
            bad = rewritten(archive, tmp_path / "ViT-B-32.pt", change)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("the archive was loaded"))
    with pytest.raises(
        UnsupportedModel, match=r"refusing to load it|not a plain TorchScript archive|stored|compressed"
    ):
        Encoder(str(bad), backend="torch")


@pytest.mark.slow
def test_the_archive_reader_equals_torchs_own(archive) -> None:
    """The data-only reader gives exactly the parameters ``torch.jit.load`` finds (the reference)."""
    arrays = archive_arrays(archive)
    reference = torch.jit.load(str(archive), map_location="cpu").state_dict()
    assert set(reference) <= set(arrays)
    for key, value in reference.items():
        assert np.array_equal(arrays[key], value.numpy()), key
    assert len({float(np.abs(a).sum()) for a in arrays.values()}) > 10  # real, different tensors


def test_mutated_archives_are_refused_clearly_or_read_never_crash(
    small_archive, tmp_path, monkeypatch
) -> None:
    """A bounded fuzz of the archive: bytes flipped anywhere, truncation, names with NUL bytes or
    repeated, records cut short. Each mutant is read (its tensors) or refused with
    :class:`UnsupportedModel`: no other exception, and never ``torch.jit.load``."""
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("the archive was loaded"))
    rng = np.random.default_rng(0)
    archive = small_archive
    assert len(archive_arrays(archive)) == 6
    original = archive.read_bytes()
    with zipfile.ZipFile(archive) as source:
        names = source.namelist()
        pickle_at = original.find(source.read(f"{names[0].split('/')[0]}/data.pkl")[:64])
    outcomes = {"read": 0, "refused": 0}
    mutant = tmp_path / "mutant.pt"
    for trial in range(400):
        data = bytearray(original)
        kind = trial % 4
        if kind == 0:  # flips anywhere
            for position in rng.integers(0, len(data), size=8):
                data[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # flips inside data.pkl
            for position in rng.integers(pickle_at, pickle_at + 400, size=3):
                data[position] = int(rng.integers(0, 256))
        elif kind == 2:  # truncated
            data = data[: int(rng.integers(0, len(data)))]
        else:  # a name with a NUL byte, or two names made equal
            name = names[int(rng.integers(0, len(names)))].encode()
            other = names[int(rng.integers(0, len(names)))].encode()
            if len(other) == len(name) and other != name:
                data = bytearray(bytes(data).replace(other, name))
            else:
                data = bytearray(bytes(data).replace(name, name[:-1] + b"\0"))
        mutant.write_bytes(bytes(data))
        try:
            archive_arrays(mutant)
            outcomes["read"] += 1
        except UnsupportedModel as exc:
            assert str(mutant) in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 150 and outcomes["read"] > 0, outcomes


def test_a_file_not_named_as_openai_names_them_is_said(tmp_path) -> None:
    path = tmp_path / "my-model.pt"
    path.write_bytes(b"x")
    with pytest.raises(UnknownModel, match="not named as OpenAI's clip checkpoints are"):
        Encoder(str(path))
