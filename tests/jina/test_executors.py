"""The seed documents' examples as real Flows on 127.0.0.1: vectors equal the library's."""

import asyncio
import base64
import io
from pathlib import Path

import numpy as np
import pytest
from jina import Flow
from PIL import Image

from clipserve.errors import UnknownModel
from clipserve.jina import (
    AudioCLIPEncoder,
    AudioCLIPImageEncoder,
    AudioCLIPTextEncoder,
    CLIPEncoder,
    CLIPImageEncoder,
    CLIPOnnxEncoder,
    CLIPTextEncoder,
)
from tests.audio_signals import tone
from tests.conftest import SHARED_PHOTOS
from tests.jina.conftest import AUDIOCLIP, MODELS, VIT, assert_same, doc, docs, embedding, leaf, post, score

CAPTIONS = [
    f"a photo of a {p}"
    for p in ("control room", "lecture room", "conference room", "podium indoor", "television studio")
]
"""The five captions of clip-as-service's ``/rank`` example."""


def photo(name: str = "chelsea.png") -> np.ndarray:
    return np.asarray(Image.open(SHARED_PHOTOS / name).convert("RGB"))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def flow(executor, **uses_with) -> Flow:
    return Flow(host="127.0.0.1").add(uses=executor, uses_with=uses_with, host="127.0.0.1")


@pytest.fixture(scope="module")
def doc_files(tmp_path_factory):
    """The one directory whose files the docs of ``clip_flow`` may name by ``uri``."""
    return tmp_path_factory.mktemp("doc-files")


@pytest.fixture(scope="module")
def clip_flow(doc_files):
    """clip-as-service's executor on the random ViT-B-32 export, reading local files of ``doc_files``."""
    with flow(
        CLIPOnnxEncoder, name="ViT-B-32::openai", model_path=VIT, local_file_roots=[str(doc_files)]
    ) as running:
        yield running


def test_image_array_and_hub_model_name(clip_encoder) -> None:
    """The CLIPImageEncoder snippet: a uint8 [H, W, 3] array; the Hugging Face model name; the
    weights from CLIPSERVE_WEIGHTS; a text doc in the same request passes through."""
    image = photo()
    encoder_flow = Flow(host="127.0.0.1").add(
        uses=CLIPImageEncoder,
        uses_with={"pretrained_model_name_or_path": "openai/clip-vit-base-patch32"},
        env={"CLIPSERVE_WEIGHTS": VIT},
        host="127.0.0.1",
    )
    with encoder_flow:
        result = post(encoder_flow, "/", docs([doc(tensor=image), doc(text="not for an image encoder")]))
    assert_same(result[:1], clip_encoder.encode_image([image]))
    assert embedding(result[1]) is None


def test_text(clip_encoder) -> None:
    texts = ["a dog", "Ünïcödé — 東京", "word " * 200]
    running = Flow(host="127.0.0.1").add(
        uses=CLIPTextEncoder,
        uses_with={"pretrained_model_name_or_path": "ViT-B/32"},  # OpenAI's name for it
        env={"CLIPSERVE_WEIGHTS": VIT},
    )
    with running:
        result = post(running, "/", docs(doc(text=t) for t in texts))
    assert_same(result, clip_encoder.encode_text(texts))


def test_onnx_encoder_mixed_batch(clip_flow, clip_encoder, doc_files) -> None:
    """The CLIPOnnxEncoder snippet: text, a path, a loaded tensor, bytes and a data URI at once."""
    image = photo("coffee.png")
    path = doc_files / "coffee.png"
    path.write_bytes(png_bytes(image))
    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes(photo("horse.png"))).decode()
    batch = docs(
        [
            doc(text="she smiled, with pain"),
            doc(uri=str(path)),
            doc(tensor=image),
            doc(blob=path.read_bytes()),
            doc(uri=data_uri),
        ]
    )
    result = post(clip_flow, "/encode", batch, {"drop_image_content": True})
    assert [d.id for d in result] == [d.id for d in batch]
    assert all(not d.blob and d.tensor is None for d in result)
    expected = clip_encoder.encode(["she smiled, with pain", path, image, path.read_bytes(), data_uri])
    assert_same(result, expected)


def test_preprocessed_tensor(clip_encoder) -> None:
    pixels = np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float32)
    running = Flow(host="127.0.0.1").add(
        uses=CLIPImageEncoder,
        uses_with={"use_default_preprocessing": False},
        env={"CLIPSERVE_WEIGHTS": VIT},
    )
    with running:
        result = post(running, "/", docs([doc(tensor=pixels)]))
        assert_same(result, clip_encoder.encode_image([pixels]))
        with pytest.raises(Exception, match="expects model-ready float"):
            post(running, "/", docs([doc(tensor=photo())]))


