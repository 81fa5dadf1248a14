"""One training loop for every edgesr stage: :func:`fit`.

``edgesr train`` (:mod:`edgesr.train.teacher`) and the compression stages (distillation, pruning
fine-tuning, quantization-aware training) call it with their own model, *objective* (where the loss
lives), batches, optimiser and schedule. What every run needs is written here once:

* exact resumption (``resume=True``): batches are a pure function of (seed, step), and ``last/``
  restores the model, optimiser, scheduler, torch RNG and every auxiliary module (a GAN's
  discriminator), so a resumed run equals an uninterrupted one bit for bit on the CPU;
* DDP under ``torchrun``: the model is wrapped here; rank 0 validates and writes;
* validation every ``eval_every`` steps, ``best/`` (by validation PSNR) and ``last/`` checkpoints,
  ``log.jsonl``, a rich progress bar;
* SIGINT/SIGTERM finish the current step, save ``last/`` and stop.

What ``fit`` leaves to its caller: building and seeding the model, choosing the device and joining
the process group (:func:`edgesr.train.distributed.init_distributed`), and what runs in bf16: the
objective wraps its networks' forward passes in :func:`edgesr.device.bf16_autocast`, because what
may run in bf16 depends on the task (the recon models' FFTs, SSIM and perceptual features stay fp32).

A run's folder::

    out/last/        weights + optimiser, scheduler and RNG state: where ``resume=True`` continues
    out/best/        weights only, of the best validation PSNR so far
    out/<name>/      each auxiliary module with its optimiser (``extra_state``), saved with ``last/``
    out/log.jsonl    a record per ``log_every`` steps and per validation
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgesr.device import training_machine
from edgesr.errors import ConfigError
from edgesr.spec import ModelSpec
from edgesr.train import distributed
from edgesr.train.checkpoint import checkpoint_exists, load_training_state, save_checkpoint
from edgesr.train.data import BatchSource, batch_stream
from edgesr.train.distributed import DistEnv

Objective = Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict[str, float]]]
"""``objective(model, batch, step) -> (loss, parts)``: a task's loss on one batch.

