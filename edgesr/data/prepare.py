"""``edgesr data prepare``: builds the cached default data set from the real sources, once.

Layout of a prepared data set (``<root>/v<VERSION>/``)::

    manifest.json          # sources (package, license, sha256 of the input file), shapes, splits
    volumes/<name>.npy     # float32 [S, H, W] axial slices in the source's intensity unit

The manifest is written last and atomically, so an interrupted run leaves no manifest and the next run
starts over; a run whose fingerprint (version, split policy, input checksums) matches the manifest
does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from edgesr import __version__
from edgesr._io import save_npy_atomic, sha256_file, write_json_atomic
from edgesr.config import opt
from edgesr.data.sources import SOURCES, Source
from edgesr.data.splits import SPLITS, SplitPolicy, split_slices
from edgesr.errors import SourceUnavailableError

DATASET_VERSION = 1
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


def usable_slices(volume: np.ndarray) -> list[int]:
    """Indices of slices with enough foreground (see ``MIN_FOREGROUND_FRACTION``)."""
    threshold = 0.05 * float(volume.max())
    fraction = (volume > threshold).reshape(volume.shape[0], -1).mean(axis=1)
    return [int(i) for i in np.flatnonzero(fraction >= MIN_FOREGROUND_FRACTION)]


def prepare_dataset(cfg: PrepareConfig, console: Console | None = None) -> dict[str, Any]:
    """Builds (or confirms) the data set and returns its manifest."""
    console = console or Console(stderr=True)
    out = dataset_dir(cfg.root or None)
    policy = SplitPolicy()
    located: list[tuple[Source, Path]] = []
    unavailable: list[dict[str, str]] = []
    for source in SOURCES:
        path = source.locate()
        if path is None:
            unavailable.append({"name": source.name, "package": source.package, "reason": "not installed"})
        else:
            located.append((source, path))
    if not located:
        raise SourceUnavailableError(
            "no real data source is installed; run `bash .ci/setup` (Debian packages mricron-data and "
            "invesalius-examples, PyPI nilearn)"
        )
    checksums = {source.name: sha256_file(path) for source, path in located}
    # Round-tripped through JSON so that it compares equal to the one read back from the manifest.
    fingerprint = json.loads(
        json.dumps(
            {"version": DATASET_VERSION, "split_policy": dataclasses.asdict(policy), "inputs": checksums}
        )
    )
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and not cfg.force:
        existing = json.loads(manifest_path.read_text())
        volumes_present = all((out / v["file"]).is_file() for v in existing.get("volumes", []))
        if existing.get("fingerprint") == fingerprint and volumes_present:
            console.print(f"[green]data set up to date[/] at {escape(str(out))}")
            return existing

    started = time.perf_counter()
    volumes: list[dict[str, Any]] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("preparing data", total=len(located))
        for source, path in located:
            progress.update(task, description=f"loading {source.name}")
            loaded = source.load(path)
            file_name = f"volumes/{source.name}.npy"
            save_npy_atomic(out / file_name, loaded.data.astype(np.float32))
            splits = split_slices(usable_slices(loaded.data), policy)
            volumes.append(
                {
                    "name": source.name,
                    "modality": source.modality,
                    "description": source.description,
                    "package": source.package,
                    "license": source.license,
                    "input_path": str(path),
                    "input_sha256": checksums[source.name],
                    "file": file_name,
                    "shape": list(loaded.data.shape),
                    "spacing_mm": list(loaded.spacing),
                    "max_intensity": float(loaded.data.max()),
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
    write_json_atomic(manifest_path, manifest)
    console.print(
        f"[green]prepared[/] {len(volumes)} volumes at {escape(str(out))} in {manifest['prepare_seconds']} s"
    )
    for missing in unavailable:
        console.print(f"[yellow]not used[/]: {missing['name']} ({missing['package']} not installed)")
    return manifest


def split_sizes(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Slices per split for each volume of a manifest."""
    return {v["name"]: {s: len(v["splits"][s]) for s in SPLITS} for v in manifest["volumes"]}
