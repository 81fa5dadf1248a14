"""Loaders for users' own images: DICOM series, NIfTI, 8/16-bit PNG/TIFF and NPY.

Every loader returns an :class:`ImageVolume` of float32 slices ``[S, H, W]`` and checks what later
steps rely on: a numeric, finite, 2-D or 3-D image. Problems raise :class:`~edgesr.errors.DataError`
naming the file and the problem.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgesr.errors import DataError

RASTER_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageVolume:
    """A loaded image as float32 slices.

    Attributes:
        data: float32 ``[S, H, W]``; a 2-D image has ``S == 1``.
        spacing: (slice, row, column) spacing in mm where the format records it, else 1.0.
        source: the file or folder it was read from.
        format: ``dicom``, ``nifti``, ``png``, ``tiff`` or ``npy``.
        affine: the NIfTI voxel-to-world affine (4x4), kept so that outputs can be written back.
        dtype: the data type that holds the values (``uint8``, ``uint16``, ``int16``...), to write
            outputs in its range; for DICOM, the type of the modality values (e.g. ``int16`` for HU
            from unsigned stored pixels), not of the stored pixels.
        meta: format details (DICOM modality and series UID, ...).
        padding: bool ``[S, H, W]``, True where the scanner padded the image (DICOM
            PixelPaddingValue / PixelPaddingRangeLimit): not tissue, excluded from normalisation and
            restored in outputs.
        volumes: how many 3-D volumes ``data`` holds one after another (a 4-D NIfTI's time points or
            diffusion directions: ``S // volumes`` slices each); each is normalised and enhanced on its
            own, as a scan of its own, and outputs keep the fourth axis.
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    source: Path
    format: str
    affine: np.ndarray | None = None
    dtype: str = "float32"
    meta: dict[str, Any] = field(default_factory=dict)
    padding: np.ndarray | None = None
    volumes: int = 1

    def __post_init__(self) -> None:
        if self.volumes < 1 or self.data.shape[0] % self.volumes:
            raise ValueError(
                f"volumes={self.volumes} does not divide the {self.data.shape[0]} slices of data "
                f"{self.data.shape}"
            )

    def volume(self, index: int) -> ImageVolume:
        """The ``index``-th 3-D volume of a 4-D image (itself for a 3-D one), with its own padding."""
        if not 0 <= index < self.volumes:
            raise IndexError(f"volume {index} of {self.volumes}")
        if self.volumes == 1:
            return self
        depth = self.data.shape[0] // self.volumes
        block = slice(index * depth, (index + 1) * depth)
        padding = self.padding[block] if self.padding is not None else None
        return replace(self, data=self.data[block], padding=padding, volumes=1)


def _checked(data: np.ndarray, path: Path) -> np.ndarray:
    """float32 ``[S, H, W]`` from a 2-D or 3-D numeric array, or a DataError naming ``path``."""
    if data.dtype.kind not in "iuf":
        kind = {"b": "boolean", "c": "complex", "O": "object", "U": "text", "S": "bytes"}.get(data.dtype.kind)
        raise DataError(f"{path}: unsupported data type {kind or data.dtype} (need real integers or floats)")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 2-D image or 3-D volume, got shape {data.shape}")
    if data.size == 0:
        raise DataError(f"{path}: the image is empty (shape {data.shape})")
    if min(data.shape[1:]) < 2:
        raise DataError(f"{path}: image of shape {data.shape[1:]} is too small (at least 2x2 pixels)")
    bad = ~np.isfinite(data)
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} NaN/Inf values in the image")
    peak = float(np.abs(data).max())
    if peak > float(np.finfo(np.float32).max):
        raise DataError(f"{path}: values up to {peak:.3g} exceed what float32 computation can hold")
    return np.ascontiguousarray(data.astype(np.float32, copy=False))