def test_chunks_by_modality_and_the_parent_only_when_asked(clip_flow, clip_encoder) -> None:
    image = photo("astronaut.png")
    page = doc(text="a page", chunks=[leaf(tensor=image), leaf(text="an astronaut"), leaf()])
    result = post(clip_flow, "/", docs([page]), {"access_paths": "@c"})
    chunks = result[0].chunks
    assert_same(chunks[:1], clip_encoder.encode_image([image]))
    assert_same(chunks[1:2], clip_encoder.encode_text(["an astronaut"]))
    assert embedding(chunks[2]) is None  # nothing to embed: skipped, not failed
    assert embedding(result[0]) is None
    both = post(clip_flow, "/", docs([page]), {"access_paths": "@r,c"})
    assert_same([both[0]], clip_encoder.encode_text(["a page"]))
    assert_same(both[0].chunks[:1], clip_encoder.encode_image([image]))


def test_traversal_and_batch_size_per_request(clip_encoder) -> None:
    texts = [f"text {i}" for i in range(5)]
    with flow(CLIPEncoder, name="ViT-B-32::openai", model_path=VIT, access_paths="@c") as running:
        roots = post(running, "/", docs([doc(text="root", chunks=[leaf(text=t) for t in texts])]))
        assert embedding(roots[0]) is None and embedding(roots[0].chunks[0]) is not None
        for parameters in ({"traversal_paths": "r"}, {"access_paths": "@r", "batch_size": 2}):
            result = post(running, "/", docs([doc(text=t) for t in texts]), parameters)
            assert_same(result, clip_encoder.encode_text(texts))
        with pytest.raises(Exception, match="unsupported traversal path"):
            post(running, "/", docs([doc(text="x")]), {"access_paths": "@r[0]"})


@pytest.mark.parametrize("drop", [False, True])
def test_rank_image_to_texts_and_text_to_images(clip_flow, clip_encoder, drop) -> None:
    image = photo("camera.png")
    others = [photo(name) for name in ("coins.png", "grass.png", "rocket.jpg")]
    queries = [
        doc(tensor=image, matches=[leaf(text=c) for c in CAPTIONS]),
        doc(text=CAPTIONS[0], matches=[leaf(tensor=im) for im in [image, *others]]),
    ]
    result = post(clip_flow, "/rank", docs(queries), {"drop_image_content": drop})
    for query, (value, candidates) in zip(
        result, [(image, CAPTIONS), (CAPTIONS[0], [image, *others])], strict=True
    ):
        expected = clip_encoder.rank(value, candidates)
        got = [(score(m, "clip_score"), score(m, "clip_score_cosine")) for m in query.matches]
        assert np.allclose(got, [(r.clip_score, r.cosine) for r in expected], atol=1e-4)
        assert [s for s, _ in got] == sorted((s for s, _ in got), reverse=True)
        assert all(m.embedding is None for m in query.matches)
        assert_same([query], clip_encoder.encode([value]))
    assert [m.text for m in result[0].matches] == [
        CAPTIONS[r.index] for r in clip_encoder.rank(image, CAPTIONS)
    ]
    image_docs = [result[0], *result[1].matches]
    assert all((d.tensor is None) == drop for d in image_docs)


def test_rank_called_directly(clip_encoder) -> None:
    """clip-as-service's executor is usable without a Flow: ``await enc.rank(docs, parameters)``."""
    encoder = CLIPEncoder(name="ViT-B-32::openai", model_path=VIT)
    query = doc(text=CAPTIONS[2], matches=[leaf(tensor=photo(n)) for n in ("coffee.png", "horse.png")])
    batch = docs([query])
    asyncio.run(encoder.rank(batch, parameters={}))
    expected = clip_encoder.rank(CAPTIONS[2], [photo("coffee.png"), photo("horse.png")])
    assert [score(m, "clip_score") for m in batch[0].matches] == pytest.approx(
        [r.clip_score for r in expected], abs=1e-4
    )
    plain = docs([doc(text="called directly")])
    asyncio.run(encoder.encode(plain, parameters={}))
    assert_same(plain, clip_encoder.encode_text(["called directly"]))
    encoder.close()


def test_a_bad_item_fails_its_request_only(clip_flow, clip_encoder) -> None:
    bad = doc(blob=b"not an image at all")
    with pytest.raises(Exception, match=f"doc {bad.id}: not an image"):
        post(clip_flow, "/", docs([doc(text="fine"), bad]))
    result = post(clip_flow, "/", docs([doc(text="still serving")]))
    assert_same(result, clip_encoder.encode_text(["still serving"]))


