"""Exact rewrites that change how fast a trained model runs, never what it computes.

The SR networks end with a sub-pixel upsampler and a convolution to the image: ``PixelShuffle(r)``,
(SRGAN: a per-channel PReLU), then a ``k x k`` convolution with one output channel per image channel,
run on the full output grid. That last convolution is the slowest layer of the small SR models on a
CPU: with a single output channel neither oneDNN nor OpenVINO can vectorise over output channels.
Profiled in OpenVINO (2 Zen 5 cores, BF16, 256x256 output), the 9x9 convolution to the image took
2.9 of 4.3 ms of ``srgan-mr-x4-edge`` and 5.5 of 9.7 ms of its teacher.

:func:`fold_subpixel_tail` moves that convolution in front of the shuffle: every output pixel of phase
``(a, b)`` (its position modulo r) is a convolution of the shuffle's *input* with a kernel of
``2 * ceil(p / r) + 1`` taps (p the original padding), so the layer becomes one convolution from the
``C * r^2`` pre-shuffle channels to ``r^2`` outputs per image channel on the coarse grid, followed by a
shuffle of those few channels. It is the same linear map, including the zero padding at the borders
(a pixel outside the fine grid is a pixel outside the coarse one), so outputs agree to float rounding.
A per-channel PReLU between the shuffle and the convolution moves in front of the shuffle too, each
slope repeated for the r^2 channels that become its channel.

Measured per shipped model (``benchmarks/subpixel_fold.py``, 2 Zen 5 cores, 256x256 output, each run in
its own process): the SRGAN models' 9x9 tail folded runs them 1.65-1.93x faster in torch FP32, torch
BF16 and OpenVINO BF16; the RDN models' 3x3 tail (which the fold makes 4x more MACs) changed nothing
beyond noise (0.94-1.10x). So only kernels of at least :data:`MIN_KERNEL` taps fold by default.

The trained model keeps its own structure (checkpoints, pruning, QAT and the INT8 settings of the
shipped cards name its layers); the fold is applied to a copy where a model is run: the torch
predictor (:class:`edgesr.pipeline.TorchPredictor`) and the float ONNX export
(:func:`edgesr.export.onnx.export_onnx`).
"""

from __future__ import annotations

import copy
import math
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

# Smallest kernel folded by default: a 3x3 tail became 4x the MACs and ran no faster (module doc).
MIN_KERNEL = 5


class ShuffledConv(nn.Module):
    """``conv(shuffle(activation(x)))`` computed as ``shuffle(conv'(activation'(x)))`` (see module doc).

    Shapes: ``[B, C * r^2, h, w] -> [B, O, h * r, w * r]``.
    """

    def __init__(self, conv: nn.Conv2d, scale: int, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.conv, self.scale = conv, scale
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(self.activation(x)), self.scale)


