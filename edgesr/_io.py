"""Atomic file writing: an output is either the old file or the complete new one, never half of it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` only if the block succeeds.

    The temporary file keeps the final suffix (``.nii.gz``, ``.npy``...) so that libraries which pick a
    format from the file name still do the right thing.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give it the mode a plain open() would have given,
        # or the mode of the file it replaces, so shared outputs (shipped weights, reports) stay readable.
        os.chmod(tmp, final.stat().st_mode & 0o777 if final.exists() else 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Makes a rename or a new entry in the folder ``path`` durable (the folder's own fsync).

    Best effort: some file systems (and Windows) refuse to open or fsync a folder; the files themselves
    are fsync'ed by their writers.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy_atomic(path: str | os.PathLike[str], array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def replace_folder(tmp: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Puts the finished folder ``tmp`` in the place of ``folder``: the old one or the whole new one.

    Two renames: ``folder`` -> ``<folder>.old``, ``tmp`` -> ``folder``. An interruption between them
    leaves the previous folder complete in ``<folder>.old`` (checkpoint readers look there too).
    """
    tmp, folder = Path(tmp), Path(folder)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in 1 MiB chunks (source volumes and artifacts can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
