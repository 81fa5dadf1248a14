"""Knowledge distillation: train a student to reproduce a teacher, through the one training loop.

The student sees the teacher's training distribution (the same batch sources ``edgesr train`` uses,
with augmentation and noise, so it learns the teacher's behaviour on varied inputs, not only on
test-like images) and is pulled towards:

* the teacher's output (``output_weight``, L1): the teacher's knowledge, including what it does where
  the ground truth is ambiguous;
* the ground truth (``target_weight``, L1): keeps the student from copying the teacher's errors.

Recon students keep the data-consistency structure: they are recon models (fewer unrolls, CG steps or
blocks are student options), fed exactly as the teacher is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from edgesr.data.dataset import PreparedDataset
from edgesr.device import bf16_autocast
from edgesr.evaluate import ReconAcquisition, validate
from edgesr.spec import ModelSpec
from edgesr.train.config import OptimSection
from edgesr.train.data import ReconBatch, ReconBatches, SRBatch, SRBatches
from edgesr.train.distributed import DistEnv
from edgesr.train.fit import CheckpointInfo, FitSettings, fit
from edgesr.train.optim import adamw_warmup_cosine


@dataclass(frozen=True, kw_only=True)
class DistillSettings:
    """How a student is distilled (the recipe's distill stage options).

    Attributes:
        steps: optimisation steps.
        lr: peak learning rate (AdamW, warm-up and cosine decay).
        warmup: warm-up steps.
        batch_size: samples per step.
        patch: SR: LR patch size.
        crop: recon: training crop size.
        output_weight: weight of L1 to the teacher's output.
        target_weight: weight of L1 to the ground truth.
        eval_every: validate (val split) and checkpoint every N steps.
        val_slices: validation slices per volume.
        seed: seed of the batches.
        amp: bf16 autocast for the networks' forward passes on CUDA.
    """

    steps: int
    lr: float = 5e-4
    warmup: int = 50
    batch_size: int = 16
    patch: int = 48
    crop: int = 128
    output_weight: float = 1.0
    target_weight: float = 0.5
    eval_every: int = 250
    val_slices: int = 6
    seed: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("distill: steps, batch_size and eval_every must be at least 1")
        if self.output_weight < 0 or self.target_weight < 0 or self.output_weight + self.target_weight == 0:
            raise ValueError("distill: output_weight and target_weight must be >= 0, not both 0")


class DistillationObjective:
    """L1 to the frozen teacher's output plus L1 to the ground truth, on one batch."""

    def __init__(self, teacher: nn.Module, settings: DistillSettings, device: torch.device) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.settings, self.device = settings, device

    def __call__(
        self, model: nn.Module, batch: SRBatch | ReconBatch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(batch, SRBatch):
            inputs: tuple[torch.Tensor, ...] = (batch.lr, batch.base)
            target = batch.hr
        else:
            inputs, target = (batch.kspace, batch.mask, batch.sens_maps), batch.target
        with torch.no_grad(), bf16_autocast(self.device, self.settings.amp):
            taught = self.teacher(*inputs).float()
        with bf16_autocast(self.device, self.settings.amp):
            pred = model(*inputs).float()
        to_teacher = F.l1_loss(pred, taught)
        to_target = F.l1_loss(pred, target)
        loss = self.settings.output_weight * to_teacher + self.settings.target_weight * to_target
        return loss, {"to_teacher": to_teacher.item(), "to_target": to_target.item()}


def distillation_batches(
    spec: ModelSpec, dataset: PreparedDataset, settings: DistillSettings
) -> SRBatches | ReconBatches:
    """The teacher's training distribution for the spec's task (augmented, noisy, seeded by step)."""
    if spec.sr is not None:
        return SRBatches(
            dataset,
            modality=spec.intensity.modality,
            scale=spec.sr.scale,
            degradation=spec.sr.degradation,
            upsampler=spec.sr.upsampler,
            patch=settings.patch,
            batch_size=settings.batch_size,
            noise_max=0.01,
            augment=True,
            seed=settings.seed,
        )
    assert spec.recon is not None  # noqa: S101 (a spec has one task section)
    return ReconBatches(
        dataset,
        crop=settings.crop,
        batch_size=settings.batch_size,
        accelerations=(4.0, 6.0),
        masks=("random", "equispaced"),
        coils=spec.recon.coils or 8,
        center_fraction=0.08,
        noise_std=0.005,
        augment=True,
        seed=settings.seed,
    )


def distill(
    teacher: nn.Module,
    student: nn.Module,
    *,
    spec: ModelSpec,
    student_name: str,
    student_options: dict[str, Any],
    dataset: PreparedDataset,
    settings: DistillSettings,
    out: Path,
    env: DistEnv,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    console: Console | None = None,
) -> nn.Module:
    """Distils ``teacher`` into ``student`` and returns the best student (by validation PSNR).

    Args:
        teacher: the model to imitate (frozen; not changed).
        student: the model to train (any registered model of the same task, or a pruned one).
        spec: the student's contract (the teacher's, with the student's receptive radius).
        student_name, student_options: how the student is rebuilt from its checkpoints.
        dataset: the prepared data set (training split for batches, val split for validation).
        settings: the stage's options.
        out: the stage's run folder (``best/``, ``last/``, ``log.jsonl``).
        env: where it runs (:func:`edgesr.train.distributed.init_distributed`).
        config: recorded in the checkpoints (the recipe and stage).
        resume: continue an interrupted distillation in ``out`` exactly.
        stop_at: stop after this many steps as if interrupted (tests).
    """
    teacher = teacher.to(env.device)
    student = student.to(env.device)
    optim = OptimSection(steps=settings.steps, lr=settings.lr, warmup=min(settings.warmup, settings.steps))
    optimizer, scheduler = adamw_warmup_cosine(student.parameters(), optim)
    acquisition = ReconAcquisition(4.0, n_coils=spec.recon.coils or 8) if spec.recon is not None else None

    def validator(model: nn.Module) -> dict[str, float]:
        return validate(
            model, dataset, spec, device=env.device, max_slices=settings.val_slices, acquisition=acquisition
        )

    fit(
        student,
        DistillationObjective(teacher, settings, env.device),
        distillation_batches(spec, dataset, settings),
        optimizer=optimizer,
        scheduler=scheduler,
        settings=FitSettings(
            steps=settings.steps,
            eval_every=settings.eval_every,
            log_every=max(1, min(50, settings.eval_every)),
            clip=1.0,
            description=f"distil {student_name}",
        ),
        out=out,
        checkpoint=CheckpointInfo(
            model_name=student_name, model_options=student_options, spec=spec, config=config or {}
        ),
        env=env,
        validate=validator,
        resume=resume,
        stop_at=stop_at,
        console=console,
    )
    return student
