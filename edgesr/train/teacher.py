"""``edgesr train``: a model trained on the prepared data set, from scratch or from ``init=``.

:func:`train` builds what a :class:`~edgesr.train.config.TrainConfig` describes (the model, its
batches, AdamW with warm-up and cosine decay, the teacher objective and the validation) and hands them
to :func:`edgesr.train.fit.fit`, the loop every training stage shares.

The objective: a pixel loss (L1 or MSE) on the SR output or the complex recon image, plus optional
SSIM and perceptual terms and DeepcomplexMRI's coil-image supervision. With
``loss.adversarial_weight > 0`` (SRGAN) a discriminator trains alongside the generator: the objective
takes one discriminator step, then returns ``pixel + perceptual + w * adversarial`` for the generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgesr import losses
from edgesr._io import write_text_atomic
from edgesr.config import to_yaml
from edgesr.data.dataset import PreparedDataset
from edgesr.data.prepare import fingerprint_differences, training_data
from edgesr.device import bf16_autocast
from edgesr.errors import ConfigError, DataError
from edgesr.evaluate import ReconAcquisition, validate
from edgesr.losses.perceptual import PerceptualLoss, cached_feature_encoder, load_vgg19
from edgesr.models import create_model
from edgesr.models.srgan import Discriminator
from edgesr.physics.fft import complex_abs, complex_mul
from edgesr.train import distributed
from edgesr.train.checkpoint import load_model, read_metadata
from edgesr.train.config import TrainConfig, check_resume_settings, config_of, run_spec
from edgesr.train.data import CropTooLarge, ReconBatches, SRBatches
from edgesr.train.fit import CheckpointInfo, FitSettings, Objective, check_run_folder, fit
from edgesr.train.optim import adamw_warmup_cosine


def train(
    cfg: TrainConfig, *, command: str = "", stop_at: int | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Runs (or resumes) a training run; returns the last validation metrics and the best PSNR.

    Args:
        cfg: the run's configuration.
        command: the command line that started it, recorded in the checkpoints.
        stop_at: stop after this many steps as if interrupted (tests of resumption use it).
        console: where the progress bar and messages go (default: stderr).

    Raises:
        ConfigError: ``out`` holds a run and ``resume`` is false (or none and it is true), or a
            resumption changes the run's settings.
        DataError: the data set has no validation slices for the run.
    """
    env = distributed.init_distributed(cfg.device)
    console = console or Console(stderr=True)
    try:
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        out = Path(cfg.out)
        # Refusals come before the slow set-up (data, feature network) and leave the run as it was.
        check_run_folder(out, resume=cfg.resume)
        saved = read_metadata(out / "last").get("config", {}) if cfg.resume else {}
        if cfg.resume:
            check_resume_settings(saved, cfg, out)

        # Everything below draws from the torch RNG in a fixed order, so a seed fixes the run.
        torch.manual_seed(cfg.seed)
        dataset = PreparedDataset(cfg.data.root or None)
        val_modality = cfg.data.modality if cfg.task == "sr" else "MR"
        for split in ("train", "val"):
            if next(dataset.slices(split, val_modality), None) is None:
                raise DataError(dataset.no_slices(split, val_modality))
        trained_on = training_data(dataset.manifest, val_modality)
        if cfg.resume:
            _check_same_training_data(saved, trained_on, out)
        model = create_model(cfg.model, **cfg.model_options()).to(env.device)
        if cfg.init and not cfg.resume:
            initial, _ = load_model(cfg.init)
            model.load_state_dict(initial.state_dict(), strict=True)
        try:
            batches = _make_batches(cfg, dataset)
        except CropTooLarge as exc:
            key = f"data.patch={cfg.data.patch}" if cfg.task == "sr" else f"data.crop={cfg.data.crop}"
            raise ConfigError(f"{key}: {exc}") from None
        optimizer, scheduler = adamw_warmup_cosine(model.parameters(), cfg.optim)
        perceptual = _make_perceptual(cfg, dataset, console, env.device)
        extra_state: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
        discriminator: nn.Module | None = None
        disc_optimizer: torch.optim.Optimizer | None = None
        if cfg.task == "sr" and cfg.loss.adversarial_weight > 0:
            norm = "none" if cfg.loss.gan == "wgan-gp" else "batch"
            discriminator = Discriminator(in_channels=1, features=32, norm=norm).to(env.device)
            disc_optimizer = torch.optim.Adam(
                discriminator.parameters(), lr=cfg.loss.disc_lr, betas=(0.5, 0.999)
            )
            extra_state["discriminator"] = (discriminator, disc_optimizer)
            if env.world_size > 1:
                discriminator = DistributedDataParallel(discriminator)
        # The spec is measured before fit restores a resumed run's state (the probe keeps the global
        # RNG untouched either way).
        spec = run_spec(cfg, model)

        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "config.resolved.yaml", to_yaml(cfg))
        data = cfg.data
        acquisition = ReconAcquisition(
            acceleration=data.accelerations[0],
            mask_kind=data.masks[0],
            n_coils=data.coils,
            center_fraction=data.center_fraction,
            noise_std=data.noise_std,
        )

        def validator(trained: nn.Module) -> dict[str, float]:
            return validate(
                trained,
                dataset,
                spec,
                device=env.device,
                max_slices=data.val_slices,
                acquisition=acquisition,
            )

        return fit(
            model,
            teacher_objective(
                cfg,
                device=env.device,
                perceptual=perceptual,
                discriminator=discriminator,
                disc_optimizer=disc_optimizer,
            ),
            batches,
            optimizer=optimizer,
            scheduler=scheduler,
            settings=FitSettings(
                steps=cfg.optim.steps,
                eval_every=cfg.eval_every,
                log_every=cfg.log_every,
                clip=cfg.optim.clip,
                workers=data.workers,
                description=f"train {cfg.model}",
            ),
            out=out,
            checkpoint=CheckpointInfo(
                model_name=cfg.model,
                model_options=cfg.model_options(),
                spec=spec,
                # What the weights were trained on, for their card (``trained_on``) and for resumption.
                config=config_of(cfg) | {"command": command, "training_data": trained_on},
            ),
            env=env,
            validate=validator,
            extra_state=extra_state,
            resume=cfg.resume,
            stop_at=stop_at,
            console=console,
        )
    finally:
        distributed.shutdown(env)


