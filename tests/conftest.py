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


def _prepare_tiny(tmp_path, monkeypatch, *, external: bool) -> PreparedDataset:
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
    monkeypatch.setattr(prepare_module, "SOURCES", sources)
    prepare_dataset(PrepareConfig(root=str(tmp_path / "cache")))
    return PreparedDataset(tmp_path / "cache")


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch) -> PreparedDataset:
    """A prepared data set of one synthetic MR volume of smooth blobs (odd in-plane size)."""
    return _prepare_tiny(tmp_path, monkeypatch, external=False)


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


def siemens_like_mrd(
    image: np.ndarray,
    *,
    coils: int = 8,
    acceleration: int = 4,
    acs: int = 24,
    oversampling: int = 2,
    fov_mm: float = 220.0,
    slices: int = 1,
    noise_level: float = 2e-4,
    seed: int = 0,
) -> tuple[str, list]:
    """An MRD header and acquisitions as a Siemens scanner sends them, from a magnitude ``image [H, W]``.

    Readout oversampled ``oversampling`` times (encodedSpace ``H*os x W``, reconSpace ``H x W``, the
    field of view doubled along the readout); a noise scan of correlated coil noise first; ``acs``
    separate calibration lines (ACQ_IS_PARALLEL_CALIBRATION) then every ``acceleration``-th line,
    the slice's last flagged ACQ_LAST_IN_SLICE; positions and directions of an axial slice.
    """
    import ismrmrd

    from edgesr.physics.coils import simulate_coil_maps, smooth_phase
    from edgesr.physics.fft import to_complex

    height, width = image.shape
    readout = height * oversampling
    rng = np.random.default_rng(seed)
    maps = to_complex(simulate_coil_maps(readout, width, coils, seed=seed)).numpy()  # [C, X, W]
    phase = np.exp(1j * smooth_phase(height, width, seed=seed).numpy())
    padded = np.zeros((readout, width), dtype=np.complex64)
    top = (readout - height) // 2
    padded[top : top + height] = image * phase
    coil_images = maps * padded[None]
    kspace = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(coil_images, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    mixing = np.eye(coils) + 0.3 * rng.standard_normal((coils, coils))  # correlated receiver noise
    sigma = noise_level * float(np.abs(kspace).max())

    def noise(samples: int) -> np.ndarray:
        white = rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples))
        return (mixing @ white * sigma / np.sqrt(2)).astype(np.complex64)

    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <acquisitionSystemInformation><receiverChannels>{coils}</receiverChannels></acquisitionSystemInformation>
  <experimentalConditions><H1resonanceFrequency_Hz>123200000</H1resonanceFrequency_Hz></experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>{readout}</x><y>{width}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov_mm * oversampling}</x><y>{fov_mm}</y><z>5</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>{height}</x><y>{width}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov_mm}</x><y>{fov_mm}</y><z>5</z></fieldOfView_mm></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1>
        <minimum>0</minimum><maximum>{width - 1}</maximum><center>{width // 2}</center>
      </kspace_encoding_step_1>
      <slice><minimum>0</minimum><maximum>{slices - 1}</maximum><center>0</center></slice>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>"""
    acquisitions = []
    scan = ismrmrd.Acquisition.from_array(noise(readout))
    scan.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    acquisitions.append(scan)
    centre = width // 2
    calibration = list(range(centre - acs // 2, centre + acs // 2))
    imaging = list(range(centre % acceleration, width, acceleration))
    for slice_index in range(slices):
        lines = [(line, "calibration") for line in calibration] + [(line, "imaging") for line in imaging]
        for number, (line, kind) in enumerate(lines):
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(kspace[:, :, line] + noise(readout)))
            acq.idx.kspace_encode_step_1 = line
            acq.idx.slice = slice_index
            acq.read_dir[:] = (1.0, 0.0, 0.0)
            acq.phase_dir[:] = (0.0, 1.0, 0.0)
            acq.slice_dir[:] = (0.0, 0.0, 1.0)
            acq.position[:] = (0.0, 0.0, 5.0 * slice_index)
            if kind == "calibration":
                acq.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
            if number == len(lines) - 1:
                acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
            acquisitions.append(acq)
    return xml, acquisitions


def write_mrd_file(path: Path, xml: str, acquisitions: list) -> Path:
    import ismrmrd

    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        dataset.write_xml_header(xml)
        for acq in acquisitions:
            dataset.append_acquisition(acq)
    finally:
        dataset.close()
    return path
