"""Small, valid inputs of each modality run through a model's towers: the warm-up on load, and the
measurement that ``backend="auto"`` chooses by."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from PIL import Image

from clipserve.families.base import Tower
from clipserve.inputs import AUDIO_RATE, Item

SAMPLE_TEXT = "a photo of a dog playing in the snow"
SAMPLE_IMAGE_SIZE = (320, 240)
SAMPLE_AUDIO_S = 1.0


def sample_item(modality: str) -> Item:
    """A small, valid input of ``modality``: a caption, a JPEG gradient, a one-second tone."""
    if modality == "text":
        return Item(0, "text", "text", SAMPLE_TEXT)
    if modality == "image":
        width, height = SAMPLE_IMAGE_SIZE
        ramp = np.linspace(0, 255, width * height * 3).astype(np.uint8).reshape(height, width, 3)
        encoded = io.BytesIO()
        Image.fromarray(ramp).save(encoded, format="JPEG")
        return Item(0, "image", "bytes", encoded.getvalue())
    if modality == "audio":
        seconds = np.arange(int(AUDIO_RATE * SAMPLE_AUDIO_S)) / AUDIO_RATE
        tone = (0.5 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32)
        return Item(0, "audio", "waveform", (tone, AUDIO_RATE))
    raise ValueError(f"no sample input for modality {modality!r}")


def sample_batch(tower: Tower, size: int) -> list[Any]:
    """``size`` copies of the tower's sample input, prepared and finished: what ``run`` takes."""
    batch = [tower.prepare(sample_item(tower.modality))] * size
    return batch if tower.finish is None else tower.finish(batch)


def seconds_per_batch(tower: Tower, size: int, runs: int) -> float:
    """The median time of ``runs`` model calls on a batch of ``size`` samples, after one untimed
    call (the engine's first run)."""
    batch = sample_batch(tower, size)
    tower.run(batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        tower.run(batch)
        times.append(time.perf_counter() - started)
    return float(np.median(times))
