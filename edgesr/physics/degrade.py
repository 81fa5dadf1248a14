"""Super-resolution degradations (how a low-resolution image comes about) and their sampling grids.

Three degradations, all for scale factors 2, 3 and 4 on real images ``[B, C, H, W]``:

* ``mr-kspace`` (MR): the scanner acquires fewer k-space samples. Keep the central ``H/s x W/s`` block
  of the centered orthonormal k-space, inverse FFT, divide by ``s`` so intensities keep their
  units, optionally add complex Gaussian noise of std ``noise_std`` (in image units, ``E|n|^2 =
  noise_std^2``), take the magnitude.
* ``ct-blur`` (CT): a Gaussian blur of std ``blur_sigma`` HR pixels (slice/detector profile; default
  ``0.25 * s``), an ``s x s`` area average, optional real Gaussian noise of std ``noise_std``.
* ``bicubic``: the classic SR benchmark degradation, antialiased bicubic downsampling.

The LR pixel grid differs between them, and an interpolator that assumes the wrong grid loses up to
several dB: :func:`lr_grid_offset` gives, for each, the HR coordinate of the centre of LR pixel 0
(LR pixel ``j`` sits at HR coordinate ``offset + s * j``). For area/bicubic it is ``(s - 1) / 2``; for
k-space truncation the zero frequency stays at index ``n // 2``, so LR pixel ``(n/s) // 2`` coincides
with HR pixel ``n // 2``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from edgesr.physics.fft import fft2c_complex, ifft2c_complex

DEGRADATIONS = ("mr-kspace", "ct-blur", "bicubic")
SCALES = (2, 3, 4)


def _check_image(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be a batch of images [B, C, H, W]; got shape {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} must be real-valued; got dtype {x.dtype}")


def _check_scale(scale: int) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale}")


def check_divisible(x: torch.Tensor, scale: int, name: str = "image") -> None:
    """Raises ``ValueError`` when an HR image's height or width is not a multiple of ``scale``."""
    height, width = x.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(
            f"{name} of size {height}x{width} is not divisible by scale {scale}; crop it first "
            f"(edgesr.physics.degrade.crop_to_multiple)"
        )


