"""Walk docs/getting-started.md end to end, as a newcomer would, on a fresh torch-free install.

1. A new virtual environment (uv), and ``pip install 'clipserve[server]'`` from this checkout (the
   page's first line, with the checkout in place of the package index's release).
2. Every block of the page, in order, in a new home directory (``photos/cat.jpg``, ``cat.jpg``...):
   the first server, curl against it, the Python client and OpenAI's, the API-key server, the
   in-process Encoder and the ``clipserve encode`` command.
3. A table: each step, its time, and how it ended.

With internet, the model's weights are downloaded on first use as the page says. Offline (these
machines), pass ``--weights DIR`` (a clipserve export) to stand in for the download. OpenAI's
client is installed beside, as the page says for its example.

    python scripts/newcomer.py [--weights DIR] [--photos DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "getting-started.md"
RUNNER = runpy.run_path(str(REPO / "scripts" / "page_runner.py"))


def timed(command: list[str], **options) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, **options)
    return time.monotonic() - started, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="a clipserve export standing in for the model's download")
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    parser.add_argument("--keep", action="store_true", help="keep the venv and home directory")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="newcomer-"))
    venv, home = root / "venv", root / "home"
    home.mkdir()
    rows: list[tuple[str, float, str]] = []
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")  # torch-free: uv is right here
    seconds, done = timed([uv, "venv", "--python", sys.executable, str(venv)])
    rows.append(("uv venv (fresh)", seconds, "ok" if done.returncode == 0 else done.stderr[-300:]))
    python = str(venv / "bin" / "python")
    packages = [f"{REPO}[server]", "openai"]
    seconds, done = timed([uv, "pip", "install", "--python", python, *packages])
    installed = "ok" if done.returncode == 0 else done.stderr[-600:]
    rows.append(("pip install 'clipserve[server]' openai", seconds, installed))
    if done.returncode != 0:
        return report(rows, root, args.keep)
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file()) / 2**20
    torch_check = subprocess.run([python, "-c", "import torch"], capture_output=True, check=False)
    has_torch = torch_check.returncode == 0
    rows.append((f"the venv: {size:.0f} MiB, torch {'present' if has_torch else 'absent'}", 0.0, "ok"))

    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    RUNNER["lay_out_home"](home, photos[:4])
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    if args.weights:
        env |= {"CLIPSERVE_WEIGHTS": str(Path(args.weights).resolve()), "CLIPSERVE_OFFLINE": "1"}
    reader = RUNNER["Reader"](home, env, python)
    try:
        reader.read(PAGE)
    except AssertionError as failure:
        rows.append(("(stopped here)", 0.0, str(failure)[-800:]))
    for step in reader.steps:
        ended = "ok" if step.returncode == 0 else f"exit {step.returncode}: {step.output[-600:]}"
        rows.append((step.what.strip().splitlines()[0][:90], step.seconds, ended))
    skipped = [block.not_run for block in RUNNER["page_blocks"](PAGE) if block.not_run]
    rows.append((f"not run: {'; '.join(skipped)}", 0.0, "-"))
    return report(rows, root, args.keep)


def report(rows: list[tuple[str, float, str]], root: Path, keep: bool) -> int:
    print(f"| step ({PAGE.relative_to(REPO)}) | seconds | result |\n|---|---:|---|")
    for what, seconds, result in rows:
        print(f"| {what} | {seconds:.1f} | {result.replace(chr(10), ' ').replace('|', '/')} |")
    failed = [row for row in rows if row[2] not in ("ok", "-")]
    if keep:
        print(f"\nkept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
