from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from edgesr.data.images import load_dicom_series, load_image
from edgesr.errors import DataError
from edgesr.models import create_model
from edgesr.pipeline import prepare_sr
from tests.conftest import spec_for


def test_dicom_series_sorted_by_position_with_rescale(dicom_series):
    folder, expected = dicom_series
    volume = load_image(folder)
    assert volume.format == "dicom"
    np.testing.assert_array_equal(volume.data, expected)
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert volume.meta["modality"] == "CT"
    # The type that holds the modality values (HU down to -1024), not the stored uint16 pixels: writing
    # HU as uint16 would clip every negative value to 0.
    assert volume.dtype == "int16"


def test_truncated_dicom_names_the_file(dicom_series):
    folder, _ = dicom_series
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-500])
    with pytest.raises(DataError, match=victim.name):
        load_dicom_series(folder)


def test_dicom_folder_without_dicom_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no DICOM files"):
        load_image(tmp_path)


def test_nifti_keeps_affine_and_slices_along_third_axis(tmp_path):
    data = np.arange(5 * 7 * 3, dtype=np.int16).reshape(5, 7, 3)
    affine = np.diag([0.5, 0.6, 2.0, 1.0])
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    volume = load_image(path)
    assert volume.data.shape == (3, 5, 7)
    np.testing.assert_array_equal(volume.data[1], data[:, :, 1])
    np.testing.assert_allclose(volume.affine, affine, atol=1e-6)  # NIfTI stores float32
    assert volume.spacing == pytest.approx((2.0, 0.5, 0.6))
    assert volume.dtype == "int16"


def test_a_4d_nifti_holds_its_volumes_one_after_another(tmp_path):
    data = np.arange(5 * 7 * 3 * 2, dtype=np.int16).reshape(5, 7, 3, 2)
    path = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    volume = load_image(path)
    assert volume.data.shape == (6, 5, 7) and volume.volumes == 2
    np.testing.assert_array_equal(volume.volume(1).data[2], data[:, :, 2, 1])
    assert volume.volume(1).volumes == 1 and volume.volume(0).data.shape == (3, 5, 7)
    with pytest.raises(ValueError, match="prepare each"):  # one maximum for all would dim the dim ones
        prepare_sr(spec_for(create_model("rdn_tiny", scale=2), "rdn_tiny"), volume)
    with pytest.raises(ValueError, match="volumes=4 does not divide the 6 slices"):
        replace(volume, volumes=4)


def test_nifti_with_nan_is_rejected(tmp_path):
    data = np.ones((6, 6, 2), dtype=np.float32)
    data[2, 3, 1] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(DataError, match=r"nan\.nii\.gz.*NaN"):
        load_image(path)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_8_and_16_bit(tmp_path, dtype):
    pixels = (np.arange(37 * 31).reshape(37, 31) % np.iinfo(dtype).max).astype(dtype)
    path = tmp_path / "slice.png"
    Image.fromarray(pixels).save(path)
    volume = load_image(path)
    assert volume.data.shape == (1, 37, 31)
    np.testing.assert_array_equal(volume.data[0], pixels.astype(np.float32))
    assert volume.dtype == np.dtype(dtype).name


def test_colour_png_is_rejected(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match="grayscale"):
        load_image(path)


def test_multipage_tiff_and_npy(tmp_path):
    stack = np.random.default_rng(1).integers(0, 65535, size=(2, 9, 11)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    np.testing.assert_array_equal(load_image(tmp_path / "stack.tif").data, stack.astype(np.float32))
    np.save(tmp_path / "img.npy", stack[0].astype(np.float64))
    assert load_image(tmp_path / "img.npy").data.shape == (1, 9, 11)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 3, 4, 5)), "2-D image or 3-D volume"),
        (np.array(["a", "b"]), "unsupported data type"),
        (np.full((4, 4), np.inf), "NaN/Inf"),
    ],
)
def test_bad_npy_arrays(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=message):
        load_image(path)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_image(tmp_path / "absent.nii.gz")
    (tmp_path / "x.jpg2").write_bytes(b"123")
    with pytest.raises(DataError, match="unsupported image format"):
        load_image(tmp_path / "x.jpg2")


def test_signed_padding_written_as_an_unsigned_pattern(tmp_path):
    """PixelPaddingValue -2000 of int16 pixels, written by some scanners as VR US 63536."""
    from pydicom.uid import generate_uid

    from tests.conftest import write_dicom_slice

    stored = np.full((9, 7), 40, dtype=np.int16)
    stored[:, :2] = -2000
    path = tmp_path / "ct.dcm"
    write_dicom_slice(path, stored, position_z=0.0, instance=1, series_uid=generate_uid(), signed=True)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.add_new(0x00280120, "US", 63536)  # PixelPaddingValue as its unsigned bit pattern
    ds.save_as(path)
    volume = load_image(path)
    assert volume.padding is not None and volume.padding[0].tolist() == (stored == -2000).tolist()
    assert volume.dtype == "int16"


def test_what_users_drop_in_is_named_from_the_real_file_sweep(tmp_path):
    """A colour array, a parametric map, a folder whose series sits in a sub-folder, a macOS resource fork."""
    import shutil

    import pydicom
    from pydicom.data import get_testdata_file

    np.save(tmp_path / "rgb.npy", np.zeros((32, 40, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"looks like a colour image \[H, W, 3\]"):
        load_image(tmp_path / "rgb.npy")

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.FloatPixelData = np.zeros((64, 64), dtype=np.float32).tobytes()
    del ds.PixelData
    ds.save_as(tmp_path / "map.dcm")
    with pytest.raises(DataError, match="floating-point pixel data"):
        load_image(tmp_path / "map.dcm")
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = bytes(64 * 64 // 8)
    ds.save_as(tmp_path / "mask.dcm")
    with pytest.raises(DataError, match="a 1-bit image \\(a mask or segmentation\\)"):
        load_image(tmp_path / "mask.dcm")

    series = tmp_path / "study" / "series"
    series.mkdir(parents=True)
    shutil.copy(get_testdata_file("MR_small.dcm"), series / "IM000.dcm")
    with pytest.raises(DataError, match="sub-folders are not searched"):
        load_dicom_series(tmp_path / "study")
    (series / "._IM000.dcm").write_bytes(
        b"\x00\x05\x16\x07" + bytes(100)
    )  # AppleDouble, as macOS copies leave
    assert load_dicom_series(series).data.shape == (1, 64, 64)
