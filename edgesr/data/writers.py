"""Writing results in the input's format and data type, atomically (never a half-written file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesr._io import atomic_path
from edgesr.errors import DataError

WRITABLE = (".nii", ".nii.gz", ".png", ".tif", ".tiff", ".npy")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def cast_to(data: np.ndarray, dtype: str) -> np.ndarray:
    """``data`` in ``dtype``: integers are rounded and clipped to the type's range, floats kept."""
    target = np.dtype(dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        return np.clip(np.rint(data), info.min, info.max).astype(target)
    if target.kind == "f":
        return data.astype(target)
    raise DataError(f"cannot write data of type {dtype}")


def write_image(
    path: str | Path, data: np.ndarray, *, dtype: str = "float32", affine: np.ndarray | None = None
) -> Path:
    """Writes slices ``[S, H, W]`` to ``path``; the format follows the suffix.

    NIfTI gets ``affine`` (slices along the third voxel axis, as :func:`edgesr.load_image` reads them);
    PNG takes one slice of 8 or 16 bits; TIFF and NPY take any number of slices.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in WRITABLE:
        raise DataError(f"{path}: cannot write this format (use {', '.join(WRITABLE)})")
    if data.ndim != 3:
        raise ValueError(f"data must be [S, H, W]; got shape {data.shape}")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: refusing to write NaN/Inf values")
    if suffix == ".png" and np.dtype(dtype) not in (np.dtype("uint8"), np.dtype("uint16")):
        dtype = "uint16"  # PNG holds 8 or 16-bit grayscale only
    out = cast_to(data, dtype)
    with atomic_path(path) as tmp:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            image = nib.Nifti1Image(np.moveaxis(out, 0, 2), np.eye(4) if affine is None else affine)
            image.header.set_data_dtype(out.dtype)
            nib.save(image, str(tmp))
        elif suffix == ".png":
            from PIL import Image

            if out.shape[0] != 1:
                raise DataError(
                    f"{path}: PNG holds one slice; got {out.shape[0]} (write .tif, .npy or .nii.gz)"
                )
            Image.fromarray(out[0]).save(tmp, format="PNG")
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, out[0] if out.shape[0] == 1 else out, photometric="minisblack")
        else:
            with open(tmp, "wb") as f:
                np.save(f, out[0] if out.shape[0] == 1 else out)
    return path
