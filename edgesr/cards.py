"""Model cards: what a shipped teacher (or, later, a compressed student) carries beside its weights.

A card records how the weights were made (every training stage's command, steps, wall-clock time and
machine, following ``init=`` back to the first run), the data sources with their checksums and the data
set's fingerprint, the evaluation next to the baselines of the same run on the test split and on the
external split (sources never trained on), a headline from real scans only, the model spec, and the
weights' sha256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from edgesr import __version__
from edgesr._io import atomic_path, sha256_file, write_json_atomic
from edgesr.data.dataset import PreparedDataset
from edgesr.data.prepare import fingerprint_differences
from edgesr.errors import DataError
from edgesr.spec import ModelSpec
from edgesr.train.checkpoint import META_FILE, MODEL_FILE, load_model, read_metadata, resolve_checkpoint


def _training_seconds(run_dir: Path) -> float | None:
    """Wall-clock training time from a run's log.jsonl, summed over resumed segments."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    total, previous = 0.0, 0.0
    for line in log.read_text().splitlines():
        seconds = json.loads(line).get("seconds")
        if seconds is None:
            continue
        if seconds < previous:  # a resumed segment restarted the clock
            total += previous
        previous = seconds
    return round(total + previous, 1)


def _training_machine(meta: dict[str, Any]) -> dict[str, Any] | str:
    """The machine a checkpoint's run trained on; checkpoints written before training recorded it lack it."""
    return meta.get("machine", "not recorded by the training run")


