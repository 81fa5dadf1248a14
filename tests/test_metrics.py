from __future__ import annotations

import numpy as np
import pydicom
import pydicom.examples
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from edgesr.metrics import crop_border, gradient_energy_ratio, hfen, nmse, psnr, ssim


def _real_slices() -> list[np.ndarray]:
    """Real CT and MR slices shipped with pydicom, normalised by their maximum."""
    slices = []
    for ds in (pydicom.examples.ct, pydicom.examples.mr):
        image = ds.pixel_array.astype(np.float64)
        slices.append(image / image.max())
    return slices


def _degraded(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blurred = (image + np.roll(image, 1, 0) + np.roll(image, 1, 1)) / 3
    return np.clip(blurred + 0.02 * rng.standard_normal(image.shape), 0, None)


@pytest.mark.parametrize("index", [0, 1])
def test_psnr_and_ssim_match_scikit_image_on_real_slices(index):
    reference = _real_slices()[index]
    degraded = _degraded(reference, seed=index)
    data_range = float(reference.max())
    ref_t = torch.from_numpy(reference).float()[None, None]
    deg_t = torch.from_numpy(degraded).float()[None, None]
    expected_psnr = peak_signal_noise_ratio(reference, degraded, data_range=data_range)
    expected_ssim = structural_similarity(
        reference,
        degraded,
        data_range=data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert float(psnr(deg_t, ref_t, data_range)) == pytest.approx(expected_psnr, abs=1e-4)
    assert float(ssim(deg_t, ref_t, data_range)) == pytest.approx(expected_ssim, abs=1e-4)


def test_metrics_are_batched_with_per_item_data_range():
    a, b = _real_slices()[1], _degraded(_real_slices()[1], 3)
    ref = torch.from_numpy(np.stack([a, 2 * a])).float()[:, None]
    pred = torch.from_numpy(np.stack([b, 2 * b])).float()[:, None]
    values = psnr(pred, ref)
    assert values.shape == (2,)
    assert float(values[0]) == pytest.approx(float(values[1]), abs=1e-4)  # scale invariant with its own max
    ssim_values = ssim(pred, ref, torch.tensor([1.0, 2.0]))
    assert float(ssim_values[0]) == pytest.approx(float(ssim_values[1]), abs=1e-5)


def test_ssim_is_differentiable_and_one_for_identical_images():
    ref = torch.from_numpy(_real_slices()[1]).float()[None, None]
    pred = ref.clone().requires_grad_(True)
    value = ssim(pred, ref, 1.0)
    assert float(value.detach()) == pytest.approx(1.0, abs=1e-6)
    (1 - value.sum()).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_nmse_and_crop_border():
    ref = torch.ones(1, 1, 8, 8)
    assert float(nmse(ref * 1.1, ref)) == pytest.approx(0.01, rel=1e-5)
    assert crop_border(torch.zeros(1, 1, 10, 12), 2).shape == (1, 1, 6, 8)


def test_metric_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 8\).*\(1, 1, 8, 9\)"):
        psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_hfen_matches_scipy_laplacian_of_gaussian():
    from scipy.ndimage import gaussian_laplace

    reference = _real_slices()[1]
    degraded = _degraded(reference, seed=5)
    r = 7  # keep only positions where the 15x15 filter lies inside the image
    log_ref = gaussian_laplace(reference, 1.5, truncate=r / 1.5)[r:-r, r:-r]
    log_deg = gaussian_laplace(degraded, 1.5, truncate=r / 1.5)[r:-r, r:-r]
    expected = np.linalg.norm(log_deg - log_ref) / np.linalg.norm(log_ref)
    value = hfen(torch.from_numpy(degraded)[None, None], torch.from_numpy(reference)[None, None])
    assert float(value) == pytest.approx(expected, rel=1e-6)
    same = torch.from_numpy(reference)[None, None]
    assert float(hfen(same, same)) == 0.0


def test_gradient_energy_ratio_tells_smoothing_from_sharpening():
    from scipy.ndimage import gaussian_filter

    reference = _real_slices()[1]
    ref = torch.from_numpy(reference)[None, None]
    blurred = torch.from_numpy(gaussian_filter(reference, 1.0))[None, None]
    noisy = ref + 0.05 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=ref.dtype)
    assert float(gradient_energy_ratio(ref, ref)) == pytest.approx(1.0)
    assert float(gradient_energy_ratio(blurred, ref)) < 0.8
    assert float(gradient_energy_ratio(noisy, ref)) > 1.2

    def energy(image: np.ndarray) -> float:  # forward differences over the common interior
        return float((np.diff(image, axis=0)[:, :-1] ** 2 + np.diff(image, axis=1)[:-1, :] ** 2).sum())

    expected = energy(gaussian_filter(reference, 1.0)) / energy(reference)
    assert float(gradient_energy_ratio(blurred, ref)) == pytest.approx(expected, rel=1e-6)