def volume_from_array(
    array: np.ndarray, *, spacing: Sequence[float] | None = None, source: str = "<array>"
) -> ImageVolume:
    """An image held in memory (the Python API), checked as the file loaders check theirs.

    Args:
        array: ``[H, W]`` or ``[S, H, W]`` real numbers.
        spacing: millimetres, ``(row, column)`` or ``(slice, row, column)``; default: 1 (unknown).

    Raises:
        DataError: naming ``source`` and the problem (type, shape, NaN/Inf, spacing).
    """
    path = Path(source)
    data = _checked(np.asarray(array), path)
    if spacing is None:
        millimetres = (1.0, 1.0, 1.0)
    else:
        values = [float(v) for v in spacing]
        if len(values) not in (2, 3) or not all(np.isfinite(values)) or min(values) <= 0:
            raise DataError(
                f"{path}: spacing {list(spacing)} must be 2 (row, column) or 3 (slice, row, column) "
                "positive millimetre values"
            )
        millimetres = (1.0, values[0], values[1]) if len(values) == 2 else (values[0], values[1], values[2])
    return ImageVolume(data, millimetres, path, "array", dtype=str(np.asarray(array).dtype))


def load_nifti(path: str | Path) -> ImageVolume:
    """A NIfTI file; slices run along the third voxel axis (``[X, Y, Z] -> [Z, X, Y]``); affine kept.

    A 4-D file (``[X, Y, Z, T]``) holds its volumes one after another (``[T * Z, X, Y]``,
    ``volumes=T``); a fourth axis of one is dropped.
    """
    import nibabel as nib

    path = Path(path)
    try:
        image: Any = nib.load(str(path))
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):  # CIFTI, MINC, Analyze...
            raise DataError(f"{path}: a {type(image).__name__}, not a NIfTI-1/2 image")
        stored = np.dtype(image.get_data_dtype())
        if stored.kind not in "iuf" or stored.names is not None:  # complex, RGB (structured), bool
            raise DataError(f"{path}: NIfTI data of type {stored} (edgesr reads real scalar images)")
        # float64 keeps values that float32 cannot hold visible to the range check below.
        data = np.asarray(image.get_fdata(dtype=np.float64))
    except DataError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: not a readable NIfTI file ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    volumes = 1
    meta: dict[str, Any] = {}
    if data.ndim == 4:
        # A time series or diffusion set: its volumes one after another, [X, Y, Z, T] -> [T * Z, X, Y].
        volumes = data.shape[3]
        data = np.moveaxis(data, (3, 2), (0, 1)).reshape(-1, *data.shape[:2])
        zooms4 = image.header.get_zooms()
        meta["volume_step"] = float(zooms4[3]) if len(zooms4) > 3 else 1.0  # pixdim[4]: TR, or 1
        meta["volume_step_unit"] = str(image.header.get_xyzt_units()[1])  # sec, msec, usec or unknown
    elif data.ndim == 3:
        data = np.moveaxis(data, 2, 0)
    elif data.ndim != 2:
        raise DataError(f"{path}: expected a 2-D, 3-D or 4-D NIfTI image, got shape {data.shape}")
    zooms = [float(z) for z in image.header.get_zooms()[:3]] + [1.0] * 3
    # Stored integers scaled by scl_slope/scl_inter are not integers any more: outputs keep float32 (the
    # stored type would round them, 0..1 becoming 0 and 1).
    # (nibabel moves the header's scaling onto the array proxy when it loads the file.)
    slope = float(getattr(image.dataobj, "slope", 1.0))
    intercept = float(getattr(image.dataobj, "inter", 0.0))
    scaled = (slope, intercept) != (1.0, 0.0)
    return ImageVolume(
        _checked(data, path),
        (zooms[2], zooms[0], zooms[1]),
        path,
        "nifti",
        affine=np.asarray(image.affine, dtype=np.float64),
        dtype="float32" if scaled else str(image.get_data_dtype()),
        meta=meta,
        volumes=volumes,
    )


def load_raster(path: str | Path) -> ImageVolume:
    """An 8- or 16-bit grayscale PNG or TIFF (multi-page TIFF gives several slices)."""
    path = Path(path)
    suffix = path.suffix.lower()
    colour = False  # told by the file's own tags, not guessed from a last axis of 3 or 4
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                colour = any(int(getattr(page, "samplesperpixel", 1)) > 1 for page in tif.pages)
                shapes = {tuple(page.shape) for page in tif.pages}
                if len(shapes) > 1:
                    raise DataError(
                        f"{path}: TIFF pages of different sizes {sorted(shapes)}; one volume needs one size"
                    )
                raw = np.asarray(
                    tif.asarray(key=range(len(tif.pages))) if len(tif.pages) > 1 else tif.asarray()
                )
        else:
            from PIL import Image

            with Image.open(path) as image:
                if image.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
                    raise DataError(
                        f"{path}: {image.mode} image; edgesr reads grayscale (8/16-bit) images only"
                    )
                raw = np.asarray(image)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable {suffix[1:].upper()} image ({exc})") from None
    if colour:
        raise DataError(f"{path}: colour image of shape {raw.shape}; edgesr reads grayscale images only")
    return ImageVolume(
        _checked(raw, path),
        (1.0, 1.0, 1.0),
        path,
        "tiff" if suffix != ".png" else "png",
        dtype=str(raw.dtype),
    )


