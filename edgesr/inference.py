"""Running trained models on users' data: tiled SR of images and volumes, recon of raw k-space.

SR tiling is exact, not blended: the global skip (``base``) is computed once on the whole image, each
tile is run with a halo of ``halo`` LR pixels of real context around it, and only the tile's own
centre is kept. When the halo covers the network's receptive field the result equals whole-image
inference (a test checks 1e-4); a smaller halo trades exactness for memory.

Intensities: models are trained on images divided by their volume's maximum, so inputs are divided
by the volume maximum before inference and multiplied back after, and outputs keep the input's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgesr.baselines import interpolate_base
from edgesr.data.kspace import KSpaceVolume
from edgesr.errors import DataError
from edgesr.physics.coils import estimate_coil_maps
from edgesr.physics.degrade import lr_grid_offset
from edgesr.physics.fft import complex_abs, from_complex, ifft2c_complex


@dataclass(frozen=True)
class SRSettings:
    """How to run an SR model: its degradation (for the LR grid) and the tiling."""

    degradation: str = "mr-kspace"
    tile: int = 128  # LR pixels per tile side (0: whole image)
    halo: int = 32  # LR pixels of context around each tile


def _tiles(size: int, tile: int) -> list[tuple[int, int]]:
    if tile <= 0 or tile >= size:
        return [(0, size)]
    return [(start, min(start + tile, size)) for start in range(0, size, tile)]


@torch.no_grad()
def super_resolve_slice(model: nn.Module, lr: torch.Tensor, settings: SRSettings) -> torch.Tensor:
    """SR of one normalised slice ``[h, w]`` -> ``[h*s, w*s]`` with exact tiling."""
    scale = int(model.scale)  # type: ignore[arg-type]
    lr4 = lr[None, None]
    base = interpolate_base(lr4, scale, str(model.upsampler), settings.degradation)
    h, w = lr.shape
    out = torch.empty_like(base)
    for top, bottom in _tiles(h, settings.tile):
        for left, right in _tiles(w, settings.tile):
            # The tile plus its halo, clipped to the image (borders then pad exactly like the whole image).
            t0, b0 = max(0, top - settings.halo), min(h, bottom + settings.halo)
            l0, r0 = max(0, left - settings.halo), min(w, right + settings.halo)
            pred = model(lr4[..., t0:b0, l0:r0], base[..., t0 * scale : b0 * scale, l0 * scale : r0 * scale])
            keep = pred[
                ..., (top - t0) * scale : (bottom - t0) * scale, (left - l0) * scale : (right - l0) * scale
            ]
            out[..., top * scale : bottom * scale, left * scale : right * scale] = keep
    return out[0, 0]


def super_resolve_volume(model: nn.Module, volume: np.ndarray, settings: SRSettings) -> np.ndarray:
    """SR of every slice of ``[S, h, w]`` (any units) -> float32 ``[S, h*s, w*s]`` in the same units."""
    if volume.ndim != 3:
        raise ValueError(f"volume must be [S, h, w]; got shape {volume.shape}")
    peak = float(volume.max())
    if not math.isfinite(peak) or peak <= 0:
        raise DataError(f"the image has no positive intensities (max {peak}); nothing to super-resolve")
    model.eval()
    device = next(model.parameters()).device
    slices = [
        super_resolve_slice(model, torch.from_numpy(s / peak).float().to(device), settings).cpu()
        for s in volume
    ]
    return (torch.stack(slices).numpy() * peak).astype(np.float32)


def upsampled_affine(affine: np.ndarray, scale: int, degradation: str, shape: tuple[int, int]) -> np.ndarray:
    """The NIfTI affine of the SR output: in-plane voxels ``s`` times smaller, on the LR grid's positions.

    HR voxel ``i`` lies at LR coordinate ``(i - offset) / s`` (see :func:`lr_grid_offset`), so the
    output covers the same field of view as the input.
    """
    hr_x, hr_y = shape[0] * scale, shape[1] * scale
    to_lr = np.eye(4)
    to_lr[0, 0] = to_lr[1, 1] = 1.0 / scale
    to_lr[0, 3] = -lr_grid_offset(degradation, hr_x, scale) / scale
    to_lr[1, 3] = -lr_grid_offset(degradation, hr_y, scale) / scale
    return affine @ to_lr


def coil_compress(kspace: np.ndarray, coils: int) -> np.ndarray:
    """Compresses ``[S, C, H, W]`` k-space to ``coils`` virtual coils (SVD over all samples, per volume)."""
    n = kspace.shape[1]
    if n == coils:
        return kspace
    if n < coils:
        raise DataError(f"the data has {n} coils; the model needs {coils} (it cannot invent coils)")
    samples = kspace.transpose(1, 0, 2, 3).reshape(n, -1)
    u, _, _ = np.linalg.svd(samples @ samples.conj().T)
    compressed = (u[:, :coils].conj().T @ samples).reshape(coils, *kspace.shape[:1], *kspace.shape[2:])
    return np.ascontiguousarray(compressed.transpose(1, 0, 2, 3).astype(np.complex64))


@torch.no_grad()
def reconstruct_volume(
    model: nn.Module, raw: KSpaceVolume, *, map_method: str = "lowres", coils: int | None = None
) -> np.ndarray:
    """Reconstructs every slice of raw k-space with coil maps estimated from its ACS lines.

    Returns the coil-combined magnitude ``[S, H, W]`` (float32) in the data's own intensity scale.
    """
    kspace = raw.kspace if coils is None else coil_compress(raw.kspace, coils)
    mask = torch.from_numpy(raw.mask).float()
    # Normalise like training: the zero-filled root-sum-of-squares image of the volume has maximum 1.
    rss = np.sqrt((np.abs(ifft2c_complex(torch.from_numpy(kspace)).numpy()) ** 2).sum(axis=1))
    peak = float(rss.max())
    if not math.isfinite(peak) or peak <= 0:
        raise DataError(f"{raw.source}: k-space holds no signal")
    model.eval()
    device = next(model.parameters()).device
    mask4 = mask.view(1, 1, 1, -1).to(device)
    images = []
    for slice_kspace in kspace:
        pairs = from_complex(torch.from_numpy(slice_kspace / peak))
        maps = estimate_coil_maps(pairs, mask, method=map_method)
        image = model(pairs[None].to(device) * mask4, mask4, maps[None].to(device))
        images.append(complex_abs(image)[0, 0].cpu() * peak)
    return torch.stack(images).numpy().astype(np.float32)
