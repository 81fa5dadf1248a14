"""``edgesr train``'s settings: the ``data``, ``optim`` and ``loss`` sections and the run's own keys.

A run records its settings (:func:`config_of`) in every checkpoint; ``resume=true`` continues a run
only with the settings it was started with (:func:`check_resume_settings`), and :func:`run_spec` is
the model contract its checkpoints carry.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edgesr import losses
from edgesr.baselines import UPSAMPLERS
from edgesr.config import check_choice, check_range, opt
from edgesr.errors import ConfigError
from edgesr.evaluate import DEFAULT_DEGRADATION
from edgesr.models import list_models, model_task
from edgesr.models._probe import receptive_radius
from edgesr.physics.degrade import DEGRADATIONS, SCALES
from edgesr.physics.masks import MASK_KINDS
from edgesr.spec import ModelSpec, recon_spec, sr_spec
from edgesr.train.data import ScannerVariety


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
    # Scanner variety (SR; edgesr.train.data.ScannerVariety): all off by default, so that the commands
    # in older model cards still reproduce their teachers.
    scan_noise: float = opt(
        0.0, "SR: the scan's own noise at full resolution, std log-uniform in [this / 30, this]"
    )
    zoom: tuple[float, float] = opt((1.0, 1.0), "SR: other pixel sizes: resample by a factor in this range")
    blur_jitter: float = opt(0.0, "SR, CT: detector blur width times a factor in [1 - this, 1 + this]")
    quantize_8bit: float = opt(0.0, "SR: probability that the LR input is stored as 8 bits")
    contrast_min: float = opt(0.75, "the intensity scale is drawn from [contrast_min, 1]")
    background_zero: float = opt(
        0.0, "SR: probability that the scan's background is stored as zero (suppressed, skull-stripped)"
    )
    interpolated_recon: float = opt(
        0.0,
        "SR, MR: probability that the scan acquired part of its k-space and was zero-filled to the matrix",
    )
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
        if self.interpolated_recon > 0 and self.resolved_degradation != "mr-kspace":
            raise ConfigError(
                "data.interpolated_recon: an MR k-space acquisition option; the degradation is "
                f"{self.resolved_degradation}"
            )
        try:
            _ = self.variety  # validates the scanner-variety options together
        except ConfigError as exc:
            raise ConfigError(f"data.{exc}") from None

    @property
    def variety(self) -> ScannerVariety:
        return ScannerVariety(
            scan_noise=self.scan_noise,
            zoom=(float(self.zoom[0]), float(self.zoom[1])),
            blur_jitter=self.blur_jitter,
            quantize_8bit=self.quantize_8bit,
            contrast_min=self.contrast_min,
            background_zero=self.background_zero,
            interpolated_recon=self.interpolated_recon,
        )

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
    amp: bool = opt(
        True,
        "bf16 autocast where the hardware multiplies bf16: CUDA, a CPU with AVX512-BF16 or AMX "
        "(convolutions in bf16; FFTs, data consistency, losses, weights and optimiser in fp32)",
    )
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


def check_resume_settings(saved: dict[str, Any], cfg: TrainConfig, out: Path) -> None:
    """Refuses to resume the run in ``out`` with settings other than its own.

    ``resume=true`` continues the *same* run: e.g. a new ``optim.steps`` would silently re-shape the
    cosine schedule mid-way, so it is an error; start a new run with ``init=`` instead. Only the keys
    in :data:`RESUMABLE_CHANGES` may differ.

    Args:
        saved: the run's recorded configuration (``checkpoint.json``'s ``config``).
        cfg: the configuration of the resumption.
        out: the run's folder, for the message.

    Raises:
        ConfigError: naming every changed key with its value in the run and now.
    """
    # A key the run's record lacks is an option added to edgesr since: the run used its default.
    # The run's training data is recorded beside its settings and checked on its own (the slices, not a
    # setting: edgesr.train.teacher).
    saved = {k: v for k, v in saved.items() if k != "training_data"}
    before = _flatten(config_of(TrainConfig())) | _flatten(saved)
    after = _flatten(config_of(cfg))
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
