"""The Jina executors' tests (``tests/jina``), run for real in both Jina environments that
``make setup`` builds: docarray v2 (``.venv-jina``) and docarray v1 with clip-client
(``.venv-jina-docarray-v1``). Those environments have no torch: the models are exported to ONNX here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.audioclip_weights import write_checkpoint
from tests.conftest import REPO

ENVIRONMENTS = {
    "docarray-v2": (".venv-jina", ["tests/jina/test_fork_safety.py", "tests/jina/test_executors.py"]),
    "docarray-v1": (
        ".venv-jina-docarray-v1",
        ["tests/jina/test_fork_safety.py", "tests/jina/test_executors.py", "tests/jina/test_clip_client.py"],
    ),
}


@pytest.fixture(scope="module")
def exports(cache_root, tmp_path_factory, photo_paths, onnx_export) -> str:
    """The models the Jina tests run, as ONNX exports (those environments have no torch), and a
    transformers CLIPModel directory whose export is in ``cache_root``, with the vectors transformers'
    own modules (the torch backend) give for a photo and a text."""
    import numpy as np

    from clipserve.encoder import Encoder
    from tests import hf_models

    vit = onnx_export("ViT-B-32::openai")
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("audioclip") / "AudioCLIP-Full-Training.pt")
    with Encoder("AudioCLIP::full", weights=checkpoint, cache_dir=cache_root) as audioclip:
        audio = audioclip.info()["weights"]
    work = tmp_path_factory.mktemp("transformers")
    vision, text = hf_models.clip_split(work / "split")
    transformers_models = {
        "clip": hf_models.clip(work / "clip"),
        "siglip": hf_models.siglip(work / "siglip"),
        "siglip2": hf_models.siglip2(work / "siglip2"),
        "chinese_clip": hf_models.chinese_clip(work / "chinese-clip"),
        "clip_vision": vision,
        "clip_text": text,
    }
    listed = {}
    for name, directory in transformers_models.items():
        with Encoder(str(directory), cache_dir=cache_root):  # exported once into the shared cache
            pass
        with Encoder(str(directory), backend="torch", cache_dir=cache_root) as reference:
            inputs = [
                value
                for modality, value in (("image", photo_paths[0]), ("text", "a photo of a cat"))
                if modality in reference.modalities
            ]
            np.save(work / f"{name}.npy", reference.encode(inputs))
            listed[name] = {
                "directory": str(directory),
                "expected": str(work / f"{name}.npy"),
                "modalities": list(reference.modalities),
            }
    return json.dumps(
        {
            "vit": vit,
            "audioclip": audio,
            "transformers": listed,
            "photo": str(photo_paths[0]),
            "cache": str(cache_root),
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("generation", sorted(ENVIRONMENTS))
def test_jina_executors(generation, exports) -> None:
    venv, files = ENVIRONMENTS[generation]
    python = REPO / venv / "bin" / "python"
    assert python.is_file(), f"{venv} is missing: `make setup` builds the Jina environments"
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", *files],
        cwd=REPO,
        env={**os.environ, "CLIPSERVE_JINA_TESTS": exports, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    sys.stdout.write(result.stdout[-20_000:])
    assert result.returncode == 0, (
        f"the Jina tests failed in {venv}:\n{result.stdout[-8000:]}{result.stderr[-4000:]}"
    )
