from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgesr.physics.degrade import (
    bicubic_upsample,
    crop_to_multiple,
    ct_degrade,
    degrade,
    kspace_truncate,
    lr_grid_offset,
    zero_fill_upsample,
)


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 1, height, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _numpy_truncation(img: np.ndarray, scale: int) -> np.ndarray:
    """The protocol written directly in numpy: centered ortho FFT, central crop, inverse, / s, |.|."""
    height, width = img.shape
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img), norm="ortho"))
    h, w = height // scale, width // scale
    top, left = height // 2 - h // 2, width // 2 - w // 2
    small = k[top : top + h, left : left + w]
    return np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(small), norm="ortho"))) / scale


@pytest.mark.parametrize(("height", "width", "scale"), [(36, 30, 2), (39, 33, 3), (44, 28, 4), (74, 62, 2)])
def test_kspace_truncation_matches_numpy(height, width, scale):
    hr = _image(height, width)
    lr = kspace_truncate(hr, scale)
    assert lr.shape == (1, 1, height // scale, width // scale)
    np.testing.assert_allclose(lr[0, 0].numpy(), _numpy_truncation(hr[0, 0].numpy(), scale), atol=1e-5)


def test_kspace_truncation_keeps_intensity_units():
    hr = torch.full((1, 1, 40, 30), 3.0)
    torch.testing.assert_close(kspace_truncate(hr, 2), torch.full((1, 1, 20, 15), 3.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_truncation_undoes_zero_fill(scale):
    # Odd LR sizes keep the padded spectrum Hermitian, so the zero-fill of a positive image is real and
    # positive: truncating it again must give the LR image back exactly (same centring convention).
    low = _image(13, 9, seed=2) + 2.0
    upsampled = zero_fill_upsample(low, scale)
    assert upsampled.shape == (1, 1, 13 * scale, 9 * scale)
    torch.testing.assert_close(kspace_truncate(upsampled, scale), low, atol=1e-5, rtol=0)


def test_non_divisible_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"37x31 is not divisible by scale 2"):
        kspace_truncate(torch.zeros(1, 1, 37, 31), 2)
    with pytest.raises(ValueError, match="scale must be one of"):
        kspace_truncate(torch.zeros(1, 1, 40, 40), 5)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ct_degrade(torch.zeros(40, 40), 2)


def test_crop_to_multiple_is_centred():
    x = torch.arange(37 * 31, dtype=torch.float32).view(1, 1, 37, 31)
    cropped = crop_to_multiple(x, 4)
    assert cropped.shape == (1, 1, 36, 28)
    torch.testing.assert_close(cropped, x[..., 0:36, 1:29])


def test_noise_is_seeded():
    hr = _image(40, 40)
    a = kspace_truncate(hr, 2, noise_std=0.05, generator=torch.Generator().manual_seed(1))
    b = kspace_truncate(hr, 2, noise_std=0.05, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, kspace_truncate(hr, 2))


def test_ct_degradation_is_blur_then_area_average():
    hr = _image(36, 30)
    lr = ct_degrade(hr, 3, blur_sigma=0.0)
    torch.testing.assert_close(lr, F.avg_pool2d(hr, 3))
    assert ct_degrade(hr, 3).shape == (1, 1, 12, 10)
    assert degrade(hr, 3, "bicubic").shape == (1, 1, 12, 10)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_upsample_default_grid_equals_torch_interpolate(scale):
    lr = _image(13, 9).float()
    expected = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(bicubic_upsample(lr, scale), expected, atol=1e-5, rtol=0)


def test_kspace_grid_offset_places_lr_pixels_on_hr_pixels():
    # A smooth ramp survives truncation nearly unchanged on the k-space grid: LR pixel j = HR pixel off + s*j.
    height, width, scale = 64, 48, 2
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    hr = torch.cos(2 * np.pi * (yy / height)) + torch.sin(2 * np.pi * (2 * xx / width)) + 3.0
    lr = kspace_truncate(hr[None, None].float(), scale)
    oy, ox = lr_grid_offset("mr-kspace", height, scale), lr_grid_offset("mr-kspace", width, scale)
    torch.testing.assert_close(lr[0, 0], hr[int(oy) :: scale, int(ox) :: scale].float(), atol=1e-4, rtol=0)
    assert lr_grid_offset("ct-blur", height, 4) == 1.5