def load_npy(path: str | Path) -> ImageVolume:
    """A NumPy ``.npy`` array ``[H, W]`` or ``[S, H, W]`` (never unpickled)."""
    path = Path(path)
    try:
        raw = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    if raw.ndim == 3 and raw.shape[2] in (3, 4) and min(raw.shape[:2]) > 4:
        # [S, H, W] with W of 3 or 4 pixels is not a scan; [H, W, 3|4] is how colour images are stored.
        raise DataError(
            f"{path}: shape {raw.shape} looks like a colour image [H, W, {raw.shape[2]}]; edgesr reads "
            "greyscale [H, W] or [S, H, W] arrays"
        )
    return ImageVolume(_checked(raw, path), (1.0, 1.0, 1.0), path, "npy", dtype=str(raw.dtype))


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def load_dicom_series(path: str | Path, *, series_uid: str | None = None) -> ImageVolume:
    """A DICOM series: a folder of single-frame files (or one file), as modality values.

    Slices are sorted by their position along the slice normal (ImagePositionPatient projected on
    the cross product of ImageOrientationPatient), falling back to InstanceNumber; the modality LUT
    (RescaleSlope/Intercept, e.g. CT Hounsfield units) is applied.

    Args:
        path: a folder of DICOM files, or one DICOM file.
        series_uid: which series to read when the folder holds several.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    # Hidden files (macOS ._ resource forks, .DS_Store) are never a scan's slices, whatever their suffix.
    files = [p for p in files if not p.name.startswith(".") or p == path]
    files = [p for p in files if _is_dicom_file(p) or p.suffix.lower() == ".dcm"]
    if not files:
        below = path.is_dir() and any(p.is_dir() for p in path.iterdir())
        hint = (
            " (sub-folders are not searched: name the folder that holds the series' files)" if below else ""
        )
        raise DataError(f"{path}: no DICOM files found{hint}")
    datasets = []
    for file in files:
        try:
            datasets.append((file, pydicom.dcmread(file)))
        except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct.error... on bad files
            raise DataError(f"{file}: not a readable DICOM file ({str(exc)[:160]})") from None
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    for file, ds in datasets:
        if "PixelData" not in ds:
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                raise DataError(
                    f"{file}: floating-point pixel data (a parametric map?), not a scanner's MR or CT image"
                )
            if _is_image_file(ds):
                # An image without its pixels: the file was cut short (pydicom stops quietly at an
                # element that runs past the end). Skipping it would leave a gap in the volume.
                raise DataError(f"{file}: an image without pixel data (the file is truncated or damaged)")
            continue  # a DICOMDIR, a structured report, a presentation state beside the images
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((file, ds))
    if not by_series:
        raise DataError(f"{path}: none of the DICOM files holds pixel data")
    if series_uid is None and len(by_series) > 1:
        raise DataError(f"{path}: holds {len(by_series)} series ({', '.join(by_series)}); pass series_uid=")
    if series_uid is not None and series_uid not in by_series:
        raise DataError(f"{path}: no series {series_uid} (found: {', '.join(by_series)})")
    chosen = by_series[series_uid] if series_uid is not None else next(iter(by_series.values()))
    multiframe = chosen[0][0] if len(chosen) == 1 and _is_enhanced_multiframe(chosen[0][1]) else None
    if multiframe is not None:
        chosen = _frames_as_slices(*chosen[0])
    geometry = {file: _slice_geometry(ds, file) for file, ds in chosen}
    unplaced = [file for file, _ in chosen if not geometry[file].oriented]
    if unplaced and len(unplaced) < len(chosen):
        # Sorting some slices by position and others by InstanceNumber would shuffle the volume.
        raise DataError(
            f"{unplaced[0]}: lacks ImagePositionPatient/ImageOrientationPatient while other slices of the "
            "series have them, so its place in the volume is unknown"
        )
    chosen = sorted(chosen, key=lambda item: geometry[item[0]].position)
    first_file = chosen[0][0]
    for file, ds in chosen[1:]:
        if geometry[file].oriented and not geometry[file].same_plane(geometry[first_file]):
            raise DataError(
                f"{file}: its ImageOrientationPatient differs from {first_file.name}'s: series "
                f"{ds.get('SeriesInstanceUID', '?')} mixes orientations (a localizer?); one volume needs one"
            )
    for (file_a, ds_a), (file_b, ds_b) in zip(chosen, chosen[1:], strict=False):
        if geometry[file_a].position == geometry[file_b].position and geometry[file_a].oriented:
            why = _why_duplicate(ds_a, ds_b, multiframe=multiframe is not None)
            raise DataError(f"{file_b}: lies at the same position as {file_a.name}; {why}")
    slices: list[np.ndarray] = []
    paddings: list[np.ndarray] = []
    integral = True  # every slice's modality values are integers (an integer output type can hold them)
    for file, ds in chosen:
        for tag in ("Rows", "Columns"):
            if tag not in ds:
                raise DataError(f"{file}: missing DICOM tag {tag}")
        _check_greyscale_image(ds, file)
        _check_pixel_data_length(ds, file)
        try:
            stored = ds.pixel_array
            pixels = apply_modality_lut(stored, ds)
        except Exception as exc:  # truncated or compressed data that cannot be decoded
            raise DataError(_undecodable(ds, file, exc)) from None
        if pixels.ndim != 2:
            raise DataError(_not_one_greyscale_frame(ds, file, pixels.shape))
        if slices and pixels.shape != slices[0].shape:
            raise DataError(
                f"{file}: slice of shape {pixels.shape} differs from the series' {slices[0].shape}"
            )
        paddings.append(_padding_mask(ds, stored))
        integral = integral and bool(np.all(np.mod(pixels, 1) == 0))
        slices.append(pixels.astype(np.float32))
    first = geometry[chosen[0][0]]
    for file, _ in chosen[1:]:
        other = geometry[file]
        if not np.allclose((other.row_mm, other.col_mm), (first.row_mm, first.col_mm), rtol=1e-3):
            raise DataError(
                f"{file}: PixelSpacing {other.row_mm:g}/{other.col_mm:g} mm differs from "
                f"{chosen[0][0].name}'s {first.row_mm:g}/{first.col_mm:g} mm: one volume needs one pixel size"
            )
    gaps = _uneven_slices([geometry[file] for file, _ in chosen])
    if len(chosen) > 1:
        last = geometry[chosen[-1][0]]
        step = (last.origin - first.origin) / (len(chosen) - 1)
        slice_mm = float(np.linalg.norm(step)) or first.thickness
    else:
        slice_mm = first.thickness
    if not first.oriented or len(chosen) == 1 or not slice_mm:
        step = first.normal * slice_mm
    meta: dict[str, Any] = {
        "modality": str(chosen[0][1].get("Modality", "")),
        "series_uid": str(chosen[0][1].get("SeriesInstanceUID", "")),
        "files": [str(f) for f, _ in chosen],
    }
    if gaps:
        meta["uneven_slices"] = gaps  # an affine holds one step: writers that need one refuse
    if multiframe is not None:
        meta["multiframe"] = str(multiframe)  # the file: no per-slice files to derive a series from
        meta["frame_numbers"] = [int(ds.InstanceNumber) for _, ds in chosen]  # 1-based, slice order
    volume = _checked(np.stack(slices), path)
    padding = np.stack(paddings)
    return ImageVolume(
        volume,
        (slice_mm, first.row_mm, first.col_mm),
        path,
        "dicom",
        affine=first.affine(step),
        dtype=_value_dtype(volume, integral),
        meta=meta,
        padding=padding if padding.any() else None,
    )


def _uneven_slices(slices: list[_SliceGeometry]) -> str:
    """Why the slices' positions are not evenly spaced (a missing slice, a gap), or "" when they are."""
    if len(slices) < 3 or not all(g.oriented for g in slices):
        return ""
    steps = np.diff([g.position for g in slices])  # sorted by position along the shared normal
    median = float(np.median(steps))
    if np.all(np.abs(steps - median) <= max(0.01 * abs(median), 0.01)):
        return ""
    return f"slice positions step by {float(steps.min()):g} to {float(steps.max()):g} mm, not evenly"


