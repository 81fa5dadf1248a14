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

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from edgesr._io import write_json_atomic, write_text_atomic
from edgesr.bench.timing import latency_inputs
from edgesr.compress.distill import DistillSettings, distill, distillation_batches, teacher_training_data
from edgesr.compress.prune import keep_blocks, prune
from edgesr.compress.recipe import Recipe, Stage, stage_folder_name
from edgesr.compress.report import build_report, render_markdown
from edgesr.config import to_yaml
from edgesr.data.dataset import PreparedDataset, open_or_prepare
from edgesr.data.prepare import training_data
from edgesr.device import bf16_training, pick_device
from edgesr.errors import ConfigError, DataError, EdgesrError
from edgesr.models import create_model, model_task
from edgesr.models._probe import receptive_radius
from edgesr.pipeline import TorchPredictor
from edgesr.spec import ModelSpec, recon_spec
from edgesr.teachers import teacher_path
from edgesr.train.checkpoint import (
    checkpoint_exists,
    load_for_inference,
    read_metadata,
    read_spec,
    save_checkpoint,
    weights_sha256,
)
from edgesr.train.data import CropTooLarge, check_recon_crop, check_sr_patch
from edgesr.train.distributed import DistEnv, barrier, init_distributed
from edgesr.train.fit import discard_run_without_checkpoint

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
    # A quantize stage: its INT8 files by runtime, the float ONNX, and its quantization.json summary.
    artifacts: dict[str, Path] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    # A student re-distilled from a checkpoint (student_init): which one, and its weights' sha256.
    started_from: dict[str, str] = field(default_factory=dict)


def _teacher(recipe: Recipe) -> Candidate:
    folder = Path(recipe.teacher) if Path(recipe.teacher).exists() else teacher_path(recipe.teacher)
    model, spec, meta = load_for_inference(folder)
    return Candidate("teacher", model, meta["model"], meta["model_options"], spec, folder)


def _student_spec(spec: ModelSpec, student: nn.Module, *, coils: int = 0) -> ModelSpec:
    """The teacher's contract with the student's own receptive radius (its tiles need their own halo),
    or (recon) its own coil count: the pipeline compresses acquisitions to ``coils`` virtual coils."""
    if spec.recon is not None and coils:
        return recon_spec(coils=coils, map_estimation=spec.recon.map_estimation)
    if spec.sr is None:
        return spec
    sr = type(spec.sr)(
        spec.sr.scale, spec.sr.degradation, spec.sr.upsampler, receptive_radius(student, spec.sr.scale)
    )
    return type(spec)(spec.task, spec.inputs, spec.outputs, spec.intensity, sr=sr, recon=spec.recon)


def _student(stage: Stage, previous: Candidate, console: Console) -> tuple[nn.Module, str, dict[str, Any]]:
    """The model a distill stage trains: a registered preset fed like the teacher, an existing student
    (``student_init`` a checkpoint), or the previous model."""
    if stage.starts_from_checkpoint:
        return _existing_student(stage, previous, console)
    if not stage.student:  # a copy: the previous stage's model stays as that stage left it
        return copy.deepcopy(previous.model), previous.model_name, previous.model_options
    _check_student_task("stages.student", stage.student, previous.spec)
    options = _student_options(stage, previous.spec)
    student = create_model(stage.student, **options)
    if stage.student_init == "teacher":
        shared, total = _init_from(student, previous)
        console.print(f"student starts from {previous.model_name}'s weights: {shared} of {total} tensors")
    return student, stage.student, options


def _check_student_task(key: str, student: str, teacher: ModelSpec) -> None:
    if model_task(student) != teacher.task:
        raise ConfigError(
            f"{key}={student!r} is a {model_task(student)} model; the teacher is {teacher.task}"
        )


def _student_options(stage: Stage, spec: ModelSpec) -> dict[str, Any]:
    """A preset student's builder options: what the contract fixes comes from the teacher's spec, the
    stage adds the rest (unrolls, CG steps...)."""
    fixed: dict[str, Any] = {}
    if spec.sr is not None:
        fixed = {"scale": spec.sr.scale, "upsampler": spec.sr.upsampler}
    elif spec.recon is not None and spec.recon.coils:
        fixed = {"coils": spec.recon.coils}
    return fixed | dict(stage.student_options)


