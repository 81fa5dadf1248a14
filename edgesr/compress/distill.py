"""Knowledge distillation: train a student to reproduce a teacher, through the one training loop.

The student sees the teacher's training distribution (the same batch sources ``edgesr train`` uses,
with augmentation and noise, so it learns the teacher's behaviour on varied inputs, not only on
test-like images) and is pulled towards:

* the teacher's output (``output_weight``, L1): the teacher's knowledge, including what it does where
  the ground truth is ambiguous;
* the ground truth (``target_weight``, L1): keeps the student from copying the teacher's errors;
* for GAN teachers (SRGAN), optionally the perceptual distance to the teacher's output
  (``perceptual_weight``, edgesr's feature network, as in the teacher's training) and an adversarial
  term (``adversarial_weight``) from a discriminator trained alongside on the ground truth against the
  student, so that the student keeps the teacher's texture rather than the blur that L1 favours;
* optionally the teacher's features at named layers (``feature_layers``, ``feature_weight``, L1): the
  output of each named module in the student is matched to the same-named module in the teacher,
  through a learned 1x1 convolution where their widths differ (a pruned or narrower student). The
  adapters are trained with the student and checkpointed with it (``fit``'s ``extra_state``), but
  they are not part of the student and are not shipped.

Recon students keep the data-consistency structure: they are recon models (fewer unrolls, CG steps or
blocks are student options), fed exactly as the teacher is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgesr.data.dataset import PreparedDataset
from edgesr.device import bf16_autocast
from edgesr.errors import ConfigError
from edgesr.evaluate import ReconAcquisition, sr_pairs, sr_predict, validate
from edgesr.losses import discriminator_loss, generator_adversarial_loss
from edgesr.losses.perceptual import PerceptualLoss, cached_feature_encoder
from edgesr.metrics import crop_border, psnr
from edgesr.models.srgan import Discriminator
from edgesr.spec import ModelSpec
from edgesr.train.checkpoint import read_metadata
from edgesr.train.config import OptimSection
from edgesr.train.data import ReconBatch, ReconBatches, ScannerVariety, SRBatch, SRBatches
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
        amp: bf16 autocast for the networks' forward passes where the hardware has bf16 units
            (:func:`edgesr.device.bf16_autocast`: CUDA, a CPU with AVX512-BF16 or AMX).
        select_by: what ``best/`` is kept by: ``"target"`` (val PSNR to the ground truth) or
            ``"teacher"`` (val PSNR to the teacher's output; SR only: for GAN teachers).
        noise_max, variety: SR: the LR noise range and the scanner variety of the batches; the
            teacher's own (:func:`teacher_training_data`), so that the student learns what the teacher
            does on the scans it was made robust to, not only on the clean training scans.
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
    feature_layers: tuple[str, ...] = ()
    feature_weight: float = 0.0
    perceptual_weight: float = 0.0
    adversarial_weight: float = 0.0
    disc_lr: float = 1e-4
    perceptual_steps: int = 1500
    select_by: str = "target"
    noise_max: float = 0.01
    variety: ScannerVariety = ScannerVariety()

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("distill: steps, batch_size and eval_every must be at least 1")
        if self.feature_weight < 0 or (self.feature_weight > 0 and not self.feature_layers):
            raise ValueError("distill: feature_weight must be >= 0, and > 0 only with feature_layers")
        if self.perceptual_weight < 0 or self.adversarial_weight < 0:
            raise ValueError("distill: perceptual_weight and adversarial_weight must be >= 0")
        if self.select_by not in ("target", "teacher"):
            raise ValueError(f"distill: select_by must be 'target' or 'teacher'; got {self.select_by!r}")
        if self.output_weight < 0 or self.target_weight < 0 or self.output_weight + self.target_weight == 0:
            raise ValueError("distill: output_weight and target_weight must be >= 0, not both 0")


class FeatureMatcher(nn.Module):
    """Captures named layers' outputs in a teacher and a student, and scores the student's against them.

    Args:
        teacher, student: the two networks (the student may be DDP-wrapped later: hooks sit on its
            modules, which the wrapper calls).
        layers: module names present in both (``blocks.2``, ``global_fusion``).
        example_inputs: one input of the networks, run once to learn each layer's widths.

    A layer whose student width differs from the teacher's gets a 1x1 convolution (student -> teacher
    channels), initialised to copy the first channels; equal widths are compared directly.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        layers: tuple[str, ...],
        example_inputs: tuple[torch.Tensor, ...],
    ) -> None:
        super().__init__()
        self.layers = layers
        self._captured: dict[str, dict[str, torch.Tensor]] = {"teacher": {}, "student": {}}
        self._hooks = []
        for role, network in (("teacher", teacher), ("student", student)):
            modules = dict(network.named_modules())
            for name in layers:
                if name not in modules or not name:
                    raise ConfigError(
                        f"stages.feature_layers: the {role} has no layer {name!r}; its top-level layers are "
                        + ", ".join(n for n in modules if n and "." not in n)
                    )
                self._hooks.append(modules[name].register_forward_hook(self._capture(role, name)))
        modes = (teacher.training, student.training)
        teacher.eval(), student.eval()  # a probe must not move batch-norm statistics
        with torch.no_grad():
            teacher(*example_inputs)
            student(*example_inputs)
        teacher.train(modes[0]), student.train(modes[1])
        self.adapters = nn.ModuleDict()
        for name in layers:
            t, s = self._captured["teacher"][name], self._captured["student"][name]
            if t.dim() != 4 or s.dim() != 4 or t.shape[-2:] != s.shape[-2:]:
                raise ConfigError(
                    f"stages.feature_layers: {name!r} gives teacher {tuple(t.shape)} and student "
                    f"{tuple(s.shape)}; feature distillation needs [B, C, H, W] maps of the same size"
                )
            if t.shape[1] != s.shape[1]:
                adapter = nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
                with torch.no_grad():
                    adapter.weight.zero_()
                    for c in range(min(s.shape[1], t.shape[1])):
                        adapter.weight[c, c] = 1.0
                self.adapters[_key(name)] = adapter
        self.clear()

    def _capture(self, role: str, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self._captured[role][name] = output

        return hook

    def clear(self) -> None:
        self._captured = {"teacher": {}, "student": {}}

    def loss(self) -> torch.Tensor:
        """Mean L1 over the layers between the (adapted) student features and the teacher's."""
        terms = []
        for name in self.layers:
            student = self._captured["student"][name].float()
            if _key(name) in self.adapters:
                student = self.adapters[_key(name)](student)
            terms.append(F.l1_loss(student, self._captured["teacher"][name].float().detach()))
        self.clear()
        return torch.stack(terms).mean()

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()


def _key(layer: str) -> str:
    return layer.replace(".", "__")  # ModuleDict keys cannot hold dots


class DistillationObjective:
    """L1 to the frozen teacher's output, L1 to the ground truth, and (optionally) to its features.

    With ``features``, the adapters' gradients come from the same backward pass as the student's; their
    optimiser steps at the start of the next call (one step behind, which the loop cannot see).
    """

    def __init__(
        self,
        teacher: nn.Module,
        settings: DistillSettings,
        device: torch.device,
        features: FeatureMatcher | None = None,
        feature_optimizer: torch.optim.Optimizer | None = None,
        perceptual: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        disc_optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.settings, self.device = settings, device
        self.features, self.feature_optimizer = features, feature_optimizer
        self.perceptual = perceptual
        self.discriminator, self.disc_optimizer = discriminator, disc_optimizer

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
        parts = {"to_teacher": to_teacher.item(), "to_target": to_target.item()}
        if self.perceptual is not None:  # the teacher's output, not the ground truth: its texture
            to_texture = self.perceptual(pred, taught)
            loss = loss + self.settings.perceptual_weight * to_texture
            parts["perceptual"] = to_texture.item()
        if self.discriminator is not None and self.disc_optimizer is not None:
            # One discriminator step (ground truth vs the detached student), then the student's term.
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss = discriminator_loss(self.discriminator, target, pred, "standard")
            d_loss.backward()
            self.disc_optimizer.step()
            g_adv = generator_adversarial_loss(self.discriminator(pred), "standard")
            loss = loss + self.settings.adversarial_weight * g_adv
            parts |= {"adversarial": g_adv.item(), "discriminator": d_loss.item()}
        if self.features is not None:
            if self.feature_optimizer is not None:  # the previous step's adapter gradients
                self.feature_optimizer.step()
                self.feature_optimizer.zero_grad(set_to_none=True)
            to_features = self.features.loss()
            loss = loss + self.settings.feature_weight * to_features
            parts["to_features"] = to_features.item()
        return loss, parts


def _gan_terms(
    spec: ModelSpec,
    dataset: PreparedDataset,
    settings: DistillSettings,
    env: DistEnv,
    console: Console | None,
    extra_state: dict[str, tuple[nn.Module, torch.optim.Optimizer]],
) -> tuple[nn.Module | None, nn.Module | None, torch.optim.Optimizer | None]:
    """The perceptual loss and the discriminator of a GAN distillation (SR only), when asked for."""
    if spec.sr is None and (settings.perceptual_weight > 0 or settings.adversarial_weight > 0):
        raise ConfigError("stages.perceptual_weight/adversarial_weight: texture terms are for SR students")
    perceptual: nn.Module | None = None
    if settings.perceptual_weight > 0:
        status = console.status("edgesr's feature network (once per data set)") if console else nullcontext()
        with status:
            encoder = cached_feature_encoder(
                dataset, dataset.path / "features", steps=settings.perceptual_steps
            )
        perceptual = PerceptualLoss(encoder).to(env.device)
    if settings.adversarial_weight <= 0:
        return perceptual, None, None
    discriminator: nn.Module = Discriminator(in_channels=1, features=32, norm="batch").to(env.device)
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=settings.disc_lr, betas=(0.5, 0.999))
    extra_state["discriminator"] = (discriminator, disc_optimizer)
    if env.world_size > 1:
        discriminator = DistributedDataParallel(discriminator)
    return perceptual, discriminator, disc_optimizer


def teacher_training_data(folder: str | Path) -> tuple[float, ScannerVariety]:
    """The LR noise range and scanner variety a teacher was trained with, from its checkpoint's config.

    Teachers trained before the variety existed (or by other tools) get the defaults: noise up to 0.01
    of the volume maximum and no variety, the batches every recipe distilled on until then.
    """
    data = (read_metadata(folder).get("config") or {}).get("data") or {}
    known = {f.name for f in dataclasses.fields(ScannerVariety)}
    options: dict[str, Any] = {k: tuple(v) if k == "zoom" else v for k, v in data.items() if k in known}
    return float(data.get("noise_max", 0.01)), ScannerVariety(**options)


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
            noise_max=settings.noise_max,
            augment=True,
            variety=settings.variety,
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


def psnr_to_teacher(
    student: nn.Module,
    teacher: nn.Module,
    dataset: PreparedDataset,
    spec: ModelSpec,
    *,
    device: torch.device,
    max_slices: int,
    cache: dict[str, torch.Tensor] | None = None,
) -> float:
    """Mean PSNR of the student's val-split output against the teacher's (SR): how closely it imitates.

    What ``select_by: teacher`` keeps ``best/`` by. For a GAN teacher, PSNR to the ground truth favours the
    blurriest checkpoint; agreement with the teacher keeps the one that reproduces its texture best.
    ``cache`` keeps the teacher's outputs by slice between calls (the val slices never change).
    """
    if spec.sr is None:
        raise ValueError("psnr_to_teacher scores SR students; a recon student is kept by val_psnr")
    student.eval()
    kind, scale = spec.sr.degradation, spec.sr.scale
    values = []
    with torch.no_grad():
        for lr, _, slice_id in sr_pairs(dataset, modality=spec.intensity.modality, scale=scale, split="val",
                                        degradation=kind, max_slices=max_slices):  # fmt: skip
            lr = lr.to(device)
            mine = crop_border(sr_predict(student, lr, spec).float().cpu(), scale)
            reference = cache.get(slice_id) if cache is not None else None
            if reference is None:
                reference = crop_border(sr_predict(teacher, lr, spec).float().cpu(), scale)
                if cache is not None:
                    cache[slice_id] = reference
            values.append(float(psnr(mine, reference, 1.0)))
    return round(sum(values) / len(values), 3)


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
    with _teacher_for_the_run(teacher, env.device):
        student = student.to(env.device)
        optim = OptimSection(
            steps=settings.steps, lr=settings.lr, warmup=min(settings.warmup, settings.steps)
        )
        optimizer, scheduler = adamw_warmup_cosine(student.parameters(), optim)
        features: FeatureMatcher | None = None
        extra_state: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
        if settings.feature_layers:
            from edgesr.bench.timing import latency_inputs

            example = tuple(t.to(env.device) for t in latency_inputs(spec, 32).values())
            features = FeatureMatcher(teacher, student, settings.feature_layers, example).to(env.device)
            if len(features.adapters):  # equal widths need no adapter, hence nothing to train or save
                feature_optimizer = torch.optim.AdamW(features.parameters(), lr=settings.lr, weight_decay=0.0)
                extra_state["feature_adapters"] = (features, feature_optimizer)
        perceptual, discriminator, disc_optimizer = _gan_terms(
            spec, dataset, settings, env, console, extra_state
        )
        acquisition = ReconAcquisition(4.0, n_coils=spec.recon.coils or 8) if spec.recon is not None else None

        teacher_outputs: dict[str, torch.Tensor] = {}

        def validator(model: nn.Module) -> dict[str, float]:
            metrics = validate(
                model,
                dataset,
                spec,
                device=env.device,
                max_slices=settings.val_slices,
                acquisition=acquisition,
            )
            if settings.select_by == "teacher":
                metrics["val_psnr_to_teacher"] = psnr_to_teacher(
                    model,
                    teacher,
                    dataset,
                    spec,
                    device=env.device,
                    max_slices=settings.val_slices,
                    cache=teacher_outputs,
                )
            return metrics

        try:
            fit(
                student,
                DistillationObjective(
                    teacher,
                    settings,
                    env.device,
                    features,
                    extra_state.get("feature_adapters", (None, None))[1],
                    perceptual,
                    discriminator,
                    disc_optimizer,
                ),  # fmt: skip
                distillation_batches(spec, dataset, settings),
                optimizer=optimizer,
                scheduler=scheduler,
                settings=FitSettings(
                    steps=settings.steps,
                    eval_every=settings.eval_every,
                    log_every=max(1, min(50, settings.eval_every)),
                    clip=1.0,
                    description=f"distil {student_name}",
                    best_metric="val_psnr" if settings.select_by == "target" else "val_psnr_to_teacher",
                ),
                out=out,
                checkpoint=CheckpointInfo(
                    model_name=student_name, model_options=student_options, spec=spec, config=config or {}
                ),
                env=env,
                validate=validator,
                extra_state=extra_state,
                resume=resume,
                stop_at=stop_at,
                console=console,
            )
        finally:
            if features is not None:
                features.remove()  # the student leaves without hooks (export, inference)
        return student


@contextmanager
def _teacher_for_the_run(teacher: nn.Module, device: torch.device) -> Iterator[None]:
    """Moves the frozen teacher to ``device`` for a distillation and back afterwards, whatever happens:
    the caller scores, counts and exports it where and as it was (the CPU, in the compress runner).

    On the CPU it runs channels-last meanwhile (oneDNN's fast layout for its convolutions: 0.10 -> 0.075
    s per batch of the quick start in fp32, 0.053 -> 0.038 in bf16); the student is left as it is (its
    backward pass was slower channels-last).
    """
    home = next(teacher.parameters()).device
    came_channels_last = any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in teacher.parameters()
    )
    layout = torch.channels_last if device.type == "cpu" else torch.preserve_format
    # Module.to takes memory_format at run time; torch's type stubs leave the keyword out.
    try:
        teacher.to(device, memory_format=layout)  # type: ignore[call-overload]
        yield
    finally:
        back = torch.channels_last if came_channels_last else torch.contiguous_format
        teacher.to(home, memory_format=back)  # type: ignore[call-overload]
