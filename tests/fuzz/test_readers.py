"""Property-based and mutation tests of edgesr's readers (issue 10): every generated or mutated file
ends in an EdgesrError naming the file or in a correct result; never another exception, a hang or a
changed input (see ``conftest.py`` for the property, the profiles and the collect mode)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgesr.data.dataset import PreparedDataset
from edgesr.data.images import load_image
from edgesr.data.kspace import load_kspace
from edgesr.teachers import teacher_path
from edgesr.train.checkpoint import load_for_inference, load_model, read_metadata
from tests.fuzz.conftest import (
    FUZZ,
    Case,
    array_problems,
    check_call,
    checkpoint_json_mutation,
    dicom_file_case,
    dicom_series_case,
    fastmri_case,
    image_problems,
    ismrmrd_case,
    kspace_problems,
    manifest_mutation,
    nifti_case,
    npy_case,
    raster_case,
    weights_mutation,
    write_dataset,
)


def fails_today(reason: str) -> pytest.MarkDecorator:
    """A property whose CI subset fails on the code as it stands (issue 10); non-strict, so that the fix
    turns it green. Properties whose CI subset passes are not marked: the thorough profile
    (EDGESR_FUZZ=thorough) finds what they still miss."""
    return pytest.mark.xfail(strict=False, reason=f"issue 10: {reason}")


def _check_image(prop: str, case: Case) -> None:
    check_call(prop, case, load_image, image_problems, where="edgesr/data/images.py (load_image)")


@FUZZ
@given(data=st.data())
def test_dicom_file(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_image("dicom-file", data.draw(dicom_file_case(Path(tmp))))


@FUZZ
@given(data=st.data())
def test_dicom_series(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_image("dicom-series", data.draw(dicom_series_case(Path(tmp))))


@FUZZ
@given(data=st.data())
def test_nifti(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_image("nifti", data.draw(nifti_case(Path(tmp))))


@FUZZ
@given(data=st.data())
def test_png_tiff(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_image("raster", data.draw(raster_case(Path(tmp))))


@FUZZ
@given(data=st.data())
def test_npy(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_image("npy", data.draw(npy_case(Path(tmp))))


@FUZZ
@given(data=st.data())
def test_fastmri_hdf5(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        case = data.draw(fastmri_case(Path(tmp)))
        check_call(
            "fastmri", case, load_kspace, kspace_problems, where="edgesr/data/kspace.py (load_fastmri)"
        )


@FUZZ
@given(data=st.data())
def test_ismrmrd_hdf5(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        case = data.draw(ismrmrd_case(Path(tmp)))
        check_call(
            "ismrmrd", case, load_kspace, kspace_problems, where="edgesr/data/kspace.py (load_ismrmrd)"
        )


# --- checkpoints ------------------------------------------------------------------------------------

TEACHER = teacher_path("rdn-mr-x2")
TEACHER_META: dict[str, Any] = json.loads((TEACHER / "checkpoint.json").read_text())
TEACHER_WEIGHTS = (TEACHER / "model.safetensors").read_bytes()
PROBE = np.random.default_rng(0).random((1, 8, 9)).astype(np.float32) * 100 + 1


def _load_and_run(folder: Path) -> np.ndarray | None:
    """read_metadata, load_model and load_for_inference, then (SR) the model on an 8x9 probe image."""
    from edgesr.pipeline import TorchPredictor, infer

    read_metadata(folder)
    load_model(folder)
    model, spec, _ = load_for_inference(folder)
    if spec.sr is None:
        return None
    return infer(spec, TorchPredictor(model, spec), PROBE, units="raw", tile=0)


def _inference_problems(result: np.ndarray | None, case: Case) -> list[str]:
    if result is None:
        return []
    problems = array_problems(result, case)
    scale = result.shape[1] / PROBE.shape[1] if result.ndim == 3 else 0
    if result.ndim != 3 or result.shape != (1, round(8 * scale), round(9 * scale)) or scale < 1:
        problems.append(f"probe 1x8x9 came out as {result.shape}")
    return problems


def _write_checkpoint(folder: Path, meta: bytes, weights: bytes | None) -> Case:
    folder.mkdir()
    (folder / "checkpoint.json").write_bytes(meta)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return Case("checkpoint", "", folder)


@FUZZ
@given(data=st.data())
def test_checkpoint_json(data: st.DataObject) -> None:
    what, meta = data.draw(checkpoint_json_mutation(TEACHER_META))
    with tempfile.TemporaryDirectory() as tmp:
        case = _write_checkpoint(Path(tmp) / "ckpt", meta, TEACHER_WEIGHTS)
        case.mutation = what
        check_call(
            "checkpoint-json", case, _load_and_run, _inference_problems, where="edgesr/train/checkpoint.py"
        )


@FUZZ
@given(data=st.data())
def test_checkpoint_weights(data: st.DataObject) -> None:
    what, weights = data.draw(weights_mutation(TEACHER_WEIGHTS))
    with tempfile.TemporaryDirectory() as tmp:
        case = _write_checkpoint(Path(tmp) / "ckpt", json.dumps(TEACHER_META).encode(), weights)
        case.mutation = what
        check_call(
            "checkpoint-weights", case, _load_and_run, _inference_problems, where="edgesr/train/checkpoint.py"
        )


def test_unmutated_teacher_runs() -> None:
    """The property's oracle accepts the shipped teacher (guards the suite against vacuous passes)."""
    assert _inference_problems(_load_and_run(TEACHER), Case("checkpoint", "none", TEACHER)) == []


# --- the prepared data set --------------------------------------------------------------------------


def _read_dataset(root: Path) -> list[Any]:
    dataset = PreparedDataset(root)
    samples = []
    for split in ("train", "val", "test"):
        samples += list(dataset.slices(split))
    for entry in dataset.volumes():
        dataset.load_volume(entry["name"])
    return samples


def _dataset_problems(samples: list[Any], case: Case) -> list[str]:
    problems = []
    volume = np.load(case.path / "v2" / "volumes" / "vol.npy")
    for sample in samples:
        image = np.asarray(sample.image)
        if image.dtype != np.float32 or image.ndim != 2 or not np.isfinite(image).all():
            problems.append(
                f"slice {sample.slice_index} is {image.dtype} {image.shape}, not finite float32 2-D"
            )
        elif not isinstance(sample.slice_index, int) or not 0 <= sample.slice_index < volume.shape[0]:
            problems.append(
                f"slice index {sample.slice_index!r} outside the volume's {volume.shape[0]} slices"
            )
        elif image.shape != volume.shape[1:] or not np.array_equal(image, volume[sample.slice_index]):
            problems.append(f"slice {sample.slice_index} differs from the volume file (another file read?)")
        if not isinstance(sample.volume_max, float | int) or not np.isfinite(sample.volume_max):
            problems.append(f"volume_max {sample.volume_max!r} is not a finite number")
    return problems


@FUZZ
@given(data=st.data())
def test_dataset_manifest(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        manifest = write_dataset(root, np.random.default_rng(0))
        what, blob = data.draw(manifest_mutation(manifest))
        (root / "v2" / "manifest.json").write_bytes(blob)
        case = Case("manifest", what, root, names=["manifest.json"])
        check_call("manifest", case, _read_dataset, _dataset_problems, where="edgesr/data/dataset.py")


def test_unmutated_dataset_reads(tmp_path: Path) -> None:
    write_dataset(tmp_path, np.random.default_rng(0))
    samples = _read_dataset(tmp_path)
    assert len(samples) == 4 and _dataset_problems(samples, Case("manifest", "none", tmp_path)) == []