def _student_init_folder(stage: Stage) -> Path:
    """The checkpoint a ``student_init`` names: a folder, else a shipped model."""
    if Path(stage.student_init).is_dir():
        return Path(stage.student_init)
    try:
        return teacher_path(stage.student_init)
    except ConfigError as exc:
        raise ConfigError(
            f"stages.student_init={stage.student_init!r}: not scratch, teacher, a checkpoint folder or a "
            f"shipped model ({exc})"
        ) from None


def _started_from(stage: Stage) -> dict[str, str]:
    """Which existing student a stage starts from, and its weights' sha256 (empty: none)."""
    if not stage.starts_from_checkpoint:
        return {}
    folder = _student_init_folder(stage)
    return {"student_init": stage.student_init, "weights_sha256": weights_sha256(folder)}


def _existing_student(
    stage: Stage, previous: Candidate, console: Console
) -> tuple[nn.Module, str, dict[str, Any]]:
    """A trained student (shipped or a stage's model) to re-distil, e.g. from a re-trained teacher.

    Its contract must be the teacher's (task, scale, upsampler, modality, coils): a student made for
    another teacher would be trained towards outputs it cannot produce.
    """
    folder = _student_init_folder(stage)
    model, spec, meta = load_for_inference(folder)
    model.train()
    _check_contract(f"stages.student_init={stage.student_init!r}", spec, previous.spec)
    console.print(
        f"student starts as {escape(str(folder))} ({meta['model']}, weights {weights_sha256(folder)[:12]})"
    )
    return model, meta["model"], meta["model_options"]


def _check_existing_student(index: int, stage: Stage, teacher: ModelSpec) -> None:
    """A ``student_init`` checkpoint exists and fits the teacher: checked before stage 1 runs."""
    try:
        folder = _student_init_folder(stage)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("stages.", f"stages.{index}.", 1)) from None
    try:
        spec = read_spec(read_metadata(folder), folder)
    except DataError as exc:
        raise ConfigError(f"stages.{index}.student_init={stage.student_init!r}: {exc}") from None
    _check_contract(f"stages.{index}.student_init={stage.student_init!r}", spec, teacher)


def _check_contract(key: str, student: ModelSpec, teacher: ModelSpec) -> None:
    mine, theirs = _contract_key(student), _contract_key(teacher)
    if theirs.get("coils") == 0:  # a teacher of any coil count: a student of compressed coils fits it
        mine.pop("coils", None), theirs.pop("coils", None)
    if mine != theirs:
        raise ConfigError(f"{key}: the student's contract {mine} is not the teacher's {theirs}")


def _contract_key(spec: ModelSpec) -> dict[str, Any]:
    """What a student must share with its teacher to be distilled from it."""
    key: dict[str, Any] = {"task": spec.task, "modality": spec.intensity.modality}
    if spec.sr is not None:
        key |= {"scale": spec.sr.scale, "degradation": spec.sr.degradation, "upsampler": spec.sr.upsampler}
    if spec.recon is not None:
        key |= {"coils": spec.recon.coils}
    return key


def _init_from(student: nn.Module, previous: Candidate) -> tuple[int, int]:
    """Copies every tensor of ``previous`` whose name and shape the student shares (warm start).

    A MoDL student with fewer unrolls shares the whole denoiser; a student with the teacher's blocks
    but fewer of them shares the first ones. Nothing shared is a recipe error, not a silent cold start.
    """
    source = previous.model.state_dict()
    target = student.state_dict()
    shared = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    if not shared:
        raise ConfigError(
            f"stages.student_init=teacher: the student shares no tensor (name and shape) with "
            f"{previous.model_name}; use student_init=scratch"
        )
    student.load_state_dict(shared, strict=False)
    return len(shared), len(target)


# Left out of a stage's fingerprint: how long it ran and how often it validated. A run stopped at step
# 468 of 800 can be reported as finished at 468 (README) without redoing it.
# amp is fingerprinted by its effect (below): on hardware without bf16 units it changes nothing.
_NOT_FINGERPRINTED = ("steps", "eval_every", "qat_eval_every", "amp")


