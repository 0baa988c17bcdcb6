"""backend="auto": the rules that leave one backend, and the measured choice, remembered per CPU."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import clipserve.families.choice as choice
from clipserve.errors import UnsupportedModel
from clipserve.families import resolve_model
from clipserve.settings import EngineSettings
from tests.conftest import cosines

NAME = "ViT-B-32::openai"


@pytest.fixture
def choices_file(monkeypatch, tmp_path) -> str:
    """A choices file of this test's own (in the shared cache, where the random model's export is)."""
    name = f"choices-{tmp_path.name}.json"
    monkeypatch.setattr(choice, "CHOICES_FILE", name)
    return name


def test_the_default_is_auto(monkeypatch) -> None:
    monkeypatch.delenv("CLIPSERVE_BACKEND")  # the suite's own (tests/conftest.py)
    from clipserve.settings import resolve

    assert EngineSettings().backend == "auto" == resolve(EngineSettings).backend


def test_the_rules_leave_one_backend_where_only_one_can_run(random_model, onnx_export, monkeypatch) -> None:
    checkpoint = str(random_model(NAME).checkpoint)

    def found(**options) -> tuple[str, ...]:
        _, settings = resolve_model(EngineSettings(model=NAME, **options))
        return choice.candidates(settings)

    assert found(weights=checkpoint) == ("onnx", "torch")
    assert found(weights=onnx_export(NAME)) == ("onnx",)  # an export runs on ONNX Runtime
    assert found(weights=checkpoint, precision="int8") == ("onnx",)
    assert found(weights=checkpoint, precision="bf16") == ("torch",)
    assert found(weights=checkpoint, device="tensorrt") == ("onnx",)
    assert found(weights=checkpoint, device="cuda", precision="fp16") == ("onnx", "torch")
    assert found(weights=checkpoint, backend="torch") == ("torch",)  # a named backend stays
    assert found(source="immich") == ("onnx",)
    with pytest.raises(UnsupportedModel, match="'fp16' is not available for the onnx backend on 'cpu'"):
        found(weights=checkpoint, precision="fp16")
    monkeypatch.setattr(choice, "torch_installed", lambda: False)
    assert found(weights=checkpoint) == ("onnx",)
    _, settings = resolve_model(EngineSettings(model=NAME, weights=checkpoint))
    assert choice.settled(settings).backend == "onnx"


def test_the_first_load_measures_both_keeps_the_faster_and_later_loads_remember(
    random_model, cache_root, choices_file, new_encoder, encoder_for, photo_paths, monkeypatch
) -> None:
    checkpoint = random_model(NAME).checkpoint
    auto = new_encoder(NAME, backend="auto", weights=checkpoint, cache_dir=cache_root, batch_size=4)
    made = auto.info()["backend_choice"]
    assert made["how"] == "measured" and set(made["ms_per_item"]) == {"onnx", "torch"}
    faster = min(made["ms_per_item"], key=made["ms_per_item"].get)
    assert made["backend"] == faster == auto.info()["backend"]
    named = encoder_for(NAME, faster)
    inputs = ["a photo of a cat", photo_paths[0]]
    assert cosines(auto.encode(inputs), named.encode(inputs)).min() > 0.99999

    stored = json.loads((cache_root / choices_file).read_text())
    assert [entry["backend"] for entry in stored.values()] == [faster]

    def no_measuring(*args):
        raise AssertionError("a remembered choice measures nothing")

    monkeypatch.setattr(choice, "ms_per_item", no_measuring)
    again = new_encoder(NAME, backend="auto", weights=checkpoint, cache_dir=cache_root, batch_size=4)
    assert again.info()["backend_choice"] == {**made, "how": "remembered"}

    monkeypatch.setattr(choice, "cpu_model", lambda: "AMD EPYC 7R13 Processor")  # another CPU
    with pytest.raises(AssertionError, match="measures nothing"):
        new_encoder(NAME, backend="auto", weights=checkpoint, cache_dir=cache_root, batch_size=4)


@pytest.mark.parametrize("faster", ["onnx", "torch"])
def test_the_faster_backend_is_kept_and_the_other_closed(
    faster, random_model, cache_root, choices_file, new_encoder, monkeypatch
) -> None:
    closed = []

    def timed(model, settings) -> float:
        original_close = model.close
        backend = model.info()["backend"]
        model.close = lambda: (closed.append(backend), original_close())
        return 1.0 if backend == faster else 2.0

    monkeypatch.setattr(choice, "ms_per_item", timed)
    encoder = new_encoder(
        NAME, backend="auto", weights=random_model(NAME).checkpoint, cache_dir=cache_root, warmup=False
    )
    assert encoder.info()["backend"] == faster
    assert encoder.info()["backend_choice"]["ms_per_item"] == {
        faster: 1.0,
        ({"onnx", "torch"} - {faster}).pop(): 2.0,
    }
    assert closed == [({"onnx", "torch"} - {faster}).pop()]


def test_an_unwritable_cache_still_loads(random_model, cache_root, monkeypatch, tmp_path) -> None:
    blocker = cache_root / f"a-file-{tmp_path.name}"
    blocker.write_text("")
    monkeypatch.setattr(choice, "CHOICES_FILE", f"{blocker.name}/choices.json")  # its folder is a file
    spec, settings = resolve_model(EngineSettings(model=NAME, weights=str(random_model(NAME).checkpoint)))
    settings = replace(settings, cache_dir=str(cache_root))
    monkeypatch.setattr(choice, "ms_per_item", lambda model, settings: 1.0)
    model, made = choice.load_chosen(spec, settings)
    try:
        assert made["how"] == "measured" and blocker.read_text() == ""
        assert np.isfinite(model.logit_scale("text", "image"))
    finally:
        model.close()