@dataclass(frozen=True)
class _SliceGeometry:
    """Where one DICOM slice lies (patient coordinates, LPS, mm), read and checked once."""

    origin: np.ndarray  # ImagePositionPatient: the centre of the first pixel
    row_direction: np.ndarray  # along a row: the direction of increasing column index
    column_direction: np.ndarray  # down a column: the direction of increasing row index
    row_mm: float  # PixelSpacing[0]: between rows
    col_mm: float  # PixelSpacing[1]: between columns
    thickness: float
    oriented: bool  # ImagePositionPatient and ImageOrientationPatient were present
    position: float  # along the slice normal (InstanceNumber without orientation)

    def same_plane(self, other: _SliceGeometry) -> bool:
        """Same orientation (within 1e-3 per direction cosine), so one volume's slices."""
        return bool(
            np.allclose(self.row_direction, other.row_direction, atol=1e-3)
            and np.allclose(self.column_direction, other.column_direction, atol=1e-3)
        )

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    def affine(self, step: np.ndarray) -> np.ndarray:
        """The NIfTI (RAS) affine of voxels ``(row, column, slice)``, as :func:`write_image` lays them out."""
        lps = np.eye(4)
        lps[:3, 0] = self.column_direction * self.row_mm
        lps[:3, 1] = self.row_direction * self.col_mm
        lps[:3, 2] = step
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS to NIfTI's RAS


