"""The executors' constructors: the Hub's and clip-as-service's parameters mapped onto clipserve.

Docs arrive from the network, so a doc's ``uri`` may name a local file only under the directories
of ``local_file_roots`` (or ``CLIPSERVE_LOCAL_FILE_ROOTS``); by default none is read.

Each class here is a mixin without Jina: a docarray shell (:mod:`clipserve.jina.v1`,
:mod:`clipserve.jina.v2`) combines it with its endpoints into a Jina ``Executor``. Every option
not given falls back to its ``CLIPSERVE_*`` environment variable, as everywhere in clipserve.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from clipserve.encoder import Encoder
from clipserve.jina.core import DocWriter, ExecutorCore

log = logging.getLogger(__name__)

BEFORE_FORK = (
    "clipserve.families.openclip",  # its tokenizer: ftfy, wcwidth
    "clipserve.families.mclip",
    "clipserve.families.audioclip",
    "clipserve.backends.onnx",  # onnxruntime
)
"""What an executor imports to run, imported with this module: Jina forks each executor's process
from the Flow's, and a child that imports a module itself deadlocks when another thread of the
parent held that import's lock at the fork (seen: a child stuck for good in ``import ftfy`` →
``wcwidth``). Nothing here starts a thread."""
BEFORE_FORK_OPTIONAL = ("soundfile", "soxr", "tokenizers", "clipserve.preprocess.tensor_image")
"""The same, for the optional extras' modules (audio; Hugging Face tokenizers; torch's tensor path)."""


def _import_before_fork() -> None:
    for name in BEFORE_FORK:
        import_module(name)
    for name in BEFORE_FORK_OPTIONAL:
        with contextlib.suppress(ImportError):
            import_module(name)


_import_before_fork()

HUB_MODEL = "openai/clip-vit-base-patch32"
AUDIOCLIP_DEFAULT_PATH = ".cache/AudioCLIP-Full-Training.pt"
IGNORED = {
    "base_feature_extractor": "the model's own preprocessing is used",
    "base_tokenizer_model": "the model's own tokenizer is used",
    "max_length": "texts are cut at the model's context length",
    "tokenizer_path": "the model's own tokenizer is used",
    "jit": "the backend setting (CLIPSERVE_BACKEND) chooses how the model runs",
}
"""Parameters of the old executors that clipserve takes but has no use for, and why."""
LOCAL_ROOTS_VARIABLE = "CLIPSERVE_LOCAL_FILE_ROOTS"


def local_roots(given: Sequence[str] | str | None) -> list[str]:
    """The directories a doc's ``uri`` may name files in: the ``local_file_roots`` parameter, else
    ``CLIPSERVE_LOCAL_FILE_ROOTS`` (``os.pathsep``-separated); none by default."""
    if given is None:
        given = os.environ.get(LOCAL_ROOTS_VARIABLE, "")
    if isinstance(given, str):
        given = given.split(os.pathsep)
    return [root for root in given if root]


def open_encoder(
    model: str | None,
    *,
    device: str | None = None,
    weights: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    num_workers: int | None = None,
) -> Encoder:
    """An :class:`~clipserve.Encoder` from an executor's parameters; ``None`` leaves a setting to
    its environment variable or default. ``cuda:0`` style devices name the device ``cuda``."""
    options = {
        "device": device.split(":")[0] if device else None,
        "weights": weights,
        "backend": backend,
        "precision": precision,
        "num_workers": num_workers,
    }
    # Jina's gateway shares the CPUs: idle ONNX Runtime threads must sleep, not spin (as in the server).
    return Encoder(model, spin=False, **{name: value for name, value in options.items() if value is not None})


class ClipserveExecutor:
    """What every executor shares: the core, a ``close`` for Jina's teardown, ignored parameters."""

    writer: DocWriter
    core: ExecutorCore

    def _start(
        self,
        encoder: Encoder,
        legacy: dict[str, Any],
        roots: Sequence[str] | str | None,
        **core_options: Any,
    ) -> None:
        for name in sorted(set(legacy) & set(IGNORED)):
            log.warning("%s: parameter %s is ignored: %s", type(self).__name__, name, IGNORED[name])
        self.core = ExecutorCore(encoder, self.writer, local_roots=local_roots(roots), **core_options)
        log.info("%s runs %s", type(self).__name__, encoder.info())

    def close(self) -> None:
        """Stop the encoder's worker threads (Jina calls this when the executor stops)."""
        self.core.encoder.close()


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(legacy parameters clipserve ignores, the rest for Jina's ``Executor``)."""
    legacy = {name: kwargs.pop(name) for name in list(kwargs) if name in IGNORED}
    return legacy, kwargs


class CLIPImageEncoderMixin(ClipserveExecutor):
    """The Hub's ``CLIPImageEncoder``: embeds image docs (``tensor`` uint8 ``[H, W, 3]``, ``blob``
    bytes, ``uri``); with ``use_default_preprocessing=False``, ``tensor`` is model-ready float
    ``[3, H, W]`` pixels. Other docs pass through untouched."""

    def __init__(
        self,
        pretrained_model_name_or_path: str = HUB_MODEL,
        use_default_preprocessing: bool = True,
        device: str | None = None,
        batch_size: int = 32,
        traversal_paths: str | Sequence[str] = "@r",
        local_file_roots: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        legacy, rest = _split(kwargs)
        super().__init__(**rest)
        self._start(
            open_encoder(pretrained_model_name_or_path, device=device),
            legacy,
            local_file_roots,
            accepts=("image",),
            access_paths=traversal_paths,
            batch_size=batch_size,
            preprocessed=not use_default_preprocessing,
        )


class CLIPTextEncoderMixin(ClipserveExecutor):
    """The Hub's ``CLIPTextEncoder``: embeds docs with ``text``; other docs pass through."""

    def __init__(
        self,
        pretrained_model_name_or_path: str = HUB_MODEL,
        device: str | None = None,
        batch_size: int = 32,
        traversal_paths: str | Sequence[str] = "@r",
        **kwargs: Any,
    ) -> None:
        legacy, rest = _split(kwargs)
        super().__init__(**rest)
        self._start(
            open_encoder(pretrained_model_name_or_path, device=device),
            legacy,
            None,
            accepts=("text",),
            access_paths=traversal_paths,
            batch_size=batch_size,
        )


class CLIPEncoderMixin(ClipserveExecutor):
    """clip-as-service's server executor (``clip_server.executors.clip_onnx.CLIPEncoder``): embeds
    text and image docs on ``/encode`` (the default endpoint) and scores matches on ``/rank``.

    ``model_path`` is a checkpoint or an export directory; ``dtype`` is a precision (``fp32``,
    ``int8``, ``fp16``); ``traversal_paths`` is the deprecated name of ``access_paths``.
    """

    backend: str | None = None

    def __init__(
        self,
        name: str | None = None,
        device: str | None = None,
        num_worker_preprocess: int | None = None,
        minibatch_size: int = 32,
        access_paths: str | Sequence[str] = "@r",
        model_path: str | None = None,
        dtype: str | None = None,
        traversal_paths: str | Sequence[str] | None = None,
        local_file_roots: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        legacy, rest = _split(kwargs)
        super().__init__(**rest)
        encoder = open_encoder(
            name,
            device=device,
            weights=model_path,
            backend=self.backend,
            precision=dtype,
            num_workers=num_worker_preprocess,
        )
        self._start(
            encoder,
            legacy,
            local_file_roots,
            accepts=encoder.modalities,
            access_paths=traversal_paths or access_paths,
            batch_size=minibatch_size,
        )


class CLIPOnnxEncoderMixin(CLIPEncoderMixin):
    """The Hub's ``CLIPOnnxEncoder``: clip-as-service's executor on ONNX Runtime."""

    backend = "onnx"


class AudioCLIPMixin(ClipserveExecutor):
    """The AudioCLIP executors: ``model_path`` names the checkpoint (``…Partial…`` picks
    ``AudioCLIP::partial``) or an export directory; where the default path holds nothing, the
    weights come from ``CLIPSERVE_WEIGHTS``, the cache or the release download."""

    accepts: tuple[str, ...] = ()

    def __init__(
        self,
        model_path: str = AUDIOCLIP_DEFAULT_PATH,
        default_traversal_paths: str | Sequence[str] = ("r",),
        default_batch_size: int = 32,
        device: str | None = None,
        local_file_roots: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        legacy, rest = _split(kwargs)
        super().__init__(**rest)
        name = "AudioCLIP::partial" if "partial" in Path(model_path).name.lower() else "AudioCLIP::full"
        given = model_path != AUDIOCLIP_DEFAULT_PATH or Path(model_path).exists()
        self._start(
            open_encoder(name, device=device, weights=model_path if given else None),
            legacy,
            local_file_roots,
            accepts=self.accepts,
            access_paths=default_traversal_paths,
            batch_size=default_batch_size,
        )


class AudioCLIPEncoderMixin(AudioCLIPMixin):
    """``AudioCLIPEncoder``: embeds audio docs: ``tensor`` ``(n,)`` or ``(channels, n)`` at
    ``tags['sample_rate']`` (44.1 kHz when absent), audio file bytes in ``blob``, or a ``uri``."""

    accepts = ("audio",)


class AudioCLIPImageEncoderMixin(AudioCLIPMixin):
    """``AudioCLIPImageEncoder``: embeds image docs into AudioCLIP's space."""

    accepts = ("image",)


class AudioCLIPTextEncoderMixin(AudioCLIPMixin):
    """``AudioCLIPTextEncoder``: embeds text docs into AudioCLIP's space."""

    accepts = ("text",)


MIXINS = (
    CLIPImageEncoderMixin,
    CLIPTextEncoderMixin,
    CLIPEncoderMixin,
    CLIPOnnxEncoderMixin,
    AudioCLIPEncoderMixin,
    AudioCLIPImageEncoderMixin,
    AudioCLIPTextEncoderMixin,
)


def executor_classes(endpoints: type, module: str) -> tuple[type, ...]:
    """The Jina executors of one docarray shell: each mixin above on the shell's ``endpoints``
    (a Jina ``Executor`` with its ``@requests`` methods), named as the executor it replaces."""
    return tuple(
        type(
            mixin.__name__.removesuffix("Mixin"),
            (mixin, endpoints),
            {
                "__doc__": mixin.__doc__,
                "__module__": module,
                "__qualname__": mixin.__name__.removesuffix("Mixin"),
            },
        )
        for mixin in MIXINS
    )
