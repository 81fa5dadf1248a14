"""Which device a command runs on, and how a run describes the machine it trained on.

Training, evaluation and inference all choose their device here, so ``device=auto`` means the same
thing everywhere.
"""

from __future__ import annotations

import contextlib
import re
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
    return {"device": name, "processes": world_size, "torch": torch.__version__}


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (convolutions on the tensor cores); a no-op elsewhere or when not ``enabled``.

    The training objectives wrap only their networks' forward passes in it: the recon models' FFTs
    leave autocast on their own (:mod:`edgesr.physics.fft`) and the losses are computed in fp32.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
