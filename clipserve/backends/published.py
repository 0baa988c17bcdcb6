"""Torch-free weights: the ONNX exports that others publish, made into clipserve's export layout.

Three publishers (which zoo models each has: ``published_models.json``):

- **immich** publishes 54 open_clip and 4 M-CLIP models on the Hugging Face hub
  (``immich-app/ViT-B-32__openai``): a root ``config.json`` (open_clip's model config), then
  ``visual/model.onnx`` (``image`` float32) with ``visual/preprocess_cfg.json`` (open_clip's
  preprocessing) and ``textual/model.onnx`` (``text`` int32) with the tokenizer files; outputs
  normalised in the graph.
- **clip-as-service** keeps ``textual.onnx`` (``input_ids`` and ``attention_mask``, int32) and
  ``visual.onnx`` (``pixel_values``) of 29 models under its storage URL, with an md5 each (some
  as zips with their external data); outputs not normalised.
- **fastembed** reads two hub repos for ViT-B-32 (``Qdrant/clip-ViT-B-32-vision``, ``-text``), each
  a flat ``model.onnx`` exported from transformers (``pixel_values``; ``input_ids`` and
  ``attention_mask``, int64) with ``preprocessor_config.json`` and the tokenizer files.

Reading them needs ONNX Runtime and ``onnx`` only, so a torch-free install serves a zoo model by
its name.

A published graph becomes an export directory clipserve runs as its own (``image.onnx``,
``text.onnx``, ``clipserve.json``), with only these changes, made with ``onnx``:

- the inputs are renamed to clipserve's (``pixels``, ``tokens``), an int32 token input gets a
  ``Cast`` from clipserve's int64 in front of it, an attention mask is computed in the graph from
  the tokens (1 up to the end token, the highest id: the real tokens), and the first output,
  whatever its name, becomes ``embeddings`` (later outputs are dropped);
- a static batch axis of 1 (immich's newer exports) is made dynamic, and the rewrite kept only
  when a batch of two gives the same vectors as two runs of one; otherwise the graph stays static
  and runs item by item (``clipserve.json``: ``"batch": 1``).

Vectors are normalised once by clipserve whether or not the graph already normalised them. The
preprocessing is the publisher's own (``preprocess_cfg.json``, ``preprocessor_config.json``) over
the zoo entry's; text is tokenised as the zoo entry says (CLIP's BPE, as open_clip does), padded
with 0 to the graph's fixed length (77): a fixed-length graph cannot cut a batch of short texts at
their longest one, as clipserve's own exports do.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import zipfile
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from clipserve.errors import UnsupportedModel, WeightsUnavailable
from clipserve.weights import EXPORT_FORMAT, staged_dir, write_export_meta
from clipserve.zoo import ModelSpec, with_preprocess

log = logging.getLogger(__name__)

IMMICH = "immich"
CLIP_AS_SERVICE = "clip-as-service"
FASTEMBED = "fastembed"
SOURCES = (IMMICH, CLIP_AS_SERVICE, FASTEMBED)
"""The publishers whose ONNX exports clipserve reads."""
IMMICH_ORG = "immich-app"
CLIP_AS_SERVICE_URL = (
    "https://clip-as-service.s3.us-east-2.amazonaws.com/models-436c69702d61732d53657276696365/onnx/"
)
"""Where clip-as-service keeps its ONNX files (``CLIPSERVE_CLIP_AS_SERVICE_URL`` names a mirror)."""
FASTEMBED_FILES = (
    "model.onnx*",
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
MASK = "attention mask from tokens"
"""The ``new`` of an input fed with the mask of the real tokens (see the module docstring)."""
TOKENS_AND_MASK = {"input_ids": ("tokens", TensorProto.INT64), "attention_mask": (MASK, TensorProto.INT64)}
"""How a transformers-style text graph is fed: ids from clipserve's tokens, the mask computed."""
IMMICH_FILES = (
    "config.json",
    "visual/model.onnx*",
    "visual/preprocess_cfg.json",
    "textual/model.onnx*",
    "textual/*.json",
    "textual/*.model",
    "*.json",
    "README.md",
)
"""What is fetched of an immich repo (``model.onnx*``: a graph over 2 GB has external data beside
it); never its ARM NN or RKNN builds."""
IMMICH_IMAGE_INPUTS = {"image": TensorProto.FLOAT}
IMMICH_TEXT_INPUTS = {"text": (TensorProto.INT32, TensorProto.INT64)}
LARGE_GRAPH = 1_800_000_000
"""Graphs larger than this (protobuf's limit is 2 GB) are saved with their weights beside them."""
DYNAMIC_TOLERANCE = 1e-5


