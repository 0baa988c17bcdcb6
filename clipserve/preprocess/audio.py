"""Audio decoding and AudioCLIP's preprocessing: mono at 44.1 kHz, in 5-second windows.

- Files (WAV, FLAC, OGG Vorbis/Opus, MP3) are decoded with libsndfile (``soundfile``); only those
  formats are opened, and the duration, sample rate, channel count and total samples (frames ×
  channels: the work) are checked from the header before any sample is decoded. The file is decoded
  in blocks, each downmixed and resampled as it comes, so memory holds the mono 44.1 kHz result and
  one block, never every channel at the file's rate; the decode's deadline is checked between
  blocks, and its memory is reserved from the process's decode budget.
- Arrays are float ``[n]`` or ``[n, channels]`` in [-1, 1], or int16, at a given sample rate.
- Channels are averaged to mono; other rates are resampled with soxr (high quality).
- AudioCLIP was trained on 5-second clips at 44.1 kHz (220,500 samples). A shorter clip is centred
  in 5 s of silence; a longer one is cut into the fewest 5-second windows that cover it, spread
  evenly from its start to its end (they overlap a little, none is padded), and the item's vector is
  the mean of its windows'.

The padding is the sample value that the model's own input map, ``(x + 32768) × 2 / 65535 − 1``,
sends to exactly zero (−0.5 of 32768). The original's evaluation padded with each edge's sample
value instead, and a plain 0 becomes a small constant inside the model: the spectrum of a constant
stretch is pure float32 rounding noise, which the kernels of torch and ONNX Runtime compute
differently (cosine 0.998 between them on a padded clip), while an exact zero is zero in every
kernel (cosine ≥ 0.9999).
"""

from __future__ import annotations

import io
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipserve.errors import InvalidInput, Overloaded, echo
from clipserve.inputs import AUDIO_SUFFIXES
from clipserve.preprocess.budget import Deadline, DecodeBudget, DecodeTimeout

DECODE_OVERHEAD = 4 * 1024 * 1024

SAMPLE_RATE = 44_100
WINDOW = 5 * SAMPLE_RATE
ALLOWED_FORMATS = ("WAV", "WAVEX", "RF64", "FLAC", "OGG", "MP3")
MIN_RATE, MAX_RATE = 1_000, 768_000
MAX_CHANNELS = 32
SAMPLES_PER_SECOND = 384_000
"""Most samples (frames × channels) per second of the clip limit: stereo at 192 kHz, or 8 channels at
48 kHz. Decoding costs per sample: an 8-channel 655 kHz file of the same length would cost 14 times
as much, for the mono 44.1 kHz clip the model hears."""
BLOCK_FRAMES = 65_536
PAD = np.float32(-0.5 / 32768)
"""Silence as the model sees it: its input map sends −0.5 (in 16-bit units) to exactly 0."""
SILENCE = 1 / 32768
"""Below one step of 16-bit audio everywhere, a clip is silent: nothing for the model to hear."""


@dataclass(frozen=True)
class AudioLimits:
    """What a clip may cost: checked from its header (files) or its shape (arrays); the time its
    decode may take; and the budget its decode memory is reserved from (None: no budget)."""

    max_seconds: float = 60.0
    max_decode_s: float = 10.0
    budget: DecodeBudget | None = None

    def check(self, frames: int, rate: int, channels: int, index: int | None) -> None:
        if not MIN_RATE <= rate <= MAX_RATE:
            raise InvalidInput(f"audio sample rate {rate} Hz is outside {MIN_RATE} to {MAX_RATE} Hz", index)
        if not 1 <= channels <= MAX_CHANNELS:
            raise InvalidInput(f"audio has {channels} channels (1 to {MAX_CHANNELS} are accepted)", index)
        if frames <= 0:
            raise InvalidInput("audio is empty (no samples)", index)
        if frames / rate > self.max_seconds:
            raise InvalidInput(
                f"audio of {frames / rate:.1f} s exceeds the limit of {self.max_seconds:g} s", index
            )
        most = int(self.max_seconds * SAMPLES_PER_SECOND)
        if frames * channels > most:
            raise InvalidInput(
                f"audio of {frames} frames x {channels} channels = {frames * channels} samples exceeds the "
                f"limit of {most} ({SAMPLES_PER_SECOND} per second of max_audio_s, e.g. stereo at 192 kHz)",
                index,
            )


