"""The evaluation protocol (DESIGN.md section 3) applied to the prepared test split.

One place that turns a split into (input, reference) pairs and scores methods on them, so that the
baselines here and every later model report are measured the same way:

* each slice is divided by its *volume's* maximum, so ``data_range = 1``;
* SR: the HR slice is centre-cropped to a multiple of the scale, degraded (``mr-kspace`` for MR,
  ``ct-blur`` for CT unless told otherwise), upsampled, and scored without ``scale`` border pixels;
* recon: the slice becomes a simulated multi-coil acquisition (:mod:`edgesr.physics.simulate`) with a
  seed fixed per (volume, slice), and the magnitude of the reconstruction is scored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgesr import baseline_cache, baselines
from edgesr.baselines import interpolate_base
from edgesr.data.dataset import PreparedDataset, SliceSample
from edgesr.data.kspace import KSpaceVolume
from edgesr.data.sources import is_template
from edgesr.errors import DataError
from edgesr.metrics import crop_border, gradient_energy_ratio, hfen, nmse, psnr, ssim
from edgesr.physics.coils import MIN_ACS_LINES, estimate_coil_maps
from edgesr.physics.degrade import crop_to_multiple, degrade
from edgesr.physics.fft import complex_abs, to_complex
from edgesr.physics.simulate import ReconSample, simulate_multicoil
from edgesr.pipeline import DEFAULT_TILE, Predictor, infer
from edgesr.results import recon_setting, sr_setting
from edgesr.spec import ModelSpec

DEFAULT_DEGRADATION = {"MR": "mr-kspace", "CT": "ct-blur"}

SRMethod = Callable[[torch.Tensor, int, str], torch.Tensor]  # (lr [1,1,h,w], scale, degradation) -> sr
# (masked_kspace [1, 2C, H, W], mask [1, 1, 1, W], sens_maps [1, 2C, H, W]) -> image [1, 2, H, W]: the
# argument order of every recon model and baseline (fastMRI VarNet's).
ReconMethod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MethodScores:
    """Per-slice metrics of one method on one setting, and their means."""

    method: str
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    nmse: list[float] = field(default_factory=list)
    hfen: list[float] = field(default_factory=list)
    gradient_ratio: list[float] = field(default_factory=list)
    slices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, pred: torch.Tensor, ref: torch.Tensor, slice_id: str) -> None:
        self.psnr.append(float(psnr(pred, ref, 1.0)))
        self.ssim.append(float(ssim(pred, ref, 1.0)))
        self.nmse.append(float(nmse(pred, ref)))
        self.hfen.append(float(hfen(pred, ref)))
        self.gradient_ratio.append(float(gradient_energy_ratio(pred, ref)))
        self.slices.append(slice_id)

    def by_source(self) -> dict[str, dict[str, float | int]]:
        """Means per source volume (slice ids are ``volume:index``), so that a template average and a
        real scan are never blended into one headline."""
        members: dict[str, list[int]] = {}
        for index, slice_id in enumerate(self.slices):
            members.setdefault(slice_id.rsplit(":", 1)[0], []).append(index)

        def mean(values: list[float], rows: list[int], digits: int) -> float:
            return round(sum(values[i] for i in rows) / len(rows), digits)

        return {
            volume: {
                "slices": len(rows),
                "psnr_db": mean(self.psnr, rows, 3),
                "ssim": mean(self.ssim, rows, 4),
                "gradient_energy_ratio": mean(self.gradient_ratio, rows, 4),
            }
            for volume, rows in members.items()
        }

    def summary(self) -> dict[str, Any]:
        n = len(self.psnr)
        return {
            "method": self.method,
            "slices": n,
            "psnr_db": round(sum(self.psnr) / n, 3) if n else float("nan"),
            "ssim": round(sum(self.ssim) / n, 4) if n else float("nan"),
            "nmse": round(sum(self.nmse) / n, 5) if n else float("nan"),
            "hfen": round(sum(self.hfen) / n, 4) if n else float("nan"),
            "gradient_energy_ratio": round(sum(self.gradient_ratio) / n, 4) if n else float("nan"),
            "psnr_min_db": round(min(self.psnr), 3) if n else float("nan"),
            "seconds_per_slice": round(self.seconds / n, 4) if n else float("nan"),
            "by_source": self.by_source(),
        }


PROTOCOL = "edgesr v1: intensity / volume max, data_range 1, SSIM 11x11 Gaussian s=1.5, SR border=scale"


def slice_seed(sample: SliceSample, base_seed: int = 0) -> int:
    """A seed fixed per (volume, slice): the same acquisition in every run and for every method."""
    return (zlib.crc32(sample.volume.encode()) + 1009 * sample.slice_index + 7919 * base_seed) % (2**31)


def _limited(samples: Iterable[SliceSample], max_slices: int) -> Iterator[SliceSample]:
    """At most ``max_slices`` per volume (0: all), spread evenly over the volume's split."""
    if max_slices <= 0:
        yield from samples
        return
    by_volume: dict[str, list[SliceSample]] = {}
    for sample in samples:
        by_volume.setdefault(sample.volume, []).append(sample)
    for items in by_volume.values():
        step = max(1, len(items) // max_slices)
        yield from items[::step][:max_slices]


def sr_pairs(
    dataset: PreparedDataset,
    *,
    modality: str,
    scale: int,
    split: str = "test",
    degradation: str | None = None,
    noise_std: float = 0.0,
    max_slices: int = 0,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, str]]:
    """``(lr [1,1,h,w], hr [1,1,H,W], slice_id)`` pairs of the protocol, intensities / volume max."""
    kind = degradation or DEFAULT_DEGRADATION[modality]
    for sample in _limited(dataset.slices(split, modality), max_slices):
        hr = crop_to_multiple(torch.from_numpy(sample.image / sample.volume_max)[None, None], scale)
        generator = torch.Generator().manual_seed(slice_seed(sample, seed))
        lr = degrade(hr, scale, kind, noise_std=noise_std, generator=generator)
        yield lr, hr, f"{sample.volume}:{sample.slice_index}"


