"""A site's own scans as sources of the data set: ``edgesr data prepare local=site.yaml``.

The shipped sources are what packages carry; a site fine-tunes a teacher on its own scanner's images,
calibrates INT8 on them and checks what compression costs on them. A YAML file lists its scans::

    # site.yaml
    builtin: true                 # keep the shipped sources beside these (false: only the site's)
    sources:
      - name: knee-pd             # the volume's name; a pattern's matches: knee-pd-case01, -case02...
        path: /data/knee/*/       # a DICOM series folder, a NIfTI, PNG, TIFF or NPY file; a glob pattern
        modality: MR              # MR or CT
        split: auto               # auto (cut into train/val/test blocks), train, val, test or external
      - name: knee-pd-site-b
        path: /data/site_b/case07.nii.gz
        modality: MR
        split: external           # scored apart, never trained on

Each scan is read by the same readers as ``edgesr enhance`` (:func:`edgesr.data.images.load_image`), so
a model trains on the pixels it will later be given: slices in the file's own plane (a DICOM series
in its acquisition plane; NIfTI along the third voxel axis), MR in its stored units, CT in HU + 1024
clipped at 0 (the modality LUT applied, scanner padding as air), as every shipped CT source.

``split: auto`` cuts a long volume into anatomical blocks (:mod:`edgesr.data.splits`); a short series
(fewer than about 70 slices) ends up in train alone, so for a site with many subjects the better
split is by subject: a pattern of training scans with ``split: train``, a few whole scans with
``split: val`` and ``split: test``, and scans from another scanner with ``split: external``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgesr.config import check_choice, load_yaml, opt
from edgesr.errors import ConfigError, DataError

LOCAL_SPLITS = ("auto", "train", "val", "test", "external")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# MR magnitudes are non-negative; resampled or bias-corrected NIfTI files carry small negative
# overshoots (interpolation ringing) that are clipped to 0. Anything deeper is not a magnitude image
# (a phase map, a difference image) and is refused.
MR_NEGATIVE_TOLERANCE = 0.01


@dataclass(frozen=True)
class LocalSource:
    name: str = opt("", "the volume's name in the data set (a pattern's matches: NAME-<what varies>)")
    path: str = opt("", "a DICOM series folder or a DICOM, NIfTI, PNG, TIFF or NPY file; a glob pattern")
    modality: str = opt("MR", "MR or CT")
    split: str = opt("auto", "auto (anatomical blocks of train/val/test), train, val, test or external")
    units: str = opt("auto", "CT: auto, hu (CT numbers) or raw (already HU + 1024 clipped at 0)")
    volume: int = opt(0, "which volume of a 4-D file (time point, diffusion direction)")
    series_uid: str = opt("", "which series, where a DICOM folder holds several")
    description: str = opt("", "what the scans are (shown by `edgesr data info` and in cards)")
    license: str = opt("site data (not redistributed)", "under which terms the scans may be used")

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"sources.name={self.name!r} must be 1-64 lower-case letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (it names a file)"
            )
        if not self.path:
            raise ConfigError(f"sources.path is empty for source {self.name!r}")
        check_choice("sources.modality", self.modality, ("MR", "CT"))
        check_choice("sources.split", self.split, LOCAL_SPLITS)
        check_choice("sources.units", self.units, ("auto", "hu", "raw"))
        if self.units != "auto" and self.modality != "CT":
            raise ConfigError(f"sources.units={self.units!r} is for CT sources; {self.name!r} is MR")
        if self.volume < 0:
            raise ConfigError(f"sources.volume must be 0 or more; got {self.volume}")


@dataclass(frozen=True)
class LocalSources:
    builtin: bool = opt(True, "keep the shipped sources beside the site's (false: only the site's)")
    sources: list[LocalSource] = opt([], "the site's scans")

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("sources: the file lists no scans (give at least one name, path and modality)")
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"sources: the name {', '.join(map(repr, repeated))} is given twice")


@dataclass(frozen=True)
class LocalScan:
    """One scan of a :class:`LocalSource` (a pattern gives several), resolved to its file or folder."""

    name: str
    path: Path
    source: LocalSource

    @property
    def role(self) -> str:
        """``external`` (never trained on) or ``train`` (in-domain: its slices in train, val or test)."""
        return "external" if self.source.split == "external" else "train"

    # Where the scan came from, as cards and fingerprints record it: not its path, which may name a
    # patient (the path stays in the data set's own manifest, on the site's machine).
    package = "local: a site's scan"


def load_local_sources(path: str | Path) -> LocalSources:
    """The YAML file of a site's scans (unknown keys and bad values are errors naming the file)."""
    return load_yaml(LocalSources, path)


