"""Coil sensitivities: simulated (for training on magnitude images) and estimated (for real raw data).

Simulation: a ring of surface coils around the object with a Biot-Savart-like 1/r falloff and a
phase that turns around each coil (the model of sigpy's ``birdcage_maps``). It is written here rather
than taken from sigpy because training needs varied coil geometry (ring radius, rotation, per-coil
phase) drawn from a seed, which ``birdcage_maps`` does not offer.

Estimation from the ACS region of real k-space: ESPIRiT (Uecker et al., MRM 2014), or the
low-resolution ratio method (coil images of the Hann-windowed ACS block divided by their
root-sum-of-squares), which needs nothing but an FFT and is what MoDL's and VarNet's papers start from.

ESPIRiT is written here, following sigpy's ``EspiritCalib`` step for step, because ``EspiritCalib``
calibrates from a square region as wide as the ACS block. A Cartesian ACS block is fully sampled along
the whole readout, so the calibration region can be ``24 x ACS`` (BART's default calibration size) rather
than ``ACS x ACS``; on small matrices the square holds too few kernel positions. Measured (2026-11-30,
64x64 EPI, R=4, 8 coils): with sigpy's square region the maps were zero over 100 % of the object; with
the rectangular one and 12 ACS lines, CG-SENSE with the estimated maps came within 0.8 dB of the true maps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edgesr.physics.fft import from_complex, ifft2c_complex, to_complex

ESTIMATION_METHODS = ("espirit", "lowres")


def simulate_coil_maps(
    height: int,
    width: int,
    n_coils: int = 8,
    *,
    seed: int | None = None,
    ring_radius: float = 1.5,
) -> torch.Tensor:
    """Complex coil sensitivities normalised so that ``sum_c |S_c|^2 == 1`` at every pixel.

    Args:
        height, width: image size.
        n_coils: number of coils on the ring.
        seed: ``None`` gives the canonical ring (coil 0 at the top); an integer draws a rotation, a
            ring radius within +-15% and per-coil phase offsets.
        ring_radius: ring radius relative to the half-size of the field of view.

    Returns:
        float32 channel-pair tensor ``[2 * n_coils, height, width]``.
    """
    if n_coils < 1:
        raise ValueError(f"n_coils must be >= 1; got {n_coils}")
    rotation, radius, phase_offsets = 0.0, ring_radius, np.zeros(n_coils)
    if seed is not None:
        rng = np.random.default_rng(seed)
        rotation = rng.uniform(0, 2 * math.pi)
        radius = ring_radius * rng.uniform(0.85, 1.15)
        phase_offsets = rng.uniform(-math.pi, math.pi, size=n_coils)
    # Normalised coordinates: the longer axis spans [-1, 1], so the ring sits outside a non-square FOV.
    scale = max(height, width) / 2.0
    y = (np.arange(height) - height / 2.0) / scale
    x = (np.arange(width) - width / 2.0) / scale
    yy, xx = np.meshgrid(y, x, indexing="ij")
    maps = np.empty((n_coils, height, width), dtype=np.complex128)
    for c in range(n_coils):
        angle = rotation + 2 * math.pi * c / n_coils
        dy, dx = yy - radius * math.cos(angle), xx - radius * math.sin(angle)
        distance = np.sqrt(dx**2 + dy**2)
        phase = np.arctan2(dx, -dy) + phase_offsets[c]
        maps[c] = np.exp(1j * phase) / distance
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))
    return from_complex(torch.from_numpy(maps.astype(np.complex64)))


def smooth_phase(height: int, width: int, *, seed: int, max_phase: float = math.pi) -> torch.Tensor:
    """A smooth random phase map in radians ``[height, width]`` (float32), within ``+-max_phase``.

    Real MR images are complex with a slowly varying phase (B0, coil and RF effects); magnitude-only
    training images get one so that reconstruction models cannot assume a real-valued image.
    """
    rng = np.random.default_rng(seed)
    # A random field made of the lowest 5x5 spatial frequencies, plus a random linear ramp.
    low = rng.standard_normal((5, 5)) + 1j * rng.standard_normal((5, 5))
    spectrum = np.zeros((height, width), dtype=np.complex128)
    cy, cx = height // 2, width // 2
    spectrum[cy - 2 : cy + 3, cx - 2 : cx + 3] = low
    field = np.real(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum))))
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    field = field / (np.abs(field).max() + 1e-12) + rng.uniform(-0.5, 0.5) * yy + rng.uniform(-0.5, 0.5) * xx
    field = field / (np.abs(field).max() + 1e-12) * max_phase
    return torch.from_numpy(field.astype(np.float32))


# ESPIRiT's kernel and calibration region (BART's and sigpy's defaults: 6x6 kernels, 24 readout rows).
ESPIRIT_KERNEL_WIDTH = 6
ESPIRIT_CALIBRATION_ROWS = 24
# The fewest ACS lines each estimate calibrates from. ESPIRiT: twice its kernel, so that the kernels slide
# over several positions across the phase-encode direction. Measured on 64x64 EPI (R=4, 8 coils): with 8
# lines the maps were zero over 5-80 % of the object; with 12, none was. Narrower kernels on fewer lines
# (tried 2026-11-29) were worse still.
MIN_ACS_LINES = {"lowres": 3, "espirit": 2 * ESPIRIT_KERNEL_WIDTH}


def acs_lines(mask: torch.Tensor) -> int:
    """How many contiguous sampled columns run through the centre of a 1-D mask (0 if the centre is not
    sampled): the calibration region coil maps are estimated from."""
    try:
        start, stop = _acs_block(mask)
    except ValueError:
        return 0
    return stop - start


def _acs_block(mask: torch.Tensor) -> tuple[int, int]:
    """Start and stop of the contiguous run of sampled columns through the centre of a 1-D mask."""
    sampled = mask.reshape(-1).cpu().numpy() > 0
    center = sampled.shape[0] // 2
    if not sampled[center]:
        raise ValueError(
            "the mask does not sample the k-space centre, so there is no ACS region to calibrate from"
        )
    start, stop = center, center + 1
    while start > 0 and sampled[start - 1]:
        start -= 1
    while stop < sampled.shape[0] and sampled[stop]:
        stop += 1
    return start, stop


def espirit_maps(
    calibration: torch.Tensor,
    image_shape: tuple[int, int],
    *,
    threshold: float = 0.02,
    crop: float = 0.95,
    kernel_width: int = ESPIRIT_KERNEL_WIDTH,
) -> torch.Tensor:
    """ESPIRiT coil maps from a fully sampled calibration region (one set of maps, cropped).

    Args:
        calibration: complex k-space of the calibration region ``[C, h, w]`` (centred on the k-space
            centre), at least ``kernel_width`` in each direction.
        image_shape: the maps' size ``(H, W)``.
        threshold: singular values below ``threshold * largest`` span the null space and are dropped.
        crop: maps are zeroed where the largest eigenvalue is below ``crop`` (outside the object).
        kernel_width: the calibration kernels' size.

    Returns:
        complex64 maps ``[C, H, W]``, phase relative to the first coil, unit root-sum-of-squares inside
        the object.
    """
    n_coils, rows, cols = calibration.shape
    height, width = image_shape
    if rows < kernel_width or cols < kernel_width:
        raise ValueError(
            f"calibration region of shape {(rows, cols)} is smaller than the "
            f"{kernel_width}x{kernel_width} kernel"
        )
    calib = calibration.to(torch.complex128)
    # Calibration matrix: one row per kernel position, the kernel's samples of every coil as columns.
    blocks = calib.unfold(1, kernel_width, 1).unfold(2, kernel_width, 1)  # [C, nh, nw, k, k]
    matrix = blocks.permute(1, 2, 0, 3, 4).reshape(-1, n_coils * kernel_width**2)
    _, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
    kernels = vh[singular > threshold * singular.max()].reshape(-1, n_coils, kernel_width, kernel_width)
    gram = _espirit_gram(kernels, height, width)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    maps = eigenvectors[..., -1]  # [H, W, C], the leading eigenvector
    first = maps[..., :1]
    maps = maps * (first.conj() / first.abs().clamp_min(1e-30))
    maps = maps * (eigenvalues[..., -1] > crop)[..., None]
    return maps.permute(2, 0, 1)


def _espirit_gram(kernels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The per-pixel Gram matrix of the ESPIRiT operator, ``[H, W, C, C]`` complex64.

    Each kernel ``K_k`` (``[C, k, k]``), zero-padded to the image size and taken to image space (``v_k =
    s * ifft2c(pad(K_k))``, ``s = sqrt(H W) / k``), gives one row of the per-pixel operator, and
    ``G(x) = sum_k v_k(x) v_k(x)^H``. Done that way (as sigpy does) it costs ``n_k * C`` image-size FFTs
    and ``n_k`` outer products over the image: about a minute at 1024x1024 on 2 cores. Here the product
    is taken in k-space instead: ``G_ij = s^2 / sqrt(H W) * ifft2c(R_ij)``, where ``R_ij(d) = sum_k sum_l
    K_ki(l + d) conj(K_kj(l))`` is the kernels' cross-correlation, ``(2k - 1) x (2k - 1)`` around the
    k-space centre. That is ``C^2`` image-size FFTs whatever the number of kernels; the result is the same
    (a test compares both forms).
    """
    count, n_coils, size, _ = kernels.shape
    # Circular cross-correlation through FFTs of side 2k >= 2k - 1: no wrap-around of the shifts.
    side = 2 * size
    spectra = torch.fft.fft2(kernels, s=(side, side))  # [n_k, C, 2k, 2k]
    correlation = torch.fft.ifft2(torch.einsum("nipq,njpq->ijpq", spectra, spectra.conj()))
    # Shift d = (dy, dx) sits at index d mod 2k; it goes to the image's k-space centre + d, wrapped
    # (added up) where the image is narrower than 2k - 1, as the image-size DFT of the product wraps it.
    shifts = torch.arange(-(size - 1), size)
    rows = (height // 2 + shifts) % height
    cols = (width // 2 + shifts) % width
    values = correlation[:, :, shifts[:, None] % side, shifts[None, :] % side].to(torch.complex64)
    padded = torch.zeros(n_coils, n_coils, height * width, dtype=torch.complex64)  # 0.5 GB at 1024x1024
    padded.index_add_(
        2, (rows[:, None] * width + cols[None, :]).reshape(-1), values.reshape(n_coils, n_coils, -1)
    )
    padded = padded.reshape(n_coils, n_coils, height, width)
    scale = (height * width) ** 0.5 / size  # sqrt(pixels / kernel size), as in ESPIRiT
    gram = ifft2c_complex(padded) * (scale**2 / (height * width) ** 0.5)
    return gram.permute(2, 3, 0, 1)


def estimate_coil_maps(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    *,
    method: str = "lowres",
    espirit_threshold: float = 0.02,
) -> torch.Tensor:
    """Estimates coil sensitivities from the fully sampled centre of undersampled k-space.

    Args:
        kspace: channel-pair k-space of one slice ``[2C, H, W]`` (phase encode along W).
        mask: the 1-D sampling mask ``[W]`` (or anything that reshapes to it); its contiguous sampled
            run through the centre is the ACS region.
        method: ``"espirit"`` (:func:`espirit_maps`, cropped to the object) or ``"lowres"``.
        espirit_threshold: ESPIRiT's singular-value threshold for the calibration matrix.

    Returns:
        channel-pair maps ``[2C, H, W]`` (float32), normalised to unit root-sum-of-squares where the
        object has signal.
    """
    if method not in ESTIMATION_METHODS:
        raise ValueError(f"method must be one of {ESTIMATION_METHODS}; got {method!r}")
    if kspace.dim() != 3:
        raise ValueError(f"kspace must be [2C, H, W] for one slice; got shape {tuple(kspace.shape)}")
    height, width = kspace.shape[-2:]
    if mask.numel() != width:
        raise ValueError(f"mask has {mask.numel()} entries but kspace has {width} phase-encode columns")
    start, stop = _acs_block(mask)
    n_acs = stop - start
    ksp = to_complex(kspace.detach().cpu().to(torch.float32))
    if method == "espirit":
        if n_acs < MIN_ACS_LINES["espirit"]:
            raise ValueError(
                f"ESPIRiT needs at least {MIN_ACS_LINES['espirit']} ACS lines to calibrate from; this "
                f"mask has {n_acs} (of {width} columns); use the low-resolution maps (lowres) or a larger "
                "fully sampled centre (center_fraction, min_acs_lines)"
            )
        n_rows = min(height, max(ESPIRIT_CALIBRATION_ROWS, n_acs))
        first_row = height // 2 - n_rows // 2
        calibration = ksp[:, first_row : first_row + n_rows, start:stop]
        maps = espirit_maps(calibration, (height, width), threshold=espirit_threshold)
        return from_complex(maps.to(torch.complex64))
    # Low-resolution ratio: Hann-window the ACS block in both directions (the readout window has the
    # same k-space extent) to keep Gibbs ringing out of the maps.
    n_ro = min(height, n_acs)
    ro_start = height // 2 - n_ro // 2
    window = torch.zeros(height, width)
    window[ro_start : ro_start + n_ro, start:stop] = torch.outer(
        torch.hann_window(n_ro + 2, periodic=False)[1:-1], torch.hann_window(n_acs + 2, periodic=False)[1:-1]
    )
    coil_images = ifft2c_complex(ksp * window)
    rss = torch.sqrt(torch.sum(torch.abs(coil_images) ** 2, dim=0, keepdim=True))
    maps = coil_images / rss.clamp_min(1e-6 * float(rss.max()) + 1e-12)
    return from_complex(maps.to(torch.complex64))