@cache
def published_models() -> dict[str, dict]:
    """Publisher → {zoo name → what it publishes} (``published_models.json``)."""
    table = json.loads(resources.files("clipserve").joinpath("published_models.json").read_text())
    return {source: table[source] for source in SOURCES}


READ_FAMILIES = {IMMICH: ("open_clip", "mclip"), CLIP_AS_SERVICE: ("open_clip",), FASTEMBED: ("open_clip",)}
"""The families whose graphs clipserve reads, by publisher (clip-as-service's M-CLIP texts are not)."""


def sources_of(spec: ModelSpec) -> list[str]:
    """The publishers of ready ONNX graphs of ``spec``'s weights that clipserve reads."""
    return [
        source
        for source, models in published_models().items()
        if spec.family in READ_FAMILIES[source] and spec.name in models
    ]


def immich_model(repo_name: str) -> str | None:
    """The zoo model of an immich repo name (``ViT-B-32__laion2b-s34b-b79k``), if it is one."""
    return next((zoo for zoo, name in published_models()[IMMICH].items() if name == repo_name), None)


def immich_repo(spec: ModelSpec) -> str:
    """immich's hub repo of a zoo model (``ViT-B-32::openai`` → ``immich-app/ViT-B-32__openai``)."""
    name = published_models()[IMMICH].get(spec.name)
    if name is None:
        raise WeightsUnavailable(f"immich publishes no ONNX export of {spec.name}")
    return f"{IMMICH_ORG}/{name}"


def is_immich_dir(path: Path) -> bool:
    """True for a directory in immich's layout (``config.json`` and a ``visual/`` or ``textual/`` graph)."""
    return (
        path.is_dir()
        and (path / "config.json").is_file()
        and ((path / "visual" / "model.onnx").is_file() or (path / "textual" / "model.onnx").is_file())
    )


def immich_model_config(path: Path) -> tuple[dict, dict]:
    """``(model_cfg, preprocess_cfg)`` of an immich directory (open_clip's two configs)."""
    model_cfg = json.loads((path / "config.json").read_text())
    preprocess_file = path / "visual" / "preprocess_cfg.json"
    preprocess = json.loads(preprocess_file.read_text()) if preprocess_file.is_file() else {}
    return model_cfg, preprocess


def convert_immich(source: Path, out_dir: Path, spec: ModelSpec, origin: str) -> Path:
    """Write ``source`` (an immich directory of ``spec``'s model, its preprocessing already in
    ``spec``) as a clipserve fp32 export into ``out_dir``; ``origin`` (a repo or a path) is recorded."""
    tokenizer = source / "textual" if (source / "textual" / "tokenizer.json").is_file() else None
    repo = origin if origin.startswith(f"{IMMICH_ORG}/") else None
    return write_export(
        spec,
        out_dir,
        (source / "visual" / "model.onnx", {"image": ("pixels", TensorProto.FLOAT)}),
        (source / "textual" / "model.onnx", {"text": ("tokens", TensorProto.INT64)}),
        {"source": origin, "published_by": IMMICH, "published_repo": repo},
        tokenizer,
    )


Graph = tuple[Path, dict[str, tuple[str, int]]]
"""A publisher's graph and how its inputs are fed (:func:`adapt_graph`)."""


