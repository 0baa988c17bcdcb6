"""Derive the int8 and fp16 ONNX exports from an fp32 export (ONNX Runtime tools only; no torch).

- ``int8`` (CPU): dynamic quantisation with per-channel 8-bit weights of every MatMul/Gemm
  (activations are quantised to uint8 per batch at run time), in the scheme this CPU computes
  exactly (:func:`int8_scheme`): int8 weights (``u8s8``) where it has VNNI or AMX, uint8 weights
  (``u8u8``) on x86 without. Without VNNI, ONNX Runtime's u8s8 kernels add pairs of products into
  int16 with saturation (``vpmaddubsw``): measured on an AVX2-only Zen 3, the image vectors fell
  to cosine 0.980 of fp32. Each scheme is cached apart (``int8-u8s8``, ``int8-u8u8``).
  Convolutions stay fp32: ONNX Runtime's integer convolution is slower than its fp32 one on CPUs,
  so quantising them costs speed (ResNet stems, ViT patch embedding) for no gain. AudioCLIP's
  audio tower stays fp32 whole: it is mostly convolutions, and quantising the rest (its
  spectrogram transform and attention pooling) measured 1.03× faster for a cosine of 0.965 to
  fp32 on this project's benchmark, a bad trade.
- ``fp16`` (CUDA, TensorRT): ONNX Runtime's float16 converter, with float32 inputs and outputs (the
  casts are in the graph, so callers feed the same arrays as to fp32). AudioCLIP's audio tower stays
  fp32 (its spectrogram front end is not validated in fp16). The CPU provider would run these graphs
  by casting back to fp32, slower than fp32 itself, so fp16 is not offered there.

An export of either is a directory like the fp32 one, with ``precision`` set in ``clipserve.json``
and the towers converted listed under ``quantised``.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from clipserve.resources import cpu_flags
from clipserve.weights import ONNX_MARKER, TOKENIZER_DIR, staged_dir, write_export_meta

log = logging.getLogger(__name__)

QUANTISED_TOWERS = ("image.onnx", "text.onnx")
FP32_TOWERS = ("audio.onnx",)
INT8_OP_TYPES = ["MatMul", "Gemm"]
INT8_SCHEMES = ("u8s8", "u8u8")
"""uint8 activations with int8 weights (fastest where VNNI multiplies them exactly), or with uint8
weights (exact on every x86 CPU)."""
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""``/proc/cpuinfo`` flags of CPUs whose u8s8 products do not saturate."""
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


def int8_scheme(flags: set[str] | None = None) -> str:
    """The int8 scheme this CPU (or one with ``flags``) runs exactly: ``u8s8`` with VNNI or AMX, or
    off x86 (ARM's dot-product kernels do not saturate); ``u8u8`` on x86 without, and on x86 whose
    flags cannot be read (the exact one is the safe guess)."""
    import platform

    flags = cpu_flags() if flags is None else flags
    if flags & set(VNNI_FLAGS):
        return "u8s8"
    x86 = "avx2" in flags or "sse2" in flags or platform.machine().lower() in X86_MACHINES
    return "u8u8" if x86 else "u8s8"


def variant(precision: str) -> str:
    """The cache folder of ``precision``'s export here: ``int8-<this CPU's scheme>``, else the
    precision itself."""
    return f"int8-{int8_scheme()}" if precision == "int8" else precision


def export_scheme(meta: dict) -> str | None:
    """The int8 scheme of the export of ``meta``: the one recorded, ``u8s8`` for an export made
    before schemes were recorded, None for other precisions."""
    return meta.get("int8_scheme", "u8s8") if meta.get("precision") == "int8" else None


def scheme_warning(scheme: str) -> str | None:
    """What is wrong with running an int8 export of ``scheme`` on this CPU (one made on another
    machine), or None when it is this CPU's own."""
    right = int8_scheme()
    if scheme == right:
        return None
    cost = "loses accuracy on this CPU (no VNNI)" if right == "u8u8" else "runs slower on this CPU (VNNI)"
    return (
        f"this int8 export is {scheme}, which {cost} than {right}: derive int8 here from the fp32 export "
        "(precision='int8' with the fp32 weights) to get it"
    )


def derive(precision: str, fp32_dir: Path, out_dir: Path) -> Path:
    """Write the ``precision`` (int8, in this CPU's scheme, or fp16) version of the fp32 export
    ``fp32_dir`` into ``out_dir``."""
    if precision == "int8":
        return derive_int8(fp32_dir, out_dir, int8_scheme())
    return derive_fp16(fp32_dir, out_dir)


def derive_int8(fp32_dir: Path, out_dir: Path, scheme: str) -> Path:
    """Write the int8 version (``scheme``: :data:`INT8_SCHEMES`) of the fp32 export ``fp32_dir``
    (its towers) into ``out_dir``."""
    return _derive(fp32_dir, out_dir, "int8", functools.partial(quantize_int8, scheme=scheme), scheme)


def derive_fp16(fp32_dir: Path, out_dir: Path) -> Path:
    """Write the fp16 version of the fp32 export ``fp32_dir`` (its towers) into ``out_dir``."""
    return _derive(fp32_dir, out_dir, "fp16", convert_fp16)


def _derive(
    fp32_dir: Path,
    out_dir: Path,
    precision: str,
    convert: Callable[[Path, Path], None],
    scheme: str | None = None,
) -> Path:
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
        if scheme is not None:
            meta["int8_scheme"] = scheme
        tokenizer = fp32_dir / TOKENIZER_DIR
        write_export_meta(staging, meta, tokenizer if tokenizer.is_dir() else None)
        for written in staging.rglob("*"):  # the quantiser writes 0600 temporary files: share like fp32
            if written.is_file():
                shutil.copymode(fp32_dir / ONNX_MARKER, written)
    return out_dir


def quantised_towers(fp32_dir: Path) -> list[str]:
    """The towers of ``fp32_dir`` its int8 and fp16 exports convert (the others are copied as they are)."""
    return [tower for tower in QUANTISED_TOWERS if (fp32_dir / tower).is_file()]


def quantize_int8(source: Path, target: Path, scheme: str) -> None:
    """Quantise the MatMul/Gemm weights of the ONNX graph ``source`` per channel into ``target``,
    as int8 (``u8s8``) or uint8 (``u8u8``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=INT8_OP_TYPES,
        per_channel=True,
        weight_type=QuantType.QInt8 if scheme == "u8s8" else QuantType.QUInt8,
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
