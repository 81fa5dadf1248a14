"""PSNR, SSIM and NMSE under one pinned convention, batched in torch and differentiable.

The convention (DESIGN.md section 3, also in the README):

* metrics are computed on magnitude images, one value per batch item, averaged over channels;
* each volume is normalised by its reference's maximum (fastMRI), so ``data_range`` is the reference
  maximum: pass it per item (the *volume* maximum) or leave it out to use each image's own maximum;
* SSIM uses an 11x11 Gaussian window with sigma 1.5 (truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03,
  population covariances, and averages over the window positions that lie fully inside the image.
  This is exactly scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=...)``, which the tests compare against;
* for SR, ``scale`` pixels of border are cropped first (:func:`crop_border`);
* HFEN (high-frequency error norm, Ravishankar & Bresler 2011) filters both images with a 15x15
  Laplacian-of-Gaussian (sigma 1.5) and returns ``||LoG(pred) - LoG(ref)|| / ||LoG(ref)||`` over the
  positions where the filter lies inside the image: lower means edges and fine detail closer to the
  reference, which PSNR does not reward;
* the gradient energy ratio ``sum |grad pred|^2 / sum |grad ref|^2`` (forward differences) tells
  *which way* a method errs: below 1 it is smoother than the reference (pixel-loss SR), near 1 it is as
  sharp, above 1 it adds edges or noise. It is how a GAN's sharpness shows next to HFEN.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scipy's default: radius = int(3.5 * 1.5 + 0.5) = 5, an 11x11 window
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 4:
        raise ValueError(f"pred must be [B, C, H, W]; got shape {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )


def _data_range(target: torch.Tensor, data_range: float | torch.Tensor | None) -> torch.Tensor:
    """Per-item data range ``[B]``: the given value(s), or each reference's maximum."""
    if data_range is None:
        return target.flatten(1).amax(dim=1)
    return torch.as_tensor(data_range, dtype=target.dtype, device=target.device).expand(target.shape[0])


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    """Drops ``border`` pixels on each side of the last two axes (the SR evaluation convention)."""
    if border == 0:
        return x
    if min(x.shape[-2:]) <= 2 * border:
        raise ValueError(f"cannot crop {border} border pixels from an image of shape {tuple(x.shape)}")
    return x[..., border:-border, border:-border]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per item ``[B]``."""
    _check_pair(pred, target)
    return (pred - target).pow(2).flatten(1).mean(dim=1)


def psnr(
    pred: torch.Tensor, target: torch.Tensor, data_range: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per item ``[B]``: ``10 log10(data_range^2 / MSE)``.

    Args:
        pred, target: ``[B, C, H, W]`` magnitude images.
        data_range: the reference maximum, a scalar or one per item ``[B]``; default: each target's max.
    """
    error = mse(pred, target)
    peak = _data_range(target, data_range)
    return 10 * torch.log10(peak.pow(2) / error.clamp_min(torch.finfo(error.dtype).tiny))


def nmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised MSE per item ``[B]``: ``||pred - target||^2 / ||target||^2`` (fastMRI)."""
    _check_pair(pred, target)
    return (pred - target).pow(2).flatten(1).sum(dim=1) / target.pow(2).flatten(1).sum(dim=1).clamp_min(
        torch.finfo(target.dtype).tiny
    )


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    window = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return window / window.sum()


def ssim(
    pred: torch.Tensor, target: torch.Tensor, data_range: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Structural similarity per item ``[B]`` (see the module docstring for the exact convention).

    Args:
        pred, target: ``[B, C, H, W]`` magnitude images, H and W at least 11.
        data_range: the reference maximum, a scalar or one per item ``[B]``; default: each target's max.
    """
    _check_pair(pred, target)
    window = _gaussian_window(pred.dtype, pred.device)
    size = window.numel()
    if min(pred.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size}; got shape {tuple(pred.shape)}")
    batch, channels = pred.shape[:2]
    # A 'valid' separable convolution computes exactly the statistics skimage keeps after cropping its
    # (win_size - 1) // 2 border, so no padding convention is involved.
    row = window.view(1, 1, 1, size)
    col = window.view(1, 1, size, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(batch * channels, 1, *x.shape[-2:])
        return F.conv2d(F.conv2d(x, row), col)

    mu_x, mu_y = blur(pred), blur(target)
    var_x = blur(pred * pred) - mu_x * mu_x
    var_y = blur(target * target) - mu_y * mu_y
    cov_xy = blur(pred * target) - mu_x * mu_y
    peak = _data_range(target, data_range).repeat_interleave(channels).view(-1, 1, 1, 1)
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.view(batch, channels, -1).mean(dim=(1, 2))


HFEN_SIGMA = 1.5
HFEN_SIZE = 15


@functools.cache
def _log_kernel() -> np.ndarray:
    """scipy's Laplacian-of-Gaussian (sigma 1.5) as a 15x15 kernel: its response to a unit impulse."""
    from scipy.ndimage import gaussian_laplace

    impulse = np.zeros((HFEN_SIZE, HFEN_SIZE))
    impulse[HFEN_SIZE // 2, HFEN_SIZE // 2] = 1.0
    radius = HFEN_SIZE // 2
    return gaussian_laplace(impulse, HFEN_SIGMA, mode="constant", truncate=radius / HFEN_SIGMA)


def hfen(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """High-frequency error norm per item ``[B]`` (see the module docstring); images at least 15x15."""
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < HFEN_SIZE:
        raise ValueError(
            f"HFEN needs images of at least {HFEN_SIZE}x{HFEN_SIZE}; got shape {tuple(pred.shape)}"
        )
    kernel = torch.as_tensor(_log_kernel(), dtype=pred.dtype, device=pred.device).flip(0, 1)[None, None]
    batch = pred.shape[0]
    filtered_pred = F.conv2d(pred.reshape(-1, 1, *pred.shape[-2:]), kernel).reshape(batch, -1)
    filtered_ref = F.conv2d(target.reshape(-1, 1, *target.shape[-2:]), kernel).reshape(batch, -1)
    return (filtered_pred - filtered_ref).norm(dim=1) / filtered_ref.norm(dim=1).clamp_min(
        torch.finfo(pred.dtype).tiny
    )


def gradient_energy_ratio(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum |grad pred|^2 / sum |grad target|^2`` per item ``[B]`` (1 = as sharp as the reference)."""
    _check_pair(pred, target)

    def energy(image: torch.Tensor) -> torch.Tensor:
        dy = image[..., 1:, :-1] - image[..., :-1, :-1]
        dx = image[..., :-1, 1:] - image[..., :-1, :-1]
        return (dy.square() + dx.square()).flatten(1).sum(dim=1)

    return energy(pred) / energy(target).clamp_min(torch.finfo(pred.dtype).tiny)
