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
    "docarray-v2": (".venv-jina", ["tests/jina/test_executors.py"]),
    "docarray-v1": (
        ".venv-jina-docarray-v1",
        ["tests/jina/test_executors.py", "tests/jina/test_clip_client.py"],
    ),
}


@pytest.fixture(scope="module")
def exports(encoder_for, cache_root, tmp_path_factory) -> str:
    from clipserve.encoder import Encoder

    vit = encoder_for("ViT-B-32::openai", "onnx").info()["weights"]
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("audioclip") / "AudioCLIP-Full-Training.pt")
    with Encoder("AudioCLIP::full", weights=checkpoint, cache_dir=cache_root) as audioclip:
        return json.dumps({"vit": vit, "audioclip": audioclip.info()["weights"]})


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
