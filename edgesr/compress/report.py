"""The compression report: every model of a recipe's chain scored on the same images and timed the same way.

``report.json`` (for machines) and ``report.md`` (for people) hold the same figures:

* ``teacher`` and ``stages``: params, MACs (per ``latency_size`` output), PSNR/SSIM on the recipe's
  ``eval_split`` (a quantize stage's figures are its worst INT8 artifact's, so that the gate holds for
  every file it ships), per source volume too, and the stage's seconds;
* ``runs``: one entry per (model, runtime, precision): the teacher in torch FP32 and in each runtime at
  that runtime's default precision, the final float model in every runtime (OpenVINO's default, BF16 on
  CPUs with AMX, and FP32; on CPUs with BF16 units also torch under BF16 autocast), each INT8
  artifact. Each run is scored in its runtime on the same slices and timed in a process of its own
  (:mod:`edgesr.bench.worker`), with the precision that actually ran;
* ``gate``: the final model against the teacher, on the real scans of the split unless the recipe's
  ``gate_on`` says ``all`` (with the figures over every slice beside them); ``quantization``: every
  INT8 attempt and remedy.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from edgesr.bench.devices import first_cores
from edgesr.bench.timing import latency_inputs, machine_info, runtime_versions
from edgesr.bench.worker import measure_isolated
from edgesr.compress.prune import count_macs_params
from edgesr.compress.recipe import Recipe
from edgesr.data.dataset import PreparedDataset, dataset_name
from edgesr.data.sources import is_template
from edgesr.data.splits import EXTERNAL
from edgesr.device import cpu_has_native_bf16
from edgesr.errors import EdgesrError
from edgesr.evaluate import evaluate_model, gated_scores, has_slices, real_scan_scores, score_predictor
from edgesr.models.fold import has_subpixel_tail
from edgesr.pipeline import Predictor, TorchPredictor
from edgesr.train.checkpoint import weights_sha256

if TYPE_CHECKING:
    from edgesr.compress.runner import Candidate

# (runtime, requested precision) for the teacher and for the final float model.
TEACHER_RUNS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "default"))
FINAL_FLOAT_RUNS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "default"), ("openvino", "fp32"))


def schema_precision(requested: str, executed: str) -> dict[str, str]:
    """A run's ``precision`` (fp32, bf16, fp16 or int8), with ``requested_precision`` beside it when the
    runtime was asked for its ``default``: OpenVINO's default is BF16 on a CPU with BF16 units and FP32
    elsewhere, so the run is what the runtime executed (``executed_precision``, e.g. ``bf16`` or
    ``int8+bf16``, says the details). The run's name keeps ``default``, the request."""
    if requested != "default":
        return {"precision": requested}
    floats = [part for part in executed.split("+") if part in ("bf16", "fp16")]
    return {"precision": floats[0] if floats else "fp32", "requested_precision": requested}


def model_size_mb(path: Path) -> float:
    """A run's model on disk: a checkpoint folder's safetensors, an ONNX file with its external data, an
    OpenVINO IR's .xml and .bin. (Single-stream latency only here: ``edgesr bench`` adds throughput.)"""
    if path.is_dir():
        files = list(path.glob("*.safetensors"))
    elif path.suffix == ".xml":
        files = [path, path.with_suffix(".bin")]
    else:
        files = [path, path.with_name(path.name + ".data")]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def final_float_runs() -> tuple[tuple[str, str], ...]:
    """:data:`FINAL_FLOAT_RUNS`, plus torch under BF16 autocast where the CPU has BF16 units (the
    fastest torch path there, e.g. for MoDL, which no other runtime runs faster; emulated elsewhere)."""
    return FINAL_FLOAT_RUNS + ((("torch", "bf16"),) if cpu_has_native_bf16() else ())


def _predictor(runtime: str, precision: str, model: Any, threads: int) -> Predictor:
    if runtime == "onnxruntime":
        from edgesr.export.onnxruntime import OnnxRuntimePredictor

        return OnnxRuntimePredictor(model, threads=threads)
    from edgesr.export.openvino import OpenVinoPredictor, precision_hint

    return OpenVinoPredictor(model, threads=threads, precision=precision_hint(precision))


