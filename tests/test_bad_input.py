"""Bad input through the commands a user runs: a clear one-line error naming the file (exit 2), or a
correct result; never a traceback, a silently wrong image, or a user's file clobbered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from pydicom.uid import generate_uid

from edgesr.cli import main
from edgesr.physics.fft import to_complex
from edgesr.physics.simulate import simulate_multicoil
from edgesr.teachers import teacher_path
from tests.conftest import write_dicom_slice


def _fails(capsys, argv: list[str], *needles: str) -> str:
    """Runs ``edgesr argv``; it must exit 2 with one message holding every needle (no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _enhance(source: Path, out: Path, *extra: str, model: str = "rdn-mr-x2") -> list[str]:
    return ["enhance", f"model={model}", f"input={source}", f"output={out}", *extra]


@pytest.fixture
def good_npy(tmp_path) -> Path:
    path = tmp_path / "good.npy"
    np.save(path, np.random.default_rng(0).uniform(100, 900, (21, 19)).astype(np.float32))
    return path


# --- The output location: checked before any work, never the input ----------------------------------


def test_output_equal_to_the_input_is_refused_and_the_input_kept(tmp_path, good_npy, capsys):
    before = good_npy.read_bytes()
    _fails(capsys, _enhance(good_npy, good_npy), "good.npy", "is the input")
    assert good_npy.read_bytes() == before


def test_an_existing_output_file_is_kept_unless_overwrite_is_given(tmp_path, good_npy, capsys):
    out = tmp_path / "earlier.npy"
    np.save(out, np.zeros((3, 3), np.float32))
    before = out.read_bytes()
    _fails(capsys, _enhance(good_npy, out), "earlier.npy", "exists", "overwrite=true")
    assert out.read_bytes() == before
    assert main(_enhance(good_npy, out, "overwrite=true")) == 0
    assert np.load(out).shape == (42, 38)  # x2 of the 21x19 input


@pytest.mark.parametrize(
    ("output", "needle"),
    [("afile/o.npy", "is a file"), ("folder", "existing folder"), ("o.jpg", "cannot write this format")],
)
def test_unusable_outputs_are_refused_before_inference(tmp_path, good_npy, capsys, output, needle):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    _fails(capsys, _enhance(good_npy, tmp_path / output), needle)


def test_paths_with_markup_characters_are_printed_as_they_are(tmp_path, good_npy, capsys):
    out = tmp_path / "x[/]" / "[bold]y.npy"
    assert main(_enhance(good_npy, out)) == 0
    assert out.is_file() and "[bold]y.npy" in capsys.readouterr().err.replace("\n", "")


@pytest.mark.parametrize(
    ("key", "needle"), [("halo=-1", "halo"), ("tile=-5", "tile"), ("device=foo", "device")]
)
def test_bad_settings_name_their_key(good_npy, tmp_path, capsys, key, needle):
    _fails(capsys, _enhance(good_npy, tmp_path / "o.npy", key), needle)


# --- Images ------------------------------------------------------------------------------------------


def test_bad_arrays_are_refused_when_read(tmp_path, capsys):
    cases = {
        "empty.npy": (np.zeros((0, 20, 20), np.float32), "empty"),
        "bool.npy": (np.ones((20, 20), bool), "boolean"),
        "complex.npy": (np.ones((20, 20), np.complex64), "complex"),
        "huge.npy": (np.full((20, 20), 1e300), "float32"),
    }
    for name, (array, needle) in cases.items():
        np.save(tmp_path / name, array)
        _fails(capsys, _enhance(tmp_path / name, tmp_path / "o.npy"), name, needle)
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2), np.complex64), np.eye(4)), tmp_path / "c.nii.gz")
    _fails(capsys, _enhance(tmp_path / "c.nii.gz", tmp_path / "o.nii.gz"), "c.nii.gz", "complex")


def test_tiff_pages_of_different_sizes_are_refused(tmp_path, capsys):
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        tif.write(np.ones((20, 18), np.uint16))
        tif.write(np.ones((12, 10), np.uint16))
    _fails(capsys, _enhance(tmp_path / "mixed.tif", tmp_path / "o.tif"), "mixed.tif", "different sizes")


def _series(folder: Path, count: int = 3, **overrides) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    uid, files = generate_uid(), []
    for k in range(count):
        file = folder / f"im{k}.dcm"
        pixels = np.random.default_rng(k).integers(100, 900, (24, 20)).astype(np.uint16)
        write_dicom_slice(file, pixels, position_z=2.0 * k, instance=k + 1, series_uid=uid, modality="MR")
        files.append(file)
    return files


