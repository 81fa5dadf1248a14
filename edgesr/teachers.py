"""The models that ship inside the package (``edgesr/weights/<name>/``): teachers and compressed students.

Each folder holds ``model.safetensors``, ``checkpoint.json`` and ``model_card.json``. A teacher's card
(written by ``edgesr evaluate card=``) has the training command, data sources, steps, and test-split
metrics next to the baselines of the same run. A student's card (written by ``edgesr compress card=``,
names ending in ``-edge``) has the recipe, every stage's figures, every runtime's run and the INT8
settings. Both carry the weights' sha256. Any shipped name works wherever a model is named
(``edgesr enhance model=rdn-mr-x2-edge``).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from edgesr.errors import ConfigError

WEIGHTS_DIR = Path(__file__).parent / "weights"


def list_shipped() -> list[str]:
    """Every model that ships (teachers and students)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "model.safetensors").is_file())


def read_card(folder: str | Path) -> dict[str, Any]:
    """A model folder's ``model_card.json`` as a dict; empty when the folder has none (a plain checkpoint)."""
    path = Path(folder) / "model_card.json"
    if not path.is_file():
        return {}
    card = json.loads(path.read_text(encoding="utf-8"))
    return card if isinstance(card, dict) else {}


def _is_student(name: str) -> bool:
    return "compression" in read_card(WEIGHTS_DIR / name)


def list_teachers() -> list[str]:
    """The shipped teachers (trained by ``edgesr train``)."""
    return [name for name in list_shipped() if not _is_student(name)]


def list_students() -> list[str]:
    """The shipped compressed students (made by ``edgesr compress``)."""
    return [name for name in list_shipped() if _is_student(name)]


def teacher_path(name: str) -> Path:
    path = WEIGHTS_DIR / name
    if not (path / "model.safetensors").is_file():
        known = list_shipped()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; shipped: {', '.join(known) or 'none yet'}"
        raise ConfigError(f"no shipped model {name!r}{hint}")
    return path
