"""The documentation stays true to the code: the settings tables are the declaration's, every
Python example compiles, and every ``clipserve`` command shown parses with today's flags."""

from __future__ import annotations

import dataclasses
import re
import runpy
import shlex

import pytest

from clipserve.cli import build_parser
from clipserve.settings import EncodeSettings, EngineSettings, ServerSettings
from tests.conftest import REPO

PAGES = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[tuple[str, str]]:
    """``(page, code)`` of every fenced block of ``language`` in the docs and the README."""
    return [
        (page.name, code)
        for page in PAGES
        for kind, code in FENCE.findall(page.read_text())
        if kind == language
    ]


def test_the_library_page_lists_every_setting_as_declared() -> None:
    page = (REPO / "docs" / "library.md").read_text()
    table = runpy.run_path(str(REPO / "scripts" / "settings_table.py"))
    server_rows = table["rows"](ServerSettings, table["inherited"]())
    ray_rows = table["rows"](EncodeSettings, table["ray_only"]())
    rows = table["rows"](EngineSettings, set()) + ray_rows + server_rows
    named = [row.split("`")[1] for row in rows]
    declared = {f.name for kind in (ServerSettings, EncodeSettings) for f in dataclasses.fields(kind)}
    assert set(named) == declared and len(named) - len(set(named)) == 1  # model: engine and server
    assert any(row.startswith("| `model` |") for row in server_rows)  # the server's model is a list
    missing = [row for row in rows if row not in page]
    assert not missing, (
        "docs/library.md settings tables are stale; run scripts/settings_table.py:\n" + "\n".join(missing)
    )


def test_the_readme_stands_alone_as_a_front_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert "../shared" not in readme
    assert len(readme.splitlines()) < 150
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / target).is_file(), target


@pytest.mark.parametrize(("page", "code"), blocks("python"), ids=lambda value: str(value)[:40])
def test_python_examples_compile(page: str, code: str) -> None:
    compile(code.replace("async with", "with").replace("await ", ""), page, "exec")


def clipserve_commands(code: str) -> list[list[str]]:
    """The ``clipserve ...`` command lines of a shell block, as argument lists (continuations
    joined, comments, variables set before the command and a trailing ``&`` dropped)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip().rstrip("&").strip()
        words = shlex.split(line, comments=True) if line else []
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            words = words[1:]
        if words[:1] == ["$"]:
            words = words[1:]
        if words[:1] == ["clipserve"] and "$(" not in line:
            commands.append(words[1:])
    return commands


COMMANDS = [
    (page, words)
    for language in ("bash", "console")
    for page, code in blocks(language)
    for words in clipserve_commands(code)
]


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(
    ("page", "words"), COMMANDS, ids=lambda value: " ".join(value) if isinstance(value, list) else value
)
def test_every_command_shown_parses(page: str, words: list[str]) -> None:
    build_parser().parse_args(words)


def test_the_docs_offer_no_refused_flag_and_no_refused_form() -> None:
    """The API key is never a flag (``ps`` shows flags): only ``--api-key-file`` or the variable; and
    several models never take one ``--weights``."""
    for page in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]:
        text = page.read_text()
        assert not re.search(r"--api-key(?!-file)(?!` is refused)", text), page.name
        assert "apply to one model only" not in text, page.name


def test_the_cli_reference_is_every_commands_help() -> None:
    """docs/cli.md was 13 lines about ``encode`` only: it is now generated from the parser."""
    import sys

    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    from generated import cli_reference

    from clipserve.cli import build_parser, subcommands

    reference = cli_reference()
    names = list(subcommands(build_parser()))
    assert names == ["models", "export", "encode", "index", "search", "dedup", "serve", "cache"]
    for name in names:
        assert f"### `clipserve {name}`" in reference and f"usage: clipserve {name}" in reference
    assert "--like" in reference and "--torch-free" in reference
    assert "``" not in reference.replace("```", ""), "reST markup in a help text"
    assert "<!-- generated: cli -->" in (REPO / "docs" / "cli.md").read_text()
