"""The first-hour pages run as written: README.md, getting-started, the library and search pages.

Each page's Python blocks and shell lines run in order, in a sandbox laid out the way the pages
assume (``photos/cat.jpg``, ``~/photos``, ``query.jpg``, a captions table), with the random
ViT-B-32 export standing in for the named model (``CLIPSERVE_WEIGHTS``) and nothing downloaded. A
``clipserve serve`` line starts that server, which the page's next blocks (curl, the client, the
OpenAI client) talk to. A block that cannot run offline here carries ``<!-- not run: why -->`` on
the line above it; every other block runs, and must exit 0.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

RUN_PAGES = ["README.md", "docs/getting-started.md", "docs/library.md", "docs/search.md"]
RUNNER = runpy.run_path(str(REPO / "scripts" / "page_runner.py"))
Reader, page_blocks = RUNNER["Reader"], RUNNER["page_blocks"]


def test_every_page_has_blocks_that_run() -> None:
    """The pages are not opted out wholesale: each runs at least one block."""
    for page in RUN_PAGES:
        assert [block for block in page_blocks(REPO / page) if block.not_run is None], page


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, photo_paths, vit_onnx_export) -> tuple[Path, dict[str, str]]:
    """A home directory laid out as the pages assume, and the environment that runs them."""
    home = tmp_path_factory.mktemp("reader")
    RUNNER["lay_out_home"](home, photo_paths)
    env = {
        **os.environ,
        "HOME": str(home),
        "CLIPSERVE_WEIGHTS": vit_onnx_export,
        "CLIPSERVE_CACHE_DIR": str(home / "cache"),
        "CLIPSERVE_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NO_PROXY": "*",
    }
    return home, env


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES)
def test_the_page_runs_as_written(page: str, sandbox) -> None:
    assert Reader(*sandbox).read(REPO / page)


@pytest.mark.slow
def test_a_failing_block_fails_the_reader(sandbox) -> None:
    """The runner is alive: a block that fails, in either language, fails the test."""
    reader = Reader(*sandbox)
    with pytest.raises(AssertionError, match="exited 1"):
        reader.run(RUNNER["Block"]("python", "raise SystemExit(1)", None))
    with pytest.raises(AssertionError, match="exited"):
        reader.run(RUNNER["Block"]("bash", "clipserve encode no-such-folder/ -o out.npy", None))
    assert [step.returncode != 0 for step in reader.steps] == [True, True]
