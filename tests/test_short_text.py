"""Exact short-text encoding: causal towers stop at each batch's longest real token."""

import dataclasses

import numpy as np
import pytest

from tests.conftest import AWKWARD_TEXTS, cosines

MIXED = ["dog", "", "word " * 120, "🐱🚀 emoji only", "a photo of a cat", "two words", "x y z " * 10]


class ShapeSpy:
    """Records the token array shapes a backend's ``encode_text`` is given, while installed."""

    def __init__(self, backend) -> None:
        self.backend, self.shapes = backend, []
        self.original = backend.encode_text

    def __enter__(self) -> "ShapeSpy":
        def encode_text(tokens: np.ndarray) -> np.ndarray:
            self.shapes.append(tokens.shape)
            return self.original(tokens)

        self.backend.encode_text = encode_text
        return self

    def __exit__(self, *exc) -> None:
        del self.backend.encode_text


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("name", ["ViT-B-32::openai", "RN50::openai"])
def test_short_batches_equal_full_length_in_input_order(name, backend, random_model, encoder_for) -> None:
    encoder = encoder_for(name, backend)
    with ShapeSpy(encoder.pipeline.model.backend) as spy:
        ours = encoder.encode_text(MIXED + AWKWARD_TEXTS)
    full_length = random_model(name).text_vectors(MIXED + AWKWARD_TEXTS)
    assert cosines(ours, full_length).min() >= 0.99999
    widths = [shape[1] for shape in spy.shapes]
    assert min(widths) < 10 and max(widths) == 77  # batch size 4: short batches ran short
    assert sum(shape[0] for shape in spy.shapes) == len(MIXED + AWKWARD_TEXTS)


def test_towers_that_are_not_truncatable_keep_full_length(random_model, cache_root) -> None:
    from clipserve.families.openclip import OpenClipModel
    from clipserve.inputs import Item
    from clipserve.pipeline import Pipeline
    from clipserve.settings import EngineSettings
    from clipserve.zoo import get_spec

    name = "ViT-B-32::openai"
    model = random_model(name)
    settings = EngineSettings(
        model=name, backend="torch", weights=str(model.checkpoint), cache_dir=str(cache_root), batch_size=4
    )
    full_only = OpenClipModel(dataclasses.replace(get_spec(name), text_trim="none"), settings)
    assert not full_only.backend.text_dynamic_length
    pipeline = Pipeline(full_only, settings)
    with ShapeSpy(full_only.backend) as spy:
        vectors, errors = pipeline.encode([Item(i, "text", "text", t) for i, t in enumerate(MIXED)], True)
    pipeline.close()
    assert not errors and {shape[1] for shape in spy.shapes} == {77}
    assert cosines(vectors, model.text_vectors(MIXED)).min() >= 0.99999
