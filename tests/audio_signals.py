"""The audio the AudioCLIP tests run: generated tones (known frequency, several rates, stereo) and a
real recording (speech by espeak-ng, resampled to 44.1 kHz by sox, in ``fixtures/speech.flac``)."""

from __future__ import annotations

import numpy as np

from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"
SPEECH = FIXTURES / "speech.flac"


def sixteen_bit(signal: np.ndarray, seed: int = 0) -> np.ndarray:
    """``signal`` as a 16-bit file stores it: with triangular dither, quantised to 1/32768 steps.

    A purely digital sine has no noise floor: its spectrogram's empty bins then hold float32
    rounding noise, which differs between torch's and ONNX Runtime's kernels (cosine ~0.998 between
    backends). Every recording, and every 16-bit file, has a floor far above that noise.
    """
    rng = np.random.default_rng(seed)
    dither = rng.uniform(-0.5, 0.5, signal.shape) + rng.uniform(-0.5, 0.5, signal.shape)
    return (np.round(signal * 32767 + dither) / 32768).astype(np.float32)


def tone(frequency: float, seconds: float, rate: int = 44_100, amplitude: float = 0.5) -> np.ndarray:
    """A sine in [-1, 1], float32, as a 16-bit file would hold it."""
    t = np.arange(int(seconds * rate)) / rate
    return sixteen_bit(amplitude * np.sin(2 * np.pi * frequency * t))


def chirp(seconds: float, rate: int = 44_100) -> np.ndarray:
    """A linear sweep from 200 Hz to 4 kHz, float32, as a 16-bit file would hold it."""
    t = np.arange(int(seconds * rate)) / rate
    return sixteen_bit(0.3 * np.sin(2 * np.pi * (200 * t + (3800 / (2 * seconds)) * t**2)))


def speech() -> tuple[np.ndarray, int]:
    import soundfile

    samples, rate = soundfile.read(SPEECH, dtype="float32")
    return samples, rate


SIGNALS = {
    "tone 440 Hz, 5 s, 44.1 kHz": lambda: (tone(440, 5.0), 44_100),
    "chirp, 3 s, 44.1 kHz": lambda: (chirp(3.0), 44_100),
    "stereo 660/880 Hz, 7 s, 22.05 kHz": lambda: (
        np.stack([tone(660, 7.0, 22_050, 0.4), tone(880, 7.0, 22_050, 0.4)], axis=1),
        22_050,
    ),
    "speech, 7 s, 44.1 kHz": speech,
}
"""name → ``(samples, sample rate)``, the order of the reference fixture's clips."""

TEXTS = ["a dog barking", "rain falling", "a person speaking", "an astronaut"]
IMAGES = [REPO.parent / "shared" / "data" / "photos" / name for name in ("astronaut.png", "coffee.png")]