def crop_to_multiple(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Centre-crops the last two axes to the largest multiples of ``scale`` (an explicit, visible step)."""
    height, width = x.shape[-2:]
    new_h, new_w = height - height % scale, width - width % scale
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return x[..., top : top + new_h, left : left + new_w]


def _center_start(big: int, small: int) -> int:
    """Where a centred ``small`` k-space block starts inside ``big``, keeping DC at ``big // 2``."""
    return big // 2 - small // 2


def kspace_truncate(
    hr: torch.Tensor,
    scale: int,
    *,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MR low resolution by k-space truncation: ``[B, C, H, W]`` -> magnitude ``[B, C, H/s, W/s]``."""
    _check_image(hr, "hr")
    return _truncate_complex(hr.to(torch.complex64), scale, noise_std, generator).abs().to(hr.dtype)


def _truncate_complex(
    image: torch.Tensor, scale: int, noise_std: float, generator: torch.Generator | None
) -> torch.Tensor:
    """The complex LR image of the central ``1/s`` of ``image``'s k-space, plus complex noise."""
    _check_scale(scale)
    check_divisible(image, scale, "hr")
    height, width = image.shape[-2:]
    h, w = height // scale, width // scale
    top, left = _center_start(height, h), _center_start(width, w)
    kspace = fft2c_complex(image)[..., top : top + h, left : left + w]
    # Orthonormal FFTs on s^2 fewer samples raise intensities by s: divide to keep the image's units.
    lr = ifft2c_complex(kspace) / scale
    return lr + _complex_noise(lr.shape, noise_std, generator, image.device)


def zero_filled_reconstruction(image: torch.Tensor, acquired: tuple[float, float]) -> torch.Tensor:
    """``image [..., H, W]`` (complex) as a console reconstructs a scan that acquired only the central
    ``acquired`` fraction of its k-space rows and columns and zero-filled the rest to the full matrix.

    Clinical MR is often stored this way: phase resolution below 100 % (a 256x134 acquisition) and
    interpolated reconstructions (a 484x484 image of it). Such an image has nothing above the acquired
    resolution, so an SR model that adds detail there only adds error.
    """
    rows, cols = acquired
    if not (0.0 < rows <= 1.0 and 0.0 < cols <= 1.0):
        raise ValueError(f"acquired fractions must be in (0, 1]; got {acquired}")
    height, width = image.shape[-2:]
    keep_h, keep_w = max(1, round(height * rows)), max(1, round(width * cols))
    if (keep_h, keep_w) == (height, width):
        return image
    kspace = fft2c_complex(image)
    mask = torch.zeros((height, width), dtype=torch.bool, device=image.device)
    top, left = _center_start(height, keep_h), _center_start(width, keep_w)
    mask[top : top + keep_h, left : left + keep_w] = True
    return ifft2c_complex(kspace * mask)


def _complex_noise(
    shape: torch.Size, std: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor | float:
    """Circular complex Gaussian noise with ``E|n|^2 = std^2`` (0 when ``std`` is 0)."""
    if std <= 0:
        return 0.0
    noise = torch.randn((2, *shape), generator=generator, dtype=torch.float32, device=device)
    return torch.complex(noise[0], noise[1]) * (std / math.sqrt(2))


def noisy_scan_pair(
    hr: torch.Tensor,
    scale: int,
    kind: str,
    *,
    scan_noise: float,
    noise_std: float = 0.0,
    blur_sigma: float | None = None,
    background_below: float = 0.0,
    acquired: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A scan with its own noise and its low-resolution version: ``(hr, lr)``.

    Real scans are noisy at full resolution: MR gets complex Gaussian noise of std ``scan_noise`` and
    becomes a Rician magnitude (with its noise floor in the background), CT gets Gaussian noise. The
    LR image is then made from that noisy magnitude by the named degradation (``blur_sigma`` for
    ``ct-blur``), with its own ``noise_std`` on top, exactly as the evaluation protocol makes LR
    images from real (noisy) scans. A model trained on clean references only learns to add detail
    that a noisy scan does not have; one trained on the noisy pair learns what is predictable.
    ``background_below`` > 0 zeroes the noisy scan's background (:func:`suppress_background`)
    before it is degraded, as scanners and skull-stripping pipelines store it. ``acquired`` < 1 (MR
    only) keeps that fraction of the noisy scan's k-space rows and columns and zero-fills the rest
    (:func:`zero_filled_reconstruction`): the noise is band-limited with the signal, as in a real
    acquisition.
    """
    _check_image(hr, "hr")
    if acquired != (1.0, 1.0) and kind != "mr-kspace":
        raise ValueError(f"acquired fractions are an MR k-space acquisition; got degradation {kind!r}")
    if kind == "mr-kspace":
        scan = hr.to(torch.complex64) + _complex_noise(hr.shape, scan_noise, generator, hr.device)
        hr = zero_filled_reconstruction(scan, acquired).abs().to(torch.float32)
    elif scan_noise > 0:
        hr = hr + scan_noise * torch.randn(hr.shape, generator=generator, dtype=hr.dtype, device=hr.device)
    if background_below > 0:
        hr = suppress_background(hr, background_below)
    if kind == "ct-blur":
        return hr, ct_degrade(hr, scale, blur_sigma=blur_sigma, noise_std=noise_std, generator=generator)
    return hr, degrade(hr, scale, kind, noise_std=noise_std, generator=generator)


def suppress_background(image: torch.Tensor, below: float, *, smooth_sigma: float = 3.0) -> torch.Tensor:
    """``image [B, C, H, W]`` with its background set to exactly zero, as many stored scans have it.

    MR consoles suppress the noise outside the body, and skull-stripped research images are zero
    outside a brain mask: a hard edge, often through tissue, with no noise floor beyond it, which
    unmasked training scans never show. The mask is an outline: the image smoothed over
    ``smooth_sigma`` pixels (so the outline is smooth and cuts through fine structure, as a brain
    mask does) above ``below`` times its 99th percentile (not the maximum, which one bright
    structure sets), with the holes inside the object kept (dark ventricles, bone, air in the body).
    """
    _check_image(image, "image")
    if not 0.0 < below < 1.0:
        raise ValueError(f"background_below must be in (0, 1); got {below}")
    # scipy fills holes in a binary mask; no torch operator does (a flood fill by hand is slow in Python).
    from scipy.ndimage import binary_fill_holes

    smooth = gaussian_blur(image.float(), smooth_sigma)
    level = torch.quantile(smooth.flatten(-2), 0.99, dim=-1)[..., None, None]
    inside = (smooth > below * level).cpu().numpy()
    masks = np.stack([binary_fill_holes(plane) for plane in inside.reshape(-1, *inside.shape[-2:])])
    keep = torch.from_numpy(masks.reshape(inside.shape)).to(image.device)
    return image * keep.to(image.dtype)


def zero_fill_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """k-space zero-fill (sinc) interpolation, the inverse grid of :func:`kspace_truncate`.

    ``[B, C, h, w]`` -> magnitude ``[B, C, h*s, w*s]``. It is exact for images band-limited to the
    acquired k-space, which makes it the baseline an MR SR model must beat.
    """
    _check_image(lr, "lr")
    _check_scale(scale)
    h, w = lr.shape[-2:]
    height, width = h * scale, w * scale
    top, left = _center_start(height, h), _center_start(width, w)
    kspace = fft2c_complex(lr.to(torch.complex64))
    padded = F.pad(kspace, (left, width - w - left, top, height - h - top))
    return (ifft2c_complex(padded).abs() * scale).to(lr.dtype)


def _gaussian_kernel1d(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with reflected borders (no dark rim)."""
    _check_image(x, "x")
    if sigma <= 0:
        return x
    kernel = _gaussian_kernel1d(sigma, x.dtype, x.device)
    radius = kernel.numel() // 2
    channels = x.shape[1]
    out = F.pad(
        x, (radius, radius, radius, radius), mode="replicate" if min(x.shape[-2:]) <= radius else "reflect"
    )
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous(), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous(), groups=channels)


def ct_degrade(
    hr: torch.Tensor,
    scale: int,
    *,
    blur_sigma: float | None = None,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CT low resolution: Gaussian blur (``blur_sigma`` HR px, default ``0.25 * s``), area average, noise."""
    _check_image(hr, "hr")
    _check_scale(scale)
    check_divisible(hr, scale, "hr")
    sigma = 0.25 * scale if blur_sigma is None else blur_sigma
    lr = F.avg_pool2d(gaussian_blur(hr, sigma), kernel_size=scale)
    if noise_std > 0:
        lr = lr + noise_std * torch.randn(lr.shape, generator=generator, dtype=lr.dtype, device=lr.device)
    return lr


def bicubic_downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downsampling (the degradation of the SR benchmark literature)."""
    _check_image(hr, "hr")
    _check_scale(scale)
    check_divisible(hr, scale, "hr")
    return F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)


def degrade(
    hr: torch.Tensor,
    scale: int,
    kind: str,
    *,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Applies the named degradation (one of :data:`DEGRADATIONS`) with its default parameters."""
    if kind == "mr-kspace":
        return kspace_truncate(hr, scale, noise_std=noise_std, generator=generator)
    if kind == "ct-blur":
        return ct_degrade(hr, scale, noise_std=noise_std, generator=generator)
    if kind == "bicubic":
        lr = bicubic_downsample(hr, scale)
        if noise_std > 0:
            lr = lr + noise_std * torch.randn(lr.shape, generator=generator, dtype=lr.dtype, device=lr.device)
        return lr
    raise ValueError(f"degradation must be one of {DEGRADATIONS}; got {kind!r}")


def lr_grid_offset(kind: str, hr_size: int, scale: int) -> float:
    """HR coordinate of the centre of LR pixel 0 along an axis of ``hr_size`` pixels."""
    if kind == "mr-kspace":
        return float(hr_size // 2 - scale * ((hr_size // scale) // 2))
    if kind in ("ct-blur", "bicubic"):
        return (scale - 1) / 2
    raise ValueError(f"degradation must be one of {DEGRADATIONS}; got {kind!r}")


def bicubic_upsample(
    lr: torch.Tensor, scale: int, *, offset: tuple[float, float] | None = None
) -> torch.Tensor:
    """Bicubic interpolation onto the HR grid, with the LR pixel centres where the degradation put them.

    Args:
        lr: ``[B, C, h, w]``, h and w at least 2.
        scale: upsampling factor.
        offset: HR coordinates ``(row, col)`` of the centre of LR pixel ``(0, 0)``; the default
            ``(s-1)/2`` is the area/bicubic grid and gives exactly ``F.interpolate(mode="bicubic")``.
            Pass ``lr_grid_offset("mr-kspace", ...)`` for k-space-truncated images.
    """
    _check_image(lr, "lr")
    _check_scale(scale)
    h, w = lr.shape[-2:]
    if h < 2 or w < 2:
        raise ValueError(f"lr must be at least 2x2 to interpolate; got {h}x{w}")
    off_y, off_x = ((scale - 1) / 2, (scale - 1) / 2) if offset is None else offset
    # HR pixel i sits at LR coordinate (i - offset) / s; grid_sample wants it in [-1, 1] (align_corners).
    ys = (torch.arange(h * scale, dtype=lr.dtype, device=lr.device) - off_y) / scale
    xs = (torch.arange(w * scale, dtype=lr.dtype, device=lr.device) - off_x) / scale
    grid_y, grid_x = torch.meshgrid(2 * ys / (h - 1) - 1, 2 * xs / (w - 1) - 1, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0).expand(lr.shape[0], -1, -1, -1)
    return F.grid_sample(lr, grid, mode="bicubic", padding_mode="border", align_corners=True)


def upsampled_affine(affine: np.ndarray, scale: int, degradation: str, shape: tuple[int, int]) -> np.ndarray:
    """The NIfTI affine of an SR output: in-plane voxels ``s`` times smaller, on the LR grid's positions.

    HR voxel ``i`` lies at LR coordinate ``(i - offset) / s`` (see :func:`lr_grid_offset`), so the
    output covers the same field of view as the input.
    """
    hr_x, hr_y = shape[0] * scale, shape[1] * scale
    to_lr = np.eye(4)
    to_lr[0, 0] = to_lr[1, 1] = 1.0 / scale
    to_lr[0, 3] = -lr_grid_offset(degradation, hr_x, scale) / scale
    to_lr[1, 3] = -lr_grid_offset(degradation, hr_y, scale) / scale
    return affine @ to_lr