def write_export(
    spec: ModelSpec,
    out_dir: Path,
    image: Graph | None,
    text: Graph | None,
    origin: dict[str, str | None],
    tokenizer: Path | None = None,
) -> Path:
    """A clipserve fp32 export in ``out_dir`` of a publisher's ``image`` and ``text`` graphs (or
    one of them: M-CLIP's towers are two exports); ``origin`` says where they came from."""
    for graph, _ in [g for g in (image, text) if g is not None]:
        if not graph.is_file():
            raise UnsupportedModel(f"{graph} is missing")
    with staged_dir(out_dir) as staging:
        image_batch = adapt_graph(image[0], staging / "image.onnx", image[1]) if image else None
        text_batch = adapt_graph(text[0], staging / "text.onnx", text[1]) if text else None
        meta = {
            "model": spec.name,
            "spec": dataclasses.asdict(spec),
            "arch": spec.arch,
            "dim": spec.dim,
            # Not in the publishers' files: CLIP's trained temperature, clamped at 100 in training
            # (only /rank's softmax uses it; cosines and orderings do not).
            "logit_scale": 100.0,
            "text_dynamic_length": False,
            "export_format": EXPORT_FORMAT,
            "precision": "fp32",
            **origin,
            "batch": {"image": image_batch, "text": text_batch},
            "licence": spec.licence,
        }
        write_export_meta(staging, meta, tokenizer)
    log.info("%s: %s's graphs made into a clipserve export in %s", spec.name, origin["published_by"], out_dir)
    return out_dir


def adapt_graph(source: Path, target: Path, inputs: dict[str, tuple[str, int]]) -> int | None:
    """``source`` with its inputs fed as ``inputs`` says (``old: (new, dtype)``: renamed, cast from
    clipserve's ``dtype``, or with ``new`` :data:`MASK` computed from the tokens) and its first
    output named ``embeddings``, saved at ``target``. Returns ``None`` when the batch axis is
    dynamic (given so, or made so and checked), else the static batch size (1)."""
    model = onnx.load(str(source))
    graph = model.graph
    initialisers = {i.name for i in graph.initializer}
    given = {i.name: i for i in graph.input if i.name not in initialisers}
    if set(given) != set(inputs):
        raise UnsupportedModel(
            f"{source} takes {sorted(given)}; a published graph of this layout takes {sorted(inputs)}"
        )
    prefix: list[onnx.NodeProto] = []
    for old, (new, dtype) in sorted(inputs.items(), key=lambda item: item[1][0] == MASK):
        prefix += _fed_input(graph, given[old], new, dtype, source)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*prefix, *nodes])
    if not graph.output:
        raise UnsupportedModel(f"{source} has no output")
    first = graph.output[0]
    dims = first.type.tensor_type.shape.dim
    if first.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 2:
        raise UnsupportedModel(f"{source}: its first output is not float32 [batch, dim]")
    graph.node.append(helper.make_node("Identity", [first.name], ["embeddings"], name="clipserve_embeddings"))
    dim = dims[1].dim_value or None
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim]))
    inputs_now = [i for i in graph.input if i.name not in initialisers]
    static = [d.dim_value for i in inputs_now for d in i.type.tensor_type.shape.dim[:1]]
    del graph.value_info[:]  # shapes inferred for batch 1 would contradict a dynamic batch
    if not any(static):
        _save(model, target)
        return None
    batch = static[0]
    _set_batch(graph, initialisers, "batch")
    _save(model, target)
    if _batches_alike(target, batch):
        log.info("%s: its static batch of %d made dynamic (same vectors)", source, batch)
        return None
    log.info("%s: the batch axis stays static (%d); it runs item by item", source, batch)
    _set_batch(graph, initialisers, batch)
    _save(model, target)
    return batch


