"""The ``edgesr`` commands: each is a frozen config dataclass plus a function that runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgesr.commands.baseline import BaselineConfig, run_baseline
from edgesr.commands.bench import BenchConfig, run_bench
from edgesr.commands.compress import CompressConfig, run_compress
from edgesr.commands.data import InfoConfig, run_info, run_prepare
from edgesr.commands.enhance import EnhanceConfig, run_enhance
from edgesr.commands.evaluate import EvaluateConfig, run_evaluate
from edgesr.commands.export import ExportConfig, run_export
from edgesr.commands.interpolate import InterpolateConfig, run_interpolate
from edgesr.commands.report import ReportConfig, run_report
from edgesr.commands.serve import ServeDicomConfig, ServeMrdConfig, run_serve_dicom, run_serve_mrd
from edgesr.commands.train import run_train
from edgesr.commands.upgrade import UpgradeConfig, run_upgrade
from edgesr.data.prepare import PrepareConfig
from edgesr.train.config import TrainConfig


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    config: type | None
    run: Callable[[Any], int] | None
    arrives_with: str = ""  # for commands that a later issue fills in


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "data prepare",
            "build the cached data set from real MR and CT volumes (idempotent)",
            PrepareConfig,
            run_prepare,
        ),
        Command(
            "data info", "show the prepared data set: sources, licenses, split sizes", InfoConfig, run_info
        ),
        Command(
            "baseline",
            "score the classical SR and recon baselines on the test split",
            BaselineConfig,
            run_baseline,
        ),
        Command(
            "train",
            "train a model (RDN, SRGAN, MoDL, DeepcomplexMRI) on the prepared data",
            TrainConfig,
            run_train,
        ),
        Command(
            "interpolate",
            "blend an SR generator's pixel-loss and GAN weights (ESRGAN), the GAN's share chosen on val",
            InterpolateConfig,
            run_interpolate,
        ),
        Command(
            "evaluate",
            "score a trained model next to the baselines; card= writes a shippable teacher",
            EvaluateConfig,
            run_evaluate,
        ),
        Command("enhance", "run a trained model on your image or k-space", EnhanceConfig, run_enhance),
        Command(
            "upgrade",
            "write the model spec into a checkpoint saved before edgesr's model contract (once)",
            UpgradeConfig,
            run_upgrade,
        ),
        Command(
            "compress",
            "compress a teacher by a recipe (distillation, pruning, INT8) and report every runtime",
            CompressConfig,
            run_compress,
        ),
        Command(
            "export",
            "export for a target (ONNX Runtime, OpenVINO) and verify every artifact against PyTorch",
            ExportConfig,
            run_export,
        ),
        Command(
            "bench",
            "latency, throughput and memory on a device profile, with PSNR/SSIM in the same run",
            BenchConfig,
            run_bench,
        ),
        Command(
            "report",
            "one report (Markdown and self-contained HTML, with plots) of compress and bench runs",
            ReportConfig,
            run_report,
        ),
        Command(
            "serve dicom",
            "a DICOM node: receive series by C-STORE, enhance each, store or forward the derived series",
            ServeDicomConfig,
            run_serve_dicom,
        ),
        Command(
            "serve mrd",
            "an MRD (ISMRMRD) streaming server: raw data in over TCP, reconstructed images back",
            ServeMrdConfig,
            run_serve_mrd,
        ),
    )
}
