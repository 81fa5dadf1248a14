"""Raw MRD (ISMRMRD) acquisitions as scanners send them, assembled into per-slice k-space.

The same assembly serves an ISMRMRD file (:func:`edgesr.data.kspace.load_ismrmrd`) and the MRD
streaming server (:mod:`edgesr.integrate.mrd_server`), so that both give the same image:

* **lines** go to their ``kspace_encode_step_1`` (shifted so the header's encoding centre lands on
  column ``W // 2``) and ``slice``; parallel-calibration lines are k-space lines like any other (they
  are the fully sampled centre that coil maps are estimated from) where no imaging line was measured;
  lines measured more than once (averages) are averaged; navigator, phase-correction and dummy-scan
  acquisitions are skipped;
* **images**: one per slice and per contrast (echo), repetition, set and phase
  (:data:`ImageKey`), each assembled from its own lines, never one written over another; a slice's
  ``ACQ_LAST_IN_SLICE`` line completes every echo of it, once the header's last average is in;
* an **asymmetric echo** (fewer readout samples than ``encodedSpace.x``, the echo at
  ``center_sample``) is zero-filled onto the encoded readout with the echo at its centre, so the
  field of view stays the header's;
* 2-D Cartesian encodings only: a 3-D encoding or a non-Cartesian trajectory is refused;
* **noise scans** (``ACQ_IS_NOISE_MEASUREMENT``) give the coils' noise covariance; the k-space is
  prewhitened with the inverse of its Cholesky factor, so that the coil combination sees independent
  unit-variance noise (Gadgetron's NoiseAdjustGadget does the same). Without noise scans, or with a
  singular covariance, the data stay as they are and :attr:`SliceAssembler.prewhitened` says so;
* **readout oversampling** (``encodedSpace.x`` > ``reconSpace.x``, Siemens' 2x) is removed in the
  image domain along the readout before the model runs: the model sees the field of view it was
  trained on, at half the cost;
* the **output grid** covers the header's ``reconSpace`` field of view: a phase-encode field of view
  larger than it is cropped after reconstruction (:meth:`SliceAssembler.crop`), and the voxel size
  is the reconSpace field of view over the output matrix (the reconSpace matrix, or the acquired
  resolution where the console would interpolate to a larger one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgesr.errors import DataError

# Acquisitions that are not k-space lines of the image.
_SKIPPED_FLAGS = (
    "ACQ_IS_NAVIGATION_DATA",
    "ACQ_IS_PHASECORR_DATA",
    "ACQ_IS_DUMMYSCAN_DATA",
    "ACQ_IS_RTFEEDBACK_DATA",
)


# One image of a stream: (slice, contrast, repetition, set, phase), as the acquisitions' ``idx`` says.
ImageKey = tuple[int, int, int, int, int]


def describe_key(key: ImageKey) -> str:
    """``slice 2`` or ``slice 2, contrast 1, repetition 3`` (the indices that are not 0 beyond the slice)."""
    names = ("contrast", "repetition", "set", "phase")
    return ", ".join([f"slice {key[0]}", *(f"{n} {v}" for n, v in zip(names, key[1:], strict=True) if v)])


@dataclass(frozen=True)
class MrdGeometry:
    """What the header says about the grid (first encoding)."""

    encoded: tuple[int, int]  # (readout samples, phase-encode lines) as acquired
    recon: tuple[int, int]  # (readout, phase encode) of the output image
    recon_fov_mm: tuple[float, float, float]
    slices: int
    pe_center: int
    encoded_fov_mm: tuple[float, float] = (0.0, 0.0)  # (readout, phase encode); 0 where not given
    last_average: int = 0  # encodingLimits' average maximum: a slice ends with its last average

    @property
    def fov_mm(self) -> tuple[float, float, float]:
        """The field of view the output covers: the reconSpace one, or the encoded one where the
        acquisition covered less (then nothing is cropped in that direction; :meth:`kept`)."""
        covered = [
            min(recon, encoded) if encoded > 0 else recon
            for recon, encoded in zip(self.recon_fov_mm[:2], self.encoded_fov_mm, strict=True)
        ]
        return (covered[0], covered[1], self.recon_fov_mm[2])

    def kept(self, samples: int, lines: int) -> tuple[int, int]:
        """The (readout, phase-encode) pixels of a ``samples x lines`` acquisition that cover the
        reconSpace field of view: the encoded field of view over the recon one is the oversampling
        (Siemens' 2x readout, phase oversampling), each direction cropped by it. Without encoded fields
        of view, the reconSpace matrix where the acquisition is larger. A reconSpace matrix larger than
        what covers its field of view (the console's interpolation) is not made up: the image keeps
        the acquired resolution and its voxel size says so (:meth:`voxel_mm`)."""
        kept = []
        for axis, size in enumerate((samples, lines)):
            encoded_fov, recon_fov = self.encoded_fov_mm[axis], self.recon_fov_mm[axis]
            if encoded_fov > 0 and recon_fov > 0:
                kept.append(min(size, max(1, round(size * min(1.0, recon_fov / encoded_fov)))))
            else:
                kept.append(min(size, self.recon[axis]))
        return kept[0], kept[1]

    def voxel_mm(self, shape: tuple[int, int]) -> tuple[float, float, float]:
        """(slice, row, column) millimetres of an output image of ``shape`` covering :attr:`fov_mm`:
        rows run along the readout."""
        fov_x, fov_y, fov_z = self.fov_mm
        return (fov_z, fov_x / shape[0], fov_y / shape[1])


class UnsupportedEncoding(DataError):
    """A header that reads well but describes data edgesr cannot reconstruct (3-D, non-Cartesian)."""


def parse_header(xml: str | bytes, *, source: str) -> tuple[Any, MrdGeometry]:
    """The ISMRMRD header and its grid; a DataError naming ``source`` and the field when it is unusable."""
    import ismrmrd

    try:
        text = xml.decode("utf-8") if isinstance(xml, bytes) else xml
        header = ismrmrd.xsd.CreateFromDocument(text)
        encoding = header.encoding[0]
        encoded = encoding.encodedSpace.matrixSize
        recon = encoding.reconSpace.matrixSize
        fov = encoding.reconSpace.fieldOfView_mm
        encoded_fov = encoding.encodedSpace.fieldOfView_mm
        limits = encoding.encodingLimits
        n_pe = int(encoded.y)
        pe_center = int(limits.kspace_encoding_step_1.center) if limits.kspace_encoding_step_1 else n_pe // 2
        slices = int(limits.slice.maximum) + 1 if limits.slice else 1
        last_average = int(limits.average.maximum) if limits.average else 0
        trajectory = str(getattr(encoding.trajectory, "value", encoding.trajectory) or "cartesian")
        partitions = int(encoded.z or 1)
        geometry = MrdGeometry(
            (int(encoded.x), n_pe),
            (int(recon.x), int(recon.y)),
            (float(fov.x), float(fov.y), float(fov.z)),
            slices,
            pe_center,
            (float(encoded_fov.x or 0.0), float(encoded_fov.y or 0.0))
            if encoded_fov is not None
            else (0.0, 0.0),
            max(0, last_average),
        )
    except DataError:
        raise
    except Exception as exc:  # pyxb raises many types on malformed or incomplete XML
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"{source}: the ISMRMRD header cannot be read ({first})") from None
    if trajectory.lower() != "cartesian":
        raise UnsupportedEncoding(
            f"{source}: the header's trajectory is {trajectory}; edgesr reconstructs Cartesian k-space "
            "only (non-Cartesian data need gridding, which its models do not do)"
        )
    if partitions > 1:
        raise UnsupportedEncoding(
            f"{source}: the header encodes 3-D k-space ({partitions} partitions along encodedSpace z); "
            "edgesr reconstructs 2-D slices only"
        )
    if min(geometry.encoded) < 1 or min(geometry.recon) < 1 or geometry.slices < 1:
        raise DataError(
            f"{source}: the header's matrix {geometry.encoded} / reconSpace {geometry.recon} / "
            f"{geometry.slices} slice(s) is empty"
        )
    if not 0 <= pe_center < n_pe:
        raise DataError(f"{source}: the header's k-space centre line {pe_center} lies outside 0..{n_pe - 1}")
    if min(geometry.recon_fov_mm[:2]) <= 0 or not np.isfinite(geometry.recon_fov_mm).all():
        raise DataError(
            f"{source}: the header's reconSpace field of view {geometry.recon_fov_mm} mm is not valid"
        )
    return header, geometry


def noise_whitener(noise: list[np.ndarray]) -> np.ndarray | None:
    """``L^-1`` with ``L L^H`` the coils' noise covariance, or None when it is singular or not finite."""
    samples = np.concatenate(noise, axis=1).astype(np.complex128)  # [C, N]
    if samples.shape[1] < samples.shape[0]:
        return None
    covariance = samples @ samples.conj().T / samples.shape[1]
    try:
        factor = np.linalg.cholesky(covariance)
        whitener = np.linalg.inv(factor)
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(whitener).all() or np.linalg.cond(factor) > 1e6:
        return None
    return whitener.astype(np.complex64)


def remove_readout_oversampling(kspace: np.ndarray, samples: int) -> np.ndarray:
    """``[..., X, W]`` -> ``[..., samples, W]``: the centre of the readout's image domain (centred FFTs)."""
    size = kspace.shape[-2]
    if size == samples:
        return kspace
    axis = kspace.ndim - 2
    image = np.fft.fftshift(
        np.fft.ifft(np.fft.ifftshift(kspace, axes=axis), axis=axis, norm="ortho"), axes=axis
    )
    start = (size - samples) // 2
    image = np.take(image, np.arange(start, start + samples), axis=axis)
    result = np.fft.fftshift(
        np.fft.fft(np.fft.ifftshift(image, axes=axis), axis=axis, norm="ortho"), axes=axis
    )
    return result.astype(np.complex64)


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``[..., H, W]`` cropped about its centre to at most ``shape`` (a smaller image is kept)."""
    height, width = image.shape[-2:]
    rows, cols = min(shape[0], height), min(shape[1], width)
    top, left = (height - rows) // 2, (width - cols) // 2
    return image[..., top : top + rows, left : left + cols]


class SliceAssembler:
    """Collects the acquisitions of one MRD stream or file into per-slice k-space (see the module doc)."""

    def __init__(self, header_xml: str | bytes, *, source: str, max_bytes: int | None = None) -> None:
        """``max_bytes`` bounds the k-space held for slices not yet taken (a server's session limit)."""
        import ismrmrd

        self.source = source
        self.max_bytes = max_bytes
        self.header, self.geometry = parse_header(header_xml, source=source)
        self._flags = {name: getattr(ismrmrd, name) for name in _SKIPPED_FLAGS if hasattr(ismrmrd, name)}
        self._noise_flag = ismrmrd.ACQ_IS_NOISE_MEASUREMENT
        self._last_in_slice = ismrmrd.ACQ_LAST_IN_SLICE
        self._noise: list[np.ndarray] = []
        self._whitener: np.ndarray | None = None
        self._whitener_ready = False
        self._calibration = ismrmrd.ACQ_IS_PARALLEL_CALIBRATION
        self._imaging_too = ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
        # Per image: the sum of each line's measurements [C, X, W], how many, and whether they are
        # imaging lines (which replace calibration lines of the same position: a separate reference
        # scan may have another contrast).
        self._slices: dict[ImageKey, np.ndarray] = {}
        self._counts: dict[ImageKey, np.ndarray] = {}  # [W] int
        self._imaging: dict[ImageKey, np.ndarray] = {}  # [W] bool
        self._last_header: dict[ImageKey, Any] = {}  # the acquisition header of each image's centre-most line
        self._shape: tuple[int, int] | None = None  # (coils, samples as acquired)
        self.acquisitions = 0

    @property
    def prewhitened(self) -> bool:
        """Whether noise scans gave a usable covariance (decided with the first imaging line)."""
        return self._whitener is not None

    def add(self, acquisition: Any) -> list[ImageKey]:
        """Adds one acquisition; returns the images it completes (in order): on the slice's last line
        (``ACQ_LAST_IN_SLICE``) of the last average the header declares, every echo of that slice,
        repetition, set and phase (echoes arrive interleaved: the last echo's flag ends them all)."""
        index = self.acquisitions
        self.acquisitions += 1
        data = np.asarray(acquisition.data)
        if data.ndim != 2 or data.size == 0:
            raise DataError(f"{self.source}: acquisition {index} holds data of shape {data.shape}")
        if not np.isfinite(data).all():
            raise DataError(f"{self.source}: acquisition {index} holds NaN/Inf samples")
        if acquisition.is_flag_set(self._noise_flag):
            if self._slices:
                return []  # a noise scan after imaging (a second dependency): the covariance is set
            self._noise.append(data.astype(np.complex64))
            return []
        if any(acquisition.is_flag_set(flag) for flag in self._flags.values()):
            return []
        if self._shape is None:
            self._shape = (data.shape[0], data.shape[1])
            if self._noise and self._noise[0].shape[0] == data.shape[0]:
                self._whitener = noise_whitener(self._noise)
        if data.shape != self._shape:
            raise DataError(
                f"{self.source}: acquisition {index} has shape {data.shape}, expected {self._shape}"
            )
        n_pe = self.geometry.encoded[1]
        line = int(acquisition.idx.kspace_encode_step_1) - self.geometry.pe_center + n_pe // 2
        idx = acquisition.idx
        key: ImageKey = (int(idx.slice), int(idx.contrast), int(idx.repetition), int(idx.set), int(idx.phase))
        if int(idx.kspace_encode_step_2) != 0:
            raise DataError(
                f"{self.source}: acquisition {index} is partition {int(idx.kspace_encode_step_2)} of a 3-D "
                "encoding; edgesr reconstructs 2-D slices only"
            )
        if not (0 <= line < n_pe and 0 <= key[0] < self.geometry.slices):
            raise DataError(
                f"{self.source}: acquisition {index} lies outside the encoded matrix "
                f"(line {line}, slice {key[0]})"
            )
        data = self._on_encoded_readout(data, int(acquisition.center_sample), index)
        if key not in self._slices:
            needed = (len(self._slices) + 1) * data.shape[0] * data.shape[1] * n_pe * 8  # complex64
            if self.max_bytes is not None and needed > self.max_bytes:
                raise DataError(
                    f"{self.source}: holding {len(self._slices) + 1} image(s) of {data.shape[0]} coils x "
                    f"{data.shape[1]} x {n_pe} samples needs {needed} bytes, past the limit of "
                    f"{self.max_bytes}"
                )
            self._slices[key] = np.zeros((*data.shape, n_pe), dtype=np.complex64)
            self._counts[key] = np.zeros(n_pe, dtype=np.int64)
            self._imaging[key] = np.zeros(n_pe, dtype=bool)
        imaging = not acquisition.is_flag_set(self._calibration) or acquisition.is_flag_set(self._imaging_too)
        counts, kind = self._counts[key], self._imaging[key]
        if imaging and not kind[line]:  # an imaging line replaces calibration lines measured here
            self._slices[key][:, :, line] = data
            counts[line], kind[line] = 1, True
        elif imaging == kind[line] or counts[line] == 0:  # another average of the same kind
            self._slices[key][:, :, line] += data
            counts[line] += 1
        if line == n_pe // 2 or key not in self._last_header:
            self._last_header[key] = acquisition.getHead()
        if not acquisition.is_flag_set(self._last_in_slice) or int(idx.average) < self.geometry.last_average:
            return []
        return [other for other in sorted(self._slices) if other[0] == key[0] and other[2:] == key[2:]]

    def _on_encoded_readout(self, data: np.ndarray, center_sample: int, index: int) -> np.ndarray:
        """``data [C, samples]`` on the encoded readout: an asymmetric echo (fewer samples than
        ``encodedSpace.x``) zero-filled with its echo (``center_sample``; 0 means not given: centred)
        at the readout's centre, so that the image keeps the header's field of view."""
        samples, encoded = data.shape[1], self.geometry.encoded[0]
        if samples >= encoded:
            return data
        start = encoded // 2 - center_sample if center_sample > 0 else (encoded - samples) // 2
        if start < 0 or start + samples > encoded:
            raise DataError(
                f"{self.source}: acquisition {index} has {samples} readout samples with the echo at sample "
                f"{center_sample}, which do not fit the encoded readout of {encoded} samples"
            )
        placed = np.zeros((data.shape[0], encoded), dtype=np.complex64)
        placed[:, start : start + samples] = data
        return placed

    def pending(self) -> list[ImageKey]:
        """Images that hold lines and have not been taken."""
        return sorted(self._slices)

    def take(self, key: ImageKey) -> tuple[np.ndarray, np.ndarray, Any]:
        """Removes an image: k-space ``[C, H, W]`` (averages averaged, prewhitened, readout oversampling
        removed), its mask ``[W]`` and the acquisition header its image is placed by."""
        counts = self._counts.pop(key)
        kspace = self._slices.pop(key) / np.maximum(counts, 1).astype(np.float32)
        sampled = counts > 0
        del self._imaging[key]
        head = self._last_header.pop(key)
        if self._whitener is not None:
            kspace = np.einsum("vc,cxw->vxw", self._whitener, kspace).astype(np.complex64)
        readout, _ = self.geometry.kept(kspace.shape[1], kspace.shape[2])
        return remove_readout_oversampling(kspace, readout), sampled.astype(np.float32), head

    def crop(self, image: np.ndarray) -> np.ndarray:
        """``[..., H, W]`` cropped (centred) to what covers the reconSpace field of view (phase
        oversampling removed; :meth:`MrdGeometry.kept`)."""
        encoded = self.geometry.encoded
        rows, _ = self.geometry.kept(*encoded)
        _, cols = self.geometry.kept(encoded[0], image.shape[-1])
        return center_crop(image, (min(rows, image.shape[-2]), cols))

    def affine(self, head: Any, shape: tuple[int, int]) -> np.ndarray:
        """The NIfTI (RAS) affine of a slice image ``[H, W]`` (rows along the readout) from the acquisition
        header's position (the slice centre) and directions, with the reconSpace field of view over it."""
        slice_mm, row_mm, col_mm = self.geometry.voxel_mm(shape)
        read = np.asarray(head.read_dir, dtype=np.float64)
        phase = np.asarray(head.phase_dir, dtype=np.float64)
        normal = np.asarray(head.slice_dir, dtype=np.float64)
        if not (np.linalg.norm(read) > 0.5 and np.linalg.norm(phase) > 0.5):
            read, phase, normal = np.eye(3)[0], np.eye(3)[1], np.eye(3)[2]
        if np.linalg.norm(normal) < 0.5:
            normal = np.cross(read, phase)
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = read * row_mm, phase * col_mm, normal * slice_mm
        centre = np.asarray(head.position, dtype=np.float64)
        lps[:3, 3] = centre - lps[:3, 0] * (shape[0] // 2) - lps[:3, 1] * (shape[1] // 2)
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def simulate_acquisitions(
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
    """An MRD header and acquisitions as a Siemens scanner sends them, from a magnitude ``image [H, W]``:
    for trying the MRD server and the ISMRMRD reader on data whose truth is known (tests, benchmarks).

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


def write_mrd_file(path: str | os.PathLike[str], xml: str, acquisitions: Iterable[Any]) -> Path:
    """An ISMRMRD HDF5 file of ``acquisitions`` under ``xml`` (what a scanner's converter writes)."""
    import ismrmrd

    path = Path(path)

    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        dataset.write_xml_header(xml)
        for acq in acquisitions:
            dataset.append_acquisition(acq)
    finally:
        dataset.close()
    return path


__all__ = [
    "ImageKey",
    "MrdGeometry",
    "UnsupportedEncoding",
    "describe_key",
    "center_crop",
    "SliceAssembler",
    "noise_whitener",
    "parse_header",
    "remove_readout_oversampling",
]
