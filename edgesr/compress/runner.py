"""``edgesr compress``: run a recipe's stages in order, gate the result, and report every stage.

An output folder::

    recipe.resolved.yaml     the recipe as run (defaults and overrides filled in)
    1-distill/run/           the stage's training run (best/, last/, log.jsonl): resumable
    1-distill/model/         the stage's model: safetensors + checkpoint.json (spec, layer widths)
    1-distill/stage.json     written last: the stage finished (what ``resume=true`` skips)
    report.json, report.md   the teacher and every stage on the same images, timed the same way

A stage reads the previous stage's model and writes its own, so an interrupted run resumes from the
last finished stage, and a later stage can be re-run with other options (delete its folder, or give
it another ``name``) without redoing earlier ones.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from edgesr._io import write_json_atomic, write_text_atomic
from edgesr.bench.timing import machine_info, time_call
from edgesr.compress.distill import DistillSettings, distill
from edgesr.compress.prune import prune
from edgesr.compress.recipe import Recipe, Stage, stage_folder_name
from edgesr.config import to_yaml
from edgesr.data.dataset import PreparedDataset
from edgesr.errors import ConfigError, EdgesrError
from edgesr.evaluate import evaluate_model
from edgesr.models import create_model, model_task
from edgesr.models._probe import receptive_radius
from edgesr.pipeline import TorchPredictor
from edgesr.spec import ModelSpec
from edgesr.teachers import teacher_path
from edgesr.train.checkpoint import load_for_inference, read_metadata, save_checkpoint
from edgesr.train.distributed import init_distributed

STAGE_DONE = "stage.json"


@dataclass
class Candidate:
    """A model in the chain: the teacher, or a stage's result."""

    name: str
    model: nn.Module
    model_name: str
    model_options: dict[str, Any]
    spec: ModelSpec
    folder: Path


def _teacher(recipe: Recipe) -> Candidate:
    folder = Path(recipe.teacher) if Path(recipe.teacher).exists() else teacher_path(recipe.teacher)
    model, spec, meta = load_for_inference(folder)
    return Candidate("teacher", model, meta["model"], meta["model_options"], spec, folder)


def _student_spec(spec: ModelSpec, student: nn.Module) -> ModelSpec:
    """The teacher's contract with the student's own receptive radius (its tiles need their own halo)."""
    if spec.sr is None:
        return spec
    sr = type(spec.sr)(
        spec.sr.scale, spec.sr.degradation, spec.sr.upsampler, receptive_radius(student, spec.sr.scale)
    )
    return type(spec)(spec.task, spec.inputs, spec.outputs, spec.intensity, sr=sr, recon=spec.recon)


def _student(stage: Stage, previous: Candidate) -> tuple[nn.Module, str, dict[str, Any]]:
    """The model a distill stage trains: a registered preset fed like the teacher, or the previous model."""
    if not stage.student:
        return previous.model, previous.model_name, previous.model_options
    if model_task(stage.student) != previous.spec.task:
        raise ConfigError(
            f"stages: student {stage.student!r} is a {model_task(stage.student)} model; "
            f"the teacher is {previous.spec.task}"
        )
    # What the contract fixes comes from the teacher; the stage adds the rest (unrolls, widths...).
    fixed: dict[str, Any] = {}
    if previous.spec.sr is not None:
        fixed = {"scale": previous.spec.sr.scale, "upsampler": previous.spec.sr.upsampler}
    elif previous.spec.recon is not None and previous.spec.recon.coils:
        fixed = {"coils": previous.spec.recon.coils}
    options = fixed | dict(stage.student_options)
    return create_model(stage.student, **options), stage.student, options


