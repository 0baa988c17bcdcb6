import json

import numpy as np
import pytest

from clipserve.cli import main
from tests.conftest import cosines
from tests.test_zoo import CLIP_ONNX_TABLE

NAME = "ViT-B-32::openai"


def test_models_lists_the_table(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    table, count, transformers, sources, precisions = out.split("\n\n")
    assert count == f"{len(table.splitlines()) - 1} models"
    assert table.splitlines()[0].split() == [
        "name",
        "family",
        "dim",
        "image",
        "tokenizer",
        "torch-free",
        "licence",
    ]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert "transformers model of these classes: CLIPModel" in transformers
    assert precisions.strip() == (
        "precisions: onnx fp32 (cpu/cuda/tensorrt), fp16 (cuda/tensorrt), int8 (cpu); "
        "torch fp32 (cpu/cuda), bf16 (cpu), fp16 (cuda)"
    )
    for arch, dim in CLIP_ONNX_TABLE.items():
        default = next(name for name in rows if name.startswith(f"{arch}::"))
        assert rows[default][2] == str(dim)
    assert rows[NAME][1:5] == ["open_clip", "512", "224", "clip"]
    assert rows["ViT-B-16-SigLIP::webli"][4] == "timm/ViT-B-16-SigLIP"
    assert rows["M-CLIP/LABSE-Vit-L-14"][1:5] == ["mclip", "768", "224", "M-CLIP/LABSE-Vit-L-14"]
    assert (
        rows[NAME][5] == "immich,clip-as-service,fastembed"
        and rows["RN50::cc12m"][5] == "immich,clip-as-service"
    )
    assert rows["ViT-bigG-14::laion2b_s39b_b160k"][5] == "-"
    assert sources.startswith("torch-free: the publishers of ready ONNX graphs")


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_encode_folder_and_texts(
    suffix, tmp_path, photos_dir, photo_paths, random_model, cache_root, capsys, new_encoder
):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / f"vectors{suffix}"
    args = ["encode", "--model", NAME, "--weights", str(random_model(NAME).checkpoint)]
    args += ["--cache-dir", str(cache_root), "--text", "a cat", "--text", str(photo_paths[0])]
    assert main([*args, str(photos_dir), str(tmp_path / "bad.jpg"), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 bad files" in err and "bad.jpg: not an image" in err
    if suffix == ".npy":
        vectors = np.load(out)
        ids = json.loads(out.with_suffix(".ids.json").read_text())
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        vectors, ids = np.stack(table["vector"].to_numpy(zero_copy_only=False)), table["id"].to_pylist()
    assert ids[:2] == ["text:a cat", f"text:{photo_paths[0]}"]  # a --text naming a file stays text
    assert sorted(ids[2:]) == sorted(str(p) for p in photo_paths)
    assert vectors.shape == (len(photo_paths) + 2, 512) and vectors.dtype == np.float32

    encoder = new_encoder(NAME, weights=random_model(NAME).checkpoint, cache_dir=cache_root)
    expected = np.concatenate(
        [encoder.encode_text(["a cat", str(photo_paths[0])]), encoder.encode_image(ids[2:])]
    )
    assert cosines(vectors, expected).min() > 0.99999


def test_encode_errors_are_messages_not_tracebacks(tmp_path, capsys) -> None:
    assert main(["encode", "--model", "ViT-Q-1::x", "--text", "a", "-o", str(tmp_path / "v.npy")]) == 2
    assert "error: unknown model 'ViT-Q-1::x'" in capsys.readouterr().err
    assert main(["encode", "-o", str(tmp_path / "v.npy")]) == 2
    assert "nothing to encode" in capsys.readouterr().err


@pytest.mark.slow
def test_export_command(tmp_path, random_model, capsys, caplog) -> None:
    """The export says which tower it is on (a bar, on a terminal), without the exporters' chatter
    ("Skipping constant folding ..."), and --output clones or copies the cached files: never hard
    links, which onnx refuses to read."""
    import logging

    import onnx

    out = tmp_path / "export"
    name = "RN50::openai"  # the quickest zoo model to export (~25 s against ViT-B-32's 40)
    checkpoint = str(random_model(name).checkpoint)
    args = ["export", "--model", name, "--weights", checkpoint, "--cache-dir", str(tmp_path / "cache")]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--output", str(out)]) == 0
    assert not [r for r in caplog.records if r.name.startswith(("onnxscript", "torch"))], caplog.text
    assert capsys.readouterr().out.strip() == str(out)
    meta = json.loads((out / "clipserve.json").read_text())
    assert meta["model"] == name and meta["dim"] == 1024 and meta["text_dynamic_length"] is True
    assert (out / "image.onnx").is_file() and (out / "text.onnx").is_file()
    (cached,) = (tmp_path / "cache").rglob("image.onnx.data")
    copied = out / "image.onnx.data"
    assert copied.stat().st_nlink == 1 and copied.read_bytes() == cached.read_bytes()
    onnx.load(out / "image.onnx")  # onnx refuses external data with several hard links


def test_a_reader_that_stops_early_gets_no_error(tmp_path) -> None:
    """``clipserve models | head`` ended with ``error: [Errno 32] Broken pipe``."""
    import subprocess
    import sys

    command = f"{sys.executable} -m clipserve.cli models | head -n 2"
    run = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert run.stdout.splitlines()[0].split()[:2] == ["name", "family"] and len(run.stdout.splitlines()) == 2
    assert run.stderr == "", run.stderr


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    """``encode -o x.parquet`` without pyarrow failed after encoding every file."""
    import sys

    import clipserve.encoder

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setattr(clipserve.encoder, "Encoder", lambda *a, **k: pytest.fail("encoding started"))
    assert main(["encode", "--text", "a cat", "-o", str(tmp_path / "x.parquet")]) == 2
    assert "needs pyarrow: pip install 'clipserve[parquet]', or write .npy" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_serve_says_once_it_is_up_where_and_what_it_serves(onnx_export) -> None:
    """``clipserve serve`` printed nothing once up."""
    import subprocess
    import sys

    from tests.server_helpers import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "clipserve.cli", "serve", "--model", "ViT-B-32::openai",
         "--weights", onnx_export("ViT-B-32::openai"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "serving" in line or len(lines) > 50:
                break
    finally:
        server.terminate()
        server.wait(30)
    url = f"http://127.0.0.1:{port}"
    where = f"playground {url}/, API docs {url}/docs"
    expected = f"clipserve: serving ViT-B-32::openai (onnx, fp32, cpu) at {url}; {where}"
    assert lines[-1].strip() == expected, lines


def test_models_filters_and_fits_the_terminal(capsys, monkeypatch) -> None:
    """``clipserve models`` printed 202 rows up to 376 characters wide, with no way to narrow them."""
    import os
    import shutil
    import sys

    assert main(["models", "--search", "vit-b-32", "--torch-free"]) == 0
    rows = capsys.readouterr().out.split("\n\n")[0].splitlines()[1:]
    published = ("immich", "clip-as-service", "fastembed")
    assert rows and all("vit-b-32" in row.split()[0].lower() for row in rows)
    assert all(any(p in row for p in published) for row in rows)
    assert main(["models", "--family", "mclip"]) == 0
    rows = capsys.readouterr().out.split("\n\n")[0].splitlines()[1:]
    assert rows and all(row.split()[1] == "mclip" for row in rows)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a: os.terminal_size((80, 24)))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()
    assert len(table) > 150 and max(map(len, table)) <= 80
    assert "hidden to fit the terminal: tokenizer" in out
    assert main(["models", "--family", "nope"]) == 2
    assert "--family is one of audioclip, mclip, open_clip" in capsys.readouterr().err
