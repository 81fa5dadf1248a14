"""``edgesr bench artifact=DIR|model=NAME|checkpoint=DIR device=NAME [out=DIR] [key=value ...]``.

Times a model or an exported artifact on a device profile in ``devices/`` (latency percentiles,
throughput, peak memory), next to its teacher in torch FP32 when that is known, and scores it on the
test split in the same run; writes ``bench.json`` (the compress report's ``runs`` schema). Every other
``key=value`` overrides the profile (``threads=1``, ``timing.min_runs=50``). See :mod:`edgesr.bench.run`.

``estimate=true`` measures nothing: it gives a roofline lower bound of an artifact's latency on the
profile's device from its published peaks (for a device that is not here), labelled ``estimated``
everywhere, with the estimator's error as measured on the devices that are here; it writes
``estimate.json``. See :mod:`edgesr.bench.roofline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesr.config import check_exactly_one, opt
from edgesr.data.dataset import open_or_prepare
from edgesr.errors import ConfigError
from edgesr.teachers import list_shipped

ESTIMATE_FILE = "estimate.json"


@dataclass(frozen=True)
class BenchConfig:
    artifact: str = opt("", "an artifact folder of `edgesr export` (e.g. exports/NAME/cpu-openvino/int8)")
    model: str = opt("", "or a shipped teacher or student (timed in torch)")
    checkpoint: str = opt("", "or a checkpoint folder (timed in torch)")
    device: str = opt("cpu-torch", "a device profile in devices/ (by name) or a YAML file")
    out: str = opt("", "output folder for bench.json (default: runs/bench/<name>-<device>)")
    data_root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    estimate: bool = opt(
        False, "measure nothing: a roofline bound from the device's published peaks (artifact= only)"
    )
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
    if cfg.estimate:
        return _run_estimate(cfg, profile, device_name, console)
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


def _run_estimate(cfg: BenchConfig, profile: Any, device_name: str, console: Console) -> int:
    from edgesr._io import write_json_atomic
    from edgesr.bench.roofline import estimate_artifact

    if not cfg.artifact:
        raise ConfigError(
            "estimate=true counts the operations of an exported graph: export the model first "
            "(edgesr export ... target=...), then bench artifact=DIR device=... estimate=true"
        )
    folder = Path(cfg.artifact)
    result = estimate_artifact(folder, profile, device_name=device_name)
    out = Path(cfg.out or f"runs/bench/{_estimate_label(result)}-{device_name}-estimate")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; choose a folder for {ESTIMATE_FILE}")
    write_json_atomic(out / ESTIMATE_FILE, result)

    table = Table(title=f"ESTIMATED, not measured: {escape(str(folder))} on {escape(device_name)}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("roofline (peak rates)", f"{result['estimated_bound_ms']:.2f} ms")
    table.add_row("  of which compute-bound ops", f"{result['compute_bound_ms']:.2f} ms")
    table.add_row("  of which memory-bound ops", f"{result['memory_bound_ms']:.2f} ms")
    table.add_row("  of which data movement", f"{result['data_movement_ms']:.2f} ms")
    likely = result["estimated_p50_ms"]
    if likely is not None:
        table.add_row(
            "p50 scaled by the measured error",
            f"{likely['median']:.2f} ms ({likely['low']:.2f}-{likely['high']:.2f})",
        )
    table.add_row("MACs", f"{result['macs'] / 1e9:.2f} G")
    table.add_row("bytes moved", f"{result['bytes'] / 2**20:.1f} MiB")
    table.add_row("float ops run in", result["float_precision"])
    Console(width=110).print(table)
    console.print(f"peaks: {escape(result['peaks']['source'])}")
    for kind, errors in result["estimator_error"]["by_kind"].items():
        measured = ", ".join(
            f"{key} {v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f}, n={v['count']})"
            for key, v in errors["by_runtime"].items()
            if key != "all"
        )
        where = ", ".join(errors["measured_on"])
        console.print(
            f"the estimator's error (measured p50 / bound) on {kind} ({escape(where)}): {escape(measured)}"
        )
    if result["uncounted_ops"]:
        console.print(f"[yellow]not counted: {escape(', '.join(result['uncounted_ops']))}[/]")
    if "note" in result:
        console.print(f"[yellow]{escape(result['note'])}[/]")
    console.print(f"[green]wrote[/] {escape(str(out / ESTIMATE_FILE))}")
    return 0


def _estimate_label(result: dict[str, Any]) -> str:
    """``<model>-<runtime>-<precision>`` of the estimated artifact, as bench names its own folders."""
    subject = result["subject"]
    source = subject["source"]
    name = source.get("shipped") or source.get("model") or Path(subject["folder"]).parent.name
    return f"{name}-{subject['runtime']}-{subject['precision']}"


def _number(value: float | None, digits: int = 2, *, signed: bool = False, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}{suffix}" if signed else f"{value:.{digits}f}{suffix}"
