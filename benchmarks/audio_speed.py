"""AudioCLIP audio speed: 5-second clips to vectors, torch against ONNX Runtime.

The int8 export keeps the audio tower fp32; the last row quantises it anyway (MatMul/Gemm, as the
int8 export does for the other towers) to show what that would give.

Run through ``python benchmarks/cpu_encode.py --audio``. Random weights in the released layout (the
release assets are unreachable here; the same shapes and FLOPs), 32 clips of 5 s at 44.1 kHz given
as FLAC bytes (decoding included) and as sample arrays (model and windowing only).
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the seeded checkpoint of the tests
from tests.audio_signals import tone
from tests.audioclip_weights import write_checkpoint


def clips(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        tone(float(rng.uniform(100, 4000)), 5.0, amplitude=float(rng.uniform(0.1, 0.6))) for _ in range(count)
    ]


def flac(samples: np.ndarray) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 44_100, format="FLAC")
    return buffer.getvalue()


def quantised_audio_copy(fp32_export: Path, target: Path) -> Path:
    """A copy of the fp32 export whose audio tower alone is quantised to int8."""
    from clipserve.backends.precision import int8_scheme, quantize_int8

    shutil.copytree(fp32_export, target)
    for part in target.glob("audio.onnx*"):
        part.unlink()
    quantize_int8(fp32_export / "audio.onnx", target / "audio.onnx", int8_scheme())
    return target


def run(count: int = 32) -> None:
    from clipserve.encoder import Encoder

    arrays = clips(count)
    files = [flac(a) for a in arrays]
    rows, vectors = [], {}
    with tempfile.TemporaryDirectory(prefix="clipserve-audio-") as workdir:
        checkpoint = write_checkpoint(Path(workdir) / "AudioCLIP-Full-Training.pt")
        fp32_export = None
        for label, backend, weights in (
            ("torch fp32", "torch", checkpoint),
            ("onnx fp32", "onnx", checkpoint),
            ("onnx, audio tower int8 (not shipped)", "onnx", None),
        ):
            if weights is None:
                weights = quantised_audio_copy(fp32_export, Path(workdir) / "audio-int8")
            encoder = Encoder(
                "AudioCLIP::full", backend=backend, weights=weights, cache_dir=Path(workdir) / "cache"
            )
            if backend == "onnx" and fp32_export is None:
                fp32_export = Path(encoder.info()["weights"])
            encoder.encode_audio(arrays[:2])
            start = time.perf_counter()
            vectors[label] = encoder.encode_audio(arrays)
            model_rate = count / (time.perf_counter() - start)
            start = time.perf_counter()
            encoder.encode_audio(files)
            file_rate = count / (time.perf_counter() - start)
            rows.append((f"clipserve {label}", model_rate, file_rate))
            encoder.close()
    base = rows[0][1]
    int8 = vectors["onnx, audio tower int8 (not shipped)"]
    fp32 = vectors["onnx fp32"]
    print(f"\n### AudioCLIP::full, audio ({count} clips of 5 s at 44.1 kHz)\n")
    print("| pipeline | clips/s from samples | × | clips/s from FLAC bytes |\n| --- | ---: | ---: | ---: |")
    for name, model_rate, file_rate in rows:
        print(f"| {name} | {model_rate:.2f} | {model_rate / base:.2f} | {file_rate:.2f} |")
    torch_onnx = float((vectors["torch fp32"] * fp32).sum(axis=1).min())
    int8_fp32 = float((int8 * fp32).sum(axis=1).min())
    print(f"\ncosine torch fp32 to onnx fp32 ≥ {torch_onnx:.6f}; int8 audio tower to fp32 ≥ {int8_fp32:.6f}")
