"""The shape the design promises: faces are thin adapters over one pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "clipserve"


def test_the_layer_contracts_hold() -> None:
    """pyproject's import-linter contracts (the layers, and the web frameworks in the server only)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "2 kept, 0 broken" in result.stdout


def test_the_server_runs_the_librarys_pipeline_steps() -> None:
    service = (PACKAGE / "server" / "service.py").read_text()
    for step in ("pipeline.prepare", "pipeline.resolve", "pipeline.run_batch", "pipeline.tower"):
        assert step in service, step
    encoder = (PACKAGE / "encoder.py").read_text()
    assert "Pipeline(" in encoder and "self.pipeline.encode(" in encoder


def test_one_sniffer() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "inputs.py":
            continue
        source = path.read_text()
        assert 'startswith("data:")' not in source, f"{path.relative_to(REPO)} sniffs inputs itself"
