"""The public entry point: :class:`Encoder` turns texts and images into L2-normalised vectors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipserve.errors import InvalidInput
from clipserve.families import resolve_model
from clipserve.families.choice import load_chosen
from clipserve.inputs import ACCEPTED_ARRAYS, AUDIO_RATE, Item, to_item
from clipserve.pipeline import Pipeline
from clipserve.settings import EngineSettings, options_doc, resolve
from clipserve.vectors import RankedMatch, clip_scores
from clipserve.zoo import ModelSpec


@dataclass(frozen=True)
class EncodeResult:
    """What :meth:`Encoder.encode_lenient` returns: vectors of the good items, errors of the bad."""

    vectors: np.ndarray
    """float32 ``[len(indices), dim]``."""
    indices: list[int]
    """Input positions of the rows of ``vectors``."""
    errors: list[InvalidInput]
    """One per skipped input, ``error.index`` naming it."""


class Encoder:
    """Embeds texts and images into one CLIP latent space.

    ``Encoder(model, **options)``: every option is a setting (below); a ``CLIPSERVE_<NAME>``
    environment variable sets one that is not given. ``spin`` lets idle ONNX Runtime threads
    busy-wait between small text kernels (faster offline; the server turns it off).

    Options:
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        settings: EngineSettings | None = None,
        spin: bool = True,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = resolve(EngineSettings, model=model, **options)
        if settings.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {settings.batch_size}")
        spec, settings = resolve_model(settings)
        model, self.backend_choice = load_chosen(spec, settings, spin)
        if self.backend_choice is not None:
            settings = dataclasses.replace(settings, backend=self.backend_choice["backend"])
        self.settings = settings
        self.pipeline = Pipeline(model, settings)
        try:
            self.warmup_s = self.pipeline.warm_up() if settings.warmup else None
        except BaseException:
            self.pipeline.close()
            raise

    @property
    def spec(self) -> ModelSpec:
        """The model's spec (a model directory given as weights may refine the zoo entry's)."""
        return self.pipeline.model.spec

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return self.spec.dim

    @property
    def modalities(self) -> tuple[str, ...]:
        """What this model embeds (``text``, ``image``, ``audio``)."""
        return self.pipeline.modalities

    def logit_scale(self, query: str = "text", candidate: str = "image") -> float:
        """exp of the model's learned temperature between two modalities."""
        return self.pipeline.model.logit_scale(query, candidate)

    def info(self) -> dict[str, object]:
        """Model, dimension, the weights' licence, and what really runs (family, backend, device,
        providers, precision, weights; for a publisher's graphs, who published them); with
        ``backend="auto"``, how the backend was chosen; the seconds the warm-up on load took (None
        without one)."""
        return {
            "model": self.spec.name,
            "dim": self.dim,
            "licence": self.spec.licence,
            **self.pipeline.model.info(),
            **({"backend_choice": self.backend_choice} if self.backend_choice else {}),
            "warmup_s": None if self.warmup_s is None else round(self.warmup_s, 3),
        }

    def close(self) -> None:
        """Stop the worker threads."""
        self.pipeline.close()

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self, inputs: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Embed a list of inputs (modality detected per item), in input order.

        Returns:
            float32 ``[len(inputs), dim]``, each row L2-normalised.

        Raises:
            InvalidInput: the bad item with the lowest index; ``error.index`` names it.
        """
        return self._strict([self._sniff(i, value) for i, value in enumerate(_as_list(inputs))])

    def encode_lenient(self, inputs: Sequence[Any] | np.ndarray, modality: str | None = None) -> EncodeResult:
        """Like :meth:`encode`, but skips bad items and reports them instead of raising.

        ``modality`` (``text``, ``image``, ``audio``) makes every input one of that modality (with
        ``text``, every string is text, even one naming a file); by default each is detected.
        """
        items, errors = [], []
        for index, value in enumerate(_as_list(inputs)):
            try:
                if modality == "text":
                    items.append(Item(index, "text", "text", str(value)))
                else:
                    items.append(self._sniff(index, value, expect=modality))
            except InvalidInput as exc:
                errors.append(exc)
        vectors, failed = self.pipeline.encode(items, stop_on_error=False)
        bad = {e.index for e in failed}
        keep = [row for row, item in enumerate(items) if item.index not in bad]
        return EncodeResult(
            vectors=vectors[keep],
            indices=[items[row].index for row in keep],
            errors=sorted(errors + failed, key=lambda e: e.index or 0),
        )

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (every string is text here, even one naming a file)."""
        return self._strict([Item(i, "text", "text", t) for i, t in enumerate(_as_list(texts))])

    def encode_image(self, images: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Embed images: paths, bytes, data URIs, PIL images, uint8 arrays, or preprocessed
        float arrays (``[3, H, W]`` each, or one ``[N, 3, H, W]`` array)."""
        return self._strict([self._sniff(i, v, expect="image") for i, v in enumerate(_as_list(images))])

    def encode_audio(self, clips: Sequence[Any], sample_rate: int | None = None) -> np.ndarray:
        """Embed audio (models with an audio tower: AudioCLIP): files and their bytes (WAV, FLAC,
        OGG Vorbis/Opus, MP3), data URIs, or sample arrays (float ``[n]`` or ``[n, channels]`` in
        [-1, 1], or int16) at ``sample_rate`` (default 44.1 kHz)."""
        items = []
        for index, value in enumerate(_as_list(clips)):
            if isinstance(value, np.ndarray):
                items.append(Item(index, "audio", "waveform", (value, sample_rate or AUDIO_RATE)))
            else:
                items.append(self._sniff(index, value, expect="audio"))
        return self._strict(items)

    def rank(self, query: Any, candidates: Sequence[Any]) -> list[RankedMatch]:
        """Rank ``candidates`` by similarity to ``query`` (image→texts, text→images, audio→texts, …),
        best first.

        ``clip_score`` is the softmax over the candidates of ``logit_scale × cosine``, as in
        clip-as-service's ``/rank``, with the model's temperature for each pair of modalities.
        """
        candidates = _as_list(candidates)
        if not candidates:
            raise InvalidInput("rank needs at least one candidate")
        items = [self._sniff(i, value) for i, value in enumerate([query, *candidates])]
        vectors = self._strict(items)
        order, scores, cosines = self.rank_vectors(
            vectors[0], items[0].modality, vectors[1:], [item.modality for item in items[1:]]
        )
        return [RankedMatch(int(i), float(scores[i]), float(cosines[i]), candidates[i]) for i in order]

    def rank_vectors(
        self, query: np.ndarray, query_modality: str, candidates: np.ndarray, modalities: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(order best first, clip_score, cosine)`` of embedded candidates: the softmax of
        ``logit_scale × cosine``, with the model's temperature for each pair of modalities (the one
        rank rule of the library, the server and the Jina executors)."""
        scales = np.asarray([self.logit_scale(query_modality, modality) for modality in modalities])
        return clip_scores(query, candidates, scales)

    # -- internals --------------------------------------------------------------------------------

    def _sniff(self, index: int, value: Any, expect: str | None = None) -> Item:
        item = to_item(index, value, self.settings.allow_url)
        if expect is None or item.modality == expect:
            return item
        if item.kind == "url":  # what a URL holds is the caller's word
            return Item(index, expect, "url", item.value)
        if item.kind == "text":
            what = "a string that is neither a file, a data URI nor a URL"
        elif item.kind == "waveform":
            samples = item.value[0]
            shape = f"{samples.dtype} {list(samples.shape)}"
            what = f"an array of {shape} reads as audio samples ({ACCEPTED_ARRAYS})"
        else:
            what = item.modality
        raise InvalidInput(f"not {'an image' if expect == 'image' else expect}: {what}", index)

    def _strict(self, items: list[Item]) -> np.ndarray:
        vectors, errors = self.pipeline.encode(items, stop_on_error=True)
        if errors:
            raise errors[0]
        return vectors


Encoder.__doc__ = (Encoder.__doc__ or "") + "\n" + options_doc(EngineSettings) + "\n"


def _as_list(inputs: Any) -> list[Any]:
    if hasattr(inputs, "detach") and hasattr(inputs, "numpy"):  # a torch tensor
        inputs = inputs.detach().cpu().numpy()
    if isinstance(inputs, np.ndarray):
        if inputs.ndim != 4:
            raise InvalidInput(
                f"an array of inputs must be a batch of preprocessed images [N, 3, H, W], got "
                f"{list(inputs.shape)}; pass single images inside a list"
            )
        return list(inputs)
    if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence):
        raise InvalidInput(
            f"expected a list of inputs, got a single {type(inputs).__name__}; wrap it in a list"
        )
    return list(inputs)
