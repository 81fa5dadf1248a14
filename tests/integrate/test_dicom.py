"""DICOM in and out: series validation, and the derived series read back tag by tag and pixel by pixel."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import RLELossless, generate_uid

import edgesr
from edgesr.cli import main
from edgesr.data.images import load_dicom_series
from edgesr.errors import DataError
from edgesr.integrate.dicom import Encoding, choose_encoding
from edgesr.physics.degrade import upsampled_affine
from tests.conftest import write_dicom_slice


def _ct_series(folder: Path, *, slices: int = 3, padding: bool = False, **tags) -> Path:
    """A CT series in HU (stored = HU + 1024, signed when padded with -2000), files out of order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    uid = generate_uid()
    for index in reversed(range(slices)):
        stored = rng.integers(900, 1200, size=(37, 31)).astype(np.int16)
        stored[:, :3] = 24  # air at -1000 HU
        if padding:
            stored[:5, :] = -2000
        path = folder / f"f{index}.dcm"
        write_dicom_slice(
            path, stored, position_z=5.0 * index, instance=index + 1, series_uid=uid,
            intercept=-1024.0, signed=padding, padding_value=-2000 if padding else None,
        )  # fmt: skip
        if tags:
            ds = pydicom.dcmread(path)
            for keyword, value in tags.items():
                setattr(ds, keyword, value)
            ds.save_as(path)
    return folder


def test_a_ct_series_comes_back_as_a_derived_series(ct_checkpoint, tmp_path, capsys):
    source = _ct_series(
        tmp_path / "in", SeriesNumber=7, SeriesDescription="HEAD 5mm", BurnedInAnnotation="NO"
    )
    out = tmp_path / "derived"
    assert main(["enhance", f"checkpoint={ct_checkpoint}", f"input={source}", f"output={out}"]) == 0
    assert "as a derived DICOM series" in capsys.readouterr().err

    volume = edgesr.load_image(source)
    expected = edgesr.Enhancer.from_checkpoint(ct_checkpoint).enhance(volume)
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["00001.dcm", "00002.dcm", "00003.dcm"]
    sources = [pydicom.dcmread(f) for f in volume.meta["files"]]
    derived = [pydicom.dcmread(f) for f in files]
    assert len({ds.SeriesInstanceUID for ds in derived}) == 1
    assert derived[0].SeriesInstanceUID != sources[0].SeriesInstanceUID
    for index, (src, ds) in enumerate(zip(sources, derived, strict=True)):
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SOPInstanceUID != src.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == src.SOPClassUID and ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesNumber == 1007 and ds.SeriesDescription == "HEAD 5mm [edgesr x2]"
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
        equipment = ds.ContributingEquipmentSequence[-1]
        assert equipment.Manufacturer == "edgesr"
        assert expected.provenance.weights_sha256 in equipment.ContributionDescription
        assert "Super-resolution x2" in ds.DerivationDescription
        assert ds.BurnedInAnnotation == "NO"
        assert (ds.Rows, ds.Columns) == (74, 62)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.35, 0.4])
        # The area (ct-blur) grid: HR pixel 0 lies half an HR pixel before LR pixel 0's centre.
        shift = np.array([-0.25 * 0.8, -0.25 * 0.7, 0.0])
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], np.add(src.ImagePositionPatient, shift)
        )
        # HU stay HU with the source's slope and intercept: each pixel within half a slope.
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        decoded = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(decoded - expected.image[index]).max() <= 0.5 + 1e-4

    # Read back as a volume: the same grid as the NIfTI writer's affine.
    back = load_dicom_series(out)
    assert back.data.shape == expected.image.shape
    np.testing.assert_allclose(
        back.affine, upsampled_affine(volume.affine, 2, "ct-blur", (37, 31)), atol=1e-4
    )


def test_padding_stays_padding_and_signed_overshoot_is_kept(ct_checkpoint, tmp_path):
    source = _ct_series(tmp_path / "in", slices=2, padding=True)
    out = tmp_path / "out"
    assert main(["enhance", f"checkpoint={ct_checkpoint}", f"input={source}", f"output={out}"]) == 0
    ds = pydicom.dcmread(sorted(out.iterdir())[0])
    stored = ds.pixel_array
    assert ds.PixelPaddingValue == -2000 and ds.PixelRepresentation == 1
    assert (stored[:10] == -2000).all() and not (stored[12:] == -2000).any()
    back = load_dicom_series(out)
    assert back.padding is not None and back.padding[:, :10].all()


