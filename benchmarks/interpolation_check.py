"""Where the "stored finer than acquired" warning's threshold comes from (edgesr.physics.spectrum).

    .venv/bin/python benchmarks/interpolation_check.py [--root DIR]

For every case, the steepest fall of its spectrum (`steepest_falls`: mean power in a band 8 % of Nyquist
wide below a cut at 30-80 % of Nyquist over the band above it, in decades) on each in-plane axis:

* **negatives**, MR at its own resolution: the prepared data set's MR sources as stored (whole volumes,
  and a dozen single slices in each of the three orientations), their middle slices through a Hann or
  Hamming k-space window (a reconstruction filter on a fully acquired matrix, 8-bit), and through a
  Gaussian blur of 0.7-2 px (8-bit; from about 1.3 px such an image holds little detail near its grid's
  limit, and the warning's wording covers it);
* **positives**: the two clinical MR images stored finer than acquired (the abdominal and shoulder
  MR), and the middle slices of four sources through simulated interpolated reconstructions (complex
  noise, only a centred part of k-space kept per axis, with or without a Hamming raw-data filter,
  magnitude, 12-bit), acquired at 30-75 % of an axis.

Printed: the steepest negative, each positive, and the threshold's margin (`CLIFF_DECADES`). The
abdominal and shoulder MR are the external split's: they are reported, not tuned to (the threshold sits
below the negatives' maximum plus a margin; it is whatever catches them that it catches).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import numpy as np
from scipy.ndimage import gaussian_filter

from edgesr.data.dataset import open_or_prepare
from edgesr.physics.spectrum import CLIFF_DECADES, steepest_falls

NATIVE = ("colin27-t1", "mni152-t1", "heudiconv-b0dwi", "nibabel-epi", "heudiconv-bold-epi", "pydicom-mr")
STORED_FINER = ("abdomen-mr", "shoulder-mr")
SIMULATED_FROM = ("colin27-t1", "mni152-t1", "heudiconv-b0dwi", "nibabel-epi")
ACQUIRED = ((0.3, 1.0), (0.5, 1.0), (0.6, 0.6), (0.75, 1.0), (1.0, 0.45))


def _quantised(image: np.ndarray, bits: int) -> np.ndarray:
    return np.round(image / image.max() * (2**bits - 1))


def _through_kspace(image: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """|IFFT(FFT(image + complex noise) * weights)|: weights are centred on the k-space centre."""
    noise = 0.01 * image.max() * (rng.normal(size=image.shape) + 1j * rng.normal(size=image.shape))
    kspace = np.fft.fftshift(np.fft.fft2(image + noise))
    return np.abs(np.fft.ifft2(np.fft.ifftshift(kspace * weights)))


def _window(image: np.ndarray, window: Callable[[int], np.ndarray], rng: np.random.Generator) -> np.ndarray:
    weights = np.outer(window(image.shape[0]), window(image.shape[1]))
    return _quantised(_through_kspace(image, weights, rng), 8)


def _interpolated(
    image: np.ndarray, acquired: tuple[float, float], hamming: bool, rng: np.random.Generator
) -> np.ndarray:
    height, width = image.shape
    rows, cols = round(height * acquired[0]), round(width * acquired[1])
    weights = np.zeros((height, width))
    block = np.outer(np.hamming(rows), np.hamming(cols)) if hamming else np.ones((rows, cols))
    top, left = height // 2 - rows // 2, width // 2 - cols // 2
    weights[top : top + rows, left : left + cols] = block
    return _quantised(_through_kspace(image, weights, rng), 12)


def negatives(volumes: dict[str, np.ndarray], rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    for name in NATIVE:
        volume = volumes[name]
        yield f"{name}: volume", volume
        for axis in range(3):
            slices = np.moveaxis(volume, axis, 0)
            if min(slices.shape[1:]) < 32:
                continue
            for index in range(0, len(slices), max(1, len(slices) // 12)):
                if slices[index].max() > 0:
                    yield f"{name}: axis {axis} slice {index}", slices[index]
        middle = volume[len(volume) // 2]
        yield f"{name}: Hann window", _window(middle, np.hanning, rng)
        yield f"{name}: Hamming window", _window(middle, np.hamming, rng)
        for sigma in (0.7, 1.0, 1.3, 2.0):
            yield f"{name}: Gaussian {sigma} px", _quantised(gaussian_filter(middle, sigma), 8)


def positives(volumes: dict[str, np.ndarray], rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    for name in STORED_FINER:
        yield f"{name}: as stored", volumes[name]
    for name in SIMULATED_FROM:
        middle = volumes[name][len(volumes[name]) // 2]
        for acquired in ACQUIRED:
            for hamming in (False, True):
                filtered = ", Hamming" if hamming else ""
                label = f"{name}: acquired {acquired[0]:.0%} x {acquired[1]:.0%}{filtered}"
                yield label, _interpolated(middle, acquired, hamming, rng)


def steepest(images: np.ndarray) -> float:
    falls = [fall.drop_decades for fall in steepest_falls(images) if fall is not None]
    return max(falls, default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="", help="data cache folder (default: $EDGESR_DATA or ~/.cache)")
    args = parser.parse_args()
    dataset = open_or_prepare(args.root)
    names = sorted(set(NATIVE + STORED_FINER + SIMULATED_FROM))
    volumes = {name: dataset.load_volume(name).astype(np.float64) for name in names}
    rng = np.random.default_rng(0)
    scored_negatives = [(steepest(images), label) for label, images in negatives(volumes, rng)]
    print(f"data set fingerprint {dataset.fingerprint['id']}; threshold CLIFF_DECADES = {CLIFF_DECADES}")
    print(f"\nnegatives: {len(scored_negatives)} cases; the steepest:")
    for drop, label in sorted(scored_negatives, reverse=True)[:12]:
        print(f"  {drop:5.2f}  {'ABOVE ' if drop >= CLIFF_DECADES else ''}{label}")
    native = [drop for drop, label in scored_negatives if "Gaussian" not in label]
    print(f"  max without the Gaussian blurs: {max(native):.2f} (margin {CLIFF_DECADES - max(native):+.2f})")
    print("\npositives:")
    caught = 0
    for label, images in positives(volumes, rng):
        drop = steepest(images)
        caught += drop >= CLIFF_DECADES
        print(f"  {drop:5.2f}  {'flagged' if drop >= CLIFF_DECADES else 'missed '}  {label}")
    print(f"\n{caught} positives flagged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
