"""Structural probes of a network: what a model's architecture implies, measured rather than derived.

``receptive_radius`` answers "how many LR pixels around a tile does an SR network look at?", which is
the halo that makes tiled inference exact. Deriving it by hand from each architecture (dense blocks,
9x9 heads, sub-pixel stages) is error-prone, so it is measured: on a copy of the network with every
weight made positive, no ReLU can cut a path, and the input pixels that receive gradient from one
output pixel are exactly the receptive field.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def _all_paths_open(model: nn.Module) -> nn.Module:
    """A float64 copy on the CPU whose activations stay positive and of order one, so every path carries
    gradient. On the CPU whatever device the model trains on: the probe's inputs are made there, and
    float64 convolutions are what the CPU does well (a model on CUDA failed here before)."""
    probe = copy.deepcopy(model).to("cpu", torch.float64).eval()
    with torch.random.fork_rng(devices=[]):  # a probe during training must not shift its random stream
        for module in probe.modules():
            for name, param in module.named_parameters(recurse=False):
                if name.endswith("weight") and param.dim() >= 2:
                    fan_in = param[0].numel()
                    param.copy_((0.5 + torch.rand_like(param)) / fan_in)
                else:
                    param.fill_(0.1)
    return probe


def receptive_radius(model: nn.Module, scale: int, *, in_channels: int = 1, limit: int = 1024) -> int:
    """LR pixels on each side of an LR pixel that an SR network's output over that pixel depends on.

    The probe is a tall, narrow strip (square kernels reach as far along rows as along columns), so
    even the paper-size RDN is measured in a second.

    Args:
        model: an SR network ``forward(lr [B, C, h, w], base [B, C, h*s, w*s])``.
        scale: its upsampling factor.
        limit: give up (``ValueError``) beyond this radius.
    """
    probe = _all_paths_open(model)
    radius = 16
    while radius <= limit:
        height, width = 2 * radius + 1, 3
        lr = torch.ones(1, in_channels, height, width, dtype=torch.float64, requires_grad=True)
        base = torch.zeros(1, in_channels, height * scale, width * scale, dtype=torch.float64)
        out = probe(lr, base)
        out[..., radius * scale : (radius + 1) * scale, :].sum().backward()
        assert lr.grad is not None  # noqa: S101 (backward() just filled it)
        rows = torch.nonzero(lr.grad[0].abs().sum(dim=(0, 2)) > 0).flatten()
        if rows.numel() and rows.min() > 0 and rows.max() < height - 1:
            return int(max(radius - rows.min(), rows.max() - radius))
        radius *= 2
    raise ValueError(f"the receptive radius exceeds {limit} LR pixels")