def _run_stage(
    index: int,
    stage: Stage,
    previous: Candidate,
    teacher: Candidate,
    *,
    recipe: Recipe,
    dataset: PreparedDataset,
    out: Path,
    resume: bool,
    console: Console,
) -> Candidate:
    folder = out / stage_folder_name(index, stage)
    model_dir = folder / "model"
    if (folder / STAGE_DONE).is_file():
        if not resume:
            raise ConfigError(
                f"{folder} holds a finished stage; pass resume=true to reuse it, or choose another out="
            )
        model, spec, meta = load_for_inference(model_dir)
        console.print(f"stage {index + 1} ({stage.kind}) finished earlier: {escape(str(model_dir))}")
        return Candidate(folder.name, model, meta["model"], meta["model_options"], spec, model_dir)
    started = time.perf_counter()
    torch.manual_seed(recipe.seed + index)
    if stage.kind == "prune":
        # Structured pruning of the previous model, then distillation from the unpruned teacher.
        name, options = previous.model_name, previous.model_options
        example = tuple(_latency_inputs(previous.spec, 64).values())
        student = prune(
            previous.model, example, ratio=None if stage.target_macs else stage.ratio,
            target_macs=stage.target_macs or None, importance=stage.importance, round_to=stage.round_to,
        )  # fmt: skip
    else:
        student, name, options = _student(stage, previous)
    spec = _student_spec(teacher.spec, student)
    if stage.steps == 0:  # a prune stage without fine-tuning: the pruned model is the stage's model
        save_checkpoint(model_dir, student, model_name=name, model_options=options, spec=spec, step=0,
                        config={"recipe": _plain(recipe), "stage": index})  # fmt: skip
        write_json_atomic(
            folder / STAGE_DONE,
            {"kind": stage.kind, "model": name, "seconds": round(time.perf_counter() - started, 1)},
        )
        return Candidate(folder.name, student.eval(), name, options, spec, model_dir)
    settings = DistillSettings(
        steps=stage.steps, lr=stage.lr, warmup=stage.warmup, batch_size=stage.batch_size, patch=stage.patch,
        crop=stage.crop, output_weight=stage.output_weight, target_weight=stage.target_weight,
        eval_every=stage.eval_every, seed=recipe.seed + index,
    )  # fmt: skip
    run_dir = folder / "run"
    distill(
        teacher.model,
        student,
        spec=spec,
        student_name=name,
        student_options=options,
        dataset=dataset,
        settings=settings,
        out=run_dir,
        env=init_distributed(recipe.device),
        config={"recipe": _plain(recipe), "stage": index},
        resume=resume and (run_dir / "last").exists(),
        console=console,
    )
    reached = read_metadata(run_dir / "last")["step"]
    if reached < stage.steps:  # Ctrl-C or SIGTERM: fit saved last/ and returned early
        raise EdgesrError(
            f"stage {index + 1} ({stage.kind}) stopped at step {reached} of {stage.steps}; "
            "run the same command with resume=true to continue it"
        )
    # The stage's model is its best validation checkpoint (the run keeps last/ for resumption).
    best, _, best_meta = load_for_inference(run_dir / "best")
    save_checkpoint(
        model_dir, best, model_name=name, model_options=options, spec=spec, step=best_meta["step"],
        metrics=best_meta["metrics"], config=best_meta["config"], machine=best_meta.get("machine"),
    )  # fmt: skip
    write_json_atomic(
        folder / STAGE_DONE,
        {"kind": stage.kind, "model": name, "seconds": round(time.perf_counter() - started, 1)},
    )
    return Candidate(folder.name, best.eval(), name, options, spec, model_dir)


def _plain(recipe: Recipe) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(recipe)))


