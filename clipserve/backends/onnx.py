"""ONNX Runtime backend: runs ``clipserve export`` graphs on CPU, CUDA or TensorRT; no torch needed."""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clipserve.backends.base import check_precision
from clipserve.backends.precision import export_scheme, scheme_warning
from clipserve.errors import DeviceUnavailable, WeightsUnavailable
from clipserve.resources import available_cpus
from clipserve.weights import read_export_meta
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)


def execution_providers(device: str) -> list[str | tuple[str, dict]]:
    """ONNX Runtime providers for ``cpu``, ``cuda[:N]`` or ``tensorrt[:N]``.

    Raises:
        DeviceUnavailable: the provider is not in this onnxruntime build.
    """
    kind, _, ordinal = device.partition(":")
    options = {"device_id": int(ordinal)} if ordinal else {}
    wanted = {
        "cpu": [],
        "cuda": [("CUDAExecutionProvider", options)],
        "tensorrt": [("TensorrtExecutionProvider", options), ("CUDAExecutionProvider", options)],
    }
    if kind not in wanted:
        raise DeviceUnavailable(
            f"the onnx backend runs on 'cpu', 'cuda[:N]' or 'tensorrt[:N]', not {device!r}"
        )
    if kind != "cpu":
        load_pip_cuda_libraries()
    available = ort.get_available_providers()
    for name, _ in wanted[kind]:
        if name not in available:
            raise DeviceUnavailable(
                f"device {device!r} needs {name}, which this onnxruntime build lacks "
                f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT"
            )
    return [*wanted[kind], "CPUExecutionProvider"]


@cache
def load_pip_cuda_libraries() -> None:
    """Load CUDA and cuDNN from NVIDIA's pip packages when they are installed (``pip install
    'onnxruntime-gpu[cuda,cudnn]'``, the cuda image): ONNX Runtime does not look for them there."""
    if importlib.util.find_spec("nvidia") is not None and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


@cache
def shared_cpu_arena() -> None:
    """Register, once per process, the CPU arena that every session uses (extends as requested)."""
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    same_as_requested = 1
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, same_as_requested, -1, -1))


class OnnxBackend:
    """Runs an exported model directory; see :class:`clipserve.backends.base.Backend`."""

    def __init__(
        self,
        spec: ModelSpec,
        model_dir: Path,
        device: str = "cpu",
        precision: str = "fp32",
        spin: bool = True,
        towers: tuple[str, ...] = ("image", "text"),
    ) -> None:
        providers = execution_providers(device)
        meta = checked_export(spec, model_dir, device, precision)
        self.spec = spec
        self.model_dir = model_dir
        self.device = device
        self.precision = precision
        self.logit_scale = float(meta["logit_scale"])
        self.int8_scheme = scheme_of(meta)
        self.text_dynamic_length = bool(meta["text_dynamic_length"])
        # Image batches run while decoding threads share the cores: idle inference threads must not
        # spin. Text batches may run alone, where spinning saves the wake-up after each small kernel;
        # ``spin=False`` (the server) leaves those cycles to request handling instead.
        # Only the ``towers`` asked for are loaded (M-CLIP runs the image tower of a CLIP export).
        self._image = (
            open_session(model_dir / "image.onnx", providers, False, precision) if "image" in towers else None
        )
        self._text = (
            open_session(model_dir / "text.onnx", providers, spin, precision) if "text" in towers else None
        )
        self._audio = (
            open_session(model_dir / "audio.onnx", providers, False, precision) if "audio" in towers else None
        )
        self.providers = (self._image or self._text).get_providers()
        self.logit_scales = meta.get("logit_scales", {"logit_scale": self.logit_scale})
        published = ("published_by", "published_repo")
        self.published = {k: meta.get(k) for k in published} if "published_by" in meta else {}
        static = meta.get("batch", {})  # a publisher's graph whose batch axis stayed 1: item by item
        self._image_batch, self._text_batch = static.get("image"), static.get("text")
        log.info("onnx backend: %s on %s with %s from %s", spec.name, device, self.providers, model_dir)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return run_rows(
            self._image, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)}, self._image_batch
        )

    def encode_image_tensor(self, pixels) -> np.ndarray:
        """Normalised float32 pixels, a torch tensor on :attr:`tensor_device` (the CPU or the
        session's GPU) → float32 ``[n, dim]``. The tensor's memory is bound to the graph's input
        as it is (IO binding): on a GPU the pixels are not copied through the host."""
        pixels = pixels.float().contiguous()
        if pixels.device.type == "cuda":  # torch queues kernels; ONNX Runtime runs on its own stream
            import torch

            torch.cuda.current_stream(pixels.device).synchronize()
        binding = self._image.io_binding()
        binding.bind_input(
            "pixels",
            pixels.device.type,
            pixels.device.index or 0,
            np.float32,
            tuple(pixels.shape),
            pixels.data_ptr(),
        )
        binding.bind_output("embeddings")
        self._image.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    @property
    def tensor_device(self) -> str:
        """The torch device of this session's pixels: ``cpu``, or ``cuda:N`` (for CUDA and TensorRT)."""
        kind, _, ordinal = self.device.partition(":")
        return "cpu" if kind == "cpu" else f"cuda:{ordinal or 0}"

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return run_rows(
            self._text, {"tokens": np.ascontiguousarray(tokens, dtype=np.int64)}, self._text_batch
        )

    def encode_audio(self, samples: np.ndarray) -> np.ndarray:
        """``[n, 220500]`` samples in the 16-bit range → ``[n, 1024]`` (AudioCLIP; not normalised)."""
        return self._audio.run(None, {"audio": np.ascontiguousarray(samples, dtype=np.float32)})[0]

    def info(self) -> dict[str, object]:
        return {**running(self), **self.published}


