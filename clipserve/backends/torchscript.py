"""The parameters of an OpenAI ``clip`` checkpoint that is a TorchScript archive (``ViT-B-32.pt`` as
``clip.load`` caches it), read as data: no code of the archive is ever compiled or run.

``torch.jit.load`` is never called. It compiles the archive's TorchScript and unpickles its
objects, and a class's ``__setstate__`` then runs; a check of the archive before it cannot be
trusted, because Python's zip reader and torch's disagree on names (Python cuts a name at a NUL
byte and keeps the last of a repeated name; torch looks names up exactly). Instead:

- the zip must be plain: every name ASCII, unique, without NUL, in the TorchScript layout;
- ``data.pkl`` is read by a restricted unpickler that knows only torch's tensor records, the
  containers TorchScript pickles, and inert stand-ins for the archive's ``__torch__`` classes
  (whose state is kept as a dict, nothing of them is called);
- each tensor is built from its ``data/N`` record, its size and strides checked against the
  record's length.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.errors import UnsupportedModel

ENTRY = re.compile(
    r"^[\w.-]+/(data\.pkl|constants\.pkl|traced_inputs\.pkl|version|\.data/version|byteorder|"
    r"\.data/serialization_id|(data|constants|traced_inputs)/\d+|code/__torch__(/[\w./-]+)?\.py(\.debug_pkl)?|"
    r"\.data/[\w.]+)$"
)
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}
MAX_PICKLE_BYTES = 64 * 1024 * 1024
"""``data.pkl`` holds the module tree, not the tensors (ViT-L-14's is under 100 KiB)."""
NON_PARAMETERS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
"""Tensors of OpenAI's archives that are not parameters of open_clip's model: three integer
buffers, and each text block's causal mask (an attribute, not a buffer)."""


class ScriptObject:
    """An inert stand-in for an object of the archive's ``__torch__`` classes: its pickled state,
    kept as given. Nothing of the archive's class is looked up or run."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class Record:
    """A tensor record (``data/N``) of the archive, or a tensor over one: an array that the pickle's
    BUILD opcode cannot touch."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a tensor given a state")