def test_series_are_chosen_and_mixed_ones_refused_by_name(ct_checkpoint, tmp_path, capsys):
    folder = _ct_series(tmp_path / "two", slices=2)
    other = _ct_series(tmp_path / "other", slices=2)
    for path in other.iterdir():
        shutil.move(path, folder / f"b{path.name}")
    uid = str(pydicom.dcmread(folder / "bf0.dcm").SeriesInstanceUID)
    argv = ["enhance", f"checkpoint={ct_checkpoint}", f"input={folder}"]
    assert main([*argv, f"output={tmp_path / 'o1'}"]) == 2
    assert "holds 2 series" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    assert main([*argv, f"output={tmp_path / 'o2'}", f"series={uid}"]) == 0
    assert len(list((tmp_path / "o2").iterdir())) == 2

    tilted = _ct_series(tmp_path / "tilted", slices=3)
    ds = pydicom.dcmread(tilted / "f1.dcm")
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    ds.save_as(tilted / "f1.dcm")
    with pytest.raises(DataError, match="mixes orientations"):
        load_dicom_series(tilted)

    echoes = _ct_series(tmp_path / "echoes", slices=2)
    ds = pydicom.dcmread(echoes / "f1.dcm")
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.EchoNumbers = 2
    ds.save_as(echoes / "f1.dcm")
    ds = pydicom.dcmread(echoes / "f0.dcm")
    ds.EchoNumbers = 1
    ds.save_as(echoes / "f0.dcm")
    with pytest.raises(DataError, match=r"differ in EchoNumbers \(1 vs 2\)"):
        load_dicom_series(echoes)


def test_compressed_sources_are_decoded_or_refused_by_name(ct_checkpoint, tmp_path):
    source = _ct_series(tmp_path / "rle", slices=2)
    for path in source.iterdir():
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)  # pydicom encodes RLE itself: a decoder is always there
        ds.save_as(path)
    out = tmp_path / "out"
    assert main(["enhance", f"checkpoint={ct_checkpoint}", f"input={source}", f"output={out}"]) == 0
    ds = pydicom.dcmread(sorted(out.iterdir())[0])
    assert not ds.file_meta.TransferSyntaxUID.is_compressed and "LossyImageCompression" not in ds

    jpeg = _ct_series(tmp_path / "jpeg", slices=1)
    path = next(jpeg.iterdir())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xdb" + bytes(64)])
    ds.save_as(path)
    with pytest.raises(DataError, match="compressed as JPEG Baseline .* could not be decoded .*damaged"):
        load_dicom_series(jpeg)


