"""Centered, orthonormal 2-D FFTs and complex arithmetic on real/imag channel pairs.

The one place where edgesr converts between its channel-pair layout ``[B, 2C, H, W]`` (channel ``2c``
real, ``2c+1`` imaginary) and torch's complex dtype. Centered means the zero frequency sits at index
``N // 2`` of each axis (``fftshift`` convention, as in fastMRI and sigpy); orthonormal means
``||fft2c(x)|| == ||x||``, so the forward and adjoint operators are exact transposes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def _check_pairs(x: torch.Tensor, name: str) -> None:
    if x.dim() < 3 or x.shape[-3] % 2 != 0:
        raise ValueError(
            f"{name} must have real/imag channel pairs [..., 2C, H, W]; got shape {tuple(x.shape)}"
        )


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """``[..., 2C, H, W]`` real tensor -> ``[..., C, H, W]`` complex tensor."""
    _check_pairs(x, "x")
    pairs = x.unflatten(-3, (-1, 2))  # [..., C, 2, H, W]
    return torch.complex(pairs[..., 0, :, :], pairs[..., 1, :, :])


def from_complex(z: torch.Tensor) -> torch.Tensor:
    """``[..., C, H, W]`` complex tensor -> ``[..., 2C, H, W]`` real tensor with interleaved pairs."""
    if not torch.is_complex(z):
        raise ValueError(f"z must be a complex tensor; got dtype {z.dtype}")
    return torch.stack([z.real, z.imag], dim=-3).flatten(-4, -3)


def complex_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise complex product of two channel-pair tensors (broadcasting over C is allowed)."""
    _check_pairs(a, "a")
    _check_pairs(b, "b")
    ar, ai = a[..., 0::2, :, :], a[..., 1::2, :, :]
    br, bi = b[..., 0::2, :, :], b[..., 1::2, :, :]
    real = ar * br - ai * bi
    imag = ar * bi + ai * br
    return torch.stack([real, imag], dim=-3).flatten(-4, -3)


def complex_conj(a: torch.Tensor) -> torch.Tensor:
    """Complex conjugate of a channel-pair tensor."""
    _check_pairs(a, "a")
    sign = torch.ones(a.shape[-3], 1, 1, dtype=a.dtype, device=a.device)
    sign[1::2] = -1
    return a * sign


def complex_abs(a: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Magnitude ``[..., C, H, W]`` of a channel-pair tensor ``[..., 2C, H, W]``.

    ``eps`` keeps the gradient finite at zero when the magnitude is used in a loss.
    """
    _check_pairs(a, "a")
    return torch.sqrt(a[..., 0::2, :, :] ** 2 + a[..., 1::2, :, :] ** 2 + eps)


def fft2c_complex(z: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal FFT over the last two axes of a complex tensor."""
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    z = torch.fft.fft2(z, norm="ortho")
    return torch.fft.fftshift(z, dim=(-2, -1))


def ifft2c_complex(z: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal inverse FFT over the last two axes of a complex tensor."""
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    z = torch.fft.ifft2(z, norm="ortho")
    return torch.fft.fftshift(z, dim=(-2, -1))


def _full_precision(x: torch.Tensor) -> tuple[torch.Tensor, contextlib.AbstractContextManager[Any]]:
    """``x`` as float32 with autocast off, when a mixed-precision region hands it over in half precision.

    Under bf16 autocast the convolutions of a recon network return bfloat16, but there is no
    bfloat16 FFT (cuFFT and pocketfft take float32/float64), and k-space data consistency subtracts
    measured from predicted k-space, where bf16's 8-bit mantissa would erase the small residual. Outside
    autocast (CPU training, inference, export tracing) this is a no-op, so exported graphs are unchanged.
    """
    if torch.is_autocast_enabled(x.device.type):
        return x.float(), torch.autocast(x.device.type, enabled=False)
    return x, contextlib.nullcontext()


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D FFT of a channel-pair tensor ``[..., 2C, H, W]`` (same shape out)."""
    x, precision = _full_precision(x)
    with precision:
        return from_complex(fft2c_complex(to_complex(x)))


def ifft2c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D inverse FFT of a channel-pair tensor ``[..., 2C, H, W]``."""
    x, precision = _full_precision(x)
    with precision:
        return from_complex(ifft2c_complex(to_complex(x)))
