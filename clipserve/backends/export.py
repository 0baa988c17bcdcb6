"""Export an open_clip checkpoint to clipserve's ONNX layout (needs the ``torch`` extra).

The layout is a directory with ``image.onnx`` and ``text.onnx`` (dynamic batch axis; the text graph
also has a dynamic sequence axis where the zoo marks the tower as truncatable) and ``clipserve.json``
with what the runtime needs (model name, dim, logit scale). The torch.export-based ("dynamo") ONNX
exporter is used: the legacy tracer freezes the attention reshapes to the traced sequence length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clipserve.backends.torch import ImageTower, TextTower, load_open_clip_model
from clipserve.weights import EXPORT_FORMAT, staged_dir, write_export_meta
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)

OPSET = 18
MAX_BATCH = 65536


def export_onnx(spec: ModelSpec, checkpoint: Path, out_dir: Path, tokenizer_dir: Path | None = None) -> Path:
    """Export ``checkpoint`` (weights of ``spec``) into ``out_dir``; returns ``out_dir``.

    A Hugging Face tokenizer (``tokenizer_dir``) is copied into the export, which then runs alone.
    """
    return export_model(spec, load_open_clip_model(spec, checkpoint), out_dir, checkpoint, tokenizer_dir)


def export_model(
    spec: ModelSpec,
    model: torch.nn.Module,
    out_dir: Path,
    source: Path,
    tokenizer_dir: Path | None = None,
    extra_towers: dict[str, tuple[torch.nn.Module, torch.Tensor, str, dict]] | None = None,
    extra_meta: dict | None = None,
) -> Path:
    """Export an open_clip ``model``'s image and text towers, and ``extra_towers`` (file name →
    module, example input, input name, dynamic axes), into ``out_dir``.

    The export is written beside ``out_dir`` first and renamed into place, so a crash or a
    concurrent export never leaves a half-written model where the runtime looks.
    """
    towers = ["image tower", "text tower", *(extra_towers or {})]
    with staged_dir(out_dir) as staging, exporting(spec.name, towers) as progress:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        height, width = spec.image_size
        pixels = torch.randn(2, 3, height, width)
        progress("image tower")
        export_graph(ImageTower(model), (pixels,), ["pixels"], {"pixels": {0: batch}}, staging / "image.onnx")
        dynamic_length = spec.text_truncatable
        text_axes = {0: batch}
        if dynamic_length:
            text_axes[1] = torch.export.Dim("length", min=2, max=spec.context_length)
        tower = TextTower(model, spec.text_trim, spec.eos_id)
        progress(f"text tower (dynamic length: {dynamic_length})")
        export_graph(tower, (example_tokens(spec),), ["tokens"], {"tokens": text_axes}, staging / "text.onnx")
        for name, (module, example, input_name, axes) in (extra_towers or {}).items():
            progress(name)
            export_graph(module, (example,), [input_name], {input_name: axes}, staging / name)
        meta = {
            "model": spec.name,
            "spec": dataclasses.asdict(spec),
            "arch": spec.arch,
            "dim": spec.dim,
            "logit_scale": model.logit_scale.exp().item(),
            "text_dynamic_length": dynamic_length,
            "export_format": EXPORT_FORMAT,
            "precision": "fp32",
            "source": str(source),
            "exporter": f"torch {torch.__version__}, opset {OPSET}",
            **(extra_meta or {}),
        }
        write_export_meta(staging, meta, tokenizer_dir)
    return out_dir


@contextlib.contextmanager
def exporting(model: str, towers: list[str]) -> Iterator[Callable[[str], None]]:
    """Progress of an export of ``model``'s ``towers``, with the exporters quiet: yields
    ``progress(tower)``, called as each tower starts (logged, and shown as a bar on a terminal)."""
    bar = tqdm(total=len(towers), desc=f"exporting {model} to ONNX", unit="tower", disable=None)
    started = []

    def progress(tower: str) -> None:
        if started:
            bar.update()
        started.append(tower)
        log.info("exporting %s %s to ONNX", model, tower)
        bar.set_postfix_str(tower)

    with bar, quiet_exporter():
        yield progress
        bar.update()


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporters' own chatter off (onnxscript's "Skipping constant folding" warnings, torch's
    notes on dynamic axes, transformers' weight-loading bar): the progress bar says what runs,
    and errors still raise."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "torch.onnx", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), transformers_bars_off():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def transformers_bars_off() -> Iterator[None]:
    """transformers' progress bars (its "Loading weights" bar) off for the block, where installed."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        yield
        return
    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            transformers_logging.enable_progress_bar()


def example_tokens(spec: ModelSpec) -> torch.Tensor:
    """Two rows of token ids to trace the text tower with: short ones ending in the token pooled
    by the tower (the highest id, or ``eos_id``) where the tower may run short, else full length.
    Only the shape and that end token matter to the exporter; small ids suit any vocabulary."""
    length = 4 if spec.text_truncatable else spec.context_length
    tokens = torch.full((2, length), 3, dtype=torch.int64)
    tokens[:, -1] = spec.eos_id if spec.text_trim == "eos" else 7
    return tokens


def export_graph(module: torch.nn.Module, example: tuple, names: list[str], axes: dict, path: Path) -> None:
    """Write ``module`` as the ONNX graph ``path``, traced on ``example`` (inputs ``names``, their
    dynamic ``axes``), its output named ``embeddings``: torch's dynamo exporter at :data:`OPSET`."""
    module.eval()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=True,
            opset_version=OPSET,
            input_names=names,
            output_names=["embeddings"],
            dynamic_shapes=axes,
            verbose=False,
        )
