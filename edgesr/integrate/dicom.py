"""DICOM out: an enhanced volume written as a *derived series* that a PACS accepts beside its source.

Each output slice starts from its source slice's header (patient, study, frame of reference and
acquisition kept) and becomes a new instance of a new series:

* identity: ImageType ``DERIVED\\SECONDARY``, new SeriesInstanceUID and SOPInstanceUIDs, SeriesNumber
  and SeriesDescription set; SourceImageSequence and ReferencedSeriesSequence point at the source,
  DerivationDescription says what was done, ContributingEquipmentSequence names edgesr, the model and
  its sha256 (the scanner stays the Manufacturer: it acquired the data);
* geometry: Rows/Columns, PixelSpacing and ImagePositionPatient for the new grid, with the pixel
  centres where the model put them (:func:`edgesr.physics.degrade.lr_grid_offset`): the field of view
  is the source's;
* intensities: the source's stored encoding (RescaleSlope/Intercept, signedness) when the result fits
  in 16 bits with it, else a fitted slope and intercept over the slice; either way each pixel decodes
  to within half a slope of the model's value (checked as it is written);
* carried: LossyImageCompression (and its ratio and method), BurnedInAnnotation, windowing, padding.
  Private tags are dropped: they describe the source's pixels (vendors' mosaic and scaling headers).

An enhanced multi-frame source (Enhanced MR/CT, and their legacy-converted forms) becomes one derived
multi-frame file of its SOP class: the functional groups are rewritten frame by frame
(:func:`derived_multiframe`).

The series is written to a temporary folder beside the target and renamed into place when complete:
a folder that exists holds a whole series.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgesr import __version__
from edgesr._io import _umask, fsync_dir
from edgesr.data.images import ImageVolume
from edgesr.errors import DataError
from edgesr.integrate.api import Provenance
from edgesr.physics.degrade import lr_grid_offset

# Tags that describe the source's pixel data or its storage and would be wrong on the new pixels.
_DROPPED = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "IconImageSequence",
    "PixelDataProviderURL",
    "PixelPaddingRangeLimit",
    # A (supplemental) palette colours the source's stored values, which the new encoding changes.
    *(
        f"{kind}{colour}PaletteColorLookupTable{part}"
        for colour in ("Red", "Green", "Blue")
        for kind, part in (("", "Descriptor"), ("", "Data"), ("Segmented", "Data"))
    ),
    "PaletteColorLookupTableUID",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "RealWorldValueMappingSequence",  # maps the source's stored values (a range of them) to units
)
# Transfer syntaxes that are always lossy (JPEG baseline/extended, JPEG-LS near-lossless, MPEG): a
# source stored in one has lost information even when LossyImageCompression was not written.
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
    }
)
DERIVED_SERIES_OFFSET = 1000  # derived SeriesNumber = source + this, as consoles number derived series


@dataclass(frozen=True)
class Encoding:
    """How modality values are stored: ``value = stored * slope + intercept``, 16 bits."""

    slope: float
    intercept: float
    signed: bool

    def encode(self, values: np.ndarray) -> np.ndarray:
        stored = np.rint((values.astype(np.float64) - self.intercept) / self.slope)
        return stored.astype(np.int16 if self.signed else np.uint16)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return stored.astype(np.float64) * self.slope + self.intercept

    def fits(self, values: np.ndarray) -> bool:
        stored = np.rint((values.astype(np.float64) - self.intercept) / self.slope)
        info = np.iinfo(np.int16 if self.signed else np.uint16)
        return bool(stored.min() >= info.min and stored.max() <= info.max)


def _ds(value: float) -> float:
    """``value`` as a DICOM decimal string (16 characters) holds it: what a reader will decode with."""
    from pydicom.valuerep import format_number_as_ds

    return float(format_number_as_ds(float(value)))


def choose_encoding(values: np.ndarray, source: Encoding) -> Encoding:
    """The source's slope and intercept when the values fit in 16 bits with them, signed or not (a derived
    series that looks like its source: HU stay HU with slope 1, an MR image keeps no Modality LUT), else
    a slope and intercept fitted to the values' range (unsigned 16 bits).

    The fitted slope leaves one code spare, so rounding the slope and intercept to decimal strings
    never pushes a value out of range.
    """
    for kept in (source, Encoding(source.slope, source.intercept, not source.signed)):
        if kept.fits(values):  # signedness may change: overshoot below an unsigned source's zero
            return kept
    low, high = float(values.min()), float(values.max())
    slope = _ds((high - low) / 65534) if high > low else 1.0
    if slope <= 0:  # a range below the decimal string's resolution
        slope = 1.0
    fitted = Encoding(slope, _ds(low), signed=False)
    if not fitted.fits(values):
        raise DataError(f"cannot encode values in [{low:g}, {high:g}] in 16 bits")
    return fitted


def _source_encoding(ds: Any) -> Encoding:
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return Encoding(slope, intercept, signed=int(ds.get("PixelRepresentation", 0)) == 1)


def _code(value: str, meaning: str) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def _description(source: str, suffix: str) -> str:
    """``source`` + ``suffix`` within the 64 characters of a LO value (the source is shortened)."""
    room = 64 - len(suffix) - 1
    return f"{source[:room]} {suffix}".strip() if source else suffix[:64]


def check_output_folder(
    folder: str | os.PathLike[str], *, inputs: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """Before any work: ``folder`` does not exist or is empty, is not an input, and its parent is writable.

    Raises:
        DataError: naming the folder and the problem.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: exists and is a file; a DICOM series is written to a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise DataError(f"{folder}: is not empty; write the derived series to a new or empty folder")
    for source in inputs:
        source_path = Path(source).resolve()
        target = folder.resolve()
        if target == source_path or source_path in target.parents:
            raise DataError(f"{folder}: lies inside the input {source}; write the series elsewhere")
    parent = folder.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise DataError(f"{folder}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".edgesr-probe-"):
            pass
    except OSError as exc:
        raise DataError(f"{folder}: the folder {existing} is not writable ({exc.strerror or exc})") from None
    return folder


@dataclass(frozen=True)
class DerivedSeries:
    """What every instance of one derived series shares.

    Attributes:
        series_uid: the new SeriesInstanceUID.
        scale, degradation: the model's; where its output pixels lie (:func:`lr_grid_offset`).
        provenance: the model and its weights, named in ContributingEquipmentSequence.
        derivation: DerivationDescription, what was done.
        now: the creation date and time of every instance.
        comments: what the reader should know about these images (ImageComments, which viewers show);
            empty: the source's comments are kept.
    """

    series_uid: str
    scale: int
    degradation: str
    provenance: Provenance
    derivation: str
    now: datetime.datetime
    comments: str = ""


def _drop_overlays(ds: Any) -> None:
    """Removes overlay planes (groups 6000-601E) and retired curves (5000-501E): bitmaps and points on the
    source's pixel grid, which a viewer would draw misplaced on the finer grid (as for the palettes)."""
    repeating = [
        element.tag
        for element in ds
        if element.tag.group % 2 == 0
        and 0x5000 <= element.tag.group <= 0x501E
        or element.tag.group % 2 == 0
        and 0x6000 <= element.tag.group <= 0x601E
    ]
    for tag in repeating:
        del ds[tag]


def _stamp_identity(ds: Any, series: DerivedSeries, series_number: int | None) -> None:
    """What makes ``ds`` (a copy of its source's header) a new instance of the derived series: ImageType,
    UIDs, number, description, dates, comments and edgesr as contributing equipment."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import generate_uid

    ds.remove_private_tags()  # recursive: vendors' per-frame scaling headers describe the source's pixels
    _drop_overlays(ds)
    image_type = list(ds.get("ImageType", []) or [])
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series.series_uid
    if series_number is not None:
        ds.SeriesNumber = series_number
    ds.SeriesDescription = _description(str(ds.get("SeriesDescription", "")), f"[edgesr x{series.scale}]")
    ds.DerivationDescription = series.derivation[:1024]
    if series.comments:
        original = str(ds.get("ImageComments", "") or "")
        kept = f" (the source image's comments: {original})" if original else ""
        ds.ImageComments = (series.comments + kept)[:10240]  # LT's limit
    date, time = series.now.strftime("%Y%m%d"), series.now.strftime("%H%M%S.%f")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.SeriesDate, ds.SeriesTime = date, time
    equipment = Dataset()
    equipment.Manufacturer = "edgesr"
    equipment.ManufacturerModelName = series.provenance.model[-64:]
    equipment.SoftwareVersions = [f"edgesr {__version__}", series.provenance.architecture[:64]]
    equipment.ContributionDateTime = series.now.strftime("%Y%m%d%H%M%S.%f")
    provenance = series.provenance
    equipment.ContributionDescription = (
        f"{series.derivation} Weights sha256 {provenance.weights_sha256}"
        + (f", artifact sha256 {provenance.artifact_sha256}" if provenance.artifact_sha256 else "")
    )[:1024]
    equipment.PurposeOfReferenceCodeSequence = DicomSequence([_code("109102", "Processing Equipment")])
    previous = list(ds.get("ContributingEquipmentSequence", []) or [])
    ds.ContributingEquipmentSequence = DicomSequence([*previous, equipment])


def _spatial_resampling() -> Any:
    """DCM 113085 "Spatial resampling", CID 7203's code for what super-resolution does to an image."""
    from pydicom.sr.codedict import codes

    code = codes.DCM.SpatialResampling
    return _code(code.value, code.meaning)


def _source_reference(sop_class: str, sop_instance: str, frames: Sequence[int] = ()) -> Any:
    """An item of SourceImageSequence: the source instance (and frames) this image was made from."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    reference = Dataset()
    reference.ReferencedSOPClassUID = sop_class
    reference.ReferencedSOPInstanceUID = sop_instance
    if frames:
        reference.ReferencedFrameNumber = list(frames) if len(frames) > 1 else frames[0]
    reference.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code("121322", "Source image for image processing operation")]
    )
    return reference


def _referenced_series(
    series_uid: str, sop_class: str, sop_instance: str, *, instances: str = "ReferencedInstanceSequence"
) -> Any:
    """An item of ReferencedSeriesSequence: the source series and the instance derived from, listed in
    ``instances`` (the Hierarchical SOP Instance Reference macro names it ReferencedSOPSequence)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    instance = Dataset()
    instance.ReferencedSOPClassUID = sop_class
    instance.ReferencedSOPInstanceUID = sop_instance
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    setattr(series, instances, DicomSequence([instance]))
    return series


def _derived_origin(
    origin: Sequence[Any],
    orientation: Sequence[Any],
    spacing: tuple[float, float],
    shape: tuple[int, int],
    *,
    scale: int,
    degradation: str,
) -> list[float]:
    """ImagePositionPatient of the output's first pixel: HR pixel i lies at LR coordinate
    ``(i - offset) / scale`` on each axis (:func:`lr_grid_offset`), so the field of view is the source's."""
    cosines = np.asarray([float(v) for v in orientation])
    along_row, down_column = cosines[:3], cosines[3:]
    rows, columns = shape
    shift_rows = -lr_grid_offset(degradation, rows, scale) / scale
    shift_cols = -lr_grid_offset(degradation, columns, scale) / scale
    moved = np.asarray([float(v) for v in origin])
    moved = moved + down_column * spacing[0] * shift_rows + along_row * spacing[1] * shift_cols
    return [_ds(v) for v in moved]


def _encoded(
    ds: Any,
    pixels: np.ndarray,
    *,
    source_encoding: Encoding,
    source_padding: Any,
    padding: np.ndarray | None,
) -> tuple[Encoding, np.ndarray]:
    """``pixels`` (one slice or all frames) stored in 16 bits, with ``ds``'s pixel-module attributes and
    PixelPaddingValue set to match; checked to decode to within half a slope of the model's values."""
    encoding = choose_encoding(pixels, source_encoding)
    stored = encoding.encode(pixels)
    # The scanner's padding keeps its modality value (restored from the source), in the new encoding.
    padded = padding if padding is not None and padding.any() and source_padding is not None else None
    if padded is not None:
        padding_value = int(stored[padded][0])  # the output holds the source's padding value there
        stored[padded] = padding_value
        ds.PixelPaddingValue = padding_value
        ds["PixelPaddingValue"].VR = "SS" if encoding.signed else "US"
    elif "PixelPaddingValue" in ds:
        del ds.PixelPaddingValue  # no output pixel is padding: a tissue value must not read as one
    error = np.abs(encoding.decode(stored) - pixels)
    if padded is not None:
        error = np.where(padded, 0.0, error)
    if float(error.max()) > encoding.slope / 2 * (1 + 1e-6) + 1e-9:
        raise DataError(f"re-encoding lost {float(error.max()):g} > half a slope ({encoding.slope:g})")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if encoding.signed else 0
    return encoding, stored


def _store_pixels(ds: Any, stored: np.ndarray, source_syntax: str) -> None:
    """The stored values as uncompressed little-endian pixel data, and the file meta to match."""
    from pydicom.uid import ExplicitVRLittleEndian

    if source_syntax in LOSSY_SYNTAXES and "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "01"  # the source's pixels went through lossy compression: say so
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def derived_slice(
    source: Any,
    pixels: np.ndarray,
    series: DerivedSeries,
    *,
    series_number: int | None,
    padding: np.ndarray | None = None,
) -> Any:
    """One output instance from its source header (read without pixels) and the model's values.

    Args:
        source: the source slice's pydicom Dataset.
        pixels: float ``[H * scale, W * scale]`` modality values (HU for CT).
        series: what the derived series' instances share.
        series_number: the derived SeriesNumber (None: the source's is kept).
        padding: bool, the output pixels that are the scanner's padding (written as its padding value).
    """
    from pydicom.sequence import Sequence as DicomSequence

    ds = source
    source_sop_class = str(ds.SOPClassUID)
    source_sop_instance = str(ds.SOPInstanceUID)
    source_series = str(ds.get("SeriesInstanceUID", ""))
    source_encoding = _source_encoding(ds)
    source_padding = ds.get("PixelPaddingValue")
    source_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    for keyword in (*_DROPPED, "NumberOfFrames", "FrameIncrementPointer"):
        if keyword in ds:
            delattr(ds, keyword)
    _stamp_identity(ds, series, series_number)
    ds.DerivationCodeSequence = DicomSequence([_spatial_resampling()])
    ds.SourceImageSequence = DicomSequence([_source_reference(source_sop_class, source_sop_instance)])
    if source_series:  # a source without a series UID (invalid, but read) cannot be referenced by it
        ds.ReferencedSeriesSequence = DicomSequence(
            [_referenced_series(source_series, source_sop_class, source_sop_instance)]
        )

    # Geometry: the new grid over the source's field of view (empty tags are absent, as for the reader).
    rows, columns = pixels.shape
    if _has_value(ds, "PixelSpacing"):
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        ds.PixelSpacing = [_ds(row_mm / series.scale), _ds(col_mm / series.scale)]
        if _has_value(ds, "ImagePositionPatient") and _has_value(ds, "ImageOrientationPatient"):
            ds.ImagePositionPatient = _derived_origin(
                ds.ImagePositionPatient,
                ds.ImageOrientationPatient,
                (row_mm, col_mm),
                (rows, columns),
                scale=series.scale,
                degradation=series.degradation,
            )
    ds.Rows, ds.Columns = rows, columns

    encoding, stored = _encoded(
        ds, pixels, source_encoding=source_encoding, source_padding=source_padding, padding=padding
    )
    if encoding != Encoding(1.0, 0.0, encoding.signed) or "RescaleSlope" in ds:
        ds.RescaleSlope, ds.RescaleIntercept = _ds(encoding.slope), _ds(encoding.intercept)
    _store_pixels(ds, stored, source_syntax)
    return ds


def _frame_group_item(ds: Any, frame: int, sequence: str) -> Any | None:
    """The item of functional group ``sequence`` that applies to ``frame`` (0-based): per-frame first."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for group in (per_frame[frame] if per_frame else None, shared[0] if shared else None):
        if group is not None and sequence in group and len(group[sequence].value):
            return group[sequence][0]
    return None


def _has_value(holder: Any, keyword: str) -> bool:
    return keyword in holder and holder[keyword].value not in (None, "")


def _frame_value_holder(ds: Any, frame: int, sequence: str, keyword: str) -> Any | None:
    """Where ``frame``'s ``keyword`` lives, as the reader takes it: its functional group item (per-frame
    over shared), else the top level; None when neither holds a value."""
    for holder in (_frame_group_item(ds, frame, sequence), ds):
        if holder is not None and _has_value(holder, keyword):
            return holder
    return None


def _all_group_items(ds: Any, sequence: str) -> list[Any]:
    """Every item of functional group ``sequence``, shared and per-frame (to rewrite them all)."""
    items = []
    for groups_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(groups_name) or []:
            if sequence in group:
                items.extend(group[sequence])
    return items


def _enhanced_derived_type(values: list[str]) -> list[str]:
    """An enhanced image's ImageType or FrameType made derived: value 1 DERIVED, value 2 kept (PRIMARY is
    the only value those IODs allow), value 4 RESAMPLED in place of NONE (PS3.3 C.8.16.1.4)."""
    values = ["DERIVED", *list(values)[1:]] if values else ["DERIVED", "PRIMARY"]
    if len(values) >= 4 and values[3] == "NONE":
        values[3] = "RESAMPLED"
    return values


# Enhanced images state per frame what each frame is (ORIGINAL/DERIVED...) in these groups.
_FRAME_TYPE_GROUPS = ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence")


def derived_multiframe(
    source: Any,
    frames: np.ndarray,
    series: DerivedSeries,
    *,
    series_number: int | None,
    padding: np.ndarray | None = None,
) -> Any:
    """The derived instance of an enhanced multi-frame image: the same SOP class, frame for frame.

    Every frame keeps its functional groups (dimension indices, timing, contrast) with its geometry
    rewritten for the new grid (PixelMeasures, PlanePosition), its FrameType made DERIVED, a
    DerivationImageSequence pointing at its source frame, and one 16-bit encoding for all frames
    (PixelValueTransformation).

    Args:
        source: the multi-frame file's pydicom Dataset (header).
        frames: float ``[F, H * scale, W * scale]`` modality values, in the source's frame order.
        padding: bool ``[F, H * scale, W * scale]``, the scanner's padding on the output grid.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ds = source
    count = int(ds.NumberOfFrames)
    if frames.ndim != 3 or frames.shape[0] != count:
        raise ValueError(f"frames must be [{count}, H, W] for {count} source frames; got {frames.shape}")
    source_sop_class = str(ds.SOPClassUID)
    source_sop_instance = str(ds.SOPInstanceUID)
    source_series = str(ds.get("SeriesInstanceUID", ""))
    # Frames may be scaled one by one (vendors do): the finest source slope is the one to keep, if any.
    transforms = [
        holder
        for index in range(count)
        if (holder := _frame_value_holder(ds, index, "PixelValueTransformationSequence", "RescaleSlope"))
    ]
    finest = min(transforms, key=lambda t: float(t.RescaleSlope), default=None)
    source_encoding = Encoding(
        float(finest.RescaleSlope) if finest is not None else 1.0,
        float(finest.get("RescaleIntercept", 0.0) or 0.0) if finest is not None else 0.0,
        signed=int(ds.get("PixelRepresentation", 0)) == 1,
    )
    source_padding = ds.get("PixelPaddingValue")
    source_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    source_image_type = list(ds.get("ImageType", []) or ["ORIGINAL", "PRIMARY"])
    for keyword in _DROPPED:
        if keyword in ds:
            delattr(ds, keyword)
    for groups_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(groups_name) or []:
            if "RealWorldValueMappingSequence" in group:
                del group.RealWorldValueMappingSequence
    _stamp_identity(ds, series, series_number)
    # Enhanced images know only PRIMARY for value 2 of ImageType and FrameType: value 1 says DERIVED,
    # and value 4 (derived pixel contrast) RESAMPLED where the source had none.
    ds.ImageType = _enhanced_derived_type(source_image_type)
    for item in (i for name in _FRAME_TYPE_GROUPS for i in _all_group_items(ds, name)):
        item.FrameType = _enhanced_derived_type(list(item.get("FrameType", []) or []))
        if item.get("PixelPresentation") in ("COLOR", "MIXED"):
            item.PixelPresentation = "MONOCHROME"  # its supplemental palette was dropped
    if ds.get("PixelPresentation") in ("COLOR", "MIXED"):
        ds.PixelPresentation = "MONOCHROME"
    # Geometry, frame by frame, wherever the reader found it (functional groups or the top level);
    # positions first, as they need the source's pixel size.
    rows, columns = frames.shape[1:]
    moved: set[int] = set()  # a position in the shared group or at the top level: moved once
    for index in range(count):
        spacing_at = _frame_value_holder(ds, index, "PixelMeasuresSequence", "PixelSpacing")
        position_at = _frame_value_holder(ds, index, "PlanePositionSequence", "ImagePositionPatient")
        orientation_at = _frame_value_holder(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient")
        if spacing_at is None or position_at is None or orientation_at is None or id(position_at) in moved:
            continue
        position_at.ImagePositionPatient = _derived_origin(
            position_at.ImagePositionPatient,
            orientation_at.ImageOrientationPatient,
            (float(spacing_at.PixelSpacing[0]), float(spacing_at.PixelSpacing[1])),
            (rows, columns),
            scale=series.scale,
            degradation=series.degradation,
        )
        moved.add(id(position_at))
    for measures in [*_all_group_items(ds, "PixelMeasuresSequence"), ds]:
        if _has_value(measures, "PixelSpacing"):
            row_mm, col_mm = (float(v) for v in measures.PixelSpacing)
            measures.PixelSpacing = [_ds(row_mm / series.scale), _ds(col_mm / series.scale)]
    ds.Rows, ds.Columns = rows, columns

    # Each frame derives from its source frame. A file without per-frame groups (flattened: not valid
    # enhanced DICOM, but such files exist) gets the single-frame references at the top level.
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        for index, group in enumerate(per_frame):
            item = Dataset()
            item.DerivationDescription = series.derivation[:1024]
            item.DerivationCodeSequence = DicomSequence([_spatial_resampling()])
            item.SourceImageSequence = DicomSequence(
                [_source_reference(source_sop_class, source_sop_instance, [index + 1])]
            )
            group.DerivationImageSequence = DicomSequence([item])
        del ds.DerivationDescription  # the enhanced IODs carry it in each frame's DerivationImageSequence
    else:
        ds.DerivationCodeSequence = DicomSequence([_spatial_resampling()])
        ds.SourceImageSequence = DicomSequence(
            [_source_reference(source_sop_class, source_sop_instance, list(range(1, count + 1)))]
        )
    if source_series:  # a source without a series UID (invalid, but read) cannot be referenced by it
        ds.ReferencedSeriesSequence = DicomSequence(
            [_referenced_series(source_series, source_sop_class, source_sop_instance)]
        )
    if per_frame and source_series:
        # The instances the frames derive from, listed as the enhanced IODs require (Hierarchical SOP
        # Instance Reference).
        evidence_series = _referenced_series(
            source_series, source_sop_class, source_sop_instance, instances="ReferencedSOPSequence"
        )
        evidence = Dataset()
        evidence.StudyInstanceUID = str(ds.StudyInstanceUID)
        evidence.ReferencedSeriesSequence = DicomSequence([evidence_series])
        ds.SourceImageEvidenceSequence = DicomSequence([evidence])

    encoding, stored = _encoded(
        ds, frames, source_encoding=source_encoding, source_padding=source_padding, padding=padding
    )
    transforms = _all_group_items(ds, "PixelValueTransformationSequence")
    if not transforms and encoding != Encoding(1.0, 0.0, encoding.signed):
        shared = ds.get("SharedFunctionalGroupsSequence")
        if not shared:
            ds.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
            shared = ds.SharedFunctionalGroupsSequence
        item = Dataset()
        item.RescaleType = "US"  # unspecified: MR values have no unit
        shared[0].PixelValueTransformationSequence = DicomSequence([item])
        transforms = [item]
    for item in transforms:
        item.RescaleSlope, item.RescaleIntercept = _ds(encoding.slope), _ds(encoding.intercept)
    if "RescaleSlope" in ds:  # legacy-converted images may keep it at the top level too
        ds.RescaleSlope, ds.RescaleIntercept = _ds(encoding.slope), _ds(encoding.intercept)
    _store_pixels(ds, stored, source_syntax)
    return ds


# What a derived instance copies from its source and cannot make up: the source's identity.
_REQUIRED_FOR_DERIVED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")


def _read_header(file: Path) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(file, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 (pydicom raises many kinds for a bad file)
        raise DataError(f"{file}: cannot re-read the source header ({str(exc)[:160]})") from None


def check_derivable(volume: ImageVolume) -> None:
    """Refuses, before any work, a DICOM source whose slices a derived series cannot reference.

    Raises:
        DataError: not a DICOM series, or a source file lacks one of ``_REQUIRED_FOR_DERIVED``.
    """
    files = _source_files(volume)
    if volume.format != "dicom" or not files:
        raise DataError(
            f"{volume.source}: a derived DICOM series needs a DICOM input (its patient, study and geometry)"
        )
    for file in files:
        header = _read_header(file)
        missing = [k for k in _REQUIRED_FOR_DERIVED if not str(header.get(k, "") or "").strip()]
        if missing:
            raise DataError(
                f"{file}: lacks {', '.join(missing)}, which a derived series must reference; write the "
                "result as .nii.gz, .tif or .npy instead"
            )


def _source_files(volume: ImageVolume) -> list[Path]:
    """The files a derived series is made from: one per slice, or the one enhanced multi-frame file."""
    if volume.meta.get("multiframe"):
        return [Path(volume.meta["multiframe"])]
    return [Path(f) for f in volume.meta.get("files", [])]


def _little_endian(ds: Any) -> Any:
    """A big-endian source header as a little-endian one (pydicom writes no big-endian -> little-endian
    conversion itself): the same elements, values decoded, in a new dataset."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset

    if getattr(ds, "original_encoding", (None, True))[1] in (None, True):
        return ds
    copy = FileDataset(
        str(getattr(ds, "filename", "") or ""),
        Dataset(),
        file_meta=FileMetaDataset(ds.file_meta),
        preamble=getattr(ds, "preamble", None) or b"\0" * 128,
    )
    for element in ds:
        copy.add(element)
    return copy


def write_derived_series(
    volume: ImageVolume,
    result: np.ndarray,
    folder: str | os.PathLike[str],
    *,
    scale: int,
    degradation: str,
    provenance: Provenance,
    padding: np.ndarray | None = None,
    series_number: int | None = None,
    warnings: Sequence[str] = (),
) -> list[Path]:
    """Writes ``result`` (``[S, H * scale, W * scale]`` modality values) as a derived series of the DICOM
    series ``volume`` was read from, into ``folder`` (new or empty): one file per slice, or, for an
    enhanced multi-frame source, one multi-frame file of the same SOP class (:func:`derived_multiframe`).

    Args:
        volume: the source as :func:`edgesr.load_image` read it (its ``meta["files"]`` in slice order).
        padding: bool ``[S, H * scale, W * scale]``, the scanner's padding on the output grid.
        series_number: default: the source's SeriesNumber + 1000.
        warnings: the result's warnings (:attr:`EnhancerResult.warnings`), written to every slice's
            ImageComments so that whoever reads the images sees them, not only the log.

    Returns:
        The files written, in slice order.

    Raises:
        DataError: the volume is not a DICOM series, shapes disagree, or the folder cannot be written.
    """
    check_derivable(volume)
    slices = len(volume.meta.get("files", []))
    if result.ndim != 3 or result.shape[0] != slices:
        raise ValueError(f"result must be [{slices}, H, W] for {slices} source slices; got {result.shape}")
    if padding is not None and padding.shape != result.shape:
        raise ValueError(f"padding must have the result's shape {result.shape}; got {padding.shape}")
    if not np.isfinite(result).all():
        raise DataError(f"{folder}: refusing to write NaN/Inf values")
    folder = check_output_folder(folder, inputs=[volume.source])
    sr_what = f"Super-resolution x{scale}" if scale > 1 else "Enhancement"
    from pydicom.uid import generate_uid

    series = DerivedSeries(
        series_uid=generate_uid(),
        scale=scale,
        degradation=degradation,
        provenance=provenance,
        derivation=f"{sr_what} by edgesr {__version__}, model {provenance.describe()}.",
        now=datetime.datetime.now(datetime.timezone.utc).astimezone(),
        comments=" ".join(f"edgesr warning: {w}" for w in warnings),
    )

    def number(source: Any) -> int | None:
        if series_number is None and str(source.get("SeriesNumber", "") or "").strip():
            return int(source.SeriesNumber) + DERIVED_SERIES_OFFSET
        return series_number

    def instances() -> Iterator[Any]:
        """The derived instances, in the order they are written."""
        if volume.meta.get("multiframe"):
            # The volume's slices are sorted by position; the file keeps the source's frame order.
            order = np.argsort(np.asarray(volume.meta["frame_numbers"]))
            source = _little_endian(_read_header(_source_files(volume)[0]))
            yield derived_multiframe(
                source,
                result[order],
                series,
                series_number=number(source),
                padding=padding[order] if padding is not None else None,
            )
            return
        for index, file in enumerate(_source_files(volume)):
            source = _little_endian(_read_header(file))
            yield derived_slice(
                source,
                result[index],
                series,
                series_number=number(source),
                padding=padding[index] if padding is not None else None,
            )

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    written: list[Path] = []
    try:
        for index, ds in enumerate(instances()):
            name = f"{index + 1:05d}.dcm"
            with open(staging / name, "wb") as f:
                ds.save_as(f, enforce_file_format=True)
                f.flush()
                os.fsync(f.fileno())
            written.append(folder / name)
        os.chmod(staging, 0o777 & ~_umask())
        if folder.is_dir():
            folder.rmdir()  # empty (checked): rename() needs the name free on every platform
        os.replace(staging, folder)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


__all__ = [
    "DerivedSeries",
    "Encoding",
    "check_output_folder",
    "choose_encoding",
    "derived_multiframe",
    "derived_slice",
    "write_derived_series",
]
