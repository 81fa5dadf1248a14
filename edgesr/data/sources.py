"""The real images edgesr's default data set is built from, as shipped by Debian and PyPI packages.

No data is downloaded at run time: each source is a file that a package installs (``.ci/setup``
installs them). Every source loads to a float32 volume ``[S, H, W]`` of axial slices in closest-RAS
orientation, with its voxel spacing, in a non-negative intensity unit:

* MR: the scanner's stored magnitude units, unchanged;
* CT: ``HU + 1024`` clipped at 0 (air ~0, water ~1024), so that CT, like MR, is a non-negative
  magnitude and the metrics' "normalise by the reference maximum" applies unchanged.

Each source has a role. ``train`` sources are cut into train/val/test blocks (:mod:`edgesr.data.splits`).
``external`` sources are never trained on, in whole: other subjects, scanners, vendors, contrasts and
anatomy, scored apart as the ``external`` split, because a test slice of the training subject measures
far less than a scan from elsewhere. Why each source has its role:

* train, MR: Colin27 (T1, one subject, MNI) and the heudiconv diffusion b=0 volume (T2-weighted EPI,
  Siemens Prisma 3T at NYU, 1.5 mm): two contrasts and two scanners, the most slices of the real scans;
  the MNI152 average as well, shown apart as a template. Train, CT: the head CT (the only CT volume
  with full HU range and real spacing).
* external, MR: nibabel's EPI (another subject and scanner, 2 mm), heudiconv's BOLD EPI (Siemens Trio
  3T at USC, 3.25 mm, 64x64) and pydicom's MR slice (Toshiba, 64x64, not the brain): other sites,
  vendors, resolutions and anatomy. External, CT: imageio's abdominal CT (stented aorta; another
  anatomy, stored clipped to 0..2000 HU in 33 levels) and pydicom's CT slice (GE, spine, HU).
* external, from pydicom-data (the test files of pydicom): a Philips shoulder MR (1024x1024, rescale
  slope) and a Siemens abdominal MR (an MPR of a 3-D FLASH, 484x484 reconstructed from a 256x134
  matrix): other vendors and anatomy, and images that the console has already interpolated to a finer
  grid than it acquired, as clinical DICOM often is; and a 512x512 head CT with padding outside the
  scan circle. These are held out, not trained on, because they are the kind of file users bring,
  and they are where a brain-trained model is most likely to do harm.
"""

from __future__ import annotations

import importlib.util
import io
import plistlib
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from edgesr.errors import DataError

CT_HU_OFFSET = 1024.0
ROLES = ("train", "external")


@dataclass(frozen=True)
class SourceVolume:
    """One loaded source volume: ``data`` is float32 ``[S, H, W]``; ``spacing`` is (slice, row, col) mm."""

    data: np.ndarray
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class Source:
    """A real image volume that a package ships."""

    name: str
    modality: str  # "MR" or "CT"
    description: str
    package: str  # how to install it, e.g. "debian:mricron-data"
    license: str
    locate: Callable[[], Path | None]
    load: Callable[[Path], SourceVolume]
    # An average of many subjects (smooth, no single scanner's noise or artefacts): scored and shown
    # apart, never the headline, because models gain far more on it than on a real scan.
    template: bool = False
    # "train": cut into train/val/test; "external": never trained on, scored whole as the external split.
    role: str = "train"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"source {self.name!r}: role must be one of {ROLES}; got {self.role!r}")


def _nifti_axial(path: Path) -> SourceVolume:
    """A 3-D NIfTI reoriented to closest RAS, as axial slices ``[S, H, W]`` (S = inferior->superior)."""
    return _nifti_axial_image(nib.load(str(path)), path)


def _nifti_axial_image(image: Any, path: Path) -> SourceVolume:
    image = nib.as_closest_canonical(image)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    zooms = image.header.get_zooms()[:3]
    # [X, Y, Z] -> [Z, Y, X], with Y flipped so that anterior is up when a slice is displayed.
    slices = np.ascontiguousarray(np.flip(data.transpose(2, 1, 0), axis=1))
    return SourceVolume(slices, (float(zooms[2]), float(zooms[1]), float(zooms[0])))


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _locate_colin27() -> Path | None:
    return _first_existing(Path("/usr/share/mricron/templates/ch2.nii.gz"))


def _locate_mni152() -> Path | None:
    return _package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


