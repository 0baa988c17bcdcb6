"""What a model name (and weights) the user gives stands for, in one place: a zoo entry, a Hugging
Face transformers model (a local directory or a hub repo), a clipserve export, or an OpenAI ``clip``
checkpoint file.

:func:`resolve_model` returns the spec to load and the settings to load it with (``weights`` set to
the directory or file found), so every face (library, CLI, server, Jina executors) takes the same
names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clipserve.backends.published import (
    IMMICH_ORG,
    fetch_immich,
    fetch_snapshot,
    immich_model,
    immich_model_config,
    is_immich_dir,
    published_export,
)
from clipserve.errors import UnknownModel, UnsupportedModel
from clipserve.families.openclip_config import spec_from_configs
from clipserve.families.transformers_config import (
    CONFIG,
    FAMILY,
    hub_snapshot,
    is_transformers_dir,
    looks_like_repo,
    names_supported_class,
    spec_from_directory,
)
from clipserve.settings import EngineSettings
from clipserve.weights import cache_dir, is_hub_dir, is_onnx_dir, offline, read_export_meta
from clipserve.zoo import ModelSpec, canonical_name, get_spec, openai_file_model, spec_from_row

HF_HUB = "hf-hub:"
"""open_clip's scheme for a hub repo, here a clipserve export (or immich's layout) published there."""


def resolve_model(settings: EngineSettings) -> tuple[ModelSpec, EngineSettings]:
    """The spec of ``settings.model`` and the settings to load it with.

    - A zoo name loads its zoo entry, with ``weights`` as given; weights that are a transformers
      model directory make it that model (of the ``transformers`` family), under the zoo name.
    - A local directory: a transformers model (``config.json`` naming a supported class), or a
      clipserve export (its own spec); anything else is :class:`UnsupportedModel` saying what was found.
    - A directory in immich's layout, or an ``immich-app/…`` hub repo: immich's published ONNX graphs
      of the zoo model its name gives (``ViT-B-32__openai``), made into an export (no torch).
    - ``hf-hub:ORG/REPO``: a clipserve export published on the hub (or immich's layout there).
    - A file: an OpenAI ``clip`` checkpoint (``ViT-B-32.pt``…) loads as the zoo's ``::openai`` model.
    - ``owner/name`` not in the zoo: a hub repo of a transformers model (the hub cache, then a download).

    Raises:
        UnknownModel: none of these; close zoo names are suggested.
    """
    name, weights = settings.model, settings.weights
    known = canonical_name(name)
    if known is not None:
        given = Path(weights).expanduser() if weights is not None else None
        if given is not None and is_immich_dir(given):
            return _from_immich(given, str(given), settings, known)
        if given is not None and names_supported_class(given):
            return spec_from_directory(given, known), settings
        if given is not None and is_onnx_dir(given) and _export_spec(given).family == FAMILY:
            return dataclasses.replace(_export_spec(given), display_name=known), settings
        return get_spec(known), settings
    path = Path(name).expanduser()
    if is_immich_dir(path):
        return _from_immich(path, str(path), settings)
    if name.startswith(f"{IMMICH_ORG}/") and not path.exists():
        return _from_immich(fetch_immich(name, cache_dir(settings.cache_dir)), name, settings)
    if name.startswith(HF_HUB):
        return _from_hub_repo(name.removeprefix(HF_HUB), settings)
    if weights is not None and is_transformers_dir(Path(weights).expanduser()):
        return spec_from_directory(Path(weights).expanduser(), name), settings
    if path.is_dir():
        return _from_directory(path, settings)
    if path.is_file():
        model = openai_file_model(path)
        return get_spec(model), dataclasses.replace(settings, weights=str(path))
    if looks_like_repo(name):
        snapshot = hub_snapshot(name, offline())
        return spec_from_directory(snapshot, name), dataclasses.replace(settings, weights=str(snapshot))
    return get_spec(name), settings  # raises UnknownModel with close names


def _from_hub_repo(repo: str, settings: EngineSettings) -> tuple[ModelSpec, EngineSettings]:
    """``hf-hub:ORG/REPO``: a clipserve export published on the hub (``clipserve export
    --hub-layout``), or a repo in immich's layout; downloaded and verified."""
    snapshot = fetch_snapshot(repo, cache_dir(settings.cache_dir))
    if is_onnx_dir(snapshot):
        return _export_spec(snapshot), dataclasses.replace(settings, weights=str(snapshot))
    if is_immich_dir(snapshot):
        return _from_immich(snapshot, repo, settings)
    raise UnsupportedModel(
        f"hf-hub:{repo} holds neither a clipserve export (clipserve.json) nor immich's layout; an open_clip "
        f"checkpoint repo loads by its zoo name, a transformers one by its plain repo id"
    )


def _from_immich(
    directory: Path, origin: str, settings: EngineSettings, zoo_name: str | None = None
) -> tuple[ModelSpec, EngineSettings]:
    """An immich directory (a local copy, or a hub snapshot) of a zoo model, named by ``zoo_name``
    or by its own name (``ViT-B-32__openai``), made into a clipserve export in the cache."""
    known = zoo_name or immich_model(origin.rstrip("/").rsplit("/", 1)[-1])
    if known is None:
        raise UnsupportedModel(
            f"{origin} is in immich's layout, but its name is not one of immich's models: name its model "
            f"and pass it as weights (Encoder('ARCH::TAG', weights={origin!r}))"
        )
    spec = get_spec(known)
    if spec.family == "mclip":  # two towers, two exports: the family makes them
        return spec, dataclasses.replace(settings, model=known, weights=str(directory), source="immich")
    if spec.family != "open_clip":
        raise UnsupportedModel(f"{origin}: immich's graphs are read for open_clip and M-CLIP, not {known}")
    model_cfg, preprocess = immich_model_config(directory)
    spec = spec_from_configs(spec, model_cfg, preprocess)  # a variant keeps its own, as in a hub directory
    export = published_export(directory, spec, cache_dir(settings.cache_dir), origin)
    return _export_spec(export), dataclasses.replace(settings, model=known, weights=str(export))


def _export_spec(path: Path) -> ModelSpec:
    """The spec an export keeps (exports made before they kept one are refused)."""
    meta = read_export_meta(path)
    if "spec" not in meta:
        raise UnsupportedModel(f"{path} is an old export of {meta.get('model')}, without its spec")
    return spec_from_row(meta["spec"])


def _from_directory(path: Path, settings: EngineSettings) -> tuple[ModelSpec, EngineSettings]:
    with_weights = dataclasses.replace(settings, weights=str(path))
    if is_onnx_dir(path):
        return _export_spec(path), with_weights
    if is_transformers_dir(path):
        return spec_from_directory(path, str(path)), with_weights
    if is_hub_dir(path):
        raise UnsupportedModel(
            f"{path} is an open_clip model directory: name its zoo model and pass it as weights "
            f"(Encoder('ARCH::TAG', weights={str(path)!r}))"
        )
    found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise UnknownModel(
        f"{path} is neither a transformers model ({CONFIG}), a clipserve export (clipserve.json) nor an "
        f"open_clip model directory; it holds {found}"
    )
