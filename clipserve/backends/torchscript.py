"""The parameters of an OpenAI ``clip`` checkpoint that is a TorchScript archive (``ViT-B-32.pt`` as
``clip.load`` caches it), read without running the archive's code.

Reading a TorchScript archive needs ``torch.jit.load``: it compiles the archive's TorchScript
(a restricted language, not Python) and unpickles its objects, and during that unpickling a class's
``__setstate__`` would run. So the archive is checked first: a zip of the TorchScript layout only
(``data.pkl``, ``constants.pkl``, ``version``, ``code/__torch__…``, ``data/N`` tensor records), its
pickles referring to nothing but torch's tensor rebuilders and the archive's own ``__torch__``
classes, and its code defining no ``__setstate__``. Then only ``state_dict()`` is read; no method
of the archive is ever called.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path

from clipserve.errors import UnsupportedModel

ENTRY = re.compile(
    r"^[^/]+/(data\.pkl|constants\.pkl|traced_inputs\.pkl|version|byteorder|\.data/[\w.]+|"
    r"(data|constants|traced_inputs)/\d+|code/__torch__(/[\w./-]+)?\.py(\.debug_pkl)?)$"
)
ALLOWED_GLOBALS = re.compile(r"^(__torch__(\.[\w]+)*|torch\._utils|torch|collections|torch\.jit\._pickle) ")
OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")
"""Entries of OpenAI's archives that are not parameters (open_clip's model has no such buffers)."""


def is_torchscript_archive(path: Path) -> bool:
    """True for a zip holding a TorchScript module (a ``constants.pkl`` or ``code/`` beside ``data.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def check_archive(path: Path) -> None:
    """Refuse an archive that is not a plain TorchScript module (see the module docstring)."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not ENTRY.match(name):
                raise UnsupportedModel(f"{path} is not a plain TorchScript archive: it holds {name!r}")
            if name.endswith(("pkl",)):
                for reference in _globals(archive.read(name)):
                    if not ALLOWED_GLOBALS.match(reference):
                        raise UnsupportedModel(f"{path}: {name} refers to {reference!r}; refusing to load it")
            if name.endswith(".py") and b"__setstate__" in archive.read(name):
                raise UnsupportedModel(f"{path}: {name} defines __setstate__; refusing to load it")


def _globals(pickled: bytes) -> list[str]:
    """The ``module name`` pairs a pickle's GLOBAL and STACK_GLOBAL opcodes refer to."""
    found, strings = [], []
    for opcode, argument, _ in pickletools.genops(pickled):
        if opcode.name == "GLOBAL":
            found.append(str(argument))
        elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(argument))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]} {strings[-1]}")
    return found


def archive_state_dict(path: Path) -> dict:
    """The parameters and buffers of a checked TorchScript archive, on the CPU, without OpenAI's
    non-parameter entries."""
    import torch

    check_archive(path)
    module = torch.jit.load(str(path), map_location="cpu")
    state = {key: value.detach().clone() for key, value in module.state_dict().items()}
    del module
    for key in OPENAI_ONLY_KEYS:
        state.pop(key, None)
    return state
