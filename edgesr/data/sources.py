"""The real images edgesr's default data set is built from, as shipped by Debian and PyPI packages.

No data is downloaded at run time: each source is a file that a package installs (``.ci/setup``
installs them). Every source loads to a float32 volume ``[S, H, W]`` of axial slices in closest-RAS
orientation, with its voxel spacing, in a non-negative intensity unit:

* MR: the scanner's stored magnitude units, unchanged;
* CT: ``HU + 1024`` clipped at 0 (air ~0, water ~1024), so that CT, like MR, is a non-negative
  magnitude and the metrics' "normalise by the reference maximum" applies unchanged.
"""

from __future__ import annotations

import importlib.util
import io
import plistlib
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from edgesr.errors import DataError

CT_HU_OFFSET = 1024.0


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


def _nifti_axial(path: Path) -> SourceVolume:
    """A 3-D NIfTI reoriented to closest RAS, as axial slices ``[S, H, W]`` (S = inferior->superior)."""
    image = nib.as_closest_canonical(nib.load(str(path)))
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
    # nilearn is only a carrier of the file: find it without importing the package (and its deps).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = _first_existing(
            Path(location) / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        )
        if found:
            return found
    return None


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
)


def get_source(name: str) -> Source:
    for source in SOURCES:
        if source.name == name:
            return source
    raise DataError(f"unknown data source {name!r}; known: {', '.join(s.name for s in SOURCES)}")


def is_template(name: str) -> bool:
    """Whether the source ``name`` is a population average rather than a real scan (unknown: False)."""
    return any(source.template for source in SOURCES if source.name == name)
