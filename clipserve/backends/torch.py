"""PyTorch backend: the open_clip model itself (reference numerics; CPU or CUDA; fp16 on CUDA)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.utils.serialization
from torch import nn

from clipserve.backends.base import check_precision
from clipserve.backends.torchscript import archive_state_dict, is_torchscript_archive
from clipserve.errors import DeviceUnavailable, UnsupportedModel
from clipserve.hf_configs import config_dir
from clipserve.resources import BF16_FLAGS, cpu_flags, cpu_model
from clipserve.weights import OPEN_CLIP_CONFIG
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)


def load_open_clip_model(spec: ModelSpec, checkpoint: Path) -> nn.Module:
    """Build ``spec``'s open_clip model and load ``checkpoint`` into it (``weights_only`` loading).

    ``checkpoint`` is a weights file of the zoo architecture (a state dict, or an OpenAI ``clip``
    TorchScript archive, read by :mod:`clipserve.backends.torchscript`), or a directory in the hub
    layout (its own ``open_clip_config.json``). A Hugging Face text tower is built from a local copy of
    its transformer config (:func:`clipserve.hf_configs.config_dir`), never downloaded.
    """
    archive = checkpoint.is_file() and is_torchscript_archive(checkpoint)
    if checkpoint.is_dir():
        name, pretrained = f"local-dir:{checkpoint}", None
        model_cfg = json.loads((checkpoint / OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    else:
        name, pretrained = spec.arch, None if archive else str(checkpoint)
        model_cfg = open_clip.get_model_config(spec.arch)
    overrides = {}
    text_cfg = model_cfg["text_cfg"]
    if text_cfg.get("hf_model_name"):
        local = config_dir(text_cfg["hf_model_name"])
        overrides["text_cfg"] = {**text_cfg, "hf_model_name": str(local), "hf_model_pretrained": False}
    with mapped_checkpoints():
        model = open_clip.create_model(
            name, pretrained=pretrained, force_quick_gelu=spec.quick_gelu, weights_only=True, **overrides
        )
    if archive:  # OpenAI's clip checkpoints: TorchScript, with open_clip's parameter names
        model.load_state_dict(archive_state_dict(checkpoint, set(model.state_dict())), strict=True)
    return model.eval()


@contextlib.contextmanager
def mapped_checkpoints() -> Iterator[None]:
    """``torch.load`` maps checkpoint files instead of reading them into memory, for the block: the
    state dict's tensors are file pages, copied once into the model, so a load never holds the
    model twice in anonymous memory."""
    load = torch.utils.serialization.config.load
    before, load.mmap = load.mmap, True
    try:
        yield
    finally:
        load.mmap = before


class ImageTower(nn.Module):
    """``pixels → image embedding`` (unnormalised), the graph exported to ONNX."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class TextTower(nn.Module):
    """``tokens → text embedding`` (unnormalised), for the zoo's ``text_trim`` of the tower.

    - ``argmax``/``eos`` (causal, pooled at the end token): the transformer runs only over the given
      ``L`` columns, and its last block only for the end token, the one position pooling keeps; its
      keys and values still come from every position, so the vector is the full-length one.
    - ``mask`` (a Hugging Face encoder that masks padding) and ``none``: open_clip's own
      ``encode_text`` on the tokens as given (padded to the batch's longest text, or to the context).
    """

    def __init__(self, model: nn.Module, trim: str, eos_id: int = 2) -> None:
        super().__init__()
        self.model = model
        self.trim = trim
        self.eos_id = eos_id
        self.tower = getattr(model, "text", model)  # CustomTextCLIP keeps the tower in ``.text``

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.trim not in ("argmax", "eos"):
            return self.model.encode_text(tokens)
        tower = self.tower
        length = tokens.shape[1]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
        *blocks, last = tower.transformer.resblocks
        causal = tower.attn_mask[:length, :length]
        for block in blocks:
            x = block(x, attn_mask=causal)
        rows = torch.arange(x.shape[0], device=x.device)
        if self.trim == "argmax":
            end = tokens.argmax(dim=-1)  # the end token has the highest id
        else:
            end = (tokens == self.eos_id).int().argmax(dim=-1)  # the first end token
        x = self._end_token_block(last, x, rows, end)
        x = tower.ln_final(x)
        projection = tower.text_projection
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    @staticmethod
    def _end_token_block(
        block: nn.Module, x: torch.Tensor, rows: torch.Tensor, end: torch.Tensor
    ) -> torch.Tensor:
        """``block`` (an open_clip ResidualAttentionBlock) evaluated at the end-token position only."""
        normed = block.ln_1(x)
        query = normed[rows, end].unsqueeze(1)
        after_end = torch.arange(x.shape[1], device=x.device).unsqueeze(0) > end.unsqueeze(1)
        mask = torch.zeros(after_end.shape, dtype=x.dtype, device=x.device).masked_fill(
            after_end, float("-inf")
        )
        mask = mask.unsqueeze(1).repeat_interleave(block.attn.num_heads, dim=0)
        attended = block.attn(query, normed, normed, need_weights=False, attn_mask=mask)[0]
        y = x[rows, end].unsqueeze(1) + block.ls_1(attended)
        y = y + block.ls_2(block.mlp(block.ln_2(y)))
        return y.squeeze(1)