def test_jpeg_family_series_are_decoded_losslessly(ct_checkpoint, tmp_path):
    """JPEG 2000 and JPEG-LS, as consoles and PACS send them (pylibjpeg's decoders are dependencies)."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEG2000Lossless

    # pydicom's real GE CT slice (128x128, signed, HU by slope and intercept) as JPEG 2000 lossless.
    source = tmp_path / "j2k"
    source.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.compress(JPEG2000Lossless)  # pylibjpeg-openjpeg encodes it
    ds.save_as(source / "ct.dcm")
    assert pydicom.dcmread(source / "ct.dcm").file_meta.TransferSyntaxUID == JPEG2000Lossless
    plain = edgesr.load_image(get_testdata_file("CT_small.dcm")).data
    np.testing.assert_array_equal(load_dicom_series(source).data, plain)
    out = tmp_path / "out"
    assert main(["enhance", f"checkpoint={ct_checkpoint}", f"input={source}", f"output={out}"]) == 0
    assert not pydicom.dcmread(sorted(out.iterdir())[0]).file_meta.TransferSyntaxUID.is_compressed
    # pydicom's MR test slice, stored plain and as JPEG-LS lossless: the same values.
    jpeg_ls = edgesr.load_image(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    np.testing.assert_array_equal(jpeg_ls.data, edgesr.load_image(get_testdata_file("MR_small.dcm")).data)


def test_what_is_not_one_greyscale_image_is_refused_with_what_to_send(tmp_path):
    """Colour, palette, mosaic, dose grids and multi-frame files: refused by name, before any decoding."""
    from pydicom.data import get_testdata_file

    # pydicom's own test files (bundled with it, no download).
    with pytest.raises(DataError, match=r"SC_rgb_rle\.dcm: a colour image \(PhotometricInterpretation RGB"):
        load_dicom_series(Path(get_testdata_file("SC_rgb_rle.dcm")))
    with pytest.raises(DataError, match=r"palette indices into a colour table"):
        load_dicom_series(Path(get_testdata_file("examples_palette.dcm")))
    with pytest.raises(DataError, match=r"an RT dose grid \(Modality RTDOSE\)"):
        load_dicom_series(Path(get_testdata_file("rtdose.dcm")))
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    mosaic = tmp_path / "mosaic.dcm"
    source.ImageType = ["ORIGINAL", "PRIMARY", "M", "MOSAIC"]
    source.save_as(mosaic)
    with pytest.raises(DataError, match=r"a Siemens mosaic .*dcm2niix"):
        load_dicom_series(mosaic)
    frames = tmp_path / "frames.dcm"
    source.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    source.NumberOfFrames = 2
    source.PixelData = source.PixelData * 2
    source.save_as(frames)
    with pytest.raises(DataError, match=r"a multi-frame image \(2 frames.*single-frame"):
        load_dicom_series(frames)


def test_outputs_are_checked_before_the_work_and_never_half_written(ct_checkpoint, tmp_path, capsys):
    source = _ct_series(tmp_path / "in", slices=2)
    argv = ["enhance", f"checkpoint={ct_checkpoint}", f"input={source}"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main([*argv, f"output={busy}"]) == 2
    assert "is not empty" in capsys.readouterr().err and (busy / "keep.txt").read_text() == "mine"
    assert main([*argv, f"output={source / 'derived'}"]) == 2
    assert "lies inside the input" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.ones((9, 9), dtype=np.float32))
    assert (
        main(
            [
                "enhance",
                f"checkpoint={ct_checkpoint}",
                f"input={tmp_path / 'x.npy'}",
                f"output={tmp_path / 'd'}",
            ]
        )
        == 2
    )
    assert "needs a DICOM input" in capsys.readouterr().err
    assert main([*argv, f"output={tmp_path / 'one.dcm'}"]) == 2
    assert "name a new or empty folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*argv, f"output={empty}"]) == 0  # an empty folder is fine
    assert len(list(empty.iterdir())) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


@settings(max_examples=60, deadline=None)
@given(
    low=st.floats(-5e4, 5e4),
    span=st.floats(1e-3, 1e7),
    slope=st.sampled_from([1.0, 0.5, 3.77]),
    intercept=st.sampled_from([0.0, -1024.0, 12.5]),
    signed=st.booleans(),
)
def test_re_encoding_loses_at_most_half_a_slope(low, span, slope, intercept, signed):
    values = np.linspace(low, low + span, 101)
    encoding = choose_encoding(values, Encoding(slope, intercept, signed))
    stored = encoding.encode(values)
    assert stored.dtype == (np.int16 if encoding.signed else np.uint16)
    assert np.abs(encoding.decode(stored) - values).max() <= encoding.slope / 2 * (1 + 1e-6) + 1e-9


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_dciodvfy_finds_no_new_errors_in_a_derived_series(tmp_path):
    """David Clunie's IOD checker on the pydicom example CT and its derived series: nothing new."""
    from pydicom import examples

    source = tmp_path / "ct.dcm"
    examples.ct.save_as(source)
    out = tmp_path / "out"
    assert main(["enhance", "model=rdn-ct-x2", f"input={source}", f"output={out}"]) == 0

    assert _dciodvfy_errors(out / "00001.dcm") <= _dciodvfy_errors(source)


