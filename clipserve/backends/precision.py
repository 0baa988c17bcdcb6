"""Derive the int8 ONNX export from an fp32 export (ONNX Runtime tools only; no torch).

- ``int8``: dynamic quantisation with per-channel int8 weights of every MatMul/Gemm (activations
  are quantised per batch at run time). Convolutions stay fp32: ONNX Runtime's integer convolution
  is slower than its fp32 one on CPUs, so quantising them costs speed (ResNet stems, ViT patch
  embedding) for no gain. AudioCLIP's audio tower stays fp32 whole: it is mostly convolutions, and
  quantising the rest (its spectrogram transform and attention pooling) measured 1.03× faster for a
  cosine of 0.965 to fp32 on this project's benchmark, a bad trade.

fp16 is the torch backend's on CUDA: graphs from ONNX Runtime's float16 converter crashed its CPU
provider here, and no GPU was at hand to validate them, so the ONNX backend does not offer fp16.

The int8 export is a directory like the fp32 one, with ``precision`` set in ``clipserve.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from clipserve.weights import ONNX_MARKER, TOKENIZER_DIR, staged_dir, write_export_meta

log = logging.getLogger(__name__)

QUANTISED_TOWERS = ("image.onnx", "text.onnx")
FP32_TOWERS = ("audio.onnx",)
INT8_OP_TYPES = ["MatMul", "Gemm"]


def derive_int8(fp32_dir: Path, out_dir: Path) -> Path:
    """Write the int8 version of the fp32 export ``fp32_dir`` (its towers) into ``out_dir``."""
    with staged_dir(out_dir) as staging:
        quantised = quantised_towers(fp32_dir)
        for tower in quantised:
            log.info("quantising %s of %s to int8", tower, fp32_dir)
            quantize_int8(fp32_dir / tower, staging / tower)
        for tower in FP32_TOWERS:
            for part in fp32_dir.glob(f"{tower}*"):  # the graph and any external data beside it
                shutil.copyfile(part, staging / part.name)
        meta = json.loads((fp32_dir / ONNX_MARKER).read_text())
        meta.update(precision="int8", derived_from=str(fp32_dir), quantised=quantised)
        tokenizer = fp32_dir / TOKENIZER_DIR
        write_export_meta(staging, meta, tokenizer if tokenizer.is_dir() else None)
        for written in staging.rglob("*"):  # the quantiser writes 0600 temporary files: share like fp32
            if written.is_file():
                shutil.copymode(fp32_dir / ONNX_MARKER, written)
    return out_dir


def quantised_towers(fp32_dir: Path) -> list[str]:
    """The towers of ``fp32_dir`` its int8 export quantises (the others are copied as they are)."""
    return [tower for tower in QUANTISED_TOWERS if (fp32_dir / tower).is_file()]


def quantize_int8(source: Path, target: Path) -> None:
    """Quantise the MatMul/Gemm weights of the ONNX graph `source` per channel into `target`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=INT8_OP_TYPES,
        per_channel=True,
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
    )
