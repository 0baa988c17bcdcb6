"""clipserve's vectors against open_clip's own encode_image / encode_text on the same weights."""

import numpy as np
import pytest

from clipserve.preprocess.image import decode_image
from tests.conftest import AWKWARD_TEXTS, cosines

ARCHS = ["ViT-B-32::openai", "RN50::openai"]
MIN_COSINE = {"torch": 0.99999, "onnx": 0.9999}


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("name", ARCHS)
def test_images_match_open_clip(name: str, backend: str, photo_paths, random_model, encoder_for) -> None:
    reference = random_model(name).image_vectors([decode_image(p) for p in photo_paths])
    ours = encoder_for(name, backend).encode_image(photo_paths)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert cosines(ours, reference).min() >= MIN_COSINE[backend]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("name", ARCHS)
def test_texts_match_open_clip(name: str, backend: str, random_model, encoder_for) -> None:
    reference = random_model(name).text_vectors(AWKWARD_TEXTS)
    ours = encoder_for(name, backend).encode_text(AWKWARD_TEXTS)
    assert ours.shape == reference.shape
    assert cosines(ours, reference).min() >= MIN_COSINE[backend]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_mixed_list_keeps_input_order(backend: str, photo_paths, random_model, encoder_for) -> None:
    name = "ViT-B-32::openai"
    model = random_model(name)
    inputs = [photo_paths[0], AWKWARD_TEXTS[5], str(photo_paths[1]), AWKWARD_TEXTS[0], AWKWARD_TEXTS[1]]
    inputs += [photo_paths[2].read_bytes(), np.asarray(decode_image(photo_paths[3]).convert("RGB"))]
    ours = encoder_for(name, backend).encode(inputs)
    images = [decode_image(photo_paths[i]) for i in range(4)]
    expected = np.stack(
        [
            *model.image_vectors(images[:1]),
            *model.text_vectors([AWKWARD_TEXTS[5]]),
            *model.image_vectors(images[1:2]),
            *model.text_vectors(AWKWARD_TEXTS[:2]),
            *model.image_vectors(images[2:3]),
            *model.image_vectors([images[3].convert("RGB")]),
        ]
    )
    assert cosines(ours, expected).min() >= MIN_COSINE[backend]


def test_preprocessed_pixels_pass_straight_through(photo_paths, random_model, encoder_for) -> None:
    name = "ViT-B-32::openai"
    model = random_model(name)
    pixels = np.stack([model.transform(decode_image(p)).numpy() for p in photo_paths[:3]])
    encoder = encoder_for(name, "onnx")
    as_batch = encoder.encode_image(pixels)
    as_list = encoder.encode([*pixels])
    from_paths = encoder.encode_image(photo_paths[:3])
    assert cosines(as_batch, from_paths).min() >= 0.99999
    assert cosines(as_list, from_paths).min() >= 0.99999


def test_torch_tensors_are_accepted(photo_paths, random_model, encoder_for) -> None:
    import torch

    name = "ViT-B-32::openai"
    model = random_model(name)
    pixels = torch.stack([model.transform(decode_image(p)) for p in photo_paths[:2]])
    ours = encoder_for(name, "torch").encode_image(pixels)
    assert cosines(ours, model.image_vectors([decode_image(p) for p in photo_paths[:2]])).min() >= 0.99999


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_rank_is_softmax_of_scaled_cosine(backend: str, photo_paths, random_model, encoder_for) -> None:
    import torch

    name = "ViT-B-32::openai"
    model = random_model(name)
    encoder = encoder_for(name, backend)
    query, candidates = "a photo of a cat", [photo_paths[i] for i in range(5)]
    ranked = encoder.rank(query, candidates)
    text = model.text_vectors([query])[0]
    image = model.image_vectors([decode_image(p) for p in candidates])
    cos = image @ text
    scale = model.model.logit_scale.exp().item()
    expected = torch.softmax(torch.tensor(scale * cos, dtype=torch.float64), 0).numpy()
    assert [m.index for m in ranked] == list(np.argsort(-expected, kind="stable"))
    assert sum(m.clip_score for m in ranked) == pytest.approx(1.0)
    for match in ranked:
        assert match.clip_score == pytest.approx(expected[match.index], abs=1e-4)
        assert match.cosine == pytest.approx(cos[match.index], abs=1e-4)
        assert match.candidate == candidates[match.index]
    image_query = encoder.rank(photo_paths[0], ["a cat", "a dog", "a rocket"])
    assert sorted(m.index for m in image_query) == [0, 1, 2]
    assert image_query[0].clip_score >= image_query[-1].clip_score


@pytest.mark.slow
def test_batch_size_does_not_change_vectors(photo_paths, random_model, cache_root, new_encoder) -> None:
    model = random_model("ViT-B-32::openai")
    texts = AWKWARD_TEXTS * 3
    small = new_encoder("ViT-B-32::openai", weights=model.checkpoint, cache_dir=cache_root, batch_size=1)
    large = new_encoder("ViT-B-32::openai", weights=model.checkpoint, cache_dir=cache_root, batch_size=64)
    assert cosines(small.encode(texts + photo_paths), large.encode(texts + photo_paths)).min() >= 0.99999