def foldable(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain stride-1 convolution with odd square kernel and 'same' zero padding."""
    if type(conv) is not nn.Conv2d:
        return False
    kernel = conv.kernel_size
    return (
        kernel[0] == kernel[1]
        and kernel[0] % 2 == 1
        and conv.padding == (kernel[0] // 2, kernel[0] // 2)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def conv_before_shuffle(conv: nn.Conv2d, scale: int) -> nn.Conv2d:
    """The convolution on the shuffle's input that equals ``conv`` applied after ``PixelShuffle(scale)``.

    Output channel ``o * r^2 + a * r + b`` holds the pixels of output channel ``o`` at phase ``(a, b)``,
    so ``PixelShuffle(r)`` of the result is ``conv(PixelShuffle(r)(x))``.

    Raises:
        ValueError: ``conv`` is not :func:`foldable`, or ``scale`` is below 2.
    """
    if not foldable(conv):
        raise ValueError(
            "conv_before_shuffle: only a stride-1, odd square, 'same' zero-padded, ungrouped Conv2d "
            f"folds; got {conv}"
        )
    if scale < 2:
        raise ValueError(f"conv_before_shuffle: scale must be at least 2; got {scale}")
    r, k = scale, conv.kernel_size[0]
    pad = k // 2
    reach = math.ceil(pad / r)  # coarse pixels each side: offsets -pad..pad fall in -reach..reach
    weight = conv.weight.detach()
    out_channels, in_channels = weight.shape[:2]
    folded = torch.zeros(
        out_channels * r * r,
        in_channels * r * r,
        2 * reach + 1,
        2 * reach + 1,
        dtype=weight.dtype,
        device=weight.device,
    )
    # Fine pixel (y*r + a) reads fine row y*r + a + dy - pad = (y + u)*r + i: coarse offset u, phase i.
    for a in range(r):
        for dy in range(k):
            u, i = divmod(a + dy - pad, r)
            for b in range(r):
                for dx in range(k):
                    v, j = divmod(b + dx - pad, r)
                    # PixelShuffle: fine channel c at phase (i, j) is coarse channel c * r^2 + i * r + j.
                    tap = (u + reach, v + reach)
                    folded[a * r + b :: r * r, i * r + j :: r * r, tap[0], tap[1]] += weight[:, :, dy, dx]
    result = nn.Conv2d(
        in_channels * r * r,
        out_channels * r * r,
        2 * reach + 1,
        padding=reach,
        bias=conv.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        result.weight.copy_(folded)
        if conv.bias is not None:
            result.bias.copy_(conv.bias.detach().repeat_interleave(r * r))  # type: ignore[union-attr]
    return result


def has_subpixel_tail(model: nn.Module, *, min_kernel: int = MIN_KERNEL) -> bool:
    """Whether :func:`fold_subpixel_tail` changes ``model`` (it has a tail of the form it folds)."""
    return _tail(model, min_kernel) is not None


def fold_subpixel_tail(model: nn.Module, *, min_kernel: int = MIN_KERNEL) -> nn.Module:
    """A copy of ``model`` whose convolution to the image runs before the last sub-pixel shuffle.

    Applies to a model with an ``upsample`` :class:`torch.nn.Sequential` ending in ``PixelShuffle``
    (optionally followed by a PReLU) and a ``to_image`` :func:`foldable` convolution of at least
    ``min_kernel`` taps a side (SRResNet's 9x9; RDN's 3x3 with ``min_kernel=3``). Any other model is
    returned as it is (not copied). The copy is in ``model``'s train/eval mode.
    """
    tail = _tail(model, min_kernel)
    if tail is None:
        return model
    last, scale, prelu, to_image = tail
    activation: nn.Module | None = None
    if prelu is not None:
        # Shuffled channel c comes from coarse channels c * r^2 .. c * r^2 + r^2 - 1: one slope each.
        slopes = prelu.weight.detach()
        if slopes.numel() > 1:
            slopes = slopes.repeat_interleave(scale * scale)
        activation = nn.PReLU(slopes.numel(), device=slopes.device, dtype=slopes.dtype)
        with torch.no_grad():
            activation.weight.copy_(slopes)
    folded = copy.deepcopy(model)
    folded.upsample = nn.Sequential(*list(cast(nn.Sequential, folded.upsample))[:last])
    folded.to_image = ShuffledConv(conv_before_shuffle(to_image, scale), scale, activation)
    return folded.train(model.training)


def _tail(model: nn.Module, min_kernel: int) -> tuple[int, int, nn.PReLU | None, nn.Conv2d] | None:
    """(index of the last shuffle in ``upsample``, its factor, the PReLU after it, ``to_image``), or None."""
    upsample, to_image = getattr(model, "upsample", None), getattr(model, "to_image", None)
    if not isinstance(upsample, nn.Sequential) or not isinstance(to_image, nn.Conv2d):
        return None
    if not foldable(to_image) or to_image.kernel_size[0] < min_kernel:
        return None
    stages = list(upsample)
    shuffles = [n for n, stage in enumerate(stages) if isinstance(stage, nn.PixelShuffle)]
    if not shuffles:
        return None
    last = shuffles[-1]
    after = stages[last + 1 :]
    if len(after) > 1 or (after and not isinstance(after[0], nn.PReLU)):
        return None
    prelu = after[0] if after and isinstance(after[0], nn.PReLU) else None
    return last, int(cast(nn.PixelShuffle, stages[last]).upscale_factor), prelu, to_image
