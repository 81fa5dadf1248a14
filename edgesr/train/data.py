"""Training batches drawn from the prepared data set, a pure function of (seed, step).

Every batch is built from a generator seeded with ``(seed, step)``, never from a running RNG. That
buys three things: a resumed run sees exactly the batches an uninterrupted run would have seen; a
distributed run draws the same *global* batch on every rank and each rank keeps its own shard, so it
matches a single process with the same global batch; and no data-loader state needs saving.

SR: a training slice is augmented (90-degree rotations, flips, a random gamma and contrast), degraded
as a whole (with a random noise level), interpolated as a whole (the model's ``base``), and only then
cropped into aligned LR/base/HR patches, preferring patches with tissue in them. :class:`ScannerVariety`
adds what other scanners do to an image (their own noise, other pixel sizes and blur widths, 8-bit
storage, dimmer intensities), so that a teacher holds up on scans unlike its training data.
Recon: a random crop of an augmented training slice becomes a simulated multi-coil acquisition with a
per-sample seed, acceleration and mask kind.

:func:`batch_stream` hands any such source's batches to the training loop, built ahead in worker
processes when asked.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from edgesr.baselines import interpolate_base
from edgesr.data.dataset import PreparedDataset
from edgesr.errors import ConfigError, DataError
from edgesr.physics.degrade import crop_to_multiple, degrade, noisy_scan_pair
from edgesr.physics.fft import fft2c_complex, ifft2c_complex
from edgesr.physics.simulate import simulate_multicoil


class SRBatch(NamedTuple):
    """``lr [B, 1, p, p]``, ``base`` and ``hr`` ``[B, 1, p*s, p*s]``, intensities / volume max."""

    lr: torch.Tensor
    base: torch.Tensor
    hr: torch.Tensor


class ReconBatch(NamedTuple):
    """``kspace``/``sens_maps`` ``[B, 2C, H, W]``, ``mask`` ``[B, 1, 1, W]``, ``target`` ``[B, 2, H, W]``."""

    kspace: torch.Tensor
    mask: torch.Tensor
    sens_maps: torch.Tensor
    target: torch.Tensor


def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _shard(batch_size: int, rank: int, world_size: int) -> range:
    if batch_size % world_size:
        raise ValueError(f"global batch {batch_size} is not divisible by world size {world_size}")
    per_rank = batch_size // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _augment(
    image: torch.Tensor, g: torch.Generator, intensity: bool, contrast_min: float = 0.75
) -> torch.Tensor:
    """Random rot90/flip; random gamma in [0.7, 1.4] and contrast scale in [contrast_min, 1] (image in
    [0, 1])."""
    image = torch.rot90(image, int(torch.randint(0, 4, (), generator=g)), dims=(-2, -1))
    if bool(torch.randint(0, 2, (), generator=g)):
        image = torch.flip(image, dims=(-1,))
    if intensity:
        gamma = math.exp(_uniform(g, math.log(0.7), math.log(1.4)))
        image = image.clamp_min(0).pow(gamma) * _uniform(g, contrast_min, 1.0)
    return image


@dataclass(frozen=True)
class ScannerVariety:
    """What other scanners do to an image, drawn per training sample (all off by default).

    Attributes:
        scan_noise: the scan's own noise at full resolution (in units of the volume maximum), std
            drawn log-uniformly from [scan_noise / 30, scan_noise]: scanners differ by orders of
            magnitude, and most samples stay nearly as clean as the training scans. MR complex
            (Rician magnitude), CT Gaussian; the LR image is made from the noisy scan
            (:func:`edgesr.physics.degrade.noisy_scan_pair`).
        zoom: other pixel sizes: the slice is resampled by a factor drawn log-uniformly from this
            range (MR in k-space, CT by area/bicubic interpolation) before it is degraded.
        blur_jitter: CT: the detector blur's width times a factor drawn from [1 - j, 1 + j] (other
            reconstruction kernels and slice profiles).
        quantize_8bit: the probability that the LR input is stored as 8 bits (256 levels of its max).
        contrast_min: the intensity scale is drawn from [contrast_min, 1] (dim volumes, e.g. one
            saturated voxel setting the maximum).
        background_zero: the probability that the scan's background is stored as exactly zero
            (console background suppression, skull-stripped images), outside a smooth outline drawn
            at 5-35 % of the slice's 99th percentile (:func:`edgesr.physics.degrade.suppress_background`).
        interpolated_recon: MR: the probability that the scan acquired only part of its k-space and the
            console zero-filled the rest to the stored matrix (phase resolution below 100 %,
            interpolated reconstructions), each axis keeping a fraction drawn from ``ACQUIRED_RANGE``
            (:func:`edgesr.physics.degrade.zero_filled_reconstruction`): the model learns to add
            nothing where the scan has nothing, instead of inventing detail that costs PSNR.
    """

    scan_noise: float = 0.0
    zoom: tuple[float, float] = (1.0, 1.0)
    blur_jitter: float = 0.0
    quantize_8bit: float = 0.0
    contrast_min: float = 0.75
    background_zero: float = 0.0
    interpolated_recon: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.zoom
        if not 0.25 <= low <= high <= 4.0:
            raise ConfigError(f"zoom must be a range within [0.25, 4]; got {self.zoom}")
        if not 0.0 <= self.blur_jitter < 1.0:
            raise ConfigError(f"blur_jitter must be in [0, 1); got {self.blur_jitter}")
        if not 0.0 <= self.quantize_8bit <= 1.0:
            raise ConfigError(f"quantize_8bit is a probability; got {self.quantize_8bit}")
        if not 0.0 <= self.background_zero <= 1.0:
            raise ConfigError(f"background_zero is a probability; got {self.background_zero}")
        if not 0.0 <= self.interpolated_recon <= 1.0:
            raise ConfigError(f"interpolated_recon is a probability; got {self.interpolated_recon}")
        if not 0.0 < self.contrast_min <= 1.0:
            raise ConfigError(f"contrast_min must be in (0, 1]; got {self.contrast_min}")
        if self.scan_noise < 0:
            raise ConfigError(f"scan_noise must be >= 0; got {self.scan_noise}")


# The fraction of each k-space axis an interpolated MR reconstruction acquired: 0.25 covers a 134-line
# phase encoding stored at 484 (a real abdominal MPR), 1.0 a full acquisition.
ACQUIRED_RANGE = (0.25, 1.0)


class Draw(NamedTuple):
    """One training sample's scanner: its (resampled) slice, scan noise std, CT blur width, whether
    the LR input is stored as 8 bits, the background outline level (0: background kept), and the
    fractions of k-space rows and columns acquired (MR; (1, 1): all)."""

    image: torch.Tensor
    scan_noise: float
    blur: float
    quantize: bool
    background_below: float
    acquired: tuple[float, float] = (1.0, 1.0)


def resample(image: torch.Tensor, factor: float, degradation: str) -> torch.Tensor:
    """``image [H, W]`` on a grid ``factor`` times finer (>1) or coarser (<1), as that modality would be
    reconstructed: MR by cropping or zero-padding the centred k-space (a scan of another matrix
    size), anything else by area averaging (coarser) or bicubic interpolation (finer)."""
    height, width = image.shape[-2:]
    new_h, new_w = max(2, round(height * factor)), max(2, round(width * factor))
    if (new_h, new_w) == (height, width):
        return image
    if degradation == "mr-kspace":
        kspace = fft2c_complex(image.to(torch.complex64))
        out = torch.zeros((new_h, new_w), dtype=kspace.dtype)
        h, w = min(height, new_h), min(width, new_w)
        src_t, src_l = height // 2 - h // 2, width // 2 - w // 2
        dst_t, dst_l = new_h // 2 - h // 2, new_w // 2 - w // 2
        out[dst_t : dst_t + h, dst_l : dst_l + w] = kspace[src_t : src_t + h, src_l : src_l + w]
        # Orthonormal FFTs: keep intensities in their units when the number of samples changes.
        return (ifft2c_complex(out).abs() * math.sqrt(new_h * new_w / (height * width))).to(image.dtype)
    mode = "area" if factor < 1 else "bicubic"
    resized = F.interpolate(image[None, None], size=(new_h, new_w), mode=mode)
    return resized[0, 0].clamp_min(0)


def _quantize_8bit(image: torch.Tensor) -> torch.Tensor:
    top = float(image.max())
    return image if top <= 0 else torch.round(image / top * 255) * (top / 255)


def _foreground_crop(
    image: torch.Tensor, size_h: int, size_w: int, g: torch.Generator, tries: int = 8
) -> tuple[int, int]:
    """Top-left corner of a crop, re-drawn up to ``tries`` times while the crop is mostly background."""
    height, width = image.shape[-2:]
    if size_h > height or size_w > width:
        raise ValueError(f"crop {size_h}x{size_w} does not fit an image of {height}x{width}")
    threshold = 0.1 * float(image.max())
    for _ in range(tries):
        top = int(torch.randint(0, height - size_h + 1, (), generator=g))
        left = int(torch.randint(0, width - size_w + 1, (), generator=g))
        if float((image[..., top : top + size_h, left : left + size_w] > threshold).float().mean()) > 0.3:
            break
    return top, left


LR_PIXELS = "low-resolution pixels"  # an SR patch is measured on the network's input


class CropTooLarge(ConfigError):
    """A training patch or crop larger than the smallest training slice allows (callers name their key)."""


def _require_crop_fits(
    images: Sequence[torch.Tensor], *, size: int, scale: int, what: str, unit: str = "pixels"
) -> None:
    """Raises CropTooLarge when a square crop of ``size`` (at ``1/scale``) does not fit every image.

    Any rotation counts (the augmentation's rot90 swaps height and width), so the bound is the
    shortest side. Checked before training, because crops are drawn per step: a crop too large for
    one small slice would otherwise stop a run hours in, at the step that first draws that slice.
    """
    smallest = min(images, key=lambda image: min(image.shape[-2:]))
    largest = min(smallest.shape[-2:]) // scale
    if size > largest:
        height, width = smallest.shape[-2:]
        at = f", {height // scale}x{width // scale} at x{scale}" if scale > 1 else ""
        raise CropTooLarge(
            f"a crop of {size} {unit} does not fit the smallest {what} ({height}x{width}{at}); "
            f"at most {largest}"
        )


def _split_images(dataset: PreparedDataset, modality: str, split: str) -> list[torch.Tensor]:
    images = [torch.from_numpy(s.image) for s in dataset.slices(split, modality)]
    if not images:
        raise DataError(dataset.no_slices(split, modality))
    return images


def check_sr_patch(
    dataset: PreparedDataset, *, modality: str, scale: int, patch: int, split: str = "train"
) -> None:
    """What SRBatches checks, without building it: for a recipe's later stages, before the first trains."""
    images = _split_images(dataset, modality, split)
    _require_crop_fits(images, size=patch, scale=scale, what=f"{modality} {split} slice", unit=LR_PIXELS)


def check_recon_crop(dataset: PreparedDataset, *, crop: int, split: str = "train") -> None:
    """What ReconBatches checks, without building it."""
    _require_crop_fits(_split_images(dataset, "MR", split), size=crop, scale=1, what=f"MR {split} slice")


class SRBatches:
    """Patches for SR training from the ``split`` slices of one modality."""

    def __init__(
        self,
        dataset: PreparedDataset,
        *,
        modality: str,
        scale: int,
        degradation: str,
        upsampler: str,
        patch: int,
        batch_size: int,
        noise_max: float = 0.0,
        augment: bool = True,
        variety: ScannerVariety = ScannerVariety(),
        seed: int = 0,
        split: str = "train",
    ) -> None:
        self.images = [torch.from_numpy(s.image / s.volume_max) for s in dataset.slices(split, modality)]
        if not self.images:
            raise ValueError(f"no {modality} slices in the {split} split")
        _require_crop_fits(
            self.images, size=patch, scale=scale, what=f"{modality} {split} slice", unit=LR_PIXELS
        )
        self.scale, self.degradation, self.upsampler = scale, degradation, upsampler
        self.patch, self.batch_size, self.noise_max = patch, batch_size, noise_max
        self.augment, self.seed = augment, seed
        self.variety = variety
        # The smallest zoom must leave every slice larger than a patch (checked once, not per step).
        smallest = min(min(image.shape[-2:]) for image in self.images)
        self.min_zoom = max(variety.zoom[0], (patch * scale + scale) / smallest)

    def _vary(self, image: torch.Tensor, g: torch.Generator) -> Draw:
        """The scanner variety of one sample: the resampled slice and what its scanner does to it."""
        v = self.variety
        plain = Draw(image, scan_noise=0.0, blur=0.25 * self.scale, quantize=False, background_below=0.0)
        if v == ScannerVariety():
            return plain  # draw nothing: old runs' batches stay as they were
        low, high = min(self.min_zoom, v.zoom[1]), v.zoom[1]
        factor = math.exp(_uniform(g, math.log(low), math.log(high)))
        scan_noise = (
            math.exp(_uniform(g, math.log(v.scan_noise / 30), math.log(v.scan_noise)))
            if v.scan_noise
            else 0.0
        )
        blur = 0.25 * self.scale * _uniform(g, 1.0 - v.blur_jitter, 1.0 + v.blur_jitter)
        quantize = _uniform(g, 0.0, 1.0) < v.quantize_8bit
        background_below = 0.0
        if v.background_zero > 0:  # drawn only when asked: earlier variety runs keep their batches
            masked = _uniform(g, 0.0, 1.0) < v.background_zero
            below = _uniform(g, 0.05, 0.35)
            background_below = below if masked else 0.0
        acquired = (1.0, 1.0)
        if v.interpolated_recon > 0:  # drawn only when asked, like background_zero
            interpolated = _uniform(g, 0.0, 1.0) < v.interpolated_recon
            fractions = (_uniform(g, *ACQUIRED_RANGE), _uniform(g, *ACQUIRED_RANGE))
            if interpolated and self.degradation == "mr-kspace":
                acquired = fractions
        return Draw(
            resample(image, factor, self.degradation), scan_noise, blur, quantize, background_below, acquired
        )

    def batch(self, step: int, *, rank: int = 0, world_size: int = 1) -> SRBatch:
        g = _generator(self.seed, step)
        lrs, bases, hrs = [], [], []
        mine = _shard(self.batch_size, rank, world_size)
        for item in range(self.batch_size):
            # Every rank draws every item's randomness, so the global batch is the same on all ranks.
            image = self.images[int(torch.randint(0, len(self.images), (), generator=g))]
            if self.augment:
                image = _augment(image, g, True, self.variety.contrast_min)
            draw = self._vary(image, g)
            image = draw.image
            noise = _uniform(g, 0.0, self.noise_max)
            noise_seed = int(torch.randint(0, 2**31 - 1, (), generator=g))
            hr = crop_to_multiple(image[None, None].float(), self.scale)
            top, left = _foreground_crop(hr[0, 0, :: self.scale, :: self.scale], self.patch, self.patch, g)
            if item not in mine:
                continue
            noise_g = torch.Generator().manual_seed(noise_seed)
            varied = draw.scan_noise > 0 or draw.blur != 0.25 * self.scale or draw.background_below > 0
            if varied or draw.acquired != (1.0, 1.0):
                hr, lr = noisy_scan_pair(
                    hr, self.scale, self.degradation, scan_noise=draw.scan_noise, noise_std=noise,
                    blur_sigma=draw.blur, background_below=draw.background_below,
                    acquired=draw.acquired, generator=noise_g,
                )  # fmt: skip
            else:
                lr = degrade(hr, self.scale, self.degradation, noise_std=noise, generator=noise_g)
            if draw.quantize:
                lr = _quantize_8bit(lr)
            base = interpolate_base(lr, self.scale, self.upsampler, self.degradation)
            s, p = self.scale, self.patch
            lrs.append(lr[..., top : top + p, left : left + p])
            bases.append(base[..., top * s : (top + p) * s, left * s : (left + p) * s])
            hrs.append(hr[..., top * s : (top + p) * s, left * s : (left + p) * s])
        return SRBatch(torch.cat(lrs), torch.cat(bases), torch.cat(hrs))


class ReconBatches:
    """Simulated multi-coil acquisitions of random crops of the ``split`` MR slices."""

    def __init__(
        self,
        dataset: PreparedDataset,
        *,
        crop: int,
        batch_size: int,
        accelerations: Sequence[float],
        masks: Sequence[str],
        coils: int,
        center_fraction: float,
        noise_std: float,
        augment: bool = True,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        self.images = [torch.from_numpy(s.image / s.volume_max) for s in dataset.slices(split, "MR")]
        if not self.images:
            raise ValueError(f"no MR slices in the {split} split")
        # Every item of a batch has the same square crop (they are stacked), so it must fit every slice.
        _require_crop_fits(self.images, size=crop, scale=1, what=f"MR {split} slice")
        self.crop, self.batch_size = crop, batch_size
        self.accelerations, self.masks = list(accelerations), list(masks)
        self.coils, self.center_fraction, self.noise_std = coils, center_fraction, noise_std
        self.augment, self.seed = augment, seed

    def batch(self, step: int, *, rank: int = 0, world_size: int = 1) -> ReconBatch:
        g = _generator(self.seed, step)
        samples = []
        mine = _shard(self.batch_size, rank, world_size)
        for item in range(self.batch_size):
            image = self.images[int(torch.randint(0, len(self.images), (), generator=g))]
            image = _augment(image, g, self.augment) if self.augment else image
            crop_h = crop_w = self.crop
            top, left = _foreground_crop(image, crop_h, crop_w, g)
            acceleration = self.accelerations[int(torch.randint(0, len(self.accelerations), (), generator=g))]
            mask_kind = self.masks[int(torch.randint(0, len(self.masks), (), generator=g))]
            sample_seed = int(torch.randint(0, 2**31 - 1, (), generator=g))
            if item not in mine:
                continue
            samples.append(
                simulate_multicoil(
                    image[top : top + crop_h, left : left + crop_w].float(),
                    acceleration=acceleration,
                    seed=sample_seed,
                    n_coils=self.coils,
                    mask_kind=mask_kind,
                    center_fraction=self.center_fraction,
                    noise_std=self.noise_std,
                )
            )
        return ReconBatch(
            torch.stack([s.kspace for s in samples]),
            torch.stack([s.mask for s in samples]).view(len(samples), 1, 1, -1),
            torch.stack([s.sens_maps for s in samples]),
            torch.stack([s.target for s in samples]),
        )


class BatchSource(Protocol):
    """What the training loop draws from: batch ``step`` (a NamedTuple of tensors), this rank's share.

    It must be a pure function of ``step`` (and the source's seed), never of a running RNG: that is
    what makes resumption exact and the number of batch workers invisible.
    """

    def batch(self, step: int, *, rank: int = 0, world_size: int = 1) -> Any: ...


class _StepBatches(Dataset[Any]):
    """Map-style view of a batch source: item ``step`` is this rank's share of batch ``step``."""

    def __init__(self, batches: BatchSource, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __getitem__(self, step: int) -> Any:
        return self.batches.batch(step, rank=self.rank, world_size=self.world_size)


def _one_thread_per_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # the workers share the cores; torch's default would oversubscribe them


def batch_stream(
    batches: BatchSource,
    *,
    start: int,
    stop: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> Generator[Any, None, None]:
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
        # Workers start from a clean server process, not by forking this one: a fork copies a process
        # whose thread pools (OpenVINO's oneTBB after a quantize stage, OpenMP, CUDA) are not
        # fork-safe, and the test suite crashed that way once (a segfault after OpenVINO had run).
        multiprocessing_context="forkserver" if "forkserver" in mp.get_all_start_methods() else None,
        persistent_workers=False,
    )
    yield from loader
