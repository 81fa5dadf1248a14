"""``edgesr bench artifact=DIR|model=NAME|checkpoint=DIR device=NAME [out=DIR] [key=value ...]``.

Times a model or an exported artifact on a device profile in ``devices/`` (latency percentiles,
throughput, peak memory), next to its teacher in torch FP32 when that is known, and scores it on the
test split in the same run; writes ``bench.json`` (the compress report's ``runs`` schema). Every other
``key=value`` overrides the profile (``threads=1``, ``timing.min_runs=50``). See :mod:`edgesr.bench.run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesr.config import check_exactly_one, opt
from edgesr.data.dataset import open_or_prepare
from edgesr.errors import ConfigError
from edgesr.teachers import list_shipped


@dataclass(frozen=True)
class BenchConfig:
    artifact: str = opt("", "an artifact folder of `edgesr export` (e.g. exports/NAME/cpu-openvino/int8)")
    model: str = opt("", "or a shipped teacher or student (timed in torch)")
    checkpoint: str = opt("", "or a checkpoint folder (timed in torch)")
    device: str = opt("cpu-torch", "a device profile in devices/ (by name) or a YAML file")
    out: str = opt("", "output folder for bench.json (default: runs/bench/<name>-<device>)")
    data_root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    overrides: tuple[str, ...] = field(
        default=(), metadata={"help": "every other key=value overrides the device profile (threads=1, ...)"}
    )

    def __post_init__(self) -> None:
        check_exactly_one(
            {"artifact": self.artifact, "model": self.model, "checkpoint": self.checkpoint},
            hints={"model": f"shipped: {', '.join(list_shipped()) or 'none'}"},
        )


def run_bench(cfg: BenchConfig) -> int:
    from edgesr.bench.devices import load_device
    from edgesr.bench.run import BENCH_FILE, bench, subject_of

    console = Console(stderr=True)
    profile = load_device(cfg.device, cfg.overrides)
    device_name = Path(cfg.device).stem
    subject = subject_of(artifact=cfg.artifact, checkpoint=cfg.checkpoint, model=cfg.model)
    label = subject.name if not subject.artifact else f"{subject.name}-{subject.runtime}-{subject.precision}"
    out = Path(cfg.out or f"runs/bench/{label}-{device_name}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; choose a folder for bench.json")
    dataset = open_or_prepare(cfg.data_root, console)
    result = bench(subject, profile, device_name=device_name, dataset=dataset, out=out, console=console)

    table = Table(title=f"{escape(subject.name)} on {escape(device_name)}: {result['machine']['cpu']}")
    table.add_column("run", no_wrap=True)
    table.add_column("ran", no_wrap=True)
    for column in ("p50 ms", "p90 ms", "img/s", "peak MB", "PSNR", "vs T dB", "speed-up"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in result["runs"]:
        latency = row["latency_ms"]
        table.add_row(
            f"{row['model']} {row['runtime']}", row["executed_precision"], f"{latency['p50']:.1f}",
            f"{latency['p90']:.1f}", _number(row.get("throughput_ips")),
            _number(row.get("peak_memory_mb"), 0),
            _number(row.get("psnr")), _number(row.get("psnr_vs_teacher_db"), signed=True),
            _number(row.get("speedup_vs_teacher_torch_fp32"), suffix="x"),
        )  # fmt: skip
    terminal = Console()
    Console(width=max(terminal.width, 110)).print(table)  # a pipe gets 80 columns: too few for the figures
    console.print(f"[green]wrote[/] {escape(str(out / BENCH_FILE))}")
    return 0


def _number(value: float | None, digits: int = 2, *, signed: bool = False, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}{suffix}" if signed else f"{value:.{digits}f}{suffix}"
