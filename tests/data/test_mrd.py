"""MRD acquisitions as a Siemens scanner writes them: oversampled readout, noise scan, calibration lines."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import edgesr
from edgesr.cli import main
from edgesr.data.mrd import noise_whitener, remove_readout_oversampling
from edgesr.models import create_model
from tests.conftest import save_model, siemens_like_mrd, write_mrd_file


def _phantom(height: int = 24, width: int = 20) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    return (((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1) * (1.0 + 0.5 * (yy > 0.2))).astype(np.float32) * 300


def test_the_file_is_assembled_on_the_recon_grid_without_oversampling(tmp_path):
    image = _phantom()
    xml, acquisitions = siemens_like_mrd(image, coils=4, acceleration=1, acs=0, noise_level=0.0)
    volume = edgesr.load_kspace(write_mrd_file(tmp_path / "full.h5", xml, acquisitions))
    assert volume.kspace.shape == (1, 4, 24, 20)  # 48 oversampled readout samples -> 24
    assert volume.recon_shape == (24, 20) and volume.mask.sum() == 20
    assert not volume.prewhitened  # a noise scan of zeros has no covariance: said, not guessed
    assert volume.spacing == pytest.approx((5.0, 220 / 24, 220 / 20))
    coils = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(volume.kspace[0], axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    rss = np.sqrt((np.abs(coils) ** 2).sum(0))  # the simulated maps have sum |S|^2 = 1
    np.testing.assert_allclose(rss, image, atol=1e-3 * image.max())


def test_noise_scans_whiten_the_coils():
    rng = np.random.default_rng(0)
    mixing = np.eye(4) + 0.4 * rng.standard_normal((4, 4))
    noise = (mixing @ (rng.standard_normal((4, 20000)) + 1j * rng.standard_normal((4, 20000)))).astype(
        np.complex64
    )
    whitener = noise_whitener([noise[:, :10000], noise[:, 10000:]])
    assert whitener is not None
    white = whitener @ noise
    np.testing.assert_allclose(white @ white.conj().T / white.shape[1], np.eye(4), atol=0.05)
    assert noise_whitener([np.ones((4, 100), dtype=np.complex64)]) is None  # singular: no whitening
    assert noise_whitener([noise[:, :3]]) is None  # fewer samples than coils


def test_readout_oversampling_removal_keeps_the_centre_of_the_field_of_view():
    rng = np.random.default_rng(1)
    image = np.zeros((2, 16, 6), dtype=np.complex64)
    image[:, 4:12] = rng.standard_normal((2, 8, 6)) + 1j * rng.standard_normal((2, 8, 6))
    kspace = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(image, axes=1), axis=1, norm="ortho"), axes=1)
    cropped = remove_readout_oversampling(kspace, 8)
    back = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(cropped, axes=1), axis=1, norm="ortho"), axes=1)
    np.testing.assert_allclose(back, image[:, 4:12], atol=1e-5)


def test_enhance_writes_the_recon_space_with_its_voxel_size(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_model(tmp_path / "modl", create_model("modl_tiny"), "modl_tiny", {})
    xml, acquisitions = siemens_like_mrd(_phantom(32, 24), coils=4, acs=8, slices=2)
    raw = write_mrd_file(tmp_path / "raw.h5", xml, acquisitions)
    out = tmp_path / "recon.nii.gz"
    assert main(["enhance", f"checkpoint={checkpoint}", f"input={raw}", f"output={out}"]) == 0
    assert "prewhitened with the noise scans" in capsys.readouterr().err
    written = nib.load(out)
    assert written.shape == (32, 24, 2)
    assert written.header.get_zooms() == pytest.approx((220 / 32, 220 / 24, 5.0), rel=1e-4)
    # Slices 5 mm apart along the slice direction (+z, LPS and RAS alike).
    np.testing.assert_allclose(written.affine[:3, 2], [0.0, 0.0, 5.0], atol=1e-6)
