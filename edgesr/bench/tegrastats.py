"""Jetson memory, load, temperature and power from NVIDIA's ``tegrastats``, for the device harness.

On a Jetson the CPU and the GPU share one LPDDR memory, so the figure that bounds a model is the
board's RAM in use (``RAM used/totalMB``), not a CUDA allocator's peak. ``tegrastats --interval MS``
prints one line per interval; :class:`TegrastatsSampler` runs it beside a benchmark and keeps every
line, and :func:`parse_line` reads one line of any JetPack generation:

* JetPack 4 (Nano, TX2, Xavier): ``RAM 1712/3956MB (lfb 1x2MB) SWAP 0/1978MB (cached 0MB) CPU
  [21%@102,off,...] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 ... PLL@34C ... POM_5V_IN 2640/2640``;
* JetPack 5/6 (Orin): an optional ``MM-DD-YYYY HH:MM:SS`` time stamp, ``GR3D_FREQ 0%`` or
  ``GR3D_FREQ 12%@[305,305]``, temperatures ``cpu@45.5C``, rails ``VDD_IN 4423mW/4423mW``.

Fields a line does not carry are absent from its record, never guessed. The parser is written here
rather than taken from ``jetson-stats`` (jtop): that package needs its own root service on the device
and is not on the package registries this project installs from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import IO, Any

from edgesr.errors import SourceUnavailableError

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_CORE = re.compile(r"(\d+)%(?:@(\d+))?")
_ENGINE = re.compile(r"\b(GR3D_FREQ|EMC_FREQ) (\d+)%(?:@(?:\[([\d,]+)\]|(\d+)))?")
_TEMPERATURE = re.compile(r"\b([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


def parse_line(line: str) -> dict[str, Any]:
    """One ``tegrastats`` line as a record (every key optional but ``raw``).

    Returns:
        ``ram_used_mb``, ``ram_total_mb``, ``swap_used_mb``, ``swap_total_mb``; ``cpu_load_pct`` (per
        online core; offline cores left out) and ``cpu_freq_mhz``; ``gpu_load_pct`` and
        ``gpu_freq_mhz`` (GR3D), ``emc_load_pct``; ``temperatures_c`` {sensor: degrees};
        ``power_mw`` {rail: (current, average)}; ``raw``.

    Raises:
        ValueError: the line carries no ``RAM`` field (not a tegrastats line).
    """
    ram = _RAM.search(line)
    if ram is None:
        raise ValueError(f"not a tegrastats line (no 'RAM used/totalMB' field): {line[:80]!r}")
    record: dict[str, Any] = {
        "raw": line.rstrip("\n"),
        "ram_used_mb": int(ram[1]),
        "ram_total_mb": int(ram[2]),
    }
    if swap := _SWAP.search(line):
        record["swap_used_mb"], record["swap_total_mb"] = int(swap[1]), int(swap[2])
    if cpu := _CPU.search(line):
        cores = [_CORE.fullmatch(core.strip()) for core in cpu[1].split(",")]
        online = [core for core in cores if core is not None]
        record["cpu_load_pct"] = [int(core[1]) for core in online]
        frequencies = [int(core[2]) for core in online if core[2]]
        if frequencies:
            record["cpu_freq_mhz"] = max(frequencies)
    for engine in _ENGINE.finditer(line):
        if engine[1] == "GR3D_FREQ":
            record["gpu_load_pct"] = int(engine[2])
            frequencies = [int(f) for f in (engine[3] or engine[4] or "").split(",") if f]
            if frequencies:
                record["gpu_freq_mhz"] = max(frequencies)
        else:
            record["emc_load_pct"] = int(engine[2])
    temperatures = {m[1]: float(m[2]) for m in _TEMPERATURE.finditer(line)}
    # A sensor that is switched off reads -256C (Orin's cv0/cv1/cv2 without the DLA clocked).
    temperatures = {name: value for name, value in temperatures.items() if value > -200}
    if temperatures:
        record["temperatures_c"] = temperatures
    rails = {m[1]: (int(m[2]), int(m[3])) for m in _RAIL.finditer(line) if m[1] not in _NOT_RAILS}
    if rails:
        record["power_mw"] = rails
    return record


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RAM and the load, temperature and power range over a benchmark's samples."""
    if not records:
        raise ValueError("no tegrastats samples to summarise")
    summary: dict[str, Any] = {
        "samples": len(records),
        "ram_peak_mb": max(r["ram_used_mb"] for r in records),
        "ram_start_mb": records[0]["ram_used_mb"],
        "ram_total_mb": records[0]["ram_total_mb"],
    }
    gpu = [r["gpu_load_pct"] for r in records if "gpu_load_pct" in r]
    if gpu:
        summary["gpu_load_pct_mean"] = round(sum(gpu) / len(gpu), 1)
        summary["gpu_load_pct_max"] = max(gpu)
    temperatures = [max(r["temperatures_c"].values()) for r in records if r.get("temperatures_c")]
    if temperatures:
        summary["hottest_c"] = max(temperatures)
    for rail in ("VDD_IN", "POM_5V_IN"):  # the board's input power, where the module reports it
        values = [r["power_mw"][rail][0] for r in records if rail in r.get("power_mw", {})]
        if values:
            summary["input_power_mw_mean"] = round(sum(values) / len(values), 1)
            summary["input_power_mw_max"] = max(values)
            summary["input_power_rail"] = rail
            break
    return summary


@dataclass
class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` while the ``with`` block runs; parses every line it printed.

    Example:
        >>> with TegrastatsSampler(interval_ms=100) as sampler:
        ...     run_benchmark()
        >>> sampler.summary()["ram_peak_mb"]

    Raises:
        SourceUnavailableError: no ``tegrastats`` on this machine (not a Jetson).
    """

    interval_ms: int = 100
    executable: str = "tegrastats"
    records: list[dict[str, Any]] = field(default_factory=list)
    _process: subprocess.Popen[str] | None = None
    _reader: threading.Thread | None = None

    def __enter__(self) -> TegrastatsSampler:
        path = shutil.which(self.executable)
        if path is None:
            raise SourceUnavailableError(
                f"{self.executable} not found: Jetson memory is read with NVIDIA's tegrastats, which "
                "exists only on a Jetson (JetPack)"
            )
        self._process = subprocess.Popen(
            [path, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self._process.stdout is not None  # noqa: S101 (PIPE was asked for)
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,), daemon=True)
        self._reader.start()
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if "RAM " in line:  # tegrastats prints nothing else, but a wrapper script might
                self.records.append(parse_line(line))

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        return summarise(self.records)


__all__ = ["TegrastatsSampler", "parse_line", "summarise"]