# Tags that tell apart images at one position of one series (echoes, phases, b-values, repeats).
_DIMENSIONS = (
    "EchoNumbers",
    "EchoTime",
    "EffectiveEchoTime",
    "TemporalPositionIndex",
    "NominalCardiacTriggerDelayTime",
    "StackID",
    "TemporalPositionIdentifier",
    "TriggerTime",
    "DiffusionBValue",
    "AcquisitionNumber",
    "ImageType",
)


def _why_duplicate(a: Any, b: Any, *, multiframe: bool = False) -> str:
    """Why two images of a series lie at one position, for the error: the tag that tells them apart."""
    split = (
        "split the file into one volume per {keyword} first (dcm2niix, or the console's export of one "
        "echo or phase)"
        if multiframe
        else "split the series by {keyword} into folders first"
    )
    for keyword in _DIMENSIONS:
        if keyword in a and keyword in b and a[keyword].value != b[keyword].value:
            return (
                f"they differ in {keyword} ({a[keyword].value} vs {b[keyword].value}): a multi-echo, "
                "multi-phase or repeated series; edgesr enhances one 3-D volume per run, so "
                + split.format(keyword=keyword)
            )
    if multiframe:
        return "two frames at one position that no functional group tells apart (repeats?)"
    return "two copies of one slice (or two acquisitions that no tag tells apart); keep one of them"


# Enhanced (multi-frame) image storage: one file per series, geometry in its functional groups.
_ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
}
# Per-frame (or shared) functional groups and the classic attributes they carry.
_FRAME_GROUPS = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth"),
    # What tells frames at one position apart (echoes, phases, b-values), for the duplicate error.
    "MREchoSequence": ("EffectiveEchoTime",),
    "MRDiffusionSequence": ("DiffusionBValue",),
    "CardiacSynchronizationSequence": ("NominalCardiacTriggerDelayTime",),
    "FrameContentSequence": ("TemporalPositionIndex", "StackID"),
}


def _is_enhanced_multiframe(ds: Any) -> bool:
    frames = str(ds.get("NumberOfFrames", "") or "").strip()
    return str(ds.get("SOPClassUID", "")) in _ENHANCED_SOP_CLASSES and frames.isdigit() and int(frames) >= 1


