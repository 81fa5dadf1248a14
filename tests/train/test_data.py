"""Training batches with scanner variety (edgesr.train.data.ScannerVariety) and the noisy scan pair."""

from __future__ import annotations

import math

import pytest
import torch

from edgesr.config import parse_overrides
from edgesr.errors import ConfigError
from edgesr.physics.degrade import ct_degrade, kspace_truncate, noisy_scan_pair, suppress_background
from edgesr.train.config import TrainConfig
from edgesr.train.data import ScannerVariety, SRBatches, resample


def _batches(dataset, variety: ScannerVariety, degradation: str = "mr-kspace") -> SRBatches:
    return SRBatches(
        dataset, modality="MR", scale=2, degradation=degradation, upsampler="zero-fill", patch=8,
        batch_size=6, noise_max=0.01, variety=variety, seed=5,
    )  # fmt: skip


def test_variety_batches_are_reproducible_aligned_and_8bit_when_asked(tiny_dataset):
    variety = ScannerVariety(scan_noise=0.05, zoom=(0.7, 1.4), quantize_8bit=1.0, contrast_min=0.3)
    batches = _batches(tiny_dataset, variety)
    first, again = batches.batch(7), batches.batch(7)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert first.lr.shape == (6, 1, 8, 8) and first.hr.shape == first.base.shape == (6, 1, 16, 16)
    assert all(torch.isfinite(t).all() for t in first)
    # Every LR image was stored as 8 bits before cropping: at most 256 levels per sample.
    whole = batches.batch(7)
    for lr in whole.lr:
        assert torch.unique(lr).numel() <= 256
    # The variety changes what is drawn: other batches than without it.
    plain = _batches(tiny_dataset, ScannerVariety()).batch(7)
    assert not torch.equal(plain.hr, first.hr)


def test_the_default_variety_draws_nothing_so_older_runs_keep_their_batches(tiny_dataset):
    """A card's training command without the variety options must still build the same batches: the
    default variety leaves the image alone and takes no draw from the batch's generator."""
    batches = _batches(tiny_dataset, ScannerVariety())
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    image = torch.rand(20, 20)
    draw = batches._vary(image, g)
    assert draw.image is image and draw.scan_noise == 0 and draw.blur == 0.25 * 2 and not draw.quantize
    assert draw.background_below == 0
    assert torch.equal(g.get_state(), state)
    # Any variety draws (so it must be off by default).
    batches = _batches(tiny_dataset, ScannerVariety(quantize_8bit=0.5))
    batches._vary(image, g)
    assert not torch.equal(g.get_state(), state)


def test_resample_keeps_intensities_and_changes_the_grid():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 34), indexing="ij")
    image = torch.exp(-(yy**2 + xx**2) * 4)
    finer = resample(image, 1.5, "mr-kspace")
    coarser = resample(image, 0.5, "ct-blur")
    assert finer.shape == (60, 51) and coarser.shape == (20, 17)
    # A smooth image keeps its peak and mean intensity on another grid (units are not changed).
    for resized in (finer, coarser, resample(image, 0.6, "mr-kspace")):
        assert float(resized.max()) == pytest.approx(float(image.max()), rel=0.05)
        assert float(resized.mean()) == pytest.approx(float(image.mean()), rel=0.05)
    assert resample(image, 1.0, "mr-kspace") is image


def test_a_noiseless_scan_pair_is_the_plain_degradation_and_noise_is_shared():
    hr = torch.rand(1, 1, 24, 20) + 0.5
    for kind, plain in (("mr-kspace", kspace_truncate(hr, 2)), ("ct-blur", ct_degrade(hr, 2))):
        same_hr, lr = noisy_scan_pair(hr, 2, kind, scan_noise=0.0)
        torch.testing.assert_close(same_hr, hr)
        torch.testing.assert_close(lr, plain)
    # MR: a Rician magnitude (E|1 + n|^2 = 1 + sigma^2), and the LR image is the protocol's degradation
    # of that noisy magnitude, noise floor included: the same mean as the HR scan.
    flat = torch.ones(1, 1, 64, 64)
    noisy_hr, noisy_lr = noisy_scan_pair(
        flat, 2, "mr-kspace", scan_noise=0.2, generator=torch.Generator().manual_seed(0)
    )
    assert float(noisy_hr.pow(2).mean()) == pytest.approx(1 + 0.2**2, rel=0.02)
    torch.testing.assert_close(noisy_lr, kspace_truncate(noisy_hr, 2))
    background = noisy_scan_pair(torch.zeros(1, 1, 64, 64), 2, "mr-kspace", scan_noise=0.2)[0]
    assert float(background.mean()) == pytest.approx(0.2 * math.sqrt(math.pi) / 2, rel=0.05)  # Rayleigh


