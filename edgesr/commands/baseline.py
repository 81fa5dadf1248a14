"""``edgesr baseline``: the classical baselines' PSNR/SSIM on the test split, per task and setting."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from edgesr import baselines
from edgesr._io import write_json_atomic
from edgesr.config import check_choice, check_range, opt
from edgesr.data.dataset import PreparedDataset
from edgesr.data.splits import ALL_SPLITS
from edgesr.evaluate import (
    DEFAULT_DEGRADATION,
    PROTOCOL,
    ReconProtocol,
    recon_baseline_scores,
    score_sr,
    sr_baseline_methods,
    sr_pairs,
)
from edgesr.physics.degrade import DEGRADATIONS, SCALES
from edgesr.physics.masks import MASK_KINDS
from edgesr.results import print_results, recon_setting, sr_setting


@dataclass(frozen=True)
class BaselineConfig:
    task: str = opt("all", "sr, recon or all")
    modality: str = opt("all", "SR data: MR, CT or all (recon always uses MR)")
    scales: tuple[int, ...] = opt((2, 4), "SR scale factors, e.g. scales=[2,3,4]")
    degradation: str = opt(
        "", "SR degradation (mr-kspace, ct-blur, bicubic); default: mr-kspace for MR, ct-blur for CT"
    )
    sr_noise_std: float = opt(0.0, "SR: noise std added to the LR image (fraction of the volume maximum)")
    accelerations: tuple[float, ...] = opt((4.0, 6.0), "recon: undersampling factors R")
    masks: tuple[str, ...] = opt(("random",), "recon: mask kinds, random and/or equispaced")
    coils: int = opt(8, "recon: number of simulated coils")
    center_fraction: float = opt(0.08, "recon: fraction of fully sampled central lines (ACS)")
    min_acs_lines: int = opt(
        ReconProtocol.min_acs_lines, "recon: the fewest fully sampled central lines (small matrices)"
    )
    recon_noise_std: float = opt(0.005, "recon: complex noise std per coil (fraction of the volume maximum)")
    cg_lambda: float = opt(baselines.CG_SENSE_LAMBDA, "CG-SENSE Tikhonov weight (chosen on the val split)")
    cs_lambda: float = opt(
        baselines.L1_WAVELET_LAMBDA, "L1-wavelet regularisation weight (chosen on the val split)"
    )
    cs_iterations: int = opt(baselines.L1_WAVELET_ITERATIONS, "L1-wavelet iterations")
    split: str = opt("test", "which split to score: test, val, train or external")
    max_slices: int = opt(0, "at most this many slices per volume, spread evenly (0: all)")
    seed: int = opt(0, "seed of the simulated noise, phase, coils and masks")
    root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    format: str = opt("table", "table (for people) or json (for machines)")
    out: str = opt("", "also write the results as JSON to this file")

    def __post_init__(self) -> None:
        check_choice("task", self.task, ("sr", "recon", "all"))
        check_choice("modality", self.modality, ("MR", "CT", "all"))
        check_choice("split", self.split, ALL_SPLITS)
        check_choice("format", self.format, ("table", "json"))
        for scale in self.scales:
            check_choice("scales", scale, SCALES)
        for kind in self.masks:
            check_choice("masks", kind, MASK_KINDS)
        if self.degradation:
            check_choice("degradation", self.degradation, DEGRADATIONS)
        for r in self.accelerations:
            check_range("accelerations", r, low=1.0, high=16.0)
        check_range("coils", self.coils, low=1)
        check_range("center_fraction", self.center_fraction, low=0.01, high=1.0)
        check_range("min_acs_lines", self.min_acs_lines, low=0)


def run_baseline(cfg: BaselineConfig) -> int:
    dataset = PreparedDataset(cfg.root or None)
    console = Console(stderr=cfg.format == "json")
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    if cfg.task in ("sr", "all"):
        modalities = ("MR", "CT") if cfg.modality == "all" else (cfg.modality,)
        sr_methods = sr_baseline_methods()
        for modality in modalities:
            if not dataset.volumes(modality, cfg.split):
                console.print(
                    f"[yellow]no {modality} slices in the {cfg.split} split; skipping SR on {modality}[/]"
                )
                continue
            kind = cfg.degradation or DEFAULT_DEGRADATION[modality]
            for scale in cfg.scales:
                with console.status(f"SR x{scale} on {modality} ({kind})"):
                    pairs = sr_pairs(
                        dataset,
                        modality=modality,
                        scale=scale,
                        split=cfg.split,
                        degradation=kind,
                        noise_std=cfg.sr_noise_std,
                        max_slices=cfg.max_slices,
                        seed=cfg.seed,
                    )
                    scores = score_sr(sr_methods, pairs, scale=scale, degradation=kind)
                setting = sr_setting(modality=modality, scale=scale, degradation=kind)
                results += [setting | s.summary() for s in scores]
    if cfg.task in ("recon", "all"):
        for kind in cfg.masks:
            for r in cfg.accelerations:
                # The same setting, in the same words, as `edgesr evaluate` scores: they share stored scores.
                acquisition = {
                    "acceleration": r, "mask_kind": kind, "n_coils": cfg.coils, "maps": "simulated",
                    "center_fraction": cfg.center_fraction, "min_acs_lines": cfg.min_acs_lines,
                    "noise_std": cfg.recon_noise_std, "split": cfg.split, "max_slices": cfg.max_slices,
                    **({"seed": cfg.seed} if cfg.seed else {}),
                }  # fmt: skip
                with console.status(f"recon R={r:g} ({kind} mask, {cfg.coils} coils)"):
                    scores = recon_baseline_scores(
                        dataset, acquisition, cg_lambda=cfg.cg_lambda, cs_lambda=cfg.cs_lambda,
                        cs_iterations=cfg.cs_iterations,
                    )  # fmt: skip
                setting = recon_setting(acceleration=r, mask=kind, coils=cfg.coils)
                results += [setting | s.summary() for s in scores]
    report = {
        "split": cfg.split,
        "protocol": PROTOCOL,
        "sources": [v["name"] for v in dataset.volumes(split=cfg.split)],
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if cfg.out:
        write_json_atomic(cfg.out, report)
    if cfg.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print_results(console, report)
    return 0