def _fed_input(
    graph: onnx.GraphProto, value: onnx.ValueInfoProto, new: str, dtype: int, source: Path
) -> list[onnx.NodeProto]:
    """Make graph input ``value`` fed by clipserve's input ``new`` of ``dtype`` (or, for :data:`MASK`,
    by the mask of the real tokens); returns the nodes to put first."""
    old, old_type = value.name, value.type.tensor_type.elem_type
    ids = (TensorProto.INT32, TensorProto.INT64)
    allowed = (TensorProto.FLOAT,) if dtype == TensorProto.FLOAT else ids
    if old_type not in allowed:
        raise UnsupportedModel(
            f"{source}: input {old!r} is {TensorProto.DataType.Name(old_type)}, not "
            f"{' or '.join(TensorProto.DataType.Name(t) for t in allowed)}"
        )
    shape = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    position = list(graph.input).index(value)
    graph.input.remove(value)
    if new == MASK:
        return _real_token_mask(graph, old, old_type)
    graph.input.insert(position, helper.make_tensor_value_info(new, dtype, shape))
    inner = new if old_type == dtype else f"clipserve_{old}"  # the Cast's output, when one is needed
    for node in graph.node:
        node.input[:] = [inner if name == old else name for name in node.input]
    if old_type == dtype:
        return []
    return [helper.make_node("Cast", [new], [inner], to=old_type, name=f"clipserve_cast_{new}")]


