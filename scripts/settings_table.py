"""Print the settings tables of docs/library.md from the settings declaration (``clipserve/settings.py``).

Usage: ``python scripts/settings_table.py`` (paste the output into the settings section of docs/library.md).
"""

from __future__ import annotations

import dataclasses

from clipserve.settings import ENV_PREFIX, EncodeSettings, EngineSettings, ServerSettings


def rows(kind: type[EngineSettings], skip: set[str]) -> list[str]:
    out = []
    for f in dataclasses.fields(kind):
        if f.name in skip:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        flag = f"`--{f.name.replace('_', '-')}`" if f.metadata["flag"] else "(no flag)"
        out.append(
            f"| `{f.name}` | {flag} | `{ENV_PREFIX}{f.name.upper()}` | {default} | {f.metadata['help']} |"
        )
    return out


def inherited() -> set[str]:
    """The engine and Ray settings the server takes as they are (``model`` it redefines: a list)."""
    shared = {f.name: f.metadata["help"] for f in dataclasses.fields(EncodeSettings)}
    return {f.name for f in dataclasses.fields(ServerSettings) if shared.get(f.name) == f.metadata["help"]}


def ray_only() -> set[str]:
    """What ``encode`` takes beside the engine: where it runs on Ray."""
    return {f.name for f in dataclasses.fields(EngineSettings)}


def main() -> None:
    header = ["| setting | flag | variable | default | meaning |", "| --- | --- | --- | --- | --- |"]
    print("Library, CLI and server:\n")
    print("\n".join(header + rows(EngineSettings, set())))
    print("\nRay, for `serve --ray` and `encode --ray` (`shard_size`: encode only):\n")
    print("\n".join(header + rows(EncodeSettings, ray_only())))
    print("\nServer only, or different in the server:\n")
    print("\n".join(header + rows(ServerSettings, inherited())))


if __name__ == "__main__":
    main()
