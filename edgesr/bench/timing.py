"""A sound timer: warm-up runs, repeated timed runs, percentiles, and what ran them.

Numbers are measured, never assumed: each call is timed on its own (``perf_counter`` around a
synchronised call), after warm-up runs that absorb one-off costs (allocation, kernel selection). The
result records the threads and the machine's load average, since a busy machine skews every figure.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgesr.bench.harness import latency_statistics
from edgesr.device import cpu_flag_set
from edgesr.spec import ModelSpec


def time_call(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 20) -> dict[str, float]:
    """Latency of ``fn()`` in milliseconds: p50, p90, p99, mean, min over ``repeats`` timed calls."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1; got {warmup}, {repeats}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _synchronise()
        started = time.perf_counter()
        fn()
        _synchronise()
        samples.append((time.perf_counter() - started) * 1000.0)
    return latency_statistics(samples) | {"repeats": repeats}


def _synchronise() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def machine_info() -> dict[str, Any]:
    """What the timings were measured on: CPU, threads, versions and the load at the time."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        # How edgesr's TorchPredictor lays out convolution weights on the CPU (1.1-1.3x faster than
        # torch's default layout there): torch timings of different layouts do not compare.
        "torch_cpu_memory_format": "channels_last",
        "python": platform.python_version(),
    }
    flags = cpu_flags()
    if flags is not None:
        info["cpu_flags"] = flags
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    gpu = gpu_info()
    if gpu:
        info["gpu"] = gpu
    return info


# The instruction sets that decide which kernels the runtimes pick (FP32 FMA, INT8 dot products, BF16 and
# FP16 matrix units): what makes two CPUs' timings comparable or not. /proc/cpuinfo lists ~150 flags.
RUNTIME_CPU_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimddp",
    "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """Which of :data:`RUNTIME_CPU_FLAGS` this CPU has (x86 ``flags``, Arm ``Features``), or None where
    ``cpuinfo`` cannot be read (not Linux)."""
    present = cpu_flag_set(cpuinfo)
    return None if present is None else [flag for flag in RUNTIME_CPU_FLAGS if flag in present]


def gpu_info() -> dict[str, Any]:
    """The CUDA device torch sees, its driver and CUDA versions, and a Jetson's L4T release (empty when
    there is no CUDA device). The driver is read from the kernel module's own file, which needs no NVML."""
    if not torch.cuda.is_available():
        return {}
    major, minor = torch.cuda.get_device_capability()
    info: dict[str, Any] = {
        "name": torch.cuda.get_device_name(),
        "count": torch.cuda.device_count(),
        "compute_capability": f"{major}.{minor}",
        "cuda": torch.version.cuda,
    }
    driver = _first_match(Path("/proc/driver/nvidia/version"), NVIDIA_DRIVER)
    if driver:
        info["driver"] = driver
    l4t = _first_match(Path("/etc/nv_tegra_release"), L4T_RELEASE)
    if l4t:
        info["l4t"] = l4t
    return info


# "NVRM version: NVIDIA UNIX [Open Kernel Module for] x86_64 [Kernel Module]  580.159.04  ..."
NVIDIA_DRIVER = r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s"
# "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: ..." (JetPack's L4T release)
L4T_RELEASE = r"^#\s*(R\d+.*?REVISION:\s*[\d.]+)"


def _first_match(path: Path, pattern: str) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else None


def runtime_versions() -> dict[str, str]:
    """The versions of torch and of the export and runtime libraries that are installed (absent ones are
    left out): TensorRT's too, where it imports (a GPU machine, a Jetson)."""
    versions: dict[str, str] = {"torch": str(torch.__version__)}
    for name in ("onnx", "onnxruntime", "openvino", "nncf", "tensorrt"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        except Exception as exc:  # noqa: BLE001 - a broken install (e.g. CUDA libraries missing) is recorded
            versions[name] = f"unusable: {type(exc).__name__}"
            continue
        versions[name] = str(getattr(module, "__version__", "?"))
    return versions


def latency_inputs(
    spec: ModelSpec, size: int, *, width: int | None = None, coils: int | None = None
) -> dict[str, torch.Tensor]:
    """Network inputs for an output of ``size`` x ``width`` (default: square) pixels, as the pipeline
    feeds them.

    SR: ``lr [1, 1, size/s, width/s]`` and ``base`` at the output size; recon: ``coils`` coils (default:
    the spec's, else 8), a 4x equispaced mask with 16 central lines. Values are random (latency does not
    depend on them).
    """
    generator = torch.Generator().manual_seed(0)
    height, width = size, size if width is None else width
    if spec.sr is not None:
        s = spec.sr.scale
        lr = torch.rand(1, 1, height // s, width // s, generator=generator)
        base = torch.rand(1, 1, (height // s) * s, (width // s) * s, generator=generator)
        return {"lr": lr, "base": base}
    if coils is None:
        coils = spec.recon.coils if spec.recon is not None and spec.recon.coils else 8
    mask = torch.zeros(1, 1, 1, width)
    mask[..., ::4] = 1
    mask[..., width // 2 - 8 : width // 2 + 8] = 1
    return {
        "masked_kspace": torch.randn(1, 2 * coils, height, width, generator=generator) * mask,
        "mask": mask,
        "sens_maps": torch.randn(1, 2 * coils, height, width, generator=generator) / coils,
    }


def artifact_inputs(spec: ModelSpec, predictor: object, size: int) -> dict[str, torch.Tensor]:
    """:func:`latency_inputs` at ``size``, or at the one size a fixed-shape artifact was built for."""
    shapes = getattr(predictor, "fixed_shapes", None) or {}
    if spec.sr is not None and shapes.get("lr") and None not in shapes["lr"][2:]:
        _, _, height, width = shapes["lr"]
        return latency_inputs(spec, height * spec.sr.scale, width=width * spec.sr.scale)
    kspace = shapes.get("masked_kspace")
    if spec.sr is None and kspace and None not in kspace[1:]:
        return latency_inputs(spec, kspace[2], width=kspace[3], coils=kspace[1] // 2)
    return latency_inputs(spec, size)
