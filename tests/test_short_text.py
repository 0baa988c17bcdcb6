"""Exact short-text encoding: causal towers stop at each batch's longest real token."""

import dataclasses

import numpy as np
import pytest

from tests.conftest import AWKWARD_TEXTS, cosines

MIXED = ["dog", "", "word " * 120, "🐱🚀 emoji only", "a photo of a cat", "two words", "x y z " * 10]


class ShapeSpy:
    """Wraps a backend and records the token array shapes it is given."""

    def __init__(self, backend) -> None:
        self.backend, self.shapes = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        self.shapes.append(tokens.shape)
        return self.backend.encode_text(tokens)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("name", ["ViT-B-32::openai", "RN50::openai"])
def test_short_batches_equal_full_length_in_input_order(name, backend, random_model, encoder_for) -> None:
    encoder = encoder_for(name, backend)
    spy = ShapeSpy(encoder.backend)
    encoder.backend = spy
    try:
        ours = encoder.encode_text(MIXED + AWKWARD_TEXTS)
    finally:
        encoder.backend = spy.backend
    full_length = random_model(name).text_vectors(MIXED + AWKWARD_TEXTS)
    assert cosines(ours, full_length).min() >= 0.99999
    widths = [shape[1] for shape in spy.shapes]
    assert min(widths) < 10 and max(widths) == 77  # batch size 4: short batches ran short
    assert sum(shape[0] for shape in spy.shapes) == len(MIXED + AWKWARD_TEXTS)


def test_towers_that_are_not_truncatable_keep_full_length(random_model, cache_root) -> None:
    from clipserve.backends.torch import TorchBackend
    from clipserve.encoder import Encoder

    name = "ViT-B-32::openai"
    model = random_model(name)
    encoder = Encoder(name, backend="torch", weights=model.checkpoint, cache_dir=cache_root, batch_size=4)
    full_only = TorchBackend(dataclasses.replace(encoder.spec, text_truncatable=False), model.checkpoint)
    assert not full_only.text_dynamic_length
    encoder.backend = spy = ShapeSpy(full_only)
    vectors = encoder.encode_text(MIXED)
    assert {shape[1] for shape in spy.shapes} == {77}
    assert cosines(vectors, model.text_vectors(MIXED)).min() >= 0.99999
