"""The clipserve command line: list models, export them, encode files and texts, index and search
them, find duplicates, serve the HTTP API, and manage the cache.

The flags of ``encode`` and ``serve`` come from the settings declaration (:mod:`clipserve.settings`);
every one can also be a ``CLIPSERVE_<NAME>`` environment variable, and a flag wins over it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clipserve import settings as config
from clipserve.backends.base import PRECISION_DEVICES
from clipserve.errors import ClipserveError, WeightsUnavailable
from clipserve.files import check_writable, collect_files, write_vectors
from clipserve.preprocess.audio import is_audio_path
from clipserve.preprocess.image import is_image_path
from clipserve.settings import EncodeSettings, EngineSettings, ServerSettings
from clipserve.zoo import list_models

CHUNK_BATCHES = 8
FORMER_FLAGS = {
    "replicas": ("--actors",),
    "replica_cpus": ("--cpus-per-actor",),
    "replica_gpus": ("--gpus-per-actor",),
    "ray_address": ("--address",),
    "cache_max_gb": ("--max-gb",),
}
"""Spellings of earlier releases (``encode --ray``, ``cache prune``), still taken: the same settings."""


class SecretFlag(argparse.Action):
    """A secret setting given as a flag (``--api-key``): refused with where it goes instead, since
    ``ps`` shows every process's flags."""

    def __init__(self, option_strings, dest, variable: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs="?", **kwargs)
        self.variable = variable

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(
            f"{option_string} is not a flag: `ps` shows flags to every user of the machine. Set "
            f"{config.ENV_PREFIX}{self.variable}, or give {option_string}-file FILE (a file holding it), "
            f"or put it in the YAML config"
        )


def add_setting_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    kind: type[EngineSettings],
    only: Sequence[str] | None = None,
) -> None:
    """One flag per setting of ``kind`` (``--max-pixels``…); not given means ``None``."""
    for f in fields(kind):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        if not f.metadata["flag"]:
            parser.add_argument(
                flag,
                action=SecretFlag,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
                variable=f.name.upper(),
            )
            continue
        default = f.default_factory() if f.default is MISSING else f.default  # a list's is a factory
        described = {
            "help": f"{f.metadata['help']} (default: {default}; ${config.ENV_PREFIX}{f.name.upper()})"
        }
        value_type = config.value_type(kind, f.name)
        flags = (flag, *FORMER_FLAGS.get(f.name, ()))
        if value_type is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, **described)
        elif config.is_list(kind, f.name):
            parser.add_argument(*flags, type=value_type, action="append", default=None, **described)
        else:
            parser.add_argument(*flags, type=value_type, default=None, **described)