def test_urls_follow_the_servers_rules(clip_flow, clip_encoder, loopback_files) -> None:
    base, files = loopback_files
    image = photo("brick.png")
    files["/brick.png"] = png_bytes(image)
    with pytest.raises(Exception, match="URLs are off"):
        post(clip_flow, "/", docs([doc(uri=f"{base}/brick.png")]))
    allowed = Flow(host="127.0.0.1").add(
        uses=CLIPEncoder,
        uses_with={"name": "ViT-B-32::openai", "model_path": VIT},
        env={"CLIPSERVE_ALLOW_URL": "1", "CLIPSERVE_ALLOW_PRIVATE_URLS": "1"},
    )
    with allowed:
        result = post(allowed, "/", docs([doc(uri=f"{base}/brick.png")]))
    assert_same(result, clip_encoder.encode_image([image]))


def test_docs_name_local_files_only_under_the_roots(clip_encoder, doc_files, tmp_path, monkeypatch) -> None:
    """A doc's uri is the sender's word: a private file outside the roots is refused, with the same
    words as a missing one, and a symlink in a root cannot lead out of it."""
    private = tmp_path / "private.png"
    private.write_bytes(png_bytes(photo("coins.png")))
    private.chmod(0o600)
    escape = doc_files / "escape.png"
    escape.symlink_to(private)
    inside = doc_files / "grass.png"
    inside.write_bytes(png_bytes(photo("grass.png")))
    for roots, expected in (([], "none are set"), ([str(doc_files)], str(doc_files))):
        executor = CLIPEncoder(name="ViT-B-32::openai", model_path=VIT, local_file_roots=roots)
        answers = {}
        for name, uri in (
            ("private", str(private)),
            ("missing", str(tmp_path / "missing.png")),
            ("link", str(escape)),
            ("relative", "../" * 12 + str(private).lstrip("/")),
        ):
            with pytest.raises(Exception, match="reads local files only under local_file_roots") as info:
                asyncio.run(executor.encode(docs([doc(uri=uri)]), parameters={}))
            answers[name] = str(info.value).replace(uri, "URI").split(": ", 1)[1]
            assert expected in answers[name]
        assert len(set(answers.values())) == 1, answers  # one answer, whether the file exists or not
        if roots:
            batch = docs([doc(uri=str(inside)), doc(uri=f"file://{inside}")])
            asyncio.run(executor.encode(batch, parameters={}))
            assert_same(batch, clip_encoder.encode_image([photo("grass.png")] * 2))
        executor.close()
    monkeypatch.setenv("CLIPSERVE_WEIGHTS", VIT)
    text_only = CLIPTextEncoder(pretrained_model_name_or_path="ViT-B/32")
    passed = docs([doc(uri=str(private)), doc(text="read")])
    asyncio.run(text_only.encode(passed, parameters={}))  # a text encoder reads no uri: passed over
    assert embedding(passed[0]) is None and embedding(passed[1]) is not None
    text_only.close()


@pytest.mark.parametrize("name", ["clip", "siglip", "siglip2", "chinese_clip", "clip_vision", "clip_text"])
def test_a_transformers_directory_as_pretrained_model_name_or_path(name, monkeypatch) -> None:
    """The Hub executors' own model format: a transformers directory of each class (its export in
    the shared cache: this environment has no torch), with the vectors transformers' modules give."""
    monkeypatch.setenv("CLIPSERVE_CACHE_DIR", MODELS["cache"])
    model = MODELS["transformers"][name]
    expected = iter(np.load(model["expected"]))
    executors, batch = [], []
    if "image" in model["modalities"]:
        executors.append(CLIPImageEncoder(pretrained_model_name_or_path=model["directory"]))
        batch.append((doc(blob=Path(MODELS["photo"]).read_bytes()), next(expected)))
    if "text" in model["modalities"]:
        executors.append(CLIPTextEncoder(pretrained_model_name_or_path=model["directory"]))
        batch.append((doc(text="a photo of a cat"), next(expected)))
    documents = docs([d for d, _ in batch])
    for executor in executors:
        asyncio.run(executor.encode(documents, parameters={}))
        executor.close()
    assert_same(documents, np.stack([vector for _, vector in batch]))


def test_unknown_model_fails_at_start_with_close_names() -> None:
    with pytest.raises(UnknownModel, match="Did you mean: ViT-B-32::openai"):
        CLIPEncoder(name="ViT-B-33::openai")


