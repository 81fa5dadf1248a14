"""``edgesr train``: one small, readable loop for every model.

AdamW with a linear warm-up and cosine decay, gradient clipping, bf16 autocast on CUDA for the
convolution-only SR models, validation PSNR/SSIM every ``eval_every`` steps, best-checkpoint keeping,
JSON-lines logs, a rich progress bar, and exact resumption (``resume=true``) from the ``last``
checkpoint. SIGINT/SIGTERM finish the current step, save ``last`` and stop cleanly.

With ``loss.adversarial_weight > 0`` (SRGAN), a discriminator is trained alongside the generator:
one discriminator step, then one generator step with ``pixel + perceptual + w * adversarial`` loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from edgesr import losses
from edgesr._io import write_text_atomic
from edgesr.baselines import UPSAMPLERS
from edgesr.config import check_choice, check_range, opt, to_yaml
from edgesr.data.dataset import PreparedDataset
from edgesr.device import bf16_autocast, training_machine
from edgesr.errors import ConfigError, DataError
from edgesr.evaluate import DEFAULT_DEGRADATION, ReconAcquisition, validate
from edgesr.losses.perceptual import PerceptualLoss, cached_feature_encoder, load_vgg19
from edgesr.models import create_model, list_models, model_task
from edgesr.models._probe import receptive_radius
from edgesr.models.srgan import Discriminator
from edgesr.physics.degrade import DEGRADATIONS, SCALES
from edgesr.physics.fft import complex_abs, complex_mul
from edgesr.physics.masks import MASK_KINDS
from edgesr.spec import ModelSpec, recon_spec, sr_spec
from edgesr.train import distributed
from edgesr.train.checkpoint import load_model, load_training_state, save_checkpoint
from edgesr.train.data import ReconBatch, ReconBatches, SRBatch, SRBatches


@dataclass(frozen=True)
class DataSection:
    root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    modality: str = opt("MR", "SR: MR or CT slices")
    scale: int = opt(2, "SR: upsampling factor 2, 3 or 4")
    degradation: str = opt("", "SR: mr-kspace, ct-blur or bicubic (default: by modality)")
    upsampler: str = opt(
        "", "SR: the model's global skip, zero-fill or bicubic (default: MR zero-fill, CT bicubic)"
    )
    patch: int = opt(48, "SR: LR patch size")
    noise_max: float = opt(0.01, "SR: each sample's LR noise std is drawn from [0, noise_max]")
    crop: int = opt(128, "recon: training crop size (the image is simulated after cropping)")
    accelerations: tuple[float, ...] = opt((4.0, 6.0), "recon: undersampling factors drawn per sample")
    masks: tuple[str, ...] = opt(("random", "equispaced"), "recon: mask kinds drawn per sample")
    coils: int = opt(8, "recon: simulated coils")
    center_fraction: float = opt(0.08, "recon: fully sampled centre fraction")
    noise_std: float = opt(0.005, "recon: complex noise per coil")
    augment: bool = opt(True, "rotations, flips, gamma and contrast changes")
    batch_size: int = opt(16, "global batch size (split over ranks under torchrun)")
    val_slices: int = opt(6, "validation slices per volume")
    workers: int = opt(
        0, "worker processes that build batches ahead (0: in the training loop); results do not change"
    )

    def __post_init__(self) -> None:
        check_choice("data.modality", self.modality, ("MR", "CT"))
        check_choice("data.scale", self.scale, SCALES)
        if self.degradation:
            check_choice("data.degradation", self.degradation, DEGRADATIONS)
        if self.upsampler:
            check_choice("data.upsampler", self.upsampler, UPSAMPLERS)
        for kind in self.masks:
            check_choice("data.masks", kind, MASK_KINDS)
        check_range("data.patch", self.patch, low=4)
        check_range("data.batch_size", self.batch_size, low=1)
        check_range("data.workers", self.workers, low=0)

    @property
    def resolved_degradation(self) -> str:
        return self.degradation or DEFAULT_DEGRADATION[self.modality]

    @property
    def resolved_upsampler(self) -> str:
        return self.upsampler or ("zero-fill" if self.resolved_degradation == "mr-kspace" else "bicubic")


@dataclass(frozen=True)
class OptimSection:
    steps: int = opt(10000, "optimisation steps")
    lr: float = opt(2e-4, "peak learning rate")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    warmup: int = opt(200, "linear warm-up steps")
    min_lr_ratio: float = opt(0.02, "final learning rate as a fraction of the peak (cosine decay)")
    clip: float = opt(1.0, "gradient norm clipping (0: off)")

    def __post_init__(self) -> None:
        check_range("optim.steps", self.steps, low=1)
        check_range("optim.lr", self.lr, low=0.0)


@dataclass(frozen=True)
class LossSection:
    pixel: str = opt("l1", "pixel loss: l1 or mse")
    pixel_weight: float = opt(
        1.0, "weight of the pixel loss (SRGAN's paper uses features + adversarial only: 0)"
    )
    ssim_weight: float = opt(0.0, "weight of (1 - SSIM)")
    coil_weight: float = opt(
        0.0, "DeepcomplexMRI: weight of the pixel loss on its coil images (the paper supervises them)"
    )
    perceptual_weight: float = opt(0.0, "SR: weight of the perceptual (feature) loss; 0 = off")
    perceptual: str = opt(
        "edgesr", "feature network: edgesr (trained here on the data) or vgg19 (local weights)"
    )
    perceptual_weights: str = opt("", "vgg19: a local safetensors file with torchvision's VGG19 keys")
    feature_steps: int = opt(1500, "edgesr feature network: autoencoder training steps (cached)")
    adversarial_weight: float = opt(0.0, "SRGAN: weight of the adversarial term (paper: 1e-3); 0 = no GAN")
    gan: str = opt("standard", "SRGAN: standard (BCE) or wgan-gp")
    gp_weight: float = opt(10.0, "WGAN-GP gradient penalty weight")
    disc_lr: float = opt(1e-4, "SRGAN: discriminator learning rate")

    def __post_init__(self) -> None:
        check_choice("loss.pixel", self.pixel, losses.PIXEL_LOSSES)
        check_range("loss.pixel_weight", self.pixel_weight, low=0.0)
        check_range("loss.coil_weight", self.coil_weight, low=0.0)
        if self.pixel_weight == 0 and self.ssim_weight == 0 and self.perceptual_weight == 0:
            raise ConfigError(
                "loss.pixel_weight=0 needs another content loss: loss.perceptual_weight or loss.ssim_weight"
            )
        check_choice("loss.gan", self.gan, losses.GAN_KINDS)
        check_choice("loss.perceptual", self.perceptual, ("edgesr", "vgg19"))
        if self.perceptual == "vgg19" and self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ConfigError(
                "loss.perceptual=vgg19 needs loss.perceptual_weights=PATH (a local safetensors file)"
            )


@dataclass(frozen=True)
class TrainConfig:
    model: str = opt("rdn_small", "a registered model (see edgesr.models.list_models())")
    unrolls: int = opt(
        0,
        "MoDL: unrolled iterations K (0: the preset's). The weights are shared across iterations, so a "
        "checkpoint trained at one K fine-tunes at another with init= (the paper trains K=1, then K=10)",
    )
    out: str = opt("runs/train", "output folder: checkpoints, logs, resolved config")
    init: str = opt("", "start from this checkpoint's weights (e.g. SRGAN from its SRResNet pre-training)")
    resume: bool = opt(False, "continue the run in `out` exactly where it stopped")
    seed: int = opt(0, "seed of the weights and of every batch")
    eval_every: int = opt(500, "validate and checkpoint every N steps")
    log_every: int = opt(50, "log every N steps")
    device: str = opt("auto", "auto, cpu or cuda[:N]")
    threads: int = opt(0, "torch CPU threads (0: torch's default)")
    amp: bool = opt(True, "bf16 autocast on CUDA (convolutions in bf16; FFTs and data consistency in fp32)")
    data: DataSection = opt(DataSection(), "data")
    optim: OptimSection = opt(OptimSection(), "optimiser")
    loss: LossSection = opt(LossSection(), "losses")

    def __post_init__(self) -> None:
        check_choice("model", self.model, list_models())
        check_range("unrolls", self.unrolls, low=0)
        if self.unrolls and not self.model.startswith("modl"):
            raise ConfigError(f"unrolls= applies to MoDL models only, not {self.model!r}")
        if self.loss.coil_weight and not self.model.startswith("deepcomplex"):
            raise ConfigError(f"loss.coil_weight applies to DeepcomplexMRI models only, not {self.model!r}")

    @property
    def task(self) -> str:
        return model_task(self.model)

    def model_options(self) -> dict[str, Any]:
        if self.task == "sr":
            return {"scale": self.data.scale, "upsampler": self.data.resolved_upsampler}
        if self.model.startswith("deepcomplex"):
            return {"coils": self.data.coils}
        if self.unrolls:
            return {"iterations": self.unrolls}
        return {}


def run_spec(cfg: TrainConfig, model: nn.Module) -> ModelSpec:
    """The model contract of a run's checkpoints: how the data it trains on is fed to the model."""
    data = cfg.data
    if cfg.task == "sr":
        return sr_spec(
            modality=data.modality,
            scale=data.scale,
            degradation=data.resolved_degradation,
            upsampler=data.resolved_upsampler,
            receptive_radius=receptive_radius(model, data.scale),
        )
    # DeepcomplexMRI's convolutions fix the coil count; MoDL's SENSE operator takes any number.
    return recon_spec(coils=data.coils if cfg.model.startswith("deepcomplex") else 0)


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _to(batch: SRBatch | ReconBatch, device: torch.device) -> Any:
    return type(batch)(*(t.to(device, non_blocking=True) for t in batch))