def test_a_truncated_slice_is_an_error_not_a_gap(tmp_path, capsys):
    files = _series(tmp_path / "series")
    files[1].write_bytes(files[1].read_bytes()[:-600])
    _fails(capsys, _enhance(tmp_path / "series", tmp_path / "o.nii.gz"), "im1.dcm")


def test_two_slices_at_one_position_are_an_error(tmp_path, capsys):
    files = _series(tmp_path / "series")
    shutil.copy(files[0], tmp_path / "series" / "copy.dcm")
    _fails(capsys, _enhance(tmp_path / "series", tmp_path / "o.nii.gz"), "same position")


@pytest.mark.parametrize(
    ("tag", "value", "needle"),
    [("PixelSpacing", [0.9], "PixelSpacing"), ("PixelSpacing", "a\\b", "PixelSpacing"),
     ("ImagePositionPatient", [0.0, 1.0], "ImagePositionPatient")],
)  # fmt: skip
def test_malformed_geometry_tags_name_the_tag_and_file(tmp_path, capsys, tag, value, needle):
    import pydicom

    files = _series(tmp_path / "series", count=1)
    ds = pydicom.dcmread(files[0])
    if isinstance(value, str):  # text where numbers belong, as a broken writer stores it (VR LO)
        ds.add_new(pydicom.datadict.tag_for_keyword(tag), "LO", value)
    else:
        setattr(ds, tag, value)
    ds.save_as(files[0])
    _fails(capsys, _enhance(tmp_path / "series", tmp_path / "o.nii.gz"), "im0.dcm", needle)


def test_an_unfilled_zero_pixel_spacing_reads_as_absent_but_one_zero_is_an_error(tmp_path, capsys):
    """Secondary captures and CR write "0\\0" for a spacing they do not know: read it as 1 mm, as a
    missing tag is; a single zero is a broken header and names the tag and file."""
    import pydicom

    files = _series(tmp_path / "series", count=1)
    ds = pydicom.dcmread(files[0])
    ds.PixelSpacing = [0.0, 0.0]
    ds.save_as(files[0])
    out = tmp_path / "sr.nii.gz"
    assert main(_enhance(tmp_path / "series", out)) == 0
    assert nib.load(out).header.get_zooms()[:2] == pytest.approx((0.5, 0.5))
    ds.PixelSpacing = [0.0, 0.8]
    ds.save_as(files[0])
    _fails(capsys, _enhance(tmp_path / "series", tmp_path / "o.nii.gz"), "im0.dcm", "PixelSpacing")


def test_dicom_geometry_reaches_the_nifti_output(tmp_path):
    """PixelSpacing 0.7 x 0.8 mm, 2 mm apart: the x2 output has 0.35 / 0.4 / 2 mm voxels, in place."""
    _series(tmp_path / "series")
    out = tmp_path / "sr.nii.gz"
    assert main(_enhance(tmp_path / "series", out)) == 0
    affine = nib.load(out).affine
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), [0.35, 0.4, 2.0], rtol=1e-6)
    # DICOM's patient LPS becomes NIfTI's RAS: x and y flip sign, slices go up along z.
    assert affine[2, 2] == pytest.approx(2.0) and affine[0, 1] < 0 and affine[1, 0] < 0


# --- Raw k-space -------------------------------------------------------------------------------------


def _kspace(tmp_path: Path, name: str, *, mask=None, kspace=None) -> Path:
    yy, xx = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 28), indexing="ij")
    image = ((yy**2 + xx**2) < 0.5).astype(np.float32)
    sample = simulate_multicoil(
        torch.from_numpy(image), acceleration=3, seed=0, n_coils=4, center_fraction=0.3
    )
    data = to_complex(sample.kspace).numpy()[None] if kspace is None else kspace
    with h5py.File(tmp_path / name, "w") as f:
        f["kspace"] = data
        f["mask"] = sample.mask.numpy() if mask is None else mask
    return tmp_path / name


@pytest.mark.parametrize(
    ("mask", "needle"),
    [(np.zeros(28), "samples no"), (np.where(np.arange(28) % 3 == 0, 255, 0), "not 0/1"),
     (np.ones(27), "27"), (np.where(np.arange(28) % 2 == 0, 1, 0), "through the k-space centre")],
)  # fmt: skip
def test_bad_masks_are_refused(tmp_path, capsys, mask, needle):
    path = _kspace(tmp_path, "raw.h5", mask=mask)
    _fails(capsys, _enhance(path, tmp_path / "o.nii.gz", model="modl-r4"), "raw.h5", needle)


