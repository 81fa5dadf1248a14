"""Fixtures that *create* small files in every supported format (no downloads, no golden files)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import edgesr.data.prepare as prepare_module
from edgesr.data.dataset import PreparedDataset
from edgesr.data.prepare import PrepareConfig, prepare_dataset
from edgesr.data.sources import SOURCES, Source, SourceVolume


def write_dicom_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    position_z: float,
    instance: int,
    series_uid: str,
    slope: float = 1.0,
    intercept: float = 0.0,
    modality: str = "CT",
    signed: bool = False,
    padding_value: int | None = None,
) -> None:
    """One single-frame DICOM file (CT unless told) with the tags a series reader needs.

    ``signed`` stores int16 pixels (PixelRepresentation 1), as scanners that pad with -2000 do;
    ``padding_value`` writes PixelPaddingValue (in stored units).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = (
        pydicom.uid.CTImageStorage if modality == "CT" else pydicom.uid.MRImageStorage
    )
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.3"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, position_z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.8]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if padding_value is not None:
        ds.PixelPaddingValue = padding_value
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def dicom_series(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 3-slice 37x31 series written in shuffled order; returns (folder, expected HU volume)."""
    folder = tmp_path / "series"
    folder.mkdir()
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 3000, size=(3, 37, 31)).astype(np.uint16)
    uid = generate_uid()
    # File names deliberately out of anatomical order: the reader must sort by position.
    for file_index, slice_index in enumerate([2, 0, 1]):
        write_dicom_slice(
            folder / f"img{file_index}.dcm",
            stored[slice_index],
            position_z=-10.0 + 2.5 * slice_index,
            instance=slice_index + 1,
            series_uid=uid,
            slope=1.0,
            intercept=-1024.0,
        )
    return folder, stored.astype(np.float32) - 1024.0


def real_sources_available() -> bool:
    return all(source.locate() is not None for source in SOURCES)


needs_real_data = pytest.mark.skipif(
    not real_sources_available(), reason="real data packages not installed (run `bash .ci/setup`)"
)


def card_sources(card: dict) -> list[str]:
    """The training sources a shipped model's card was measured on, of its modality: what its promises
    hold for (a source added to the data set later is scored by a re-trained model's new card)."""
    modality = card["spec"]["intensity"]["modality"]
    return [
        d["name"] for d in card["data"] if d["modality"] == modality and d.get("role", "train") == "train"
    ]


@pytest.fixture(scope="session")
def real_data_root(tmp_path_factory) -> Path:
    """The real default data set, prepared once per test session into a temporary folder."""
    if not real_sources_available():
        pytest.skip("real data packages not installed (run `bash .ci/setup`)")
    root = tmp_path_factory.mktemp("real-data")
    prepare_dataset(PrepareConfig(root=str(root)))
    return root


def _prepare_tiny(tmp_path, monkeypatch, *, external: bool, template: bool = False) -> PreparedDataset:
    yy, xx = np.meshgrid(np.linspace(-1, 1, 37), np.linspace(-1, 1, 33), indexing="ij")
    slices = [np.exp(-((yy - 0.2 * np.sin(k / 5)) ** 2 + xx**2) * 3) * (1 + 0.1 * k / 80) for k in range(80)]
    volume = (np.stack(slices) * 100).astype(np.float32)
    path = tmp_path / "fake.bin"
    path.write_bytes(b"fake")
    source = Source(
        "fake-mr",
        "MR",
        "synthetic",
        "test",
        "CC0",
        locate=lambda: path,
        load=lambda p: SourceVolume(volume, (1, 1, 1)),
    )
    sources: tuple[Source, ...] = (source,)
    if external:
        # Another "scanner": the blobs mirrored, brighter, on a 29x35 grid; scored, never trained on.
        other = np.ascontiguousarray(volume[:20, 4:33, ::-1][..., :35] * 3)
        sources += (
            dataclasses.replace(
                source, name="elsewhere-mr", role="external", load=lambda p: SourceVolume(other, (1, 1, 1))
            ),
        )
    if template:
        # A population average: the blobs of every slice averaged, smooth, trained on and scored apart.
        mean = np.repeat(volume.mean(axis=0, keepdims=True), len(volume), axis=0)
        sources += (
            dataclasses.replace(
                source, name="fake-atlas", template=True, load=lambda p: SourceVolume(mean, (1, 1, 1))
            ),
        )
    monkeypatch.setattr(prepare_module, "SOURCES", sources)
    if template:
        monkeypatch.setattr("edgesr.data.sources.SOURCES", sources)  # is_template reads it
    prepare_dataset(PrepareConfig(root=str(tmp_path / "cache")))
    return PreparedDataset(tmp_path / "cache")


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch) -> PreparedDataset:
    """A prepared data set of one synthetic MR volume of smooth blobs (odd in-plane size)."""
    return _prepare_tiny(tmp_path, monkeypatch, external=False)


@pytest.fixture
def tiny_dataset_with_template(tmp_path, monkeypatch) -> PreparedDataset:
    """``tiny_dataset`` and a template (a population average) among its training and test sources."""
    return _prepare_tiny(tmp_path, monkeypatch, external=False, template=True)


@pytest.fixture
def tiny_dataset_with_external(tmp_path, monkeypatch) -> PreparedDataset:
    """``tiny_dataset`` and a second synthetic MR volume in the external split."""
    return _prepare_tiny(tmp_path, monkeypatch, external=True)


def spec_for(model, name: str, *, modality: str = "MR", degradation: str | None = None):
    """The spec a training run would write for ``model`` (registered as ``name``)."""
    from edgesr.models import model_task
    from edgesr.models._probe import receptive_radius
    from edgesr.spec import recon_spec, sr_spec

    if model_task(name) == "sr":
        kind = degradation or ("ct-blur" if modality == "CT" else "mr-kspace")
        return sr_spec(
            modality=modality,
            scale=model.scale,
            degradation=kind,
            upsampler=model.upsampler,
            receptive_radius=receptive_radius(model, model.scale),
        )
    return recon_spec(coils=getattr(model, "coils", 0))


def save_model(folder: Path, model, name: str, options: dict, **kwargs):
    """A checkpoint of ``model`` with its spec, as ``edgesr train`` writes it."""
    from edgesr.train.checkpoint import save_checkpoint

    spec_options = {k: kwargs.pop(k) for k in ("modality", "degradation") if k in kwargs}
    kwargs.setdefault("step", 1)
    kwargs.setdefault("config", {})
    return save_checkpoint(
        folder,
        model,
        model_name=name,
        model_options=options,
        spec=spec_for(model, name, **spec_options),
        **kwargs,
    )


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """An rdn_tiny x2 checkpoint whose body matters (its last conv is not zero)."""
    import torch

    from edgesr.models import create_model

    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2)
    torch.nn.init.normal_(model.to_image.weight, std=0.02)
    return save_model(tmp_path / "ckpt", model, "rdn_tiny", {"scale": 2, "upsampler": "zero-fill"})