def test_yaml_forms(tmp_path, clip_encoder) -> None:
    """An executor YAML (``jtype`` + ``py_modules``) used by a Flow YAML, as the Hub seeds write
    them, and clip-as-service's Flow YAML with ``metas: py_modules`` changed to ``clipserve.jina``."""
    (tmp_path / "encoder.yml").write_text(
        "jtype: CLIPImageEncoder\nwith:\n  traversal_paths: '@c'\npy_modules:\n  - clipserve.jina\n"
    )
    (tmp_path / "flow.yml").write_text(
        "jtype: Flow\nwith:\n  host: 127.0.0.1\nexecutors:\n  - name: image\n    uses: encoder.yml\n"
        f"    host: 127.0.0.1\n    env:\n      CLIPSERVE_WEIGHTS: {VIT}\n"
    )
    (tmp_path / "clip-as-service.yml").write_text(
        "jtype: Flow\nversion: '1'\nwith:\n  host: 127.0.0.1\nexecutors:\n  - name: clip_o\n"
        "    host: 127.0.0.1\n    uses:\n      jtype: CLIPEncoder\n      with:\n"
        f"        name: ViT-B-32::openai\n        model_path: {VIT}\n"
        "      metas:\n        py_modules:\n          - clipserve.jina\n"
    )
    image = photo("coins.png")
    with Flow.load_config(str(tmp_path / "flow.yml")) as running:
        result = post(running, "/", docs([doc(chunks=[leaf(tensor=image)])]))
    assert_same(result[0].chunks, clip_encoder.encode_image([image]))
    with Flow.load_config(str(tmp_path / "clip-as-service.yml")) as running:
        result = post(running, "/encode", docs([doc(tensor=image), doc(text="coins")]))
    assert_same(
        result, np.concatenate([clip_encoder.encode_image([image]), clip_encoder.encode_text(["coins"])])
    )


def test_http_gateway(clip_encoder) -> None:
    """The HTTP gateway starts and serves with this docarray generation's pins."""
    running = Flow(protocol="http", host="127.0.0.1").add(
        uses=CLIPTextEncoder, env={"CLIPSERVE_WEIGHTS": VIT}, host="127.0.0.1"
    )
    with running:
        result = post(running, "/", docs([doc(text="over http")]))
    assert_same(result, clip_encoder.encode_text(["over http"]), minimum=0.9999)


def test_audioclip_trio(audioclip_encoder, tmp_path) -> None:
    """The AudioCLIP executors in one Flow: each embeds its modality into the shared space."""
    import soundfile

    mono = tone(440, 3.0, rate=16_000)
    stereo = np.stack([tone(660, 2.0), tone(330, 2.0, amplitude=0.2)])  # Jina's (channels, n)
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, tone(880, 1.5), 44_100)
    flac = io.BytesIO()
    soundfile.write(flac, tone(220, 6.0), 44_100, format="FLAC")
    image = photo("horse.png")
    reading = {"model_path": AUDIOCLIP, "local_file_roots": [str(tmp_path)]}
    trio = (
        Flow(host="127.0.0.1")
        .add(uses=AudioCLIPEncoder, uses_with=reading, name="audio")
        .add(uses=AudioCLIPImageEncoder, uses_with=reading, name="image")  # it opens the wav to tell
        .add(uses=AudioCLIPTextEncoder, uses_with={"model_path": AUDIOCLIP}, name="text")
    )
    batch = docs(
        [
            doc(tensor=mono, tags={"sample_rate": 16_000}),
            doc(tensor=stereo),
            doc(uri=str(wav)),
            doc(blob=flac.getvalue()),
            doc(tensor=image),
            doc(text="a horse neighing"),
        ]
    )
    with trio:
        result = post(trio, "/", batch)
    encoder = audioclip_encoder
    assert_same(result[:1], encoder.encode_audio([mono], sample_rate=16_000))
    assert_same(result[1:4], encoder.encode_audio([stereo.T, wav, flac.getvalue()]))
    assert_same(result[4:5], encoder.encode_image([image]))
    assert_same(result[5:], encoder.encode_text(["a horse neighing"]))


def test_audioclip_rank_audio_to_texts(audioclip_encoder) -> None:
    clip = tone(523, 5.0)
    executor = AudioCLIPEncoder(model_path=AUDIOCLIP)
    batch = docs([doc(tensor=clip, matches=[leaf(text=c) for c in CAPTIONS])])
    asyncio.run(executor.rank(batch, parameters={}))
    executor.close()
    expected = audioclip_encoder.rank(clip, CAPTIONS)
    assert [m.text for m in batch[0].matches] == [CAPTIONS[r.index] for r in expected]
    assert [score(m, "clip_score") for m in batch[0].matches] == pytest.approx(
        [r.clip_score for r in expected], abs=1e-4
    )
