"""The README stays true to the code: its settings tables are the declaration's."""

from __future__ import annotations

import dataclasses
import runpy

from clipserve.settings import EngineSettings, ServerSettings
from tests.conftest import REPO


def test_readme_lists_every_setting_as_declared() -> None:
    readme = (REPO / "README.md").read_text()
    table = runpy.run_path(str(REPO / "scripts" / "settings_table.py"))
    server_rows = table["rows"](ServerSettings, table["inherited"]())
    rows = table["rows"](EngineSettings, set()) + server_rows
    named = {row.split("`")[1] for row in rows}
    assert named == {f.name for f in dataclasses.fields(ServerSettings)}
    assert any(row.startswith("| `model` |") for row in server_rows)  # the server's model is a list
    missing = [row for row in rows if row not in readme]
    assert not missing, "README settings tables are stale; run scripts/settings_table.py:\n" + "\n".join(
        missing
    )


def test_readme_stands_alone() -> None:
    assert "../shared" not in (REPO / "README.md").read_text()
