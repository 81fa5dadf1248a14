"""Device profiles for the benchmark harness: ``devices/<name>.yaml`` -> a frozen :class:`DeviceProfile`.

A profile says where and how a model is timed: the device kind (the CPU, a CUDA GPU, a Jetson), the
runtime, its threads, the precision asked of it, the timing rules (:class:`TimingSettings`), the
batch of the offline (throughput) run, the output size, and how peak memory is read (the process's
resident set for CPU runtimes, CUDA's allocator plus NVML for GPUs, tegrastats on a Jetson). A device
that is not present is never measured: :func:`check_present` refuses the run with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgesr.bench.harness import TimingSettings
from edgesr.config import check_choice, check_range, load_yaml, opt
from edgesr.errors import ConfigError, SourceUnavailableError

DEVICES_DIR = Path(__file__).resolve().parents[2] / "devices"
KINDS = ("cpu", "cuda", "jetson")
RUNTIMES = ("torch", "onnxruntime", "openvino", "tensorrt")
MEMORY_PROBES = ("rss", "cuda", "tegrastats")


@dataclass(frozen=True)
class PeakFigures:
    """A device's published peak rates, for roofline estimates (``edgesr bench ... estimate=true``)."""

    fp32_gmacs: float = opt(0.0, "peak FP32 multiply-accumulates per second, in billions (vector units)")
    fp16_gmacs: float = opt(0.0, "peak FP16 MACs per second, in billions (dense tensor cores)")
    tf32_gmacs: float = opt(
        0.0, "GPUs: peak TF32 tensor-core MACs per second, in billions (what FP32 convolutions run in)"
    )
    bf16_gmacs: float = opt(0.0, "peak BF16 MACs per second, in billions")
    int8_gmacs: float = opt(0.0, "peak INT8 MACs per second, in billions (dense)")
    memory_gb_s: float = opt(0.0, "peak memory bandwidth, GB/s")
    source: str = opt(
        "",
        "where the figures come from (a datasheet); 'this-cpu': derived from this machine's CPU (its "
        "instruction set, clock and the profile's threads) and a memory copy measured here",
    )

    def __post_init__(self) -> None:
        for name in ("fp32_gmacs", "fp16_gmacs", "tf32_gmacs", "bf16_gmacs", "int8_gmacs", "memory_gb_s"):
            check_range(f"peak.{name}", getattr(self, name), low=0.0)


@dataclass(frozen=True)
class DeviceProfile:
    description: str = opt("", "what the device is")
    kind: str = opt("cpu", f"where the model runs: {', '.join(KINDS)}")
    runtime: str = opt("torch", f"what runs it: {', '.join(RUNTIMES)}")
    threads: int = opt(2, "CPU threads the runtime may use (0: its default); recorded with the figures")
    pin: bool = opt(
        True,
        "pin the timed process to `threads` CPU cores (the first it may use, or `cores`); recorded",
    )
    cores: list[int] = opt([], "pin: the CPU cores to use (default: the first `threads` allowed ones)")
    precision: str = opt(
        "fp32",
        "torch runs: fp32, bf16 (autocast; CPUs with BF16 units, CUDA) or fp16 (autocast, CUDA); an "
        "artifact runs at its own precision",
    )
    size: int = opt(256, "output size in pixels (SR: the LR input is size / scale)")
    throughput_batch: int = opt(4, "images per call of the offline (throughput) run")
    memory: str = opt("rss", f"peak memory probe: {', '.join(MEMORY_PROBES)}")
    quality_slices: int = opt(4, "test slices per volume scored for PSNR/SSIM in the same run (0: none)")
    timing: TimingSettings = opt(TimingSettings(), "warm-up and timed runs")
    peak: PeakFigures = opt(PeakFigures(), "published peak figures, for estimate=true (never a measurement)")

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("memory", self.memory, MEMORY_PROBES)
        check_choice("precision", self.precision, ("fp32", "bf16", "fp16"))
        if self.kind == "cpu" and self.precision == "fp16":
            raise ConfigError("precision=fp16 is timed on CUDA devices only; on the CPU use fp32 or bf16")
        check_range("threads", self.threads, low=0)
        if self.cores and len(self.cores) != self.threads:
            raise ConfigError(f"cores lists {len(self.cores)} cores for threads={self.threads}")
        check_range("size", self.size, low=16)
        check_range("throughput_batch", self.throughput_batch, low=1)
        check_range("quality_slices", self.quality_slices, low=0)
        expected_probe = {"cpu": "rss", "cuda": "cuda", "jetson": "tegrastats"}[self.kind]
        if self.memory != expected_probe:
            raise ConfigError(
                f"memory={self.memory} cannot measure a {self.kind} device; use {expected_probe}"
            )
        if self.kind == "cpu" and self.runtime == "tensorrt":
            raise ConfigError("runtime=tensorrt needs kind=cuda or kind=jetson")


def pinned_cores(profile: DeviceProfile) -> list[int]:
    """The CPU cores a timed process is pinned to: the profile's ``cores``, else the first ``threads``
    cores this process may use; ``[]`` when the profile does not pin (``pin: false`` or ``threads: 0``).

    Pinning keeps the runtime's threads from migrating between cores during the timed runs (and off
    the cores other work was given), as the field's benchmarks do (MLPerf, OpenVINO's benchmark_app).

    Raises:
        ConfigError: ``cores`` names a core this process may not use, or there are fewer usable cores
            than ``threads``.
    """
    if not profile.pin or profile.threads == 0:
        return []
    allowed = sorted(os.sched_getaffinity(0))
    if profile.cores:
        outside = sorted(set(profile.cores) - set(allowed))
        if outside:
            raise ConfigError(f"cores {outside} are not usable here (allowed: {allowed})")
        return sorted(profile.cores)
    return first_cores(profile.threads)


def first_cores(threads: int) -> list[int]:
    """The first ``threads`` CPU cores this process may use (``[]`` for 0: no pinning).

    Raises:
        ConfigError: fewer usable cores than ``threads``.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < threads:
        raise ConfigError(f"threads={threads} but only {len(allowed)} cores are usable here: {allowed}")
    return allowed[:threads]


def list_devices() -> list[str]:
    return sorted(p.stem for p in DEVICES_DIR.glob("*.yaml"))


def load_device(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> DeviceProfile:
    """A device profile by name (``cpu-openvino``) or YAML path, with ``key=value`` overrides."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate
        if not path.is_file():
            raise ConfigError(f"device profile not found: {path}")
    else:
        path = DEVICES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"no device profile {name_or_path!r}; shipped: {', '.join(list_devices())}")
    return load_yaml(DeviceProfile, path, list(overrides))


def check_present(profile: DeviceProfile, name: str) -> None:
    """Refuses a profile whose device or runtime is not on this machine (nothing is "measured" there).

    Raises:
        SourceUnavailableError: no CUDA device, not a Jetson, or the runtime does not import.
    """
    if profile.kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SourceUnavailableError(f"device={name} needs a CUDA GPU; this machine has none")
    if profile.kind == "jetson" and not Path("/etc/nv_tegra_release").is_file():
        raise SourceUnavailableError(f"device={name} runs on a Jetson (JetPack); this machine is not one")
    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
    try:
        __import__(module[profile.runtime])
    except ImportError:
        raise SourceUnavailableError(
            f"device={name} times {profile.runtime}, which is not installed here"
        ) from None


__all__ = ["DEVICES_DIR", "DeviceProfile", "PeakFigures", "check_present", "list_devices", "load_device"]
