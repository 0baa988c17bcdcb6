"""A random AudioCLIP checkpoint in the released key layout, the same for any implementation.

Each tensor depends only on the seed and its key's name and shape: a generator seeded with the first
8 bytes (little-endian) of ``sha256(f"{seed}:{key}")`` draws standard normals, scaled by the key's
role (batch-norm statistics spread by 0.1 so that confusing them shows, fan-in scaling for weights).
The reference vectors in ``fixtures/audioclip_reference.npz`` were computed by the original AudioCLIP
code (AndreyGuzhov/AudioCLIP, run outside this project) on the checkpoint this module writes for
seed 0; see ``fixtures/README.md``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

SCALES = ("logit_scale", "logit_scale_ai", "logit_scale_at")


def _normals(seed: int, key: str, shape: tuple[int, ...]) -> np.ndarray:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(shape)


def _is_norm(key: str) -> bool:
    parts = key.split(".")
    owner = parts[-2] if len(parts) >= 2 else ""
    return owner.startswith(("bn", "ln")) or (owner == "1" and parts[-3] == "downsample")


def value(seed: int, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float64 value of ``key`` (see the module docstring)."""
    from scipy.signal import get_window

    n = _normals(seed, key, shape)
    leaf = key.rsplit(".", 1)[-1]
    special = {
        "audio.window": lambda: get_window("blackmanharris", shape[0], fftbins=True),
        "audio.fbsp.m": lambda: 1.0 + 0.02 * n,
        "audio.fbsp.fb": lambda: 1.0 + 0.02 * n,
        "audio.fbsp.fc": lambda: np.arange(shape[0], dtype=np.float64) + 0.02 * n,
        "audio.fbsp.bias": lambda: np.zeros(shape),
        "token_embedding.weight": lambda: 0.02 * n,
        "positional_embedding": lambda: 0.01 * n,
        "text_projection": lambda: n / np.sqrt(shape[0]),
        "visual.attnpool.positional_embedding": lambda: n / np.sqrt(shape[1]),
    }
    if key in special:
        return special[key]()
    if key in SCALES:
        return np.log(100.0) + 0.02 * n
    if leaf == "running_mean":
        return 0.1 * n
    if leaf == "running_var":
        return 1.0 + 0.1 * np.abs(n)
    if leaf == "weight" and len(shape) == 1:
        return 1.0 + 0.1 * n
    if leaf in ("bias", "in_proj_bias") and len(shape) == 1:
        return 0.1 * n if _is_norm(key) else 0.02 * n
    return n / np.sqrt(int(np.prod(shape[1:])))


def released_layout() -> dict[str, tuple[tuple[int, ...], str]]:
    """Key → (shape, dtype) of a released checkpoint: CLIP RN50 (open_clip's names are the
    original's), the audio head, and the two extra temperatures."""
    import open_clip

    from clipserve.backends.audio_head import AudioHead

    layout = {
        key: (tuple(t.shape), str(t.dtype).removeprefix("torch."))
        for key, t in open_clip.create_model("RN50", force_quick_gelu=True).state_dict().items()
    }
    for key, t in AudioHead().state_dict().items():
        layout[f"audio.{key}"] = (tuple(t.shape), str(t.dtype).removeprefix("torch."))
    layout |= {name: ((), "float32") for name in SCALES[1:]}
    return layout


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """The seeded checkpoint at ``path`` (a plain state dict, as the released files are)."""
    import torch

    state = {}
    for key, (shape, dtype) in released_layout().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0, dtype=torch.int64)
            continue
        array = np.ascontiguousarray(value(seed, key, shape), dtype=np.float64)
        state[key] = torch.from_numpy(array).to(getattr(torch, dtype)).reshape(shape)
    torch.save(state, path)
    return path
