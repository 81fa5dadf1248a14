from __future__ import annotations

import h5py
import ismrmrd
import numpy as np
import pytest
import torch

from edgesr.data.kspace import load_fastmri, load_ismrmrd, load_kspace
from edgesr.errors import DataError
from edgesr.physics.fft import to_complex
from edgesr.physics.simulate import simulate_multicoil
from tests.fuzz.conftest import ismrmrd_header


def _simulated_kspace(
    slices: int = 2, height: int = 37, width: int = 31, coils: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    kspace, mask = [], None
    for s in range(slices):
        image = torch.from_numpy(rng.random((height, width)).astype(np.float32))
        sample = simulate_multicoil(image, acceleration=3, seed=s, n_coils=coils, center_fraction=0.2)
        kspace.append(to_complex(sample.kspace).numpy())
        mask = sample.mask.numpy()
    return np.stack(kspace), mask  # masks are seeded per slice; the last one is enough for the header test


def test_fastmri_file_round_trip(tmp_path):
    kspace, _ = _simulated_kspace()
    path = tmp_path / "file1000.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("reconstruction_rss", data=np.ones((2, 20, 20), dtype=np.float32))
        f.attrs["ismrmrd_header"] = "<ismrmrdHeader/>"
    loaded = load_kspace(path)
    assert loaded.format == "fastmri"
    np.testing.assert_array_equal(loaded.kspace, kspace)
    expected_mask = (np.abs(kspace).reshape(-1, kspace.shape[-1]).max(axis=0) > 0).astype(np.float32)
    np.testing.assert_array_equal(loaded.mask, expected_mask)
    assert loaded.reference is not None and loaded.header == "<ismrmrdHeader/>"


def test_single_coil_fastmri_gets_a_coil_axis(tmp_path):
    path = tmp_path / "single.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.ones((3, 8, 6), dtype=np.complex64))
        f.create_dataset("mask", data=np.ones(6, dtype=bool))
    assert load_fastmri(path).kspace.shape == (3, 1, 8, 6)


def test_hdf5_without_kspace_names_file_and_contents(tmp_path):
    path = tmp_path / "nokspace.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"nokspace\.h5: no 'kspace' dataset \(found: image\)"):
        load_kspace(path)


def test_real_valued_or_corrupt_hdf5_is_rejected(tmp_path):
    path = tmp_path / "real.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.zeros((1, 2, 4, 4), dtype=np.float32))
    with pytest.raises(DataError, match="must be complex"):
        load_kspace(path)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not an hdf5 file")
    with pytest.raises(DataError, match="broken.h5"):
        load_kspace(broken)


def _write_ismrmrd(path, kspace: np.ndarray, sampled: np.ndarray) -> None:
    """Writes [S, C, H, W] k-space as one ISMRMRD acquisition per sampled phase-encode line."""
    slices, coils, readout, n_pe = kspace.shape
    xml = ismrmrd_header(readout, n_pe, slices, center=n_pe // 2)
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dataset.write_xml_header(xml)
    noise = ismrmrd.Acquisition.from_array(np.ones((coils, readout), dtype=np.complex64))
    noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    dataset.append_acquisition(noise)
    for s in range(slices):
        for line in np.flatnonzero(sampled):
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(kspace[s, :, :, line]))
            acq.idx.kspace_encode_step_1 = int(line)
            acq.idx.slice = s
            dataset.append_acquisition(acq)
    dataset.close()


def test_ismrmrd_file_is_assembled_on_the_encoded_grid(tmp_path):
    kspace, _ = _simulated_kspace(slices=2, coils=3)
    sampled = np.abs(kspace).reshape(-1, kspace.shape[-1]).max(axis=0) > 0
    path = tmp_path / "raw.h5"
    _write_ismrmrd(path, kspace, sampled)
    loaded = load_kspace(path)
    assert loaded.format == "ismrmrd"
    np.testing.assert_allclose(loaded.kspace, kspace, atol=0)
    np.testing.assert_array_equal(loaded.mask, sampled.astype(np.float32))
    assert "ismrmrdHeader" in (loaded.header or "")


def test_ismrmrd_without_acquisitions(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_group("dataset")
    with pytest.raises(DataError, match="no ISMRMRD acquisitions"):
        load_ismrmrd(path)


def test_a_fastmri_file_is_imaged_on_its_headers_recon_space(tmp_path):
    """fastMRI's brain data: 640 readout samples (2x oversampled) x 320 lines for a 320 x 320 image."""
    from tests.conftest import siemens_like_mrd

    image = np.zeros((20, 16), dtype=np.float32)
    image[4:16, 3:13] = 1.0
    xml, _ = siemens_like_mrd(image, coils=2, acceleration=1, acs=0, noise_level=0.0)  # 40 x 16 encoded
    kspace = (np.random.default_rng(0).standard_normal((1, 2, 40, 16)) * (1 + 1j)).astype(np.complex64)
    path = tmp_path / "brain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.attrs["ismrmrd_header"] = xml
    volume = load_kspace(path)
    assert volume.kspace.shape == (1, 2, 20, 16) and volume.recon_shape == (20, 16)
    assert volume.spacing == pytest.approx((5.0, 220 / 20, 220 / 16))
    # A header of another matrix (or none) leaves the k-space as stored.
    with h5py.File(path, "a") as f:
        f.attrs["ismrmrd_header"] = xml.replace("<y>16</y><z>1</z>", "<y>18</y><z>1</z>", 1)
    assert load_kspace(path).kspace.shape == (1, 2, 40, 16)
    # A header that says radial (or 3-D) is believed: such k-space is not imaged as 2-D Cartesian.
    with h5py.File(path, "a") as f:
        f.attrs["ismrmrd_header"] = xml.replace("cartesian", "radial")
    with pytest.raises(DataError, match="trajectory is radial"):
        load_kspace(path)


def test_an_interpolated_recon_space_keeps_the_acquired_resolution_and_its_true_voxel_size(tmp_path):
    """A console that interpolates to twice the matrix (same field of view): no pixels made up, and
    the voxel size is the field of view over the pixels there are."""
    from tests.conftest import siemens_like_mrd, write_mrd_file

    image = np.zeros((20, 16), dtype=np.float32)
    image[4:16, 3:13] = 300.0
    xml, acquisitions = siemens_like_mrd(image, coils=2, acceleration=1, acs=0, noise_level=0.0)
    xml = xml.replace("<x>20</x><y>16</y><z>1</z>", "<x>40</x><y>32</y><z>1</z>", 1)  # reconSpace matrix
    volume = load_kspace(write_mrd_file(tmp_path / "interp.h5", xml, acquisitions))
    assert volume.kspace.shape == (1, 2, 20, 16) and volume.recon_shape == (20, 16)
    assert volume.spacing == pytest.approx((5.0, 220 / 20, 220 / 16))


def test_an_acquisition_narrower_than_the_recon_field_of_view_gets_the_voxel_size_it_covers(tmp_path):
    """Phase-encode lines over 176 mm for a 220 mm reconSpace: nothing is cropped in that direction,
    and the voxels are 176 mm over the lines, not 220."""
    from tests.conftest import siemens_like_mrd, write_mrd_file

    image = np.zeros((20, 16), dtype=np.float32)
    image[4:16, 3:13] = 300.0
    xml, acquisitions = siemens_like_mrd(image, coils=2, acceleration=1, acs=0, noise_level=0.0)
    xml = xml.replace(
        "<y>220.0</y><z>5</z></fieldOfView_mm></encodedSpace>",
        "<y>176.0</y><z>5</z></fieldOfView_mm></encodedSpace>",
        1,
    )
    volume = load_kspace(write_mrd_file(tmp_path / "narrow.h5", xml, acquisitions))
    assert volume.recon_shape == (20, 16)
    assert volume.spacing == pytest.approx((5.0, 220 / 20, 176 / 16))