def _fingerprints(
    index: int,
    stage: Stage,
    previous: Candidate,
    recipe: Recipe,
    dataset: PreparedDataset,
    started_from: dict[str, str],
) -> tuple[str, set[str]]:
    """What a finished stage was made from: its options, the previous model's weights, seed and data, and
    for a quantize stage the gate (which steers its remedies). Returns the fingerprint and the earlier
    forms of it that a finished stage may still carry.

    A finished stage is reused (``resume=true``) only when its fingerprint is one of these: a stage re-run
    with other options, or an earlier stage re-run since, makes every later stage's fingerprint differ.
    Earlier forms: until 2026-12-01 every stage's fingerprint held the gate (a distillation does not read
    it, and a run whose final model missed the gate is shipped by loosening the gate and resuming, not by
    training again); stages finished before ``keep_blocks`` existed (2026-11-30) have no such key.
    """
    # Hashed once for the three forms (the weights hash reads every tensor of the previous stage).
    previous_weights = weights_sha256(previous.folder)
    data_id = training_data(dataset.manifest, previous.spec.intensity.modality)["id"]
    device, trains = pick_device(recipe.device), stage.kind != "quantize" and stage.steps > 0

    def fingerprint(*, gate_in_every_stage: bool = False, before_keep_blocks: bool = False) -> str:
        options = {k: v for k, v in dataclasses.asdict(stage).items() if k not in _NOT_FINGERPRINTED}
        for added in ("coils", "target_params"):  # added 2026-12-01: stages finished before keep theirs
            if not options[added]:
                del options[added]
        if before_keep_blocks and not options["keep_blocks"]:
            del options["keep_blocks"]
        made_of = {
            "stage": options,
            "previous_weights_sha256": previous_weights,
            # A student started from a checkpoint is made of its weights too (only added then, so other
            # stages keep their fingerprints).
            **({"student_init_sha256": started_from["weights_sha256"]} if started_from else {}),
            "seed": recipe.seed + index,
            **(
                {"gate": [recipe.max_psnr_drop_db, recipe.max_ssim_drop]}
                if stage.kind == "quantize" or gate_in_every_stage
                else {}
            ),
            # Which slices judge the INT8 attempts (the quantize stage picks by it); only added when not
            # every slice, what stages were judged on before the key existed.
            **({"gate_on": recipe.gate_on} if stage.kind == "quantize" and recipe.gate_on != "all" else {}),
            # A stage that trained under bf16 autocast is another model than the same stage in fp32 (only
            # added then: stages trained in fp32, on any hardware, keep their fingerprints).
            **({"bf16_autocast": True} if trains and stage.amp and bf16_training(device) else {}),
            # steps are left out (above), but a stage of no steps made an untrained model: raising its
            # steps must redo it. (Only added when true, so trained stages keep their fingerprints.)
            **({"untrained": True} if stage.kind != "quantize" and stage.steps == 0 else {}),
            # Only the slices a stage reads (train, val): adding an external source re-scores a finished
            # run (resume=true) without redoing its stages.
            "training_data": data_id,
        }
        return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()

    earlier = {
        fingerprint(gate_in_every_stage=True),
        fingerprint(gate_in_every_stage=True, before_keep_blocks=True),
    }
    return fingerprint(), earlier