def decode_audio(
    source: bytes | str | Path | np.ndarray,
    index: int | None = None,
    limits: AudioLimits = AudioLimits(),
    sample_rate: int | None = None,
) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at 44.1 kHz from a file, its bytes, or an array at
    ``sample_rate`` (default 44.1 kHz).

    Raises:
        InvalidInput: a format outside the allow-list, corrupt or empty data, no or too many
            channels, an absurd sample rate, a clip over ``limits.max_seconds`` or over its total
            samples (decided before decoding), a decode past ``limits.max_decode_s``, NaN or
            infinite samples, or silence.
    """
    if isinstance(source, np.ndarray):
        mono = _from_array(source, index, sample_rate or SAMPLE_RATE, limits)
    else:
        mono = _from_file(source, index, limits)
    if mono.size == 0 or float(np.abs(mono).max()) < SILENCE:
        raise InvalidInput("audio is silent: no sample reaches one step of 16-bit audio", index)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _from_array(array: np.ndarray, index: int | None, rate: int, limits: AudioLimits) -> np.ndarray:
    if array.ndim not in (1, 2):
        raise InvalidInput(f"an audio array must be [n] or [n, channels], got {list(array.shape)}", index)
    samples = array[:, None] if array.ndim == 1 else array
    limits.check(samples.shape[0], rate, samples.shape[1], index)
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / np.float32(32768)
    elif not np.issubdtype(samples.dtype, np.floating):
        raise InvalidInput(f"audio arrays must be float in [-1, 1] or int16, got {samples.dtype}", index)
    return _Mono(rate, index).add(samples.astype(np.float32, copy=False)).result()


class _Mono:
    """Blocks of ``[frames, channels]`` samples → the clip, downmixed and resampled as they come."""

    def __init__(self, rate: int, index: int | None) -> None:
        import soxr

        self.index = index
        self.stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32")
        self.parts: list[np.ndarray] = []

    def add(self, block: np.ndarray, last: bool = True) -> _Mono:
        if not np.isfinite(block).all():
            raise InvalidInput("audio contains NaN or infinite samples", self.index)
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        if self.stream is not None:
            mono = self.stream.resample_chunk(np.ascontiguousarray(mono), last=last)
        self.parts.append(np.asarray(mono, dtype=np.float32))
        return self

    def result(self) -> np.ndarray:
        return np.concatenate(self.parts) if len(self.parts) != 1 else self.parts[0]


def decode_cost(frames: int, rate: int, channels: int) -> int:
    """Bytes a file's decode holds at its peak: the mono 44.1 kHz result three times (its parts,
    their concatenation, the windows cut from it) and one block of every channel, twice."""
    out = math.ceil(frames * SAMPLE_RATE / rate) + SAMPLE_RATE
    return 12 * out + 8 * BLOCK_FRAMES * channels + DECODE_OVERHEAD


def _from_file(source: bytes | str | Path, index: int | None, limits: AudioLimits) -> np.ndarray:
    import soundfile

    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    deadline = Deadline(limits.max_decode_s)
    try:
        with soundfile.SoundFile(stream) as audio:
            if audio.format not in ALLOWED_FORMATS:
                raise InvalidInput(
                    f"audio of format {audio.format} is not accepted ({', '.join(ALLOWED_FORMATS)})", index
                )
            frames, rate, channels = audio.frames, audio.samplerate, audio.channels
            limits.check(frames, rate, channels, index)
            budget = limits.budget
            with budget.reserve(decode_cost(frames, rate, channels), index) if budget else nullcontext():
                deadline.restart()  # the wait for room is not decoding
                mono, done = _Mono(rate, index), 0
                while done < frames:
                    deadline.check()
                    block = audio.read(min(BLOCK_FRAMES, frames - done), dtype="float32", always_2d=True)
                    if block.shape[0] == 0:
                        break
                    done += block.shape[0]
                    mono.add(block, last=done >= frames)
                if done == 0:
                    raise InvalidInput("audio is empty (no samples)", index)
                if done < frames:
                    mono.add(np.zeros((0, 1), np.float32), last=True)
                return mono.result()
    except (InvalidInput, Overloaded):
        raise
    except DecodeTimeout:
        raise deadline.refusal("audio", index) from None
    except FileNotFoundError as exc:
        raise InvalidInput(f"audio file not found: {echo(str(source))}", index) from exc
    except Exception as exc:  # libsndfile reports corrupt and unknown data as RuntimeError/LibsndfileError
        raise InvalidInput(
            f"corrupt or unsupported audio: {type(exc).__name__}: {echo(str(exc))}", index
        ) from exc


def windows(mono: np.ndarray) -> np.ndarray:
    """``[n, 220500]`` float32 windows of a 44.1 kHz clip (see the module docstring)."""
    length = mono.shape[0]
    if length <= WINDOW:
        padded = np.full((1, WINDOW), PAD, np.float32)
        left = round(0.5 * (WINDOW - length))
        padded[0, left : left + length] = mono
        return padded
    count = math.ceil(length / WINDOW)
    starts = np.round(np.linspace(0, length - WINDOW, count)).astype(int)
    return np.stack([mono[start : start + WINDOW] for start in starts])


def is_audio_path(path: Path) -> bool:
    """True for a file whose suffix is a common audio format."""
    return path.suffix.lower() in AUDIO_SUFFIXES
