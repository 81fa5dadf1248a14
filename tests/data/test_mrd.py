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


def _copy(acquisition, data=None, **idx):
    """The acquisition with other samples and/or other loop indices (contrast=1, average=1...)."""
    import ismrmrd

    head = acquisition.getHead()
    data = acquisition.data if data is None else np.ascontiguousarray(data, dtype=np.complex64)
    head.number_of_samples = data.shape[1]
    for name, value in idx.items():
        setattr(head.idx, name, value)
    return ismrmrd.Acquisition(head, data)


def test_averages_are_averaged_and_echoes_or_repetitions_are_never_written_over_each_other(tmp_path):
    import ismrmrd

    xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acceleration=1, acs=0, noise_level=0.0)
    noise, lines = acquisitions[:1], acquisitions[1:]
    single = edgesr.load_kspace(write_mrd_file(tmp_path / "one.h5", xml, acquisitions))
    # Two averages, the second at half the signal: the assembled lines are their mean.
    averages = [_copy(a, a.data * (1.0 if k == 0 else 0.5), average=k) for k in (0, 1) for a in lines]
    averaged = edgesr.load_kspace(write_mrd_file(tmp_path / "avg.h5", xml, noise + averages))
    np.testing.assert_allclose(averaged.kspace, 0.75 * single.kspace, rtol=1e-4, atol=1e-6)
    # Interleaved echoes, as scanners stream them: a file of one image per slice refuses them by name.
    echoes = [_copy(a, a.data * (1.0 if e == 0 else 0.5), contrast=e) for a in lines for e in (0, 1)]
    for echo in echoes[:-1]:
        echo.clear_flag(ismrmrd.ACQ_LAST_IN_SLICE)
    with pytest.raises(
        edgesr.DataError, match=r"echoes\.h5: holds 2 images per slice \(contrast 0; contrast 1\)"
    ):
        edgesr.load_kspace(write_mrd_file(tmp_path / "echoes.h5", xml, noise + echoes))


def test_an_asymmetric_echo_is_zero_filled_onto_the_encoded_readout(tmp_path):
    xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acceleration=1, acs=0, noise_level=0.0)
    full = edgesr.load_kspace(write_mrd_file(tmp_path / "full.h5", xml, acquisitions))
    # 48 encoded readout samples (2x oversampled), the first 12 not acquired: the echo at sample 12.
    partial = [acquisitions[0]] + [_copy(a, a.data[:, 12:]) for a in acquisitions[1:]]
    for acquisition in partial[1:]:
        acquisition.center_sample = 12
    echo = edgesr.load_kspace(write_mrd_file(tmp_path / "partial.h5", xml, partial))
    assert echo.kspace.shape == full.kspace.shape and echo.recon_shape == full.recon_shape

    def rss(kspace):
        coils = np.fft.fftshift(
            np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
        )
        return np.sqrt((np.abs(coils) ** 2).sum(0))

    # The same field of view, a little blurred along the readout (the unmeasured quarter is zero).
    assert np.corrcoef(rss(echo.kspace[0]).ravel(), rss(full.kspace[0]).ravel())[0, 1] > 0.97


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("<trajectory>cartesian</trajectory>", "<trajectory>radial</trajectory>"), "trajectory is radial"),
        (("<z>1</z></matrixSize>", "<z>4</z></matrixSize>"), "3-D k-space \\(4 partitions"),
    ],
)
def test_non_cartesian_and_3d_encodings_are_refused_by_name(tmp_path, change, named):
    xml, acquisitions = siemens_like_mrd(_phantom(), coils=2, acceleration=1, acs=0, noise_level=0.0)
    path = write_mrd_file(tmp_path / "odd.h5", xml.replace(*change, 1), acquisitions)
    with pytest.raises(edgesr.DataError, match=named):
        edgesr.load_kspace(path)
