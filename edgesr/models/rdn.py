"""RDN: Residual Dense Network for image super-resolution (Zhang et al., CVPR 2018).

Shallow features (two 3x3 convs) -> D residual dense blocks (C densely connected 3x3 conv + ReLU
layers of growth G, 1x1 local feature fusion, local residual) -> global feature fusion (1x1 over the
concatenated block outputs, then 3x3) plus the global residual from the first shallow features ->
sub-pixel upsampling -> 3x3 conv to the image.

One addition to the paper, for medical SR: the network predicts a residual on top of ``base``, an
interpolation of the *whole* LR image on the degradation's own sampling grid (k-space zero-fill for
MR, bicubic for CT), given as a second input. Computing it on the whole image (not per patch or tile)
avoids wrap-around ringing at patch edges, and keeps the network convolution-only for export.
"""

from __future__ import annotations

import torch
from torch import nn

from edgesr.models._blocks import SubPixelUpsampler, check_sr_inputs, conv3x3, zero_init
from edgesr.models._registry import register_model


class ResidualDenseBlock(nn.Module):
    """C conv layers, each seeing all previous outputs; 1x1 fusion back to G0 channels; local residual."""

    def __init__(self, channels: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(conv3x3(channels + i * growth, growth), nn.ReLU(inplace=True))
            for i in range(layers)
        )
        self.fusion = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return x + self.fusion(torch.cat(features, dim=1))


class RDN(nn.Module):
    """Residual Dense Network.

    Args:
        scale: upsampling factor (2, 3 or 4).
        in_channels: image channels (1 for MR/CT magnitude).
        features: G0, channels between blocks.
        blocks: D, number of residual dense blocks.
        layers: C, conv layers per block.
        growth: G, channels each layer adds.
        upsampler: which interpolation ``base`` is (recorded for pipelines): ``zero-fill`` or ``bicubic``.

    Shapes: ``forward(lr [B, C, h, w], base [B, C, h*s, w*s]) -> [B, C, h*s, w*s]``.
    """

    task = "sr"

    def __init__(
        self,
        *,
        scale: int = 2,
        in_channels: int = 1,
        features: int = 64,
        blocks: int = 16,
        layers: int = 8,
        growth: int = 64,
        upsampler: str = "zero-fill",
    ) -> None:
        super().__init__()
        self.scale, self.in_channels, self.upsampler = scale, in_channels, upsampler
        self.shallow1 = conv3x3(in_channels, features)
        self.shallow2 = conv3x3(features, features)
        self.blocks = nn.ModuleList(ResidualDenseBlock(features, growth, layers) for _ in range(blocks))
        self.global_fusion = nn.Sequential(
            nn.Conv2d(blocks * features, features, 1), conv3x3(features, features)
        )
        self.upsample = SubPixelUpsampler(features, scale)
        self.to_image = conv3x3(features, in_channels)
        zero_init(self.to_image)  # start as the interpolation baseline, learn the residual

    def forward(self, lr: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        check_sr_inputs(lr, base, self.scale, self.in_channels)
        f_minus1 = self.shallow1(lr)
        x = self.shallow2(f_minus1)
        block_outputs = []
        for block in self.blocks:
            x = block(x)
            block_outputs.append(x)
        x = self.global_fusion(torch.cat(block_outputs, dim=1)) + f_minus1
        return base + self.to_image(self.upsample(x))


@register_model("sr")
def rdn(*, scale: int = 2, in_channels: int = 1, upsampler: str = "zero-fill") -> RDN:
    """The paper's RDN: D=16 blocks, C=8 layers, G=64, G0=64 (22 M parameters; a GPU model)."""
    return RDN(
        scale=scale, in_channels=in_channels, features=64, blocks=16, layers=8, growth=64, upsampler=upsampler
    )


@register_model("sr")
def rdn_small(*, scale: int = 2, in_channels: int = 1, upsampler: str = "zero-fill") -> RDN:
    """CPU-trainable RDN: D=6, C=4, G=32, G0=32 (0.65 M parameters); channel counts multiples of 32."""
    return RDN(
        scale=scale, in_channels=in_channels, features=32, blocks=6, layers=4, growth=32, upsampler=upsampler
    )


@register_model("sr")
def rdn_medium(*, scale: int = 2, in_channels: int = 1, upsampler: str = "zero-fill") -> RDN:
    """Between the two: D=10, C=4, G=32, G0=32 (1.1 M parameters); about 1.6x rdn_small's CPU time."""
    return RDN(
        scale=scale, in_channels=in_channels, features=32, blocks=10, layers=4, growth=32, upsampler=upsampler
    )


@register_model("sr")
def rdn_tiny(*, scale: int = 2, in_channels: int = 1, upsampler: str = "zero-fill") -> RDN:
    """For tests and quick checks: D=2, C=2, G=8, G0=16."""
    return RDN(
        scale=scale, in_channels=in_channels, features=16, blocks=2, layers=2, growth=8, upsampler=upsampler
    )


@register_model("sr")
def rdn_lite(*, scale: int = 2, in_channels: int = 1, upsampler: str = "zero-fill") -> RDN:
    """A distillation student: D=3, C=3, G=32, G0=32 (0.24 M parameters). Of the shapes measured in
    OpenVINO INT8 on the 2-core CPU here, the fastest per parameter (12.3 ms per 256x256 output)."""
    return RDN(
        scale=scale, in_channels=in_channels, features=32, blocks=3, layers=3, growth=32, upsampler=upsampler
    )
