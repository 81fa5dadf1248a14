"""Reading an MR image's spectrum: does it hold detail up to its pixel grid's limit?

Most clinical MR DICOM is stored finer than acquired: a phase resolution below 100 %, a rectangular
field of view, or the console's interpolation (zero-filling k-space to a larger matrix). Above the
acquired resolution such an image holds nothing but noise and quantisation, so a super-resolution model
has no detail to recover there, and what it adds is error: on the external split's abdominal MR
(acquired 256x134, stored 484x484) every MR teacher scored below plain zero-filling (README, "Teachers
on other scanners"). A heavily smoothed image is in the same state.

The stored image shows it: its spectrum along such an axis falls steeply at the acquired fraction of
Nyquist. This module looks for that fall: the mean power in a band 8 % of Nyquist wide just below a cut
against the band just above it, for cuts from 30 % to 80 % of Nyquist. It is written here rather than
taken from a library because none does this check; it needs only numpy's FFT.

Thresholds, measured by ``python benchmarks/interpolation_check.py`` (data set 9d0a538c0b2d7ffc, 205
negative cases): the MR sources as stored (Colin27, MNI152, the b=0 and BOLD EPI, nibabel's EPI,
pydicom's 64x64 slice), whole volumes and single slices in all three orientations, and their middle
slices through a Hann or Hamming k-space window (8-bit), fall by at most 0.75 decades across any such
cut; Gaussian smoothing does too up to sigma 1 px (0.84) but not from 1.3 px (up to 1.03; 2 px: 1.17-1.45),
where the image indeed holds little detail near its grid's limit. ``CLIFF_DECADES = 0.9`` (a power drop
of 8x). It flags the abdominal MR (1.31 decades at 36 % of Nyquist; its header: 134 phase lines over 75 %
of the field of view, 37 % of the 484 rows) and 33 of 40 simulated interpolated reconstructions of real
slices (acquired at 30-75 % of an axis, with or without a Hamming raw-data filter), and misses the
subtler ones: the 1024x1024 shoulder MR (50 % phase sampling, 0.88 decades at 48 %; the MR models gained
nothing there and lost nothing either), interpolations from 75 % through a Hamming filter (0.60-0.86),
and the smooth MNI template's at 60-75 %. Cuts below 30 % are not searched (single slices fall by up to
0.87 decades there, on the image's own low-frequency lobe), nor above 80 % (a reconstruction filter on a
fully acquired matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIFF_DECADES = 0.9
SEARCH_FROM, SEARCH_TO = 0.30, 0.80  # fractions of Nyquist where a cut is looked for
BAND = 0.08  # width of the bands compared on either side of a cut (fraction of Nyquist)
MIN_SIZE = 32  # shorter axes give too few frequency bins to tell a fall from the image's own decay
MAX_PIXELS = 1 << 22  # pixels read for each axis's spectrum: 64 MB of complex128


@dataclass(frozen=True)
class SpectralCliff:
    """Where an axis's spectrum falls steeply: its resolved band, as a fraction of Nyquist."""

    fraction: float  # of Nyquist: the stored matrix times this is about the resolved (acquired) one
    drop_decades: float  # log10 of the mean power just below the cut over just above it


def spectral_cliffs(images: np.ndarray) -> tuple[SpectralCliff | None, SpectralCliff | None]:
    """The steep fall of an image volume's spectrum along its height and its width, or None per axis.

    A fall counts from ``CLIFF_DECADES``; :func:`steepest_falls` gives the steepest whatever its size.

    Raises:
        ValueError: ``images`` is empty, complex, of another shape or holds NaN/Inf.
    """
    height, width = steepest_falls(images)
    return _steep(height), _steep(width)


def _steep(fall: SpectralCliff | None) -> SpectralCliff | None:
    return fall if fall is not None and fall.drop_decades >= CLIFF_DECADES else None


def steepest_falls(images: np.ndarray) -> tuple[SpectralCliff | None, SpectralCliff | None]:
    """The steepest fall of an image volume's spectrum along its height and its width.

    ``images`` is ``[H, W]`` or ``[S, H, W]`` (real, finite); the power spectrum along each axis is
    averaged over the other axis and the slices, so one volume gives one answer. Large volumes are read
    at evenly spaced slices and lines, at most ``MAX_PIXELS`` per axis (memory stays bounded). None for
    an axis shorter than ``MIN_SIZE``.

    Raises:
        ValueError: ``images`` is empty, complex, of another shape or holds NaN/Inf.
    """
    values = np.asarray(images)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3 or values.size == 0 or values.dtype.kind not in "iuf":
        raise ValueError(
            f"images must be real [H, W] or [S, H, W]; got {values.dtype} of shape {np.shape(images)}"
        )
    if not np.isfinite(values).all():
        raise ValueError("images holds NaN/Inf values")
    return _axis_fall(values, axis=1), _axis_fall(values, axis=2)


def _evenly(count: int, keep: int) -> np.ndarray:
    return np.linspace(0, count - 1, max(1, min(count, keep))).round().astype(int)


def _axis_fall(values: np.ndarray, axis: int) -> SpectralCliff | None:
    count, height, width = values.shape
    size, across = (height, width) if axis == 1 else (width, height)
    if size < MIN_SIZE:
        return None
    # Slices and lines across the axis are averaged over: a subset of each gives the same spectrum.
    slices = _evenly(count, MAX_PIXELS // (height * width))
    lines = _evenly(across, MAX_PIXELS // (len(slices) * size))
    subset = values[slices][:, :, lines] if axis == 1 else values[slices][:, lines, :]
    power = (np.abs(np.fft.fft(subset.astype(np.float64), axis=axis)) ** 2).mean(axis=(0, 3 - axis))
    frequency = np.abs(np.fft.fftfreq(size)) * 2  # fraction of Nyquist, both signs folded
    # A floor keeps an exactly band-limited image (zeros above: a perfect fall) finite.
    floor = 1e-12 * float(power.max()) + 1e-30
    best: SpectralCliff | None = None
    for cut in np.arange(SEARCH_FROM, SEARCH_TO + 1e-9, 1.0 / size):
        below = power[(frequency >= cut - BAND) & (frequency < cut)]
        above = power[(frequency >= cut) & (frequency < cut + BAND)]
        if below.size == 0 or above.size == 0:
            continue
        drop = float(np.log10((below.mean() + floor) / (above.mean() + floor)))
        if best is None or drop > best.drop_decades:
            best = SpectralCliff(round(float(cut), 3), round(drop, 2))
    return best


def interpolation_warning(images: np.ndarray) -> str | None:
    """A user-facing warning when an MR image holds little detail near its grid's limit, else None.

    The text names no file (it may go into DICOM headers); callers that print it say which input.
    """
    height, width = spectral_cliffs(images)
    found = [(name, cliff) for name, cliff in (("height", height), ("width", width)) if cliff is not None]
    if not found:
        return None
    where = "; ".join(
        f"along its {name} the spectrum drops {10**cliff.drop_decades:.0f}x at {cliff.fraction:.0%} of "
        "Nyquist"
        for name, cliff in found
    )
    return (
        f"this MR image looks reconstructed on a finer grid than it was acquired, or smoothed ({where}): "
        "above that it holds little detail to recover. On such a scan (acquired 256x134, stored "
        "484x484) the MR models scored below plain zero-filling. Check the result against plain "
        "interpolation."
    )
