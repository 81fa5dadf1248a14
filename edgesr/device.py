"""Which device a command runs on, and how a run describes the machine it trained on.

Training, evaluation and inference all choose their device here, so ``device=auto`` means the same
thing everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Any

import torch

from edgesr.errors import ConfigError


def pick_device(preference: str) -> torch.device:
    """``auto`` (CUDA when torch sees one, else the CPU), ``cpu`` or ``cuda[:N]``.

    Raises:
        ConfigError: an unknown device, or CUDA (or a CUDA index) that torch does not see.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", preference)
    if match is None:
        raise ConfigError(f"device={preference!r} is not valid; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={preference} was asked for, but torch sees no CUDA device")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device={preference}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(preference)


def training_machine(device: torch.device, world_size: int) -> dict[str, Any]:
    """Where a run trains, for its checkpoints and model card: wall-clock times mean little without it."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} torch threads"
    machine: dict[str, Any] = {"device": name, "processes": world_size, "torch": torch.__version__}
    if device.type == "cpu":  # whether this CPU multiplies bf16: where amp runs bf16 autocast
        machine["bf16_units"] = cpu_has_native_bf16()
    return machine


def cpu_flag_set(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The first CPU's feature flags (x86 ``flags``, Arm ``Features``), or None where ``cpuinfo`` cannot
    be read (not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    return frozenset(match.group(1).split()) if match else frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies BF16 in hardware (AVX512-BF16 or AMX): where BF16 can be faster than
    FP32 (OpenVINO's default there; torch's autocast). Elsewhere BF16 is emulated, slower than FP32, and
    so is never chosen. False where the CPU's flags cannot be read (not Linux)."""
    return bool({"amx_bf16", "avx512_bf16"} & (cpu_flag_set() or frozenset()))


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where the hardware multiplies bf16 (CUDA's tensor cores; a CPU with AVX512-BF16 or
    AMX); a no-op elsewhere (bf16 emulated in software is slower than fp32) or when not ``enabled``.

    The training objectives wrap only their networks' forward passes in it: the recon models' FFTs
    leave autocast on their own (:mod:`edgesr.physics.fft`) and the losses are computed in fp32. The
    weights and the optimiser stay fp32. Measured on a 2-core Zen 5 (AVX512-BF16), distilling the
    quick start's pruned RDN from ``rdn-mr-x2``: the teacher's forward 0.10 -> 0.04 s per batch of 8
    (with channels-last), the student's forward and backward 0.105 -> 0.065 s, the teacher's bf16
    outputs 82 dB from its fp32 ones (benchmarks/RESULTS.md, "The quick start").
    """
    if enabled and bf16_training(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_training(device: torch.device) -> bool:
    """Whether :func:`bf16_autocast` autocasts on ``device`` when enabled: CUDA, or a CPU with bf16 units."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