def _generator_loss(
    model: nn.Module, batch: Any, cfg: TrainConfig, device: torch.device, perceptual: nn.Module | None = None
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Pixel (+ SSIM) loss of one batch; returns (loss, parts, prediction).

    SR: on the HR image. Recon: the pixel loss on the complex channel pair (it keeps the phase
    honest), the SSIM term on magnitudes, as the metric is.
    """
    coil_images: torch.Tensor | None = None  # DeepcomplexMRI's coil images, when the loss supervises them
    # bf16 autocast on CUDA: the convolutions run in bf16 on the tensor cores; the recon models'
    # FFTs leave autocast and run in fp32 (edgesr.physics.fft), and losses are computed in fp32.
    autocast = bf16_autocast(device, cfg.amp)
    if cfg.task == "sr":
        with autocast:
            pred = model(batch.lr, batch.base).float()
        target = batch.hr
        pred_mag, target_mag = pred, target
    else:
        with autocast:
            if cfg.loss.coil_weight > 0:
                pred, coil_images = model(batch.kspace, batch.mask, batch.sens_maps, return_coil_images=True)
                coil_images = coil_images.float()
            else:
                pred = model(batch.kspace, batch.mask, batch.sens_maps)
        pred = pred.float()
        target = batch.target
        pred_mag, target_mag = complex_abs(pred, eps=1e-12), complex_abs(target)
    pixel_term = losses.pixel_loss(pred, target, cfg.loss.pixel)
    loss = cfg.loss.pixel_weight * pixel_term
    parts = {"pixel": pixel_term.item()}
    if coil_images is not None:
        coil_target = complex_mul(batch.sens_maps, batch.target)  # the fully sampled coil images S_c x
        coil_term = losses.pixel_loss(coil_images, coil_target, cfg.loss.pixel)
        loss = loss + cfg.loss.coil_weight * coil_term
        parts["coil"] = coil_term.item()
    if cfg.loss.ssim_weight > 0:
        ssim_term = losses.ssim_loss(pred_mag, target_mag)
        loss = loss + cfg.loss.ssim_weight * ssim_term
        parts["ssim"] = ssim_term.item()
    if perceptual is not None:
        feature_term = perceptual(pred, target)
        loss = loss + cfg.loss.perceptual_weight * feature_term
        parts["perceptual"] = feature_term.item()
    return loss, parts, pred


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


class _StepBatches(Dataset[Any]):
    """Map-style view of a batch source: item ``step`` is this rank's share of batch ``step``."""

    def __init__(self, batches: SRBatches | ReconBatches, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __getitem__(self, step: int) -> SRBatch | ReconBatch:
        return self.batches.batch(step, rank=self.rank, world_size=self.world_size)


def _one_thread_per_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # the workers share the cores; torch's default would oversubscribe them


def batch_stream(
    batches: SRBatches | ReconBatches,
    *,
    start: int,
    stop: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> Generator[SRBatch | ReconBatch, None, None]:
    """Batches ``start .. stop - 1`` in order, built in ``workers`` processes ahead of the loop.

    A batch is a pure function of (seed, step), so the worker count changes the speed, never the
    result: on a GPU the simulation of multi-coil k-space on the CPU would otherwise stall the device.
    """
    if workers == 0:
        for step in range(start, stop):
            yield batches.batch(step, rank=rank, world_size=world_size)
        return
    loader = DataLoader(
        _StepBatches(batches, rank, world_size),
        batch_size=None,  # items are whole batches already
        sampler=range(start, stop),
        num_workers=workers,
        prefetch_factor=4,
        pin_memory=pin_memory,
        worker_init_fn=_one_thread_per_worker,
    )
    yield from loader


def _make_batches(cfg: TrainConfig, dataset: PreparedDataset) -> SRBatches | ReconBatches:
    data = cfg.data
    if cfg.task == "sr":
        return SRBatches(
            dataset,
            modality=data.modality,
            scale=data.scale,
            degradation=data.resolved_degradation,
            upsampler=data.resolved_upsampler,
            patch=data.patch,
            batch_size=data.batch_size,
            noise_max=data.noise_max,
            augment=data.augment,
            seed=cfg.seed,
        )
    return ReconBatches(
        dataset,
        crop=data.crop,
        batch_size=data.batch_size,
        accelerations=data.accelerations,
        masks=data.masks,
        coils=data.coils,
        center_fraction=data.center_fraction,
        noise_std=data.noise_std,
        augment=data.augment,
        seed=cfg.seed,
    )


# Keys that may change between a run and its resumption: where it runs and how often it reports.
# Everything else (model, data, schedule, losses, seed) shapes the result, so a change is refused.
RESUMABLE_CHANGES = frozenset(
    {"out", "resume", "eval_every", "log_every", "device", "threads", "data.root", "data.workers", "command"}
)


def config_of(cfg: TrainConfig) -> dict[str, Any]:
    """The run's configuration as plain JSON types (what checkpoints record)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _refuse_changed_settings(saved: dict[str, Any], now: dict[str, Any], out: Path) -> None:
    """``resume=true`` continues the *same* run: e.g. a new ``optim.steps`` would silently re-shape
    the cosine schedule mid-way, so it is an error; start a new run with ``init=`` instead."""
    # A key the run's record lacks is an option added to edgesr since: the run used its default.
    before = _flatten(config_of(TrainConfig())) | _flatten(saved)
    after = _flatten(now)
    changed = [
        f"{key}: {before.get(key)!r} in the run, {after.get(key)!r} now"
        for key in sorted(before.keys() | after.keys())
        if key not in RESUMABLE_CHANGES and before.get(key) != after.get(key)
    ]
    if changed:
        raise ConfigError(
            f"resume=true continues the run in {out} with its own settings, but these differ: "
            + "; ".join(changed)
            + ". Drop the changed keys, or start a new run from its weights with init="
            + str(out / "last")
        )


def _make_perceptual(
    cfg: TrainConfig, dataset: PreparedDataset, console: Console, device: torch.device
) -> nn.Module | None:
    if cfg.task != "sr" or cfg.loss.perceptual_weight <= 0:
        return None
    if cfg.loss.perceptual == "vgg19":
        features: nn.Module = load_vgg19(cfg.loss.perceptual_weights)
    else:
        with console.status("training edgesr's feature network (once per data set)"):
            features = cached_feature_encoder(
                dataset, dataset.path / "features", steps=cfg.loss.feature_steps
            )
    return PerceptualLoss(features).to(device)


def train(
    cfg: TrainConfig, *, command: str = "", stop_at: int | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Runs (or resumes) a training run; returns the last validation metrics and the best PSNR.

    Args:
        cfg: the run's configuration.
        command: the command line that started it, recorded in the checkpoints.
        stop_at: stop after this many steps as if interrupted (tests of resumption use it).
    """
    env = distributed.init_distributed(cfg.device)
    console = console or Console(stderr=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed training shapes: let cuDNN pick its fastest kernels
    out = Path(cfg.out)
    last_dir, best_dir = out / "last", out / "best"
    if not cfg.resume and (last_dir.exists() or (out / "last.old").exists()):
        raise ConfigError(
            f"{out} already holds a run; pass resume=true to continue it, or choose another out="
        )
    torch.manual_seed(cfg.seed)
    dataset = PreparedDataset(cfg.data.root or None)
    val_modality = cfg.data.modality if cfg.task == "sr" else "MR"
    if next(dataset.slices("val", val_modality), None) is None:
        raise DataError(f"the data set at {dataset.path} has no {val_modality} slices in its val split")
    model = create_model(cfg.model, **cfg.model_options()).to(env.device)
    if cfg.init and not cfg.resume:
        initial, _ = load_model(cfg.init)
        model.load_state_dict(initial.state_dict(), strict=True)
    batches = _make_batches(cfg, dataset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    optim = cfg.optim
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(s, warmup=optim.warmup, total=optim.steps, min_ratio=optim.min_lr_ratio),
    )
    perceptual = _make_perceptual(cfg, dataset, console, env.device)
    adversarial = cfg.task == "sr" and cfg.loss.adversarial_weight > 0
    discriminator: nn.Module | None = None
    disc_optimizer: torch.optim.Optimizer | None = None
    if adversarial:
        norm = "none" if cfg.loss.gan == "wgan-gp" else "batch"
        discriminator = Discriminator(in_channels=1, features=32, norm=norm).to(env.device)
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=cfg.loss.disc_lr, betas=(0.5, 0.999))

    start_step, best_psnr, metrics = 0, -math.inf, {}
    if cfg.resume:
        if not (last_dir.exists() or (out / "last.old").exists()):
            raise ConfigError(f"resume=true, but {out} holds no run to resume")
        # Restoring only touches memory; a refusal below leaves the run on disk as it was.
        meta, _ = load_training_state(last_dir, model, optimizer, scheduler)
        _refuse_changed_settings(meta.get("config", {}), config_of(cfg), out)
        start_step, metrics = meta["step"], meta["metrics"]
        best_psnr = float(metrics.get("best_val_psnr", -math.inf))
        if discriminator is not None and disc_optimizer is not None and (out / "discriminator").exists():
            load_training_state(out / "discriminator", discriminator, disc_optimizer)
    train_model: nn.Module = DistributedDataParallel(model) if env.world_size > 1 else model
    disc_model: nn.Module | None = discriminator
    if discriminator is not None and env.world_size > 1:
        disc_model = DistributedDataParallel(discriminator)
    config_dict = config_of(cfg)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.resolved.yaml", to_yaml(cfg))
    model_name, model_options = cfg.model, cfg.model_options()
    machine = training_machine(env.device, env.world_size)
    spec = run_spec(cfg, model)
    data = cfg.data
    acquisition = ReconAcquisition(
        acceleration=data.accelerations[0],
        mask_kind=data.masks[0],
        n_coils=data.coils,
        center_fraction=data.center_fraction,
        noise_std=data.noise_std,
    )

    def save(folder: Path, step: int, with_state: bool = True) -> None:
        save_checkpoint(
            folder,
            model,
            model_name=model_name,
            model_options=model_options,
            step=step,
            metrics=metrics | {"best_val_psnr": best_psnr},
            config=config_dict | {"command": command},
            optimizer=optimizer if with_state else None,
            scheduler=scheduler if with_state else None,
            machine=machine,
            spec=spec,
        )
        if with_state and discriminator is not None and disc_optimizer is not None:
            save_checkpoint(
                out / "discriminator",
                discriminator,
                model_name="discriminator",
                model_options={},
                step=step,
                optimizer=disc_optimizer,
            )

    stop = _StopFlag()
    step = start_step
    stream = batch_stream(
        batches,
        start=start_step,
        stop=cfg.optim.steps,
        rank=env.rank,
        world_size=env.world_size,
        workers=cfg.data.workers,
        pin_memory=env.device.type == "cuda",
    )
    started = time.perf_counter()
    log_file = open(out / "log.jsonl", "a", encoding="utf-8") if env.is_main else None  # noqa: SIM115
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with stop.installed(), Progress(*columns, console=console, disable=not env.is_main) as progress:
            task_id = progress.add_task(f"train {cfg.model}", total=cfg.optim.steps, completed=start_step)
            for host_batch in stream:
                train_model.train()
                batch = _to(host_batch, env.device)
                loss, parts, pred = _generator_loss(train_model, batch, cfg, env.device, perceptual)
                if disc_model is not None and disc_optimizer is not None:
                    gp = cfg.loss.gp_weight
                    d_loss = losses.discriminator_loss(disc_model, batch.hr, pred, cfg.loss.gan, gp_weight=gp)
                    disc_optimizer.zero_grad(set_to_none=True)
                    d_loss.backward()
                    disc_optimizer.step()
                    g_adv = losses.generator_adversarial_loss(disc_model(pred), cfg.loss.gan)
                    loss = loss + cfg.loss.adversarial_weight * g_adv
                    parts |= {"adversarial": g_adv.item(), "discriminator": d_loss.item()}
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip or math.inf)
                optimizer.step()
                scheduler.step()
                step += 1
                progress.update(
                    task_id, completed=step, description=f"train {cfg.model} loss {loss.item():.4g}"
                )
                if log_file is not None and (step % cfg.log_every == 0 or step == cfg.optim.steps):
                    record = {
                        "step": step,
                        "loss": loss.item(),
                        **parts,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                        "seconds": round(time.perf_counter() - started, 2),
                    }
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if step % cfg.eval_every == 0 or step == cfg.optim.steps:
                    if env.is_main:
                        metrics = validate(
                            model,
                            dataset,
                            spec,
                            device=env.device,
                            max_slices=data.val_slices,
                            acquisition=acquisition,
                        )
                        if metrics["val_psnr"] > best_psnr:
                            best_psnr = metrics["val_psnr"]
                            save(best_dir, step, with_state=False)
                        save(last_dir, step)
                        if log_file is not None:
                            log_file.write(
                                json.dumps({"step": step, **metrics, "best_val_psnr": best_psnr}) + "\n"
                            )
                            log_file.flush()
                        psnr, ssim = metrics["val_psnr"], metrics["val_ssim"]
                        progress.console.print(f"step {step}: val PSNR {psnr:.2f} dB, SSIM {ssim:.4f}")
                    distributed.barrier(env)
                halt = stop.requested or (stop_at is not None and step >= stop_at)
                if distributed.broadcast_flag(env, halt):
                    if env.is_main and step % cfg.eval_every != 0:
                        save(last_dir, step)
                    console.print(f"[yellow]stopped at step {step}[/]; continue with resume=true")
                    break
    finally:
        stream.close()  # stops the batch workers when the loop ends early
        if log_file is not None:
            log_file.close()
        distributed.shutdown(env)
    return {"step": step, "best_val_psnr": best_psnr, **metrics}