@pytest.fixture
def ct_checkpoint(tmp_path):
    """An rdn_tiny x2 CT checkpoint (HU in and out) whose body matters."""
    import torch

    from edgesr.models import create_model

    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2)
    torch.nn.init.normal_(model.to_image.weight, std=0.05)
    return save_model(
        tmp_path / "ct", model, "rdn_tiny", {"scale": 2, "upsampler": "zero-fill"}, modality="CT"
    )


def export_cli(dataset, checkpoint, out, *extra: str) -> int:
    """``edgesr export checkpoint=... out=...`` on the tiny data set, one thread."""
    from edgesr.cli import main

    argv = [
        "export",
        f"checkpoint={checkpoint}",
        f"out={out}",
        f"data_root={dataset.path.parent}",
        "threads=1",
    ]
    return main([*argv, *extra])


def siemens_like_mrd(image: np.ndarray, **options):
    """An MRD header and acquisitions as a Siemens scanner sends them (see
    :func:`edgesr.data.mrd.simulate_acquisitions`)."""
    from edgesr.data.mrd import simulate_acquisitions

    return simulate_acquisitions(image, **options)


def write_mrd_file(path: Path, xml: str, acquisitions: list) -> Path:
    from edgesr.data.mrd import write_mrd_file as write

    return write(path, xml, acquisitions)