def _dciodvfy_errors(path: Path) -> set[str]:
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return {line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")}


def _mr_series(folder: Path, images: list[np.ndarray]) -> Path:
    """An MR series of ``images`` (0..1, stored as 0..4000) whose files carry a scanner's ImageComments."""
    folder.mkdir(parents=True)
    uid = generate_uid()
    for index, image in enumerate(images):
        path = folder / f"{index}.dcm"
        stored = (image * 4000).astype(np.uint16)
        write_dicom_slice(
            path, stored, position_z=3.0 * index, instance=index + 1, series_uid=uid, modality="MR"
        )
        ds = pydicom.dcmread(path)
        ds.ImageComments = "scanner note"
        ds.save_as(path)
    return folder


def test_a_warning_reaches_the_derived_series_image_comments(tiny_checkpoint, tmp_path, capsys):
    """An MR series stored finer than acquired: the reader of the derived images is told, not only the log."""
    from tests.physics.test_spectrum import _interpolated, _natural_image

    interpolated = [_interpolated(_natural_image(64, 56, seed), (0.4, 1.0)) for seed in range(2)]
    source = _mr_series(tmp_path / "interpolated", interpolated)
    out = tmp_path / "derived"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 0
    assert f"warning: {source}: this MR image looks reconstructed on a finer grid" in capsys.readouterr().err
    for file in sorted(out.iterdir()):
        comments = str(pydicom.dcmread(file).ImageComments)
        assert comments.startswith("edgesr warning: this MR image looks reconstructed on a finer grid")
        assert str(tmp_path) not in comments  # no local path in the images' headers
        assert comments.endswith("(the source image's comments: scanner note)")
    # Without a warning the source's comments stay as they were.
    source = _mr_series(tmp_path / "natural", [_natural_image(64, 56, seed) for seed in range(2)])
    out = tmp_path / "derived-natural"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 0
    assert "finer grid" not in capsys.readouterr().err
    assert {str(pydicom.dcmread(f).ImageComments) for f in out.iterdir()} == {"scanner note"}


def test_overlays_drawn_on_the_source_grid_are_not_carried_over(tiny_checkpoint, tmp_path):
    """A real Siemens MR with an overlay plane (group 6000, 484x484 bits): on the 968x968 output it would
    cover the top-left quarter, so the derived image has none."""
    source = _pydicom_data_file("MR-SIEMENS-DICOM-WithOverlays.dcm")
    assert any(e.tag.group == 0x6000 for e in pydicom.dcmread(source, stop_before_pixels=True))
    out = tmp_path / "derived"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 0
    (file,) = out.iterdir()
    derived = pydicom.dcmread(file)
    assert (derived.Rows, derived.Columns) == (968, 968)
    assert not [e.tag for e in derived if 0x5000 <= e.tag.group <= 0x60FF]


def test_an_mr_model_refuses_a_ct_series_unless_told(tiny_checkpoint, tmp_path, capsys):
    """As a CT model refuses MR: CT numbers (air at -1000) are not the magnitudes an MR model enhances."""
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    out = tmp_path / "sr.nii.gz"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={ct}", f"output={out}"]) == 2
    err = capsys.readouterr().err
    assert "a DICOM series of modality CT given to an MR model" in err and not out.exists()
    assert (
        main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={ct}", f"output={out}", "units=raw"]) == 0
    )


def test_derived_series_from_awkward_but_valid_headers(tiny_checkpoint, tmp_path, capsys):
    """A big-endian source, an empty SeriesNumber, and a source that cannot be referenced (refused first)."""
    from pydicom.data import get_testdata_file

    big_endian = get_testdata_file("MR_small_bigendian.dcm")
    out = tmp_path / "from-big-endian"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={big_endian}", f"output={out}"]) == 0
    derived = pydicom.dcmread(next(out.iterdir()))
    assert derived.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert derived.pixel_array.shape == (128, 128)

    source = tmp_path / "src"
    source.mkdir()
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SeriesNumber = None  # present, empty
    ds.save_as(source / "a.dcm")
    out = tmp_path / "from-empty-number"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 0
    assert not str(pydicom.dcmread(next(out.iterdir())).get("SeriesNumber", "") or "")  # still empty

    del ds.StudyInstanceUID
    ds.save_as(source / "a.dcm")
    out = tmp_path / "never"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 2
    assert "lacks StudyInstanceUID, which a derived series must reference" in capsys.readouterr().err
    assert not out.exists()


def test_a_series_with_a_gap_or_two_pixel_sizes_is_not_stacked_as_if_even(tiny_checkpoint, tmp_path, capsys):
    """A NIfTI affine holds one slice step: a series with a gap goes to DICOM (per-slice positions)."""
    folder, uid = tmp_path / "gap", generate_uid()
    folder.mkdir()
    image = (np.random.default_rng(0).random((40, 36)) * 1000).astype(np.uint16)
    for index, z in enumerate([0.0, 5.0, 20.0, 25.0]):  # slices 2 and 3 missing
        write_dicom_slice(
            folder / f"{index}.dcm", image, position_z=z, instance=index + 1, series_uid=uid, modality="MR"
        )
    nifti = tmp_path / "sr.nii.gz"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={folder}", f"output={nifti}"]) == 2
    assert "step by 5 to 15 mm, not evenly" in capsys.readouterr().err and not nifti.exists()
    out = tmp_path / "derived"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={folder}", f"output={out}"]) == 0
    positions = sorted(float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in out.iterdir())
    assert positions == [0.0, 5.0, 20.0, 25.0]  # each slice where its source was

    ds = pydicom.dcmread(folder / "1.dcm")
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(folder / "1.dcm")
    with pytest.raises(DataError, match="PixelSpacing 0.5/0.5 mm differs .* one volume needs one pixel size"):
        load_dicom_series(folder)


def _pydicom_data_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)  # pydicom-data's files; never fetched
    if found is None:
        pytest.skip(f"{name}: pydicom-data is not installed (.ci/setup installs it)")
    return Path(str(found))