def resolve_scans(
    config: LocalSources, *, relative_to: Path, reserved: tuple[str, ...] = ()
) -> list[LocalScan]:
    """Every scan the sources name, their paths made absolute (relative ones from ``relative_to``, the
    YAML file's folder). A source with nothing at its path is an error, as is a name of the shipped
    set (``reserved``): a site's scan must never pass for a shipped one in a card.

    A path that exists is taken as it is (a folder may be called ``T1 [MPRAGE]``); otherwise it is a
    glob pattern, whose matches are named after what varies in them (``knee`` with ``train/*/`` gives
    ``knee-case01``, ``knee-case02``...), so that a scan added later does not rename the others."""
    scans: list[LocalScan] = []
    for index, source in enumerate(config.sources):
        if source.name in reserved:
            raise ConfigError(
                f"sources.{index}.name={source.name!r} is the name of a shipped source; choose another"
            )
        pattern = os.path.expanduser(source.path)
        if not os.path.isabs(pattern):
            pattern = str(relative_to / pattern)
        literal = Path(os.path.abspath(pattern))
        if literal.exists():
            scans.append(LocalScan(source.name, literal, source))
            continue
        if not glob.has_magic(pattern):
            raise DataError(f"source {source.name!r}: {literal}: no such file or folder")
        matches = sorted(
            Path(os.path.abspath(p)) for p in glob.glob(pattern) if not Path(p).name.startswith(".")
        )
        if not matches:
            raise DataError(f"source {source.name!r}: nothing matches {pattern}")
        base = _fixed_prefix(pattern)
        scans += [
            LocalScan(f"{source.name}-{_label(match, base, i)}", match, source)
            for i, match in enumerate(matches, 1)
        ]
    names = [scan.name for scan in scans]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(reserved)))
    if clash:
        raise ConfigError(
            f"sources: the volume name {', '.join(map(repr, clash))} is taken twice (a pattern's "
            "matches are named NAME-<what varies in their paths>); rename a source"
        )
    return scans


_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".png", ".tif", ".tiff", ".npy")


def _fixed_prefix(pattern: str) -> Path:
    """The folder a glob pattern starts from: its components before the first one with ``*?[``."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    return Path(*parts[:fixed]) if fixed else Path("/")


def _label(match: Path, base: Path, index: int) -> str:
    """A match's part of a volume name: its path below ``base``, image suffix dropped, in the
    characters a name may hold (``subject01/t1.nii.gz`` -> ``subject01-t1``); its number if nothing
    is left."""
    try:
        relative = match.relative_to(base).as_posix()
    except ValueError:
        relative = match.name
    lowered = relative.lower()
    for suffix in _SUFFIXES:
        if lowered.endswith(suffix):
            lowered = lowered[: -len(suffix)]
            break
    label = re.sub(r"[^a-z0-9._-]+", "-", lowered).strip("-.")
    return label or f"{index:03d}"


def input_checksum(path: Path) -> str:
    """The sha256 of a scan's input: of the file, or, for a DICOM folder, of the name and sha256 of
    each file the reader looks at (the folder's own non-hidden files; sub-folders are not read)."""
    from edgesr._io import sha256_file

    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def load_scan(scan: LocalScan) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """A scan as the data set stores it: float32 ``[S, H, W]`` (MR as stored, CT in HU + 1024 clipped
    at 0), its (slice, row, column) spacing in mm, and what was read (for ``data info``).

    Raises:
        DataError: naming the file: unreadable, another modality than the YAML says, not a magnitude.
    """
    from edgesr.data.images import load_image
    from edgesr.pipeline import intensity_map
    from edgesr.spec import ct_intensity

    source = scan.source
    image = load_image(scan.path, series_uid=source.series_uid or None)
    if source.volume >= image.volumes:
        raise DataError(
            f"{scan.path}: source {source.name!r} asks for volume {source.volume}; the file holds "
            f"{image.volumes}"
        )
    image = image.volume(source.volume)
    stored_as = str(image.meta.get("modality", "")) if image.format == "dicom" else ""
    if stored_as not in ("", source.modality):
        raise DataError(
            f"{scan.path}: a DICOM series of modality {stored_as}, listed as {source.modality} "
            f"(source {source.name!r})"
        )
    if source.modality == "CT":
        # The same mapping as inference (edgesr.pipeline): HU + 1024 clipped at 0, padding as air.
        mapping = intensity_map(ct_intensity(), image, units=source.units, reference=1.0)
        if mapping.units == "raw" and float(image.data.min()) < 0:
            # HU + 1024 clipped at 0 has nothing below 0: these are CT numbers (air -1000) or another
            # unit, and stored as they are they would train a model on a shifted scale.
            raise DataError(
                f"{scan.path}: values down to {float(image.data.min()):g} with units: raw (which means "
                f"HU + 1024, never negative); source {source.name!r}: use units: hu for CT numbers"
            )
        data = mapping.forward(image.data)
    else:
        data = image.data
        if image.padding is not None:
            data = np.where(image.padding, 0.0, data).astype(np.float32)
        low, peak = float(data.min()), float(data.max())
        if peak <= 0:
            raise DataError(f"{scan.path}: no positive intensities (source {source.name!r})")
        if low < -MR_NEGATIVE_TOLERANCE * peak:
            raise DataError(
                f"{scan.path}: values down to {low:g} against a maximum of {peak:g}: not an MR magnitude "
                f"image (a phase or difference map?); source {source.name!r} needs magnitudes"
            )
        data = np.maximum(data, 0.0).astype(np.float32)  # the interpolation overshoot, see above
    if float(data.max()) <= 0:
        raise DataError(f"{scan.path}: nothing above air (source {source.name!r})")
    slices, rows, cols = image.data.shape
    read = f"{image.format}, {slices}x{rows}x{cols}"
    return np.ascontiguousarray(data, dtype=np.float32), image.spacing, read
