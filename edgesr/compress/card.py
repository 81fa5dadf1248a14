"""A compressed student as a shippable model: weights, checkpoint metadata and a model card.

``edgesr compress recipe=NAME card=edgesr/weights/<teacher>-edge`` writes the final *torch* model of the
run (an INT8 file is a runtime artifact, rebuilt from it) with ``model_card.json``:

* how it was made: the resolved recipe, the command, each stage's figures and seconds;
* the report's evaluation (test split, every runtime and precision, the baselines, the gate) with the
  data set's fingerprint (the sha256 of every source file), and ``external``: the teacher and the
  shipped models on the external split (sources never trained on), per source;
* per runtime, the INT8 settings that the quantize stage chose (the convolutions kept in float, the
  calibration slices, bias correction) and the command that rebuilds the INT8 file from the shipped
  float model;
* the weights' sha256.

Shipped students load wherever a teacher does (``edgesr enhance model=rdn-mr-x2-edge``, the API).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from edgesr import __version__
from edgesr._io import replace_folder
from edgesr.data.dataset import PreparedDataset
from edgesr.data.prepare import training_data
from edgesr.errors import ConfigError
from edgesr.train.checkpoint import META_FILE, MODEL_FILE, read_metadata, resolve_checkpoint, weights_sha256


def _rebuild_command(
    recipe_name: str,
    name: str,
    runtime: str,
    attempt: dict[str, Any],
    gate: dict[str, Any],
    stage: dict[str, Any],
    seed: int,
) -> str:
    """``edgesr compress`` with only the quantize stage, on the shipped float model, as it was chosen.

    Bias correction or QAT, when chosen, is the one remedy left on: it runs only after plain PTQ misses
    the gate, as it did when the attempt was chosen. QAT is rebuilt by training again, with the
    stage's options and seed.
    """
    if attempt["remedy"] == "qat":
        options = ("qat_steps", "qat_lr", "qat_eval_every", "warmup", "batch_size", "patch", "crop",
                   "output_weight", "target_weight")  # fmt: skip
        remedies = "[qat], " + ", ".join(f"{key}: {stage[key]}" for key in options if key in stage)
    else:
        remedies = "[bias_correction]" if attempt["bias_correction"] else "[]"
    quantize = (
        f"{{kind: quantize, runtimes: [{runtime}], calibration_slices: {attempt['calibration_slices']}, "
        f"keep_fp_patterns: [{', '.join(_exact(n) for n in attempt['keep_fp'])}], keep_fp_ends: 0, "
        f"keep_fp_upsampler: false, remedies: {remedies}, "
        f"gate_psnr_drop_db: {gate['max_psnr_drop_db']}, gate_ssim_drop: {gate['max_ssim_drop']}, "
        f"gate_slices: {gate['slices_per_volume']}}}"
    )
    # The slices the gate was judged on decide whether a remedy runs: the rebuild judges on the same.
    return (
        f"edgesr compress recipe={recipe_name} teacher={name} seed={seed} "
        f"gate_on={gate.get('scored_on', 'all')} "
        + shlex.quote(f"stages=[{quantize}]")
        + f" out=runs/compress/{name}-int8-{runtime}"
    )


QAT_FOLDER = "qat"  # in a student's folder: the QAT model's weights and quantizer scales


def _ship_qat_weights(checkpoint: Path, card_folder: Path, *, command: str) -> dict[str, Any]:
    """Copies a QAT checkpoint's weights (no optimizer state) into ``card_folder/qat``; returns its record.

    Quantization-aware training changes the weights and learns the quantizers' scales, so an INT8 file
    made by post-training quantization of the float student is not the file the card measured. With
    these, ``edgesr export`` rebuilds the measured INT8 file without training (the fake-quantized model
    is rebuilt from the float student and the recorded scope, then these tensors are loaded).
    """
    source = resolve_checkpoint(checkpoint)
    meta = read_metadata(source)
    for key in ("optimizer", "scheduler"):
        meta.pop(key, None)
    weights = (source / MODEL_FILE).read_bytes()
    target = card_folder / QAT_FOLDER
    target.mkdir(exist_ok=True)
    (target / MODEL_FILE).write_bytes(weights)
    (target / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return {
        "folder": QAT_FOLDER,
        "sha256": hashlib.sha256(weights).hexdigest(),
        "step": meta.get("step"),  # the QAT run's best validation step
        "command": command,
    }


def attach_qat_weights(card_folder: str | Path, stage_folder: str | Path, *, command: str) -> Path:
    """Adds the QAT weights of a quantize-only run (the card's ``rebuild_command``) to a shipped student.

    The run must have quantized this very student (its float model's sha256 is the card's) and chosen
    QAT; the card's attempts for those runtimes become the run's, with the weights beside them. The
    folder is rewritten whole (staging + swap), like :func:`write_student_card`.
    """
    card_folder, stage_folder = Path(card_folder), Path(stage_folder)
    card = json.loads((card_folder / "model_card.json").read_text(encoding="utf-8"))
    summary = json.loads((stage_folder / "quantization.json").read_text(encoding="utf-8"))
    float_sha = weights_sha256(stage_folder / "model")
    if float_sha != card["weights"]["sha256"]:
        raise ConfigError(
            f"{stage_folder} quantized weights {float_sha[:12]}, not the student in {card_folder} "
            f"({card['weights']['sha256'][:12]}); run the card's rebuild_command"
        )
    chosen = {
        runtime: entry for runtime, entry in summary["runtimes"].items()
        if entry["attempts"][entry["chosen"]]["remedy"] == "qat"
    }  # fmt: skip
    if not chosen:
        raise ConfigError(f"{stage_folder}: no runtime chose QAT; there are no QAT weights to attach")
    staging = card_folder.with_name(card_folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(card_folder, staging)
    shutil.rmtree(staging / QAT_FOLDER, ignore_errors=True)
    from edgesr.compress.quantize import QAT_CHECKPOINT

    for runtime, entry in chosen.items():
        # Runs before the checkpoint's place was recorded left it at the same place.
        checkpoint = stage_folder / entry.get("qat_checkpoint", QAT_CHECKPOINT)
        record = _ship_qat_weights(checkpoint, staging, command=command)
        previous = card.setdefault("quantization", {}).get(runtime, {})
        card["quantization"][runtime] = previous | {
            "met_stage_gate": entry["met_gate"],
            "attempt": entry["attempts"][entry["chosen"]],
            "qat_weights": record,
        }
    (staging / "model_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return replace_folder(staging, card_folder)


def _exact(node: str) -> str:
    return "'^" + node.replace(".", r"\.") + "$'"


def write_student_card(
    report: dict[str, Any], target: str | Path, *, recipe_name: str, command: str, dataset: PreparedDataset
) -> Path:
    """Writes the run's final float model and its card into ``target`` (see the module docstring)."""
    target = Path(target)
    source = Path(report["final_model"])
    if target.resolve() == source.resolve():
        raise ConfigError(f"card={target} is the run's own model folder; choose another folder")
    name = target.name
    meta = read_metadata(source)
    for key in ("optimizer", "scheduler"):
        meta.pop(key, None)
    weights = (source / MODEL_FILE).read_bytes()
    # Weights, metadata and card are written into a folder beside the target and swapped in whole:
    # an interrupted re-card never leaves new weights under the old card's sha256.
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / MODEL_FILE).write_bytes(weights)
    (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    quantization: dict[str, Any] = {}
    summary = report.get("quantization") or {}
    stages = report["recipe"]["stages"]
    # The quantize stage is the last; its seed is the recipe's plus its index (as the runner sets it).
    seed = int(report["recipe"].get("seed", 0)) + len(stages) - 1
    stage_folder = source.parent  # the quantize stage's folder (its float model is model/)
    for runtime, entry in (summary.get("runtimes") or {}).items():
        attempt = entry["attempts"][entry["chosen"]]
        gate = summary["gate"]
        command_line = _rebuild_command(recipe_name, name, runtime, attempt, gate, stages[-1], seed)
        quantization[runtime] = {
            "met_stage_gate": entry["met_gate"],
            "attempt": attempt,
            "rebuild_command": command_line,
        }
        if entry.get("qat_checkpoint"):
            quantization[runtime]["qat_weights"] = _ship_qat_weights(
                stage_folder / entry["qat_checkpoint"], staging, command=command
            )
    card = {
        "name": name,
        "model": meta["model"],
        "model_options": meta["model_options"],
        "spec": meta.get("spec"),
        "parameters": report["stages"][-1]["params"],
        "macs_per_output": {"size": report["recipe"]["latency_size"], "macs": report["stages"][-1]["macs"]},
        "compression": {
            "teacher": report["recipe"]["teacher"],
            "teacher_weights_sha256": report["teacher"].get("weights_sha256"),
            "recipe": recipe_name,
            "command": command,
            "resolved_recipe": report["recipe"],
            "stages": report["stages"],
        },
        "evaluation": {
            "dataset": report["dataset"],
            "baselines": report["baselines"],
            "teacher": report["teacher"],
            "runs": report["runs"],
            "gate": report["gate"],
            "fastest_at_equal_quality": report.get("fastest_at_equal_quality"),
            "machine": report["machine"],
        },
        # The teacher and this student on sources neither was trained on (absent in older reports).
        "external": report.get("external"),
        "quantization": quantization,
        "data": [
            {k: v[k] for k in ("name", "modality", "package", "license", "input_sha256")}
            | {"role": v.get("role", "train"), "template": bool(v.get("template", False))}
            for v in dataset.manifest["volumes"]
        ],
        "data_fingerprint": dataset.fingerprint,
        # The stages' slices: a finished stage is reused only on these (its fingerprint holds their id).
        "trained_on": training_data(dataset.manifest, meta["spec"]["intensity"]["modality"]),
        "weights": {"file": MODEL_FILE, "bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()},
        "edgesr_version": __version__,
    }
    (staging / "model_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return replace_folder(staging, target)
