"""Writing results in the input's format and data type, atomically (never a half-written file)."""

from __future__ import annotations

import os
import tempfile
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


def clipping(data: np.ndarray, dtype: str) -> str:
    """What :func:`cast_to` would clip writing ``data`` as ``dtype``, in words ("" when nothing).

    An SR result may leave the input's integer range: ringing at sharp edges dips below a magnitude
    image's zero, and an 8-bit input's brightest tissue overshoots 255. The result is still written in
    the input's type (what its readers expect), but the user is told how much was cut.
    """
    target = np.dtype(dtype)
    if target.kind not in "iu":
        return ""
    info = np.iinfo(target)
    rounded = np.rint(data)
    below, above = int((rounded < info.min).sum()), int((rounded > info.max).sum())
    if not below and not above:
        return ""
    share = 100.0 * (below + above) / data.size
    return (
        f"{share:.2g}% of the result's values lie outside the input's {target.name} range and were clipped "
        f"to {info.min}..{info.max} ({below} below, lowest {data.min():.0f}; {above} above, highest "
        f"{data.max():.0f}); the input's own type is kept"
    )


def write_image(
    path: str | Path,
    data: np.ndarray,
    *,
    dtype: str = "float32",
    affine: np.ndarray | None = None,
    volumes: int = 1,
    volume_step: float = 1.0,
    volume_step_unit: str = "unknown",
) -> Path:
    """Writes slices ``[S, H, W]`` to ``path``; the format follows the suffix.

    NIfTI gets ``affine`` (slices along the third voxel axis, as :func:`edgesr.load_image` reads them);
    PNG takes one slice of 8 or 16 bits; TIFF and NPY take any number of slices. ``volumes`` > 1 (the
    volumes of a 4-D input one after another) writes a 4-D NIfTI ``[X, Y, Z, T]`` with ``volume_step``
    as its fourth pixdim (TR) in ``volume_step_unit`` (nibabel's names: sec, msec, usec, unknown), or
    NPY ``[T, Z, H, W]``; PNG and TIFF refuse it.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in WRITABLE:
        raise DataError(f"{path}: cannot write this format (use {', '.join(WRITABLE)})")
    if data.ndim != 3:
        raise ValueError(f"data must be [S, H, W]; got shape {data.shape}")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: refusing to write NaN/Inf values")
    check_slices(path, data.shape[0])
    check_volumes(path, volumes)
    if data.shape[0] % volumes:
        raise ValueError(f"data of shape {data.shape} does not hold {volumes} volumes of equal depth")
    check_png_type(path, dtype)
    if suffix in (".nii", ".nii.gz") and np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize == 8:
        # NIfTI readers refuse 64-bit integers by default (nibabel among them): int32 when it holds the
        # values, else float32.
        fits = np.iinfo(np.int32).min <= data.min() and data.max() <= np.iinfo(np.int32).max
        dtype = "int32" if fits else "float32"
    out = cast_to(data, dtype)
    if volumes > 1:
        out = out.reshape(volumes, -1, *out.shape[1:])  # [T, Z, H, W]
    try:
        _write(path, tmp_suffix=suffix, out=out, affine=affine, volume_step=(volume_step, volume_step_unit))
    except OSError as exc:
        raise DataError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    return path


def _write(
    path: Path,
    *,
    tmp_suffix: str,
    out: np.ndarray,
    affine: np.ndarray | None,
    volume_step: tuple[float, str],
) -> None:
    """``out``: ``[S, H, W]``, or ``[T, Z, H, W]`` for several volumes (NIfTI and NPY only)."""
    suffix = tmp_suffix
    with atomic_path(path) as tmp:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            # [S, H, W] -> [X, Y, Z]; [T, Z, H, W] -> [X, Y, Z, T]
            voxels = np.moveaxis(out, 0, 2) if out.ndim == 3 else np.moveaxis(out, (0, 1), (3, 2))
            image = nib.Nifti1Image(voxels, np.eye(4) if affine is None else affine)
            image.header.set_data_dtype(out.dtype)
            if out.ndim == 4:
                step, unit = volume_step
                image.header.set_zooms((*image.header.get_zooms()[:3], step))
                image.header.set_xyzt_units(xyz="mm", t=unit if unit != "unknown" else None)
            nib.save(image, str(tmp))
        elif suffix == ".png":
            from PIL import Image

            Image.fromarray(out[0]).save(tmp, format="PNG")
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, out[0] if out.shape[0] == 1 else out, photometric="minisblack")
        else:
            with open(tmp, "wb") as f:
                np.save(f, out[0] if out.shape[0] == 1 else out)


def check_output(
    path: str | Path, *, inputs: tuple[str | Path, ...] = (), writable: tuple[str, ...] = WRITABLE
) -> Path:
    """Checks, before any work is done, that a result can be written to ``path``.

    Refused: an unknown format, an existing folder, a parent that is a file, a folder that cannot be
    created or written (tried with a temporary file, which also catches read-only mounts and immutable
    folders), and any of ``inputs`` (a result never replaces its source).

    Raises:
        DataError: naming the path and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is an existing folder; name a file to write")
    if _suffix(path) not in writable:
        raise DataError(f"{path}: cannot write this format (use {', '.join(writable)})")
    for source in inputs:
        source = Path(source)
        if (
            path.exists()
            and source.exists()
            and (path.resolve() == source.resolve() or _same_file(path, source))
        ):
            raise DataError(f"{path}: is the input; write the result to another file")
    parent = path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise DataError(f"{path}: {existing} is a file, not a folder")
    try:  # a real write: permissions alone miss read-only mounts and immutable folders (and root)
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".edgesr-probe-"):
            pass
    except OSError as exc:
        raise DataError(f"{path}: the folder {existing} is not writable ({exc.strerror or exc})") from None
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_png_type(path: str | Path, dtype: str) -> None:
    """A PNG holds unsigned 8 or 16-bit integers: other values (floats, negative HU) would be rounded or
    clipped without a word, so they are refused; say so before the work where the type is known."""
    if _suffix(Path(path)) == ".png" and np.dtype(dtype) not in (np.dtype("uint8"), np.dtype("uint16")):
        raise DataError(
            f"{path}: PNG holds unsigned 8 or 16-bit integers, and this image's values are {dtype} (they "
            "would be rounded or clipped); write .tif, .npy or .nii.gz"
        )


def check_volumes(path: str | Path, volumes: int) -> None:
    """Several volumes (a 4-D input) go to NIfTI or NPY, which keep the fourth axis: say so before the
    work, not after it."""
    if volumes > 1 and _suffix(Path(path)) not in (".nii", ".nii.gz", ".npy"):
        raise DataError(
            f"{path}: the input holds {volumes} volumes (4-D); write .nii.gz or .npy, which keep the "
            "fourth axis"
        )


def check_slices(path: str | Path, slices: int) -> None:
    """A PNG holds one slice: say so before the work, not after it."""
    if _suffix(Path(path)) == ".png" and slices != 1:
        raise DataError(f"{path}: PNG holds one slice; the input has {slices} (write .tif, .npy or .nii.gz)")
