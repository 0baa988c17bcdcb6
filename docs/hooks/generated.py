"""MkDocs hook: the pages' generated parts, from the code, at build time (``make docs``).

- ``index.md`` is the README, its ``docs/`` links made relative to the site.
- ``<!-- generated: zoo -->`` becomes the table of every zoo model (``clipserve.zoo``).
- ``<!-- generated: api -->`` becomes the endpoint reference, from the server's OpenAPI schema
  (every compat API on; no model is loaded).
- ``<!-- generated: cli -->`` becomes the command reference: each command's ``--help``, from the
  parser itself.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ZOO_MARK = "<!-- generated: zoo -->"
API_MARK = "<!-- generated: api -->"
README_MARK = "<!-- generated: readme -->"
CLI_MARK = "<!-- generated: cli -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if README_MARK in markdown:
        readme = (REPO / "README.md").read_text()
        markdown = markdown.replace(README_MARK, re.sub(r"\]\(docs/", "](", readme))
    if ZOO_MARK in markdown:
        markdown = markdown.replace(ZOO_MARK, zoo_table())
    if API_MARK in markdown:
        markdown = markdown.replace(API_MARK, api_reference())
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    return markdown


def cli_reference() -> str:
    """Each command's ``--help`` (80 columns), under a heading of its own."""
    import os

    from clipserve.cli import build_parser, subcommands

    os.environ["COLUMNS"] = "80"  # argparse wraps at the terminal's width
    parser = build_parser()
    sections = [f"```text\n{parser.format_help().rstrip()}\n```"]
    for name, command in subcommands(parser).items():
        sections.append(f"### `clipserve {name}`\n\n```text\n{command.format_help().rstrip()}\n```")
    return "\n\n".join(sections)


def zoo_table() -> str:
    from clipserve.zoo import list_models

    rows = [
        "| name | family | dim | image | tokenizer | licence |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for spec in list_models():
        cells = [f"`{spec.display_name or spec.name}`", spec.family, spec.dim, spec.image_size[0]]
        rows.append("| " + " | ".join(map(str, [*cells, spec.tokenizer, spec.licence])) + " |")
    return "\n".join(rows)


def api_reference() -> str:
    from clipserve.server.app import create_app
    from clipserve.settings import COMPAT_APIS, ServerSettings

    schema = create_app(ServerSettings(compat=list(COMPAT_APIS)), load=False).openapi()
    groups: dict[str, list[str]] = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            tag = (operation.get("tags") or ["clipserve"])[0]
            summary = (operation.get("description") or operation.get("summary") or "").strip()
            first = " ".join(summary.split("\n\n")[0].split()).replace("|", "\\|")
            body = operation.get("requestBody", {}).get("content", {})
            kinds = ", ".join(f"`{kind}`" for kind in body) or "—"
            groups.setdefault(tag, []).append(f"| `{method.upper()} {path}` | {kinds} | {first} |")
    sections = []
    for tag, rows in groups.items():
        title = "clipserve and OpenAI" if tag == "clipserve" else f"`--compat {tag}`"
        sections.append(f"#### {title}\n\n| route | body | what |\n| --- | --- | --- |\n" + "\n".join(rows))
    return "\n\n".join(sections)
