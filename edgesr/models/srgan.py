"""SRGAN (Ledig et al., CVPR 2017): the SRResNet generator and the VGG-style discriminator.

Generator (SRResNet): 9x9 conv + PReLU -> B residual blocks (conv-BN-PReLU-conv-BN + skip; BN can be
turned off, as EDSR showed it hurts SR) -> conv-BN + long skip -> sub-pixel upsampling with PReLU ->
9x9 conv to the image. As in :mod:`edgesr.models.rdn`, the output is a residual on top of ``base``, an
interpolation of the whole LR image on its own sampling grid.

Discriminator: eight 3x3 conv layers (64 to 512 channels, stride 2 every other layer) with LeakyReLU
0.2 and BN, then a dense head. The head here pools globally before the dense layers, so patches of any
size work. ``norm="none"`` drops BN, as WGAN-GP requires (its gradient penalty is per sample, which
batch statistics would break).
"""

from __future__ import annotations

import torch
from torch import nn

from edgesr.models._blocks import SubPixelUpsampler, check_sr_inputs, conv3x3, zero_init
from edgesr.models._registry import register_model


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels, bias=not batch_norm),
            nn.BatchNorm2d(channels) if batch_norm else nn.Identity(),
            nn.PReLU(channels),
            conv3x3(channels, channels, bias=not batch_norm),
            nn.BatchNorm2d(channels) if batch_norm else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """The SRGAN generator.

    Shapes: ``forward(lr [B, C, h, w], base [B, C, h*s, w*s]) -> [B, C, h*s, w*s]``.
    """

    task = "sr"

    def __init__(
        self,
        *,
        scale: int = 4,
        in_channels: int = 1,
        features: int = 64,
        blocks: int = 16,
        batch_norm: bool = True,
        upsampler: str = "zero-fill",
    ) -> None:
        super().__init__()
        self.scale, self.in_channels, self.upsampler = scale, in_channels, upsampler
        self.head = nn.Sequential(nn.Conv2d(in_channels, features, 9, padding=4), nn.PReLU(features))
        self.body = nn.Sequential(*(ResidualBlock(features, batch_norm) for _ in range(blocks)))
        self.body_tail = nn.Sequential(
            conv3x3(features, features, bias=not batch_norm),
            nn.BatchNorm2d(features) if batch_norm else nn.Identity(),
        )
        self.upsample = SubPixelUpsampler(features, scale, activation=nn.PReLU)
        self.to_image = nn.Conv2d(features, in_channels, 9, padding=4)
        zero_init(self.to_image)  # start as the interpolation baseline, learn the residual

    def forward(self, lr: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        check_sr_inputs(lr, base, self.scale, self.in_channels)
        head = self.head(lr)
        x = self.body_tail(self.body(head)) + head
        return base + self.to_image(self.upsample(x))


class Discriminator(nn.Module):
    """VGG-style discriminator: ``[B, C, H, W] -> [B, 1]`` logits (or critic values for WGAN)."""

    def __init__(self, *, in_channels: int = 1, features: int = 64, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none'; got {norm!r}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, features, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = features
        plan = [(features, 2), (features * 2, 1), (features * 2, 2), (features * 4, 1), (features * 4, 2)]
        plan += [(features * 8, 1), (features * 8, 2)]
        for out_channels, stride in plan:
            layers += [
                nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1, bias=norm == "none"),
                nn.BatchNorm2d(out_channels) if norm == "batch" else nn.Identity(),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, features * 16),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(features * 16, 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


@register_model("sr")
def srgan(
    *, scale: int = 4, in_channels: int = 1, batch_norm: bool = True, upsampler: str = "zero-fill"
) -> SRResNet:
    """The paper's generator: 16 residual blocks of 64 channels (1.5 M parameters)."""
    return SRResNet(
        scale=scale,
        in_channels=in_channels,
        features=64,
        blocks=16,
        batch_norm=batch_norm,
        upsampler=upsampler,
    )


@register_model("sr")
def srgan_small(
    *, scale: int = 4, in_channels: int = 1, batch_norm: bool = False, upsampler: str = "zero-fill"
) -> SRResNet:
    """CPU-trainable generator: 8 residual blocks of 32 channels, BN-free by default."""
    return SRResNet(
        scale=scale,
        in_channels=in_channels,
        features=32,
        blocks=8,
        batch_norm=batch_norm,
        upsampler=upsampler,
    )


@register_model("sr")
def srgan_tiny(
    *, scale: int = 4, in_channels: int = 1, batch_norm: bool = True, upsampler: str = "zero-fill"
) -> SRResNet:
    """For tests: 2 residual blocks of 8 channels."""
    return SRResNet(
        scale=scale, in_channels=in_channels, features=8, blocks=2, batch_norm=batch_norm, upsampler=upsampler
    )
