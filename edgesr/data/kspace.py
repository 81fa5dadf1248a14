"""Loaders for raw multi-coil k-space: fastMRI-style HDF5 and ISMRMRD HDF5.

Both return a :class:`KSpaceVolume` with complex64 k-space ``[S, C, H, W]`` (H readout, W phase
encode, centered: DC at ``[H // 2, W // 2]``) and the 1-D sampling mask ``[W]``. Coil maps are not
part of raw data; estimate them from the ACS lines with :func:`edgesr.physics.coils.estimate_coil_maps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from edgesr.errors import DataError


@dataclass(frozen=True)
class KSpaceVolume:
    """Raw multi-coil k-space of a stack of 2-D slices.

    Attributes:
        kspace: complex64 ``[S, C, H, W]``.
        mask: float32 ``[W]``, 1 at acquired phase-encode lines (read from the file, else the columns
            that hold any non-zero sample).
        source: the file it was read from.
        format: ``fastmri`` or ``ismrmrd``.
        header: the ISMRMRD XML header when the file has one.
        reference: a reconstruction stored beside the data (fastMRI's ``reconstruction_rss``).
        recon_shape: the output matrix ``(H, W)`` the header asks for (ISMRMRD ``reconSpace``): a
            reconstruction on a larger grid is cropped to it (centred).
        spacing: (slice, row, column) millimetres of the output image, where the header says.
        affine: the output's NIfTI (RAS) voxel-to-world affine, where the acquisitions say.
        prewhitened: the k-space was prewhitened with the noise scans' covariance.
    """

    kspace: np.ndarray
    mask: np.ndarray
    source: Path
    format: str
    header: str | None = None
    reference: np.ndarray | None = None
    recon_shape: tuple[int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    prewhitened: bool = False


def _check_kspace(kspace: np.ndarray, path: Path) -> np.ndarray:
    """complex64 ``[S, C, H, W]`` with at least one slice, coil, row and column, all finite."""
    if not np.iscomplexobj(kspace):
        raise DataError(f"{path}: k-space must be complex, got dtype {kspace.dtype}")
    if kspace.ndim == 3:  # single-coil fastMRI: [S, H, W]
        kspace = kspace[:, None]
    if kspace.ndim != 4:
        raise DataError(f"{path}: k-space must be [slices, coils, rows, cols], got shape {kspace.shape}")
    if 0 in kspace.shape:
        names = ("slices", "coils", "rows", "columns")
        empty = ", ".join(n for n, size in zip(names, kspace.shape, strict=True) if size == 0)
        raise DataError(f"{path}: k-space of shape {kspace.shape} has no {empty}")
    if min(kspace.shape[2:]) < 4:
        raise DataError(
            f"{path}: k-space of {kspace.shape[2]}x{kspace.shape[3]} samples is too small to image"
        )
    if not np.isfinite(kspace).all():
        raise DataError(f"{path}: k-space holds NaN/Inf values")
    # The float32 FFT sums up to sqrt(H W) |k| and must stay finite; scanners' raw units span 1e-9 to
    # 1e6, and the normaliser makes any finite scale below this work.
    peak = float(np.abs(kspace).max())
    if peak > 1e35:
        raise DataError(f"{path}: k-space values up to {peak:.3g} are too large to reconstruct in float32")
    if peak == 0:
        raise DataError(f"{path}: k-space holds only zeros")
    return np.ascontiguousarray(kspace.astype(np.complex64, copy=False))


def _check_mask(mask: np.ndarray, kspace: np.ndarray, path: Path) -> np.ndarray:
    """The 1-D phase-encode mask: 0/1 values, one per column, sampling something."""
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biuf":
        raise DataError(f"{path}: mask of type {mask.dtype}; expected 0/1 numbers")
    mask = mask.reshape(-1) if mask.size == kspace.shape[-1] else mask
    if mask.ndim != 1 or mask.shape[0] != kspace.shape[-1]:
        raise DataError(
            f"{path}: mask has shape {mask.shape} for {kspace.shape[-1]} phase-encode columns "
            "(expected one 0/1 value per column)"
        )
    values = np.unique(mask)
    if not np.isin(values, (0, 1)).all():
        # e.g. 0/255 from an 8-bit image: not guessed, since a weighting mask would mean something else.
        raise DataError(f"{path}: mask values {values[:6].tolist()} are not 0/1 (1 = acquired column)")
    mask = mask.astype(np.float32)
    if not mask.any():
        raise DataError(f"{path}: the mask samples no phase-encode column")
    return mask


def _mask_from_data(kspace: np.ndarray) -> np.ndarray:
    """Columns with any non-zero sample in any slice or coil."""
    return (np.abs(kspace).reshape(-1, kspace.shape[-1]).max(axis=0) > 0).astype(np.float32)


def kspace_from_arrays(
    kspace: np.ndarray, mask: np.ndarray | None = None, *, source: str = "<array>"
) -> KSpaceVolume:
    """Raw k-space held in memory (the Python API), checked as the file loaders check theirs.

    Args:
        kspace: complex ``[C, H, W]`` (one slice) or ``[S, C, H, W]``; H readout, W phase encode, DC at
            ``[H // 2, W // 2]``.
        mask: ``[W]`` 0/1, 1 at acquired columns; default: the columns that hold any non-zero sample.

    Raises:
        DataError: naming ``source`` and the problem (not complex, wrong shape, NaN/Inf, a mask that does
            not fit).
    """
    path = Path(source)
    array = np.asarray(kspace)
    if array.ndim == 3 and np.iscomplexobj(array):
        array = array[None]  # one slice of [C, H, W]: not fastMRI's single-coil [S, H, W] file layout
    checked = _check_kspace(array, path)
    checked_mask = _mask_from_data(checked) if mask is None else _check_mask(np.asarray(mask), checked, path)
    return KSpaceVolume(checked, checked_mask, path, "array")


def load_fastmri(path: str | Path) -> KSpaceVolume:
    """A fastMRI HDF5 file: dataset ``kspace`` ``[S, C, H, W]`` (or ``[S, H, W]``), optional ``mask``,
    ``reconstruction_rss`` and the ``ismrmrd_header`` attribute."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f:
                raise DataError(f"{path}: no 'kspace' dataset (found: {', '.join(f.keys()) or 'nothing'})")
            for name in ("kspace", "mask", "reconstruction_rss"):
                if name in f and not isinstance(f[name], h5py.Dataset):
                    raise DataError(f"{path}: '{name}' is an HDF5 group; expected a dataset")
            kspace = _check_kspace(np.asarray(f["kspace"]), path)
            mask = (
                _check_mask(np.asarray(f["mask"]), kspace, path) if "mask" in f else _mask_from_data(kspace)
            )
            reference = (
                np.asarray(f["reconstruction_rss"], dtype=np.float32) if "reconstruction_rss" in f else None
            )
            header = f.attrs.get("ismrmrd_header")
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:  # h5py's errors on damaged files
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    if isinstance(header, bytes):
        header = header.decode("utf-8")
    geometry = _fastmri_geometry(header, kspace.shape[-2:], path)
    if geometry is None:
        return KSpaceVolume(kspace, mask, path, "fastmri", header=header, reference=reference)
    # As the ISMRMRD reader does: readout oversampling removed before the model (fastMRI's brain data
    # are 640 x 320 for a 320 x 320 image), the output cropped to the reconSpace field of view, and
    # its voxel size from the header (fastMRI stores no positions: the axes are the array's).
    from edgesr.data.mrd import remove_readout_oversampling

    rows, cols = geometry.kept(*kspace.shape[-2:])
    kspace = remove_readout_oversampling(kspace, rows)
    slice_mm, row_mm, col_mm = geometry.voxel_mm((rows, cols))
    return KSpaceVolume(
        kspace,
        mask,
        path,
        "fastmri",
        header=header,
        reference=reference,
        recon_shape=(rows, cols),
        spacing=(slice_mm, row_mm, col_mm),
        affine=np.diag([row_mm, col_mm, slice_mm, 1.0]),
    )


def _fastmri_geometry(header: str | None, shape: tuple[int, ...], path: Path) -> Any:
    """The ``ismrmrd_header``'s grid when it describes this k-space (its encoded matrix is the array's
    rows x columns); None without a header, with one that cannot be read, or for another matrix: the
    k-space is then imaged as stored, as before headers were read. A header that says 3-D or
    non-Cartesian is refused (:class:`~edgesr.data.mrd.UnsupportedEncoding`)."""
    if not header:
        return None
    from edgesr.data.mrd import UnsupportedEncoding, parse_header

    try:
        _, geometry = parse_header(header, source=str(path))
    except UnsupportedEncoding:
        raise  # a 3-D or non-Cartesian acquisition, by its own header: not imaged as 2-D Cartesian
    except DataError:
        return None
    return geometry if tuple(geometry.encoded) == tuple(shape) else None


def load_ismrmrd(path: str | Path, *, group: str = "dataset") -> KSpaceVolume:
    """An ISMRMRD HDF5 file of 2-D Cartesian acquisitions (one readout line per acquisition).

    Assembled as the MRD server assembles a stream (:class:`edgesr.data.mrd.SliceAssembler`): lines on
    the header's encoded grid, noise scans used for prewhitening, readout oversampling removed, and the
    output grid, voxel size and orientation from the header's reconSpace and the acquisitions.
    """
    import ismrmrd

    from edgesr.data.mrd import SliceAssembler

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            if group not in f or "data" not in f[group]:
                raise DataError(f"{path}: no ISMRMRD acquisitions at /{group}/data")
        dataset = ismrmrd.Dataset(
            str(path), group, create_if_needed=False, mode="r"
        )  # never r+: a read must not touch the file
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable ISMRMRD file ({exc})") from None
    try:
        try:
            xml = dataset.read_xml_header()
        except Exception as exc:
            raise DataError(f"{path}: cannot read the ISMRMRD header ({exc})") from None
        xml = xml.decode("utf-8") if isinstance(xml, bytes) else xml
        assembler = SliceAssembler(xml, source=str(path))
        for i in range(dataset.number_of_acquisitions()):
            try:
                acquisition = dataset.read_acquisition(i)
            except Exception as exc:
                raise DataError(f"{path}: cannot read acquisition {i} ({exc})") from None
            assembler.add(acquisition)
    finally:
        dataset.close()
    slices = assembler.pending()
    if not slices:
        raise DataError(f"{path}: no imaging acquisitions")
    series = sorted({key[1:] for key in slices})
    if len(series) > 1:  # a volume of slices is one image per slice: not one written over another
        names = ("contrast", "repetition", "set", "phase")
        varying = [i for i, _ in enumerate(names) if len({other[i] for other in series}) > 1]
        found = "; ".join(", ".join(f"{names[i]} {other[i]}" for i in varying) for other in series[:4])
        raise DataError(
            f"{path}: holds {len(series)} images per slice ({found}"
            f"{'; ...' if len(series) > 4 else ''}); a file is read as one image per slice: stream it to "
            "`edgesr serve mrd`, which reconstructs each one, or split the file"
        )
    taken = [assembler.take(index) for index in slices]
    kspace = _check_kspace(np.stack([k for k, _, _ in taken]), path)
    mask = np.maximum.reduce([m for _, m, _ in taken]).astype(np.float32)
    heads = [head for _, _, head in taken]
    height, width = assembler.crop(np.zeros(kspace.shape[-2:], dtype=np.uint8)).shape
    affine = assembler.affine(heads[0], (height, width))
    if len(heads) > 1:  # the slice axis from the slices' own centres (LPS -> RAS)
        step = (np.asarray(heads[-1].position) - np.asarray(heads[0].position)) / (len(heads) - 1)
        if np.linalg.norm(step) > 0:
            affine[:3, 2] = np.array([-1.0, -1.0, 1.0]) * step
    slice_mm, row_mm, col_mm = assembler.geometry.voxel_mm((height, width))
    if len(heads) > 1 and np.linalg.norm(affine[:3, 2]) > 0:
        slice_mm = float(np.linalg.norm(affine[:3, 2]))
    return KSpaceVolume(
        kspace,
        mask,
        path,
        "ismrmrd",
        header=xml,
        recon_shape=(height, width),
        spacing=(slice_mm, row_mm, col_mm),
        affine=affine,
        prewhitened=assembler.prewhitened,
    )


def load_kspace(path: str | Path) -> KSpaceVolume:
    """Loads raw k-space from an HDF5 file, telling ISMRMRD (``/dataset/data``) from fastMRI (``/kspace``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            is_ismrmrd = "dataset" in f and "kspace" not in f
    except (OSError, RuntimeError, ValueError) as exc:  # h5py raises RuntimeError on damaged heaps
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    return load_ismrmrd(path) if is_ismrmrd else load_fastmri(path)
