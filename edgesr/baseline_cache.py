"""Per-slice scores of the recon baselines, kept beside the prepared data set.

CG-SENSE and L1-wavelet take seconds per slice (minutes on a 1024x1024 clinical slice), and they are
the same for every model scored on the same slices, yet every recon evaluation and compress report
recomputed them. They are stored once per (data set, split, acquisition setting) and read back.

A stored entry is used only when everything that determines its numbers matches: the data set's
fingerprint (pixels included), the split and slice limit, the acquisition (acceleration, mask, coils,
centre fraction, noise, coil maps), the baselines' parameters, torch's version and the sha256 of the
code that simulates, reconstructs and scores (:data:`CODE_FILES`). Anything else is recomputed. An
unreadable entry is recomputed and rewritten; a folder that cannot be written is not an error (the
scores are computed as before). Entries are written atomically. Their ``seconds`` are those of the run
that computed them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import torch

from edgesr._io import write_json_atomic
from edgesr.data.dataset import PreparedDataset

Row = TypeVar("Row")
FOLDER = "baseline-scores"  # inside the prepared data set's folder
_PACKAGE = Path(__file__).resolve().parent
# The code behind a baseline's figure: the acquisition simulation and coil maps, the baselines, the
# metrics, and the slicing and normalisation of the evaluation.
CODE_FILES = ("baselines.py", "evaluate.py", "metrics.py", "physics", "data/dataset.py")


@functools.cache
def code_sha256() -> str:
    digest = hashlib.sha256()
    for name in CODE_FILES:
        path = _PACKAGE / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(_PACKAGE).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def cache_key(dataset: PreparedDataset, **setting: Any) -> str:
    """The entry's name: a hash of the data set's fingerprint, ``setting`` and the code's sha256."""
    identity = {
        "data": dataset.fingerprint["id"],
        "setting": setting,
        "torch": torch.__version__,
        "code": code_sha256(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load(dataset: PreparedDataset, key: str, methods: list[str], *, row_type: type[Row]) -> list[Row] | None:
    """The stored per-slice scores of ``methods`` (in that order) under ``key`` as ``row_type``, or None."""
    path = dataset.path / FOLDER / f"{key}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        rows = {row["method"]: row for row in stored["methods"]}
        return [row_type(**rows[name]) for name in methods]
    except (OSError, ValueError, KeyError, TypeError):  # absent, edited by hand, another layout
        return None


def store(dataset: PreparedDataset, key: str, scores: list[Any], *, setting: dict[str, Any]) -> None:
    """Stores the per-slice scores (dataclass rows with a ``method`` field) under ``key``."""
    record = {"setting": setting, "methods": [dataclasses.asdict(s) for s in scores]}
    try:
        write_json_atomic(dataset.path / FOLDER / f"{key}.json", record)
    except OSError:
        pass  # a read-only data set: the scores were computed and are used as they are
