"""Jina forks each executor's process from the Flow's: everything an executor imports to run is
imported with ``clipserve.jina``, before any fork, and importing it starts no thread. A child that
imported ``ftfy`` itself hung for good in ``wcwidth`` while the parent waited in ``Pod.join``."""

import json
import subprocess
import sys

PROBE = """
import json, sys, threading
import clipserve.jina
wanted = ["ftfy", "wcwidth", "onnxruntime", "soundfile", "clipserve.families.openclip",
          "clipserve.families.mclip", "clipserve.families.audioclip", "clipserve.backends.onnx"]
print(json.dumps({"missing": [m for m in wanted if m not in sys.modules],
                  "threads": [t.name for t in threading.enumerate()]}))
"""


def test_importing_the_executors_imports_their_stack_and_starts_no_thread() -> None:
    run = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found == {"missing": [], "threads": ["MainThread"]}
