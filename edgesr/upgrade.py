"""One-time migration of checkpoints written before the model contract (:mod:`edgesr.spec`).

Such a checkpoint records how it was trained (the run's ``data`` section and the model's options) but
not how to run it. :func:`upgrade_checkpoint` derives the spec from that record, once, and writes it
into ``checkpoint.json`` (and ``model_card.json`` where there is one). A spec is never filled in at
load time from today's defaults: those may have changed since the run.

An empty ``data.degradation`` or ``data.upsampler`` in a record meant "the default for the modality"
when the run trained: ``mr-kspace`` / ``zero-fill`` for MR, ``ct-blur`` / ``bicubic`` for CT (edgesr
0.1.0, the only version that wrote spec-less checkpoints). Those are spelled out here, not imported,
so that a later change of a default cannot rewrite history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgesr._io import write_json_atomic
from edgesr.errors import DataError
from edgesr.models import model_task
from edgesr.models._probe import receptive_radius
from edgesr.spec import ModelSpec, recon_spec, sr_spec
from edgesr.train.checkpoint import META_FILE, load_model, read_metadata, resolve_checkpoint

# The modality defaults of edgesr 0.1.0 (the version that wrote checkpoints without a spec).
_LEGACY_DEGRADATION = {"MR": "mr-kspace", "CT": "ct-blur"}
_LEGACY_UPSAMPLER = {"mr-kspace": "zero-fill", "ct-blur": "bicubic", "bicubic": "bicubic"}


def legacy_spec(meta: dict[str, Any], folder: Path) -> ModelSpec:
    """The spec of a pre-contract checkpoint, from its recorded run settings and model options."""
    name, options = meta["model"], meta.get("model_options", {})
    data = meta.get("config", {}).get("data", {})
    if model_task(name) == "sr":
        modality = data.get("modality", "MR")
        degradation = data.get("degradation") or _LEGACY_DEGRADATION[modality]
        upsampler = options.get("upsampler") or data.get("upsampler") or _LEGACY_UPSAMPLER[degradation]
        scale = int(options.get("scale", data.get("scale", 2)))
        model, _ = load_model(folder)
        return sr_spec(
            modality=modality,
            scale=scale,
            degradation=degradation,
            upsampler=upsampler,
            receptive_radius=receptive_radius(model, scale),
        )
    coils = int(options["coils"]) if name.startswith("deepcomplex") else 0
    return recon_spec(coils=coils)


def upgrade_checkpoint(folder: str | Path) -> tuple[ModelSpec, bool]:
    """Writes the spec into a checkpoint (and its model card) once; returns (spec, whether it wrote)."""
    folder = resolve_checkpoint(folder)  # an interrupted save leaves it in <folder>.old: upgrade that one
    meta = read_metadata(folder)
    if meta.get("spec") is not None:
        return ModelSpec.from_dict(meta["spec"], source=str(folder / META_FILE)), False
    # Read everything before writing anything: a corrupt card must not leave a half-upgraded folder.
    card_path = folder / "model_card.json"
    card: dict[str, Any] | None = None
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{card_path}: corrupt model card ({exc}); nothing was changed") from None
    spec = legacy_spec(meta, folder)
    if card is not None:  # the card first: a checkpoint with a spec counts as upgraded
        write_json_atomic(card_path, _with_spec(card, spec))
    write_json_atomic(folder / META_FILE, _with_spec(meta, spec))
    return spec, True


def _with_spec(record: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """``record`` with the spec placed right after ``model_options``, where a reader looks for it."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key != "spec":
            out[key] = value
        if key == "model_options":
            out["spec"] = spec.to_dict()
    out.setdefault("spec", spec.to_dict())
    return out
