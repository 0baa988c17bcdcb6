"""AudioCLIP: the original's vectors on the same seeded weights, every audio input form, every error.

``fixtures/audioclip_reference.npz`` holds the vectors the original AudioCLIP code computed on the
checkpoint ``tests/audioclip_weights.py`` writes for seed 0, for the clips of ``tests/audio_signals.py``
(prepared by clipserve: mono 44.1 kHz, 5-second windows, × 32768), two photos and four texts.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from clipserve.errors import InvalidInput, WeightsUnavailable
from clipserve.preprocess.audio import decode_audio
from tests.audio_signals import FIXTURES, IMAGES, SIGNALS, SPEECH, TEXTS, tone
from tests.audioclip_weights import write_checkpoint
from tests.conftest import built_once, cosines

NAME = "AudioCLIP::full"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("audioclip") / "AudioCLIP-Full-Training.pt")


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "audioclip_reference.npz")


@pytest.fixture(scope="module")
def encoders(checkpoint, cache_root):
    """``encoders(backend)``: AudioCLIP on the seeded checkpoint, built once (the cache is shared with
    the Jina tests: the checkpoint exports once)."""
    with built_once() as get:
        yield lambda backend: get(NAME, backend=backend, weights=checkpoint, cache_dir=cache_root)


def clip_vectors(reference) -> np.ndarray:
    """A clip's vector: the mean of its windows' normalised vectors, normalised."""
    windows, counts = reference["audio_windows"], reference["window_counts"]
    bounds = np.cumsum([0, *counts])
    means = np.stack([windows[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds)])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_vectors_equal_the_original_implementation(backend, encoders, reference) -> None:
    encoder = encoders(backend)
    clips = [make() for make in SIGNALS.values()]
    audio = np.concatenate([encoder.encode_audio([samples], sample_rate=rate) for samples, rate in clips])
    assert cosines(audio, clip_vectors(reference)).min() >= 0.9999
    assert cosines(encoder.encode(IMAGES), reference["image"]).min() >= 0.9999
    assert cosines(encoder.encode_text(TEXTS), reference["text"]).min() >= 0.9999
    for pair, raw in (
        (("image", "text"), reference["logit_scale"]),
        (("audio", "image"), reference["logit_scale_ai"]),
        (("text", "audio"), reference["logit_scale_at"]),
    ):
        assert encoder.logit_scale(*pair) == pytest.approx(float(np.clip(np.exp(raw), 1, 100)), rel=1e-6)
    assert encoder.info()["family"] == "audioclip" and encoder.dim == 1024


def test_torch_and_onnx_agree(encoders) -> None:
    clips = [tone(440, 5.0), tone(1000, 12.0, amplitude=0.2), tone(250, 0.5)]
    torch_vectors = encoders("torch").encode_audio(clips)
    onnx_vectors = encoders("onnx").encode_audio(clips)
    assert cosines(onnx_vectors, torch_vectors).min() >= 0.9999


@pytest.mark.slow
def test_int8_keeps_the_audio_tower_fp32(checkpoint, encoders, new_encoder) -> None:
    fp32 = encoders("onnx")
    int8 = new_encoder(NAME, precision="int8", weights=checkpoint, cache_dir=fp32.settings.cache_dir)
    clips = [tone(440, 5.0), tone(1000, 7.0, amplitude=0.2)]
    np.testing.assert_allclose(int8.encode_audio(clips), fp32.encode_audio(clips), atol=1e-6)
    assert cosines(int8.encode_text(TEXTS), fp32.encode_text(TEXTS)).min() >= 0.99
    assert cosines(int8.encode(IMAGES), fp32.encode(IMAGES)).min() >= 0.99
    assert int8.info()["precision"] == "int8"


def _encoded(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def test_every_input_form(encoders, tmp_path) -> None:
    encoder = encoders("onnx")
    samples = tone(440, 5.0)
    expected = encoder.encode_audio([samples])
    forms = {
        "int16": (samples * 32768).astype(np.int16),
        "stereo": np.stack([samples, samples], axis=1),
        "wav": _encoded(samples, 44_100, "WAV", "FLOAT"),
        "flac": _encoded(samples, 44_100, "FLAC"),
        "ogg": _encoded(samples, 44_100, "OGG", "VORBIS"),
        "opus": _encoded(tone(440, 5.0, rate=48_000), 48_000, "OGG", "OPUS"),  # Opus runs at 48 kHz
        "mp3": _encoded(samples, 44_100, "MP3"),
    }
    (tmp_path / "clip.flac").write_bytes(forms["flac"])
    forms["path"] = tmp_path / "clip.flac"
    forms["data uri"] = "data:audio/flac;base64," + base64.b64encode(forms["flac"]).decode()
    lossy = {"ogg", "opus", "mp3"}
    for name, value in forms.items():
        got = encoder.encode_audio([value])
        if name in lossy:  # a lossy codec reshapes the noise floor the model listens to: check the decoding
            decoded = decode_audio(value) if not isinstance(value, np.ndarray) else None
            spectrum = np.abs(np.fft.rfft(decoded[:44_100]))
            assert abs(len(decoded) / 44_100 - 5.0) < 0.1 and abs(np.argmax(spectrum) - 440) <= 1, name
            assert np.isfinite(got).all() and cosines(got, expected)[0] > 0.8, name
        else:
            assert cosines(got, expected)[0] >= 0.9999, name
    detected = encoder.encode([forms["wav"], forms["path"], "a dog barking"])  # audio by content
    assert cosines(detected[:2], np.concatenate([expected, expected])).min() >= 0.9999
    (tmp_path / "misnamed.jpg").write_bytes(forms["wav"])
    assert cosines(encoder.encode([tmp_path / "misnamed.jpg"]), expected)[0] >= 0.99999


@pytest.mark.parametrize("rate", [8_000, 22_050, 48_000])
def test_other_rates_are_resampled(encoders, rate) -> None:
    native = tone(440, 5.0)
    resampled = decode_audio(tone(440, 5.0, rate=rate), sample_rate=rate)
    assert resampled.shape == native.shape
    assert np.corrcoef(resampled[1000:-1000], native[1000:-1000])[0, 1] > 0.999
    # AudioCLIP looks at log power: most of its input is the noise floor, and resampling reshapes the
    # floor near the band edge (from a lower rate the band above its half is empty altogether).
    if rate > 44_100:
        encoder = encoders("onnx")
        assert cosines(encoder.encode_audio([resampled]), encoder.encode_audio([native]))[0] >= 0.98


def test_long_clips_are_windows_averaged_and_short_ones_padded(encoders) -> None:
    from clipserve.preprocess.audio import WINDOW, windows

    long = windows(tone(440, 12.0))
    assert long.shape == (3, WINDOW)
    short = windows(np.linspace(0.5, -0.25, 1000, dtype=np.float32))
    assert short.shape == (1, WINDOW) and short[0, (WINDOW - 1000) // 2] == 0.5
    silence = np.delete(short[0], range((WINDOW - 1000) // 2, (WINDOW - 1000) // 2 + 1000))
    assert np.all(silence * 32768 == -0.5)  # what the model's input map sends to exactly 0
    assert np.float32((np.float32(-0.5) + 32768.0) * 2.0 / 65535.0 - 1.0) == 0
    encoder = encoders("onnx")
    stitched = np.concatenate([tone(440, 5.0), tone(1000, 5.0, amplitude=0.2)])
    halves = encoder.encode_audio([stitched[: 5 * 44_100], stitched[5 * 44_100 :]])
    mean = halves.sum(axis=0, keepdims=True)
    assert cosines(encoder.encode_audio([stitched]), mean)[0] >= 0.99999


def _wav_header(frames: int, rate: int = 44_100, channels: int = 1, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
    raw = bytearray(buffer.getvalue())
    raw[40:44] = (frames * 2 * channels).to_bytes(4, "little")  # the data chunk claims ``frames``
    return bytes(raw)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"RIFF\x00\x00\x00\x00WAVEgarbage" * 3, "corrupt or unsupported audio"),
        (_wav_header(0), "empty"),
        (np.zeros(44_100, np.float32), "silent"),
        (np.full(44_100, np.nan, np.float32), "NaN"),
        (np.zeros((44_100, 0), np.float32), "0 channels"),
        (np.zeros((2, 2, 2), np.float32) + 0.5, r"an audio array must be \[n\] or \[n, channels\]"),
    ],
)
def test_bad_audio_names_the_item(encoders, value, message) -> None:
    encoder = encoders("onnx")
    with pytest.raises(InvalidInput, match=message) as info:
        encoder.encode_audio([tone(440, 1.0), value])
    assert info.value.index == 1


def test_a_too_long_file_is_refused_from_its_header(encoders, monkeypatch) -> None:
    import soundfile

    long = _encoded(np.zeros(61 * 8_000, np.int16), 8_000, "WAV")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file already known to be too long")

    monkeypatch.setattr(soundfile.SoundFile, "read", no_decoding)
    with pytest.raises(InvalidInput, match=r"item 0: audio of 61\.0 s exceeds the limit of 60 s"):
        encoders("onnx").encode_audio([long])


def test_absurd_rates_and_formats_are_refused(encoders) -> None:
    encoder = encoders("onnx")
    with pytest.raises(InvalidInput, match="sample rate 10 Hz"):
        encoder.encode_audio([tone(440, 1.0)], sample_rate=10)
    aiff = _encoded(tone(440, 1.0), 44_100, "AIFF")
    with pytest.raises(InvalidInput, match="item 0: "):
        encoder.encode_audio([aiff])


def test_rank_across_modalities_uses_audioclips_temperatures(encoders, reference) -> None:
    encoder = encoders("onnx")
    speech = SPEECH.read_bytes()
    by_text = encoder.rank(speech, TEXTS)
    vectors = encoder.encode([speech, *TEXTS])
    logits = encoder.logit_scale("audio", "text") * (vectors[1:] @ vectors[0])
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [m.index for m in by_text] == list(np.argsort(-expected, kind="stable"))
    assert by_text[0].clip_score == pytest.approx(expected.max(), rel=1e-5)
    assert sorted(m.index for m in encoder.rank("a dog barking", [speech, tone(440, 5.0)])) == [0, 1]
    assert len(encoder.rank(IMAGES[0], [speech, tone(440, 5.0)])) == 2


@pytest.mark.slow
def test_strict_loading_names_the_keys(checkpoint, tmp_path) -> None:
    import open_clip
    import torch

    from clipserve.encoder import Encoder

    state = torch.load(checkpoint, weights_only=True)
    del state["audio.fc.bias"]
    del state["logit_scale_at"]
    state["audio.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(
        WeightsUnavailable, match=r"missing audio\.fc\.bias, logit_scale_at; unexpected audio\.extra"
    ):
        Encoder(NAME, backend="torch", weights=tmp_path / "partial.pt", cache_dir=tmp_path)
    torch.save(open_clip.create_model("RN50").state_dict(), tmp_path / "clip-only.pt")
    with pytest.raises(WeightsUnavailable, match=r"missing audio\.window, audio\.fbsp\.m, .* and 306 more"):
        Encoder(NAME, backend="torch", weights=tmp_path / "clip-only.pt", cache_dir=tmp_path)


@pytest.mark.slow
def test_a_model_without_audio_says_so(encoder_for) -> None:
    with pytest.raises(InvalidInput, match=r"item 0: ViT-B-32::openai does not embed audio"):
        encoder_for("ViT-B-32::openai", "onnx").encode([_encoded(tone(440, 1.0), 44_100, "WAV")])


def test_the_server_takes_audio_in_every_route(checkpoint, encoders) -> None:
    import httpx

    from tests.server_helpers import running_server

    offline = encoders("onnx")
    wav = _encoded(tone(440, 5.0), 44_100, "WAV")
    flac = _encoded(tone(880, 2.0), 44_100, "FLAC")
    speech = SPEECH.read_bytes()
    with running_server(
        model=NAME, weights=str(checkpoint), cache_dir=str(offline.settings.cache_dir), compat=["infinity"]
    ) as (url, _):
        encoded = base64.b64encode
        body = {
            "inputs": [
                {"audio": encoded(wav).decode()},
                {"text": "a tone"},
                {"audio": "data:audio/flac;base64," + encoded(flac).decode()},
            ]
        }
        served = np.asarray(
            httpx.post(f"{url}/encode", json=body, timeout=60).json()["embeddings"], np.float32
        )
        assert cosines(served, offline.encode([wav, "a tone", flac])).min() >= 0.99999
        rank = httpx.post(
            f"{url}/rank",
            json={"query": {"audio": encoded(speech).decode()}, "candidates": [{"text": t} for t in TEXTS]},
            timeout=60,
        ).json()
        assert [m["index"] for m in rank["matches"]] == [m.index for m in offline.rank(speech, TEXTS)]
        openai = httpx.post(
            f"{url}/v1/embeddings",
            json={"input": ["data:audio/wav;base64," + encoded(wav).decode(), "a tone"]},
        ).json()
        assert (
            cosines(np.asarray([d["embedding"] for d in openai["data"]], np.float32), served[:2]).min()
            > 0.99999
        )
        infinity = httpx.post(
            f"{url}/embeddings",
            json={"input": ["data:audio/flac;base64," + encoded(flac).decode()], "modality": "audio"},
        ).json()
        assert cosines(np.asarray([infinity["data"][0]["embedding"]], np.float32), served[2:]).min() > 0.99999
        bad = httpx.post(
            f"{url}/encode", json={"inputs": [{"text": "a"}, {"audio": encoded(b"RIFFxxxxWAVE").decode()}]}
        )
        assert bad.status_code == 422 and bad.json()["index"] == 1
        model = httpx.get(f"{url}/v1/models").json()["data"][0]
        assert model["family"] == "audioclip" and model["modalities"] == ["text", "image", "audio"]


def test_cli_encodes_audio_files_in_folders(checkpoint, encoders, tmp_path, capsys) -> None:
    from clipserve.cli import main

    folder = tmp_path / "media"
    (folder / "sub").mkdir(parents=True)
    (folder / "tone.wav").write_bytes(_encoded(tone(440, 5.0), 44_100, "WAV"))
    (folder / "sub" / "speech.flac").write_bytes(SPEECH.read_bytes())
    (folder / "photo.png").write_bytes(IMAGES[0].read_bytes())
    (folder / "notes.txt").write_text("not media")
    out = tmp_path / "vectors.npy"
    cache = str(encoders("onnx").settings.cache_dir)
    assert (
        main(
            [
                "encode",
                str(folder),
                "--model",
                NAME,
                "--weights",
                str(checkpoint),
                "--cache-dir",
                cache,
                "-o",
                str(out),
            ]
        )
        == 0
    )
    ids = json.loads(out.with_suffix(".ids.json").read_text())
    assert sorted(p.rsplit("/", 1)[-1] for p in ids) == ["photo.png", "speech.flac", "tone.wav"]
    expected = encoders("onnx").encode([Path(p) for p in ids])
    assert cosines(np.load(out), expected).min() >= 0.9999
