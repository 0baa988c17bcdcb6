"""``clipserve`` command line: ``models``, ``export`` and ``encode``.

Every option can also come from a ``CLIPSERVE_<NAME>`` environment variable (e.g.
``CLIPSERVE_MODEL``, ``CLIPSERVE_BACKEND``); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clipserve.backends.base import PRECISION_DEVICES, PRECISIONS
from clipserve.errors import ClipserveError
from clipserve.preprocess.image import is_image_path
from clipserve.server.settings import HELP as SETTINGS_HELP
from clipserve.server.settings import ServerSettings, load_settings
from clipserve.zoo import DEFAULT_MODEL, list_models

CHUNK_BATCHES = 8
GRACEFUL_SHUTDOWN_S = 30


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"CLIPSERVE_{name.upper()}", default)


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=_env("model", DEFAULT_MODEL), help="zoo name ARCH::TAG")
    parser.add_argument("--weights", default=_env("weights", None), help="checkpoint file or ONNX export dir")
    parser.add_argument("--cache-dir", default=_env("cache", None), help="download/export cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipserve", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what runs (INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the model zoo")
    models.add_argument("--all", action="store_true", help="include models this release cannot run")

    export = commands.add_parser("export", help="export a checkpoint to ONNX (needs the torch extra)")
    _add_engine_options(export)
    export.add_argument("--output", type=Path, help="directory to write (default: the cache)")
    export.add_argument(
        "--precision", default=_env("precision", "fp32"), choices=tuple(PRECISION_DEVICES["onnx"])
    )

    encode = commands.add_parser("encode", help="embed image files/folders and texts")
    _add_engine_options(encode)
    encode.add_argument("paths", nargs="*", type=Path, help="image files or folders (searched recursively)")
    encode.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    encode.add_argument(
        "--output", "-o", type=Path, required=True, help="out.npy (+ out.ids.json) or out.parquet"
    )
    encode.add_argument("--backend", default=_env("backend", "onnx"), choices=("onnx", "torch"))
    encode.add_argument("--device", default=_env("device", "cpu"))
    encode.add_argument("--precision", default=_env("precision", "fp32"), choices=PRECISIONS)
    encode.add_argument("--batch-size", type=int, default=int(_env("batch_size", "32")))
    encode.add_argument("--num-workers", type=int, default=None)
    serve = commands.add_parser("serve", help="run the HTTP server (needs the server extra)")
    serve.add_argument(
        "--config", type=Path, help="YAML file of settings (flags and CLIPSERVE_* win over it)"
    )
    for setting in fields(ServerSettings):
        flag = "--" + setting.name.replace("_", "-")
        described = {"help": f"{SETTINGS_HELP[setting.name]} (default: {setting.default})"}
        if setting.type in ("bool", bool):
            serve.add_argument(flag, action="store_true", default=None, **described)
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(str(setting.type), str)
            serve.add_argument(flag, type=kind, default=None, **described)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        commands = {"models": cmd_models, "export": cmd_export, "encode": cmd_encode, "serve": cmd_serve}
        return commands[args.command](args)
    except ClipserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_models(args: argparse.Namespace) -> int:
    rows = [spec for spec in list_models() if args.all or spec.backends]
    width = max(len(spec.name) for spec in rows)
    print(f"{'name':<{width}}  {'dim':>5}  {'image':>7}  {'backends':<10}  licence")
    for spec in rows:
        size = (
            f"{spec.image_size[0]}"
            if spec.image_size[0] == spec.image_size[1]
            else "x".join(map(str, spec.image_size))
        )
        backends = ",".join(spec.backends) or "-"
        print(f"{spec.name:<{width}}  {spec.dim:>5}  {size:>7}  {backends:<10}  {spec.licence}")
    print(
        "\nprecisions: "
        + "; ".join(
            f"{backend} " + ", ".join(f"{p} ({'/'.join(devices)})" for p, devices in table.items())
            for backend, table in PRECISION_DEVICES.items()
        )
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from clipserve.backends.export import export_onnx
    from clipserve.backends.factory import onnx_model_dir
    from clipserve.backends.precision import derive_int8
    from clipserve.weights import cache_dir, explicit_weights, find_checkpoint
    from clipserve.zoo import get_spec

    spec = get_spec(args.model)
    cache = cache_dir(args.cache_dir)
    explicit = explicit_weights(spec, args.weights) if args.weights else None
    if args.output is None:
        print(onnx_model_dir(spec, explicit, cache, args.precision))
        return 0
    if args.precision == "fp32":
        print(export_onnx(spec, explicit or find_checkpoint(spec, cache), args.output))
    else:
        print(derive_int8(onnx_model_dir(spec, explicit, cache), args.output))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from clipserve.server.app import create_app

    flags = {f.name: getattr(args, f.name) for f in fields(ServerSettings)}
    settings = load_settings(args.config, **flags)
    app = create_app(settings)  # loads the model now: a bad model or weights fails before binding
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_level="info" if args.verbose else "warning",
    )
    return 0


def collect_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p)))
        else:
            found.append(path)
    return found


def cmd_encode(args: argparse.Namespace) -> int:
    from clipserve.encoder import Encoder

    images = collect_images(args.paths)
    if not images and not args.text:
        print("error: nothing to encode: give image paths/folders or --text", file=sys.stderr)
        return 2
    encoder = Encoder(
        args.model,
        backend=args.backend,
        device=args.device,
        weights=args.weights,
        precision=args.precision,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        cache_dir=args.cache_dir,
    )
    vectors = [encoder.encode_text(args.text)] if args.text else []
    kept = [f"text:{t}" for t in args.text]
    skipped: list[tuple[Path, str]] = []
    chunk = args.batch_size * CHUNK_BATCHES
    with encoder, tqdm(total=len(images), unit="image", desc="encoding", disable=not images) as bar:
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
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


def write_vectors(path: Path, vectors: np.ndarray, ids: list[str]) -> None:
    """``.parquet`` (columns id, vector) or ``.npy`` with the ids beside it in ``.ids.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ClipserveError("writing .parquet needs pyarrow: pip install 'clipserve[parquet]'") from exc

        vector_type = pa.list_(pa.float32(), vectors.shape[1])
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]
        )
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "vector": column.cast(vector_type)}), path)
    else:
        np.save(path, vectors)
        path.with_suffix(".ids.json").write_text(json.dumps(ids, ensure_ascii=False, indent=0) + "\n")


if __name__ == "__main__":
    sys.exit(main())
