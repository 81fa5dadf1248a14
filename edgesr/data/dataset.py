"""Read access to a prepared data set (see :mod:`edgesr.data.prepare`)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rich.console import Console

from edgesr.data.prepare import PrepareConfig, dataset_dir, dataset_fingerprint, prepare_dataset
from edgesr.data.splits import ALL_SPLITS, EXTERNAL
from edgesr.errors import DataError, SourceUnavailableError


class SliceSample(NamedTuple):
    """One axial slice of a prepared volume.

    ``image`` is float32 ``[H, W]`` in the volume's intensity unit; ``volume_max`` is the maximum of the
    whole reference volume, the normaliser of the evaluation protocol.
    """

    image: np.ndarray
    volume: str
    slice_index: int
    modality: str
    volume_max: float


class PreparedDataset:
    """The cached default data set; ``PreparedDataset()`` opens the default location."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.path = dataset_dir(root)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise SourceUnavailableError(
                f"no prepared data set at {self.path}; run `edgesr data prepare` first"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
            _check_manifest(self.manifest)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(
                f"{manifest_path}: corrupt manifest ({exc}); run `edgesr data prepare force=true`"
            ) from None
        self._cache: dict[str, np.ndarray] = {}

    def restricted(self, names: list[str] | tuple[str, ...]) -> PreparedDataset:
        """The same data set with only the volumes ``names`` (its fingerprint is of what is left).

        Raises:
            DataError: a name is not a volume of this data set.
        """
        known = [v["name"] for v in self.manifest["volumes"]]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DataError(
                f"no volume {', '.join(map(repr, unknown))} in the data set at {self.path}; "
                f"it has {', '.join(known)}"
            )
        view = copy.copy(self)
        view.manifest = {
            **self.manifest,
            "volumes": [v for v in self.manifest["volumes"] if v["name"] in names],
        }
        return view

    @property
    def local_sources_file(self) -> str:
        """The YAML file that added a site's scans (``edgesr data prepare local=``); "" for none."""
        local = self.manifest.get("local_sources")
        return str(local.get("file", "")) if isinstance(local, dict) else ""

    def no_slices(self, split: str, modality: str) -> str:
        """The message for a ``split`` without ``modality`` slices, with what to do about it."""
        hints = []
        others = sorted({v["modality"] for v in self.volumes(split=split)} - {modality})
        if others:
            hints.append(f"it has {' and '.join(others)} slices there: is the modality right?")
        if self.local_sources_file:
            hints.append(
                f"give whole scans `split: {split}` in the site's YAML file ({self.local_sources_file})"
            )
        elif split == "external":
            hints.append("no external source is installed: run `bash .ci/setup`")
        return f"the {split} split of the data set at {self.path} has no {modality} slices" + (
            f" ({'; '.join(hints)})" if hints else ""
        )

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The data set's identity and sources (:func:`edgesr.data.prepare.dataset_fingerprint`)."""
        return dataset_fingerprint(self.manifest)

    def volumes(self, modality: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
        """The manifest entries of ``modality`` (all when None), only those with slices in ``split``
        when given (e.g. no external source has a test slice)."""
        return [
            v
            for v in self.manifest["volumes"]
            if (modality is None or v["modality"] == modality) and (split is None or v["splits"].get(split))
        ]

    def load_volume(self, name: str) -> np.ndarray:
        """The whole volume ``[S, H, W]`` (memory-mapped, read-only)."""
        if name not in self._cache:
            entry = next((v for v in self.manifest["volumes"] if v["name"] == name), None)
            if entry is None:
                raise DataError(f"volume {name!r} is not in the data set at {self.path}")
            file = self.path / entry["file"]
            try:
                volume = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"{file}: unreadable volume ({exc}); run `edgesr data prepare force=true`"
                ) from None
            if volume.ndim != 3 or volume.dtype != np.float32:
                raise DataError(f"{file}: expected float32 [S, H, W], got {volume.dtype} {volume.shape}")
            self._cache[name] = volume
        return self._cache[name]

    def slices(self, split: str, modality: str | None = None) -> Iterator[SliceSample]:
        """Every slice of ``split`` (``train``/``val``/``test``, or ``external``: the sources held out
        whole), volume by volume, in slice order."""
        if split not in ALL_SPLITS:
            raise ValueError(f"split must be one of {ALL_SPLITS}; got {split!r}")
        for entry in self.volumes(modality):
            volume = self.load_volume(entry["name"])
            for index in entry["splits"].get(split, []):
                if index >= volume.shape[0]:
                    raise DataError(
                        f"{self.path / 'manifest.json'}: {entry['name']} has {volume.shape[0]} slices; "
                        f"the {split} split names slice {index}"
                    )
                yield SliceSample(
                    np.array(volume[index], dtype=np.float32),
                    entry["name"],
                    index,
                    entry["modality"],
                    entry["max_intensity"],
                )


_TOP_LEVEL = {"version": int, "created_by": str, "split_policy": dict, "volumes": list, "unavailable": list}
_VOLUME_TEXT = ("name", "modality", "description", "package", "license", "input_path", "input_sha256", "file")


def dataset_name(fingerprint_id: str) -> str:
    """What reports call a prepared data set: its fingerprint names exactly which files and splits."""
    return f"edgesr-data-{fingerprint_id}"


def _check_manifest(manifest: Any) -> None:
    """The structure every reader of a manifest relies on; raises ``ValueError`` saying what is wrong."""
    if not isinstance(manifest, dict):
        raise ValueError(f"a {type(manifest).__name__}, not an object")
    for key, kind in _TOP_LEVEL.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise ValueError(f"'{key}' is missing or not a {kind.__name__}")
    for index, entry in enumerate(manifest["volumes"]):
        where = f"volumes[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object")
        for key in _VOLUME_TEXT:
            if not isinstance(entry.get(key), str):
                raise ValueError(f"{where}.{key} is missing or not text")
        if entry["modality"] not in ("MR", "CT"):
            raise ValueError(f"{where}.modality must be MR or CT")
        if entry.get("role", "train") not in ("train", "external"):
            raise ValueError(f"{where}.role must be train or external")
        for key in ("shape", "spacing_mm"):
            values = entry.get(key)
            if not isinstance(values, list) or len(values) != 3 or not all(_is_number(v) for v in values):
                raise ValueError(f"{where}.{key} must be three numbers")
        if not _is_number(entry.get("max_intensity")) or not entry["max_intensity"] > 0:
            raise ValueError(f"{where}.max_intensity must be a positive number")
        if not isinstance(entry.get("splits"), dict):
            raise ValueError(f"{where}.splits is missing")
        for split in ALL_SPLITS:
            # "external" came with data set version 2; a volume without it has no external slices.
            indices = entry["splits"].get(split, [] if split == EXTERNAL else None)
            valid = isinstance(indices, list) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices
            )
            if not valid:
                raise ValueError(f"{where}.splits.{split} must be a list of slice indices")
    for index, entry in enumerate(manifest["unavailable"]):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("name", "package", "reason")
        ):
            raise ValueError(f"unavailable[{index}] needs name, package and reason")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def open_or_prepare(root: str = "", console: Console | None = None) -> PreparedDataset:
    """The prepared data set at ``root`` (default location when empty); built first when it is missing
    (as ``edgesr data prepare`` does, about a second), so that commands run on a fresh machine."""
    try:
        return PreparedDataset(root or None)
    except SourceUnavailableError:
        console = console or Console(stderr=True)
        console.print("no prepared data set yet: preparing it first (as `edgesr data prepare` does)")
        prepare_dataset(PrepareConfig(root=root), console=console)
        return PreparedDataset(root or None)
