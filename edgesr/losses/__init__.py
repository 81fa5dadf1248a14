"""Training losses: pixel, SSIM, adversarial (standard and WGAN-GP); distillation arrives with compression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgesr.metrics import ssim

PIXEL_LOSSES = ("l1", "mse")
GAN_KINDS = ("standard", "wgan-gp")


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"pixel loss must be one of {PIXEL_LOSSES}; got {kind!r}")


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM`` with data_range 1 (images scaled by their volume maximum), the metric's convention."""
    return 1.0 - ssim(pred, target, 1.0).mean()


def generator_adversarial_loss(fake_scores: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's term: non-saturating BCE (SRGAN) or ``-D(fake)`` (WGAN)."""
    if kind == "standard":
        return F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))
    if kind == "wgan-gp":
        return -fake_scores.mean()
    raise ValueError(f"gan must be one of {GAN_KINDS}; got {kind!r}")


def discriminator_loss(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    kind: str,
    *,
    gp_weight: float = 10.0,
) -> torch.Tensor:
    """The discriminator's (critic's) loss on a real and a generated batch (``fake`` is detached here)."""
    fake = fake.detach()
    real_scores, fake_scores = discriminator(real), discriminator(fake)
    if kind == "standard":
        return F.binary_cross_entropy_with_logits(
            real_scores, torch.ones_like(real_scores)
        ) + F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores))
    if kind != "wgan-gp":
        raise ValueError(f"gan must be one of {GAN_KINDS}; got {kind!r}")
    # Gradient penalty (Gulrajani et al. 2017) on random interpolates between real and fake samples.
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grads,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    penalty = (grads.flatten(1).norm(dim=1) - 1).pow(2).mean()
    return fake_scores.mean() - real_scores.mean() + gp_weight * penalty