def _latency_inputs(spec: ModelSpec, size: int) -> dict[str, torch.Tensor]:
    """One input of the recipe's output size, built as the pipeline builds it."""
    generator = torch.Generator().manual_seed(0)
    if spec.sr is not None:
        s = spec.sr.scale
        lr = torch.rand(1, 1, size // s, size // s, generator=generator)
        return {"lr": lr, "base": torch.rand(1, 1, (size // s) * s, (size // s) * s, generator=generator)}
    coils = spec.recon.coils if spec.recon is not None and spec.recon.coils else 8
    mask = torch.zeros(1, 1, 1, size)
    mask[..., ::4] = 1
    mask[..., size // 2 - 8 : size // 2 + 8] = 1
    return {
        "masked_kspace": torch.randn(1, 2 * coils, size, size, generator=generator) * mask,
        "mask": mask,
        "sens_maps": torch.randn(1, 2 * coils, size, size, generator=generator) / coils,
    }


def _measure(candidate: Candidate, recipe: Recipe) -> dict[str, Any]:
    predictor = TorchPredictor(candidate.model, candidate.spec, device="cpu")
    inputs = _latency_inputs(candidate.spec, recipe.latency_size)
    latency = time_call(lambda: predictor(inputs), warmup=3, repeats=recipe.latency_repeats)
    return {"runtime": "torch", "precision": "fp32", "executed_precision": "fp32", "latency_ms": latency}


def _model_row(candidate: Candidate, scores: dict[str, Any]) -> dict[str, Any]:
    params = sum(p.numel() for p in candidate.model.parameters())
    return {"name": candidate.name, "model": candidate.model_name, "params": params, **scores}


def _scores(report: dict[str, Any], label: str) -> dict[str, Any]:
    row = next(r for r in report["results"] if r["method"] == label)
    return {"psnr": row["psnr_db"], "ssim": row["ssim"], "psnr_min": row["psnr_min_db"]}


def compress(
    recipe: Recipe, *, out: Path, resume: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """Runs ``recipe`` into ``out`` and returns the report (also written as report.json and report.md)."""
    console = console or Console(stderr=True)
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    if out.exists() and any(out.iterdir()) and not (out / "recipe.resolved.yaml").is_file():
        raise ConfigError(f"out={out} holds files that are not a compression run; choose another out=")
    teacher = _teacher(recipe)
    dataset = PreparedDataset(recipe.data_root or None)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "recipe.resolved.yaml", to_yaml(recipe))
    chain = [teacher]
    for index, stage in enumerate(recipe.stages):
        console.print(f"[bold]stage {index + 1}/{len(recipe.stages)}[/]: {stage.kind}")
        result = _run_stage(
            index, stage, chain[-1], teacher, recipe=recipe, dataset=dataset, out=out, resume=resume,
            console=console,
        )  # fmt: skip
        chain.append(result)
    report = _report(recipe, chain, dataset, console)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_markdown(report))
    return report


def _report(
    recipe: Recipe, chain: list[Candidate], dataset: PreparedDataset, console: Console
) -> dict[str, Any]:
    """Every model of the chain on the same images (with the baselines), and timed the same way."""
    models: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    teacher_latency = None
    for candidate in chain:
        label = candidate.name
        with console.status(f"scoring {label} on the {recipe.eval_split} split"):
            evaluation = evaluate_model(
                candidate.spec, TorchPredictor(candidate.model, candidate.spec, device="cpu"), dataset,
                label=label, split=recipe.eval_split, max_slices=recipe.eval_slices,
            )  # fmt: skip
        scores = _scores(evaluation, label)
        if not baselines:
            first_setting = {
                k: evaluation["results"][0].get(k) for k in ("task", "modality", "scale", "acceleration")
            }
            baselines = [
                {"name": r["method"], "psnr": r["psnr_db"], "ssim": r["ssim"]}
                for r in evaluation["results"]
                if r["method"] != label and all(r.get(k) == v for k, v in first_setting.items())
            ]
        with console.status(f"timing {label}"):
            run = _measure(candidate, recipe)
        teacher_latency = teacher_latency or run["latency_ms"]["p50"]
        models.append(_model_row(candidate, scores))
        runs.append(
            {"name": f"{label}/torch/fp32", "model": "teacher" if candidate is chain[0] else "student", **run,
             "psnr": scores["psnr"], "ssim": scores["ssim"],
             "psnr_vs_teacher_db": round(scores["psnr"] - models[0]["psnr"], 3),
             "speedup_vs_teacher_torch_fp32": round(teacher_latency / run["latency_ms"]["p50"], 2)}
        )  # fmt: skip
    final, teacher = models[-1], models[0]
    modality = chain[0].spec.intensity.modality  # recon scores MR slices too
    scored = dataset.volumes(modality)
    psnr_drop = round(teacher["psnr"] - final["psnr"], 3)
    ssim_drop = round(teacher["ssim"] - final["ssim"], 4)
    return {
        "recipe": _plain(recipe),
        "task": chain[0].spec.task,
        "dataset": {"sources": [v["name"] for v in scored], "split": recipe.eval_split,
                    "max_slices_per_volume": recipe.eval_slices,
                    # The fingerprint: which files the figures come from.
                    "input_sha256": {v["name"]: v["input_sha256"] for v in scored}},
        "baselines": baselines,
        "teacher": teacher,
        "stages": models[1:],
        "gate": {"max_psnr_drop_db": recipe.max_psnr_drop_db, "max_ssim_drop": recipe.max_ssim_drop,
                 "psnr_drop_db": psnr_drop, "ssim_drop": ssim_drop,
                 "passed": psnr_drop <= recipe.max_psnr_drop_db and ssim_drop <= recipe.max_ssim_drop},
        "machine": machine_info(),
        "runs": runs,
        "final_model": str(chain[-1].folder),
    }  # fmt: skip


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the same figures as report.json, for people."""
    lines = [
        f"# Compression report: {report['recipe']['teacher']}",
        "",
        f"Task {report['task']}; scored on the {report['dataset']['split']} split of "
        f"{', '.join(report['dataset']['sources'])}; timed on {report['machine']['cpu']} "
        f"({report['machine']['torch_threads']} torch threads, "
        f"load {report['machine'].get('load_average_1min')}).",
        "",
        "| model | params | PSNR dB | SSIM | vs teacher dB | runtime | p50 ms | p90 ms | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, run in zip([report["teacher"], *report["stages"]], report["runs"], strict=True):
        lines.append(
            f"| {row['name']} ({row['model']}) | {row['params']:,} | {row['psnr']:.2f} | {row['ssim']:.4f} | "
            f"{run['psnr_vs_teacher_db']:+.2f} | {run['runtime']} {run['executed_precision']} | "
            f"{run['latency_ms']['p50']:.1f} | {run['latency_ms']['p90']:.1f} | "
            f"{run['speedup_vs_teacher_torch_fp32']:.2f}x |"
        )
    lines += [
        "",
        "Baselines: "
        + ", ".join(f"{b['name']} {b['psnr']:.2f} dB / {b['ssim']:.4f}" for b in report["baselines"]),
    ]
    gate = report["gate"]
    verdict = "passed" if gate["passed"] else "missed"
    lines += [
        "",
        f"Gate {verdict}: the final model loses {gate['psnr_drop_db']:.3f} dB PSNR (at most "
        f"{gate['max_psnr_drop_db']}) and {gate['ssim_drop']:.4f} SSIM (at most {gate['max_ssim_drop']}) "
        "against the teacher.",
        "",
        f"Final model: `{report['final_model']}`",
        "",
    ]
    return "\n".join(lines)