def score_sr(
    methods: dict[str, SRMethod],
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor, str]],
    *,
    scale: int,
    degradation: str,
) -> list[MethodScores]:
    scores = {name: MethodScores(name) for name in methods}
    for lr, hr, slice_id in pairs:
        for name, method in methods.items():
            started = time.perf_counter()
            with torch.no_grad():
                sr = method(lr, scale, degradation)
            scores[name].seconds += time.perf_counter() - started
            scores[name].add(crop_border(sr, scale), crop_border(hr, scale), slice_id)
    return list(scores.values())


def recon_samples(
    dataset: PreparedDataset,
    *,
    acceleration: float,
    mask_kind: str = "random",
    n_coils: int = 8,
    center_fraction: float = 0.08,
    min_acs_lines: int = 0,
    noise_std: float = 0.005,
    split: str = "test",
    max_slices: int = 0,
    seed: int = 0,
    maps: str = "simulated",
) -> Iterator[tuple[ReconSample, str]]:
    """Simulated acquisitions of the MR slices of ``split`` (intensities / volume max).

    ``maps="simulated"`` hands every method the simulated coil sensitivities; ``"lowres"`` or ``"espirit"``
    replaces them by maps estimated from the acquisition's own ACS lines, as with real raw data.
    """
    for sample in _limited(dataset.slices(split, "MR"), max_slices):
        image = torch.from_numpy(sample.image / sample.volume_max)
        simulated = simulate_multicoil(
            image,
            acceleration=acceleration,
            seed=slice_seed(sample, seed),
            n_coils=n_coils,
            mask_kind=mask_kind,
            center_fraction=center_fraction,
            min_acs_lines=min_acs_lines,
            noise_std=noise_std,
        )
        slice_id = f"{sample.volume}:{sample.slice_index}"
        if maps != "simulated":
            try:
                estimated = estimate_coil_maps(simulated.kspace, simulated.mask, method=maps)
            except ValueError as exc:  # too few ACS lines for this estimate on a small matrix
                raise DataError(
                    f"{slice_id} ({split} split, {image.shape[-2]}x{image.shape[-1]}): {exc}"
                ) from None
            simulated = simulated._replace(sens_maps=estimated)
        yield simulated, slice_id


