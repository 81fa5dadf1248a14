"""Building blocks shared by several models."""

from __future__ import annotations

import torch
from torch import nn


def zero_init(conv: nn.Conv2d) -> nn.Conv2d:
    """Zeroes a residual branch's last conv, so the branch starts as 0 and the model as its skip path."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def conv3x3(in_channels: int, out_channels: int, *, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class SubPixelUpsampler(nn.Sequential):
    """ESPCN sub-pixel upsampling: x2 and x3 in one conv + PixelShuffle, x4 as two x2 stages.

    Each stage's conv has ``channels * r^2`` outputs, a multiple of r^2, which structured pruning must
    respect (PixelShuffle groups r^2 consecutive channels into one output channel).
    """

    def __init__(self, channels: int, scale: int, activation: type[nn.Module] | None = None) -> None:
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4; got {scale}")
        stages: list[nn.Module] = []
        for factor in (2, 2) if scale == 4 else (scale,):
            stages += [conv3x3(channels, channels * factor**2), nn.PixelShuffle(factor)]
            if activation is not None:
                stages.append(activation(channels) if activation is nn.PReLU else activation())
        super().__init__(*stages)


def check_sr_inputs(lr: torch.Tensor, base: torch.Tensor, scale: int, in_channels: int) -> None:
    """Shape checks shared by the SR networks (clear errors instead of a broadcast failure)."""
    if lr.dim() != 4 or lr.shape[1] != in_channels:
        raise ValueError(f"lr must be [B, {in_channels}, h, w]; got shape {tuple(lr.shape)}")
    expected = (lr.shape[0], in_channels, lr.shape[2] * scale, lr.shape[3] * scale)
    if tuple(base.shape) != expected:
        raise ValueError(
            f"base must be the x{scale} interpolation of lr, shape {expected}; got {tuple(base.shape)}"
        )
