"""The default teachers that ship inside the package (``edgesr/weights/<name>/``).

Each folder holds ``model.safetensors``, ``checkpoint.json`` (as written by ``edgesr train``) and
``model_card.json`` (the training command, data sources, steps, test-split metrics next to the
baselines of the same run, and the weights' sha256).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from edgesr.errors import ConfigError

WEIGHTS_DIR = Path(__file__).parent / "weights"


def list_teachers() -> list[str]:
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "model.safetensors").is_file())


def teacher_path(name: str) -> Path:
    path = WEIGHTS_DIR / name
    if not (path / "model.safetensors").is_file():
        known = list_teachers()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; shipped: {', '.join(known) or 'none yet'}"
        raise ConfigError(f"no shipped teacher {name!r}{hint}")
    return path
