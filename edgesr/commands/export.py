"""``edgesr export model=NAME|checkpoint=DIR|compressed=DIR target=NAME [out=DIR] [key=value ...]``.

Exports a shipped model, a training checkpoint or the final model of an ``edgesr compress`` run for a
target profile in ``export/`` (``cpu-onnxruntime``, ``cpu-openvino``, ``gpu-tensorrt``, ``jetson-orin``,
``gpu-torch``), verifies every artifact against PyTorch on real test slices, and writes one folder per
precision with its ``manifest.json``. Every other ``key=value`` overrides the profile
(``precisions=[fp32]``, ``verify.slices=2``). A compressed model is verified within its recipe's gate.
See :mod:`edgesr.export.build`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from edgesr.config import check_exactly_one, opt
from edgesr.data.dataset import open_or_prepare
from edgesr.errors import ConfigError
from edgesr.teachers import list_shipped, read_card, teacher_path
from edgesr.train.checkpoint import load_for_inference, weights_sha256


@dataclass(frozen=True)
class ExportConfig:
    model: str = opt("", "a shipped teacher or student (see `edgesr enhance --help`)")
    checkpoint: str = opt("", "or a checkpoint folder written by `edgesr train`")
    compressed: str = opt("", "or the out= folder of an `edgesr compress` run (its final float model)")
    target: str = opt("cpu-onnxruntime", "an export profile in export/ (by name) or a YAML file")
    out: str = opt("", "output folder (default: exports/<model>/<target>)")
    threads: int = opt(0, "runtime threads for the verification (0: the runtime's default)")
    data_root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    overrides: tuple[str, ...] = field(
        default=(), metadata={"help": "every other key=value overrides the profile (precisions=[fp32], ...)"}
    )

    def __post_init__(self) -> None:
        check_exactly_one(
            {"model": self.model, "checkpoint": self.checkpoint, "compressed": self.compressed},
            hints={"model": f"shipped: {', '.join(list_shipped()) or 'none'}"},
        )
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0; got {self.threads}")


def _compressed_model(run: Path) -> tuple[Path, dict[str, Any]]:
    """The final float model of a compress run, and its gate and provenance."""
    report_path = run / "report.json"
    if not report_path.is_file():
        raise ConfigError(f"compressed={run} holds no report.json: not a finished `edgesr compress` run")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    recorded = Path(report["final_model"])  # as written, relative to where compress ran
    folder = run / recorded.parent.name / recorded.name
    gate = report["gate"] if isinstance(report.get("gate"), dict) else {}
    recipe = report["recipe"] if isinstance(report.get("recipe"), dict) else {}
    return folder, {
        "compressed": str(run),
        "stage": recorded.parent.name,
        "teacher": recipe.get("teacher", ""),
        "recipe": recipe.get("description", ""),
        "gate": {k: gate[k] for k in ("max_psnr_drop_db", "max_ssim_drop") if k in gate},
    }


def run_export(cfg: ExportConfig) -> int:
    from edgesr.export.build import export_model
    from edgesr.export.targets import load_target, target_path

    console = Console(stderr=True)
    overrides = list(cfg.overrides)
    source: dict[str, Any]
    if cfg.compressed:
        folder, source = _compressed_model(Path(cfg.compressed))
        # The recipe's gate is the verification's, unless the command line sets one.
        for key, value in source.pop("gate").items():
            if not any(o.startswith(f"verify.{key}=") for o in overrides):
                overrides.append(f"verify.{key}={value}")
        name = Path(cfg.compressed).name
    elif cfg.checkpoint:
        folder, source, name = Path(cfg.checkpoint), {"checkpoint": cfg.checkpoint}, Path(cfg.checkpoint).name
    else:
        folder, source, name = teacher_path(cfg.model), {"shipped": cfg.model}, cfg.model
    target = load_target(cfg.target, overrides)
    target_name = target_path(cfg.target).stem
    model, spec, meta = load_for_inference(folder)
    source |= {"model": meta["model"], "weights_sha256": weights_sha256(folder)}
    card = read_card(folder)
    compression = card.get("compression")
    if isinstance(compression, dict):  # a shipped student: say what it was compressed from
        source |= {"teacher": compression.get("teacher", ""), "recipe": compression.get("recipe", "")}
    out = Path(cfg.out or f"exports/{name}/{target_name}")
    dataset = open_or_prepare(cfg.data_root, console)
    summary = export_model(
        model, spec, target=target, target_name=target_name, out=out, dataset=dataset, source=source,
        threads=cfg.threads, card_quantization=card.get("quantization"), checkpoint=folder, console=console,
    )  # fmt: skip
    console.print(f"[green]exported[/] {escape(str(out))}: {', '.join(summary['artifacts'])}")
    return 0