class OnnxTextEncoder:
    """Runs an exported mean-pooled text encoder (M-CLIP): ``text.onnx`` with ``input_ids`` and
    ``attention_mask``."""

    def __init__(self, model_dir: Path, device: str, precision: str, spin: bool) -> None:
        providers = execution_providers(device)
        check_precision(precision, "onnx", device.split(":")[0])
        meta = read_export_meta(model_dir)
        if meta["precision"] != precision:
            raise WeightsUnavailable(f"{model_dir} holds a {meta['precision']} export, not {precision}")
        self.model_dir = model_dir
        self.int8_scheme = scheme_of(meta)
        self._session = open_session(model_dir / "text.onnx", providers, spin, precision)
        self._batch = meta.get("batch", {}).get("text")  # a publisher's graph may fix batch and length
        length = self._session.get_inputs()[0].shape[1]
        self._length = length if isinstance(length, int) else None

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self._length is not None:  # padding, masked out: the vectors are those of the short arrays
            extra = ((0, 0), (0, self._length - input_ids.shape[1]))
            input_ids, attention_mask = np.pad(input_ids, extra), np.pad(attention_mask, extra)
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        return run_rows(self._session, feeds, self._batch)

    def info(self) -> dict[str, object]:
        scheme = {"text_int8_scheme": self.int8_scheme} if self.int8_scheme else {}
        return {"text_backend": "onnx", "text_weights": str(self.model_dir), **scheme}


