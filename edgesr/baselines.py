"""Classical baselines, the yardsticks every report shows next to the learned models.

SR: bicubic interpolation on the degradation's own LR grid, and k-space zero-fill (sinc)
interpolation. Multi-coil recon: the zero-filled adjoint ``A^H y`` (SENSE-combined), CG-SENSE with
Tikhonov regularisation, and L1-wavelet compressed sensing (sigpy's ``L1WaveletRecon``, the kept
reference implementation, with the same centered orthonormal FFT convention as edgesr).
"""

from __future__ import annotations

import numpy as np
import torch

from edgesr.physics.degrade import bicubic_upsample, lr_grid_offset, zero_fill_upsample
from edgesr.physics.fft import from_complex, to_complex
from edgesr.physics.mri import MultiCoilSense, conjugate_gradient

SR_BASELINES = ("bicubic", "zero-fill")
RECON_BASELINES = ("zero-filled", "cg-sense", "l1-wavelet")

# Regularisation weights chosen on the *val* split (R = 4 and 6, 8 coils, noise 0.005; images scaled
# to a maximum of 1): CG-SENSE lambda 1e-2 is within 0.05 dB of the best PSNR (at 1e-3) with a much
# better SSIM (less noise amplification); L1-wavelet lambda 1e-3 had the best PSNR and SSIM of
# {3e-4, 1e-3, 3e-3, 1e-2}. Sweep: `edgesr baseline task=recon split=val cg_lambda=... cs_lambda=...`.
CG_SENSE_LAMBDA = 1e-2
CG_SENSE_ITERATIONS = 30
L1_WAVELET_LAMBDA = 1e-3
L1_WAVELET_ITERATIONS = 60


def sr_bicubic(lr: torch.Tensor, scale: int, degradation: str) -> torch.Tensor:
    """Bicubic upsampling of ``[B, C, h, w]`` with LR pixels where ``degradation`` puts them."""
    h, w = lr.shape[-2:]
    offset = (lr_grid_offset(degradation, h * scale, scale), lr_grid_offset(degradation, w * scale, scale))
    return bicubic_upsample(lr, scale, offset=offset)


def sr_zero_fill(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """k-space zero-fill interpolation of ``[B, C, h, w]``."""
    return zero_fill_upsample(lr, scale)


UPSAMPLERS = ("zero-fill", "bicubic")


def interpolate_base(lr: torch.Tensor, scale: int, upsampler: str, degradation: str) -> torch.Tensor:
    """The SR models' global skip: one of the SR baselines, computed on the whole LR image.

    Args:
        lr: ``[B, C, h, w]`` whole images (not patches: zero-fill on a patch rings at its edges).
        upsampler: ``zero-fill`` (MR) or ``bicubic`` (on ``degradation``'s LR grid).
    """
    if upsampler == "zero-fill":
        return sr_zero_fill(lr, scale)
    if upsampler == "bicubic":
        return sr_bicubic(lr, scale, degradation)
    raise ValueError(f"upsampler must be one of {UPSAMPLERS}; got {upsampler!r}")


def recon_zero_filled(kspace: torch.Tensor, mask: torch.Tensor, sens_maps: torch.Tensor) -> torch.Tensor:
    """``A^H y``: ``[B, 2C, H, W]`` k-space, ``[B, 1, 1, W]`` mask, maps -> ``[B, 2, H, W]`` image."""
    return MultiCoilSense().A_adjoint(kspace, mask, sens_maps)


def recon_cg_sense(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    sens_maps: torch.Tensor,
    *,
    lam: float = CG_SENSE_LAMBDA,
    n_iter: int = CG_SENSE_ITERATIONS,
) -> torch.Tensor:
    """CG-SENSE: solves ``(A^H A + lam I) x = A^H y``; ``[B, 2C, H, W]`` -> ``[B, 2, H, W]``."""
    op = MultiCoilSense()
    rhs = to_complex(op.A_adjoint(kspace, mask, sens_maps))
    maps = to_complex(sens_maps)
    # The solve in torch's complex dtype (see MultiCoilSense.normal_complex): a baseline is never exported.
    solution = conjugate_gradient(
        lambda x: op.normal_complex(x, mask, maps) + lam * x, rhs, n_iter=n_iter, tol=1e-6
    )
    return from_complex(solution)


def recon_l1_wavelet(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    sens_maps: torch.Tensor,
    *,
    lam: float = L1_WAVELET_LAMBDA,
    n_iter: int = L1_WAVELET_ITERATIONS,
) -> torch.Tensor:
    """L1-wavelet CS: ``min_x ||A x - y||^2 / 2 + lam ||W x||_1`` per slice (sigpy); shapes as CG-SENSE."""
    import sigpy.mri  # imported here: sigpy loads numba, which takes seconds

    outputs = []
    for y, maps, m in zip(
        to_complex(kspace), to_complex(sens_maps), mask.expand(kspace.shape[0], -1, -1, -1), strict=True
    ):
        weights = np.broadcast_to(m[0].numpy(), y.shape[-2:]).astype(np.float32)
        x = sigpy.mri.app.L1WaveletRecon(
            y.numpy(), maps.numpy(), lam, weights=weights, max_iter=n_iter, show_pbar=False
        ).run()
        outputs.append(torch.from_numpy(np.asarray(x, dtype=np.complex64)))
    return from_complex(torch.stack(outputs)[:, None])