def build_report(
    recipe: Recipe, chain: list[Candidate], dataset: PreparedDataset, *, out: Path, console: Console
) -> dict[str, Any]:
    """Scores and times every model of ``chain`` (teacher first); see the module docstring."""
    from edgesr.export.build import fft_for
    from edgesr.export.onnx import export_onnx

    teacher, final = chain[0], chain[-1]
    split, slices = recipe.eval_split, recipe.eval_slices

    def score(predictor: Predictor, label: str, candidate: Candidate) -> dict[str, float]:
        # Through the model's own contract (an SR student's halo, a recon student's virtual coils) on
        # the same slices and acquisitions as the teacher.
        with console.status(f"scoring {label} on the {split} split"):
            return score_predictor(candidate.spec, predictor, dataset, split=split, max_slices=slices)

    # The teacher next to the baselines (the same slices every other figure uses).
    with console.status(f"scoring the teacher and the baselines on the {split} split"):
        evaluation = evaluate_model(
            teacher.spec, TorchPredictor(teacher.model, teacher.spec, device="cpu"), dataset,
            label="teacher", split=split, max_slices=slices,
        )  # fmt: skip
    rows = _first_setting(evaluation)
    baselines = [
        {"name": r["method"], "psnr": r["psnr_db"], "ssim": r["ssim"],
         "gradient_energy_ratio": r["gradient_energy_ratio"], "by_source": r["by_source"]}
        for r in rows
    ]  # fmt: skip
    teacher_scores = next(b for b in baselines if b["name"] == "teacher")
    baselines = [b for b in baselines if b["name"] != "teacher"]

    float_chain = [c for c in chain if c.quantization is None]
    final_float = float_chain[-1]
    torch_scores = {id(teacher): teacher_scores}
    for candidate in float_chain[1:]:
        torch_scores[id(candidate)] = score(
            TorchPredictor(candidate.model, candidate.spec, "cpu"), candidate.name, candidate
        )

    onnx_files: dict[int, Path] = {}

    def onnx_of(candidate: Candidate) -> Path:
        if id(candidate) not in onnx_files:
            # Named by the weights it was exported from (a stage re-run since gets a new file) and the
            # form of the graph (an SR tail folded since 2026-12-01, edgesr.models.fold).
            form = "-folded" if has_subpixel_tail(candidate.model) else ""
            path = out / "runs" / f"{candidate.name}-{weights_sha256(candidate.folder)[:12]}{form}.onnx"
            if not path.is_file():
                # OpenVINO is timed at its default (BF16 here) too: see edgesr.export.build.fft_form.
                fft = fft_for(candidate.model, runtimes=recipe.report_runtimes, precisions=["default"],
                              default="matmul")  # fmt: skip
                with console.status(f"exporting {candidate.name} to ONNX"):
                    export_onnx(
                        candidate.model, candidate.spec, latency_inputs(candidate.spec, 64), path, fft=fft
                    )
            onnx_files[id(candidate)] = path
        return onnx_files[id(candidate)]

    # (model, runtime, requested precision, its file (made on demand), or None for the torch module)
    plan: list[tuple[Candidate, str, str, Callable[[], Path] | None]] = []
    for runtime, precision in TEACHER_RUNS:
        if runtime in recipe.report_runtimes:
            plan.append(
                (teacher, runtime, precision, None if runtime == "torch" else (lambda: onnx_of(teacher)))
            )
    for candidate in float_chain[1:-1]:
        plan.append((candidate, "torch", "fp32", None))
    if final_float is not teacher:
        for runtime, precision in final_float_runs():
            if runtime in recipe.report_runtimes:
                plan.append(
                    (final_float, runtime, precision,
                     None if runtime == "torch" else (lambda: onnx_of(final_float)))
                )  # fmt: skip
    if final.quantization is not None:
        for runtime in final.quantization["runtimes"]:
            path = final.artifacts[runtime]
            plan.append((final, runtime, "int8", lambda path=path: path))  # type: ignore[misc]

    runs: list[dict[str, Any]] = []
    for candidate, runtime, precision, file in plan:
        label = f"{candidate.name}/{runtime}/{precision}"
        role = "teacher" if candidate is teacher else "student"
        try:
            if file is None and precision == "fp32":
                scores, model_ref = torch_scores[id(candidate)], str(candidate.folder)
            elif file is None:  # torch under autocast: scored in it, like any other runtime
                model_ref = str(candidate.folder)
                predictor = TorchPredictor(candidate.model, candidate.spec, "cpu", precision=precision)
                scores = score(predictor, label, candidate)
            else:
                model_ref = str(file())
                scores = score(_predictor(runtime, precision, model_ref, recipe.threads), label, candidate)
            request = {
                "runtime": runtime, "model": model_ref, "spec": candidate.spec.to_dict(),
                "precision": precision, "threads": recipe.threads, "size": recipe.latency_size,
                "repeats": recipe.latency_repeats, "cores": first_cores(recipe.threads),
            }  # fmt: skip
            with console.status(f"timing {label} in its own process"):
                timing = measure_isolated(request)
        except (EdgesrError, RuntimeError, OSError, ValueError) as exc:  # a runtime that cannot run it
            console.print(f"[yellow]{label}: not measured[/] ({exc})")
            runs.append({"name": label, "model": role, "runtime": runtime, "precision": precision,
                         "error": str(exc)})  # fmt: skip
            continue
        runs.append(
            {"name": label, "model": role, "runtime": runtime,
             **schema_precision(precision, timing["executed_precision"]), **timing,
             "size_mb": round(model_size_mb(Path(model_ref)), 3),
             "psnr": scores["psnr"], "ssim": scores["ssim"],
             "gradient_energy_ratio": scores["gradient_energy_ratio"], "by_source": scores["by_source"]}
        )  # fmt: skip
    gc.collect()  # runtime sessions in reference cycles end here (see compress.quantize.quantize_openvino)
    measured = [r for r in runs if "error" not in r]
    reference = next(r for r in measured if r["name"] == f"{teacher.name}/torch/fp32")
    for run in measured:
        run["psnr_vs_teacher_db"] = round(run["psnr"] - reference["psnr"], 3)
        run["ssim_vs_teacher"] = round(run["ssim"] - reference["ssim"], 4)
        # Sharpness against the teacher's (1 = as sharp; a GAN student is judged by it, not by PSNR).
        run["sharpness_vs_teacher"] = round(
            run["gradient_energy_ratio"] / max(reference["gradient_energy_ratio"], 1e-12), 3
        )
        run["speedup_vs_teacher_torch_fp32"] = round(
            reference["latency_ms"]["p50"] / run["latency_ms"]["p50"], 2
        )

    modality = teacher.spec.intensity.modality
    scored = dataset.volumes(modality, split)
    # Population averages, shown apart from the real scans (never the headline, nor the gate's).
    templates = [v["name"] for v in scored if is_template(v["name"])]

    def gated(row: dict[str, Any]) -> tuple[float, float]:
        """(PSNR, SSIM) as the gate judges ``row`` (its real scans' unless the recipe says every slice)."""
        scores = gated_scores(row, recipe.gate_on)
        return float(scores["psnr"]), float(scores["ssim"])

    stage_rows = []
    example = tuple(latency_inputs(teacher.spec, recipe.latency_size).values())
    for candidate in chain[1:]:
        macs, params = count_macs_params(candidate.model, example)
        if candidate.quantization is not None:
            int8 = [
                r for r in measured if r["name"].startswith(f"{candidate.name}/") and r["precision"] == "int8"
            ]
            if not int8:
                raise EdgesrError(f"no INT8 artifact of {candidate.name} could be run; see the runs above")
            # The worst INT8 file stands for the stage: the gate must hold for every file it ships.
            scores = min(int8, key=gated)  # the lowest PSNR where the gate looks (then SSIM)
            runtime = f"{scores['runtime']} int8"
        else:
            scores, runtime = torch_scores[id(candidate)], "torch fp32"
        stage_rows.append(
            {"name": candidate.name, "model": candidate.model_name, "params": params, "macs": macs,
             "psnr": scores["psnr"], "ssim": scores["ssim"], "by_source": scores["by_source"],
             "scored_in": runtime, "seconds": _stage_seconds(candidate),
             **({"started_from": candidate.started_from} if candidate.started_from else {})}
        )  # fmt: skip
    own_gate = {"max_psnr_drop_db": recipe.max_psnr_drop_db, "max_ssim_drop": recipe.max_ssim_drop}
    deployment = _fastest_at_equal_quality(
        measured, final, final_float, (final.quantization or {}).get("gate", own_gate), recipe.gate_on
    )
    teacher_macs, teacher_params = count_macs_params(teacher.model, example)
    teacher_row = {
        "name": "teacher", "model": teacher.model_name, "params": teacher_params, "macs": teacher_macs,
        "psnr": teacher_scores["psnr"], "ssim": teacher_scores["ssim"],
        "by_source": teacher_scores["by_source"],
        # Which weights: a shipped teacher re-trained since is another model under the same name.
        "weights_sha256": weights_sha256(teacher.folder),
    }  # fmt: skip
    return {
        "recipe": json.loads(json.dumps(_asdict(recipe))),
        "task": teacher.spec.task,
        "dataset": {"name": dataset_name(dataset.fingerprint["id"]),
                    "sources": [v["name"] for v in scored], "split": split, "max_slices_per_volume": slices,
                    "images": int(evaluation["results"][0]["slices"]),
                    # The fingerprint: which files and splits the figures come from.
                    "fingerprint": dataset.fingerprint["id"],
                    "input_sha256": {v["name"]: v["input_sha256"] for v in scored},
                    "templates": templates},
        "baselines": baselines,
        "teacher": teacher_row,
        "stages": stage_rows,
        "gate": _gate(recipe, teacher_row, stage_rows[-1], templates),
        "machine": machine_info() | runtime_versions(),
        "runs": runs,
        "fastest_at_equal_quality": deployment,
        "trade_off": _trade_off(measured, teacher_row, stage_rows),
        "external": _external_figures(recipe, chain, dataset, console=console),
        "quantization": final.quantization,
        "final_model": str(final.folder),
        "artifacts": {k: str(v) for k, v in final.artifacts.items()},
    }  # fmt: skip