def _initialised_from(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The chain of ``init=`` checkpoints a run started from (e.g. SRGAN <- its SRResNet pre-training),
    nearest first, each with the command that trained it, so a card reproduces every stage.

    A shipped folder re-trained from itself names itself as its ``init``: there the chain continues
    from that folder's card (which recorded the history of the weights it held), not from its
    metadata, which would only point at itself again.
    """
    chain: list[dict[str, Any]] = []
    init = meta.get("config", {}).get("init", "")
    while init and len(chain) < 10:  # a bound against a cycle of hand-edited metadata
        folder = Path(init)
        try:
            parent = read_metadata(folder)
        except DataError as exc:
            chain.append({"checkpoint": init, "note": f"not readable when the card was written: {exc}"})
            break
        weights = resolve_checkpoint(folder) / MODEL_FILE
        # The folder may be overwritten later (a shipped teacher re-trained from itself): the hash
        # says which weights the run started from.
        sha256 = sha256_file(weights) if weights.is_file() else None
        card = _previous_card(folder, sha256) if sha256 else None
        if card is not None and isinstance(card.get("training"), dict):
            training = card["training"]
            chain.append(
                {"checkpoint": init, "weights_sha256": sha256}
                | {k: training.get(k) for k in ("command", "steps", "best_val_psnr_db", "wall_clock_seconds")}
                | {"machine": training.get("machine", "not recorded by the training run")}
            )
            chain += list(training.get("initialised_from") or [])
            break
        chain.append(
            {
                "checkpoint": init,
                "weights_sha256": sha256,
                "command": parent.get("config", {}).get("command", ""),
                "steps": parent.get("step"),
                "best_val_psnr_db": parent.get("metrics", {}).get("best_val_psnr"),
                "wall_clock_seconds": _training_seconds(folder.parent),
                "machine": _training_machine(parent),
            }
        )
        init = parent.get("config", {}).get("init", "")
    return chain


def evaluate_command(
    name: str,
    meta: dict[str, Any],
    *,
    split: str,
    accelerations: tuple[float, ...],
    masks: tuple[str, ...],
    maps: tuple[str, ...],
    max_slices: int,
) -> str:
    """The command that re-scores the shipped teacher on the settings of this card."""
    command = f"edgesr evaluate model={name} split={split}"
    if ModelSpec.from_dict(meta["spec"], source=name).task == "recon":

        def listed(values: tuple[Any, ...]) -> str:
            return "[" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "]"

        command += f" accelerations={listed(accelerations)} masks={listed(masks)} maps={listed(maps)}"
    if max_slices:
        command += f" max_slices={max_slices}"
    return command


def write_card(
    folder: Path,
    target: str | Path,
    report: dict[str, Any],
    *,
    name: str,
    dataset: PreparedDataset,
    evaluate_command: str,
    external: dict[str, Any] | None = None,
) -> Path:
    """Writes a shippable teacher into ``target``: weights, metadata without optimizer state, and
    ``model_card.json`` (training stages and machines, data sources and fingerprint, this evaluation
    and the ``external`` one, the headline, the spec, sha256).
    """
    target = Path(target)
    weights = (resolve_checkpoint(folder) / MODEL_FILE).read_bytes()
    weights_sha256 = hashlib.sha256(weights).hexdigest()
    previous = _previous_card(target, weights_sha256)
    _refuse_student_card(previous, target)
    target.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(folder)
    # Before anything is written: the run may have started from the very folder being re-carded.
    initialised_from = _initialised_from(meta)
    for key in ("optimizer", "scheduler"):
        meta.pop(key, None)
    if (target / MODEL_FILE).resolve() != (resolve_checkpoint(folder) / MODEL_FILE).resolve():
        with atomic_path(target / MODEL_FILE) as tmp:
            tmp.write_bytes(weights)
    write_json_atomic(target / META_FILE, meta)
    card = {
        "name": name,
        "model": meta["model"],
        "model_options": meta["model_options"],
        "spec": meta.get("spec"),
        "parameters": sum(
            t.numel() for t in load_model(target)[0].state_dict().values() if t.is_floating_point()
        ),
        # The same weights re-carded (on another data set, say) keep their training history: the
        # shipped folder has no run log, and its weights are not their own starting point.
        "training": previous["training"]
        if previous is not None and "training" in previous
        else (
            {
                "command": meta["config"].get("command", ""),
                "steps": meta["step"],
                "best_val_psnr_db": meta["metrics"].get("best_val_psnr"),
                # A blend trained nothing: a run log beside its folder would not be its own.
                "wall_clock_seconds": None if "interpolation" in meta else _training_seconds(folder.parent),
                "machine": _training_machine(meta),
                "initialised_from": initialised_from,
            }
            # A blend of two trainings (edgesr interpolate): both inputs, the share, how it was chosen.
            | ({"interpolation": meta["interpolation"]} if "interpolation" in meta else {})
        ),
        "data": [
            {k: v[k] for k in ("name", "modality", "package", "license", "input_sha256")}
            | {"role": v.get("role", "train"), "template": bool(v.get("template", False))}
            for v in dataset.manifest["volumes"]
        ],
        "data_fingerprint": dataset.fingerprint,
        "trained_on": _trained_on(meta, previous),
        "headline": headline(report, external),
        "evaluation": report,
        "external": external,
        "evaluate_command": evaluate_command,
        "weights": {"file": MODEL_FILE, "bytes": len(weights), "sha256": weights_sha256},
        "edgesr_version": __version__,
    }
    write_json_atomic(target / "model_card.json", card)
    return target


def _trained_on(meta: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The train/val sources the weights were trained on, as their training run recorded them.

    ``data`` lists the data set the card was measured on, which may have gained sources since the
    weights were trained (a teacher re-carded on a newer data set). Runs from before the record: the
    previous card's statement, else the train sources (of the run's modality) of the data set the
    previous card was measured on, marked as such: right when that card was the first, a guess when the
    data set has gained train sources since; None when neither exists.
    """
    recorded = meta.get("config", {}).get("training_data")
    if recorded is not None:
        return dict(recorded)
    if previous is None:
        return None
    if "trained_on" in previous:
        return previous["trained_on"]
    modality = ((previous.get("spec") or {}).get("intensity") or {}).get("modality", "MR")
    return {
        "sources": [
            {"name": d["name"], "package": d.get("package", "?"), "input_sha256": d.get("input_sha256")}
            for d in previous.get("data", [])
            if d.get("role", "train") == "train" and d.get("modality") == modality
        ],
        "recorded_by": "the previous card: the train sources of the data set it was measured on",
    }


def check_card_target(folder: Path, target: str | Path) -> None:
    """Refuses to re-card a compressed student with a teacher's card (before any work is done).

    A student's card holds its recipe's figures (stages, quantization, the teacher's sha256), which only
    ``edgesr compress ... card=`` writes; a teacher-style card of the same weights would drop them.
    """
    target = Path(target)
    weights_sha256 = sha256_file(resolve_checkpoint(folder) / MODEL_FILE)
    _refuse_student_card(_previous_card(target, weights_sha256), target)


def _refuse_student_card(previous: dict[str, Any] | None, target: Path) -> None:
    if previous is not None and "compression" in previous:
        command = previous["compression"].get("command") or "edgesr compress recipe=..."
        if "card=" not in command:
            command += f" card={target}"
        raise DataError(
            f"{target} is a compressed student's card, written by its recipe with the compression "
            f"figures; re-card it with `{command}`"
        )


def _previous_card(target: Path, weights_sha256: str) -> dict[str, Any] | None:
    """The card already in ``target`` when it describes these very weights, else None."""
    path = target / "model_card.json"
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # rewritten whole below
    if not isinstance(card, dict) or card.get("weights", {}).get("sha256") != weights_sha256:
        return None
    return card


def headline(report: dict[str, Any], external: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The figures to quote, per setting: the gain over the best baseline on the real scans of the test
    split (a template average is never blended in) and on the external split."""
    external_by_setting = {_setting_key(c): c for c in (external or {}).get("comparison", [])}
    lines = []
    for comparison in report["comparison"]:
        key = _setting_key(comparison)
        outside = external_by_setting.get(key)
        lines.append(
            dict(key)
            | {
                "test_real_scans": comparison.get("real_scans"),
                "external": None
                if outside is None
                else {
                    k: outside[k]
                    for k in (
                        "best_baseline",
                        "gain_db_over_best_baseline",
                        "slices_below_per_slice_best_baseline",
                        "min_gain_db_per_slice",
                    )
                }
                | {"by_source": outside.get("by_source", {})},
            }
        )
    return lines


_SETTING_KEYS = ("task", "modality", "scale", "degradation", "acceleration", "mask", "coils", "maps")


def _setting_key(comparison: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((k, comparison[k]) for k in _SETTING_KEYS if k in comparison)


def card_data_differences(
    card: dict[str, Any], dataset: PreparedDataset, *, only: Collection[str] = ()
) -> list[str]:
    """How ``dataset`` differs from the data set a model card was measured on, for the card's modality
    (empty: the same data, or a folder without a card); ``only`` compares just those sources (a
    user's ``sources=`` choice leaves the others out on purpose).

    Cards from before fingerprints list their sources' names and checksums only; for them the
    training sources are compared (external sources did not exist then and change no test figure).
    """
    if not card or "spec" not in card:
        return []
    spec = card["spec"] or {}
    modality = (spec.get("intensity") or {}).get("modality", "MR")
    current = [s for s in dataset.fingerprint["sources"] if _modality(dataset, s["name"]) == modality]
    recorded = card.get("data_fingerprint")
    if recorded is None:
        before = [
            {"name": d["name"], "package": d.get("package", "?"), "input_sha256": d.get("input_sha256")}
            for d in card.get("data", [])
            if d.get("modality") == modality
        ]
        current = [s for s in current if s["role"] == "train"]
    else:
        names = {d["name"] for d in card.get("data", []) if d.get("modality") == modality}
        before = [s for s in recorded.get("sources", []) if s["name"] in names]
    if only:
        before = [s for s in before if s["name"] in only]
    shipped = dataset.fingerprint.get("shipped_sources", True)
    return fingerprint_differences({"sources": before}, {"sources": current, "shipped_sources": shipped})


def _modality(dataset: PreparedDataset, name: str) -> str:
    return next((v["modality"] for v in dataset.manifest["volumes"] if v["name"] == name), "")