class _Unpickler(pickle.Unpickler):
    """``data.pkl``'s reader: the globals it resolves are those of :meth:`find_class`, no other."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, Record] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_floatlist", "build_boollist"):
            return list
        if module == "torch.jit._pickle" and name == "build_tensorlist":
            return list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _untagged
        raise UnsupportedModel(f"{self.path}: data.pkl refers to {module}.{name}; refusing to load it")

    def persistent_load(self, pid: Any) -> Record:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and pid[1] in STORAGE_DTYPES
            and isinstance(pid[2], str)
            and pid[2].isdigit()
            and isinstance(pid[4], int)
        ):
            raise UnsupportedModel(f"{self.path}: data.pkl holds a record it cannot read ({pid!r:.80})")
        _, kind, key, _, count = pid
        if key not in self.storages:
            self.storages[key] = Record(self._record(key, kind, count))
        return self.storages[key]

    def _record(self, key: str, kind: str, count: int) -> np.ndarray:
        name = f"{self.prefix}/data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise UnsupportedModel(f"{self.path}: data.pkl names a tensor record {name!r} it lacks") from None
        dtype = STORAGE_DTYPES[kind]
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if info.compress_type != zipfile.ZIP_STORED or count < 0 or info.file_size != count * itemsize:
            raise UnsupportedModel(f"{self.path}: tensor record {name} is not {count} stored items")
        raw = self.archive.read(info)
        if dtype == "bfloat16":  # numpy has no bfloat16: the upper half of a float32
            halves = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            return halves.view(np.float32)
        return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> Record:
        shaped = (
            isinstance(size, tuple | list) and isinstance(stride, tuple | list) and len(size) == len(stride)
        )
        if not isinstance(storage, Record) or not shaped or not _ints(offset, *size, *stride):
            raise UnsupportedModel(f"{self.path}: data.pkl holds a malformed tensor")
        if offset < 0 or any(s < 0 for s in (*size, *stride)):
            raise UnsupportedModel(f"{self.path}: data.pkl holds a tensor of negative size or stride")
        array = storage.array
        if 0 not in size:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            if last >= len(array):
                raise UnsupportedModel(f"{self.path}: a tensor reaches past its record's end")
        elif offset > len(array):
            raise UnsupportedModel(f"{self.path}: a tensor starts past its record's end")
        itemsize = array.itemsize
        view = np.lib.stride_tricks.as_strided(
            array[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False
        )
        return Record(np.array(view))  # a copy: the record may be shared, and the view is read-only


def _ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _untagged(value: Any, _type_tag: Any = None) -> Any:
    return value


def is_torchscript_archive(path: Path) -> bool:
    """True for a zip holding a TorchScript module (a ``constants.pkl`` or ``code/`` beside
    ``data.pkl``); False for anything else, an unreadable zip included (torch's ``weights_only``
    loader then refuses it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def check_archive(archive: zipfile.ZipFile, path: Path) -> str:
    """The archive's top folder, after refusing any name that two zip readers could read
    differently (NUL, non-ASCII, repeated) or that is outside the TorchScript layout."""
    seen: set[str] = set()
    prefixes: set[str] = set()
    for info in archive.infolist():
        raw = info.orig_filename
        if raw != info.filename or "\0" in raw or not raw.isascii() or not raw.isprintable():
            raise UnsupportedModel(f"{path} is not a plain TorchScript archive: it holds the name {raw!r}")
        if raw in seen:
            raise UnsupportedModel(f"{path} is not a plain TorchScript archive: it holds {raw!r} twice")
        seen.add(raw)
        if not ENTRY.match(raw):
            raise UnsupportedModel(f"{path} is not a plain TorchScript archive: it holds {raw!r}")
        prefixes.add(raw.split("/", 1)[0])
    if len(prefixes) != 1 or f"{next(iter(prefixes))}/data.pkl" not in seen:
        raise UnsupportedModel(f"{path} is not a plain TorchScript archive: no single data.pkl")
    return next(iter(prefixes))


def archive_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the archive's module tree by its dotted attribute name, as numpy arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = check_archive(archive, path)
            pickled = archive.getinfo(f"{prefix}/data.pkl")
            if pickled.compress_type != zipfile.ZIP_STORED or pickled.file_size > MAX_PICKLE_BYTES:
                raise UnsupportedModel(f"{path}: its data.pkl is compressed or over {MAX_PICKLE_BYTES} bytes")
            unpickler = _Unpickler(archive.read(pickled), archive, prefix, path)
            root = unpickler.load()
    except UnsupportedModel:
        raise
    except Exception as exc:  # a damaged zip or pickle: zipfile, pickle and struct raise many kinds
        raise UnsupportedModel(
            f"{path}: not a readable TorchScript archive ({type(exc).__name__}: {exc})"
        ) from exc
    found: dict[str, np.ndarray] = {}
    _collect(root, "", found, path, depth=0)
    return found


def _collect(node: Any, prefix: str, found: dict[str, np.ndarray], path: Path, depth: int) -> None:
    if depth > 64:
        raise UnsupportedModel(f"{path}: the module tree is nested over 64 deep")
    if not isinstance(node, ScriptObject) or not isinstance(getattr(node, "state", None), dict):
        raise UnsupportedModel(f"{path}: data.pkl does not hold a module")
    for name, value in node.state.items():
        if not isinstance(name, str):
            raise UnsupportedModel(f"{path}: a module attribute is not named by a string")
        if isinstance(value, Record):
            found[prefix + name] = value.array
        elif isinstance(value, ScriptObject):
            _collect(value, f"{prefix}{name}.", found, path, depth + 1)


def archive_state_dict(path: Path, expected: set[str]) -> dict:
    """The parameters and buffers of an OpenAI TorchScript archive as torch tensors, for a model
    whose state dict has the keys ``expected``; refused if one is missing or an unknown one is there."""
    import torch

    arrays = archive_arrays(path)
    extra = sorted(k for k in arrays if k not in expected and k.rsplit(".", 1)[-1] not in NON_PARAMETERS)
    missing = sorted(expected - arrays.keys())
    if extra or missing:
        raise UnsupportedModel(
            f"{path} does not hold this model's parameters "
            f"(missing: {', '.join(missing[:5]) or 'none'}; unknown: {', '.join(extra[:5]) or 'none'})"
        )
    return {key: torch.from_numpy(arrays[key]) for key in expected}