def _gate(
    recipe: Recipe, teacher: dict[str, Any], final: dict[str, Any], templates: list[str]
) -> dict[str, Any]:
    """The final model against the teacher, on the slices ``recipe.gate_on`` names.

    ``real_scans`` (the default) leaves a template out: an average of many subjects is smoother than
    any scan, a large teacher gains far more on it than on a real one, and a student judged there is
    judged by how well it imitates that gain on an image no console sends. The figures over every
    slice stay beside it (``all_slices``), and report.md gives each source apart.
    """
    every_slice = {
        "psnr_drop_db": round(teacher["psnr"] - final["psnr"], 3),
        "ssim_drop": round(teacher["ssim"] - final["ssim"], 4),
    }
    gate: dict[str, Any] = {
        "max_psnr_drop_db": recipe.max_psnr_drop_db, "max_ssim_drop": recipe.max_ssim_drop,
        "final": f"{final['name']} ({final['scored_in']})", "scored_on": "all", **every_slice,
    }  # fmt: skip
    # Without a template among the sources, every slice is a real scan: nothing to leave out.
    with_template = any(name in templates for name in teacher.get("by_source", {}))
    real_teacher = real_scan_scores(teacher, templates) if recipe.gate_on == "real_scans" else None
    real_final = real_scan_scores(final, templates)
    if with_template and real_teacher and real_final and "ssim" in real_teacher and "ssim" in real_final:
        gate |= {
            "scored_on": "real_scans",
            "sources": sorted(name for name in teacher.get("by_source", {}) if name not in templates),
            "slices": real_teacher["slices"],
            "psnr_drop_db": round(real_teacher["psnr"] - real_final["psnr"], 3),
            "ssim_drop": round(real_teacher["ssim"] - real_final["ssim"], 4),
            "all_slices": every_slice,
        }
    gate["passed"] = (
        gate["psnr_drop_db"] <= recipe.max_psnr_drop_db and gate["ssim_drop"] <= recipe.max_ssim_drop
    )
    return gate