def score_recon(
    methods: dict[str, ReconMethod], samples: Iterable[tuple[ReconSample, str]]
) -> list[MethodScores]:
    scores = {name: MethodScores(name) for name in methods}
    for sample, slice_id in samples:
        reference = complex_abs(sample.target[None])
        mask = sample.mask.view(1, 1, 1, -1)
        for name, method in methods.items():
            started = time.perf_counter()
            with torch.no_grad():
                image = method(sample.kspace[None], mask, sample.sens_maps[None])
            scores[name].seconds += time.perf_counter() - started
            # Methods return the complex image as a channel pair, or (the pipeline) its magnitude.
            magnitude = complex_abs(image) if image.shape[1] == 2 else image
            scores[name].add(magnitude, reference, slice_id)
    return list(scores.values())


# --- The baselines and a model, as scored methods ---------------------------------------------------


def sr_baseline_methods() -> dict[str, SRMethod]:
    return {"bicubic": baselines.sr_bicubic, "zero-fill": lambda lr, s, _: baselines.sr_zero_fill(lr, s)}


def recon_baseline_methods(
    cg_lambda: float = baselines.CG_SENSE_LAMBDA,
    cs_lambda: float = baselines.L1_WAVELET_LAMBDA,
    cs_iterations: int = baselines.L1_WAVELET_ITERATIONS,
) -> dict[str, ReconMethod]:
    return {
        "zero-filled": baselines.recon_zero_filled,
        "cg-sense": partial(baselines.recon_cg_sense, lam=cg_lambda),
        "l1-wavelet": partial(baselines.recon_l1_wavelet, lam=cs_lambda, n_iter=cs_iterations),
    }


def model_sr_method(spec: ModelSpec, predictor: Predictor, *, tile: int = DEFAULT_TILE) -> SRMethod:
    """A model as an SR method, run through the pipeline that ``enhance`` ships (tiles included).

    The protocol's images are already divided by their volume's maximum, so the pipeline gets them as
    ``raw`` units with reference 1 instead of estimating a normaliser from one slice.
    """

    def method(lr: torch.Tensor, scale: int, degradation: str) -> torch.Tensor:
        if spec.sr is None or (scale, degradation) != (spec.sr.scale, spec.sr.degradation):
            raise ValueError(f"the model is {spec.describe()}; asked for x{scale} {degradation}")
        out = infer(spec, predictor, lr[0].numpy(), units="raw", reference=1.0, tile=tile)
        return torch.from_numpy(out)[None]

    return method


def model_recon_method(spec: ModelSpec, predictor: Predictor) -> ReconMethod:
    """A model as a recon method, through the pipeline (coil compression included), on given maps."""

    def method(kspace: torch.Tensor, mask: torch.Tensor, sens_maps: torch.Tensor) -> torch.Tensor:
        raw = KSpaceVolume(
            to_complex(kspace).numpy(), mask.flatten().numpy(), Path("<simulated>"), "simulated"
        )
        out = infer(spec, predictor, raw, maps=to_complex(sens_maps).numpy(), reference=1.0)
        return torch.from_numpy(out)[:, None]

    return method


def _source_of(slice_id: str) -> str:
    return slice_id.rsplit(":", 1)[0]


def _gain(model: MethodScores, others: list[MethodScores], rows: list[int]) -> dict[str, Any]:
    """The model against the baselines on the slices ``rows``: the gain over the baseline with the best
    mean there, and how often (and by how much at worst) the per-slice best baseline beats it."""

    def mean(values: list[float]) -> float:
        return sum(values[i] for i in rows) / len(rows)

    best = max(others, key=lambda s: mean(s.psnr))
    per_slice_best = {i: max(b.psnr[i] for b in others) for i in rows}
    return {
        "slices": len(rows),
        "psnr_db": round(mean(model.psnr), 3),
        "best_baseline": best.method,
        "best_baseline_psnr_db": round(mean(best.psnr), 3),
        "gain_db_over_best_baseline": round(mean(model.psnr) - mean(best.psnr), 3),
        "slices_below_per_slice_best_baseline": sum(model.psnr[i] < per_slice_best[i] for i in rows),
        "min_gain_db_per_slice": round(min(model.psnr[i] - per_slice_best[i] for i in rows), 3),
    }


