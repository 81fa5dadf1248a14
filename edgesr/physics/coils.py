"""Coil sensitivities: simulated (for training on magnitude images) and estimated (for real raw data).

Simulation: a ring of surface coils around the object with a Biot-Savart-like 1/r falloff and a
phase that turns around each coil (the model of sigpy's ``birdcage_maps``). It is written here rather
than taken from sigpy because training needs varied coil geometry (ring radius, rotation, per-coil
phase) drawn from a seed, which ``birdcage_maps`` does not offer.

Estimation from the ACS region of real k-space: ESPIRiT through sigpy's ``EspiritCalib`` (the kept
reference implementation), or the low-resolution ratio method (coil images of the Hann-windowed ACS
block divided by their root-sum-of-squares), which needs nothing but an FFT and is what MoDL's and
VarNet's papers start from.
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


# The fewest ACS lines each estimate calibrates from. ESPIRiT's 6x6 kernels must slide over the region.
# Narrower kernels on fewer lines were tried (2026-11-29) and gave maps of zeros over most of the
# object on the external 64x64 EPI (sigpy's eigenvalue crop): worse than a refusal.
ESPIRIT_KERNEL_WIDTH = 6
MIN_ACS_LINES = {"lowres": 3, "espirit": ESPIRIT_KERNEL_WIDTH + 1}


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
        method: ``"espirit"`` (sigpy's EspiritCalib, maps cropped to the object) or ``"lowres"``.
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
        import sigpy.mri  # imported here: sigpy loads numba, which takes seconds

        calib_width = min(n_acs, height)
        if calib_width < MIN_ACS_LINES["espirit"]:
            raise ValueError(
                f"ESPIRiT needs at least {MIN_ACS_LINES['espirit']} ACS lines to calibrate from; this "
                f"mask has {n_acs} (of {width} columns); use the low-resolution maps (lowres) or a larger "
                "centre fraction"
            )
        maps = sigpy.mri.app.EspiritCalib(
            ksp.numpy().astype(np.complex64),
            calib_width=calib_width,
            kernel_width=ESPIRIT_KERNEL_WIDTH,
            thresh=espirit_threshold,
            show_pbar=False,
        ).run()
        return from_complex(torch.from_numpy(np.asarray(maps, dtype=np.complex64)))
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