def gate_scope(gate: dict[str, Any]) -> str:
    """What the gate was scored on, for a sentence about it (empty for every slice of the split)."""
    if gate.get("scored_on") != "real_scans" or "all_slices" not in gate:
        return ""
    every = gate["all_slices"]
    return (
        f", on the {gate['slices']} slice{'' if gate['slices'] == 1 else 's'} of real scans "
        f"({', '.join(gate['sources'])}); on every slice, "
        f"templates included: {every['psnr_drop_db']:.3f} dB, {every['ssim_drop']:.4f} SSIM"
    )


def _first_setting(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows (the model and each baseline) of an evaluation's first setting (task, modality, scale,
    acceleration): the one setting every model of the report is compared at."""
    first = evaluation["results"][0]
    setting = {k: first.get(k) for k in ("task", "modality", "scale", "acceleration")}
    return [r for r in evaluation["results"] if all(r.get(k) == v for k, v in setting.items())]


def _external_figures(
    recipe: Recipe, chain: list[Candidate], dataset: PreparedDataset, *, console: Console
) -> dict[str, Any]:
    """The teacher and the shipped models on the external split: whether compression keeps what the
    teacher does on scanners it never saw, measured against the recipe's own gate (not enforced: the
    gate is the ``eval_split``'s; this says whether it also holds there).

    The final float model in torch (FP32, and BF16 where the report runs it) and each INT8 file in its
    runtime, at most ``eval_slices`` per source; a file that cannot take an external image (a
    fixed-shape export) is reported, not fatal.
    """
    teacher, final = chain[0], chain[-1]
    final_float = [c for c in chain if c.quantization is None][-1]
    modality = teacher.spec.intensity.modality if teacher.spec.sr is not None else "MR"
    if not has_slices(dataset, EXTERNAL, modality):
        return {"split": EXTERNAL, "skipped": f"the data set has no external {modality} source installed"}
    slices = recipe.eval_slices
    with console.status("scoring the teacher and the baselines on the external split"):
        evaluation = evaluate_model(
            teacher.spec, TorchPredictor(teacher.model, teacher.spec, device="cpu"), dataset,
            label="teacher", split=EXTERNAL, max_slices=slices,
        )  # fmt: skip
    rows = _first_setting(evaluation)
    figures = {
        r["method"]: {"psnr": r["psnr_db"], "ssim": r["ssim"], "by_source": r["by_source"]} for r in rows
    }
    reference = figures.pop("teacher")
    models: list[dict[str, Any]] = [{"name": f"{teacher.name}/torch/fp32", **reference}]
    # (run name, a factory of its predictor: a runtime session is opened only when it is scored)
    plan: list[tuple[str, Callable[[], Predictor]]] = []
    if final_float is not teacher:
        # The final float model in torch at each precision the report runs it at (BF16 autocast too,
        # which fastest_at_equal_quality may recommend).
        for runtime, precision in final_float_runs():
            if runtime == "torch":
                plan.append(
                    (f"{final_float.name}/torch/{precision}",
                     partial(TorchPredictor, final_float.model, final_float.spec, "cpu", precision=precision))
                )  # fmt: skip
    if final.quantization is not None:
        for runtime in final.quantization["runtimes"]:
            path = str(final.artifacts[runtime])
            plan.append(
                (f"{final.name}/{runtime}/int8", partial(_predictor, runtime, "int8", path, recipe.threads))
            )
    for name, predictor in plan:
        try:
            with console.status(f"scoring {name} on the external split"):
                scores = score_predictor(final.spec, predictor(), dataset, split=EXTERNAL, max_slices=slices)
        except (EdgesrError, RuntimeError, OSError, ValueError) as exc:
            models.append({"name": name, "error": str(exc)})
            continue
        models.append(
            {"name": name, "psnr": scores["psnr"], "ssim": scores["ssim"], "by_source": scores["by_source"]}
        )
    scored = [m for m in models if "error" not in m]
    for model in scored:
        model["psnr_vs_teacher_db"] = round(model["psnr"] - reference["psnr"], 3)
        model["ssim_vs_teacher"] = round(model["ssim"] - reference["ssim"], 4)
    outside = [
        m["name"]
        for m in scored
        if reference["psnr"] - m["psnr"] > recipe.max_psnr_drop_db + 1e-9
        or reference["ssim"] - m["ssim"] > recipe.max_ssim_drop + 1e-9
    ]
    return {
        "split": EXTERNAL,
        "sources": [v["name"] for v in dataset.volumes(modality, EXTERNAL)],
        "images": int(rows[0]["slices"]),
        "max_slices_per_volume": slices,
        "baselines": [{"name": name, **values} for name, values in figures.items()],
        "models": models,
        # Every model scored, and within the recipe's PSNR and SSIM limits of the teacher on this split.
        "within_gate": not outside and len(scored) == len(models),
        "outside_gate": outside,
        "not_scored": [m["name"] for m in models if "error" in m],
    }


def _fastest_at_equal_quality(
    runs: list[dict[str, Any]],
    final: Candidate,
    final_float: Candidate,
    gate: dict[str, Any],
    gate_on: str = "all",
) -> dict[str, dict[str, Any]]:
    """Per runtime, the fastest precision of the final model that keeps the float model's quality.

    INT8 is not always the fastest (narrow layers can leave the matrix units idle, and BF16 may win),
    so this is measured: among the final model's runs in each runtime (BF16 and INT8 alike), those
    within ``gate`` (the quantize stage's) of the float model in torch FP32, judged on the slices
    ``gate_on`` names (:func:`edgesr.evaluate.gated_scores`), the lowest p50. Torch is listed when it
    ran at a precision other than FP32 (BF16 autocast), FP32 being the reference.
    """
    names = {final.name, final_float.name}
    reference = next((r for r in runs if r["name"] == f"{final_float.name}/torch/fp32"), None)
    torch_precisions = {
        r["precision"] for r in runs if r["name"].split("/")[0] in names and r["runtime"] == "torch"
    }
    chosen: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run["name"].split("/")[0] not in names or reference is None:
            continue
        if run["runtime"] == "torch" and torch_precisions <= {"fp32"}:
            continue
        mine, theirs = gated_scores(run, gate_on), gated_scores(reference, gate_on)
        within = (
            theirs["psnr"] - mine["psnr"] <= gate["max_psnr_drop_db"] + 1e-9
            and theirs["ssim"] - mine["ssim"] <= gate["max_ssim_drop"] + 1e-9
        )
        best = chosen.get(run["runtime"])
        if within and (best is None or run["latency_ms"]["p50"] < best["p50_ms"]):
            chosen[run["runtime"]] = {
                "run": run["name"], "executed_precision": run["executed_precision"],
                "p50_ms": run["latency_ms"]["p50"], "psnr": run["psnr"],
                "psnr_vs_float_db": round(run["psnr"] - reference["psnr"], 3),
            }  # fmt: skip
    return chosen


def _trade_off(
    runs: list[dict[str, Any]],
    teacher_row: dict[str, Any],
    stage_rows: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One point per measured run: (size, precision) -> (latency, quality), for a Pareto plot.

    The size axis is the fraction of the teacher's MACs and parameters that the model keeps (1 for the
    teacher, about 0.25 for a 50% channel prune); the precision axis is what the runtime executed.
    """
    rows = {"teacher": teacher_row} | {row["name"]: row for row in stage_rows}
    points = []
    for run in runs:
        row = rows[run["name"].split("/")[0]]
        points.append(
            {"run": run["name"], "macs_fraction": round(row["macs"] / teacher_row["macs"], 4),
             "params_fraction": round(row["params"] / teacher_row["params"], 4), "runtime": run["runtime"],
             "executed_precision": run["executed_precision"], "p50_ms": run["latency_ms"]["p50"],
             "psnr": run["psnr"], "ssim": run["ssim"]}
        )  # fmt: skip
    return points


def _asdict(recipe: Recipe) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(recipe)


def _stage_seconds(candidate: Candidate) -> float | None:
    done = candidate.folder.parent / "stage.json"
    if not done.is_file():
        return None
    return float(json.loads(done.read_text(encoding="utf-8")).get("seconds", 0.0))


def real_scan_psnr(row: dict[str, Any], templates: list[str]) -> float | None:
    """Mean PSNR over the slices of the real (non-template) sources of a report row; None without any."""
    scores = real_scan_scores(row, templates)
    return None if scores is None else scores["psnr"]


def _per_source_lines(report: dict[str, Any]) -> list[str]:
    """PSNR / SSIM per source volume, real scans first: a template average is never blended in.

    Reports written before the per-source figures have none; they render without this table.
    """
    teacher = report["teacher"]
    if "by_source" not in teacher:
        return []
    templates = set(report["dataset"].get("templates", []))
    sources = sorted(teacher["by_source"], key=lambda name: (name in templates, name))
    rows = [("teacher", teacher)] + [(row["name"], row) for row in report["stages"]]
    rows += [(run["name"], run) for run in report["runs"] if "by_source" in run]
    rows += [(f"{b['name']} (baseline)", b) for b in report["baselines"]]
    heads = [f"{name} (template)" if name in templates else name for name in sources]
    lines = [
        "",
        "## Per source",
        "",
        "PSNR dB / SSIM on each source's slices, and the change against the teacher's PSNR there. "
        "Templates are averages of many subjects, on which models gain far more than on a real scan: "
        "judge a model by the real scans.",
        "",
        "| model | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(sources),
    ]
    for name, row in rows:
        cells = []
        for source in sources:
            mine, reference = row["by_source"].get(source), teacher["by_source"][source]
            if mine is None:
                cells.append("")
                continue
            change = mine["psnr_db"] - reference["psnr_db"]
            cells.append(f"{mine['psnr_db']:.2f} / {mine['ssim']:.4f} ({change:+.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _external_lines(report: dict[str, Any]) -> list[str]:
    """The external split: the teacher and the shipped models per source, against the recipe's gate."""
    external = report.get("external")
    if not external:
        return []  # a report from before the external split
    if "skipped" in external:
        return ["", "## External split", "", f"Not scored: {external['skipped']}."]
    gate = report["gate"]
    reference = external["models"][0]
    sources = list(reference["by_source"])
    outside = external.get("outside_gate", [])
    if external["within_gate"]:
        verdict = "Every shipped model is within"
    elif outside:
        verdict = f"**Outside** are {', '.join(f'`{name}`' for name in outside)}: beyond"
    else:
        verdict = "Not every shipped model could be scored (see the table), so it is not shown to be within"
    lines = [
        "",
        "## External split (sources never trained on)",
        "",
        f"{external['images']} slices of {', '.join(external['sources'])} (at most "
        f"{external['max_slices_per_volume'] or 'all'} per source). {verdict} the recipe's gate "
        f"against the teacher here ({gate['max_psnr_drop_db']} dB, {gate['max_ssim_drop']} SSIM; "
        "not enforced: the gate is the recipe's split's).",
        "",
        "| model | all | " + " | ".join(sources) + " |",
        "|---|---|" + "---|" * len(sources),
    ]
    rows = external["models"] + [{**b, "name": f"{b['name']} (baseline)"} for b in external["baselines"]]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['name']} | not scored: {row['error']} |" + " |" * len(sources))
            continue
        cells = [f"{row['psnr']:.2f} / {row['ssim']:.4f} ({row['psnr'] - reference['psnr']:+.2f})"]
        for source in sources:
            mine = row["by_source"].get(source)
            change = "" if mine is None else mine["psnr_db"] - reference["by_source"][source]["psnr_db"]
            cells.append("" if mine is None else f"{mine['psnr_db']:.2f} ({change:+.2f})")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the same figures as report.json, for people."""
    machine = report["machine"]
    lines = [
        f"# Compression report: {report['recipe']['teacher']}",
        "",
        f"Task {report['task']}; scored on {report['dataset']['images']} slices of the "
        f"{report['dataset']['split']} split of {', '.join(report['dataset']['sources'])} (data set "
        f"fingerprint {report['dataset'].get('fingerprint', 'not recorded')}); timed on "
        f"{machine['cpu']} ({report['recipe']['threads'] or machine['torch_threads']} threads, load "
        f"{machine.get('load_average_1min')}), {report['recipe']['latency_size']} px output, batch 1, "
        "each run in its own process"
        # Reports written before 2026-11-30 ran torch in its default layout and do not say so.
        + (
            f"; torch in {machine['torch_cpu_memory_format']}."
            if "torch_cpu_memory_format" in machine
            else "."
        ),
        "",
        "## Stages",
        "",
        "| stage | model | params | GMAC | PSNR dB | SSIM | vs teacher dB | scored in | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    teacher = report["teacher"]
    for row in [teacher, *report["stages"]]:
        seconds = row.get("seconds")
        lines.append(
            f"| {row['name']} | {row['model']} | {row['params']:,} | {row['macs'] / 1e9:.2f} | "
            f"{row['psnr']:.2f} | {row['ssim']:.4f} | {row['psnr'] - teacher['psnr']:+.2f} | "
            f"{row.get('scored_in', 'torch fp32')} | "
            f"{'' if seconds is None else f'{seconds:.0f}'} |"
        )
    for row in report["stages"]:
        if "started_from" in row:
            start = row["started_from"]
            lines.append(
                f"\n{row['name']} started from `{start['student_init']}` (weights sha256 "
                f"{start['weights_sha256'][:16]}...), an existing student re-distilled, not a new one."
            )
    lines += _per_source_lines(report)
    lines += _external_lines(report)
    lines += [
        "",
        "## Runs",
        "",
        "| run | executed | p50 ms | p90 ms | p99 ms | peak MB | PSNR dB | vs teacher dB | sharpness "
        "| speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        if "error" in run:
            lines.append(f"| {run['name']} | not measured: {run['error']} | | | | | | | | |")
            continue
        latency = run["latency_ms"]
        lines.append(
            f"| {run['name']} | {run['executed_precision']} | {latency['p50']:.1f} | {latency['p90']:.1f} | "
            f"{latency['p99']:.1f} | {run['peak_memory_mb']:.0f} | {run['psnr']:.2f} | "
            f"{run['psnr_vs_teacher_db']:+.2f} | {run.get('sharpness_vs_teacher', float('nan')):.3f} | "
            f"{run['speedup_vs_teacher_torch_fp32']:.2f}x |"
        )
    lines += [
        "",
        "Sharpness: gradient energy over the teacher's in torch FP32 (1 = as sharp, below 1 blurrier).",
        "",
        "Baselines: "
        + ", ".join(f"{b['name']} {b['psnr']:.2f} dB / {b['ssim']:.4f}" for b in report["baselines"]),
    ]
    fastest = report.get("fastest_at_equal_quality") or {}
    if fastest:
        lines += [
            "",
            "Fastest per runtime at the float model's quality: "
            + "; ".join(
                f"{runtime}: `{entry['run']}` ({entry['executed_precision']}, {entry['p50_ms']:.1f} ms, "
                f"{entry['psnr_vs_float_db']:+.2f} dB vs float)"
                for runtime, entry in fastest.items()
            )
            + ".",
        ]
    quantization = report.get("quantization")
    if quantization:
        gate = quantization["gate"]
        lines += [
            "",
            "## INT8 attempts",
            "",
            f"Each attempt scored on the {gate['split']} split "
            f"({gate['slices_per_volume'] or 'all'} slices per volume) against the float model "
            f"({quantization['reference']['psnr']:.2f} dB); the stage's gate: at most "
            f"{gate['max_psnr_drop_db']} dB and {gate['max_ssim_drop']} SSIM lost"
            + (
                f", judged on the real scans ({quantization['reference']['gated']['psnr']:.2f} dB there; "
                "PSNR is over every slice, the changes against the float model over the real scans)."
                if gate.get("scored_on") == "real_scans"
                else "."
            ),
            "",
            "QAT files are converted from the fake-quantized torch model; their export check is the "
            "largest output difference from it on a calibration input.",
            "",
            "| runtime | attempt | convs kept in float | calibration slices | PSNR dB | vs float dB | SSIM "
            "vs float | met | export check |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for runtime, entry in quantization["runtimes"].items():
            for i, attempt in enumerate(entry["attempts"]):
                chosen = " (kept)" if i == entry["chosen"] else ""
                check = attempt.get("export_max_abs_error")
                lines.append(
                    f"| {runtime} | {attempt['remedy']}{chosen} | {len(attempt['keep_fp'])} | "
                    f"{attempt['calibration_slices']} | {attempt['psnr']:.2f} | "
                    f"{-attempt['psnr_drop_db']:+.3f} | {-attempt['ssim_drop']:+.4f} | "
                    f"{'yes' if attempt['met_gate'] else 'no'} | "
                    f"{'' if check is None else f'max abs {check:.2g}'} |"
                )
            for missing in entry.get("unavailable", []):
                reason = f"not available: {missing['reason']}"
                lines.append(f"| {runtime} | {missing['remedy']} | {reason} | | | | | | |")
    gate = report["gate"]
    verdict = "passed" if gate["passed"] else "missed"
    lines += [
        "",
        f"Gate {verdict}: the final model, {gate['final']}, loses {gate['psnr_drop_db']:.3f} dB PSNR "
        f"(at most {gate['max_psnr_drop_db']}) and {gate['ssim_drop']:.4f} SSIM "
        f"(at most {gate['max_ssim_drop']}) against the teacher in torch FP32{gate_scope(gate)}.",
        "",
        f"Final model: `{report['final_model']}`",
    ]
    for name, path in report.get("artifacts", {}).items():
        lines.append(f"- {name}: `{path}`")
    lines.append("")
    return "\n".join(lines)
