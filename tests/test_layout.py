"""The shape the design promises: faces are thin adapters over one pipeline."""

from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGE = REPO / "clipserve"


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_server_imports_web_frameworks() -> None:
    for path in PACKAGE.rglob("*.py"):
        if "server" in path.relative_to(PACKAGE).parts:
            continue
        web = imported_modules(path) & {"fastapi", "starlette", "uvicorn"}
        assert not web, f"{path.relative_to(REPO)} imports {web}"


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
