"""Derive the int8 and fp16 ONNX exports from an fp32 export (ONNX Runtime tools only; no torch).

- ``int8`` (CPU): dynamic quantisation with per-channel int8 weights of every MatMul/Gemm
  (activations are quantised per batch at run time). Convolutions stay fp32: ONNX Runtime's integer
  convolution is slower than its fp32 one on CPUs, so quantising them costs speed (ResNet stems,
  ViT patch embedding) for no gain. AudioCLIP's audio tower stays fp32 whole: it is mostly
  convolutions, and quantising the rest (its spectrogram transform and attention pooling) measured
  1.03× faster for a cosine of 0.965 to fp32 on this project's benchmark, a bad trade.
- ``fp16`` (CUDA, TensorRT): ONNX Runtime's float16 converter, with float32 inputs and outputs (the
  casts are in the graph, so callers feed the same arrays as to fp32). AudioCLIP's audio tower stays
  fp32 (its spectrogram front end is not validated in fp16). The CPU provider would run these graphs
  by casting back to fp32, slower than fp32 itself, so fp16 is not offered there.

An export of either is a directory like the fp32 one, with ``precision`` set in ``clipserve.json``
and the towers converted listed under ``quantised``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from clipserve.weights import ONNX_MARKER, TOKENIZER_DIR, staged_dir, write_export_meta

log = logging.getLogger(__name__)

QUANTISED_TOWERS = ("image.onnx", "text.onnx")
FP32_TOWERS = ("audio.onnx",)
INT8_OP_TYPES = ["MatMul", "Gemm"]


def derive(precision: str, fp32_dir: Path, out_dir: Path) -> Path:
    """Write the ``precision`` (int8 or fp16) version of the fp32 export ``fp32_dir`` into ``out_dir``."""
    derivations = {"int8": derive_int8, "fp16": derive_fp16}
    return derivations[precision](fp32_dir, out_dir)


def derive_int8(fp32_dir: Path, out_dir: Path) -> Path:
    """Write the int8 version of the fp32 export ``fp32_dir`` (its towers) into ``out_dir``."""
    return _derive(fp32_dir, out_dir, "int8", quantize_int8)


def derive_fp16(fp32_dir: Path, out_dir: Path) -> Path:
    """Write the fp16 version of the fp32 export ``fp32_dir`` (its towers) into ``out_dir``."""
    return _derive(fp32_dir, out_dir, "fp16", convert_fp16)


def _derive(fp32_dir: Path, out_dir: Path, precision: str, convert: Callable[[Path, Path], None]) -> Path:
    with staged_dir(out_dir) as staging:
        quantised = quantised_towers(fp32_dir)
        for tower in quantised:
            log.info("converting %s of %s to %s", tower, fp32_dir, precision)
            convert(fp32_dir / tower, staging / tower)
        for tower in FP32_TOWERS:
            for part in fp32_dir.glob(f"{tower}*"):  # the graph and any external data beside it
                shutil.copyfile(part, staging / part.name)
        meta = json.loads((fp32_dir / ONNX_MARKER).read_text())
        meta.update(precision=precision, derived_from=str(fp32_dir), quantised=quantised)
        tokenizer = fp32_dir / TOKENIZER_DIR
        write_export_meta(staging, meta, tokenizer if tokenizer.is_dir() else None)
        for written in staging.rglob("*"):  # the quantiser writes 0600 temporary files: share like fp32
            if written.is_file():
                shutil.copymode(fp32_dir / ONNX_MARKER, written)
    return out_dir


def quantised_towers(fp32_dir: Path) -> list[str]:
    """The towers of ``fp32_dir`` its int8 and fp16 exports convert (the others are copied as they are)."""
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


def convert_fp16(source: Path, target: Path) -> None:
    """Convert the ONNX graph ``source`` to float16 into ``target``, keeping float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    graph = OnnxModel(convert_float_to_float16(onnx.load(source), keep_io_types=True))
    # The converter appends its input casts after the nodes that read them; ONNX Runtime's graph
    # optimiser crashes (segmentation fault) on a graph that is not in topological order.
    graph.topological_sort()
    onnx.save(graph.model, target, save_as_external_data=True, location=f"{target.name}.data")
