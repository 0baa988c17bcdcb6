"""Print the requirements of clipserve with some extras, one a line, for an image's dependency layer.

The images install these before copying the source, so that a change to the code does not reinstall
(or re-download) the dependencies. ``--gpu`` swaps onnxruntime for onnxruntime-gpu with its CUDA and
cuDNN libraries from PyPI (the two packages share one module, so they must never both be installed).

    python3 requirements.py server            # the cpu image
    python3 requirements.py server torch      # the torch image
    python3 requirements.py --gpu server      # the cuda image
"""

import sys
import tomllib
from pathlib import Path

GPU_RUNTIME = "onnxruntime-gpu[cuda,cudnn]>=1.20"


def requirements(extras: list[str], gpu: bool) -> list[str]:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    if gpu:
        wanted = [GPU_RUNTIME if line.startswith("onnxruntime") else line for line in wanted]
    return wanted


if __name__ == "__main__":
    arguments = sys.argv[1:]
    gpu = "--gpu" in arguments
    print("\n".join(requirements([a for a in arguments if a != "--gpu"], gpu)))