def test_enhanced_multi_frame_mr_and_ct_are_read_frame_by_frame(ct_checkpoint, tmp_path, capsys):
    """Enhanced MR (every transfer syntax pydicom-data ships it in) and a real enhanced CT whose geometry
    and HU rescale live in its functional groups."""
    plain = edgesr.load_image(_pydicom_data_file("emri_small.dcm"))
    frames = pydicom.dcmread(_pydicom_data_file("emri_small.dcm")).pixel_array
    assert plain.data.shape == (10, 64, 64) and plain.meta["multiframe"]
    np.testing.assert_array_equal(plain.data, frames.astype(np.float32))
    for name in ("emri_small_big_endian.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(edgesr.load_image(_pydicom_data_file(name)).data, plain.data)

    source = _pydicom_data_file("eCT_Supplemental.dcm")
    ct = edgesr.load_image(source)
    assert ct.data.shape == (2, 512, 512) and ct.meta["modality"] == "CT"
    assert ct.spacing == pytest.approx((10.0, 0.388672, 0.388672))  # positions 10 mm apart, PixelMeasures
    assert ct.data.min() == -1024  # the rescale of PixelValueTransformationSequence: HU
    out = tmp_path / "sr.nii.gz"
    assert main(["enhance", f"checkpoint={ct_checkpoint}", f"input={source}", f"output={out}"]) == 0
    assert nib.load(out).shape == (1024, 1024, 2)


def test_per_frame_rescale_applies_to_its_own_frame_only(tmp_path):
    """Vendors scale frames one by one (per-frame PixelValueTransformation) and some legacy-converted
    files keep a top-level RescaleSlope too: each frame must decode with its own slope, not the last."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ds = pydicom.dcmread(_pydicom_data_file("eCT_Supplemental.dcm"))
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    for frame, slope in zip(ds.PerFrameFunctionalGroupsSequence, (1.0, 3.0), strict=True):
        item = Dataset()
        item.RescaleSlope, item.RescaleIntercept, item.RescaleType = slope, -1024, "HU"
        frame.PixelValueTransformationSequence = DicomSequence([item])
    ds.save_as(tmp_path / "scaled.dcm")
    stored = ds.pixel_array.astype(np.float32)
    volume = edgesr.load_image(tmp_path / "scaled.dcm")
    assert volume.meta["frame_numbers"] == [2, 1]
    np.testing.assert_array_equal(volume.data[0], stored[1] * 3.0 - 1024)
    np.testing.assert_array_equal(volume.data[1], stored[0] * 1.0 - 1024)


def test_an_enhanced_multi_frame_image_comes_back_as_one_derived_multi_frame_file(ct_checkpoint, tmp_path):
    """A real enhanced CT (its frames stored in the reverse of their position order, geometry and HU
    rescale in functional groups, a supplemental colour palette and a real-world value map of the
    source's stored values): one derived file of the same SOP class, frame for frame."""
    source = _pydicom_data_file("eCT_Supplemental.dcm")
    out = tmp_path / "derived"
    assert main(["enhance", f"checkpoint={ct_checkpoint}", f"input={source}", f"output={out}"]) == 0
    volume = edgesr.load_image(source)
    assert volume.meta["frame_numbers"] == [2, 1]  # slice order (by position) is not frame order
    expected = edgesr.Enhancer.from_checkpoint(ct_checkpoint).enhance(volume)

    assert [f.name for f in out.iterdir()] == ["00001.dcm"]
    src, ds = pydicom.dcmread(source), pydicom.dcmread(out / "00001.dcm")
    assert ds.SOPClassUID == src.SOPClassUID and ds.NumberOfFrames == 2
    assert ds.SOPInstanceUID != src.SOPInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.StudyInstanceUID == src.StudyInstanceUID and (ds.Rows, ds.Columns) == (1024, 1024)
    assert list(ds.ImageType)[0] == "DERIVED" and "RealWorldValueMappingSequence" not in str(ds)
    assert "RedPaletteColorLookupTableData" not in ds and ds.PixelPresentation == "MONOCHROME"
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert list(shared.CTImageFrameTypeSequence[0].FrameType)[0] == "DERIVED"
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx([0.194336] * 2)
    for frame, (old, new) in enumerate(
        zip(src.PerFrameFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence, strict=True)
    ):
        assert (
            new.FrameContentSequence[0].DimensionIndexValues
            == old.FrameContentSequence[0].DimensionIndexValues
        )
        reference = new.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert reference.ReferencedFrameNumber == frame + 1
        # The ct-blur grid: HR pixel 0 lies a quarter of an LR pixel before LR pixel 0's centre, along
        # a row (-x here) and down a column (+y).
        shift = np.array([+0.25, -0.25, 0.0]) * 0.388672
        np.testing.assert_allclose(
            [float(v) for v in new.PlanePositionSequence[0].ImagePositionPatient],
            np.add([float(v) for v in old.PlanePositionSequence[0].ImagePositionPatient], shift),
            atol=1e-5,
        )
    # Read back: the same values (within half a slope of the HU encoding), geometry and slice order.
    back = edgesr.load_image(out)
    assert back.meta["frame_numbers"] == [2, 1]
    assert np.abs(back.data - expected.image).max() <= 0.5 + 1e-4
    np.testing.assert_allclose(
        back.affine, upsampled_affine(volume.affine, 2, "ct-blur", (512, 512)), atol=1e-4
    )
    if shutil.which("dciodvfy") is not None:  # David Clunie's IOD checker: nothing new
        assert _dciodvfy_errors(out / "00001.dcm") <= _dciodvfy_errors(source)


def test_a_flattened_enhanced_mr_without_functional_groups_is_written_too(tiny_checkpoint, tmp_path):
    """pydicom-data's enhanced MR holds no functional groups (not valid enhanced DICOM, but such files
    exist): the derived file keeps its frames, says what was done, and reads back as the result."""
    source = _pydicom_data_file("emri_small.dcm")
    out = tmp_path / "derived"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 0
    expected = edgesr.Enhancer.from_checkpoint(tiny_checkpoint).enhance(edgesr.load_image(source))
    ds = pydicom.dcmread(out / "00001.dcm")
    assert ds.NumberOfFrames == 10 and (ds.Rows, ds.Columns) == (128, 128)
    assert "Super-resolution x2" in ds.DerivationDescription
    reference = ds.SourceImageSequence[0]  # no per-frame groups to hold it: the top level does
    assert reference.ReferencedSOPInstanceUID == pydicom.dcmread(source).SOPInstanceUID
    assert list(reference.ReferencedFrameNumber) == list(range(1, 11))
    back = edgesr.load_image(out)
    groups = ds.get("SharedFunctionalGroupsSequence")  # written only when the source's encoding did not fit
    slope = float(groups[0].PixelValueTransformationSequence[0].RescaleSlope) if groups else 1.0
    assert np.abs(back.data - expected.image).max() <= slope / 2 * (1 + 1e-6) + 1e-6


def _enhanced_mr(path: Path, *, frames: int = 4, where: str = "groups") -> Path:
    """pydicom-data's enhanced MR cut to ``frames`` frames, with its geometry (2 mm pixels, axial, 3 mm
    apart) in the functional groups (``where="groups"``) or, as some converters leave it, pixel size and
    orientation at the top level (``"top"``)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    def item(**values):
        found = Dataset()
        for keyword, value in values.items():
            setattr(found, keyword, value)
        return found

    ds = pydicom.dcmread(_pydicom_data_file("emri_small.dcm"))
    ds.PixelData = ds.pixel_array[:frames].astype("<u2").tobytes()
    ds.NumberOfFrames = frames
    ds.ImageType = ["ORIGINAL", "PRIMARY", "T1", "NONE"]
    shared = item(
        MRImageFrameTypeSequence=DicomSequence([item(FrameType=["ORIGINAL", "PRIMARY", "T1", "NONE"])])
    )
    if where == "groups":
        shared.PixelMeasuresSequence = DicomSequence([item(PixelSpacing=[2.0, 2.0], SliceThickness=3.0)])
        shared.PlaneOrientationSequence = DicomSequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
    else:
        ds.PixelSpacing, ds.ImageOrientationPatient = [2.0, 2.0], [1, 0, 0, 0, 1, 0]
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(
        [
            item(PlanePositionSequence=DicomSequence([item(ImagePositionPatient=[-64.0, -64.0, 3.0 * i])]))
            for i in range(frames)
        ]
    )
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("where", ["groups", "top"])
def test_enhanced_geometry_is_rewritten_wherever_the_file_keeps_it(tiny_checkpoint, tmp_path, where):
    source = _enhanced_mr(tmp_path / "mr.dcm", where=where)
    out = tmp_path / "derived"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 0
    volume, back = edgesr.load_image(source), edgesr.load_image(out)
    assert volume.spacing == pytest.approx((3.0, 2.0, 2.0)) and back.spacing == pytest.approx((3.0, 1.0, 1.0))
    np.testing.assert_allclose(
        back.affine, upsampled_affine(volume.affine, 2, "mr-kspace", (64, 64)), atol=1e-4
    )
    frame_type = (
        pydicom.dcmread(out / "00001.dcm").SharedFunctionalGroupsSequence[0].MRImageFrameTypeSequence[0]
    )
    assert list(frame_type.FrameType) == ["DERIVED", "PRIMARY", "T1", "RESAMPLED"]  # PS3.3 C.8.16.1.4


def test_enhanced_frames_with_empty_geometry_or_their_own_slopes(tiny_checkpoint, tmp_path, capsys):
    """An empty orientation item reads as no orientation (frames ordered by number) and is written
    without one; frames scaled one by one keep the finest slope; frames at one position that an echo
    tells apart are refused with what to do."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    source = _enhanced_mr(tmp_path / "empty.dcm")
    ds = pydicom.dcmread(source)
    ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = DicomSequence([Dataset()])
    ds.save_as(source)
    out = tmp_path / "empty-out"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 0
    assert edgesr.load_image(out).data.shape == (4, 128, 128)

    source = _enhanced_mr(tmp_path / "scaled.dcm")
    ds = pydicom.dcmread(source)
    for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = (2.5, 10) if index == 0 else (0.25, -5)
        transform.RescaleType = "US"
        group.PixelValueTransformationSequence = DicomSequence([transform])
    ds.save_as(source)
    out = tmp_path / "scaled-out"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 0
    written = pydicom.dcmread(out / "00001.dcm").PerFrameFunctionalGroupsSequence
    assert {float(g.PixelValueTransformationSequence[0].RescaleSlope) for g in written} == {0.25}
    expected = edgesr.Enhancer.from_checkpoint(tiny_checkpoint).enhance(edgesr.load_image(source))
    assert np.abs(edgesr.load_image(out).data - expected.image).max() <= 0.125 + 1e-4

    source = _enhanced_mr(tmp_path / "echoes.dcm", frames=2)
    ds = pydicom.dcmread(source)
    for echo_time, group in zip((10.0, 80.0), ds.PerFrameFunctionalGroupsSequence, strict=True):
        group.PlanePositionSequence[0].ImagePositionPatient = [-64.0, -64.0, 0.0]
        echo = Dataset()
        echo.EffectiveEchoTime = echo_time
        group.MREchoSequence = DicomSequence([echo])
    ds.save_as(source)
    out = tmp_path / "echoes-out"
    assert main(["enhance", f"checkpoint={tiny_checkpoint}", f"input={source}", f"output={out}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "they differ in EffectiveEchoTime (10.0 vs 80.0)" in err and "split the file" in err
    assert not out.exists()
