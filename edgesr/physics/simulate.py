"""Multi-coil MRI simulated from real magnitude slices (no package ships raw k-space).

``image x smooth phase`` -> coil images with simulated sensitivities -> orthonormal FFT -> Cartesian
phase-encode mask (ACS + random or equispaced lines) -> complex Gaussian noise on the acquired samples.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from edgesr.physics.coils import simulate_coil_maps, smooth_phase
from edgesr.physics.fft import from_complex
from edgesr.physics.masks import cartesian_mask
from edgesr.physics.mri import MultiCoilSense, add_complex_noise


class ReconSample(NamedTuple):
    """One simulated acquisition (channel-pair tensors, no batch axis).

    ``kspace`` ``[2C, H, W]`` (zero where not acquired), ``mask`` ``[W]``, ``sens_maps`` ``[2C, H, W]``,
    ``target`` the complex ground truth ``[2, H, W]`` whose magnitude is the reference image.
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    sens_maps: torch.Tensor
    target: torch.Tensor


def simulate_multicoil(
    image: torch.Tensor,
    *,
    acceleration: float,
    seed: int,
    n_coils: int = 8,
    mask_kind: str = "random",
    center_fraction: float = 0.08,
    min_acs_lines: int = 0,
    noise_std: float = 0.0,
    max_phase: float = 3.141592653589793,
) -> ReconSample:
    """Simulates an undersampled multi-coil acquisition of a real magnitude image ``[H, W]``.

    ``seed`` draws the phase, the coil geometry, the mask and the noise, so a (slice, seed) pair is one
    fixed acquisition. ``noise_std`` is the complex noise level per coil (``E|n|^2 = noise_std^2``) in
    the image's units.
    """
    if image.dim() != 2 or image.is_complex():
        raise ValueError(
            f"image must be a real [H, W] tensor; got shape {tuple(image.shape)}, dtype {image.dtype}"
        )
    height, width = image.shape
    phase = smooth_phase(height, width, seed=seed, max_phase=max_phase)
    target = from_complex(torch.polar(image.float(), phase)[None])  # [2, H, W]
    maps = simulate_coil_maps(height, width, n_coils, seed=seed)
    mask = cartesian_mask(
        width, acceleration, center_fraction=center_fraction, min_acs_lines=min_acs_lines, kind=mask_kind,
        seed=seed,
    )  # fmt: skip
    mask4 = mask.view(1, 1, 1, width)
    kspace = MultiCoilSense()(target[None], mask4, maps[None])
    generator = torch.Generator().manual_seed(seed)
    kspace = add_complex_noise(kspace, noise_std, generator=generator) * mask4
    return ReconSample(kspace[0], mask, maps, target)