def _mark_done(folder: Path, stage: Stage, model_name: str, started: float, fingerprint: str) -> None:
    """stage.json, written last: the stage finished (``resume=true`` reuses it) and what it was made from."""
    write_json_atomic(
        folder / STAGE_DONE,
        {"kind": stage.kind, "model": model_name, "seconds": round(time.perf_counter() - started, 1),
         "fingerprint": fingerprint},
    )  # fmt: skip


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
    started_from: dict[str, str],
    env: DistEnv,
) -> Candidate:
    """One stage (a quantize stage on rank 0 only). Under torchrun every rank builds the same student
    and trains its share of each batch; rank 0 writes, and the others wait for its files."""
    folder = out / stage_folder_name(index, stage)
    model_dir = folder / "model"
    # Stages finished before the gate left non-quantize fingerprints and, earlier, before keep_blocks
    # existed carry earlier forms (see _fingerprints): still reused on resume.
    fingerprint, earlier_forms = _fingerprints(index, stage, previous, recipe, dataset, started_from)
    if (folder / STAGE_DONE).is_file():
        if not resume:  # compress() checks this before it writes anything; kept here for direct callers
            raise ConfigError(
                f"{folder} holds a finished stage; pass resume=true to reuse it, or choose another out="
            )
        done = json.loads((folder / STAGE_DONE).read_text(encoding="utf-8"))
        if "fingerprint" not in done:
            console.print(f"[yellow]{escape(str(folder))} predates stage fingerprints: reused unchecked[/]")
        elif done["fingerprint"] != fingerprint and done["fingerprint"] not in earlier_forms:
            raise ConfigError(
                f"stages.{index}: {folder} was made with other options or from another model (the stage's "
                "options, the previous stage's weights, the seed, the data set"
                + (" or the gate" if stage.kind == "quantize" else "")
                + " differ); delete the folder to redo it with these, or choose another out="
            )
        model, spec, meta = load_for_inference(model_dir)
        console.print(f"stage {index + 1} ({stage.kind}) finished earlier: {escape(str(model_dir))}")
        candidate = Candidate(folder.name, model, meta["model"], meta["model_options"], spec, model_dir)
        if stage.kind == "quantize":
            _attach_quantization(candidate, folder)
        return candidate
    started = time.perf_counter()
    torch.manual_seed(recipe.seed + index)
    if stage.kind == "quantize":
        return _quantize_stage(
            index, stage, previous, teacher, recipe=recipe, dataset=dataset, folder=folder, resume=resume,
            console=console, fingerprint=fingerprint,
        )  # fmt: skip
    if stage.kind == "prune":
        # Structured pruning of the previous model, then distillation from the unpruned teacher.
        name, options = previous.model_name, previous.model_options
        # At the report's output size, so that a target_macs read off report.md means the same MACs.
        example = tuple(latency_inputs(previous.spec, recipe.latency_size).values())
        taylor = (
            _taylor_loss(stage, previous, teacher, recipe.seed + index, dataset)
            if stage.importance == "taylor"
            else None
        )
        try:
            student = prune(
                previous.model, example,
                ratio=None if stage.target_macs or stage.target_params else stage.ratio,
                target_macs=stage.target_macs or None, target_params=stage.target_params or None,
                importance=stage.importance, round_to=stage.round_to, taylor_loss=taylor,
            )  # fmt: skip
            if stage.keep_blocks:  # then depth: fewer dense blocks (their channels already pruned)
                student = keep_blocks(student, stage.keep_blocks)
        except ValueError as exc:  # options this model cannot honour (nothing removed, MACs unreachable)
            raise ConfigError(f"stages.{index}: {exc}") from None
    else:
        student, name, options = _student(stage, previous, console)
    # A student of compressed coils: the stage's coils, or those of the checkpoint it starts from.
    coils = stage.coils
    if not coils and stage.starts_from_checkpoint and teacher.spec.recon is not None:
        folder_of_student = _student_init_folder(stage)
        existing = read_spec(read_metadata(folder_of_student), folder_of_student)
        if existing.recon is not None and not teacher.spec.recon.coils:
            coils = existing.recon.coils
    spec = _student_spec(teacher.spec, student, coils=coils)
    if stage.steps == 0:  # no training (a prune without fine-tuning, the teacher's weights re-optioned)
        if env.is_main:
            save_checkpoint(model_dir, student, model_name=name, model_options=options, spec=spec, step=0,
                            config={"recipe": _plain(recipe), "stage": index})  # fmt: skip
            _mark_done(folder, stage, name, started, fingerprint)
        barrier(env)
        return Candidate(folder.name, student.eval(), name, options, spec, model_dir)
    settings = _distill_settings(stage, seed=recipe.seed + index, teacher=teacher)
    run_dir = folder / "run"
    resuming = resume and checkpoint_exists(run_dir / "last")
    if not resuming and env.is_main:  # a stage killed before its first checkpoint starts over
        discard_run_without_checkpoint(run_dir)
    barrier(env)
    # Training time of earlier, interrupted invocations: the stage's seconds are the whole stage's.
    earlier = float(read_metadata(run_dir / "last")["metrics"].get("train_seconds", 0.0)) if resuming else 0.0
    distill(
        teacher.model,
        student,
        spec=spec,
        student_name=name,
        student_options=options,
        dataset=dataset,
        settings=settings,
        out=run_dir,
        env=env,
        config={"recipe": _plain(recipe), "stage": index, "data": _batches_record(settings)},
        resume=resuming,
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
    if env.is_main:
        save_checkpoint(
            model_dir, best, model_name=name, model_options=options, spec=spec, step=best_meta["step"],
            metrics=best_meta["metrics"], config=best_meta["config"], machine=best_meta.get("machine"),
        )  # fmt: skip
        _mark_done(folder, stage, name, started - earlier, fingerprint)
    barrier(env)
    return Candidate(folder.name, best.eval(), name, options, spec, model_dir)


TAYLOR_BATCHES = 4  # training batches whose loss gradients score the channels (Taylor importance)


def _taylor_loss(
    stage: Stage, previous: Candidate, teacher: Candidate, seed: int, dataset: PreparedDataset
) -> Callable[[nn.Module], torch.Tensor]:
    """The prune stage's own objective on a few of its training batches, for Taylor importance: the
    stage's weights on the teacher's output and on the ground truth (L1), as its fine-tuning weighs
    them. Channels whose removal would change that loss least go first."""
    theirs, ours = teacher.spec.recon, previous.spec.recon
    if theirs is not None and ours is not None and theirs.coils != ours.coils:
        raise ConfigError(
            f"importance: taylor scores channels on the teacher's batches ({theirs.coils} coils), but the "
            f"model to prune takes {ours.coils}; use l1, l2 or lamp"
        )
    settings = _distill_settings(stage, seed=seed, teacher=teacher)
    stream = distillation_batches(teacher.spec, dataset, settings)
    batches = []
    with torch.no_grad():
        for step in range(TAYLOR_BATCHES):
            batch = stream.batch(step)
            inputs = tuple(batch[:2] if teacher.spec.sr is not None else batch[:3])  # SR: lr, base
            batches.append((inputs, teacher.model(*inputs), batch[-1]))  # the last: hr or target

    def loss(model: nn.Module) -> torch.Tensor:
        total = torch.zeros(())
        for inputs, teacher_output, target in batches:
            output = model(*inputs)
            total = total + stage.output_weight * (output - teacher_output).abs().mean()
            total = total + stage.target_weight * (output - target).abs().mean()
        return total / len(batches)

    return loss


def _batches_record(settings: DistillSettings) -> dict[str, Any]:
    """What the stage's batches were drawn with, for the student's checkpoint and card."""
    return {"noise_max": settings.noise_max, **dataclasses.asdict(settings.variety)}


def _distill_settings(stage: Stage, *, seed: int, teacher: Candidate) -> DistillSettings:
    """The training options of a distill or prune stage (and the base of a quantize stage's QAT); the
    batches are drawn as the teacher's were (its noise range and scanner variety)."""
    noise_max, variety = teacher_training_data(teacher.folder)
    return DistillSettings(
        steps=stage.steps, lr=stage.lr, warmup=stage.warmup, batch_size=stage.batch_size, patch=stage.patch,
        crop=stage.crop, output_weight=stage.output_weight, target_weight=stage.target_weight,
        eval_every=stage.eval_every, seed=seed,
        feature_layers=tuple(stage.feature_layers) if stage.feature_weight > 0 else (),
        feature_weight=stage.feature_weight, perceptual_weight=stage.perceptual_weight,
        adversarial_weight=stage.adversarial_weight, disc_lr=stage.disc_lr,
        perceptual_steps=stage.perceptual_steps, select_by=stage.select_by, noise_max=noise_max,
        variety=variety, amp=stage.amp,
    )  # fmt: skip


def _quantize_stage(
    index: int,
    stage: Stage,
    previous: Candidate,
    teacher: Candidate,
    *,
    recipe: Recipe,
    dataset: PreparedDataset,
    folder: Path,
    resume: bool,
    console: Console,
    fingerprint: str,
) -> Candidate:
    """INT8 artifacts of the previous stage's model, one per runtime, gated against that float model.

    The stage folder holds the float model it quantized (``model/``, so the stage rebuilds without the
    earlier ones), its ONNX export, the INT8 files and ``quantization.json`` (every attempt).
    """
    from edgesr.compress.quantize import QatPlan, QuantizeSettings, Scope, quantize
    from edgesr.export.build import fft_for
    from edgesr.export.onnx import export_onnx, int8_unroll

    started = time.perf_counter()
    model_dir = folder / "model"
    save_checkpoint(
        model_dir, previous.model, model_name=previous.model_name, model_options=previous.model_options,
        spec=previous.spec, step=0, config={"recipe": _plain(recipe), "stage": index},
    )  # fmt: skip
    onnx_path = folder / "model.onnx"
    # INT8 runs its float layers at OpenVINO's default (BF16 here): see edgesr.export.build.fft_form.
    fft = fft_for(previous.model, runtimes=stage.runtimes, precisions=["int8"], default="matmul")
    with console.status("exporting the float model to ONNX"):
        export_onnx(
            previous.model, previous.spec, latency_inputs(previous.spec, 64), onnx_path, fft=fft,
            unroll=int8_unroll(previous.model),  # the quantizers do not enter Loop bodies (MoDL's unrolls)
            fold=False,  # quantized as trained: QAT and the cards' INT8 settings name its layers
        )  # fmt: skip
    settings = QuantizeSettings(
        runtimes=tuple(stage.runtimes),
        calibration_slices=stage.calibration_slices,
        scope=Scope(
            ends=stage.keep_fp_ends, upsampler=stage.keep_fp_upsampler,
            modules=tuple(stage.keep_fp_modules), patterns=tuple(stage.keep_fp_patterns),
        ),
        remedies=tuple(stage.remedies),
        max_psnr_drop_db=stage.gate_psnr_drop_db if stage.gate_psnr_drop_db >= 0 else recipe.max_psnr_drop_db,
        max_ssim_drop=stage.gate_ssim_drop if stage.gate_ssim_drop >= 0 else recipe.max_ssim_drop,
        val_slices=stage.gate_slices, gate_on=recipe.gate_on,
    )  # fmt: skip
    qat = None
    if "qat" in stage.remedies:  # fine-tuned from the float model, towards it (see edgesr.compress.qat)
        base = _distill_settings(stage, seed=recipe.seed + index, teacher=teacher)
        qat_settings = dataclasses.replace(
            base, steps=stage.qat_steps, lr=stage.qat_lr, warmup=min(stage.warmup, stage.qat_steps),
            eval_every=stage.qat_eval_every,
        )  # fmt: skip
        qat = QatPlan(previous.model, previous.model_name, previous.model_options, qat_settings)
    quantize(
        onnx_path, TorchPredictor(previous.model, previous.spec, device="cpu"), spec=previous.spec,
        dataset=dataset, settings=settings, out=folder, threads=recipe.threads, qat=qat, resume=resume,
        console=console,
    )  # fmt: skip
    _mark_done(folder, stage, previous.model_name, started, fingerprint)
    candidate = Candidate(
        folder.name, previous.model, previous.model_name, previous.model_options, previous.spec, model_dir
    )
    _attach_quantization(candidate, folder)
    return candidate


def _attach_quantization(candidate: Candidate, folder: Path) -> None:
    summary = json.loads((folder / "quantization.json").read_text(encoding="utf-8"))
    candidate.quantization = summary
    candidate.artifacts = {"onnx": folder / "model.onnx"} | {
        runtime: _artifact_path(folder, entry["artifact"]) for runtime, entry in summary["runtimes"].items()
    }


def _artifact_path(folder: Path, recorded: str) -> Path:
    """An INT8 file named in quantization.json: relative to the stage folder (runs before 0.2 recorded
    the path as given, relative to where the run was started)."""
    inside = folder / recorded
    return inside if inside.exists() or not Path(recorded).exists() else Path(recorded)


def _plain(recipe: Recipe) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(recipe)))


