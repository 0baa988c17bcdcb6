"""The shape the design promises: faces are thin adapters over one pipeline."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
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
    steps = ("plan", "prepare", "resolve", "finish_batch", "embed_finished", "tower", "settle_texts")
    for step in (f"pipeline.{name}" for name in steps):
        assert step in service, step
    encoder = (PACKAGE / "encoder.py").read_text()
    assert "Pipeline(" in encoder and "self.pipeline.encode(" in encoder


def test_one_sniffer() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "inputs.py":
            continue
        source = path.read_text()
        assert 'startswith("data:")' not in source, f"{path.relative_to(REPO)} sniffs inputs itself"


def test_the_architecture_pages_layout_names_every_module_in_its_layer() -> None:
    """docs/architecture.md's Layout table: every module (and each package ``__init__`` with code of
    its own) once, none that is gone, each in the layer the import contract puts it in."""
    page = (REPO / "docs" / "architecture.md").read_text()
    section = page.split("## Layout", 1)[1].split("\n## ", 1)[0]
    placed: dict[str, str] = {}  # module → the layer its row is in (a blank cell: the row above's)
    layer = ""
    for line in section.splitlines():
        if line.startswith("| ") and "`" in line:
            cells = line.split(" | ")
            layer = cells[0].strip("| ") or layer
            placed.update(dict.fromkeys(re.findall(r"`([\w/]+(?:\.py|/))`", cells[1]), layer))

    def has_code(path: Path) -> bool:
        return any(
            not isinstance(n, ast.Expr | ast.Import | ast.ImportFrom)
            for n in ast.parse(path.read_text()).body
        )

    modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" or has_code(path) or path.parent == PACKAGE
    }
    named = {name for name in placed if name.endswith(".py")}
    assert modules - named == set(), "modules missing from the Layout table"
    assert named - modules == set(), "the Layout table names modules that are gone"
    assert all((PACKAGE / name).is_dir() for name in placed if name.endswith("/"))

    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    for layer in contract["layers"]:
        members = [m.strip() for m in layer.split("|")]
        for name, where in placed.items():
            top = name.split("/")[0].removesuffix(".py")
            if top in members:
                assert where == ", ".join(members), f"{name} is in the layer {layer!r}, not {where!r}"