def _frames_as_slices(file: Path, ds: Any) -> list[tuple[Path, Any]]:
    """An enhanced multi-frame image as one classic single-frame dataset per frame, named ``FILE#N``.

    Each frame gets the attributes of its functional groups (position, orientation, pixel size, rescale;
    per-frame groups over shared ones), so the series logic sorts, checks and reads frames as it does
    slices: one place for geometry. Frames without a position fall back to their frame number.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    try:
        frames = np.asarray(ds.pixel_array)
    except Exception as exc:  # truncated or compressed data that cannot be decoded
        raise DataError(_undecodable(ds, file, exc)) from None
    count = int(ds.NumberOfFrames)
    if frames.ndim == 2 and count == 1:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[0] != count:
        raise DataError(_not_one_greyscale_frame(ds, file, frames.shape))
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != count:
        raise DataError(f"{file}: {len(per_frame)} per-frame functional groups for {count} frames")
    slices = []
    for index in range(count):
        frame = Dataset()
        for element in ds:
            if element.keyword not in (
                "PixelData",
                "PerFrameFunctionalGroupsSequence",
                "SharedFunctionalGroupsSequence",
                "NumberOfFrames",
            ):
                frame.add(copy.copy(element))  # its own: setting a value on a frame sets only it
        for groups in (shared[0] if shared else None, per_frame[index] if per_frame else None):
            for sequence, keywords in _FRAME_GROUPS.items():
                if groups is not None and sequence in groups and len(groups[sequence].value):
                    item = groups[sequence][0]
                    for keyword in keywords:
                        if keyword in item:
                            setattr(frame, keyword, item[keyword].value)
        frame.InstanceNumber = index + 1  # the frame number: orders unplaced frames, maps slices back
        frame.file_meta = FileMetaDataset()
        frame.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        frame.PixelData = np.ascontiguousarray(frames[index]).astype(frames.dtype.newbyteorder("<")).tobytes()
        slices.append((Path(f"{file}#{index + 1}"), frame))
    return slices


def _not_one_greyscale_frame(ds: Any, file: Path, shape: tuple[int, ...]) -> str:
    """The error for pixel data that is not one greyscale image: what it is, and what to send instead."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if samples > 1:
        kind = str(ds.get("PhotometricInterpretation", "colour"))
        return (
            f"{file}: a colour image ({kind}, {samples} samples per pixel, shape {shape}); edgesr's models "
            "take greyscale MR or CT: send the scanner's original series, not a screen capture"
        )
    if frames > 1:
        kind = getattr(ds.get("SOPClassUID"), "name", "") or str(ds.get("SOPClassUID", "?"))
        return (
            f"{file}: a multi-frame image ({frames} frames, shape {shape}, {kind}); edgesr reads series of "
            "single-frame images and enhanced MR/CT: export the series as single-frame (classic) images, "
            "e.g. with dcmtk or the console's export option, or convert it to NIfTI (dcm2niix)"
        )
    return f"{file}: expected single-frame 2-D pixel data, got shape {shape}"


def _undecodable(ds: Any, file: Path, exc: Exception) -> str:
    """The error for pixel data that cannot be decoded: a compressed syntax is named, with what reads it."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    # The whole message on one line: pydicom lists each plugin's reason after a colon and a line break.
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    if syntax is not None and syntax.is_compressed:
        if _decoder_available(syntax):
            return (
                f"{file}: pixel data compressed as {syntax.name} ({syntax}) could not be decoded "
                f"({detail}): the compressed data is damaged, or in a variant the installed decoders do "
                "not read (python-gdcm reads more of them)"
            )
        return (
            f"{file}: pixel data compressed as {syntax.name} ({syntax}), which no installed decoder reads "
            f"({detail}); install pylibjpeg with pylibjpeg-libjpeg / pylibjpeg-openjpeg, or python-gdcm, "
            "or send the series uncompressed"
        )
    return f"{file}: cannot decode pixel data ({detail})"


def _decoder_available(syntax: Any) -> bool:
    """Whether pydicom has a working decoder for the transfer syntax (False where it cannot tell)."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except Exception:  # an unknown syntax, or a pydicom without the pixels API
        return False


def _numbers(ds: Any, keyword: str, count: int, file: Path) -> list[float] | None:
    """A numeric DICOM tag of ``count`` values, or None when absent; malformed values are a DataError."""
    if keyword not in ds or ds[keyword].value in (None, ""):
        return None
    raw = ds[keyword].value
    # pydicom gives a multi-valued tag as a sequence (MultiValue) and a single value as a scalar.
    values = list(raw) if isinstance(raw, Sequence) and not isinstance(raw, str | bytes) else [raw]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise DataError(f"{file}: {keyword} holds {raw!r}; expected {count} numbers") from None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise DataError(
            f"{file}: {keyword} holds {len(numbers)} value(s) {numbers}; expected {count} finite numbers"
        )
    return numbers


