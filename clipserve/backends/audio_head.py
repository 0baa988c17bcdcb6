"""AudioCLIP's audio tower (ESResNeXt-FBSP), state-dict compatible with the released checkpoints.

A clip of 5 s at 44.1 kHz, given in the 16-bit range (samples × 32768, as the original takes them):

1. back to [-1, 1] with the original's affine map, ``(x + 32768) × 2 / 65535 − 1``;
2. 392 frames of 1,654 samples every 561, zero-padded at both ends of the clip as needed, each
   weighted by the stored Blackman-Harris window and zero-padded to 2,048;
3. a learned frequency-B-spline transform (``fbsp``: a ``[1025, 2048]`` complex matrix built from
   three learned vectors) → power in dB, the 1,023 lowest bins cut into 3 bands of 341 (the
   "colour" channels of the image that follows);
4. a ResNeXt-50 (32×4d) with attention gates after each stage and on the global pooling, and a
   linear layer to the 1,024-d joint space (not normalised).

The transform's matrix depends only on the learned vectors, so it is computed once when the
weights are loaded; the exported graph holds it as a constant. The clip length is fixed (220,500
samples), which keeps every shape static for the ONNX export.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

WINDOW_SAMPLES = 220_500
FRAME, HOP, N_FFT = 1654, 561, 2048
BINS = N_FFT // 2 + 1
BANDS = 3
EMBED_DIM = 1024


class FrequencyBSpline(nn.Module):
    """The learned transform's parameters (``m``, ``fb``, ``fc``) and the matrix they define."""

    def __init__(self) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(BINS))
        self.fb = nn.Parameter(torch.ones(BINS))
        self.fc = nn.Parameter(torch.arange(BINS, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(0))  # an unused, empty entry of the checkpoints

    def matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts, ``[1025, 2048]`` each, of the normalised transform."""
        eps = 1e-8
        t = math.pi * torch.linspace(-1.0, 1.0, N_FFT, dtype=self.fc.dtype).reshape(1, -1) + eps
        m, fb, fc = (p.reshape(-1, 1) for p in (self.m, self.fb, self.fc))
        kernel_re, kernel_im = torch.cos(fc * t), -torch.sin(fc * t)
        x = fb * t / (m + eps)
        window = torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)
        # A real window raised to a real power, as a complex number: magnitude |w|^m, phase m·arg(w).
        magnitude = (window**2) ** 0.5
        phase = torch.atan2(torch.zeros_like(window), window)
        scaled = (magnitude**2) ** (0.5 * m)
        window_re, window_im = scaled * torch.cos(m * phase), scaled * torch.sin(m * phase)
        scale, norm = fb.sqrt(), N_FFT**0.5
        real = scale * (window_re * kernel_re - window_im * kernel_im) / norm
        imag = scale * (window_re * kernel_im + window_im * kernel_re) / norm
        return real, imag


class Bottleneck(nn.Module):
    """A ResNeXt bottleneck (32 groups of 4 channels per 64 planes), stride on the 3×3 convolution."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        width = planes * 2
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=32, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class AttentionGate(nn.Module):
    """A sigmoid gate from the stage's input, max-pooled to the stage's output size."""

    def __init__(self, channels: int, out_channels: int, kernel: tuple[int, int], padding: tuple[int, int]):
        super().__init__()
        self.conv_depth = nn.Conv2d(channels, channels, kernel, padding=padding, groups=channels)
        self.conv_point = nn.Conv2d(channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(adaptive_max_pool(x, size)))))


def adaptive_max_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_max_pool2d`` with its window bounds (``floor(i·in/out)`` to ``ceil((i+1)·in/out)``)
    computed from the static shape, so it exports to ONNX as gathers and maxima."""
    for axis, out in ((2, size[0]), (3, size[1])):
        length = x.shape[axis]
        if length == out:
            continue
        pooled = []
        for i in range(out):
            start, end = (i * length) // out, -((-(i + 1) * length) // out)
            pooled.append(x.narrow(axis, start, end - start).amax(dim=axis, keepdim=True))
        x = torch.cat(pooled, dim=axis)
    return x


class AudioHead(nn.Module):
    """ESResNeXt-FBSP; its parameter names are the released checkpoints' ``audio.*`` ones."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.ones(FRAME))
        self.fbsp = FrequencyBSpline()
        self.conv1 = nn.Conv2d(BANDS, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(64, 64, 3, 1)
        self.layer2 = _stage(256, 128, 4, 2)
        self.layer3 = _stage(512, 256, 6, 2)
        self.layer4 = _stage(1024, 512, 3, 2)
        self.att1 = AttentionGate(64, 256, (3, 1), (1, 0))
        self.att2 = AttentionGate(256, 512, (1, 5), (0, 2))
        self.att3 = AttentionGate(512, 1024, (3, 1), (1, 0))
        self.att4 = AttentionGate(1024, 2048, (1, 5), (0, 2))
        self.att5 = AttentionGate(2048, 2048, (3, 5), (1, 2))
        self.fc = nn.Linear(2048, EMBED_DIM)
        frames = 1 + math.ceil((WINDOW_SAMPLES - FRAME) / HOP)
        starts = torch.arange(frames).unsqueeze(1) * HOP
        self.register_buffer("frame_index", starts + torch.arange(FRAME), persistent=False)
        self.pad = (frames - 1) * HOP + FRAME - WINDOW_SAMPLES
        self.register_buffer("transform_real", torch.empty(0), persistent=False)
        self.register_buffer("transform_imag", torch.empty(0), persistent=False)

    def freeze_transform(self) -> None:
        """Compute the transform's matrix from the loaded parameters (once, after loading)."""
        with torch.no_grad():
            self.transform_real, self.transform_imag = (part.contiguous() for part in self.fbsp.matrix())

    def decibels(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, 220500]`` samples in the 16-bit range → ``[B, 3, 341, 392]`` power in dB."""
        x = (audio.float() + 32768.0) * 2.0 / 65535.0 - 1.0  # the original's op order, in float32
        x = F.pad(x.to(self.window.dtype), (self.pad // 2, self.pad - self.pad // 2))
        frames = x[:, self.frame_index] * self.window
        padding = N_FFT - FRAME
        frames = F.pad(frames, (padding // 2, padding - padding // 2))
        frozen = self.transform_real.numel() > 0
        real, imag = (self.transform_real, self.transform_imag) if frozen else self.fbsp.matrix()
        power = F.linear(frames, real) ** 2 + F.linear(frames, imag) ** 2  # [B, frames, 1025]
        per_band = BINS // BANDS
        power = power[..., : per_band * BANDS].transpose(1, 2).reshape(x.shape[0], BANDS, per_band, -1)
        power = torch.where(power > 0.0, power, torch.full_like(power, 1e-18))
        return torch.log10(power) * 10.0

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(self.decibels(audio)))), 3, 2, 1)
        for layer, gate in zip(
            (self.layer1, self.layer2, self.layer3, self.layer4),
            (self.att1, self.att2, self.att3, self.att4),
            strict=True,
        ):
            gated = x
            x = layer(x)
            x = x * gate(gated, x.shape[-2:])
        pooled = F.adaptive_avg_pool2d(x, 1) * self.att5(x, (1, 1))
        return self.fc(torch.flatten(pooled, 1))


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        Bottleneck(inplanes, planes, stride), *(Bottleneck(planes * 4, planes, 1) for _ in range(blocks - 1))
    )