@pytest.mark.parametrize(
    ("kspace", "needle"),
    [(np.zeros((1, 0, 32, 28), np.complex64), "coils"), (np.zeros((0, 4, 32, 28), np.complex64), "slices"),
     (np.full((1, 4, 32, 28), 1e37, np.complex128), "too large"),
     (np.zeros((1, 4, 32, 28), np.complex64), "zeros")],
)  # fmt: skip
def test_bad_kspace_is_refused(tmp_path, capsys, kspace, needle):
    path = _kspace(tmp_path, "raw.h5", kspace=kspace, mask=np.ones(28))
    _fails(capsys, _enhance(path, tmp_path / "o.nii.gz", model="modl-r4"), "raw.h5", needle)


def test_too_few_coils_for_the_model_names_the_file(tmp_path, capsys):
    path = _kspace(tmp_path, "raw.h5")
    _fails(capsys, _enhance(path, tmp_path / "o.nii.gz", model="deepcomplex-r4"), "raw.h5", "needs 8")


# --- Checkpoints and the data set --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "weights", "needle"),
    [("[]", None, "not an edgesr checkpoint"), (b"\xff\xfe", None, "corrupt"),
     ('{"format": "edgesr-checkpoint"}', None, "'model'"), (None, b"", "empty"),
     (None, b"\x80\x02garbage", "pickle"), (None, b"\x80\x04garbage", "pickle"),
     (None, b"PK\x03\x04torch.save zip", "pickle"), (None, "truncate", "safetensors"),
     (None, "missing", "missing")],
)  # fmt: skip
def test_damaged_checkpoints_are_clear_errors(tmp_path, good_npy, capsys, meta, weights, needle):
    folder = tmp_path / "ckpt"
    shutil.copytree(teacher_path("rdn-mr-x2"), folder)
    if isinstance(meta, str):
        (folder / "checkpoint.json").write_text(meta)
    elif isinstance(meta, bytes):
        (folder / "checkpoint.json").write_bytes(meta)
    if weights == "truncate":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif weights == "missing":
        (folder / "model.safetensors").unlink()
    elif weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    argv = ["enhance", f"checkpoint={folder}", f"input={good_npy}", f"output={tmp_path / 'o.npy'}"]
    _fails(capsys, argv, needle)


def test_a_bad_model_option_is_a_clear_error(tmp_path, good_npy, capsys):
    folder = tmp_path / "ckpt"
    shutil.copytree(teacher_path("rdn-mr-x2"), folder)
    meta = json.loads((folder / "checkpoint.json").read_text())
    meta["model_options"]["scale"] = 5
    (folder / "checkpoint.json").write_text(json.dumps(meta))
    argv = ["enhance", f"checkpoint={folder}", f"input={good_npy}", f"output={tmp_path / 'o.npy'}"]
    _fails(capsys, argv, "checkpoint.json", "scale")


def test_an_empty_manifest_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "manifest.json").write_text("{}")
    _fails(capsys, ["data", "info", f"root={tmp_path}"], "manifest.json", "corrupt manifest")


def test_train_never_writes_into_a_folder_that_is_not_a_run(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "best").mkdir(parents=True)
    (out / "best" / "keep.txt").write_text("mine")
    (out / "notes.txt").write_text("mine")
    argv = ["train", "model=rdn_tiny", "optim.steps=2", "eval_every=1", f"out={out}"]
    _fails(capsys, [*argv, f"data.root={tiny_dataset.path.parent}"], "not an edgesr run")
    assert (out / "best" / "keep.txt").read_text() == "mine" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["best", "notes.txt"]


def test_a_png_output_of_several_slices_is_refused_before_inference(tmp_path, capsys):
    np.save(tmp_path / "vol.npy", np.random.default_rng(0).uniform(1, 9, (3, 21, 19)).astype(np.float32))
    _fails(capsys, _enhance(tmp_path / "vol.npy", tmp_path / "o.png"), "o.png", "one slice")
    assert not (tmp_path / "o.png").exists()


def test_a_users_lone_log_is_not_taken_for_a_run(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "log.jsonl").write_text('{"mine": true}\n')
    argv = ["train", "model=rdn_tiny", "optim.steps=2", f"out={out}", f"data.root={tiny_dataset.path.parent}"]
    _fails(capsys, argv, "not an edgesr run")
    assert (out / "log.jsonl").read_text() == '{"mine": true}\n'
