"""Drop-in Jina executors (extra ``jina``): the Hub's CLIPImageEncoder, CLIPTextEncoder and
CLIPOnnxEncoder, clip-as-service's CLIPEncoder, and the AudioCLIP trio, on clipserve's pipeline.

The docarray generation installed picks the shell, as Jina itself does: docarray < 0.30 gives
executors on ``DocumentArray`` (:mod:`clipserve.jina.v1`), docarray ≥ 0.30 executors on
``DocList[ClipDoc]`` with clipserve's doc types (:mod:`clipserve.jina.v2`).
"""

import os

os.environ.setdefault("JINA_OPTOUT_TELEMETRY", "1")  # clipserve never phones home, nor lets Jina

from docarray import __version__ as _docarray_version

DOCARRAY_GENERATION = 1 if tuple(int(p) for p in _docarray_version.split(".")[:2]) < (0, 30) else 2

if DOCARRAY_GENERATION == 1:
    from clipserve.jina.v1 import (
        AudioCLIPEncoder,
        AudioCLIPImageEncoder,
        AudioCLIPTextEncoder,
        CLIPEncoder,
        CLIPImageEncoder,
        CLIPOnnxEncoder,
        CLIPTextEncoder,
    )
else:
    from clipserve.jina.v2 import (
        AudioCLIPEncoder,
        AudioCLIPImageEncoder,
        AudioCLIPTextEncoder,
        AudioDoc,
        ClipDoc,
        CLIPEncoder,
        CLIPImageEncoder,
        ClipLeaf,
        CLIPOnnxEncoder,
        CLIPTextEncoder,
        ImageDoc,
        TextDoc,
    )

__all__ = [
    "DOCARRAY_GENERATION",
    "AudioCLIPEncoder",
    "AudioCLIPImageEncoder",
    "AudioCLIPTextEncoder",
    "CLIPEncoder",
    "CLIPImageEncoder",
    "CLIPOnnxEncoder",
    "CLIPTextEncoder",
]
if DOCARRAY_GENERATION == 2:
    __all__ += ["AudioDoc", "ClipDoc", "ClipLeaf", "ImageDoc", "TextDoc"]