def teacher_objective(
    cfg: TrainConfig,
    *,
    device: torch.device,
    perceptual: nn.Module | None = None,
    discriminator: nn.Module | None = None,
    disc_optimizer: torch.optim.Optimizer | None = None,
) -> Objective:
    """The loss of ``edgesr train`` as an objective for :func:`~edgesr.train.fit.fit`.

    Args:
        cfg: the run's configuration (its task, ``loss`` section and ``amp``).
        device: where the model runs (bf16 autocast when ``cfg.amp`` and the device multiplies bf16:
            :func:`edgesr.device.bf16_autocast`).
        perceptual: the perceptual loss module, when ``loss.perceptual_weight > 0``.
        discriminator: SRGAN's discriminator as it runs (DDP-wrapped under torchrun): the objective
            steps it with ``disc_optimizer`` before returning the generator's loss.
        disc_optimizer: the discriminator's optimiser.
    """

    def objective(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts, pred = _content_loss(model, batch, cfg, device, perceptual)
        if discriminator is not None and disc_optimizer is not None:
            # One discriminator step on this batch (the prediction is detached inside), then the
            # generator's adversarial term, which the loop back-propagates with the content loss.
            gan = cfg.loss.gan
            d_loss = losses.discriminator_loss(
                discriminator, batch.hr, pred, gan, gp_weight=cfg.loss.gp_weight
            )
            disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_optimizer.step()
            g_adv = losses.generator_adversarial_loss(discriminator(pred), gan)
            loss = loss + cfg.loss.adversarial_weight * g_adv
            parts |= {"adversarial": g_adv.item(), "discriminator": d_loss.item()}
        return loss, parts

    return objective


def _content_loss(
    model: nn.Module, batch: Any, cfg: TrainConfig, device: torch.device, perceptual: nn.Module | None = None
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Pixel (+ SSIM, coil, perceptual) loss of one batch; returns (loss, parts, prediction).

    SR: on the HR image. Recon: the pixel loss on the complex channel pair (it keeps the phase
    honest), the SSIM term on magnitudes, as the metric is.
    """
    coil_images: torch.Tensor | None = None  # DeepcomplexMRI's coil images, when the loss supervises them
    # bf16 autocast where the device multiplies bf16 (CUDA's tensor cores, a CPU's AVX512-BF16/AMX):
    # the convolutions run in bf16; the recon models' FFTs leave autocast and run in fp32
    # (edgesr.physics.fft), and losses are computed in fp32.
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


def _check_same_training_data(saved: dict[str, Any], current: dict[str, Any], out: Path) -> None:
    """Refuses to resume a run on other training slices than it started on (a re-prepared data set)."""
    recorded = saved.get("training_data")
    if recorded is None or recorded.get("id") == current["id"]:  # runs from before the record: unchecked
        return
    changes = fingerprint_differences({"sources": recorded["sources"]}, {"sources": current["sources"]})
    raise DataError(
        f"resume=true continues the run in {out}, but the data set's train/val slices differ from the "
        f"ones it started on ({'; '.join(changes) or 'other slices'}); prepare the data set it used, or "
        f"start a new run from its weights with init={out / 'last'}"
    )


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
            variety=data.variety,
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