class HfOnnxBackend:
    """Runs the ONNX export of a Hugging Face transformers model (:mod:`clipserve.backends.hf_clip`):
    ``image.onnx`` on ``pixel_values`` (or SigLIP 2's patches, patch mask and grid shapes) and
    ``text.onnx`` on ``input_ids`` and ``attention_mask``; only the ``modalities`` asked for load."""

    def __init__(
        self,
        spec: ModelSpec,
        model_dir: Path,
        device: str,
        precision: str,
        spin: bool,
        modalities: tuple[str, ...],
    ) -> None:
        providers = execution_providers(device)
        meta = checked_export(spec, model_dir, device, precision)
        self.spec, self.model_dir, self.device, self.precision = spec, model_dir, device, precision
        self.logit_scale = float(meta["logit_scale"])
        self.int8_scheme = scheme_of(meta)
        self._image = (
            open_session(model_dir / "image.onnx", providers, False, precision)
            if "image" in modalities
            else None
        )
        self._text = (
            open_session(model_dir / "text.onnx", providers, spin, precision)
            if "text" in modalities
            else None
        )
        self.providers = (self._image or self._text).get_providers()
        log.info("onnx backend: %s on %s with %s from %s", spec.name, device, self.providers, model_dir)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self._image.run(None, {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def encode_patches(self, patches: np.ndarray, mask: np.ndarray, shapes: np.ndarray) -> np.ndarray:
        feeds = {
            "pixel_values": np.ascontiguousarray(patches, dtype=np.float32),
            "pixel_attention_mask": mask.astype(np.int64),
            "spatial_shapes": shapes.astype(np.int64),
        }
        return self._image.run(None, feeds)[0]

    def encode_text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        return self._text.run(None, feeds)[0]

    def info(self) -> dict[str, object]:
        return running(self)


def run_rows(session: ort.InferenceSession, feeds: dict[str, np.ndarray], static: int | None) -> np.ndarray:
    """``session``'s first output for ``feeds`` (arrays of the same rows) at once, or ``static``
    rows at a time (a graph whose batch axis is fixed)."""
    if static is None:
        return session.run(None, feeds)[0]
    count = len(next(iter(feeds.values())))
    return np.concatenate(
        [
            session.run(None, {name: rows[start : start + static] for name, rows in feeds.items()})[0]
            for start in range(0, count, static)
        ]
    )


def running(backend: OnnxBackend | HfOnnxBackend) -> dict[str, object]:
    """What an ONNX backend runs, for ``info()``."""
    return {
        "backend": "onnx",
        "device": backend.device,
        "precision": backend.precision,
        "providers": backend.providers,
        "weights": str(backend.model_dir),
        "onnxruntime": ort.__version__,
        **({"int8_scheme": backend.int8_scheme} if backend.int8_scheme else {}),
    }


def scheme_of(meta: dict) -> str | None:
    """The int8 scheme of an export (:func:`export_scheme`), logged when this CPU would run the
    other one better."""
    scheme = export_scheme(meta)
    if scheme is not None and (warning := scheme_warning(scheme)):
        log.warning("%s: %s", meta.get("model"), warning)
    return scheme


def checked_export(spec: ModelSpec, model_dir: Path, device: str, precision: str) -> dict:
    """The export's metadata, once the device runs ``precision`` and the export is of ``spec``'s
    architecture in that precision."""
    check_precision(precision, "onnx", device.split(":")[0])
    meta = read_export_meta(model_dir)
    if meta["arch"] != spec.arch:
        raise WeightsUnavailable(f"{model_dir} holds an export of {meta['model']}, not of {spec.name}")
    if meta["precision"] != precision:
        raise WeightsUnavailable(f"{model_dir} holds a {meta['precision']} export, not {precision}")
    return meta


def open_session(path: Path, providers: list, spin: bool, precision: str = "fp32") -> ort.InferenceSession:
    """An ONNX Runtime session on ``providers``, refusing a silent fallback to the CPU.

    ``spin`` lets idle intra-op threads busy-wait between kernels.
    """
    options = ort.SessionOptions()
    # The last level adds only the CPU provider's layout transforms, which crash (segmentation
    # fault, onnxruntime 1.32) on float16 graphs; the fusions CUDA uses are in the level below.
    levels = ort.GraphOptimizationLevel
    fp16 = precision == "fp16"
    options.graph_optimization_level = levels.ORT_ENABLE_EXTENDED if fp16 else levels.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.intra_op_num_threads = available_cpus()  # ONNX Runtime alone ignores CPU quotas
    # Memory: batch sizes and text lengths vary, so a memory pattern planned per input shape is
    # rarely reused and each one stays allocated; and both towers draw on one shared CPU arena
    # that grows by what is asked, not by doubling. Measured: ViT-B-32 int8 server peak
    # 680 → 450 MB under 64 clients, no loss in speed.
    options.enable_mem_pattern = False
    shared_cpu_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    session = ort.InferenceSession(str(path), options, providers=providers)
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if wanted not in session.get_providers():  # onnxruntime silently falls back when a provider fails
        raise DeviceUnavailable(
            f"{wanted} failed to start for {path.name}; refusing to run on the CPU instead. "
            "Either no GPU is visible or its CUDA/cuDNN libraries are missing: check `nvidia-smi`, and "
            "give a container the GPU (docker run --gpus all, or a nvidia.com/gpu limit in Kubernetes)"
        )
    return session
