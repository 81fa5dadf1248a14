"""The spectral check for MR images stored finer than they were acquired (edgesr.physics.spectrum)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgesr
from edgesr.data.images import load_image
from edgesr.data.sources import get_source
from edgesr.physics.degrade import zero_filled_reconstruction
from edgesr.physics.spectrum import interpolation_warning, spectral_cliffs


def _natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random image whose power falls as 1/f^2, as natural images' does, with a little white noise."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(height, width))
    spectrum = amplitude * (rng.normal(size=(height, width)) + 1j * rng.normal(size=(height, width)))
    image = np.real(np.fft.ifft2(spectrum))
    image = (image - image.min()) / np.ptp(image)
    return (image + rng.normal(0, 0.002, image.shape)).astype(np.float32)


def _interpolated(image: np.ndarray, acquired: tuple[float, float]) -> np.ndarray:
    """The image a console stores when it acquired only ``acquired`` of each k-space axis.

    As a real one: complex noise acquired with the signal (band-limited with it), the magnitude (whose
    non-linearity leaks power past the band) and 12-bit integers (a white floor).
    """
    rng = np.random.default_rng(1)
    noisy = image + rng.normal(0, 0.01, image.shape) + 1j * rng.normal(0, 0.01, image.shape)
    stored = zero_filled_reconstruction(torch.from_numpy(noisy.astype(np.complex64)), acquired).abs().numpy()
    return (np.round(stored / stored.max() * 4095) / 4095).astype(np.float32)


def _windowed(image: np.ndarray, window) -> np.ndarray:
    """The image through a k-space window (a reconstruction filter on a fully acquired matrix), 8-bit."""
    kspace = np.fft.fftshift(np.fft.fft2(image))
    filtered = np.abs(
        np.fft.ifft2(np.fft.ifftshift(kspace * np.outer(window(image.shape[0]), window(image.shape[1]))))
    )
    return np.round(filtered / filtered.max() * 255).astype(np.float32)


def test_a_natural_image_has_no_cliff_and_gets_no_warning():
    image = _natural_image(96, 80)
    assert spectral_cliffs(image) == (None, None)
    assert interpolation_warning(image) is None
    # Reconstruction filters on a fully acquired matrix are not interpolation.
    for window in (np.hanning, np.hamming):
        assert spectral_cliffs(_windowed(image, window)) == (None, None)


@pytest.mark.parametrize("name", ["colin27-t1", "heudiconv-b0dwi", "nibabel-epi", "heudiconv-bold-epi"])
def test_real_mr_at_its_own_resolution_gets_no_warning(name):
    """Real scans as stored, whole and slice by slice in every orientation (the thresholds' negatives)."""
    source = get_source(name)
    path = source.locate()
    if path is None:
        pytest.skip(f"{name} is not installed here (.ci/setup installs it)")
    volume = source.load(path).data
    assert spectral_cliffs(volume) == (None, None)
    for axis in range(3):
        slices = np.moveaxis(volume, axis, 0)
        for index in np.linspace(0, len(slices) - 1, 7).round().astype(int)[1:-1]:
            assert interpolation_warning(slices[index]) is None, f"{name}: axis {axis}, slice {index}"


def test_an_image_acquired_at_half_its_rows_shows_a_cliff_there_only():
    image = _interpolated(_natural_image(128, 112), (0.5, 1.0))
    height, width = spectral_cliffs(image)
    assert height is not None and width is None
    assert height.fraction == pytest.approx(0.5, abs=0.03)
    assert height.drop_decades >= 1.0  # a 10x drop, as the abdominal MR's 1.3 decades
    warning = interpolation_warning(image[None])
    assert warning is not None
    assert "along its height" in warning and "width" not in warning


def test_both_axes_and_a_volume_give_one_answer():
    slices = np.stack([_interpolated(_natural_image(64, 96, seed), (0.6, 0.4)) for seed in range(3)])
    height, width = spectral_cliffs(slices)
    assert height is not None and width is not None
    assert (height.fraction, width.fraction) == (pytest.approx(0.6, abs=0.04), pytest.approx(0.4, abs=0.04))


def test_a_roll_off_near_nyquist_or_a_short_axis_is_not_called_interpolation():
    # A reconstruction filter on a fully acquired matrix cuts near Nyquist: not an interpolation.
    assert spectral_cliffs(_interpolated(_natural_image(96, 96), (0.92, 0.92))) == (None, None)
    # 24 rows are too few bins to tell a cliff from the image's own decay.
    height, width = spectral_cliffs(_interpolated(_natural_image(24, 96), (0.5, 0.5)))
    assert height is None and width is not None


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((2, 3, 4, 5), dtype=np.float32), "shape"),
        (np.zeros((0, 8), dtype=np.float32), "shape"),
        (np.zeros((8, 8), dtype=np.complex64), "complex64"),
        (np.array([[np.nan, 1.0], [1.0, 1.0]], dtype=np.float32), "NaN"),
    ],
)
def test_bad_images_are_refused_by_name(images, match):
    with pytest.raises(ValueError, match=match):
        spectral_cliffs(images)


def test_the_enhancer_warns_about_interpolated_mr_only(tiny_checkpoint, ct_checkpoint):
    interpolated = _interpolated(_natural_image(64, 72), (0.45, 1.0))
    natural = _natural_image(64, 72)
    mr = edgesr.Enhancer.from_checkpoint(tiny_checkpoint, device="cpu")
    result = mr.enhance(interpolated)
    assert len(result.warnings) == 1 and "along its height" in result.warnings[0]
    assert mr.enhance(natural).warnings == ()
    # CT is not acquired in k-space: no such warning, whatever the spectrum.
    ct = edgesr.Enhancer.from_checkpoint(ct_checkpoint, device="cpu")
    assert ct.enhance(interpolated * 1000 - 500, units="hu").warnings == ()


def test_the_clinical_abdominal_mr_is_recognised_from_its_file():
    """The real Siemens file (256x134 acquired, 484x484 stored) as `edgesr enhance` reads it."""
    path = get_source("abdomen-mr").locate()
    if path is None:
        pytest.skip("pydicom-data is not installed (.ci/setup installs it)")
    height, width = spectral_cliffs(load_image(path).data)
    # Its header: 134 phase lines over 75 % of the field of view, 37 % of the stored rows.
    assert height is not None and height.fraction == pytest.approx(0.37, abs=0.03)
    assert width is None
    # The shoulder MR (50 % phase sampling) falls less steeply (0.88 decades): below the threshold.
    shoulder = get_source("shoulder-mr")
    assert spectral_cliffs(load_image(shoulder.locate()).data) == (None, None)
