"""Centered orthonormal FFTs (2-D, and 1-D along the width) and complex arithmetic on channel pairs.

The one place where edgesr converts between its channel-pair layout ``[B, 2C, H, W]`` (channel ``2c``
real, ``2c+1`` imaginary) and torch's complex dtype. Centered means the zero frequency sits at index
``N // 2`` of each axis (``fftshift`` convention, as in fastMRI and sigpy); orthonormal means
``||fft2c(x)|| == ||x||``, so the forward and adjoint operators are exact transposes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
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
    # Built without in-place writes: a mutation inside a loop body (torch's while_loop, which the
    # export of unrolled recon models uses) cannot be functionalised.
    return torch.stack([a[..., 0::2, :, :], -a[..., 1::2, :, :]], dim=-3).flatten(-4, -3)


def complex_abs(a: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Magnitude ``[..., C, H, W]`` of a channel-pair tensor ``[..., 2C, H, W]``.

    ``eps`` keeps the gradient finite at zero when the magnitude is used in a loss.
    """
    _check_pairs(a, "a")
    return torch.sqrt(a[..., 0::2, :, :] ** 2 + a[..., 1::2, :, :] ** 2 + eps)


def fft2c_complex(z: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal FFT over the last two axes of a complex tensor."""
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    z = fft2_ortho(z)
    return torch.fft.fftshift(z, dim=(-2, -1))


def ifft2c_complex(z: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal inverse FFT over the last two axes of a complex tensor."""
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    z = ifft2_ortho(z)
    return torch.fft.fftshift(z, dim=(-2, -1))


# Why the transforms below are unnormalised ones scaled here rather than ``norm="ortho"``: in torch
# 2.13.0 (CPU build), on a 2-core AMD EPYC (Zen 5, AVX-512), every *normalised* complex64 2-D transform
# of one 2048x2048 image with two threads is wrong (``fft2``/``ifft2`` with ``ortho``, ``ifft2`` with
# ``backward``, ``fft2`` with ``forward``: relative error ~1), while the unnormalised ones are right, as
# are other sizes, batches of two, one thread and complex128. 2048x2048 is the HR grid of every 1024x1024
# image enhanced at x2, which came back as noise. A test checks the round trip at 2048x2048.


def fft2_ortho(z: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D FFT over the last two axes (the unnormalised transform, scaled)."""
    return torch.fft.fft2(z, norm="backward") * (z.shape[-2] * z.shape[-1]) ** -0.5


def ifft2_ortho(z: torch.Tensor) -> torch.Tensor:
    """Orthonormal inverse 2-D FFT over the last two axes (the unnormalised transform, scaled)."""
    return torch.fft.ifft2(z, norm="forward") * (z.shape[-2] * z.shape[-1]) ** -0.5


def fft1c_complex(z: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal FFT along the last axis (the width) of a complex tensor."""
    z = torch.fft.ifftshift(z, dim=-1)
    z = torch.fft.fft(z, dim=-1, norm="backward") * z.shape[-1] ** -0.5
    return torch.fft.fftshift(z, dim=-1)


def ifft1c_complex(z: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal inverse FFT along the last axis (the width) of a complex tensor."""
    z = torch.fft.ifftshift(z, dim=-1)
    z = torch.fft.ifft(z, dim=-1, norm="forward") * z.shape[-1] ** -0.5
    return torch.fft.fftshift(z, dim=-1)


def centered_filter_complex(z: torch.Tensor, weights: torch.Tensor, *, axes: int) -> torch.Tensor:
    """``ifftNc(fftNc(z) * weights)`` over the last ``axes`` (1 or 2) axes of a complex tensor: a k-space
    filter given by its *centered* real weights, broadcastable to ``z`` and full-sized along the
    transformed axes (a column mask ``[B, 1, 1, W]`` for ``axes=1``, ``[B, 1, H, W]`` for ``axes=2``).

    Computed without the centering shifts, exactly: with ``P`` the fftshift permutation the centered
    transform is ``P F P^-1``, so the filter is ``P F^H (P^-1 W P) F P^-1``; ``F^H W' F`` is a circular
    convolution, which commutes with the circular shift ``P``, leaving ``F^H ifftshift(W) F``. The four
    shifts copy every coil image and cost more than the two transforms (8 coils at 256x256 on 2 threads:
    1.54 -> 1.08 ms for the SENSE normal operator, which MoDL and CG-SENSE call at every CG step).
    """
    if axes not in (1, 2):
        raise ValueError(f"axes must be 1 or 2; got {axes}")
    dims = (-1,) if axes == 1 else (-2, -1)
    size = z.shape[-1] if axes == 1 else z.shape[-2] * z.shape[-1]
    # The orthonormal pair's two 1/sqrt(N) folded into the weights; unnormalised transforms (see above).
    shifted = torch.fft.ifftshift(weights, dim=dims) * (1.0 / size)
    if axes == 1:
        return torch.fft.ifft(torch.fft.fft(z, dim=-1) * shifted, dim=-1, norm="forward")
    return torch.fft.ifft2(torch.fft.fft2(z) * shifted, norm="forward")


def _shift_pairs(z: torch.Tensor, *, inverse: bool, last_axes: int = 2) -> torch.Tensor:
    """``fftshift`` (or ``ifftshift``) over the last ``last_axes`` axes of a *real* tensor, as gathers.

    Used while torch.export traces (see :func:`_exported_fft2c`). ``torch.roll`` by ``H // 2`` has a
    symbolic shift once H is dynamic, which the ONNX exporter cannot translate without a decomposition
    pass over the whole exported program (about 20 s of a deepcomplex-r4 export on 2 cores); slices of
    symbolic length make torch.export specialise the size; a gather with computed indices does neither.
    """
    for dim in range(z.dim() - last_axes, z.dim()):
        size = z.shape[dim]
        shift = size // 2 if inverse else (size + 1) // 2  # ifftshift rolls by -(N // 2), fftshift by N // 2
        # Output i takes input (i + shift) mod N: a gather with computed indices sets no guards on N
        # (slices of symbolic length would make torch.export specialise the size).
        index = torch.arange(size, device=z.device) + shift
        index = torch.where(index >= size, index - size, index)  # mod N, as shift < N (no symbolic %)
        z = torch.index_select(z, dim, index)
    return z


def _exported_fft2c(x: torch.Tensor, *, inverse: bool) -> torch.Tensor:
    """:func:`fft2c`/:func:`ifft2c` as torch.export traces them: the shifts on the real channel pairs
    (a permutation commutes with the real/complex pairing; torchlib gathers no complex tensors)."""
    transform = torch.fft.ifft2 if inverse else torch.fft.fft2
    z = to_complex(_shift_pairs(x, inverse=True))
    return _shift_pairs(from_complex(transform(z, norm="ortho")), inverse=False)


def _exported_fft1c(x: torch.Tensor, *, inverse: bool) -> torch.Tensor:
    """:func:`fft1c`/:func:`ifft1c` as torch.export traces them (see :func:`_exported_fft2c`)."""
    z = to_complex(_shift_pairs(x, inverse=True, last_axes=1))
    # Unnormalised, then scaled by a tensor: torch's 1-D "ortho" computes sqrt(N) in Python, which
    # fixes a dynamic width to the traced size inside MoDL's loop body (dynamo traces it).
    z = torch.fft.ifft(z, dim=-1, norm="forward") if inverse else torch.fft.fft(z, dim=-1, norm="backward")
    width = torch.full((), x.shape[-1], device=x.device, dtype=x.dtype)
    return _shift_pairs(from_complex(z), inverse=False, last_axes=1) * torch.rsqrt(width)


def full_precision(x: torch.Tensor) -> tuple[torch.Tensor, contextlib.AbstractContextManager[Any]]:
    """``x`` as float32 with autocast off, when a mixed-precision region hands it over in half precision.

    Under bf16 autocast the convolutions of a recon network return bfloat16, but there is no
    bfloat16 FFT (cuFFT and pocketfft take float32/float64), and k-space data consistency subtracts
    measured from predicted k-space, where bf16's 8-bit mantissa would erase the small residual. Outside
    autocast (CPU training, inference, export tracing) this is a no-op, so exported graphs are unchanged.
    """
    if torch.is_autocast_enabled(x.device.type):
        return x.float(), torch.autocast(x.device.type, enabled=False)
    return x, contextlib.nullcontext()


def channel_pairs_only() -> bool:
    """Whether code must stay on real channel pairs: while torch.export traces (exported graphs carry
    no complex tensors) and in the DFT-as-matmul form. Elsewhere torch's complex dtype may be used."""
    return _dft_form.matmul or torch.compiler.is_exporting()


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D FFT of a channel-pair tensor ``[..., 2C, H, W]`` (same shape out)."""
    return _transform(x, axes=2, inverse=False)


def ifft2c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D inverse FFT of a channel-pair tensor ``[..., 2C, H, W]``."""
    return _transform(x, axes=2, inverse=True)


def fft1c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal FFT along the width (last axis) of a channel-pair tensor ``[..., 2C, H, W]``.

    Half of :func:`fft2c`: with a mask of whole k-space columns, ``F^H M F`` needs only this axis
    (see :meth:`edgesr.physics.mri.MultiCoilSense.normal`).
    """
    return _transform(x, axes=1, inverse=False)


def ifft1c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal inverse FFT along the width (last axis) of a channel-pair tensor."""
    return _transform(x, axes=1, inverse=True)


def _transform(x: torch.Tensor, *, axes: int, inverse: bool) -> torch.Tensor:
    """The centered transform over the last ``axes`` (1 or 2) axes in the form the context needs:
    matrix products (DFT-as-matmul), the traceable form while exporting, else torch's complex FFT."""
    x, precision = full_precision(x)
    with precision:
        if _dft_form.matmul:
            return (_dft1c_matmul if axes == 1 else _dft2c_matmul)(x, inverse=inverse)
        if torch.compiler.is_exporting():
            return (_exported_fft1c if axes == 1 else _exported_fft2c)(x, inverse=inverse)
        eager = {
            (1, False): fft1c_complex,
            (1, True): ifft1c_complex,
            (2, False): fft2c_complex,
            (2, True): ifft2c_complex,
        }[(axes, inverse)]
        return from_complex(eager(to_complex(x)))


# --- DFT-as-matmul ------------------------------------------------------------------------------------
#
# Runtimes without an FFT (TensorRT before 11.2, hence JetPack 6 on Jetson) need the transforms as plain
# matrix products on real tensors. The centered orthonormal DFT of length N is the N x N matrix
# ``M[k, n] = exp(-+2 pi i (k - N//2)(n - N//2) / N) / sqrt(N)`` (fftshift . F . ifftshift). Its phases
# are computed as integers modulo N before the one float multiplication, so they are exact for any N (a
# float32 ``2 pi k n / N`` would lose digits once ``k n`` is large). The matrices are built from
# ``arange`` in the graph itself rather than cached as numpy constants: torch.export traces MoDL's loop
# body with dynamo, which would translate numpy into graph ops anyway; runtimes fold them into
# constants when the model loads (for a dynamic size, N is symbolic and the runtime builds the matrices
# for each input size). The cost is O(N) per output sample instead of O(log N), yet measured here the
# CPU runtimes' DFT op was far slower than these products at MR sizes (ONNX Runtime 2.6-7.3x, OpenVINO
# 6-9x for a deepcomplex_small at 218x182 to 640x320, 2 threads), so exports use them by default.


class _DftForm:
    # A plain attribute, not a ContextVar: torch.export traces loop bodies (MoDL's) with dynamo, which
    # reads module attributes but cannot trace ContextVar.get. Exports run one at a time per process.
    matmul = False


_dft_form = _DftForm()


@contextlib.contextmanager
def dft_as_matmul(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`fft2c`/:func:`ifft2c` are real matrix products (see above).

    Not thread-safe: meant for the duration of one export (edgesr exports one model at a time).

    Example:
        >>> with dft_as_matmul():
        ...     program = torch.export.export(model, inputs)   # no DFT op in the graph
    """
    before, _dft_form.matmul = _dft_form.matmul, enabled
    try:
        yield
    finally:
        _dft_form.matmul = before


def centered_dft_matrix(
    size: int,
    inverse: bool,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (``[size, size]``) of the centered orthonormal (inverse) DFT matrix.

    ``size`` may be symbolic (a dynamic dimension while torch.export traces): everything after
    ``arange`` is tensor arithmetic, so the exported graph builds the matrix for the size it is given.
    """
    # N as a 0-d tensor: the ONNX exporter translates tensor arithmetic on a symbolic N, not Python
    # arithmetic (a remainder by a symbolic scalar fails to convert).
    count = torch.full((), size, device=device, dtype=torch.int64)
    centred = torch.arange(size, device=device) - torch.div(count, 2, rounding_mode="floor")
    phase = torch.remainder(centred[:, None] * centred[None, :], count)  # exact integers in [0, N)
    length = count.to(dtype)
    angle = phase.to(dtype) * (2 * math.pi / length)
    norm = torch.rsqrt(length)
    sign = norm if inverse else -norm
    return torch.cos(angle) * norm, torch.sin(angle) * sign


def _dft1c_matmul(x: torch.Tensor, *, inverse: bool) -> torch.Tensor:
    _check_pairs(x, "x")
    real, imag = _width_matmul(x[..., 0::2, :, :], x[..., 1::2, :, :], inverse=inverse)
    return torch.stack([real, imag], dim=-3).flatten(-4, -3)


def _width_matmul(
    real: torch.Tensor, imag: torch.Tensor, *, inverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The centered DFT along the width of ``real + i imag``: ``x M^T`` (the matrices are symmetric,
    but the transpose says what is meant)."""
    cols_re, cols_im = centered_dft_matrix(real.shape[-1], inverse, device=real.device, dtype=real.dtype)
    return real @ cols_re.T - imag @ cols_im.T, real @ cols_im.T + imag @ cols_re.T


def _dft2c_matmul(x: torch.Tensor, *, inverse: bool) -> torch.Tensor:
    _check_pairs(x, "x")
    rows_re, rows_im = centered_dft_matrix(x.shape[-2], inverse, device=x.device, dtype=x.dtype)
    real, imag = _width_matmul(x[..., 0::2, :, :], x[..., 1::2, :, :], inverse=inverse)
    # Along the height: M x.
    real, imag = rows_re @ real - rows_im @ imag, rows_im @ real + rows_re @ imag
    return torch.stack([real, imag], dim=-3).flatten(-4, -3)
