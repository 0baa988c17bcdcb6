"""The ONNX backend imports and runs in a process where importing torch fails."""

import json
import subprocess
import sys
import textwrap

import numpy as np

from tests.conftest import REPO, cosines

NAME = "ViT-B-32::openai"

BLOCK_TORCH = """
import importlib.abc, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "open_clip", "transformers"}:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def _run(script: str) -> subprocess.CompletedProcess:
    code = BLOCK_TORCH + textwrap.dedent(script)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_onnx_backend_runs_with_torch_unimportable(tmp_path, photo_paths, encoder_for) -> None:
    reference = encoder_for(NAME, "onnx")
    onnx_dir = reference.info()["weights"]
    inputs = ["a photo of a cat", "", *map(str, photo_paths)]
    out = tmp_path / "vectors.npy"
    result = _run(
        f"""
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        from clipserve.encoder import Encoder
        encoder = Encoder({NAME!r}, backend="onnx", weights={onnx_dir!r})
        import numpy as np
        np.save({str(out)!r}, encoder.encode({json.dumps(inputs)}))
        assert not any(m.split(".")[0] in ("torch", "open_clip") for m in sys.modules), "torch got imported"
        print(encoder.info()["backend"])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "onnx"
    assert cosines(np.load(out), reference.encode(inputs)).min() > 0.99999


def test_checkpoint_without_torch_explains_the_export_needs_torch(tmp_path, random_model) -> None:
    checkpoint = random_model(NAME).checkpoint
    result = _run(
        f"""
        from clipserve.encoder import Encoder
        from clipserve.errors import WeightsUnavailable
        try:
            Encoder({NAME!r}, backend="onnx", weights={str(checkpoint)!r}, cache_dir={str(tmp_path)!r})
        except WeightsUnavailable as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "exporting needs torch" in result.stdout
    assert "clipserve[torch]" in result.stdout