``model`` is the trained model as the loop runs it (DDP-wrapped under torchrun), ``batch`` a
NamedTuple of tensors already on the device, ``step`` the 0-based index of the batch. ``loss`` is
back-propagated into ``model``; ``parts`` (floats) are logged beside it. An objective with modules
of its own to train (SRGAN's discriminator) steps them itself, with its own optimiser, and lists
them in ``fit``'s ``extra_state`` so that they are checkpointed and restored.
"""

Validator = Callable[[nn.Module], dict[str, float]]
"""``validate(model) -> metrics`` on the unwrapped model, rank 0 only: at least ``val_psnr`` (dB) and
``val_ssim`` (:func:`edgesr.evaluate.validate`); ``best/`` is kept by ``FitSettings.best_metric``
(``val_psnr`` unless a caller validates something else as well)."""


@dataclass(frozen=True, kw_only=True)
class FitSettings:
    """How long a fit runs and how often it reports.

    Attributes:
        steps: the run's total optimisation steps (a resumed run continues up to them).
        eval_every: validate and save ``last/`` every N steps, and at the end.
        log_every: write a ``log.jsonl`` record every N steps, and at the end.
        clip: gradient-norm clipping (0: off; the norm is logged either way).
        workers: processes that build batches ahead of the loop (0: in the loop). Batches are a pure
            function of the step, so this changes the speed, never the result.
        description: the progress bar's label, e.g. ``"train rdn_small"``.
        best_metric: the validation metric (higher is better) that ``best/`` is kept by.
    """

    steps: int
    eval_every: int
    log_every: int
    clip: float = 0.0
    workers: int = 0
    description: str = "train"
    best_metric: str = "val_psnr"

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"FitSettings.{name} must be at least 1; got {getattr(self, name)}")
        if self.clip < 0 or self.workers < 0:
            raise ValueError("FitSettings.clip and FitSettings.workers must not be negative")


@dataclass(frozen=True, kw_only=True)
class CheckpointInfo:
    """What every checkpoint of a run records beside the weights, so that anything can load and run it.

    Attributes:
        model_name: the registered model (:func:`edgesr.models.create_model` rebuilds it).
        model_options: its builder options.
        spec: the model contract: how the model is fed and its output read.
        config: the run's settings as plain JSON types (with the command that started it); model cards
            and resumption checks read them.
    """

    model_name: str
    model_options: dict[str, Any]
    spec: ModelSpec
    config: dict[str, Any]


def check_run_folder(out: Path, *, resume: bool) -> None:
    """A new run never overwrites another, and ``resume`` needs a run to continue.

    Callers with slow set-up (data, feature networks) call it first; :func:`fit` checks again.

    Raises:
        ConfigError: ``out`` holds a run and ``resume`` is false, or holds none and it is true.
    """
    holds_a_run = _saved(out / "last")
    if not holds_a_run and out.exists() and not resume:
        if not out.is_dir():
            raise ConfigError(f"out={out} is a file, not a folder for the run")
        # A run that stopped before its first checkpoint leaves its resolved config (and maybe a log);
        # anything else is someone's files, which checkpoints, logs and best/ would land among.
        names = {p.name for p in out.iterdir()}
        started_run = "config.resolved.yaml" in names and names <= {"config.resolved.yaml", "log.jsonl"}
        if names and not started_run:
            raise ConfigError(
                f"out={out} holds files that are not an edgesr run ({', '.join(sorted(names)[:3])}); "
                "choose another out="
            )
    if holds_a_run and not resume:
        raise ConfigError(
            f"{out} already holds a run; pass resume=true to continue it, or choose another out="
        )
    if resume and not holds_a_run:
        raise ConfigError(f"resume=true, but {out} holds no run to resume")


def discard_run_without_checkpoint(out: Path) -> None:
    """Removes what a run killed before its first checkpoint left in ``out`` (its log, maybe ``best/``).

    A hard kill (SIGKILL, power loss) before the first ``eval_every`` leaves a folder that is neither
    a run to resume nor empty, and :func:`check_run_folder` rightly refuses such folders from users.
    Only callers that own ``out`` use this (a compress stage's ``run/``, inside a folder holding its
    ``recipe.resolved.yaml``), so that ``resume=true`` starts such a stage over instead of failing.
    """
    if out.is_dir() and not checkpoint_exists(out / "last"):
        shutil.rmtree(out)


def fit(
    model: nn.Module,
    objective: Objective,
    batches: BatchSource,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: FitSettings,
    out: Path,
    checkpoint: CheckpointInfo,
    env: DistEnv,
    validate: Validator | None = None,
    extra_state: Mapping[str, tuple[nn.Module, torch.optim.Optimizer]] | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Trains ``model`` on ``objective`` until ``settings.steps``, or continues a run from ``out/last``.

    Each step: ``loss, parts = objective(model, batch, step)``; ``loss.backward()``; clip; optimiser
    and scheduler step. Every ``eval_every`` steps rank 0 validates, keeps ``best/``, saves ``last/``.

    Args:
        model: the model to train, on ``env.device``, seeded and initialised by the caller.
        objective: the loss of one batch (see :data:`Objective`).
        batches: ``batches.batch(step, rank=, world_size=)``, a pure function of the step.
        optimizer: the optimiser of ``model``'s parameters.
        scheduler: its learning-rate schedule, stepped once per step.
        settings: steps, reporting intervals, clipping, batch workers.
        out: the run's folder (see the module docstring).
        checkpoint: what each checkpoint records beside the weights.
        env: this process's rank, world size and device.
        validate: scores the model for ``best/`` (see :data:`Validator`); None: ``last/`` only.
        extra_state: auxiliary modules the objective trains, with their optimisers, by folder name
            (``{"discriminator": (discriminator, its_optimizer)}``): saved with ``last/``, restored
            on resumption. Give the unwrapped modules; under DDP the objective wraps its own.
        resume: continue the run in ``out`` exactly where ``last/`` left it.
        stop_at: stop after this many steps as if interrupted (tests of resumption use it).
        console: where the progress bar and messages go (default: stderr).

    Returns:
        ``{"step": last step, "best_<best_metric>": ..., **the last validation metrics}``.

    Raises:
        ConfigError: ``out`` already holds a run and ``resume`` is false, or holds none and it is true.
    """
    console = console or Console(stderr=True)
    extra = dict(extra_state or {})
    out = Path(out)
    last_dir, best_dir = out / "last", out / "best"
    check_run_folder(out, resume=resume)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed training shapes: let cuDNN pick its fastest kernels

    # Where the run starts: step 0, or exactly where last/ left it (model, optimiser, scheduler, RNG).
    best_key = f"best_{settings.best_metric}"
    start_step, best, metrics = 0, -math.inf, {}
    if resume:
        meta, _ = load_training_state(last_dir, model, optimizer, scheduler)
        start_step, metrics = meta["step"], meta["metrics"]
        best = float(metrics.get(best_key, -math.inf))
        for name, (module, module_optimizer) in extra.items():
            if _saved(out / name):
                load_training_state(out / name, module, module_optimizer)
    # Wall-clock seconds of the whole run, earlier (interrupted) invocations included.
    seconds_before = float(metrics.get("train_seconds", 0.0))

    def elapsed() -> float:  # ``started`` is set when the batches start flowing, below
        return seconds_before + time.perf_counter() - started

    # Under torchrun each rank trains a replica on its share of the batch; DDP averages the gradients.
    train_model: nn.Module = DistributedDataParallel(model) if env.world_size > 1 else model
    machine = training_machine(env.device, env.world_size)

    def save(folder: Path, step: int, *, with_state: bool = True) -> None:
        """A checkpoint of ``model`` (``best/``: weights only); with state, also each auxiliary module."""
        save_checkpoint(
            folder,
            model,
            model_name=checkpoint.model_name,
            model_options=checkpoint.model_options,
            step=step,
            metrics=metrics | {best_key: best, "train_seconds": round(elapsed(), 2)},
            config=checkpoint.config,
            optimizer=optimizer if with_state else None,
            scheduler=scheduler if with_state else None,
            machine=machine,
            spec=checkpoint.spec,
        )
        if with_state:
            for name, (module, module_optimizer) in extra.items():
                save_checkpoint(
                    out / name,
                    module,
                    model_name=name,
                    model_options={},
                    step=step,
                    optimizer=module_optimizer,
                )

    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    stop = _StopFlag()
    step = start_step
    stream = batch_stream(
        batches,
        start=start_step,
        stop=settings.steps,
        rank=env.rank,
        world_size=env.world_size,
        workers=settings.workers,
        pin_memory=env.device.type == "cuda",
    )
    started = time.perf_counter()
    log_file = open(out / "log.jsonl", "a", encoding="utf-8") if env.is_main else None  # noqa: SIM115
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with stop.installed(), Progress(*columns, console=console, disable=not env.is_main) as progress:
            task_id = progress.add_task(settings.description, total=settings.steps, completed=start_step)
            for host_batch in stream:
                # One optimisation step: the objective's loss, its gradient, clipping, the update.
                train_model.train()
                batch = type(host_batch)(*(t.to(env.device, non_blocking=True) for t in host_batch))
                loss, parts = objective(train_model, batch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip or math.inf)
                optimizer.step()
                scheduler.step()
                step += 1

                progress.update(
                    task_id, completed=step, description=f"{settings.description} loss {loss.item():.4g}"
                )
                if log_file is not None and (step % settings.log_every == 0 or step == settings.steps):
                    record = {
                        "step": step,
                        "loss": loss.item(),
                        **parts,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                        "seconds": round(elapsed(), 2),
                    }
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()

                # Validation and checkpoints: rank 0 works, the other ranks wait at the barrier.
                if step % settings.eval_every == 0 or step == settings.steps:
                    if env.is_main:
                        if validate is not None:
                            metrics = validate(model)
                            if metrics[settings.best_metric] > best:
                                best = metrics[settings.best_metric]
                                save(best_dir, step, with_state=False)
                        save(last_dir, step)
                        if validate is not None:
                            if log_file is not None:
                                log_file.write(json.dumps({"step": step, **metrics, best_key: best}) + "\n")
                                log_file.flush()
                            psnr, ssim = metrics["val_psnr"], metrics["val_ssim"]
                            kept_by = (
                                "" if settings.best_metric == "val_psnr"
                                else f"; {settings.best_metric} {metrics[settings.best_metric]:.3f}"
                            )  # fmt: skip
                            progress.console.print(
                                f"step {step}: val PSNR {psnr:.2f} dB, SSIM {ssim:.4f}{kept_by}"
                            )
                    distributed.barrier(env)

                # A stop (Ctrl-C, SIGTERM, stop_at) leaves after a whole step, on every rank at once.
                halt = stop.requested or (stop_at is not None and step >= stop_at)
                if distributed.broadcast_flag(env, halt):
                    if env.is_main and step % settings.eval_every != 0:
                        save(last_dir, step)
                    console.print(f"[yellow]stopped at step {step}[/]; continue with resume=true")
                    break
    finally:
        stream.close()  # stops the batch workers when the loop ends early
        if log_file is not None:
            log_file.close()
    return {"step": step, best_key: best, **metrics}


def _saved(folder: Path) -> bool:
    """A checkpoint folder exists, or only its ``.old`` twin (a save interrupted between its renames)."""
    return folder.exists() or folder.with_name(folder.name + ".old").exists()


class _StopFlag:
    """Turns SIGINT/SIGTERM into 'stop after this step' while the loop runs."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self.requested = True

        try:
            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: no signal handling, nothing to restore
            yield
            return
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