def _locate_invesalius_ct() -> Path | None:
    return _first_existing(Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3"))


def _load_invesalius_project(path: Path) -> SourceVolume:
    """An InVesalius ``.inv3`` project: a gzipped tar whose ``main.plist`` describes a raw volume."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            if "main.plist" not in members:
                raise DataError(f"{path}: no main.plist inside the InVesalius project")
            main = plistlib.load(io.BytesIO(tar.extractfile(members["main.plist"]).read()))  # type: ignore[union-attr]
            matrix = main["matrix"]
            raw = tar.extractfile(members[matrix["filename"]]).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, KeyError, plistlib.InvalidFileException) as exc:
        raise DataError(f"{path}: not a readable InVesalius project ({exc})") from None
    shape = tuple(int(n) for n in matrix["shape"])
    volume = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]))
    if volume.size != int(np.prod(shape)):
        raise DataError(f"{path}: matrix holds {volume.size} values, main.plist says shape {shape}")
    hu = volume.reshape(shape).astype(np.float32)
    spacing = main.get("spacing", [1.0, 1.0, 1.0])  # (x, y, z) in mm
    data = np.clip(hu + CT_HU_OFFSET, 0.0, None)
    return SourceVolume(np.ascontiguousarray(data), (float(spacing[2]), float(spacing[1]), float(spacing[0])))


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed Python package, found without importing the package (it is
    only a carrier of the file: none of its dependencies need be installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return _first_existing(*(Path(location) / relative for location in spec.submodule_search_locations))


def _locate_heudiconv(relative: str) -> Callable[[], Path | None]:
    return lambda: _package_file("heudiconv", f"tests/data/{relative}")


def _locate_nibabel(relative: str) -> Callable[[], Path | None]:
    return lambda: _package_file("nibabel", f"tests/data/{relative}")


def _locate_pydicom(relative: str) -> Callable[[], Path | None]:
    return lambda: _package_file("pydicom", f"data/test_files/{relative}")


def _locate_pydicom_data(relative: str) -> Callable[[], Path | None]:
    # The pydicom-data wheel installs pydicom's larger test files as the top-level package data_store.
    return lambda: _package_file("data_store", f"data/{relative}")


def _locate_imageio_stent() -> Path | None:
    # Debian's python3-imageio ships the standard images (the PyPI wheel fetches them at run time).
    return _first_existing(Path("/usr/lib/python3/dist-packages/imageio/resources/images/stent.npz"))


def _first_volume_axial(path: Path) -> SourceVolume:
    """The first volume of a 4-D (fMRI) NIfTI, as axial slices."""
    image: Any = nib.load(str(path))
    if len(image.shape) == 4:
        image = image.slicer[..., 0]
    return _nifti_axial_image(image, path)


def _siemens_mosaic(path: Path) -> SourceVolume:
    """A Siemens mosaic DICOM (one EPI volume tiled into one image), unpacked by nibabel's CSA reader."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel calls its DICOM readers experimental
            from nibabel.nicom import dicomwrappers

            wrapper = dicomwrappers.wrapper_from_file(str(path))
            data = np.asarray(wrapper.get_data(), dtype=np.float32)
            affine = np.asarray(wrapper.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 (nibabel raises many kinds for a bad file)
        raise DataError(f"{path}: not a readable Siemens mosaic ({exc})") from None
    if data.ndim != 3:
        raise DataError(f"{path}: expected a mosaic of a 3-D volume, got shape {data.shape}")
    # DICOM patient coordinates are LPS; NIfTI's are RAS.
    return _nifti_axial_image(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine), path)


def _dicom_slice(path: Path) -> SourceVolume:
    """One DICOM image as a one-slice volume: CT in HU + 1024 (its rescale applied), MR as stored."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 (pydicom raises many kinds for a bad file)
        raise DataError(f"{path}: not a readable DICOM image ({exc})") from None
    if pixels.ndim != 2:
        raise DataError(f"{path}: expected one 2-D image, got shape {pixels.shape}")
    if ds.get("Modality") == "CT":
        hu = pixels * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
        pixels = np.clip(hu + CT_HU_OFFSET, 0.0, None)
    row, col = (float(v) for v in ds.get("PixelSpacing", [1.0, 1.0]))
    thickness = float(ds.get("SliceThickness", 1.0) or 1.0)
    return SourceVolume(np.ascontiguousarray(pixels[None]), (thickness, row, col))


def _imageio_stent(path: Path) -> SourceVolume:
    """imageio's ``stent.npz``: int16 ``[256, 128, 128]`` CT, HU clipped to 0..2000 by its publisher.

    The file has no header: the values (0 below water, ~62 soft tissue, ~300-400 contrast-filled
    aorta, 2000 the metal stent, 33 levels) say it holds HU clipped at 0, so it becomes HU + 1024 like
    every CT here. Its spacing is not stored; 1 mm is recorded and nothing here depends on it.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            hu = np.asarray(archive[archive.files[0]], dtype=np.float32)
    except (OSError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: not a readable npz volume ({exc})") from None
    if hu.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {hu.shape}")
    return SourceVolume(np.ascontiguousarray(hu + CT_HU_OFFSET), (1.0, 1.0, 1.0))


SOURCES: tuple[Source, ...] = (
    Source(
        name="colin27-t1",
        modality="MR",
        description="Colin27 brain T1 (one subject, 27 averaged scans), 1 mm isotropic, 181x217x181",
        package="debian:mricron-data",
        license="BSD-3-Clause (MRIcron templates)",
        locate=_locate_colin27,
        load=_nifti_axial,
    ),
    Source(
        name="mni152-t1",
        modality="MR",
        description="ICBM 2009a symmetric MNI152 T1 average, 1 mm isotropic, 197x233x189",
        package="pypi:nilearn (data file only)",
        license="MNI ICBM152 license (free use with attribution), shipped by nilearn (BSD-3-Clause)",
        locate=_locate_mni152,
        load=_nifti_axial,
        template=True,
    ),
    Source(
        name="cranium-ct",
        modality="CT",
        description="Head CT (ProMED CT 0051), 0.96x0.96x1.5 mm, 108 slices of 256x256, int16 HU",
        package="debian:invesalius-examples",
        license="GPL-2 (read in place, never copied into the repository)",
        locate=_locate_invesalius_ct,
        load=_load_invesalius_project,
    ),
    Source(
        name="heudiconv-b0dwi",
        modality="MR",
        description="Brain diffusion b=0 (T2-weighted EPI), Siemens Prisma 3T, 1.5 mm, 152x150x81 mosaic",
        package="pypi:heudiconv (test data file only)",
        license="Apache-2.0 (heudiconv test data)",
        locate=_locate_heudiconv("b0dwiForFmap/b0dwi_for_fmap+00001.dcm"),
        load=_siemens_mosaic,
    ),
    Source(
        name="nibabel-epi",
        modality="MR",
        description="Brain EPI (fMRI, first volume), 2x2x2.2 mm, 128x96x24, another subject and scanner",
        package="pypi:nibabel (test data)",
        license="MIT (nibabel test data)",
        locate=_locate_nibabel("example4d.nii.gz"),
        load=_first_volume_axial,
        role="external",
    ),
    Source(
        name="heudiconv-bold-epi",
        modality="MR",
        description="Brain BOLD EPI, Siemens TrioTim 3T (USC), 3.25x3.25x3.6 mm, 64x64x35 mosaic",
        package="pypi:heudiconv (test data file only)",
        license="Apache-2.0 (heudiconv test data)",
        locate=_locate_heudiconv("axasc35.dcm"),
        load=_siemens_mosaic,
        role="external",
    ),
    Source(
        name="pydicom-mr",
        modality="MR",
        description="MR slice (Toshiba, not the brain), 0.31 mm, 64x64, int16",
        package="pypi:pydicom (test file MR_small.dcm)",
        license="MIT (pydicom test files)",
        locate=_locate_pydicom("MR_small.dcm"),
        load=_dicom_slice,
        role="external",
    ),
    Source(
        name="stent-ct",
        modality="CT",
        description="Abdominal CT of a stented aorta, 256x128x128, HU clipped to 0..2000 in 33 levels",
        package="debian:python3-imageio",
        license="BSD-2-Clause (imageio standard images)",
        locate=_locate_imageio_stent,
        load=_imageio_stent,
        role="external",
    ),
    Source(
        name="pydicom-ct",
        modality="CT",
        description="CT slice through the spine (GE), 0.66 mm, 128x128, HU by RescaleSlope/Intercept",
        package="pypi:pydicom (test file CT_small.dcm)",
        license="MIT (pydicom test files)",
        locate=_locate_pydicom("CT_small.dcm"),
        load=_dicom_slice,
        role="external",
    ),
    Source(
        name="shoulder-mr",
        modality="MR",
        description="Shoulder MR (Philips T5 1.5T, spin echo), 0.195 mm, 1024x1024, RescaleSlope 3.77",
        package="pypi:pydicom-data (test file MR2_UNCR.dcm)",
        license="MIT (pydicom test files)",
        locate=_locate_pydicom_data("MR2_UNCR.dcm"),
        load=_dicom_slice,
        role="external",
    ),
    Source(
        name="abdomen-mr",
        modality="MR",
        description="Abdominal MR (Siemens Avanto 1.5T, 3-D FLASH MPR), 0.72 mm, 484x484 (256x134 acquired)",
        package="pypi:pydicom-data (test file MR-SIEMENS-DICOM-WithOverlays.dcm)",
        license="MIT (pydicom test files)",
        locate=_locate_pydicom_data("MR-SIEMENS-DICOM-WithOverlays.dcm"),
        load=_dicom_slice,
        role="external",
    ),
    Source(
        name="head-ct",
        modality="CT",
        description="Head CT, 0.48 mm, 512x512, HU by RescaleIntercept, padding (-2000) outside the scan",
        package="pypi:pydicom-data (test file 693_UNCR.dcm)",
        license="MIT (pydicom test files)",
        locate=_locate_pydicom_data("693_UNCR.dcm"),
        load=_dicom_slice,
        role="external",
    ),
)


def get_source(name: str) -> Source:
    for source in SOURCES:
        if source.name == name:
            return source
    raise DataError(f"unknown data source {name!r}; known: {', '.join(s.name for s in SOURCES)}")


def is_external(name: str) -> bool:
    """Whether the source ``name`` is held out whole, never trained on (unknown: False)."""
    return any(source.role == "external" for source in SOURCES if source.name == name)


def is_template(name: str) -> bool:
    """Whether the source ``name`` is a population average rather than a real scan (unknown: False)."""
    return any(source.template for source in SOURCES if source.name == name)