def _dataset(recipe: Recipe, console: Console) -> PreparedDataset:
    return open_or_prepare(recipe.data_root, console)


def _check_splits(recipe: Recipe, spec: ModelSpec, dataset: PreparedDataset) -> None:
    """The splits the recipe draws on hold slices of the teacher's modality: train (every stage
    trains or calibrates on it), val (where a stage trains) and the split every model is scored on.
    Checked first, not after an hour of distillation (a site's data set may lack one)."""
    modality = spec.intensity.modality if spec.sr is not None else "MR"
    trains = any(
        (stage.steps > 0 if stage.kind != "quantize" else "qat" in stage.remedies) for stage in recipe.stages
    )
    for split in dict.fromkeys(("train", *(("val",) if trains else ()), recipe.eval_split)):
        if next(dataset.slices(split, modality), None) is None:
            raise DataError(dataset.no_slices(split, modality))


def _check_training_options(recipe: Recipe, spec: ModelSpec, dataset: PreparedDataset) -> None:
    """Every stage that trains gets a patch (SR) or crop (recon) its training slices can give, checked
    before stage 1 runs rather than at the step that first draws the smallest slice."""
    for index, stage in enumerate(recipe.stages):
        if stage.starts_from_checkpoint:
            _check_existing_student(index, stage, spec)
        if stage.coils and (spec.recon is None or spec.recon.coils):
            raise ConfigError(
                f"stages.{index}.coils={stage.coils}: only for a recon teacher that takes any number of "
                "coils (MoDL); "
                + (
                    "this teacher is SR"
                    if spec.recon is None
                    else f"this one's network fixes {spec.recon.coils}"
                )
            )
        if stage.kind == "distill" and stage.student:
            # Built once here (small, seconds at most), so that an option of the wrong type or value
            # (iterations=abc, cg_iterations=0) is refused before out= is written, not hours later.
            _check_student_task(f"stages.{index}.student", stage.student, spec)
            try:
                create_model(stage.student, **_student_options(stage, spec))
            except ConfigError as exc:
                raise ConfigError(f"stages.{index}.student_options: {exc}") from None
        trains = stage.steps > 0 if stage.kind != "quantize" else "qat" in stage.remedies
        if not trains:
            continue
        if spec.sr is None and stage.select_by == "teacher":
            raise ConfigError(
                f"stages.{index}.select_by=teacher: SR stages only; a recon student is kept by val PSNR"
            )
        try:
            if spec.sr is not None:
                key = f"stages.{index}.patch={stage.patch}"
                check_sr_patch(
                    dataset, modality=spec.intensity.modality, scale=spec.sr.scale, patch=stage.patch
                )
            else:
                key = f"stages.{index}.crop={stage.crop}"
                check_recon_crop(dataset, crop=stage.crop)
        except CropTooLarge as exc:
            raise ConfigError(f"{key}: {exc}") from None


