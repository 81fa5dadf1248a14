"""``edgesr data prepare``: builds the cached default data set from the real sources, once.

Layout of a prepared data set (``<root>/v<VERSION>/``)::

    manifest.json          # sources (package, version, license, sha256 of the input file), shapes, splits
    volumes/<name>-<sha>.npy  # float32 [S, H, W] axial slices in the source's intensity unit

The manifest is written last and atomically, so an interrupted run leaves no manifest and the next run
starts over; a run whose inputs (version, split policy, input checksums, and the code that reads and
splits them) match the manifest does nothing. Which sources a data set holds depends on the packages
installed, so every data set has a fingerprint (:func:`dataset_fingerprint`) that cards and reports
record, and a prepare that changes the set says what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from edgesr import __version__
from edgesr._io import save_npy_atomic, write_json_atomic
from edgesr.config import opt, parse_overrides
from edgesr.data.local import (
    LocalScan,
    LocalSources,
    input_checksum,
    load_local_sources,
    load_scan,
    resolve_scans,
)
from edgesr.data.sources import SOURCES, Source
from edgesr.data.splits import ALL_SPLITS, SPLITS, SplitPolicy, external_slices, split_slices
from edgesr.errors import ConfigError, DataError, SourceUnavailableError

# 2: sources have roles; held-out sources form the external split.
DATASET_VERSION = 2
# A slice is usable when at least this fraction of its pixels is above 5% of the volume maximum: it
# drops the empty slices above and below the head.
MIN_FOREGROUND_FRACTION = 0.15


def default_data_root() -> Path:
    """``$EDGESR_DATA``, else ``$EDGESR_HOME/data``, else ``~/.cache/edgesr/data``."""
    if os.environ.get("EDGESR_DATA"):
        return Path(os.environ["EDGESR_DATA"])
    home = Path(os.environ.get("EDGESR_HOME", Path.home() / ".cache" / "edgesr"))
    return home / "data"


def dataset_dir(root: str | Path | None = None) -> Path:
    return Path(root or default_data_root()) / f"v{DATASET_VERSION}"


@dataclass(frozen=True)
class PrepareConfig:
    root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    force: bool = opt(False, "rebuild even when the cached data set is up to date")
    local: str = opt(
        "",
        "a YAML file of a site's own scans to add (see `edgesr/data/local.py`); empty: keep the ones "
        "the data set at root already has; none: drop them",
    )


def _rules_sha256() -> str:
    """The sha256 of the code that turns the inputs into the data set (this module, the sources'
    loaders, the split rules). Part of what decides that a cached data set is up to date: a cache
    prepared by other code is rebuilt (about 2 s), not trusted because its inputs are the same files.
    """
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("prepare.py", "sources.py", "splits.py", "local.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def usable_slices(volume: np.ndarray) -> list[int]:
    """Indices of slices with enough foreground (see ``MIN_FOREGROUND_FRACTION``)."""
    threshold = 0.05 * float(volume.max())
    fraction = (volume > threshold).reshape(volume.shape[0], -1).mean(axis=1)
    return [int(i) for i in np.flatnonzero(fraction >= MIN_FOREGROUND_FRACTION)]


def package_version(package: str) -> str:
    """The installed version of a source's carrier (``pypi:NAME ...`` or ``debian:NAME``), or ``unknown``."""
    kind, _, rest = package.partition(":")
    if kind == "local":
        return "site file"
    name = rest.split()[0] if rest else ""
    try:
        if kind == "pypi":
            return importlib.metadata.version(name)
        if kind == "debian" and shutil.which("dpkg-query"):
            found = subprocess.run(
                ["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True, timeout=10
            )
            return found.stdout.strip() or "unknown"
    except (importlib.metadata.PackageNotFoundError, OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def dataset_fingerprint(manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies a prepared data set: an ``id`` hashed from the version, the split policy and each
    volume's input checksum, pixel data checksum (as loaded), role and slices; and per source what a
    reader needs to see what differs.

    Two data sets with the same ``id`` give the same figures; cards and reports record it.
    """
    volumes = sorted(manifest["volumes"], key=lambda v: v["name"])
    keys = ("name", "role", "input_sha256", "data_sha256", "splits")
    identity = {
        "version": manifest["version"],
        "split_policy": manifest["split_policy"],
        # Manifests written before data_sha256 was recorded keep their ids.
        "volumes": [{k: v.get(k) for k in keys if k in v} for v in volumes],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "id": digest,
        "version": manifest["version"],
        # False for a data set of a site's scans alone (builtin: false): not part of the id.
        "shipped_sources": bool((manifest.get("local_sources") or {}).get("builtin", True)),
        "sources": [
            {
                "name": v["name"],
                "role": v.get("role", "train"),
                "package": v["package"],
                "package_version": v.get("package_version", "unknown"),
                "input_sha256": v["input_sha256"],
                "data_sha256": v.get("data_sha256", "unknown"),
                "slices": {split: len(v["splits"].get(split, [])) for split in ALL_SPLITS},
            }
            for v in volumes
        ],
    }


def training_data(manifest: dict[str, Any], modality: str) -> dict[str, Any]:
    """What a model of ``modality`` trained on this data set was made from: the train and val splits.

    Training draws its batches from the train split and selects on the val split (a compression stage
    calibrates on train too); the test and external splits never reach it. The ``id`` hashes those
    slices, so a data set that only gained test or external sources (or sources of the other modality)
    keeps it: a finished run is re-scored on it without being redone. Training runs record this in
    their checkpoints, and cards carry it as ``trained_on``.
    """
    trained = [v for v in manifest["volumes"] if v["splits"].get("train") or v["splits"].get("val")]
    volumes = sorted((v for v in trained if v["modality"] == modality), key=lambda v: v["name"])
    identity = {
        "version": manifest["version"],
        "split_policy": manifest["split_policy"],
        "volumes": [
            {"name": v["name"], "input_sha256": v["input_sha256"], "data_sha256": v.get("data_sha256"),
             "train": v["splits"].get("train", []), "val": v["splits"].get("val", [])}
            for v in volumes
        ],
    }  # fmt: skip
    return {
        "id": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16],
        "modality": modality,
        "sources": [
            {"name": v["name"], "package": v["package"], "input_sha256": v["input_sha256"],
             "slices": {"train": len(v["splits"].get("train", [])), "val": len(v["splits"].get("val", []))}}
            for v in volumes
        ],
    }  # fmt: skip


def fingerprint_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, source by source (empty when the ids match)."""
    if recorded.get("id") is not None and recorded.get("id") == current.get("id"):
        return []
    old = {s["name"]: s for s in recorded.get("sources", [])}
    new = {s["name"]: s for s in current.get("sources", [])}

    def why_missing(source: dict[str, Any]) -> str:
        if source["package"].startswith("local:"):
            return "a site's scan, dropped"
        if current.get("shipped_sources") is False:
            return "this data set holds a site's scans alone (builtin: false)"
        return f"{source['package']} not installed?"

    changes = [f"{name} missing ({why_missing(old[name])})" for name in sorted(old.keys() - new.keys())]
    changes += [f"{name} added" for name in sorted(new.keys() - old.keys())]
    for name in sorted(old.keys() & new.keys()):
        before, after = old[name], new[name]
        # Fingerprints recorded before pixel checksums existed say "unknown": not a difference.
        pixels = {before.get("data_sha256", "unknown"), after.get("data_sha256", "unknown")}
        if before.get("input_sha256") != after.get("input_sha256"):
            changes.append(
                f"{name}: another input file (sha256 {str(before.get('input_sha256'))[:12]} -> "
                f"{str(after.get('input_sha256'))[:12]})"
            )
        elif len(pixels) > 1 and "unknown" not in pixels:
            changes.append(f"{name}: the same file read into other pixels (another loader)")
        elif "slices" in before and (before.get("role"), before["slices"]) != (
            after.get("role"),
            after.get("slices"),
        ):
            changes.append(f"{name}: other splits")
    if not changes and recorded.get("id") is not None:
        changes.append(
            f"version or split policy (data set {recorded.get('version')} -> {current.get('version')})"
        )
    return changes


@dataclass(frozen=True)
class _Input:
    """One volume to prepare: a shipped source or a site's scan, read by ``load``."""

    name: str
    modality: str
    role: str  # train (in-domain) or external
    description: str
    package: str
    license: str
    path: Path
    load: Callable[[], tuple[np.ndarray, tuple[float, float, float], str]]
    template: bool = False
    whole_split: str = ""  # a site's scan given to one split whole (train, val or test); "": by role
    local: bool = False  # a site's scan, not a shipped source


def _shipped_input(source: Source, path: Path) -> _Input:
    def load() -> tuple[np.ndarray, tuple[float, float, float], str]:
        loaded = source.load(path)
        return loaded.data, loaded.spacing, ""

    return _Input(
        source.name, source.modality, source.role, source.description, source.package, source.license,
        path, load, template=source.template,
    )  # fmt: skip


def _local_input(scan: LocalScan) -> _Input:
    source = scan.source
    return _Input(
        scan.name, source.modality, scan.role, source.description, scan.package, source.license, scan.path,
        lambda: load_scan(scan), whole_split=source.split if source.split in SPLITS else "", local=True,
    )  # fmt: skip


def _local_sources(cfg: PrepareConfig, existing: dict[str, Any] | None) -> dict[str, Any] | None:
    """The site's sources this data set holds, as recorded in its manifest: from ``cfg.local`` (a YAML
    file), else those the data set at ``root`` already has (a later ``edgesr data prepare`` keeps them),
    else None. Relative paths are made absolute from the YAML file's folder."""
    if cfg.local.lower() == "none":
        return None
    if cfg.local:
        # Not resolved: relative paths in a linked YAML file are from the link's folder, as a user reads it.
        file = Path(os.path.abspath(Path(cfg.local).expanduser()))
        if file.is_dir():
            raise ConfigError(
                f"local={cfg.local} is a folder; name the YAML file that lists the site's scans"
            )
        config = load_local_sources(file)
        sources = [dataclasses.asdict(source) for source in config.sources]
        for source in sources:
            path = os.path.expanduser(source["path"])
            source["path"] = path if os.path.isabs(path) else str(file.parent / path)
        return {"file": str(file), "builtin": config.builtin, "sources": sources}
    recorded = existing.get("local_sources") if existing else None
    return recorded if isinstance(recorded, dict) else None


def _local_config(record: dict[str, Any]) -> LocalSources:
    try:
        return parse_overrides(
            LocalSources, base={"builtin": record.get("builtin", True), "sources": record.get("sources", [])}
        )
    except ConfigError as exc:
        raise ConfigError(
            f"the site's sources recorded with the data set ({record.get('file')}) are no longer valid: "
            f"{exc}; pass local=FILE again, or local=none"
        ) from None


def _splits(entry: _Input, usable: list[int], policy: SplitPolicy) -> dict[str, list[int]]:
    if entry.role == "external":
        return external_slices(usable)
    if entry.whole_split:
        return {name: [] for name in ALL_SPLITS} | {entry.whole_split: usable}
    return split_slices(usable, policy)


def prepare_dataset(cfg: PrepareConfig, console: Console | None = None) -> dict[str, Any]:
    """Builds (or confirms) the data set and returns its manifest."""
    console = console or Console(stderr=True)
    out = dataset_dir(cfg.root or None)
    manifest_path = out / "manifest.json"
    existing: dict[str, Any] | None = None
    if manifest_path.is_file():
        try:
            existing = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            existing = None  # rebuilt below
        if not isinstance(existing, dict):
            existing = None
    policy = SplitPolicy()
    local = _local_sources(cfg, existing)
    local_config = _local_config(local) if local is not None else None
    inputs: list[_Input] = []
    unavailable: list[dict[str, str]] = []
    if local_config is None or local_config.builtin:
        for source in SOURCES:
            path = source.locate()
            if path is None:
                unavailable.append(
                    {"name": source.name, "package": source.package, "reason": "not installed"}
                )
            else:
                inputs.append(_shipped_input(source, path))
    if local is not None and local_config is not None:
        try:
            scans = resolve_scans(
                local_config, relative_to=Path("/"), reserved=tuple(s.name for s in SOURCES)
            )
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {local['file']})") from None
        inputs += [_local_input(scan) for scan in scans]
        if not cfg.local:
            console.print(
                f"keeping the site's {len(scans)} scans as listed in {escape(str(local['file']))} "
                "when they were added (edits to it take effect with local=FILE; local=none drops them)"
            )
    if not inputs:
        raise SourceUnavailableError(
            "no real data source is installed; run `bash .ci/setup` (Debian packages mricron-data and "
            "invesalius-examples, PyPI nilearn)"
        )
    checksums = {entry.name: _checksum(entry) for entry in inputs}
    _refuse_repeated_scans(checksums, {entry.name for entry in inputs if entry.local})
    # Round-tripped through JSON so that it compares equal to the one read back from the manifest.
    fingerprint = json.loads(
        json.dumps(
            {
                "version": DATASET_VERSION,
                "split_policy": dataclasses.asdict(policy),
                "inputs": checksums,
                "rules_sha256": _rules_sha256(),
            }
            # A site's sources: their splits, units and volumes decide the set as much as the files.
            | ({"local": {k: local[k] for k in ("builtin", "sources")}} if local is not None else {})
        )
    )
    if existing is not None and not cfg.force:
        volumes_present = all((out / v["file"]).is_file() for v in existing.get("volumes", []))
        if existing.get("fingerprint") == fingerprint and volumes_present:
            _remove_unlisted_volumes(out, existing)
            console.print(
                f"[green]data set up to date[/] at {escape(str(out))} (fingerprint {existing.get('id', '?')})"
            )
            return existing

    started = time.perf_counter()
    volumes: list[dict[str, Any]] = []
    warnings: list[str] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("preparing data", total=len(inputs))
        for entry in inputs:
            progress.update(task, description=f"loading {entry.name}")
            data, spacing, read = entry.load()
            data_sha256 = _array_sha256(data)
            # Named by content: a volume that changed never overwrites the file that the data set's
            # current manifest names, so a run that fails half way leaves that data set whole.
            file_name = f"volumes/{entry.name}-{data_sha256[:12]}.npy"
            save_npy_atomic(out / file_name, data.astype(np.float32))
            usable = usable_slices(data)
            splits = _splits(entry, usable, policy)
            if entry.local:
                warnings += _local_warnings(entry, data, usable, splits)
            volumes.append(
                {
                    "name": entry.name,
                    "modality": entry.modality,
                    "role": entry.role,
                    "template": entry.template,
                    "description": entry.description or f"site scan ({read})",
                    "package": entry.package,
                    "package_version": package_version(entry.package),
                    "license": entry.license,
                    "input_path": str(entry.path),
                    "input_sha256": checksums[entry.name],
                    "data_sha256": data_sha256,
                    "file": file_name,
                    "shape": list(data.shape),
                    "spacing_mm": list(spacing),
                    "max_intensity": float(data.max()),
                    "splits": splits,
                }
            )
            progress.advance(task)
    manifest = {
        "format": "edgesr-dataset",
        "version": DATASET_VERSION,
        "created_by": f"edgesr {__version__}",
        "fingerprint": fingerprint,
        "split_policy": fingerprint["split_policy"],
        "volumes": volumes,
        "unavailable": unavailable,
        "prepare_seconds": round(time.perf_counter() - started, 2),
    }
    if local is not None:
        manifest["local_sources"] = local
    manifest["id"] = dataset_fingerprint(manifest)["id"]
    write_json_atomic(manifest_path, manifest)
    _remove_unlisted_volumes(out, manifest)
    console.print(
        f"[green]prepared[/] {len(volumes)} volumes at {escape(str(out))} in {manifest['prepare_seconds']} s "
        f"(fingerprint {manifest['id']})"
    )
    for warning in warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    if (
        existing is not None
        and isinstance(existing.get("volumes"), list)
        and existing.get("id") != manifest["id"]
    ):
        try:
            changes = fingerprint_differences(dataset_fingerprint(existing), dataset_fingerprint(manifest))
        except (KeyError, TypeError, AttributeError):
            changes = ["the previous manifest was unreadable"]
        console.print(
            f"[yellow]the data set changed[/] "
            f"(fingerprint {existing.get('id', 'none')} -> {manifest['id']}): "
            + escape("; ".join(changes))
            + ". Figures measured on the previous set (model cards, reports) are not comparable."
        )
    for missing in unavailable:
        console.print(f"[yellow]not used[/]: {missing['name']} ({missing['package']} not installed)")
    return manifest


def _remove_unlisted_volumes(out: Path, manifest: dict[str, Any]) -> None:
    """Deletes cached volumes the manifest does not list: earlier versions, a site's scan dropped, or
    what a failed prepare wrote (a site's pixels must not linger where nothing names them)."""
    listed = {Path(str(volume.get("file", ""))).name for volume in manifest.get("volumes", [])}
    for stale in (out / "volumes").glob("*.npy"):
        if stale.name not in listed:
            stale.unlink(missing_ok=True)


def _refuse_repeated_scans(checksums: dict[str, str], local: set[str]) -> None:
    """One input under two names (a pattern that also matches a scan listed on its own) would put
    the same slices in two splits: test figures on training data. Refused, naming both."""
    by_input: dict[str, list[str]] = {}
    for name, checksum in checksums.items():
        by_input.setdefault(checksum, []).append(name)
    repeated = [names for names in by_input.values() if len(names) > 1 and local & set(names)]
    if repeated:
        pairs = "; ".join(" and ".join(names) for names in repeated)
        raise DataError(
            f"the same scan is listed more than once ({pairs}: identical input files); a scan in two "
            "splits would be scored on slices it was trained on: list each scan once"
        )


def _checksum(entry: _Input) -> str:
    try:
        return input_checksum(entry.path)
    except OSError as exc:
        raise DataError(f"{entry.path}: cannot read it ({exc})") from None


def _local_warnings(
    entry: _Input, data: np.ndarray, usable: list[int], splits: dict[str, list[int]]
) -> list[str]:
    """What a site should know about how its scan was split (nothing is silently left out)."""
    if not usable:
        return [
            f"{entry.name} ({entry.path}): none of its {data.shape[0]} slices has "
            f"{MIN_FOREGROUND_FRACTION:.0%} of its pixels above 5% of the maximum: it adds no slice"
        ]
    dropped = data.shape[0] - len(usable)
    notes = []
    if dropped:
        notes.append(f"{dropped} of {data.shape[0]} slices left out as near-empty")
    kept = sum(len(indices) for indices in splits.values())
    if entry.role == "external" and kept < len(usable):
        notes.append(f"{kept} of its {len(usable)} slices scored (evenly spaced)")
    if entry.role == "train" and not entry.whole_split and not (splits["val"] and splits["test"]):
        counts = ", ".join(f"{name} {len(splits[name])}" for name in SPLITS)
        gaps = f", {len(usable) - kept} dropped as neighbours of another split" if kept < len(usable) else ""
        notes.append(
            f"split: auto gave {counts}{gaps} (blocks of {SplitPolicy().block} slices take train, train, "
            "test, train, train, val: a val slice needs about 64); give whole scans split: val and test"
        )
    return [f"{entry.name}: {'; '.join(notes)}"] if notes else []


def split_sizes(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Slices per split for each volume of a manifest."""
    return {v["name"]: {s: len(v["splits"].get(s, [])) for s in ALL_SPLITS} for v in manifest["volumes"]}