def given_settings(args: argparse.Namespace, kind: type[EngineSettings]) -> dict:
    """The setting flags present in ``args`` (``None`` for those not given)."""
    return {f.name: getattr(args, f.name) for f in fields(kind) if hasattr(args, f.name)}


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--api-key` must not silently mean `--api-key-file`.
    parser = argparse.ArgumentParser(
        prog="clipserve",
        description=" ".join(__doc__.split("\n\n")[0].split()),
        epilog="`clipserve COMMAND --help` shows each command's flags; every flag of a setting can also "
        "be a CLIPSERVE_<NAME> environment variable (a flag wins).",
        allow_abbrev=False,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what runs (INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", allow_abbrev=False, help="list the model zoo")
    models.add_argument("--family", help="only this family (open_clip, mclip, audioclip, ...)")
    models.add_argument("--search", metavar="TEXT", help="only models whose name holds TEXT (any case)")
    models.add_argument(
        "--torch-free", action="store_true", help="only models with published ONNX graphs (no torch needed)"
    )

    export = commands.add_parser(
        "export", allow_abbrev=False, help="export a checkpoint to ONNX (needs the torch extra)"
    )
    add_setting_flags(
        export, EngineSettings, only=("model", "weights", "tokenizer", "image_weights", "cache_dir", "source")
    )
    export.add_argument("--output", type=Path, help="directory to write (default: the cache)")
    export.add_argument(
        "--hub-layout",
        type=Path,
        help="directory to write as a hub repo (the export and a model card with the weights' licence), "
        "to upload and load elsewhere with --model hf-hub:ORG/REPO",
    )
    export.add_argument("--precision", default=None, choices=tuple(PRECISION_DEVICES["onnx"]))

    encode = commands.add_parser(
        "encode", allow_abbrev=False, help="embed image and audio files/folders, and texts"
    )
    encode.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="image (and, for AudioCLIP, audio) files or folders, searched recursively",
    )
    encode.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    encode.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        help="out.npy (+ out.ids.json) or out.parquet; with --ray, a directory of parquet parts",
    )
    add_setting_flags(encode, EngineSettings)
    add_setting_flags(
        encode.add_argument_group("Ray Data (paths may also be globs and .parquet tables)"),
        EncodeSettings,
        only=[f.name for f in fields(EncodeSettings) if f.name not in EngineSettings.__dataclass_fields__],
    )

    index = commands.add_parser(
        "index", allow_abbrev=False, help="build or update a search index of files, folders, globs and texts"
    )
    index.add_argument(
        "paths",
        nargs="*",
        help="image (and, for a model that hears, audio) files, folders, globs, or .parquet tables of id "
        "and text; the index then holds exactly these (deleted files leave it)",
    )
    index.add_argument("--index", type=Path, required=True, help="the index directory (made if new)")
    index.add_argument("--dtype", choices=("f32", "f16", "i8"), help="how vectors are stored (new index)")
    index.add_argument(
        "--from-vectors", type=Path, help="a `clipserve encode --ray` output directory: index its vectors"
    )
    index.add_argument(
        "--export",
        type=Path,
        help="then write ids, vectors and metadata to this parquet file (Qdrant, pgvector…)",
    )
    add_setting_flags(index, EngineSettings)

    search = commands.add_parser("search", allow_abbrev=False, help="query a search index")
    search.add_argument("index", type=Path, help="the index directory")
    search.add_argument("query", nargs="?", help="a text (or use --image, --audio, --like)")
    search.add_argument("--image", type=Path, help="query by an image file")
    search.add_argument("--audio", type=Path, help="query by an audio file")
    search.add_argument("--like", help="more like this item (its id)")
    search.add_argument("-k", type=int, default=10, help="how many results")
    search.add_argument(
        "--filter", action="append", default=[], metavar="FIELD=VALUE", help="modality=image, path_prefix=…"
    )
    search.add_argument("--dedup", type=float, help="drop results within this cosine of a better one")
    search.add_argument("--json", action="store_true", help="print JSON lines")
    add_setting_flags(search, EngineSettings, only=("backend", "device", "precision", "weights", "cache_dir"))

    dedup = commands.add_parser("dedup", allow_abbrev=False, help="list groups of near-duplicate images")
    dedup.add_argument("index", type=Path, help="the index directory")
    dedup.add_argument(
        "--threshold", type=float, default=0.95, help="cosine from which two items are duplicates"
    )
    dedup.add_argument("--modality", default="image", choices=("image", "audio", "text"))
    dedup.add_argument("--json", action="store_true", help="print JSON lines")

    serve = commands.add_parser(
        "serve", allow_abbrev=False, help="run the HTTP server (needs the server extra)"
    )
    serve.add_argument("--config", type=Path, help="YAML file of settings (variables and flags win over it)")
    add_setting_flags(serve, ServerSettings)

    cache = commands.add_parser(
        "cache", allow_abbrev=False, help="list or prune the download and export cache"
    )
    cache.add_argument("action", choices=("list", "prune"))
    add_setting_flags(cache, EngineSettings, only=("cache_dir", "cache_max_gb"))
    cache.add_argument("--older-than-days", type=float, help="prune: remove entries unused this long")
    cache.add_argument("--dry-run", action="store_true", help="prune: only say what would go")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    commands = {
        "models": cmd_models,
        "export": cmd_export,
        "encode": cmd_encode,
        "serve": cmd_serve,
        "cache": cmd_cache,
        "index": cmd_index,
        "search": cmd_search,
        "dedup": cmd_dedup,
    }
    try:
        return commands[args.command](args)
    except BrokenPipeError:  # the reader left (`clipserve models | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except (ClipserveError, ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


FICLONE = 0x40049409
"""Linux's ioctl that makes a file share another's blocks, copy-on-write (btrfs, XFS, ZFS 2.2+)."""


def clone_or_copy(source: str, destination: str) -> str:
    """Copy a cached file out of the cache as a copy-on-write clone where the file system has them
    (no second copy of hundreds of MB on disk), else byte for byte. Not a hard link: onnx refuses
    external data files with several links ("a potential hardlink attack"), so a linked export
    could not be quantised or loaded by onnx."""
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        try:
            import fcntl

            fcntl.ioctl(writer.fileno(), FICLONE, reader.fileno())
        except (ImportError, OSError):  # not Linux, another file system, or one without clones
            shutil.copyfileobj(reader, writer, 16 * 2**20)
    shutil.copystat(source, destination)
    return destination


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each command, by name, in the order ``--help`` lists them."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def cmd_models(args: argparse.Namespace) -> int:
    from clipserve.backends.published import sources_of
    from clipserve.families.transformers_config import ARCHITECTURES

    specs = [
        spec
        for spec in list_models()
        if (args.family is None or spec.family == args.family)
        and (args.search is None or args.search.lower() in spec.name.lower())
        and (not args.torch_free or sources_of(spec))
    ]
    columns = [
        ("name", lambda s: s.name),
        ("family", lambda s: s.family),
        ("dim", lambda s: str(s.dim)),
        ("image", lambda s: "x".join(dict.fromkeys(map(str, s.image_size)))),
        ("tokenizer", lambda s: s.tokenizer),
        ("torch-free", lambda s: ",".join(sources_of(s)) or "-"),
        ("licence", lambda s: s.licence),
    ]
    families = sorted({spec.family for spec in list_models()})
    if args.family is not None and args.family not in families:
        raise ValueError(f"--family is one of {', '.join(families)}, not {args.family!r}")
    hidden: list[str] = []
    if sys.stdout.isatty():  # a terminal: the columns that fit (a pipe gets them all)
        room = shutil.get_terminal_size().columns
        while _table_width(columns, specs) > room and (name := _droppable(columns)):
            columns = [c for c in columns if c[0] != name]
            hidden.append(name)
    cells = [[value(spec) for _, value in columns] for spec in specs]
    widths = [max(len(title), *(len(row[i]) for row in cells)) for i, (title, _) in enumerate(columns)]
    for row in [[title for title, _ in columns], *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    fitted = f"; hidden to fit the terminal: {', '.join(hidden)} (a wider window, or a pipe, shows them)"
    print(f"\n{len(specs)} models{fitted if hidden else ''}")
    print(
        "\nAlso any Hugging Face transformers model of these classes: "
        + ", ".join(ARCHITECTURES)
        + ". Give its directory (as save_pretrained writes it, with its processor and tokenizer) or "
        "its hub repo: --model /path/to/model-directory, or --model owner/repo; NAME=PATH names one "
        "in a server of several."
        "\n\ntorch-free: the publishers of ready ONNX graphs of the model that clipserve reads without "
        "torch (--source immich, clip-as-service or fastembed; the default, auto, reads the first of "
        "them when torch is not installed)."
    )
    print(
        "\nprecisions: "
        + "; ".join(
            f"{backend} " + ", ".join(f"{p} ({'/'.join(devices)})" for p, devices in table.items())
            for backend, table in PRECISION_DEVICES.items()
        )
    )
    return 0


MODEL_COLUMNS_TO_HIDE = ("tokenizer", "licence", "image", "torch-free")
"""Which columns of ``clipserve models`` give way first to a narrow terminal."""


def _droppable(columns: list) -> str | None:
    present = {name for name, _ in columns}
    return next((name for name in MODEL_COLUMNS_TO_HIDE if name in present), None)


def _table_width(columns: list, specs: list) -> int:
    return sum(max(len(title), *(len(value(s)) for s in specs)) + 2 for title, value in columns)


def one_shot(settings: EngineSettings) -> EngineSettings:
    """The settings of a command that loads a model for one run: no warm-up, which would only add
    a batch before it."""
    return config.replace(settings, warmup=False)


def cmd_export(args: argparse.Namespace) -> int:
    """Export (or find in the cache) the ONNX graphs of a model; with ``--output``, copy them there."""
    import shutil

    from clipserve.backends.factory import onnx_model_dir
    from clipserve.encoder import Encoder
    from clipserve.weights import cache_dir

    settings = config.resolve(EngineSettings, **given_settings(args, EngineSettings))
    precision = settings.precision
    loads_here = "cpu" in PRECISION_DEVICES["onnx"].get(precision, ("cpu",))
    here = settings if loads_here else config.replace(settings, precision="fp32")
    with Encoder(settings=config.replace(one_shot(here), backend="onnx")) as encoder:
        info, spec = encoder.info(), encoder.spec
    exports = {key: Path(str(info[key])) for key in ("weights", "text_weights") if key in info}
    if not loads_here:  # a GPU precision (fp16): derived from the fp32 export, not loaded here
        cache = cache_dir(settings.cache_dir)
        exports = {key: onnx_model_dir(spec, path, cache, precision) for key, path in exports.items()}
    if args.hub_layout is not None and len(exports) != 1:
        raise ValueError(f"{spec.name} is two exports (image, text): --hub-layout writes one; use --output")
    output = args.hub_layout or args.output
    for key, path in exports.items():
        if output is not None:  # two exports (M-CLIP: image, text) go into subdirectories
            target = output if len(exports) == 1 else output / ("text" if key == "text_weights" else "image")
            shutil.copytree(path, target, dirs_exist_ok=True, copy_function=clone_or_copy)
            path = target
        if args.hub_layout is not None:
            from clipserve.backends.published import hub_layout

            hub_layout(path, spec)
        print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = config.resolve(ServerSettings, args.config, **given_settings(args, ServerSettings))
    if settings.ray:
        from clipserve.ray.serve import run

        run(settings)
        return 0
    from clipserve.server.run import serve

    with _weights_advised(settings.index, "clipserve serve --index INDEX"):
        serve(settings, args.verbose)
    return 0


@contextlib.contextmanager
def _weights_advised(index: str | Path | None, command: str) -> Iterator[None]:
    """A model load that found no weights says which weights ``index`` was built with, and how to
    give them."""
    try:
        yield
    except WeightsUnavailable as exc:
        if index is None:
            raise
        from clipserve.index import Index

        with Index.open(index) as built:
            advice = built.weights_advice(command)
        if not advice:
            raise
        raise WeightsUnavailable(f"{exc}\n{advice}") from exc


def cmd_cache(args: argparse.Namespace) -> int:
    from clipserve.cache import entries, prune
    from clipserve.weights import cache_dir

    settings = config.resolve(EngineSettings, **given_settings(args, EngineSettings))
    root = cache_dir(settings.cache_dir)
    if args.action == "list":
        listed = entries(root)
        for entry in listed:
            print(f"{entry.size / 1e6:10.1f} MB  {_age(entry.last_used):>10}  {entry.kind:<10}  {entry.path}")
        print(f"{sum(e.size for e in listed) / 1e6:10.1f} MB in {len(listed)} entries under {root}")
        return 0
    max_bytes = int(settings.cache_max_gb * 1024**3) if settings.cache_max_gb is not None else None
    older = args.older_than_days * 86400 if args.older_than_days is not None else None
    removed = prune(root, max_bytes, older, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in removed:
        print(f"{verb} {entry.path} ({entry.size / 1e6:.1f} MB)")
    print(f"{verb} {len(removed)} entries, {sum(e.size for e in removed) / 1e6:.1f} MB")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """``clipserve index``: build or update an index; lists the inputs that could not be embedded."""
    from clipserve.encoder import Encoder
    from clipserve.index import Index, zoo_model_of
    from clipserve.index.collect import entries_from, media_filter, vectors_from_job
    from clipserve.index.store import DATABASE

    given = given_settings(args, EngineSettings)
    existing = (args.index / DATABASE).is_file()
    if existing and args.export is not None and not args.paths and args.from_vectors is None:
        with Index.open(args.index) as index:  # the stored vectors only: no model needed
            print(f"wrote {index.export(args.export)} items to {args.export}", file=sys.stderr)
        return 0
    if existing and not _model_named(given):
        with Index.open(args.index) as known:
            given["model"] = known.zoo_model()  # an index names a model; only a zoo one is loaded unasked
    if args.from_vectors is not None:
        model, entries, vectors = vectors_from_job(args.from_vectors)
        if not _model_named(given):
            given["model"] = zoo_model_of(model, f"the vectors in {args.from_vectors}")
    settings = one_shot(config.resolve(EngineSettings, **given))
    with Encoder(settings=settings) as encoder:
        index = (
            Index.open(args.index, encoder)
            if existing
            else Index.create(args.index, encoder, args.dtype or "f32")
        )
        if args.from_vectors is not None:
            index.check_model(model)
        elif args.paths:
            entries, vectors = entries_from(args.paths, media_filter("audio" in encoder.modalities)), {}
        elif args.export is None:
            raise ValueError("give the files, folders or tables to index (or --from-vectors, or --export)")
        if args.from_vectors is not None or args.paths:
            with tqdm(total=len(entries), unit="item", desc="indexing", disable=not entries) as bar:
                report = index.update(entries, vectors, progress=bar.update)
            _report_update(args.index, report)
        if args.export is not None:
            print(f"wrote {index.export(args.export)} items to {args.export}", file=sys.stderr)
        index.close()
    return 0


def _model_named(given: dict) -> bool:
    """True when the operator named the model: a flag, or the ``CLIPSERVE_MODEL`` variable."""
    return given.get("model") is not None or "model" in config.from_environment(EngineSettings)


def _report_update(directory: Path, report) -> None:
    print(
        f"{directory}: {report.added} added, {report.changed} changed, {report.removed} removed, "
        f"{report.unchanged} unchanged ({report.embedded} embedded, {report.reused} taken over from an "
        f"interrupted build); generation {report.generation}",
        file=sys.stderr,
    )
    if report.bad:
        print(f"skipped {len(report.bad)} bad inputs:", file=sys.stderr)
        for identifier, reason in report.bad:
            print(f"  {identifier}: {reason}", file=sys.stderr)


def cmd_search(args: argparse.Namespace) -> int:
    """``clipserve search``: the best items for a text, an image, an audio clip or an item."""
    import json

    from clipserve.encoder import Encoder
    from clipserve.index import Index

    given = given_settings(args, EngineSettings)
    if not _model_named(given):
        with Index.open(args.index) as known:
            given["model"] = known.zoo_model()
    settings = one_shot(config.resolve(EngineSettings, **given))
    filters = dict(item.split("=", 1) for item in args.filter)
    query = args.image or args.audio or args.query
    with _weights_advised(args.index, "clipserve search INDEX QUERY"), Encoder(settings=settings) as encoder:
        index = Index.open(args.index, encoder)
        modality = "text" if query is args.query and query is not None else None
        hits = index.search(
            query, k=args.k, like=args.like, filter=filters, dedup=args.dedup, modality=modality
        )
    for hit in hits:
        if args.json:
            print(
                json.dumps({"id": hit.id, "score": hit.score, "metadata": hit.metadata}, ensure_ascii=False)
            )
        else:
            print(f"{hit.score:.4f}  {hit.id}")
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    """``clipserve dedup``: groups of near-duplicates, one group per paragraph (or JSON line)."""
    import json

    from clipserve.index import Index

    with Index.open(args.index) as index:
        groups = index.near_duplicates(args.threshold, args.modality)
    for group in groups:
        if args.json:
            print(json.dumps([{"id": hit.id, "cosine": hit.score} for hit in group], ensure_ascii=False))
        else:
            print("\n".join(f"{hit.score:.4f}  {hit.id}" for hit in group) + "\n")
    print(f"{len(groups)} groups of near-duplicates (cosine ≥ {args.threshold:g})", file=sys.stderr)
    return 0


def _age(timestamp: float) -> str:
    import time

    days = (time.time() - timestamp) / 86400
    return f"{days:.1f} d ago" if days >= 1 else f"{days * 24:.1f} h ago"


def encode_on_ray(args: argparse.Namespace, settings: EncodeSettings) -> int:
    """``clipserve encode --ray``: the job of :func:`clipserve.ray.data.run_job`."""
    from clipserve.families import resolve_model
    from clipserve.ray.data import entries_from, run_job

    hears = resolve_model(settings.engine())[0].family == "audioclip"
    entries = entries_from(args.paths, args.text, lambda p: is_image_path(p) or (hears and is_audio_path(p)))
    report = run_job(entries, args.output, settings)
    resumed = f" ({report.skipped_shards} parts were already there)" if report.skipped_shards else ""
    print(
        f"wrote {report.vectors} vectors in {report.shards} parts to {report.output}{resumed}",
        file=sys.stderr,
    )
    if report.errors:
        print(f"skipped {len(report.errors)} bad inputs:", file=sys.stderr)
        for identifier, reason in report.errors:
            print(f"  {identifier}: {reason}", file=sys.stderr)
    return 0 if report.vectors else 1


def cmd_encode(args: argparse.Namespace) -> int:
    from clipserve.encoder import Encoder

    if not args.paths and not args.text:
        print("error: nothing to encode: give image or audio paths/folders, or --text", file=sys.stderr)
        return 2
    check_writable(args.output)  # before any file is encoded
    settings = config.resolve(EncodeSettings, **given_settings(args, EncodeSettings))
    if settings.ray:
        return encode_on_ray(args, settings)
    encoder = Encoder(settings=one_shot(settings.engine()))
    hears = "audio" in encoder.modalities  # folders give audio files only to a model that embeds audio
    files = collect_files(args.paths, lambda p: is_image_path(p) or (hears and is_audio_path(p)))
    vectors = [encoder.encode_text(args.text)] if args.text else []
    kept = [f"text:{t}" for t in args.text]
    skipped: list[tuple[Path, str]] = []
    chunk = settings.batch_size * CHUNK_BATCHES
    with encoder, tqdm(total=len(files), unit="file", desc="encoding", disable=not files) as bar:
        for start in range(0, len(files), chunk):
            part = files[start : start + chunk]
            result = encoder.encode_lenient(part)
            vectors.append(result.vectors)
            kept.extend(str(part[i]) for i in result.indices)
            skipped.extend((part[e.index], e.reason) for e in result.errors)
            bar.update(len(part))
    write_vectors(args.output, np.concatenate(vectors), kept)
    print(f"wrote {len(kept)} vectors of dim {encoder.dim} to {args.output}", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} bad files:", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