def _slice_geometry(ds: Any, file: Path) -> _SliceGeometry:
    spacing = _numbers(ds, "PixelSpacing", 2, file) or [1.0, 1.0]
    if spacing == [0.0, 0.0]:
        # "0\0" is how some writers (secondary captures, CR) fill a tag they have no value for: the same
        # as an absent tag, not a geometry to refuse. One zero, or a negative one, is a broken header.
        spacing = [1.0, 1.0]
    if min(spacing) <= 0:
        raise DataError(f"{file}: PixelSpacing {spacing} must be positive")
    thickness = (_numbers(ds, "SliceThickness", 1, file) or [1.0])[0]
    origin = _numbers(ds, "ImagePositionPatient", 3, file)
    orientation = _numbers(ds, "ImageOrientationPatient", 6, file)
    oriented = origin is not None and orientation is not None
    if orientation is None:
        orientation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    row_direction, column_direction = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    if abs(np.linalg.norm(row_direction) - 1) > 1e-2 or abs(np.linalg.norm(column_direction) - 1) > 1e-2:
        raise DataError(f"{file}: ImageOrientationPatient {orientation} is not two unit vectors")
    origin_array = np.asarray(origin if origin is not None else [0.0, 0.0, 0.0])
    normal = np.cross(row_direction, column_direction)
    if oriented:
        position = float(np.dot(normal, origin_array))
    else:
        instance = _numbers(ds, "InstanceNumber", 1, file)
        position = instance[0] if instance else 0.0
    return _SliceGeometry(
        origin_array,
        row_direction,
        column_direction,
        spacing[0],
        spacing[1],
        abs(thickness) or 1.0,
        oriented,
        position,
    )


def _is_image_file(ds: Any) -> bool:
    """An image by its header: image tags, or an image storage SOP class (or none at all: a file cut
    inside its header). DICOMDIRs, reports and presentation states name their own non-image classes."""
    if "Rows" in ds or "Columns" in ds:
        return True
    sop_class = ds.get("SOPClassUID") or getattr(
        getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None
    )
    from pydicom.uid import UID_dictionary

    if sop_class is None or str(sop_class) not in UID_dictionary:  # none, or cut short: assume the worst
        return True
    return "image" in UID_dictionary[str(sop_class)][0].lower()


# Objects that carry pixel data but are not images of anatomy a model can enhance.
_NOT_IMAGES = {"RTDOSE": "an RT dose grid", "SEG": "a segmentation", "RTSTRUCT": "RT structures"}


def _check_greyscale_image(ds: Any, file: Path) -> None:
    """Refuses, before decoding, what is not one greyscale image of anatomy: colour (RGB, YBR, palette
    indices), Siemens mosaics (many slices tiled into one image), dose grids and segmentations."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in _NOT_IMAGES:
        raise DataError(f"{file}: {_NOT_IMAGES[modality]} (Modality {modality}), not an MR or CT image")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    samples = ds.get("SamplesPerPixel", 1)
    if (photometric and not photometric.startswith("MONOCHROME")) or (samples not in (None, "", 1)):
        what = (
            "palette indices into a colour table" if photometric.startswith("PALETTE") else "a colour image"
        )
        raise DataError(
            f"{file}: {what} (PhotometricInterpretation {photometric or '?'}, SamplesPerPixel {samples}); "
            "edgesr's models take greyscale MR or CT: send the scanner's original series, not a screen "
            "capture or a rendered image"
        )
    if "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType", []) or [])]:
        raise DataError(
            f"{file}: a Siemens mosaic (several slices tiled into one image, ImageType MOSAIC); convert the "
            "series to NIfTI first (dcm2niix), which un-tiles it"
        )


def _check_pixel_data_length(ds: Any, file: Path) -> None:
    """Uncompressed pixel data must hold exactly Rows x Columns x samples x frames values (pydicom only
    warns, then decodes a wrong Columns into a sheared image); odd lengths get one pad byte."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed:
        return
    shape = [_numbers(ds, k, 1, file) for k in ("Rows", "Columns", "BitsAllocated")]
    if any(v is None for v in shape):
        raise DataError(f"{file}: missing Rows, Columns or BitsAllocated")
    rows, columns, bits = (int(v[0]) for v in shape if v is not None)
    samples = int((_numbers(ds, "SamplesPerPixel", 1, file) or [1])[0])
    frames = int((_numbers(ds, "NumberOfFrames", 1, file) or [1])[0])
    if bits == 1:
        raise DataError(f"{file}: a 1-bit image (a mask or segmentation), not a scanner's MR or CT image")
    if min(rows, columns, samples, frames) < 1 or bits not in (8, 16, 32):
        raise DataError(f"{file}: image of {rows}x{columns}, {samples} sample(s), {bits} bits is not valid")
    expected = rows * columns * samples * frames * bits // 8
    actual = len(ds.PixelData or b"")
    if actual not in (expected, expected + 1):
        raise DataError(
            f"{file}: pixel data holds {actual} bytes; Rows {rows} x Columns {columns} x {bits} bits need "
            f"{expected}"
        )


