"""Model families: each knows which preprocessing, tokenizer and towers its models have.

``ModelSpec.family`` picks the loader from :data:`LOADERS`; a new family is an entry here and a
module beside this one, not a branch elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from clipserve.errors import UnsupportedModel
from clipserve.families.base import Model, Tower
from clipserve.families.resolve import resolve_model
from clipserve.settings import EngineSettings
from clipserve.zoo import ModelSpec

LOADERS: dict[str, str] = {
    "open_clip": "clipserve.families.openclip:OpenClipModel",
    "mclip": "clipserve.families.mclip:MClipModel",
    "audioclip": "clipserve.families.audioclip:AudioClipModel",
    "transformers": "clipserve.families.hf:TransformersModel",
}
"""family → ``module:class`` of its loader (imported on use: a family may need optional extras)."""


def load_model(spec: ModelSpec, settings: EngineSettings, spin: bool = True) -> Model:
    """The model of ``spec`` on the backend, device and precision of ``settings``."""
    if spec.family not in LOADERS:
        raise UnsupportedModel(f"{spec.name} is of the family {spec.family!r}, which this release lacks")
    module, _, name = LOADERS[spec.family].partition(":")
    loader: Callable[..., Model] = getattr(import_module(module), name)
    return loader(spec, settings, spin)


__all__ = ["LOADERS", "Model", "Tower", "load_model", "resolve_model"]
