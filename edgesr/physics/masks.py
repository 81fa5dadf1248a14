"""Cartesian phase-encode undersampling masks with a fully sampled centre (ACS), seeded.

Phase encoding runs along the last axis (columns), as in fastMRI: a mask of shape ``[W]`` selects
whole k-space columns, broadcast over the readout rows.
"""

from __future__ import annotations

import numpy as np
import torch

MASK_KINDS = ("random", "equispaced")


def acs_indices(width: int, center_fraction: float, min_lines: int = 0) -> np.ndarray:
    """Indices of the fully sampled central columns (auto-calibration signal), centred on ``width // 2``:
    ``center_fraction`` of the columns, and at least ``min_lines`` of them (at most all)."""
    if not 0.0 < center_fraction <= 1.0:
        raise ValueError(f"center_fraction must lie in (0, 1]; got {center_fraction}")
    if min_lines < 0:
        raise ValueError(f"min_lines must be >= 0; got {min_lines}")
    num_acs = min(width, max(1, min_lines, int(round(width * center_fraction))))
    start = width // 2 - num_acs // 2
    return np.arange(start, start + num_acs)


def cartesian_mask(
    width: int,
    acceleration: float,
    *,
    center_fraction: float = 0.08,
    min_acs_lines: int = 0,
    kind: str = "random",
    seed: int = 0,
) -> torch.Tensor:
    """A 1-D Cartesian undersampling mask over ``width`` phase-encode lines.

    Both kinds sample ``round(width / acceleration)`` lines in total (ACS included), so the effective
    acceleration is ``acceleration`` up to rounding, unlike masks that add the ACS on top.

    Args:
        width: number of phase-encode lines (k-space columns).
        acceleration: undersampling factor R >= 1 (R = 4 keeps a quarter of the lines).
        center_fraction: fraction of lines in the fully sampled centre.
        min_acs_lines: the fewest lines of the fully sampled centre. Scanners calibrate from a fixed
            number of reference lines (often 24) rather than a fraction, so a small matrix keeps enough
            to estimate coil maps from; the ACS then takes a larger share of the ``width / R`` lines.
        kind: ``"random"`` (uniformly drawn outer lines) or ``"equispaced"`` (every R'-th outer line,
            R' adjusted for the ACS, with a seeded offset).
        seed: seeds the random lines or the equispaced offset; the same seed gives the same mask.

    Returns:
        float32 tensor ``[width]`` with 1 at sampled lines.

    Example:
        >>> mask = cartesian_mask(368, 4, center_fraction=0.08, kind="equispaced", seed=1)
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}; got {kind!r}")
    if not 1.0 <= acceleration <= width:
        raise ValueError(f"acceleration must lie in [1, width={width}]; got {acceleration}")
    rng = np.random.default_rng(seed)
    acs = acs_indices(width, center_fraction, min_acs_lines)
    n_total = max(len(acs), int(round(width / acceleration)))
    n_outer = n_total - len(acs)
    mask = np.zeros(width, dtype=bool)
    mask[acs] = True
    outer = np.flatnonzero(~mask)
    if n_outer > 0:
        if kind == "random":
            mask[rng.choice(outer, size=n_outer, replace=False)] = True
        else:
            # Spread n_outer lines evenly over the outer region, then shift by a seeded offset.
            step = len(outer) / n_outer
            offset = rng.uniform(0, step)
            picks = np.floor(offset + step * np.arange(n_outer)).astype(int)
            mask[outer[np.clip(picks, 0, len(outer) - 1)]] = True
    return torch.from_numpy(mask.astype(np.float32))