def test_variety_options_are_checked_as_data_keys():
    cfg = parse_overrides(
        TrainConfig,
        ["data.scan_noise=0.02", "data.zoom=[0.6,1.4]", "data.quantize_8bit=0.2", "data.background_zero=0.5"],
    )
    assert cfg.data.variety == ScannerVariety(
        scan_noise=0.02, zoom=(0.6, 1.4), quantize_8bit=0.2, background_zero=0.5
    )
    for bad, message in (
        ("data.zoom=[1.5,1.0]", "data.zoom must be a range"),
        ("data.quantize_8bit=2", "data.quantize_8bit is a probability"),
        ("data.blur_jitter=1", "data.blur_jitter must be in"),
        ("data.contrast_min=0", "data.contrast_min must be in"),
        ("data.background_zero=-0.1", "data.background_zero is a probability"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_overrides(TrainConfig, [bad])


def _disc_with_a_dark_hole() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(40.0), indexing="ij")
    radius = ((yy - 24) ** 2 + (xx - 20) ** 2).sqrt()
    image = torch.where(radius < 14, 0.8, 0.01)  # an object on a faint background
    image[radius < 4] = 0.0  # a dark hole inside it (a ventricle, air in the bowel)
    return image[None, None]


def test_suppressed_background_is_zero_outside_the_outline_and_keeps_holes():
    image = _disc_with_a_dark_hole()
    out = suppress_background(image, 0.1)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(40.0), indexing="ij")
    radius = ((yy - 24) ** 2 + (xx - 20) ** 2).sqrt()
    assert torch.all(out[0, 0][radius > 20] == 0)  # the faint background is gone (a smooth outline)
    assert torch.equal(out[0, 0][radius < 12], image[0, 0][radius < 12])  # the object and its hole stay
    with pytest.raises(ValueError, match="background_below must be in"):
        suppress_background(image, 1.5)


def test_a_masked_scan_pair_degrades_the_masked_noisy_scan():
    image = _disc_with_a_dark_hole()
    hr, lr = noisy_scan_pair(
        image, 2, "mr-kspace", scan_noise=0.02, background_below=0.1,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    assert float((hr == 0).float().mean()) > 0.4  # noise floor and background zeroed together
    torch.testing.assert_close(lr, kspace_truncate(hr, 2))


def test_background_variety_masks_some_samples_and_only_draws_when_asked(tiny_dataset):
    g = torch.Generator().manual_seed(4)
    batches = _batches(tiny_dataset, ScannerVariety(background_zero=1.0))
    levels = [batches._vary(torch.rand(20, 20), g).background_below for _ in range(20)]
    assert all(0.05 <= level <= 0.35 for level in levels)
    never = _batches(tiny_dataset, ScannerVariety(background_zero=0.0, quantize_8bit=0.5))
    assert never._vary(torch.rand(20, 20), g).background_below == 0


def test_an_interpolated_reconstruction_has_nothing_above_what_was_acquired():
    """A scan that acquired no more than the LR's share of k-space holds nothing an SR model could add:
    zero-fill of its LR image is the scan itself; a full acquisition is not."""
    from edgesr.metrics import psnr
    from edgesr.physics.degrade import gaussian_blur, zero_fill_upsample

    # Tissue-like: positive everywhere (a magnitude far from zero), with detail at every scale.
    texture = torch.rand(1, 1, 48, 40, generator=torch.Generator().manual_seed(6))
    image = 0.5 + 0.5 * texture * gaussian_blur(texture, 1.0)
    # 0.45, not 0.5: an even-sized k-space truncated to exactly half keeps an unpaired Nyquist line.
    for acquired, far, near in (((1.0, 1.0), 0, 30), ((0.45, 0.45), 60, 200)):
        hr, lr = noisy_scan_pair(image, 2, "mr-kspace", scan_noise=0.0, acquired=acquired)
        gap = float(psnr(zero_fill_upsample(lr, 2), hr))
        assert far <= gap < near, f"acquired {acquired}: zero-fill at {gap:.1f} dB"
    # One axis only (a 134-line phase encoding): the other keeps its detail.
    hr, _ = noisy_scan_pair(image, 2, "mr-kspace", scan_noise=0.0, acquired=(0.3, 1.0))
    rows, cols = hr.diff(dim=-2).abs().mean(), hr.diff(dim=-1).abs().mean()
    assert rows < 0.5 * cols
    with pytest.raises(ValueError, match="MR k-space acquisition"):
        noisy_scan_pair(image, 2, "ct-blur", scan_noise=0.0, acquired=(0.5, 0.5))


def test_interpolated_variety_draws_only_when_asked_and_only_for_mr(tiny_dataset):
    g = torch.Generator().manual_seed(8)
    batches = _batches(tiny_dataset, ScannerVariety(interpolated_recon=1.0))
    drawn = [batches._vary(torch.rand(20, 20), g).acquired for _ in range(20)]
    assert all(0.25 <= fraction <= 1.0 for pair in drawn for fraction in pair)
    assert len(set(drawn)) == 20
    never = _batches(tiny_dataset, ScannerVariety(background_zero=0.5))
    assert never._vary(torch.rand(20, 20), g).acquired == (1.0, 1.0)
    batch = batches.batch(3)
    assert batch.hr.shape[-1] == 2 * batch.lr.shape[-1] and torch.isfinite(batch.hr).all()
    cfg = parse_overrides(TrainConfig, ["data.interpolated_recon=0.3"])
    assert cfg.data.variety.interpolated_recon == 0.3
    with pytest.raises(ConfigError, match="data.interpolated_recon: an MR k-space acquisition option"):
        parse_overrides(TrainConfig, ["data.interpolated_recon=0.3", "data.modality=CT"])
    with pytest.raises(ConfigError, match="data.interpolated_recon is a probability"):
        parse_overrides(TrainConfig, ["data.interpolated_recon=1.5"])