def compare(scores: list[MethodScores], model_name: str) -> dict[str, Any]:
    """The model against the baselines: mean gain over the best baseline, and per-slice losses; the same
    per source, and over the real scans alone (``real_scans``: every source but the templates, the
    figure to quote; None when only templates were scored)."""
    model = next(s for s in scores if s.method == model_name)
    others = [s for s in scores if s.method != model_name]
    every = list(range(len(model.psnr)))
    overall = _gain(model, others, every)
    per_slice_best = [max(values) for values in zip(*(b.psnr for b in others), strict=True)]
    below = [sid for sid, m, b in zip(model.slices, model.psnr, per_slice_best, strict=True) if m < b]
    by_source: dict[str, list[int]] = {}
    for index, slice_id in enumerate(model.slices):
        by_source.setdefault(_source_of(slice_id), []).append(index)
    real = [i for i in every if not is_template(_source_of(model.slices[i]))]
    return {
        "best_baseline": overall["best_baseline"],
        "gain_db_over_best_baseline": overall["gain_db_over_best_baseline"],
        "slices_below_per_slice_best_baseline": len(below),
        "slices_below": below,
        "min_gain_db_per_slice": overall["min_gain_db_per_slice"],
        # What the model can be held to: the baselines it beats on every slice of this setting.
        "baselines_beaten_on_every_slice": [
            b.method for b in others if all(m > v for m, v in zip(model.psnr, b.psnr, strict=True))
        ],
        "real_scans": _gain(model, others, real) if real else None,
        "by_source": {
            source: _gain(model, others, rows) | {"template": is_template(source)}
            for source, rows in by_source.items()
        },
    }


@dataclass(frozen=True)
class ReconProtocol:
    """The simulated acquisitions a recon model is scored on (the training simulation's defaults).

    ``min_acs_lines``: the ACS keeps at least this many lines, as scanners do, so that ESPIRiT can calibrate
    on small matrices (8 % of a 64-wide matrix is 5 lines). It changes no mask 150 or more columns wide.
    """

    accelerations: tuple[float, ...] = (4.0, 6.0)
    masks: tuple[str, ...] = ("random",)
    maps: tuple[str, ...] = ("simulated",)
    coils: int = 8
    center_fraction: float = 0.08
    min_acs_lines: int = MIN_ACS_LINES["espirit"]
    noise_std: float = 0.005


def _stored_baseline_scores(
    dataset: PreparedDataset,
    acquisition: dict[str, Any],
    methods: dict[str, ReconMethod],
    parameters: dict[str, Any],
) -> tuple[str, list[MethodScores] | None]:
    """The :mod:`edgesr.baseline_cache` key of the baselines on ``acquisition``, and their stored scores."""
    key = baseline_cache.cache_key(dataset, **acquisition, baselines=parameters)
    return key, baseline_cache.load(dataset, key, list(methods), row_type=MethodScores)


def recon_baseline_scores(
    dataset: PreparedDataset,
    acquisition: dict[str, Any],
    *,
    cg_lambda: float = baselines.CG_SENSE_LAMBDA,
    cs_lambda: float = baselines.L1_WAVELET_LAMBDA,
    cs_iterations: int = baselines.L1_WAVELET_ITERATIONS,
) -> list[MethodScores]:
    """The recon baselines' scores on one acquisition setting (the keyword arguments of
    :func:`recon_samples`), read from :mod:`edgesr.baseline_cache` when stored, computed and stored
    otherwise. ``edgesr baseline`` and ``edgesr evaluate`` share the stored entries."""
    methods = recon_baseline_methods(cg_lambda, cs_lambda, cs_iterations)
    parameters = {"cg_lambda": cg_lambda, "cs_lambda": cs_lambda, "cs_iterations": cs_iterations}
    key, cached = _stored_baseline_scores(dataset, acquisition, methods, parameters)
    if cached is not None:
        return cached
    scores = score_recon(methods, recon_samples(dataset, **acquisition))
    baseline_cache.store(dataset, key, scores, setting=acquisition | parameters)
    return scores


