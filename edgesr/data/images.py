"""Loaders for users' own images: DICOM series, NIfTI, 8/16-bit PNG/TIFF and NPY.

Every loader returns an :class:`ImageVolume` of float32 slices ``[S, H, W]`` and checks what later
steps rely on: a numeric, finite, 2-D or 3-D image. Problems raise :class:`~edgesr.errors.DataError`
naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    source: Path
    format: str
    affine: np.ndarray | None = None
    dtype: str = "float32"
    meta: dict[str, Any] = field(default_factory=dict)
    padding: np.ndarray | None = None


def _checked(data: np.ndarray, path: Path) -> np.ndarray:
    """float32 ``[S, H, W]`` from a 2-D or 3-D numeric array, or a DataError naming ``path``."""
    if data.dtype.kind not in "biuf":
        raise DataError(f"{path}: unsupported data type {data.dtype} (need integers or floats)")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 2-D image or 3-D volume, got shape {data.shape}")
    if min(data.shape[1:]) < 2:
        raise DataError(f"{path}: image of shape {data.shape[1:]} is too small")
    data = data.astype(np.float32, copy=False)
    bad = ~np.isfinite(data)
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} NaN/Inf values in the image")
    return np.ascontiguousarray(data)


def load_nifti(path: str | Path) -> ImageVolume:
    """A NIfTI file; slices run along the third voxel axis (``[X, Y, Z] -> [Z, X, Y]``); affine kept."""
    import nibabel as nib

    path = Path(path)
    try:
        image: Any = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: not a readable NIfTI file ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        data = np.moveaxis(data, 2, 0)
    elif data.ndim != 2:
        raise DataError(f"{path}: expected a 2-D or 3-D NIfTI image, got shape {data.shape}")
    zooms = [float(z) for z in image.header.get_zooms()[:3]] + [1.0] * 3
    return ImageVolume(
        _checked(data, path),
        (zooms[2], zooms[0], zooms[1]),
        path,
        "nifti",
        affine=np.asarray(image.affine, dtype=np.float64),
        dtype=str(image.get_data_dtype()),
    )


def load_raster(path: str | Path) -> ImageVolume:
    """An 8- or 16-bit grayscale PNG or TIFF (multi-page TIFF gives several slices)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            raw = np.asarray(tifffile.imread(path))
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
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):
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
    files = [p for p in files if _is_dicom_file(p) or p.suffix.lower() == ".dcm"]
    if not files:
        raise DataError(f"{path}: no DICOM files found")
    datasets = []
    for file in files:
        try:
            datasets.append((file, pydicom.dcmread(file)))
        except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct.error... on bad files
            raise DataError(f"{file}: not a readable DICOM file ({exc})") from None
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    for file, ds in datasets:
        if "PixelData" not in ds:
            continue  # e.g. a DICOMDIR or a structured report beside the images
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((file, ds))
    if not by_series:
        raise DataError(f"{path}: none of the DICOM files holds pixel data")
    if series_uid is None and len(by_series) > 1:
        raise DataError(f"{path}: holds {len(by_series)} series ({', '.join(by_series)}); pass series_uid=")
    if series_uid is not None and series_uid not in by_series:
        raise DataError(f"{path}: no series {series_uid} (found: {', '.join(by_series)})")
    chosen = by_series[series_uid] if series_uid is not None else next(iter(by_series.values()))

    def position(item: tuple[Path, Any]) -> float:
        ds = item[1]
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
            normal = np.cross(orientation[:3], orientation[3:])
            return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)))
        return float(ds.get("InstanceNumber", 0))

    chosen = sorted(chosen, key=position)
    slices: list[np.ndarray] = []
    paddings: list[np.ndarray] = []
    integral = True  # every slice's modality values are integers (an integer output type can hold them)
    for file, ds in chosen:
        for tag in ("Rows", "Columns"):
            if tag not in ds:
                raise DataError(f"{file}: missing DICOM tag {tag}")
        try:
            stored = ds.pixel_array
            pixels = apply_modality_lut(stored, ds)
        except Exception as exc:  # truncated or compressed data that cannot be decoded
            raise DataError(f"{file}: cannot decode pixel data ({exc})") from None
        if pixels.ndim != 2:
            raise DataError(f"{file}: expected single-frame 2-D pixel data, got shape {pixels.shape}")
        if slices and pixels.shape != slices[0].shape:
            raise DataError(
                f"{file}: slice of shape {pixels.shape} differs from the series' {slices[0].shape}"
            )
        paddings.append(_padding_mask(ds, stored))
        integral = integral and bool(np.all(np.mod(pixels, 1) == 0))
        slices.append(pixels.astype(np.float32))
    first = chosen[0][1]
    row_mm, col_mm = (float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
    if len(chosen) > 1:
        slice_mm = abs(position(chosen[1]) - position(chosen[0])) or float(first.get("SliceThickness", 1.0))
    else:
        slice_mm = float(first.get("SliceThickness", 1.0))
    meta = {
        "modality": str(first.get("Modality", "")),
        "series_uid": str(first.get("SeriesInstanceUID", "")),
        "files": [str(f) for f, _ in chosen],
    }
    volume = _checked(np.stack(slices), path)
    padding = np.stack(paddings)
    return ImageVolume(
        volume,
        (slice_mm, row_mm, col_mm),
        path,
        "dicom",
        dtype=_value_dtype(volume, integral),
        meta=meta,
        padding=padding if padding.any() else None,
    )


def _padding_mask(ds: Any, stored: np.ndarray) -> np.ndarray:
    """Pixels the scanner marked as padding: stored value == PixelPaddingValue, or within
    [PixelPaddingValue, PixelPaddingRangeLimit] when a range is given (DICOM PS3.3 C.7.5.1.1.2)."""
    if "PixelPaddingValue" not in ds:
        return np.zeros(stored.shape, dtype=bool)
    value = _as_pixel_value(ds, int(ds.PixelPaddingValue))
    limit = _as_pixel_value(ds, int(ds.PixelPaddingRangeLimit)) if "PixelPaddingRangeLimit" in ds else value
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


def load_image(path: str | Path) -> ImageVolume:
    """Loads any supported image, choosing the reader from the path.

    A folder or a ``.dcm``/DICOM-preamble file is read as a DICOM series; ``.nii``/``.nii.gz`` as
    NIfTI; ``.png``/``.tif``/``.tiff`` as raster; ``.npy`` as a NumPy array.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm") or _is_dicom_file(path):
        return load_dicom_series(path)
    if name.endswith((".nii", ".nii.gz")):
        return load_nifti(path)
    if name.endswith(RASTER_SUFFIXES):
        return load_raster(path)
    if name.endswith(".npy"):
        return load_npy(path)
    raise DataError(f"{path}: unsupported image format (use DICOM, NIfTI, PNG, TIFF or NPY)")