def resolve_device(device: str) -> torch.device:
    """A torch device for ``cpu``/``cuda``/``cuda:N``; a missing GPU is an error, never a CPU fallback."""
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {device!r} requested but torch sees no CUDA GPU")
        return torch.device(device)
    raise DeviceUnavailable(f"the torch backend runs on 'cpu' or 'cuda[:N]', not {device!r}")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The torch dtype of ``precision`` (checked for ``device``); bf16 on a CPU that has bf16
    instructions only: elsewhere it would be emulated, slower than fp32."""
    check_precision(precision, "torch", device.type)
    if precision == "bf16" and device.type == "cpu" and not cpu_flags() & set(BF16_FLAGS):
        raise UnsupportedModel(
            f"precision 'bf16' needs a CPU with bf16 instructions ({' or '.join(BF16_FLAGS)}); "
            f"{cpu_model()} has neither, so bf16 would be emulated and slower than fp32: use int8 (the "
            "onnx backend) for speed, or fp32 for exact vectors"
        )
    return DTYPES[precision]


class TorchBackend:
    """Runs an open_clip model; see :class:`clipserve.backends.base.Backend`."""

    def __init__(
        self,
        spec: ModelSpec,
        checkpoint: Path,
        device: str = "cpu",
        precision: str = "fp32",
        model: nn.Module | None = None,
    ) -> None:
        """``model``: an open_clip model already loaded from ``checkpoint`` (AudioCLIP's CLIP part)."""
        self.device = resolve_device(device)
        self.tensor_device = self.device
        """where :meth:`encode_image_tensor` wants its pixels"""
        self.dtype = precision_dtype(precision, self.device)
        self.spec = spec
        self.precision = precision
        self.checkpoint = checkpoint
        if model is None:
            try:
                model = load_open_clip_model(spec, checkpoint)
            except RuntimeError as exc:
                raise UnsupportedModel(f"cannot load {checkpoint} as {spec.name}: {exc}") from exc
        self.model = model.to(self.device, self.dtype)
        self.logit_scale = model.logit_scale.exp().item()
        self.text_dynamic_length = spec.text_truncatable
        self.image_tower = ImageTower(self.model)
        self.text_tower = TextTower(self.model, spec.text_trim, spec.eos_id)
        log.info("torch backend: %s on %s (%s) from %s", spec.name, self.device, precision, checkpoint)

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.encode_image_tensor(torch.from_numpy(pixels))

    @torch.inference_mode()
    def encode_image_tensor(self, pixels: torch.Tensor) -> np.ndarray:
        """Normalised float pixels ``[n, 3, H, W]``, anywhere (already on the device: no copy) →
        float32 ``[n, dim]`` (not normalised)."""
        return self.image_tower(pixels.to(self.device, self.dtype)).float().cpu().numpy()

    @torch.inference_mode()
    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(tokens).to(self.device)
        return self.text_tower(x).float().cpu().numpy()

    def info(self) -> dict[str, object]:
        return {
            "backend": "torch",
            "device": str(self.device),
            "precision": self.precision,
            "weights": str(self.checkpoint),
            "torch_threads": torch.get_num_threads(),
        }