def _padding_mask(ds: Any, stored: np.ndarray) -> np.ndarray:
    """Pixels the scanner marked as padding: stored value == PixelPaddingValue, or within
    [PixelPaddingValue, PixelPaddingRangeLimit] when a range is given (DICOM PS3.3 C.7.5.1.1.2)."""
    if "PixelPaddingValue" not in ds:
        return np.zeros(stored.shape, dtype=bool)
    file = Path(str(getattr(ds, "filename", "") or "DICOM file"))
    padding = _numbers(ds, "PixelPaddingValue", 1, file)
    if padding is None:
        return np.zeros(stored.shape, dtype=bool)
    value = _as_pixel_value(ds, int(padding[0]))
    range_limit = _numbers(ds, "PixelPaddingRangeLimit", 1, file)
    limit = _as_pixel_value(ds, int(range_limit[0])) if range_limit else value
    low, high = min(value, limit), max(value, limit)
    return (stored >= low) & (stored <= high)


def _as_pixel_value(ds: Any, value: int) -> int:
    """A padding value as the pixels hold it: some writers store -2000 of signed pixels as the unsigned
    bit pattern 63536 (VR US), so interpret it in BitsStored bits with the pixels' signedness."""
    bits = int(ds.get("BitsStored", 16))
    value &= (1 << bits) - 1
    if int(ds.get("PixelRepresentation", 0)) == 1 and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def _value_dtype(volume: np.ndarray, integral: bool) -> str:
    """The usual type for modality values: int16 for signed (HU), uint16 for non-negative (MR), else
    int32 or float32. Non-negative values get uint16 even when int16 would hold them: an enhanced image
    may overshoot the input's maximum, and int16 would clip it at 32767."""
    if not integral:
        return "float32"
    low, high = float(volume.min()), float(volume.max())
    for dtype in ("int16", "int32") if low < 0 else ("uint16", "int32"):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return "float32"


def is_dicom_path(path: str | Path) -> bool:
    """Whether :func:`load_image` reads ``path`` as DICOM: a folder, a ``.dcm`` file or a DICOM preamble."""
    path = Path(path)
    return path.is_dir() or path.name.lower().endswith(".dcm") or _is_dicom_file(path)


def load_image(path: str | Path, *, series_uid: str | None = None) -> ImageVolume:
    """Loads any supported image, choosing the reader from the path.

    A folder or a ``.dcm``/DICOM-preamble file is read as a DICOM series (``series_uid`` chooses one
    where a folder holds several); ``.nii``/``.nii.gz`` as NIfTI; ``.png``/``.tif``/``.tiff`` as raster;
    ``.npy`` as a NumPy array.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    name = path.name.lower()
    if is_dicom_path(path):
        return load_dicom_series(path, series_uid=series_uid)
    if series_uid is not None:
        raise DataError(f"{path}: series_uid is for DICOM input; this is not a DICOM file or folder")
    if name.endswith((".nii", ".nii.gz")):
        return load_nifti(path)
    if name.endswith(RASTER_SUFFIXES):
        return load_raster(path)
    if name.endswith(".npy"):
        return load_npy(path)
    raise DataError(f"{path}: unsupported image format (use DICOM, NIfTI, PNG, TIFF or NPY)")