def compress(
    recipe: Recipe, *, out: Path, resume: bool = False, console: Console | None = None
) -> dict[str, Any] | None:
    """Runs ``recipe`` into ``out`` and returns the report (also written as report.json and report.md).

    Under ``torchrun`` (``torchrun --nproc_per_node=N -m edgesr compress recipe=...``) the training
    stages run data-parallel on every rank (DDP: NCCL on GPUs, gloo on the CPU); rank 0 writes every
    file, runs the quantize stage and the report, and returns the report; the other ranks return None
    once the training stages are done.
    """
    env = init_distributed(recipe.device)
    console = (console or Console(stderr=True)) if env.is_main else Console(quiet=True)
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file, not a folder; choose a folder for the run")
    if out.exists() and any(out.iterdir()) and not (out / "recipe.resolved.yaml").is_file():
        raise ConfigError(f"out={out} holds files that are not a compression run; choose another out=")
    teacher = _teacher(recipe)
    if not env.is_main:  # rank 0 prepares the data set when it is missing; the others then open it
        barrier(env)
    dataset = _dataset(recipe, console)
    if env.is_main:
        barrier(env)
    _check_splits(recipe, teacher.spec, dataset)  # before anything is written or trained
    _check_training_options(recipe, teacher.spec, dataset)
    finished = [
        i for i, st in enumerate(recipe.stages) if (out / stage_folder_name(i, st) / STAGE_DONE).is_file()
    ]
    if finished and not resume:  # before recipe.resolved.yaml is rewritten: the run's record stays true
        folder = out / stage_folder_name(finished[0], recipe.stages[finished[0]])
        raise ConfigError(
            f"{folder} holds a finished stage; pass resume=true to reuse it, or choose another out="
        )
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "recipe.resolved.yaml", to_yaml(recipe))
    barrier(env)
    chain = [teacher]
    for index, stage in enumerate(recipe.stages):
        if stage.kind == "quantize" and not env.is_main:
            break  # rank 0 quantizes (and reports) alone: nothing there to share
        console.print(f"[bold]stage {index + 1}/{len(recipe.stages)}[/]: {stage.kind}")
        # Read before the stage runs: a card= run replaces a shipped student that it started from.
        started_from = _started_from(stage)
        result = _run_stage(
            index, stage, chain[-1], teacher, recipe=recipe, dataset=dataset, out=out, resume=resume,
            console=console, started_from=started_from, env=env,
        )  # fmt: skip
        result.started_from = started_from
        chain.append(result)
    if not env.is_main:
        return None
    report = build_report(recipe, chain, dataset, out=out, console=console)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_markdown(report))
    return report