def _score_recon_with_baselines(
    model: dict[str, ReconMethod], dataset: PreparedDataset, acquisition: dict[str, Any]
) -> list[MethodScores]:
    """The baselines' and the model's scores on one acquisition setting (baselines first).

    The baselines' per-slice scores are read from :mod:`edgesr.baseline_cache` when a run on the same
    slices, setting and code stored them, and stored otherwise: they are the same for every model. When
    they are not stored, the baselines and the model share one pass over the simulated acquisitions (an
    ESPIRiT estimate of a 1024x1024 slice takes about a minute on 2 cores).
    """
    methods = recon_baseline_methods()
    parameters = {
        "cg_lambda": baselines.CG_SENSE_LAMBDA, "cs_lambda": baselines.L1_WAVELET_LAMBDA,
        "cs_iterations": baselines.L1_WAVELET_ITERATIONS,
    }  # fmt: skip
    key, cached = _stored_baseline_scores(dataset, acquisition, methods, parameters)
    if cached is not None:
        (scored,) = score_recon(model, recon_samples(dataset, **acquisition))
        if all(c.slices == scored.slices for c in cached):
            return [*cached, scored]
    scores = score_recon(methods | model, recon_samples(dataset, **acquisition))
    baseline_cache.store(dataset, key, scores[: len(methods)], setting=acquisition | parameters)
    return scores