def _real_token_mask(graph: onnx.GraphProto, output: str, dtype: int) -> list[onnx.NodeProto]:
    """Nodes computing ``output`` (of ``dtype``): 1 at each position up to the end token of each row
    of ``tokens`` (the highest id, as CLIP's BPE pools), 0 after it: the padding."""
    graph.initializer.extend(
        [
            helper.make_tensor("clipserve_zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("clipserve_one", TensorProto.INT64, [], [1]),
            helper.make_tensor("clipserve_axis", TensorProto.INT64, [], [1]),
        ]
    )
    step = "clipserve_mask"
    return [
        helper.make_node("Shape", ["tokens"], [f"{step}_shape"]),
        helper.make_node("Gather", [f"{step}_shape", "clipserve_axis"], [f"{step}_length"], axis=0),
        helper.make_node(
            "Range", ["clipserve_zero", f"{step}_length", "clipserve_one"], [f"{step}_positions"]
        ),
        helper.make_node("ArgMax", ["tokens"], [f"{step}_end"], axis=1, keepdims=1),
        helper.make_node("Add", [f"{step}_end", "clipserve_one"], [f"{step}_limit"]),
        helper.make_node("Less", [f"{step}_positions", f"{step}_limit"], [f"{step}_bool"]),
        helper.make_node("Cast", [f"{step}_bool"], [output], to=dtype),
    ]


def _set_batch(graph: onnx.GraphProto, initialisers: set[str], batch: int | str) -> None:
    for value in [*(i for i in graph.input if i.name not in initialisers), *graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        if isinstance(batch, str):
            first.dim_param = batch
        else:
            first.dim_value = batch


def _save(model: onnx.ModelProto, target: Path) -> None:
    for stale in target.parent.glob(f"{target.name}*"):
        stale.unlink()
    if model.ByteSize() > LARGE_GRAPH:
        onnx.save_model(
            model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
            location=f"{target.name}.data",
        )  # fmt: skip
    else:
        onnx.save_model(model, str(target))


def _batches_alike(path: Path, batch: int) -> bool:
    """True when ``path`` runs a batch of two as two batches of ``batch`` (=1) runs, to within
    float rounding; False when it fails or differs (a reshape kept the static batch)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing batch of two is an answer here, not an error to log
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [2, *(d if isinstance(d, int) else 77 for d in value.shape[1:])]
        if value.type == "tensor(float)":
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            ids = rng.integers(1, 400, size=shape)
            ids[:, -1] = 407
            feeds[value.name] = ids.astype(np.int64)
    try:
        together = session.run(None, feeds)[0]
        apart = np.concatenate(
            [session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(2)]
        )
    except Exception as exc:  # ONNX Runtime raises its own types for shape mismatches
        log.info("%s: a batch of two fails (%s)", path, exc)
        return False
    return together.shape == apart.shape and bool(
        np.allclose(together, apart, atol=DYNAMIC_TOLERANCE, rtol=0)
    )


def fetch_immich(repo: str, cache: Path) -> Path:
    """The snapshot of immich's hub ``repo`` (only :data:`IMMICH_FILES`), verified."""
    return fetch_snapshot(repo, cache, IMMICH_FILES)


def fetch_snapshot(repo: str, cache: Path, patterns: tuple[str, ...] | None = None) -> Path:
    """The snapshot of hub ``repo`` (the files matching ``patterns``, else all), downloaded into
    the cache when allowed and verified: each large file's sha256 against the hub's (its etag),
    each small one against its git blob id.

    Raises:
        WeightsUnavailable: offline with nothing cached, not found, or a checksum mismatch (the bad
            file is removed).
    """
    from huggingface_hub import snapshot_download

    from clipserve.weights import hub_unreachable, hub_unreachable_note, offline

    if not offline() and (reason := hub_unreachable()):
        raise WeightsUnavailable(f"the hub repo {repo} could not be fetched. {hub_unreachable_note(reason)}")
    try:
        snapshot = Path(
            snapshot_download(
                repo,
                allow_patterns=list(patterns) if patterns else None,
                cache_dir=cache / "hub",
                local_files_only=offline(),
            )
        )
    except Exception as exc:  # the hub's errors have many types (offline, 404, auth)
        raise WeightsUnavailable(
            f"the hub repo {repo} could not be fetched: {type(exc).__name__}: {exc}"
        ) from exc
    verify_snapshot(snapshot)
    return snapshot


def verify_snapshot(snapshot: Path) -> None:
    """Check each file of a hub cache snapshot against the name of its blob: the sha256 of a large
    (LFS) file, or the git blob id of a small one. A mismatch removes the file and is refused."""
    for link in sorted(p for p in snapshot.rglob("*") if p.is_symlink() or p.is_file()):
        blob = link.resolve()
        name = blob.name
        if len(name) == 64:
            make = hashlib.sha256
        elif len(name) == 40:  # git's blob id: sha1 of a header and the content
            header = f"blob {blob.stat().st_size}\0".encode()
            make = functools.partial(hashlib.sha1, header)
        else:
            continue  # not a hub cache blob (a local copy): nothing recorded to check against
        with blob.open("rb") as file:
            digest = hashlib.file_digest(file, make)
        if digest.hexdigest() != name:
            blob.unlink(missing_ok=True)
            link.unlink(missing_ok=True)
            raise WeightsUnavailable(
                f"{link.relative_to(snapshot)} of {snapshot} does not match the hub's checksum ({name}): "
                "removed; download it again"
            )


HUB_LICENCES = {
    "MIT": "mit",
    "Apache-2.0": "apache-2.0",
    "CC-BY-NC-4.0": "cc-by-nc-4.0",
}
"""The hub's licence ids of the zoo's licences (others are ``other``, named in the card)."""


def hub_layout(directory: Path, spec: ModelSpec) -> Path:
    """Make an export ``directory`` a hub repo to publish: a ``README.md`` model card (the weights'
    licence, what it is, how clipserve loads it: ``hf-hub:ORG/REPO``), and no local path of this
    machine left in its ``clipserve.json``."""
    from clipserve.weights import ONNX_MARKER, read_export_meta

    meta = read_export_meta(directory)
    if Path(str(meta.get("source", ""))).is_absolute():
        meta["source"] = spec.name
        (directory / ONNX_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    licence_id = HUB_LICENCES.get(spec.licence, "other")
    header = ["---", f"license: {licence_id}"]
    if licence_id == "other":
        header.append(f"license_name: {json.dumps(spec.licence)}")
    header += ["library_name: clipserve", "tags:", "- clip", "- onnx", "- clipserve", "---", ""]
    card = "\n".join(
        [
            *header,
            f"# {spec.name}, exported by clipserve ({meta['precision']})",
            "",
            f"ONNX graphs of the open_clip model `{spec.name}` ({spec.dim}-d vectors) in clipserve's export "
            "layout: `image.onnx`, `text.onnx` and `clipserve.json` (what the runtime needs: the "
            "preprocessing, tokenizer and text length). They run on ONNX Runtime alone, without torch.",
            "",
            f"**Licence of the weights:** {spec.licence}. The export changes the weights' form, not "
            "their terms: use them as their licence allows.",
            "",
            "```python",
            "from clipserve import Encoder",
            "",
            'encoder = Encoder("hf-hub:ORG/REPO")  # this repo',
            "```",
            "",
            "or `clipserve serve --model hf-hub:ORG/REPO`.",
            "",
        ]
    )
    path = directory / "README.md"
    path.write_text(card)
    return path


__all__ = [
    "IMMICH",
    "SOURCES",
    "convert_immich",
    "fetch_immich",
    "fetch_snapshot",
    "hub_layout",
    "immich_model",
    "immich_model_config",
    "immich_repo",
    "is_immich_dir",
    "published_export",
    "published_fp32",
    "published_mclip",
    "sources_of",
]


def published_fp32(spec: ModelSpec, source: str, cache: Path) -> Path:
    """The fp32 export of zoo model ``spec`` made from ``source``'s published graphs: downloaded
    and verified, then made into an export in the cache, once."""
    from clipserve.weights import is_current_export, onnx_cache

    if source not in SOURCES:
        raise UnsupportedModel(f"unknown weight source {source!r}; published ones: {', '.join(SOURCES)}")
    if source not in sources_of(spec):
        have = ", ".join(sources_of(spec)) or "none"
        raise WeightsUnavailable(
            f"{source} publishes no ONNX export of {spec.name} (publishers that do: {have})"
        )
    if source == IMMICH:
        repo = immich_repo(spec)
        return published_export(fetch_immich(repo, cache), spec, cache, repo)
    target = onnx_cache(spec, cache, f"{spec.tag}@{source}", "fp32")
    if is_current_export(target):
        return target
    if source == CLIP_AS_SERVICE:
        files = fetch_clip_as_service(spec, cache)
        return write_export(
            spec,
            target,
            (files["visual"], {"pixel_values": ("pixels", TensorProto.FLOAT)}),
            (files["textual"], TOKENS_AND_MASK),
            {"source": clip_as_service_url(), "published_by": CLIP_AS_SERVICE, "published_repo": None},
        )
    repos = published_models()[FASTEMBED][spec.name]
    vision, text = (fetch_snapshot(repos[part], cache, FASTEMBED_FILES) for part in ("vision", "text"))
    processor = json.loads((vision / "preprocessor_config.json").read_text())
    return write_export(
        with_preprocess(spec, transformers_preprocess(processor)),
        target,
        (vision / "model.onnx", {"pixel_values": ("pixels", TensorProto.FLOAT)}),
        (text / "model.onnx", TOKENS_AND_MASK),
        {"source": f"{repos['vision']}, {repos['text']}", "published_by": FASTEMBED, "published_repo": None},
    )


def published_mclip(directory: Path, spec: ModelSpec, image_spec: ModelSpec, cache: Path, origin: str):
    """``(image export, text export)`` of an immich M-CLIP ``directory``: its CLIP
    image tower (of ``image_spec``, with the directory's preprocessing) and its mean-pooled text
    encoder (``input_ids`` and ``attention_mask``), each made once into the cache."""
    from clipserve.cache import content_fingerprint
    from clipserve.weights import is_current_export, onnx_cache

    graphs = [directory / "visual" / "model.onnx", directory / "textual" / "model.onnx"]
    missing = [str(g.relative_to(directory)) for g in graphs if not g.is_file()]
    if missing or not (directory / "textual" / "tokenizer.json").is_file():
        raise UnsupportedModel(
            f"{directory} lacks {', '.join(missing) or 'textual/tokenizer.json'} (immich's layout)"
        )
    key = hashlib.sha256("".join(content_fingerprint(g, cache) for g in graphs).encode()).hexdigest()[:16]
    repo = origin if origin.startswith(f"{IMMICH_ORG}/") else None
    made = {"source": origin, "published_by": IMMICH, "published_repo": repo}
    image_dir = onnx_cache(image_spec, cache, f"{IMMICH}-{key}", "fp32")
    if not is_current_export(image_dir):
        _, preprocess = immich_model_config(directory)
        image = (graphs[0], {"image": ("pixels", TensorProto.FLOAT)})
        write_export(with_preprocess(image_spec, preprocess), image_dir, image, None, made)
    text_dir = onnx_cache(spec, cache, f"{IMMICH}-{key}", "fp32")
    if not is_current_export(text_dir):
        ids = {name: (name, TensorProto.INT64) for name in ("input_ids", "attention_mask")}
        write_export(spec, text_dir, None, (graphs[1], ids), made, directory / "textual")
    return image_dir, text_dir


def transformers_preprocess(processor: dict) -> dict:
    """A transformers ``CLIPImageProcessor`` config as open_clip's preprocess config: resize of the
    shortest edge with PIL's ``resample`` (3: bicubic, 2: bilinear), centre crop, mean and std."""
    crop = processor.get("crop_size", {})
    side = crop.get("height", crop) if isinstance(crop, dict) else crop
    converted = {
        "resize_mode": "shortest",
        "interpolation": {2: "bilinear"}.get(processor.get("resample"), "bicubic"),
    }
    if side:
        converted["size"] = side
    if "image_mean" in processor:
        converted["mean"], converted["std"] = processor["image_mean"], processor["image_std"]
    return converted


def clip_as_service_url() -> str:
    return os.environ.get("CLIPSERVE_CLIP_AS_SERVICE_URL", CLIP_AS_SERVICE_URL)


def fetch_clip_as_service(spec: ModelSpec, cache: Path) -> dict[str, Path]:
    """clip-as-service's ``textual`` and ``visual`` graphs of ``spec``, downloaded from its storage
    URL (or the cache), each checked against its published md5; a zip (a graph with its external
    data) is unpacked beside it.

    Raises:
        WeightsUnavailable: offline with nothing cached, or a download failed or mismatched (nothing
            is left of it).
    """
    from clipserve.weights import download_url, offline

    entry = published_models()[CLIP_AS_SERVICE][spec.name]
    found = {}
    for part in ("textual", "visual"):
        name, md5 = entry[part]
        folder = cache / "published" / CLIP_AS_SERVICE / Path(name).parent
        graph = folder / f"{part}.onnx"
        if not graph.is_file():
            looked: list[str] = []
            if offline():
                raise WeightsUnavailable(
                    f"clip-as-service's {name} is not in {folder}, and downloads are off"
                )
            downloaded = download_url(clip_as_service_url() + name, folder, looked, md5=md5)
            if downloaded is None:
                raise WeightsUnavailable(
                    f"clip-as-service's {name} could not be fetched: {'; '.join(looked)}"
                )
            if downloaded.suffix == ".zip":
                _unpack(downloaded, folder, f"{part}.onnx")
        found[part] = graph
    return found


def _unpack(archive: Path, folder: Path, graph: str) -> None:
    """A zip of a graph and its external data, unpacked flat into ``folder`` (by base names only:
    no entry writes outside it)."""
    with zipfile.ZipFile(archive) as unzipped:
        members = [info for info in unzipped.infolist() if not info.is_dir()]
        if graph not in {Path(info.filename).name for info in members}:
            raise WeightsUnavailable(f"{archive} does not hold {graph} (clip-as-service's zips do)")
        for info in members:
            with unzipped.open(info) as member, (folder / Path(info.filename).name).open("wb") as out:
                shutil.copyfileobj(member, out)
    archive.unlink()


def published_export(directory: Path, spec: ModelSpec, cache: Path, origin: str) -> Path:
    """The clipserve export of an immich ``directory`` holding ``spec``'s model, in the cache (keyed
    by the graphs' content), made once; its preprocessing is the directory's own (over ``spec``'s)."""
    from clipserve.cache import content_fingerprint
    from clipserve.weights import is_current_export, onnx_cache

    files = [directory / "visual" / "model.onnx", directory / "textual" / "model.onnx"]
    missing = [str(f.relative_to(directory)) for f in files if not f.is_file()]
    if missing:
        raise UnsupportedModel(f"{directory} lacks {', '.join(missing)} (immich's layout)")
    key = hashlib.sha256("".join(content_fingerprint(f, cache) for f in files).encode()).hexdigest()[:16]
    target = onnx_cache(spec, cache, f"{IMMICH}-{key}", "fp32")
    if not is_current_export(target):
        _, preprocess = immich_model_config(directory)
        convert_immich(directory, target, with_preprocess(spec, preprocess), origin)
    return target
