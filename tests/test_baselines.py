from __future__ import annotations

import numpy as np
import pydicom.examples
import pytest
import torch

from edgesr import baselines
from edgesr.metrics import crop_border, psnr
from edgesr.physics.degrade import bicubic_upsample, crop_to_multiple, degrade
from edgesr.physics.fft import complex_abs
from edgesr.physics.simulate import simulate_multicoil


def _real_mr_slice() -> torch.Tensor:
    image = pydicom.examples.mr.pixel_array.astype(np.float32)
    return torch.from_numpy(image / image.max())


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_on_the_kspace_grid_beats_bicubic_on_the_wrong_grid(scale):
    hr = crop_to_multiple(_real_mr_slice()[None, None], scale)
    lr = degrade(hr, scale, "mr-kspace")
    right = baselines.sr_bicubic(lr, scale, "mr-kspace")
    wrong = bicubic_upsample(lr, scale)  # assumes the area grid
    ref = crop_border(hr, scale)
    assert (
        float(psnr(crop_border(right, scale), ref, 1.0))
        > float(psnr(crop_border(wrong, scale), ref, 1.0)) + 0.3
    )


def test_zero_fill_is_the_stronger_mr_baseline_at_x2():
    hr = crop_to_multiple(_real_mr_slice()[None, None], 2)
    lr = degrade(hr, 2, "mr-kspace")
    ref = crop_border(hr, 2)
    zero_fill = float(psnr(crop_border(baselines.sr_zero_fill(lr, 2), 2), ref, 1.0))
    bicubic = float(psnr(crop_border(baselines.sr_bicubic(lr, 2, "mr-kspace"), 2), ref, 1.0))
    assert zero_fill > bicubic


def test_recon_baselines_rank_as_expected_on_a_real_slice():
    sample = simulate_multicoil(_real_mr_slice(), acceleration=4, seed=3, n_coils=8, noise_std=0.0)
    args = (sample.kspace[None], sample.mask.view(1, 1, 1, -1), sample.sens_maps[None])
    reference = complex_abs(sample.target[None])
    scores = {}
    for name, method in (
        ("zero-filled", baselines.recon_zero_filled),
        ("cg-sense", baselines.recon_cg_sense),
        ("l1-wavelet", lambda *a: baselines.recon_l1_wavelet(*a, n_iter=30)),
    ):
        image = method(*args)
        assert image.shape == (1, 2, *reference.shape[-2:])
        scores[name] = float(psnr(complex_abs(image), reference, 1.0))
    assert scores["cg-sense"] > scores["zero-filled"] + 1.0
    assert scores["l1-wavelet"] > scores["zero-filled"] + 1.0