def evaluate_model(
    spec: ModelSpec,
    predictor: Predictor,
    dataset: PreparedDataset,
    *,
    label: str,
    split: str = "test",
    max_slices: int = 0,
    recon: ReconProtocol | None = None,
    status: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """A model next to the baselines, on one split, in one run: the results and the comparisons.

    Args:
        spec: the model's contract (task, scale, degradation, modality, coils).
        predictor: the model to score (a :class:`~edgesr.pipeline.TorchPredictor`, a runtime session).
        label: the model's name in the results.
        recon: the simulated acquisitions (recon models only); ``coils`` is overridden by a model that
            needs a fixed number.
        status: a context-manager factory showing progress (``console.status``), or None.
    """

    def showing(message: str) -> Any:
        return status(message) if status is not None else contextlib.nullcontext()

    recon = recon or ReconProtocol()
    modality = spec.intensity.modality if spec.sr is not None else "MR"
    if not has_slices(dataset, split, modality):
        raise DataError(dataset.no_slices(split, modality))
    results: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    started = time.perf_counter()
    if spec.sr is not None:
        modality, scale, kind = spec.intensity.modality, spec.sr.scale, spec.sr.degradation
        sr_methods = sr_baseline_methods() | {label: model_sr_method(spec, predictor)}
        with showing(f"SR x{scale} on {modality} ({kind}), {split} split"):
            pairs = sr_pairs(
                dataset, modality=modality, scale=scale, split=split, degradation=kind, max_slices=max_slices
            )
            scores = score_sr(sr_methods, pairs, scale=scale, degradation=kind)
        setting = sr_setting(modality=modality, scale=scale, degradation=kind)
        results += [setting | s.summary() for s in scores]
        comparisons.append(setting | compare(scores, label))
    else:
        assert spec.recon is not None  # noqa: S101 (a spec has one task section)
        # The protocol's coils, compressed by the pipeline for a model of fewer (a scanner's data as it
        # comes); more only for a model that needs more.
        coils = max(spec.recon.coils, recon.coils)
        model_method = {label: model_recon_method(spec, predictor)}
        settings = [(m, k, r) for m in recon.maps for k in recon.masks for r in recon.accelerations]
        for maps, mask_kind, r in settings:
            acquisition = {
                "acceleration": r, "mask_kind": mask_kind, "n_coils": coils, "maps": maps,
                "center_fraction": recon.center_fraction, "min_acs_lines": recon.min_acs_lines,
                "noise_std": recon.noise_std,
                "split": split, "max_slices": max_slices,
            }  # fmt: skip
            with showing(f"recon R={r:g} ({mask_kind}, {maps} maps), {split} split"):
                scores = _score_recon_with_baselines(model_method, dataset, acquisition)
            setting = recon_setting(acceleration=r, mask=mask_kind, coils=coils, maps=maps)
            results += [setting | s.summary() for s in scores]
            comparisons.append(setting | compare(scores, label))
    return {
        "split": split,
        "protocol": PROTOCOL,
        **({"acquisition": dataclasses.asdict(recon) | {"coils": coils}} if spec.recon is not None else {}),
        "sources": [v["name"] for v in dataset.volumes(modality, split)],
        "data_fingerprint": dataset.fingerprint["id"],
        "results": results,
        "comparison": comparisons,
        "seconds": round(time.perf_counter() - started, 1),
    }


def has_slices(dataset: PreparedDataset, split: str, modality: str) -> bool:
    """Whether ``split`` holds any slice of ``modality``."""
    return bool(dataset.volumes(modality, split))


def score_predictor(
    spec: ModelSpec,
    predictor: Predictor,
    dataset: PreparedDataset,
    *,
    split: str,
    max_slices: int = 0,
    acceleration: float = 4.0,
    kspace_shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """One model's mean PSNR/SSIM on a split, through the pipeline, without the baselines.

    For checks that score many variants of one model (quantization attempts): the same images and
    protocol as :func:`evaluate_model` (recon: its first setting, ``acceleration`` with simulated maps).
    ``kspace_shape`` keeps only recon slices of that matrix size (a fixed-shape export takes no other).

    Raises:
        DataError: no slice of the split has ``kspace_shape``.
    """
    if spec.sr is not None:
        modality, scale, kind = spec.intensity.modality, spec.sr.scale, spec.sr.degradation
        pairs = sr_pairs(
            dataset, modality=modality, scale=scale, split=split, degradation=kind, max_slices=max_slices
        )
        (scores,) = score_sr(
            {"model": model_sr_method(spec, predictor)}, pairs, scale=scale, degradation=kind
        )
    else:
        assert spec.recon is not None  # noqa: S101 (a spec has one task section)
        protocol = ReconProtocol()
        samples = recon_samples(
            dataset, acceleration=acceleration, mask_kind=protocol.masks[0],
            n_coils=max(spec.recon.coils, protocol.coils), center_fraction=protocol.center_fraction,
            min_acs_lines=protocol.min_acs_lines, noise_std=protocol.noise_std, split=split,
            max_slices=max_slices,
        )  # fmt: skip
        if kspace_shape is not None:
            matching = [s for s in samples if tuple(s[0].kspace.shape[-2:]) == tuple(kspace_shape)]
            if not matching:
                size = f"{kspace_shape[0]}x{kspace_shape[1]}"
                raise DataError(f"the {split} split has no slice of {size} k-space")
            samples = iter(matching)
        (scores,) = score_recon({"model": model_recon_method(spec, predictor)}, samples)
    summary = scores.summary()
    return {
        "psnr": float(summary["psnr_db"]),
        "ssim": float(summary["ssim"]),
        "gradient_energy_ratio": float(summary["gradient_energy_ratio"]),
        "slices": int(summary["slices"]),
        "by_source": summary["by_source"],
    }


def real_scan_scores(row: Mapping[str, Any], templates: Collection[str]) -> dict[str, float] | None:
    """Mean PSNR and SSIM over the slices of the real (non-template) sources of a scored row (its
    ``by_source``, as :func:`score_predictor` gives it), and how many slices; None when it has none.
    Each source's means are weighted by its slices, as the overall means are."""
    real = [v for name, v in row.get("by_source", {}).items() if name not in templates]
    slices = sum(v["slices"] for v in real)
    if not slices:
        return None
    scores = {"psnr": sum(v["psnr_db"] * v["slices"] for v in real) / slices, "slices": slices}
    if all("ssim" in v for v in real):  # rows of PSNR only (a card's per-source summary) have none
        scores["ssim"] = sum(v["ssim"] * v["slices"] for v in real) / slices
    return scores


def gated_scores(score: Mapping[str, Any], gate_on: str) -> dict[str, Any]:
    """The PSNR and SSIM a gate judges ``score`` by (a :func:`score_predictor` result or a report's run):
    its real scans' (a template's slices left out) when ``gate_on`` is ``real_scans`` and a template is
    among its sources, else every slice's; ``scored_on`` says which."""
    templates = [name for name in score["by_source"] if is_template(name)]
    real = real_scan_scores(score, templates) if gate_on == "real_scans" and templates else None
    if real is None or "ssim" not in real:
        return {"psnr": score["psnr"], "ssim": score["ssim"], "scored_on": "all"}
    return {"psnr": real["psnr"], "ssim": real["ssim"], "scored_on": "real_scans"}


def sr_predict(model: nn.Module, lr: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Whole-image SR of ``lr [B, 1, h, w]`` with the global skip the spec names (validation in training,
    where the model may be wrapped in DDP and tiling buys nothing)."""
    if spec.sr is None:
        raise ValueError(f"sr_predict needs an SR spec; got a {spec.task} spec")
    return model(lr, interpolate_base(lr, spec.sr.scale, spec.sr.upsampler, spec.sr.degradation))


@dataclass(frozen=True)
class ReconAcquisition:
    """A simulated acquisition to validate a recon model on (the settings of :func:`recon_samples`)."""

    acceleration: float
    mask_kind: str = "random"
    n_coils: int = 8
    center_fraction: float = 0.08
    noise_std: float = 0.005


def validate(
    model: nn.Module,
    dataset: PreparedDataset,
    spec: ModelSpec,
    *,
    device: torch.device,
    max_slices: int,
    acquisition: ReconAcquisition | None = None,
) -> dict[str, float]:
    """Mean PSNR/SSIM of a model in training on the val split, by the protocol (what ``best/`` is kept by).

    Args:
        model: the network (left in eval mode), on ``device``.
        dataset: the prepared data set; its val split is scored.
        spec: the model's contract: an SR model is scored on its modality, scale and degradation.
        device: where the model runs; scoring happens on the CPU.
        max_slices: slices per volume, spread evenly over the volume (0: all).
        acquisition: recon only: the simulated acquisition to reconstruct.

    Returns:
        ``{"val_psnr": mean dB, "val_ssim": mean SSIM}``.
    """
    model.eval()
    if spec.sr is not None:
        kind, scale = spec.sr.degradation, spec.sr.scale
        pairs = sr_pairs(
            dataset,
            modality=spec.intensity.modality,
            scale=scale,
            split="val",
            degradation=kind,
            max_slices=max_slices,
        )

        def sr_method(lr: torch.Tensor, scale: int, kind: str) -> torch.Tensor:
            return sr_predict(model, lr.to(device), spec).float().cpu()

        scores = score_sr({"model": sr_method}, pairs, scale=scale, degradation=kind)[0]
    else:
        if acquisition is None:
            raise ValueError("validating a recon model needs the acquisition to simulate")
        samples = recon_samples(
            dataset,
            acceleration=acquisition.acceleration,
            mask_kind=acquisition.mask_kind,
            n_coils=acquisition.n_coils,
            center_fraction=acquisition.center_fraction,
            noise_std=acquisition.noise_std,
            split="val",
            max_slices=max_slices,
        )

        def recon_method(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
            return model(kspace.to(device), mask.to(device), maps.to(device)).float().cpu()

        scores = score_recon({"model": recon_method}, samples)[0]
    summary = scores.summary()
    return {"val_psnr": float(summary["psnr_db"]), "val_ssim": float(summary["ssim"])}
